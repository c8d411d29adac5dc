//! blobd's error enum and its one mapping to the wire (`tonic::Status` plus a
//! machine-readable code in the `x-aether-code` metadata key and retryability in
//! `x-aether-retryable`).

use tonic::{Code, Status};

/// Metadata key carrying the machine-readable error code.
pub const CODE_KEY: &str = aether_common::grpc::ERROR_CODE_KEY;
/// Metadata key carrying "true" when the caller may retry the same call.
pub const RETRYABLE_KEY: &str = "x-aether-retryable";

#[derive(Debug, thiserror::Error)]
pub enum BlobdError {
    #[error("no such key")]
    NotFound,
    #[error("no such upload")]
    NoSuchUpload,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("body digest mismatch: {0}")]
    BadDigest(String),
    #[error("body size mismatch: {0}")]
    SizeMismatch(String),
    #[error("stored version differs from the expected one")]
    VersionMismatch,
    #[error("the bucket is being deleted or was deleted")]
    BucketDeleted,
    #[error("invalid part: {0}")]
    InvalidPart(String),
    #[error("range not satisfiable")]
    OutOfRange,
    #[error("client stream failed: {0}")]
    ClientStream(Status),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("index error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("index migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt index row: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Bitrot(String),
    #[error("quarantined: out of sync longer than the tombstone grace, reconciling")]
    Quarantined,
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl BlobdError {
    /// (gRPC code, machine-readable code, retryable)
    fn wire(&self) -> (Code, &'static str, bool) {
        match self {
            Self::NotFound => (Code::NotFound, "not_found", false),
            Self::NoSuchUpload => (Code::NotFound, "no_such_upload", false),
            Self::InvalidArgument(_) => (Code::InvalidArgument, "invalid_argument", false),
            Self::BadDigest(_) => (Code::InvalidArgument, "bad_digest", false),
            Self::SizeMismatch(_) => (Code::InvalidArgument, "size_mismatch", false),
            Self::VersionMismatch => (Code::FailedPrecondition, "version_mismatch", true),
            Self::BucketDeleted => (Code::FailedPrecondition, "bucket_deleted", false),
            Self::InvalidPart(_) => (Code::FailedPrecondition, "invalid_part", false),
            Self::OutOfRange => (Code::OutOfRange, "out_of_range", false),
            Self::ClientStream(_) => (Code::Cancelled, "client_stream", true),
            Self::Io(_) => (Code::Internal, "io", true),
            Self::Db(sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut) => (Code::Unavailable, "unavailable", true),
            Self::Db(_) | Self::Migrate(_) => (Code::Internal, "index", true),
            Self::Corrupt(_) => (Code::Internal, "corrupt", false),
            // Another replica can serve it; this copy is being replaced.
            Self::Bitrot(_) => (Code::DataLoss, "bitrot", true),
            // Another replica can serve it; this daemon's copies may be deletes it missed.
            Self::Quarantined => (Code::Unavailable, "quarantined", true),
            Self::Transport(_) | Self::Join(_) => (Code::Internal, "internal", true),
        }
    }

    /// True for the caller's mistakes (logged at debug), false for server faults.
    pub fn is_client_error(&self) -> bool {
        let (code, _, _) = self.wire();
        !matches!(code, Code::Internal | Code::Unavailable)
    }
}

impl From<BlobdError> for Status {
    fn from(e: BlobdError) -> Self {
        let (code, name, retryable) = e.wire();
        let message = if e.is_client_error() {
            tracing::debug!(error = %e, code = name, "request failed");
            e.to_string()
        } else {
            tracing::warn!(error = %e, code = name, "request failed");
            // Internal details stay in the log.
            String::from("internal error")
        };
        let mut status = Status::new(code, message);
        status.metadata_mut().insert(CODE_KEY, tonic::metadata::MetadataValue::from_static(name));
        status.metadata_mut().insert(
            RETRYABLE_KEY,
            tonic::metadata::MetadataValue::from_static(if retryable { "true" } else { "false" }),
        );
        status
    }
}

pub type Result<T, E = BlobdError> = std::result::Result<T, E>;
