//! `GET /cluster` on the gateway's admin port (and `aether cluster status`, which reads
//! it): one JSON document with every part's view — each metad member's own status (leader,
//! term, raft index, revision), the storage layout with liveness and each live node's
//! object and byte counts, and what this gateway left for repair. Best effort: a member or
//! node that does not answer within [`PROBE_TIMEOUT`] is listed with its error, so a
//! partition is visible at a glance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aether_common::admin::ReadyCheck;
use aether_proto::blob::v1 as pb;
use axum::Json;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::s3::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Replica writes this gateway did not get onto a replica (node without a lease, failed or
/// timed out): the backlog anti-entropy has to repair, counted since start.
static MISSED_REPLICA_WRITES: AtomicU64 = AtomicU64::new(0);

/// Count `n` replica writes that missed their node.
pub fn replica_writes_missed(n: usize) {
    if n > 0 {
        MISSED_REPLICA_WRITES.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("gateway_replica_write_failures_total").increment(n as u64);
    }
}

/// Count a request answered 503 for want of a write or read quorum.
pub fn quorum_failed(kind: &'static str) {
    metrics::counter!("gateway_quorum_failures_total", "kind" => kind).increment(1);
}

/// Make the gateway's own metrics exist (at zero) before the first event, so dashboards
/// and scrapers see every series from the start.
pub fn register_metrics() {
    metrics::counter!("gateway_replica_write_failures_total").increment(0);
    for kind in ["write", "read"] {
        metrics::counter!("gateway_quorum_failures_total", "kind" => kind).increment(0);
    }
    for name in [
        "gateway_bytes_in_total",
        "gateway_bytes_out_total",
        "gateway_bytes_copied_total",
        "gateway_read_fallbacks_total",
        "gateway_read_resumes_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    crate::repair::register_metrics();
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterView {
    pub gateway_id: String,
    pub ready: bool,
    pub not_ready: Vec<String>,
    pub catalog_revision: i64,
    pub buckets: usize,
    pub replication_factor: usize,
    pub metad: Vec<MetadMember>,
    pub nodes: Vec<NodeView>,
    /// Replica writes this gateway could not place (see [`replica_writes_missed`]).
    pub missed_replica_writes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MetadMember {
    pub endpoint: String,
    /// Hex ids, as etcdctl prints them.
    pub member_id: Option<String>,
    pub leader: Option<String>,
    pub is_leader: bool,
    pub version: Option<String>,
    pub raft_term: Option<u64>,
    pub raft_index: Option<u64>,
    pub raft_applied_index: Option<u64>,
    pub revision: Option<i64>,
    pub db_size: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub addr: String,
    pub zone: String,
    pub weight: u32,
    pub state: aether_common::catalog::NodeState,
    pub alive: bool,
    pub objects: Option<u64>,
    pub bytes: Option<u64>,
    pub error: Option<String>,
}

/// The gateway's readiness: the catalog is loaded and at least a write quorum of the
/// active storage nodes holds a live lease.
pub fn readiness(state: &Arc<AppState>) -> Vec<ReadyCheck> {
    let catalog = state.store.catalog.readiness().check("catalog not loaded from metad");
    let st = state.clone();
    let quorum = ReadyCheck::new(move || {
        let snap = st.store.catalog.snapshot();
        let active = snap.placement_nodes();
        let rf = st.store.replication_factor(&snap).min(active.len());
        let need = st.store.write_quorum(rf);
        let live = active.iter().filter(|n| snap.is_alive(&n.id)).count();
        if active.is_empty() {
            Err("no active storage node in the layout".to_string())
        } else if live < need {
            Err(format!("{live} live storage node(s), the write quorum needs {need}"))
        } else {
            Ok(())
        }
    });
    vec![catalog, quorum]
}

/// The admin routes the gateway adds: `GET /cluster`.
pub fn routes(state: Arc<AppState>, checks: Vec<ReadyCheck>) -> axum::Router {
    axum::Router::new().route(
        "/cluster",
        get(move || {
            let (state, checks) = (state.clone(), checks.clone());
            async move { Json(view(&state, &checks).await) }
        }),
    )
}

pub async fn view(state: &Arc<AppState>, checks: &[ReadyCheck]) -> ClusterView {
    let snap = state.store.catalog.snapshot();
    let not_ready: Vec<String> = checks.iter().filter_map(|c| c.eval().err()).collect();
    let metad = futures::future::join_all(state.cfg.metad_endpoints.iter().map(|ep| metad_member(ep.clone())));
    let nodes = futures::future::join_all(snap.nodes.iter().map(|(id, n)| {
        let alive = snap.is_alive(id);
        let client = state.store.client(id, &n.addr);
        let mut view = NodeView {
            id: id.clone(),
            addr: n.addr.clone(),
            zone: n.zone.clone(),
            weight: n.weight,
            state: n.state,
            alive,
            objects: None,
            bytes: None,
            error: None,
        };
        async move {
            if !alive {
                view.error = Some("no live lease".to_string());
                return view;
            }
            let asked = match client {
                Ok(mut c) => tokio::time::timeout(PROBE_TIMEOUT, c.node_stats(pb::NodeStatsRequest {}))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r.map_err(|s| s.message().to_string())),
                Err(e) => Err(e.to_string()),
            };
            match asked {
                Ok(r) => {
                    let r = r.into_inner();
                    view.objects = Some(r.objects);
                    view.bytes = Some(r.bytes);
                }
                Err(e) => view.error = Some(e),
            }
            view
        }
    }));
    let (metad, nodes) = futures::join!(metad, nodes);
    ClusterView {
        gateway_id: state.store.gateway_id().to_string(),
        ready: not_ready.is_empty(),
        not_ready,
        catalog_revision: snap.revision,
        buckets: snap.buckets.len(),
        replication_factor: state.store.replication_factor(&snap),
        metad,
        nodes,
        missed_replica_writes: MISSED_REPLICA_WRITES.load(Ordering::Relaxed),
    }
}

/// One member's own Maintenance.Status (asked of that member alone, not failed over).
async fn metad_member(endpoint: String) -> MetadMember {
    let mut m = MetadMember { endpoint: endpoint.clone(), ..MetadMember::default() };
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(PROBE_TIMEOUT).with_timeout(PROBE_TIMEOUT);
    let asked = tokio::time::timeout(PROBE_TIMEOUT * 2, async {
        let mut c = etcd_client::Client::connect([endpoint.as_str()], Some(opts)).await?;
        c.status().await
    })
    .await;
    match asked {
        Ok(Ok(s)) => {
            let id = s.header().map(|h| h.member_id()).unwrap_or(0);
            m.member_id = Some(format!("{id:x}"));
            m.leader = Some(format!("{:x}", s.leader()));
            m.is_leader = id != 0 && id == s.leader();
            m.version = Some(s.version().to_string());
            m.raft_term = Some(s.raft_term());
            m.raft_index = Some(s.raft_index());
            m.raft_applied_index = Some(s.raft_applied_index());
            m.revision = s.header().map(|h| h.revision());
            m.db_size = Some(s.db_size());
        }
        Ok(Err(e)) => m.error = Some(e.to_string()),
        Err(_) => m.error = Some("timed out".to_string()),
    }
    m
}
