//! metad: aether's metadata service. A Raft-replicated (openraft) MVCC key-value store
//! behind an etcd v3-compatible gRPC API (KV, Watch, Lease, Cluster, Maintenance), so
//! `etcdctl` and the `etcd-client` crate work against it unchanged. 1, 3 or 5 members,
//! bootstrapped like etcd (`name`, `initial_cluster`, `initial_cluster_state`).

mod b64;
mod error;
mod lease;
mod mvcc;
mod node;
mod peer;
mod raft;
mod service;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aether_common::admin::Readiness;
use aether_common::shutdown::Shutdown;
use aether_proto::etcd::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use aether_proto::raft::v1::raft_peer_server::RaftPeerServer;
use openraft::SnapshotPolicy;
use tonic::transport::server::TcpIncoming;

pub use crate::error::{EtcdError, MetadError};
use crate::node::{Node, NodeParts, fnv1a};
use crate::peer::{PeerCall, PeerReply, PeerService, Peers};
use crate::raft::{Identity, LogStore, Member, NodeId, Raft, StateMachine};
use crate::service::EtcdService;

/// etcd's `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Form a new cluster from `initial_cluster` (every listed member starts with `new`).
    #[default]
    New,
    /// Join a running cluster this member was added to (etcd's MemberAdd).
    Existing,
}

impl std::str::FromStr for ClusterState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(Self::New),
            "existing" => Ok(Self::Existing),
            other => Err(format!("initial cluster state must be new or existing, not {other:?}")),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadConfig {
    /// Member name (also seeds the cluster and member ids).
    pub name: String,
    pub data_dir: PathBuf,
    pub lease_check_interval_ms: u64,
    /// Log entries between snapshots.
    pub snapshot_threshold: u64,
    /// `name=peer_url,...` for every member of a new cluster (etcd's `--initial-cluster`).
    /// Empty: a one-member cluster of this member.
    pub initial_cluster: String,
    pub initial_cluster_state: ClusterState,
    /// Seeds the cluster and member ids (etcd's `--initial-cluster-token`).
    pub initial_cluster_token: String,
    /// Client URLs announced to the cluster (MemberList); default `http://<client listener>`.
    pub advertise_client_urls: Vec<String>,
    pub heartbeat_interval_ms: u64,
    /// How often a watch with `progress_notify` gets an empty response with the current
    /// revision (etcd's default: 10 minutes).
    pub watch_progress_notify_interval_ms: u64,
    /// Election timeout; a follower waits between this and twice this without a heartbeat.
    pub election_timeout_ms: u64,
}

impl Default for MetadConfig {
    fn default() -> Self {
        Self {
            name: "default".to_string(),
            data_dir: PathBuf::from("data/metad"),
            lease_check_interval_ms: 500,
            snapshot_threshold: 10_000,
            initial_cluster: String::new(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "aether-metad".to_string(),
            advertise_client_urls: Vec::new(),
            heartbeat_interval_ms: 100,
            watch_progress_notify_interval_ms: 600_000,
            election_timeout_ms: 1000,
        }
    }
}

pub struct MetadListeners {
    pub client: tokio::net::TcpListener,
    /// Raft traffic between members; `None` only for a one-member cluster.
    pub peer: Option<tokio::net::TcpListener>,
    pub admin: Option<tokio::net::TcpListener>,
}

/// How long the client port waits for this member's attributes to be published.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// How long a member started with `existing` keeps asking its peers who it is.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// This member's peer URL and the parsed `initial_cluster`.
struct Bootstrap {
    own_url: String,
    members: Vec<(String, String)>,
}

fn bootstrap(
    cfg: &MetadConfig,
    peer_addr: Option<SocketAddr>,
    client_addr: SocketAddr,
) -> Result<Bootstrap, MetadError> {
    let default_url = format!("http://{}", peer_addr.unwrap_or(client_addr));
    let spec = cfg.initial_cluster.trim();
    if spec.is_empty() {
        return Ok(Bootstrap { own_url: default_url.clone(), members: vec![(cfg.name.clone(), default_url)] });
    }
    let mut members = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .filter(|(n, u)| !n.is_empty() && (u.starts_with("http://") || u.starts_with("https://")))
            .ok_or_else(|| {
                MetadError::Config(format!("initial cluster entry {part:?} is not name=http://host:port"))
            })?;
        if members.iter().any(|(n, _): &(String, String)| n == name) {
            return Err(MetadError::Config(format!("initial cluster names {name:?} twice")));
        }
        members.push((name.to_string(), url.to_string()));
    }
    let own_url =
        members.iter().find(|(n, _)| *n == cfg.name).map(|(_, u)| u.clone()).ok_or_else(|| {
            MetadError::Config(format!("member {:?} is not in the initial cluster {spec:?}", cfg.name))
        })?;
    if members.len() > 1 && peer_addr.is_none() {
        return Err(MetadError::Config("a multi-member cluster needs a peer listener".into()));
    }
    Ok(Bootstrap { own_url, members })
}

fn member_id(token: &str, peer_url: &str) -> NodeId {
    fnv1a(&[b"aether-member", token.as_bytes(), peer_url.as_bytes()])
}

/// This member's identity: stored, or derived (new cluster), or learned from the running
/// cluster (existing).
async fn identity(cfg: &MetadConfig, log: &LogStore, boot: &Bootstrap, peers: &Peers) -> Result<Identity, MetadError> {
    let storage = |e: openraft::StorageIOError<NodeId>| MetadError::Raft(e.to_string());
    if let Some(id) = log.identity().await.map_err(storage)? {
        return Ok(id);
    }
    let id = if log.has_state().await.map_err(storage)? {
        // A data dir from the single-member first cut: Raft node 1.
        Identity { member_id: 1, cluster_id: fnv1a(&[b"aether-cluster", cfg.name.as_bytes()]) }
    } else if cfg.initial_cluster_state == ClusterState::New {
        let mut urls: Vec<&str> = boot.members.iter().map(|(_, u)| u.as_str()).collect();
        urls.sort_unstable();
        let mut parts: Vec<&[u8]> = vec![b"aether-cluster", cfg.initial_cluster_token.as_bytes()];
        parts.extend(urls.iter().map(|u| u.as_bytes()));
        Identity { member_id: member_id(&cfg.initial_cluster_token, &boot.own_url), cluster_id: fnv1a(&parts) }
    } else {
        join_identity(boot, peers).await?
    };
    log.save_identity(&id).await.map_err(storage)?;
    Ok(id)
}

/// Ask the other initial members for the cluster id and the member id MemberAdd gave this
/// member's peer URL.
async fn join_identity(boot: &Bootstrap, peers: &Peers) -> Result<Identity, MetadError> {
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    loop {
        for (_, url) in boot.members.iter().filter(|(_, u)| *u != boot.own_url) {
            match peers.call(url, &PeerCall::Identity, Duration::from_secs(2)).await {
                Ok(PeerReply::Identity { cluster_id, members }) => {
                    return match members.iter().find(|m| m.member.addr == boot.own_url) {
                        Some(m) => Ok(Identity { member_id: m.id, cluster_id }),
                        None => Err(MetadError::Config(format!(
                            "peer URL {} is not a member of the cluster at {url}; add it with MemberAdd first",
                            boot.own_url
                        ))),
                    };
                }
                Ok(other) => tracing::warn!(peer = %url, reply = ?other, "unexpected identity reply"),
                Err(e) => tracing::debug!(peer = %url, error = %e, "peer not answering yet"),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MetadError::Config(format!("no member of the existing cluster answered within {JOIN_WAIT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // retry interval
    }
}

/// Written in the data dir when this member learns it was removed from the cluster; a
/// start on that data dir then fails instead of waiting forever for a leader.
const REMOVED_MARKER: &str = "removed";

/// Serve until `shutdown` resolves, then stop Raft, close files and return.
pub async fn run(cfg: MetadConfig, listeners: MetadListeners, shutdown: Shutdown) -> Result<(), MetadError> {
    // The metrics recorder first: what is recorded before it is installed is lost.
    let _ = aether_common::admin::prometheus();
    let data_dir = cfg.data_dir.clone();
    let io = |source| MetadError::Io { path: data_dir.clone(), source };
    tokio::fs::create_dir_all(&data_dir).await.map_err(io)?;
    let removed = data_dir.join(REMOVED_MARKER);
    if tokio::fs::try_exists(&removed).await.unwrap_or(false) {
        return Err(MetadError::Removed(removed));
    }
    let client_addr = listeners.client.local_addr().map_err(io)?;
    let peer_addr = listeners.peer.as_ref().map(|l| l.local_addr()).transpose().map_err(io)?;
    let boot = bootstrap(&cfg, peer_addr, client_addr)?;

    let db_path = data_dir.join("raft-log.db");
    let log = LogStore::open(&db_path).await?;
    let result = start(cfg, listeners, shutdown, &log, boot, client_addr, peer_addr).await;
    log.close().await;
    tracing::info!("metad stopped");
    result
}

async fn start(
    cfg: MetadConfig,
    listeners: MetadListeners,
    shutdown: Shutdown,
    log: &LogStore,
    boot: Bootstrap,
    client_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
) -> Result<(), MetadError> {
    let raft_err = |e: &dyn std::fmt::Display| MetadError::Raft(e.to_string());
    // Outgoing peer connections leave from the peer listener's address when it is a
    // specific one.
    let local_ip = peer_addr.map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
    let peers = Peers::new(local_ip);
    let identity = identity(&cfg, log, &boot, &peers).await?;
    peers.set_from(identity.member_id);

    let sm = StateMachine::open(&cfg.data_dir).await?;
    let shared = sm.shared();
    let election = cfg.election_timeout_ms.max(cfg.heartbeat_interval_ms * 3).max(10);
    let raft_config = openraft::Config {
        cluster_name: "aether-metad".to_string(),
        heartbeat_interval: cfg.heartbeat_interval_ms.max(1),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_threshold.max(1)),
        // Entries kept below a snapshot, so a briefly lagging follower needs no snapshot.
        max_in_snapshot_log_to_keep: cfg.snapshot_threshold.min(1000),
        ..Default::default()
    }
    .validate()
    .map_err(|e| raft_err(&e))?;
    let raft = Raft::new(identity.member_id, Arc::new(raft_config), peers.clone(), log.clone(), sm)
        .await
        .map_err(|e| raft_err(&e))?;

    let client_urls = if cfg.advertise_client_urls.is_empty() {
        vec![format!("http://{client_addr}")]
    } else {
        cfg.advertise_client_urls.clone()
    };
    let node = Arc::new(Node::new(NodeParts {
        raft: raft.clone(),
        shared,
        name: cfg.name.clone(),
        identity,
        client_urls,
        db_path: cfg.data_dir.join("raft-log.db"),
        peers,
        shutdown: shutdown.clone(),
        watch_progress_interval: Duration::from_millis(cfg.watch_progress_notify_interval_ms.max(10)),
    }));
    let db = node.shared.db.clone();
    let result = serve(node, &cfg, listeners, &boot, client_addr, shutdown).await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    db.close().await;
    result
}

async fn serve(
    node: Arc<Node>,
    cfg: &MetadConfig,
    listeners: MetadListeners,
    boot: &Bootstrap,
    client_addr: SocketAddr,
    shutdown: Shutdown,
) -> Result<(), MetadError> {
    let raft = node.raft.clone();
    let readiness = Readiness::default();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(l) = listeners.admin {
        let checks = vec![readiness.check("no known leader")];
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = aether_common::admin::serve(l, checks, Default::default(), shutdown).await {
                tracing::warn!(error = %e, "admin server failed");
            }
        });
    }
    if let Some(l) = listeners.peer {
        let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
        let svc = RaftPeerServer::new(PeerService::new(node.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, shutdown.wait())
                .await
            {
                tracing::error!(error = %e, "peer server failed");
            }
        });
    }

    let initialized = raft.is_initialized().await.map_err(|e| MetadError::Raft(e.to_string()))?;
    if !initialized && cfg.initial_cluster_state == ClusterState::New {
        let members: BTreeMap<NodeId, Member> = boot
            .members
            .iter()
            .map(|(name, url)| {
                let m = Member { addr: url.clone(), name: name.clone(), client_urls: Vec::new() };
                (member_id(&cfg.initial_cluster_token, url), m)
            })
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(name = %cfg.name, members = boot.members.len(), "initialized a new cluster"),
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(MetadError::Raft(e.to_string())),
        }
    }

    // Ready while a leader is known and this member's attributes are published; a member
    // removed from the cluster shuts down, as etcd's does. Woken by server metrics (leader,
    // state, vote) and by the applied membership changing (attributes published, members
    // added or removed), not by `metrics()`, which changes with every log append and apply;
    // the tick catches a removal the peer transport reported.
    {
        let mut metrics = raft.server_metrics();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        let node = node.clone();
        let marker = cfg.data_dir.join(REMOVED_MARKER);
        tasks.spawn(async move {
            loop {
                // Registered before the state is read, so a change in between still wakes it.
                let membership = node.shared.membership_changed.notified();
                tokio::pin!(membership);
                membership.as_mut().enable();
                let has_leader = metrics.borrow_and_update().current_leader.is_some();
                readiness.set(has_leader && node.published());
                if node.check_removed().is_err() {
                    tracing::error!("this member was removed from the cluster; shutting down");
                    if node.removal_committed()
                        && let Err(e) = tokio::fs::write(&marker, b"removed from the cluster\n").await
                    {
                        tracing::warn!(path = %marker.display(), error = %e, "could not record the removal");
                    }
                    shutdown.trigger();
                    break;
                }
                tokio::select! {
                    r = metrics.changed() => if r.is_err() { break },
                    () = membership => {}
                    _ = tick.tick() => {}
                    () = shutdown.wait() => break,
                }
            }
            readiness.set(false);
        });
    }
    // Gauges for dashboards: sampled once a second (Prometheus scrapes every few seconds).
    {
        let node = node.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.wait() => break,
                }
                record_gauges(&node);
            }
        });
    }
    tasks.spawn(lease::expiry_loop(
        node.clone(),
        Duration::from_millis(cfg.lease_check_interval_ms.max(10)),
        shutdown.clone(),
    ));
    tasks.spawn(publish_loop(node.clone()));
    // Like etcd, serve clients once this member's name and client URLs are in the
    // membership config (so `member list` and `--cluster` commands see every member), but
    // not later than PUBLISH_WAIT: requests then get etcd's no-leader errors, not silence.
    let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
    while !node.published() && tokio::time::Instant::now() < deadline {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {} // poll interval
            () = shutdown.wait() => break,
        }
    }
    if !node.published() {
        tracing::warn!("serving clients before this member's attributes were published (no quorum yet?)");
    }
    tracing::info!(
        client = %client_addr, name = %cfg.name, member_id = %format!("{:x}", node.id),
        cluster_id = %format!("{:x}", node.cluster_id), "metad serving"
    );

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
    // Every task ends on shutdown; the client server returning early (an error) also ends
    // the rest.
    shutdown.trigger();
    while tasks.join_next().await.is_some() {}
    result.map_err(MetadError::from)
}

fn record_gauges(node: &Node) {
    let (term, last_index, applied, leader) = {
        let m = node.raft.metrics();
        let m = m.borrow();
        (m.current_term, m.last_log_index.unwrap_or(0), m.last_applied.map(|l| l.index).unwrap_or(0), m.current_leader)
    };
    let (revision, compact_revision, leases) = {
        let st = node.shared.read();
        (st.revision, st.compact_revision, st.leases.len())
    };
    metrics::gauge!("metad_is_leader").set(if leader == Some(node.id) { 1.0 } else { 0.0 });
    metrics::gauge!("metad_has_leader").set(if leader.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!("metad_raft_term").set(term as f64);
    metrics::gauge!("metad_raft_index").set(last_index as f64);
    metrics::gauge!("metad_raft_applied_index").set(applied as f64);
    metrics::gauge!("metad_revision").set(revision as f64);
    metrics::gauge!("metad_compact_revision").set(compact_revision as f64);
    metrics::gauge!("metad_leases").set(leases as f64);
}

/// Announce this member's name and client URLs in the membership config (once a leader
/// is known; retried, bounded).
async fn publish_loop(node: Arc<Node>) {
    for _ in 0..600 {
        if node.published() {
            return;
        }
        let op =
            peer::MemberOp::Publish { id: node.id, name: node.name.clone(), client_urls: node.client_urls.clone() };
        match node.member_op(op).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {} // retry interval
            () = node.shutdown.wait() => return,
        }
    }
}
