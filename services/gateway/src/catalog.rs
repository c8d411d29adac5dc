//! The gateway's in-memory view of the catalog in metad: buckets, access keys, node
//! layout and live nodes. Loaded with one Range over the prefix, then kept current with a
//! Watch from the next revision; after a watch failure the watch resumes from the last
//! applied revision + 1, and only a compacted revision makes the cache reload (bounded
//! backoff). Requests read the snapshot only, never metad.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aether_common::admin::Readiness;
use aether_common::catalog::{AccessKeyEntry, AliveEntry, BucketEntry, ClusterConfig, Keys, NodeEntry, NodeState};
use aether_common::placement::PlacementNode;
use aether_common::shutdown::Shutdown;
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};

/// A bucket as cached: its entry and the key's mod revision (for compare-and-set).
#[derive(Debug, Clone)]
pub struct CachedBucket {
    pub entry: BucketEntry,
    pub mod_revision: i64,
    /// The key's create revision: which incarnation of the bucket name this is.
    pub create_revision: i64,
}

/// One consistent view of the catalog.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub buckets: BTreeMap<String, CachedBucket>,
    pub keys: HashMap<String, AccessKeyEntry>,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub alive: HashMap<String, AliveEntry>,
    /// The cluster's shared settings (`cluster/config`; `None`: none yet, or malformed).
    pub cluster: Option<ClusterConfig>,
}

impl Snapshot {
    /// Active layout nodes, as placement takes them.
    pub fn placement_nodes(&self) -> Vec<PlacementNode> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state == NodeState::Active)
            .map(|(id, n)| PlacementNode { id: id.clone(), zone: n.zone.clone(), weight: n.weight })
            .collect()
    }

    /// The layout's size and how many of its active nodes hold a live lease, as gauges.
    fn record_gauges(&self) {
        let active = self.placement_nodes();
        let live = active.iter().filter(|n| self.is_alive(&n.id)).count();
        metrics::gauge!("gateway_layout_nodes").set(self.nodes.len() as f64);
        metrics::gauge!("gateway_live_nodes").set(live as f64);
    }

    pub fn is_alive(&self, node_id: &str) -> bool {
        self.alive.contains_key(node_id)
    }

    /// The gRPC address of a node (layout entry first, then its liveness entry).
    pub fn addr(&self, node_id: &str) -> Option<&str> {
        self.nodes.get(node_id).map(|n| n.addr.as_str()).or_else(|| self.alive.get(node_id).map(|a| a.addr.as_str()))
    }

    fn apply(&mut self, keys: &Keys, kv: &KeyValue, deleted: bool) {
        let Ok(key) = kv.key_str() else { return };
        let Some(rest) = key.strip_prefix(keys.prefix()) else { return };
        let (kind, name) = match rest.split_once('/') {
            Some((k, n)) if !n.is_empty() => (k, n.to_string()),
            _ => return,
        };
        match kind {
            "buckets" => {
                if deleted {
                    self.buckets.remove(&name);
                } else {
                    match serde_json::from_slice::<BucketEntry>(kv.value()) {
                        Ok(entry) => {
                            self.buckets.insert(
                                name,
                                CachedBucket {
                                    entry,
                                    mod_revision: kv.mod_revision(),
                                    create_revision: kv.create_revision(),
                                },
                            );
                        }
                        Err(e) => tracing::warn!(bucket = %name, error = %e, "ignoring malformed bucket entry"),
                    }
                }
            }
            "keys" => {
                if deleted {
                    self.keys.remove(&name);
                } else {
                    match serde_json::from_slice::<AccessKeyEntry>(kv.value()) {
                        Ok(entry) => {
                            self.keys.insert(name, entry);
                        }
                        Err(e) => tracing::warn!(access_key = %name, error = %e, "ignoring malformed key entry"),
                    }
                }
            }
            "nodes" => {
                if deleted {
                    self.nodes.remove(&name);
                } else {
                    match serde_json::from_slice::<NodeEntry>(kv.value()) {
                        Ok(entry) => {
                            self.nodes.insert(name, entry);
                        }
                        Err(e) => tracing::warn!(node = %name, error = %e, "ignoring malformed node entry"),
                    }
                }
            }
            "cluster" if name == "config" => {
                self.cluster = if deleted { None } else { ClusterConfig::parse(kv.value()) };
                if !deleted && self.cluster.is_none() {
                    tracing::warn!("ignoring a malformed cluster config entry");
                }
            }
            "alive" => {
                if deleted {
                    self.alive.remove(&name);
                } else {
                    match serde_json::from_slice::<AliveEntry>(kv.value()) {
                        Ok(entry) => {
                            self.alive.insert(name, entry);
                        }
                        Err(e) => tracing::warn!(node = %name, error = %e, "ignoring malformed alive entry"),
                    }
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("metad is not connected")]
    NotConnected,
    #[error("metad: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("watch canceled by metad: {0}")]
    WatchCanceled(String),
    #[error("watch from revision {requested} refused: history compacted up to {compacted}")]
    Compacted { requested: i64, compacted: i64 },
}

/// How the cache has (re)synchronised so far, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogStats {
    /// Full loads with a Range over the prefix (the first one included).
    pub full_loads: u64,
    /// Watches re-established from the last applied revision + 1, without a reload.
    pub resumed_watches: u64,
    /// Resumes refused because that revision was compacted (each followed by a full load).
    pub compacted_fallbacks: u64,
}

#[derive(Debug, Default)]
struct Counters {
    full_loads: AtomicU64,
    resumed_watches: AtomicU64,
    compacted_fallbacks: AtomicU64,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The shared catalog cache plus the metad client used for transactions.
#[derive(Clone)]
pub struct Catalog {
    keys: Keys,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    client: Arc<RwLock<Option<etcd_client::Client>>>,
    ready: Readiness,
    counters: Arc<Counters>,
}

impl Catalog {
    pub fn new(prefix: &str) -> Self {
        Self {
            keys: Keys::new(prefix),
            snapshot: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            client: Arc::new(RwLock::new(None)),
            ready: Readiness::default(),
            counters: Arc::default(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
    }

    pub fn stats(&self) -> CatalogStats {
        CatalogStats {
            full_loads: self.counters.full_loads.load(Ordering::Relaxed),
            resumed_watches: self.counters.resumed_watches.load(Ordering::Relaxed),
            compacted_fallbacks: self.counters.compacted_fallbacks.load(Ordering::Relaxed),
        }
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A metad client for transactions.
    pub fn client(&self) -> Result<etcd_client::Client, CatalogError> {
        self.client.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(CatalogError::NotConnected)
    }

    fn replace(&self, snap: Snapshot) {
        snap.record_gauges();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
    }

    /// Apply a bucket change we made ourselves at once (the watch confirms it later), so
    /// the next request through this gateway already sees it.
    pub fn apply_local_bucket(&self, name: &str, entry: Option<CachedBucket>) {
        let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        let mut snap = (**guard).clone();
        match entry {
            Some(b) => {
                // Never go back to an older revision than the watch already applied.
                if snap.buckets.get(name).is_none_or(|cur| cur.mod_revision <= b.mod_revision) {
                    snap.buckets.insert(name.to_string(), b);
                }
            }
            None => {
                snap.buckets.remove(name);
            }
        }
        *guard = Arc::new(snap);
    }

    /// Load and watch until shutdown. After a watch failure the watch resumes from the last
    /// applied revision + 1 (no event is missed, none re-read in full); only when metad
    /// answers that this revision is compacted does the cache reload with a Range. Retries
    /// back off from 100 ms to at most 5 s, and start over at 100 ms once a watch is up.
    pub async fn run(self, endpoints: Vec<String>, shutdown: Shutdown) {
        let mut sync = SyncState { client: None, applied: None, backoff: MIN_BACKOFF };
        loop {
            let res = tokio::select! {
                r = self.sync(&endpoints, &mut sync) => r,
                _ = shutdown.wait() => return,
            };
            match res {
                Err(e @ CatalogError::Compacted { .. }) => {
                    tracing::warn!(error = %e, "catalog watch cannot resume; reloading");
                    self.counters.compacted_fallbacks.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("gateway_catalog_compacted_fallbacks_total").increment(1);
                    sync.applied = None;
                    // A reload follows at once: it cannot be refused the same way.
                    continue;
                }
                Ok(()) => tracing::info!(revision = sync.applied, "catalog watch ended; resuming"),
                Err(e) => tracing::warn!(
                    error = %e,
                    revision = sync.applied,
                    backoff_ms = sync.backoff.as_millis() as u64,
                    "catalog watch failed; resuming"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(sync.backoff) => {}
                _ = shutdown.wait() => return,
            }
            sync.backoff = (sync.backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One round: connect if needed, load in full unless a revision was applied already,
    /// then watch from the next revision until the stream breaks.
    async fn sync(&self, endpoints: &[String], st: &mut SyncState) -> Result<(), CatalogError> {
        let mut client = match &st.client {
            Some(c) => c.clone(),
            None => {
                let c = aether_common::etcd::connect(endpoints, None).await?;
                *self.client.write().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                st.client = Some(c.clone());
                c
            }
        };
        let prefix = self.keys.prefix().to_string();
        let resuming = st.applied.is_some();
        let start = match st.applied {
            Some(rev) => rev + 1,
            None => {
                let rev = self.load(&mut client, &prefix).await?;
                st.applied = Some(rev);
                rev + 1
            }
        };
        let mut stream =
            client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(start))).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    return Err(CatalogError::Compacted { requested: start, compacted: resp.compact_revision() });
                }
                return Err(CatalogError::WatchCanceled(resp.cancel_reason().to_string()));
            }
            if resp.created() {
                st.backoff = MIN_BACKOFF;
                if resuming {
                    tracing::info!(revision = start, "catalog watch resumed");
                    self.counters.resumed_watches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("gateway_catalog_watch_resumes_total").increment(1);
                }
            }
            if resp.events().is_empty() {
                continue;
            }
            let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            let mut next = (**guard).clone();
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    next.apply(&self.keys, kv, ev.event_type() == EventType::Delete);
                    next.revision = next.revision.max(kv.mod_revision());
                }
            }
            st.applied = Some(st.applied.unwrap_or(0).max(next.revision));
            next.record_gauges();
            *guard = Arc::new(next);
        }
        Ok(())
    }

    /// Replace the snapshot with one Range over the prefix; returns its revision.
    async fn load(&self, client: &mut etcd_client::Client, prefix: &str) -> Result<i64, CatalogError> {
        let resp = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut snap = Snapshot { revision, ..Snapshot::default() };
        for kv in resp.kvs() {
            snap.apply(&self.keys, kv, false);
        }
        tracing::info!(
            revision,
            buckets = snap.buckets.len(),
            nodes = snap.nodes.len(),
            alive = snap.alive.len(),
            "catalog loaded"
        );
        self.replace(snap);
        self.counters.full_loads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_catalog_full_loads_total").increment(1);
        self.ready.set(true);
        Ok(revision)
    }
}

/// What `run` keeps between rounds.
struct SyncState {
    client: Option<etcd_client::Client>,
    /// The last revision applied to the snapshot (None: load in full first).
    applied: Option<i64>,
    backoff: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_takes_active_nodes_only() {
        let mut s = Snapshot::default();
        s.nodes.insert(
            "a".into(),
            NodeEntry { addr: "x:1".into(), zone: String::new(), weight: 1, state: NodeState::Active },
        );
        s.nodes.insert(
            "b".into(),
            NodeEntry { addr: "x:2".into(), zone: String::new(), weight: 1, state: NodeState::Draining },
        );
        let p = s.placement_nodes();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, "a");
        assert_eq!(s.addr("b"), Some("x:2"));
    }
}
