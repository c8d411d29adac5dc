//! The state every gRPC service shares: the Raft handle, the applied state, ids, the
//! leader-local lease clock.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aether_common::shutdown::Shutdown;
use aether_proto::etcd::etcdserverpb as pb;

use crate::MetadConfig;
use crate::error::{EtcdError, from_read_error, from_write_error};
use crate::lease::LeaseClock;
use crate::mvcc::WriteOutcome;
use crate::raft::{Command, Raft, Shared};

/// Raft node id of the single member.
pub const NODE_ID: u64 = 1;

pub struct Node {
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub name: String,
    pub cluster_id: u64,
    pub member_id: u64,
    pub client_url: String,
    pub db_path: PathBuf,
    pub snapshot_path: PathBuf,
    pub leases: LeaseClock,
    pub shutdown: Shutdown,
    lease_seq: AtomicU64,
}

/// FNV-1a, 64 bit: stable ids derived from names (never 0).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

impl Node {
    pub fn new(
        cfg: &MetadConfig,
        raft: Raft,
        shared: Arc<Shared>,
        client_addr: SocketAddr,
        db_path: PathBuf,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            raft,
            shared,
            name: cfg.name.clone(),
            cluster_id: fnv1a(&[b"aether-cluster/", cfg.name.as_bytes()]),
            member_id: fnv1a(&[b"aether-member/", cfg.name.as_bytes()]),
            client_url: format!("http://{client_addr}"),
            db_path,
            snapshot_path: cfg.data_dir.join("snapshot.bin"),
            leases: LeaseClock::default(),
            shutdown,
            lease_seq: AtomicU64::new(0),
        }
    }

    pub fn raft_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term(),
        }
    }

    pub fn current_header(&self) -> pb::ResponseHeader {
        let rev = self.shared.read().store.revision();
        self.header(rev)
    }

    /// Propose a command and wait for it to be applied; the apply result is returned.
    pub async fn write(&self, cmd: Command) -> Result<WriteOutcome, EtcdError> {
        let resp = self.raft.client_write(cmd).await.map_err(from_write_error)?;
        match resp.data.outcome {
            Some(r) => r,
            None => Err(EtcdError::Internal("applied entry returned no outcome".into())),
        }
    }

    /// A read-index round unless the client asked for a serializable read.
    pub async fn read_barrier(&self, serializable: bool) -> Result<(), EtcdError> {
        if serializable {
            return Ok(());
        }
        self.raft.ensure_linearizable().await.map_err(from_read_error)?;
        Ok(())
    }

    /// A fresh lease id (positive, not in use), as etcd assigns when the client asks for 0.
    pub fn new_lease_id(&self) -> i64 {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let st = self.shared.read();
        let mut id = 0;
        for _ in 0..64 {
            let seq = self.lease_seq.fetch_add(1, Ordering::Relaxed);
            let candidate = (((millis << 16) ^ (self.member_id & 0xffff) ^ (seq << 4)) & (i64::MAX as u64)) as i64;
            id = candidate.max(1);
            if st.store.lease(id).is_none() {
                break;
            }
        }
        id
    }
}
