//! metad's errors: `MetadError` for `run`, and `EtcdError` for requests, with the one
//! mapping to `tonic::Status` that uses etcd's exact codes and message strings.

use tonic::{Code, Status};

/// Why `run` failed to start or stopped uncleanly.
#[derive(Debug, thiserror::Error)]
pub enum MetadError {
    #[error("io error on {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("sqlite store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no raft leader elected within {0:?}")]
    NoLeader(std::time::Duration),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("configuration: {0}")]
    Config(String),
    /// Started on the data dir of a member that was removed from its cluster (etcd refuses
    /// to start such a member too).
    #[error("the member has been permanently removed from the cluster ({0} exists): wipe the data dir to add it back")]
    Removed(std::path::PathBuf),
}

/// A request failed; `Display` is etcd's message, `code` etcd's gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    BadMemberUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: the member has been permanently removed from the cluster")]
    MemberRemoved,
    /// A server fault; the detail is logged, never sent.
    #[error("etcdserver: internal error")]
    Internal(String),
}

impl EtcdError {
    pub fn code(&self) -> Code {
        match self {
            Self::EmptyKey
            | Self::DuplicateKey
            | Self::TooManyOps
            | Self::ValueProvided
            | Self::LeaseProvided
            | Self::KeyNotFound
            | Self::InvalidSortOption => Code::InvalidArgument,
            Self::Compacted | Self::FutureRev | Self::LeaseTtlTooLarge => Code::OutOfRange,
            Self::LeaseNotFound | Self::MemberNotFound => Code::NotFound,
            Self::LeaseExists | Self::PeerUrlExists | Self::MemberNotLearner | Self::LearnerNotReady => {
                Code::FailedPrecondition
            }
            Self::BadMemberUrls => Code::InvalidArgument,
            Self::NoLeader
            | Self::LeaderChanged
            | Self::Timeout
            | Self::Stopped
            | Self::Unhealthy
            | Self::MemberRemoved => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        match &e {
            EtcdError::Internal(detail) => tracing::error!(detail = %detail, "internal error"),
            EtcdError::NoLeader | EtcdError::LeaderChanged | EtcdError::Timeout | EtcdError::Stopped => {
                tracing::warn!(error = %e, "request refused")
            }
            _ => tracing::debug!(error = %e, "request rejected"),
        }
        Status::new(e.code(), e.to_string())
    }
}

use crate::raft::{Member, NodeId};
type RaftErr<E> = openraft::error::RaftError<NodeId, E>;

fn from_fatal(f: openraft::error::Fatal<NodeId>) -> EtcdError {
    match f {
        openraft::error::Fatal::Stopped => EtcdError::Stopped,
        other => EtcdError::Internal(other.to_string()),
    }
}

/// Map a failed `client_write` to what a client sees. A proposal that lost its leader may
/// still commit under the next one, so this is etcd's "leader changed", not a retry.
pub(crate) fn from_write_error(e: RaftErr<openraft::error::ClientWriteError<NodeId, Member>>) -> EtcdError {
    match e {
        RaftErr::APIError(openraft::error::ClientWriteError::ForwardToLeader(_)) => EtcdError::LeaderChanged,
        RaftErr::APIError(other) => EtcdError::Internal(other.to_string()),
        RaftErr::Fatal(f) => from_fatal(f),
    }
}

/// Map a failed read-index to what a client sees.
pub(crate) fn from_read_error(e: RaftErr<openraft::error::CheckIsLeaderError<NodeId, Member>>) -> EtcdError {
    match e {
        RaftErr::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_)) => EtcdError::LeaderChanged,
        RaftErr::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_)) => EtcdError::Timeout,
        RaftErr::Fatal(f) => from_fatal(f),
    }
}
