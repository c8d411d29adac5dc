//! The gateway's in-memory view of the catalog in metad: buckets, access keys, node
//! layout and live nodes. Loaded with one Range over the prefix, then kept current with a
//! Watch from the next revision; on any watch failure the cache reconnects and reloads
//! (bounded backoff). Requests read the snapshot only, never metad.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aether_common::admin::Readiness;
use aether_common::catalog::{AccessKeyEntry, AliveEntry, BucketEntry, Keys, NodeEntry, NodeState};
use aether_common::placement::PlacementNode;
use aether_common::shutdown::Shutdown;
use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};

/// A bucket as cached: its entry and the key's mod revision (for compare-and-set).
#[derive(Debug, Clone)]
pub struct CachedBucket {
    pub entry: BucketEntry,
    pub mod_revision: i64,
}

/// One consistent view of the catalog.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub buckets: BTreeMap<String, CachedBucket>,
    pub keys: HashMap<String, AccessKeyEntry>,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub alive: HashMap<String, AliveEntry>,
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
                            self.buckets.insert(name, CachedBucket { entry, mod_revision: kv.mod_revision() });
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
}

/// The shared catalog cache plus the metad client used for transactions.
#[derive(Clone)]
pub struct Catalog {
    keys: Keys,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    client: Arc<RwLock<Option<etcd_client::Client>>>,
    ready: Readiness,
}

impl Catalog {
    pub fn new(prefix: &str) -> Self {
        Self {
            keys: Keys::new(prefix),
            snapshot: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            client: Arc::new(RwLock::new(None)),
            ready: Readiness::default(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
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

    /// Load and watch until shutdown, reconnecting with bounded backoff.
    pub async fn run(self, endpoints: Vec<String>, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let res = tokio::select! {
                r = self.load_and_watch(&endpoints) => r,
                _ = shutdown.wait() => return,
            };
            match res {
                Ok(()) => tracing::info!("catalog watch ended; reloading"),
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "catalog watch failed; reloading")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn load_and_watch(&self, endpoints: &[String]) -> Result<(), CatalogError> {
        let mut client = aether_common::etcd::connect(endpoints, None).await?;
        let prefix = self.keys.prefix().to_string();
        let resp = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
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
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        self.ready.set(true);

        let mut stream = client
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)))
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Err(CatalogError::WatchCanceled(resp.cancel_reason().to_string()));
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
            *guard = Arc::new(next);
        }
        Ok(())
    }
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
