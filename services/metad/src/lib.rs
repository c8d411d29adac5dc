//! metad: aether's metadata service. A Raft-replicated (openraft; single node for now)
//! MVCC key-value store behind an etcd v3-compatible gRPC API (KV, Watch, Lease, Cluster,
//! Maintenance), so `etcdctl` and the `etcd-client` crate work against it unchanged.

mod b64;
mod error;
mod lease;
mod mvcc;
mod node;
mod raft;
mod service;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aether_common::admin::Readiness;
use aether_common::shutdown::Shutdown;
use aether_proto::etcd::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use openraft::{BasicNode, SnapshotPolicy};
use tonic::transport::server::TcpIncoming;

pub use crate::error::{EtcdError, MetadError};
use crate::node::{NODE_ID, Node};
use crate::raft::{LogStore, Network, Raft, StateMachine};
use crate::service::EtcdService;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadConfig {
    /// Member name (also seeds the cluster and member ids).
    pub name: String,
    pub data_dir: PathBuf,
    pub lease_check_interval_ms: u64,
    /// Log entries between snapshots.
    pub snapshot_threshold: u64,
}

impl Default for MetadConfig {
    fn default() -> Self {
        Self {
            name: "default".to_string(),
            data_dir: PathBuf::from("data/metad"),
            lease_check_interval_ms: 500,
            snapshot_threshold: 10_000,
        }
    }
}

pub struct MetadListeners {
    pub client: tokio::net::TcpListener,
    pub admin: Option<tokio::net::TcpListener>,
}

/// How long `run` waits for this node to become leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Serve until `shutdown` resolves, then stop Raft, close files and return.
pub async fn run(cfg: MetadConfig, listeners: MetadListeners, shutdown: Shutdown) -> Result<(), MetadError> {
    let data_dir = cfg.data_dir.clone();
    tokio::fs::create_dir_all(&data_dir).await.map_err(|source| MetadError::Io { path: data_dir.clone(), source })?;
    let client_addr =
        listeners.client.local_addr().map_err(|source| MetadError::Io { path: data_dir.clone(), source })?;

    let db_path = data_dir.join("raft-log.db");
    let log = LogStore::open(&db_path).await?;
    let sm = match StateMachine::open(&data_dir).await {
        Ok(sm) => sm,
        Err(e) => {
            log.close().await;
            return Err(e);
        }
    };
    let shared = sm.shared();
    let raft_config = openraft::Config {
        cluster_name: "aether-metad".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 200,
        election_timeout_max: 400,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_threshold.max(1)),
        // Entries kept below a snapshot (for lagging followers, once there are any).
        max_in_snapshot_log_to_keep: cfg.snapshot_threshold.min(1000),
        ..Default::default()
    }
    .validate()
    .map_err(|e| MetadError::Raft(e.to_string()));
    let raft = match raft_config {
        Ok(c) => {
            Raft::new(NODE_ID, Arc::new(c), Network, log.clone(), sm).await.map_err(|e| MetadError::Raft(e.to_string()))
        }
        Err(e) => Err(e),
    };
    let raft = match raft {
        Ok(r) => r,
        Err(e) => {
            log.close().await;
            return Err(e);
        }
    };

    let node = Arc::new(Node::new(&cfg, raft.clone(), shared, client_addr, db_path, shutdown.clone()));
    let result = serve(node, &cfg, listeners, client_addr, shutdown).await;

    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    log.close().await;
    tracing::info!("metad stopped");
    result
}

async fn serve(
    node: Arc<Node>,
    cfg: &MetadConfig,
    listeners: MetadListeners,
    client_addr: std::net::SocketAddr,
    shutdown: Shutdown,
) -> Result<(), MetadError> {
    let raft = node.raft.clone();
    let readiness = Readiness::default();
    let admin = listeners.admin.map(|l| {
        let checks = vec![readiness.clone()];
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = aether_common::admin::serve(l, checks, shutdown).await {
                tracing::warn!(error = %e, "admin server failed");
            }
        })
    });

    let initialized = raft.is_initialized().await.map_err(|e| MetadError::Raft(e.to_string()))?;
    if !initialized {
        let members = BTreeMap::from([(NODE_ID, BasicNode::new(client_addr.to_string()))]);
        raft.initialize(members).await.map_err(|e| MetadError::Raft(e.to_string()))?;
        tracing::info!(name = %cfg.name, "initialized a new single-node cluster");
    }

    // Wait to lead, then for the log to be applied up to this term's commit.
    let ready = async {
        let mut metrics = raft.metrics();
        metrics.wait_for(|m| m.current_leader == Some(NODE_ID)).await.map_err(|e| MetadError::Raft(e.to_string()))?;
        raft.ensure_linearizable().await.map_err(|e| MetadError::Raft(e.to_string()))?;
        Ok::<(), MetadError>(())
    };
    tokio::select! {
        r = tokio::time::timeout(LEADER_WAIT, ready) => match r {
            Ok(r) => r?,
            Err(_) => return Err(MetadError::NoLeader(LEADER_WAIT)),
        },
        () = shutdown.wait() => return Ok(()),
    }
    readiness.set(true);
    tracing::info!(addr = %client_addr, name = %cfg.name, revision = node.shared.read().store.revision(), "metad serving");

    let lease_task = tokio::spawn(lease::expiry_loop(
        node.clone(),
        Duration::from_millis(cfg.lease_check_interval_ms.max(10)),
        shutdown.clone(),
    ));

    let svc = EtcdService::new(node.clone());
    let incoming = TcpIncoming::from(listeners.client).with_nodelay(Some(true));
    let routes = tonic::service::Routes::new(KvServer::new(svc.clone()))
        .add_service(WatchServer::new(svc.clone()))
        .add_service(LeaseServer::new(svc.clone()))
        .add_service(ClusterServer::new(svc.clone()))
        .add_service(MaintenanceServer::new(svc));
    let result = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.wait())
        .await;
    readiness.set(false);
    let _ = lease_task.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    result.map_err(MetadError::from)
}
