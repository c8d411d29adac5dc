//! Anti-entropy, handoff and tombstone collection: one background loop per daemon, and
//! the serving side of the `Digest` / `Entries` / `Versions` RPCs.
//!
//! Every `interval`, the loop reads the layout from metad and walks the local index,
//! bucket by bucket, in key order:
//!
//! - **Handoff** (rebalance, drain). A key whose replica set (placement over the
//!   `active` nodes) no longer holds this daemon is offered to its owners: each is asked
//!   which version it holds (`Versions`), sent the local copy when it holds an older one
//!   or none (`Put` verbatim or `Delete` for a tombstone), and only once *every* owner
//!   holds this version or a newer one durably (they acked) is the local copy dropped. A
//!   dead owner keeps the copy here until the next cycle.
//! - **Anti-entropy**. For each live peer, the keys whose replica set holds both daemons
//!   are folded into 256 leaves (by the first byte of the key's placement digest; a leaf
//!   is the XOR of a hash of key, version, tombstone flag and tag-change clock). The peer
//!   computes the same over its index (the layout travels in the request, so both sides
//!   filter alike): equal roots end the exchange (16 bytes); otherwise the leaves are
//!   compared, and for the leaves that differ the peer's entries are fetched and every
//!   key this daemon holds newer (or the peer lacks) is pushed. Each daemon pushes only
//!   what it holds newer; the peer pushes the rest in its own cycle.
//! - **Multipart uploads** in progress are compared upload by upload with their co-owners
//!   and handed off like objects (`sync/uploads.rs`).
//! - **Tombstones** older than the grace are dropped (the grace must exceed the longest
//!   time a replica can stay behind, or a deleted key can come back from it).
//! - **Eviction** (opt-in): an `active` node without a liveness lease for longer than the
//!   eviction grace is marked `removed` in the layout, so its keys get new owners.
//!
//! Everything is idempotent and keyed on durable state, so a restart resumes by running a
//! cycle again: keys already moved compare equal and cost only digests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_common::catalog::{AliveEntry, ClusterConfig, Keys, NodeEntry, NodeState};
use aether_common::grpc::ChannelPool;
use aether_common::grpc::ToNode;
use aether_common::placement::{PlacementNode, object_digest, replicas_of_digest};
use aether_common::shutdown::Shutdown;
use aether_proto::blob::v1 as pb;
use bytes::Bytes;
use futures::StreamExt as _;
use md5::Digest as _;
use pb::blob_service_client::BlobServiceClient;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::convert::Ver;
use crate::error::{BlobdError, Result};
use crate::index::SyncRow;
use crate::service::{Store, open_segments, read_segments};

mod uploads;
pub use uploads::uploads;

/// Leaves of a digest tree (the first byte of the placement digest).
pub const LEAVES: usize = 256;
/// Keys offered to owners per `Versions` call.
const HANDOFF_BATCH: usize = 256;
/// Entries per `Entries` page (about 60 bytes each on the wire).
const ENTRIES_PAGE: usize = 20_000;
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

type Leaf = [u8; 16];
type Client = BlobServiceClient<InterceptedService<Channel, ToNode>>;

#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Time between the end of one cycle and the start of the next.
    pub interval: Duration,
    pub replication_factor: usize,
    /// Body bytes pushed per second at most (handoff and repair together); `None`: no cap.
    pub max_bytes_per_sec: Option<u64>,
    /// Pushes in flight at once.
    pub concurrency: usize,
    /// Tombstones older than this are dropped.
    pub tombstone_grace: Duration,
    /// Mark an `active` node `removed` after this long without a lease; `None`: never.
    pub evict_grace: Option<Duration>,
    pub endpoints: Vec<String>,
    pub keys: Keys,
    /// Local address connections to peers leave from.
    pub source_addr: Option<std::net::IpAddr>,
}

/// The placement input both sides of an exchange agree on.
#[derive(Debug, Clone)]
pub struct Scope {
    nodes: Vec<PlacementNode>,
    rf: usize,
}

impl Scope {
    fn from_wire(s: Option<&pb::SyncScope>) -> Result<(Self, String)> {
        let s = s.ok_or_else(|| BlobdError::InvalidArgument("scope is required".into()))?;
        if s.peer.is_empty() || s.replication_factor == 0 {
            return Err(BlobdError::InvalidArgument("scope needs a peer and a replication factor".into()));
        }
        let nodes = s
            .nodes
            .iter()
            .map(|n| PlacementNode { id: n.id.clone(), zone: n.zone.clone(), weight: n.weight })
            .collect();
        Ok((Self { nodes, rf: s.replication_factor as usize }, s.peer.clone()))
    }

    fn to_wire(&self, peer: &str) -> pb::SyncScope {
        pb::SyncScope {
            nodes: self
                .nodes
                .iter()
                .map(|n| pb::SyncNode { id: n.id.clone(), zone: n.zone.clone(), weight: n.weight })
                .collect(),
            replication_factor: self.rf as u32,
            peer: peer.to_string(),
        }
    }

    /// The key's owners (node ids, placement order).
    fn owners(&self, digest: &[u8; 32]) -> Vec<&str> {
        replicas_of_digest(&self.nodes, digest, self.rf.min(self.nodes.len()))
            .into_iter()
            .map(|n| n.id.as_str())
            .collect()
    }
}

/// The hash a key contributes to its leaf.
fn entry_hash(key: &str, ver: &Ver, tombstone: bool, tags_hlc: u64) -> Leaf {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(ver.hlc.to_be_bytes());
    h.update(ver.writer.as_bytes());
    h.update([0u8, u8::from(tombstone)]);
    h.update(tags_hlc.to_be_bytes());
    let out = h.finalize();
    let mut leaf = [0u8; 16];
    leaf.copy_from_slice(&out[..16]);
    leaf
}

fn xor(into: &mut Leaf, h: &Leaf) {
    for (a, b) in into.iter_mut().zip(h) {
        *a ^= b;
    }
}

fn root(leaves: &[Leaf]) -> Vec<u8> {
    let mut h = Sha256::new();
    for l in leaves {
        h.update(l);
    }
    h.finalize()[..16].to_vec()
}

/// Walk every row of `bucket` in key order.
async fn scan(store: &Store, bucket: &str, mut f: impl FnMut(SyncRow)) -> Result<()> {
    let mut rows = store.index.rows(bucket, None);
    while let Some(r) = rows.next().await? {
        f(r);
    }
    Ok(())
}

/// Whether both `me` and `peer` own the key, and its leaf.
fn shared_leaf(scope: &Scope, bucket: &str, key: &str, me: &str, peer: &str) -> Option<usize> {
    let digest = object_digest(bucket, key);
    let owners = scope.owners(&digest);
    (owners.contains(&me) && owners.contains(&peer)).then_some(usize::from(digest[0]))
}

fn to_entry(r: &SyncRow) -> pb::SyncEntry {
    pb::SyncEntry { key: r.key.clone(), version: Some(r.ver.to_wire()), tombstone: r.tombstone, tags_hlc: r.tags_hlc }
}

// ---- serving side ----

pub async fn digest(store: &Store, req: pb::DigestRequest) -> Result<pb::DigestResponse> {
    let (scope, peer) = Scope::from_wire(req.scope.as_ref())?;
    let me = store.node_id.clone();
    let mut leaves = vec![[0u8; 16]; LEAVES];
    let mut keys = 0u64;
    scan(store, &req.bucket, |r| {
        if let Some(leaf) = shared_leaf(&scope, &req.bucket, &r.key, &me, &peer) {
            xor(&mut leaves[leaf], &entry_hash(&r.key, &r.ver, r.tombstone, r.tags_hlc));
            keys += 1;
        }
    })
    .await?;
    Ok(pb::DigestResponse {
        root: Bytes::from(root(&leaves)),
        leaves: if req.leaves { leaves.iter().map(|l| Bytes::copy_from_slice(l)).collect() } else { Vec::new() },
        keys,
    })
}

pub async fn entries(store: &Store, req: pb::EntriesRequest) -> Result<pb::EntriesResponse> {
    let (scope, peer) = Scope::from_wire(req.scope.as_ref())?;
    if req.leaves.len() > LEAVES || req.leaves.iter().any(|l| *l as usize >= LEAVES) {
        return Err(BlobdError::InvalidArgument("leaves out of range".into()));
    }
    let want: HashSet<usize> = req.leaves.iter().map(|l| *l as usize).collect();
    let limit = match req.limit {
        0 => ENTRIES_PAGE,
        n => (n as usize).min(ENTRIES_PAGE),
    };
    let me = store.node_id.clone();
    let mut out = Vec::new();
    let mut rows = store.index.rows(&req.bucket, (!req.start_after.is_empty()).then(|| req.start_after.clone()));
    while let Some(r) = rows.next().await? {
        if shared_leaf(&scope, &req.bucket, &r.key, &me, &peer).is_some_and(|l| want.contains(&l)) {
            out.push(to_entry(&r));
        }
        if out.len() >= limit {
            return Ok(pb::EntriesResponse { entries: out, covered_to: r.key });
        }
    }
    Ok(pb::EntriesResponse { entries: out, covered_to: String::new() })
}

pub async fn versions(store: &Store, req: pb::VersionsRequest) -> Result<pb::VersionsResponse> {
    if req.keys.len() > 4 * HANDOFF_BATCH {
        return Err(BlobdError::InvalidArgument(format!("at most {} keys", 4 * HANDOFF_BATCH)));
    }
    let mut entries = Vec::new();
    for key in &req.keys {
        if let Some(row) = store.index.get_object(&req.bucket, key).await? {
            entries.push(pb::SyncEntry {
                key: key.clone(),
                version: Some(row.ver.to_wire()),
                tombstone: row.tombstone,
                tags_hlc: row.meta.tags_hlc,
            });
        }
    }
    Ok(pb::VersionsResponse { entries, stale: store.quarantined() })
}

// ---- the loop ----

/// What the owners of a batch of keys hold (see `Cycle::holders`).
struct Holders<'b> {
    holds: HashMap<&'b str, HashSet<&'b str>>,
    newer: HashSet<&'b str>,
    older: HashSet<&'b str>,
}

/// The layout as read from metad at the start of a cycle.
#[derive(Debug, Default)]
struct Layout {
    nodes: BTreeMap<String, (NodeEntry, i64)>,
    alive: HashMap<String, AliveEntry>,
    /// The catalog's cluster config (`None`: none yet, or malformed).
    cluster: Option<ClusterConfig>,
}

impl Layout {
    fn addr(&self, id: &str) -> Option<&str> {
        self.nodes.get(id).map(|(n, _)| n.addr.as_str()).or_else(|| self.alive.get(id).map(|a| a.addr.as_str()))
    }
}

/// What one cycle did (logged, and counted in metrics).
#[derive(Debug, Default, Clone)]
pub struct CycleStats {
    pub keys: u64,
    pub pushed: u64,
    pub pushed_bytes: u64,
    pub handed_off: u64,
    /// Keys held here that this daemon does not own and could not hand off yet.
    pub pending_handoff: u64,
    pub tombstones_dropped: u64,
    pub peers_in_sync: u64,
    pub peers_differing: u64,
    /// Digest, entry and version bytes received from peers.
    pub digest_bytes: u64,
    pub errors: u64,
}

/// Caps bytes per second over a run (a sync cycle's pushes, a scrub pass's reads): each
/// `admit` waits until the bytes so far are within `max` per second since the start.
pub(crate) struct Throttle {
    max: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    /// `max` of `None` or 0: no cap.
    pub(crate) fn new(max: Option<u64>) -> Self {
        Self { max, start: Instant::now(), bytes: 0 }
    }

    pub(crate) async fn admit(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(max) = self.max.filter(|m| *m > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / max as f64);
            let spent = self.start.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
    }
}

struct Cycle<'a> {
    store: &'a Arc<Store>,
    cfg: &'a SyncConfig,
    pool: &'a ChannelPool,
    layout: Layout,
    scope: Scope,
    stats: CycleStats,
    throttle: tokio::sync::Mutex<Throttle>,
}

/// `sync_state` name of the start of the last cycle that exchanged with at least one live
/// peer, or had none (Unix milliseconds).
pub(crate) const LAST_SYNCED: &str = "last_synced_ms";

/// Whether this daemon has been out of sync for longer than the tombstone grace: a peer
/// may have collected tombstones of deletes it never saw, so its copies of those keys
/// would come back (pushed to owners that no longer hold the key, or read and repaired by
/// a gateway). A daemon that never synced (new, or from before this record) is not.
async fn absent_too_long(store: &Store, grace: Duration, now_ms: i64) -> Result<bool> {
    let last = store.index.state(LAST_SYNCED).await?;
    Ok(last.is_some_and(|l| now_ms.saturating_sub(l) > grace.as_millis() as i64))
}

/// At start, before serving: quarantine the daemon if it was away too long (see
/// `absent_too_long`); its first sync cycle reconciles it.
pub async fn check_absence(store: &Store, grace: Duration) -> Result<()> {
    if absent_too_long(store, grace, crate::index::now_ms()).await? {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "this daemon was out of sync longer than the tombstone grace: it serves nothing it holds until \
             it has dropped what no up-to-date node holds (deleted keys whose tombstones were collected)"
        );
        store.set_quarantined(true);
    }
    Ok(())
}

pub async fn run(store: Arc<Store>, cfg: SyncConfig, shutdown: Shutdown) {
    let pool = ChannelPool::with_source(cfg.source_addr);
    let mut etcd: Option<etcd_client::Client> = None;
    let mut dead_since: HashMap<String, Instant> = HashMap::new();
    for name in [
        "blobd_sync_pushed_total",
        "blobd_sync_pushed_bytes_total",
        "blobd_sync_handed_off_total",
        "blobd_sync_digest_bytes_total",
        "blobd_sync_tombstones_dropped_total",
        "blobd_sync_evictions_total",
        "blobd_bitrot_healed_total",
        "blobd_sync_uploads_handed_off_total",
        "blobd_sync_uploads_ended_total",
        "blobd_sync_stale_dropped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("blobd_sync_pending_handoff").set(0.0);
    metrics::gauge!("blobd_quarantined").set(if store.quarantined() { 1.0 } else { 0.0 });
    // A quarantined daemon reconciles at once rather than after a whole interval.
    let mut wait = if store.quarantined() { Duration::from_millis(200) } else { cfg.interval };
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = cfg.interval;
        let started = Instant::now();
        let res = tokio::select! {
            _ = shutdown.wait() => return,
            r = one_cycle(&store, &cfg, &pool, &mut etcd, &mut dead_since) => r,
        };
        if store.quarantined() {
            // Not reconciled yet (not registered, a data node down): try again soon.
            wait = cfg.interval.min(Duration::from_secs(1));
        }
        let secs = started.elapsed().as_secs_f64();
        metrics::histogram!("blobd_sync_cycle_seconds").record(secs);
        match res {
            Ok(Some(s)) => {
                metrics::counter!("blobd_sync_cycles_total", "result" => "ok").increment(1);
                metrics::gauge!("blobd_sync_pending_handoff").set(s.pending_handoff as f64);
                metrics::gauge!("blobd_sync_last_cycle_timestamp_seconds").set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64(),
                );
                if s.pushed + s.handed_off + s.tombstones_dropped + s.errors + s.pending_handoff > 0 {
                    tracing::info!(
                        keys = s.keys,
                        pushed = s.pushed,
                        pushed_bytes = s.pushed_bytes,
                        handed_off = s.handed_off,
                        pending_handoff = s.pending_handoff,
                        tombstones_dropped = s.tombstones_dropped,
                        peers_differing = s.peers_differing,
                        errors = s.errors,
                        secs,
                        "sync cycle"
                    );
                } else {
                    tracing::debug!(keys = s.keys, peers_in_sync = s.peers_in_sync, secs, "sync cycle: in sync");
                }
            }
            Ok(None) => {}
            Err(e) => {
                metrics::counter!("blobd_sync_cycles_total", "result" => "failed").increment(1);
                tracing::warn!(error = %e, "sync cycle failed");
                etcd = None;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CycleError {
    #[error("metad: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("metad timed out")]
    Timeout,
    #[error(transparent)]
    Blobd(#[from] BlobdError),
}

async fn timed<T>(f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, CycleError> {
    match tokio::time::timeout(Duration::from_secs(10), f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CycleError::Timeout),
    }
}

async fn read_layout(client: &mut etcd_client::Client, keys: &Keys) -> Result<Layout, CycleError> {
    let opts = || Some(etcd_client::GetOptions::new().with_prefix());
    let nodes = timed(client.get(keys.nodes(), opts())).await?;
    let alive = timed(client.get(keys.alive_all(), opts())).await?;
    let cluster = timed(client.get(keys.cluster_config(), None)).await?;
    let mut layout =
        Layout { cluster: cluster.kvs().first().and_then(|kv| ClusterConfig::parse(kv.value())), ..Layout::default() };
    for kv in nodes.kvs() {
        let Some(id) = kv.key_str().ok().and_then(|k| k.strip_prefix(&keys.nodes())) else { continue };
        match serde_json::from_slice::<NodeEntry>(kv.value()) {
            Ok(n) => {
                layout.nodes.insert(id.to_string(), (n, kv.mod_revision()));
            }
            Err(e) => tracing::warn!(node = id, error = %e, "ignoring malformed node entry"),
        }
    }
    for kv in alive.kvs() {
        let Some(id) = kv.key_str().ok().and_then(|k| k.strip_prefix(&keys.alive_all())) else { continue };
        if let Ok(a) = serde_json::from_slice::<AliveEntry>(kv.value()) {
            layout.alive.insert(id.to_string(), a);
        }
    }
    Ok(layout)
}

/// Mark `active` nodes dead for longer than the grace `removed` (compare-and-swap on the
/// entry, so a node that came back or was changed by an operator meanwhile is left alone).
async fn evict(
    client: &mut etcd_client::Client,
    keys: &Keys,
    layout: &mut Layout,
    grace: Duration,
    dead_since: &mut HashMap<String, Instant>,
) -> Result<(), CycleError> {
    dead_since.retain(|id, _| layout.nodes.get(id).is_some_and(|(n, _)| n.state == NodeState::Active));
    let now = Instant::now();
    let mut evicted = Vec::new();
    for (id, (node, rev)) in &layout.nodes {
        if node.state != NodeState::Active || layout.alive.contains_key(id) {
            dead_since.remove(id);
            continue;
        }
        let since = *dead_since.entry(id.clone()).or_insert(now);
        if now.duration_since(since) < grace {
            continue;
        }
        let mut entry = node.clone();
        entry.state = NodeState::Removed;
        let key = keys.node(id);
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::mod_revision(key.as_str(), etcd_client::CompareOp::Equal, *rev)])
            .and_then([etcd_client::TxnOp::put(key.as_str(), serde_json::to_vec(&entry).unwrap_or_default(), None)]);
        if timed(client.txn(txn)).await?.succeeded() {
            tracing::warn!(node = %id, dead_secs = now.duration_since(since).as_secs(), "evicted a dead node from the layout");
            metrics::counter!("blobd_sync_evictions_total").increment(1);
            evicted.push(id.clone());
            // One at a time: a cut-off zone is not evicted as a whole in one cycle.
            break;
        }
    }
    for id in evicted {
        if let Some((n, _)) = layout.nodes.get_mut(&id) {
            n.state = NodeState::Removed;
        }
        dead_since.remove(&id);
    }
    Ok(())
}

async fn one_cycle(
    store: &Arc<Store>,
    cfg: &SyncConfig,
    pool: &ChannelPool,
    etcd: &mut Option<etcd_client::Client>,
    dead_since: &mut HashMap<String, Instant>,
) -> Result<Option<CycleStats>, CycleError> {
    let client = match etcd {
        Some(c) => c,
        None => etcd.insert(timed(aether_common::etcd::connect(&cfg.endpoints, None)).await?),
    };
    let mut layout = read_layout(client, &cfg.keys).await?;
    if let Some(grace) = cfg.evict_grace {
        evict(client, &cfg.keys, &mut layout, grace, dead_since).await?;
    }
    if !layout.nodes.contains_key(&store.node_id) {
        // Not in the layout (yet): owns nothing, but must not hand off to a layout that
        // is still being formed either.
        return Ok(None);
    }
    let nodes: Vec<PlacementNode> = layout
        .nodes
        .iter()
        .filter(|(_, (n, _))| n.state == NodeState::Active)
        .map(|(id, (n, _))| PlacementNode { id: id.clone(), zone: n.zone.clone(), weight: n.weight })
        .collect();
    // The cluster's replication factor (the catalog's), this daemon's own setting only
    // while the catalog has none.
    let rf = layout.cluster.map_or(cfg.replication_factor, |c| c.replication_factor).max(1);
    metrics::gauge!("blobd_replication_factor").set(rf as f64);
    let scope = Scope { nodes, rf };
    let started_ms = crate::index::now_ms();
    let mut cycle = Cycle {
        store,
        cfg,
        pool,
        layout,
        scope,
        stats: CycleStats::default(),
        throttle: tokio::sync::Mutex::new(Throttle::new(cfg.max_bytes_per_sec)),
    };
    if !store.quarantined() && absent_too_long(store, cfg.tombstone_grace, started_ms).await? {
        tracing::warn!("out of sync longer than the tombstone grace: quarantined until reconciled");
        store.set_quarantined(true);
    }
    if store.quarantined() {
        if !cycle.reconcile().await? {
            return Ok(Some(cycle.stats));
        }
        store.index.set_state(LAST_SYNCED, started_ms).await?;
        store.set_quarantined(false);
    }
    cycle.heal_suspects().await;
    let cutoff = crate::index::now_ms().saturating_sub(cfg.tombstone_grace.as_millis() as i64);
    if let Err(e) = store.index.collect_ended_uploads(cutoff).await {
        tracing::warn!(error = %e, "cannot collect ended uploads");
    }
    for bucket in store.index.buckets().await? {
        if let Err(e) = cycle.bucket(&bucket).await {
            tracing::warn!(bucket, error = %e, "sync of a bucket failed");
            cycle.stats.errors += 1;
        }
    }
    // In touch with the cluster: some peer exchange went through (or there is no other live
    // node to be out of touch with).
    let me = store.node_id.as_str();
    let lonely = !cycle.layout.alive.keys().any(|id| id != me);
    if lonely || cycle.stats.peers_in_sync + cycle.stats.peers_differing > 0 {
        store.index.set_state(LAST_SYNCED, started_ms).await?;
    }
    Ok(Some(cycle.stats))
}

impl Cycle<'_> {
    fn me(&self) -> &str {
        &self.store.node_id
    }

    fn client(&self, id: &str) -> Result<Client> {
        let addr = self.layout.addr(id).ok_or_else(|| BlobdError::InvalidArgument(format!("no address for {id}")))?;
        Ok(BlobServiceClient::with_interceptor(self.pool.get(addr)?, ToNode::new(id))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    fn alive(&self, id: &str) -> bool {
        self.layout.alive.contains_key(id)
    }

    /// Replace local copies that failed their checksums (on a read or in the scrub) with
    /// a peer's copy of the same version: its Get stream, checked by the peer's block sums,
    /// piped into a verbatim `heal` Put to this daemon itself.
    async fn heal_suspects(&mut self) {
        for (bucket, key) in self.store.take_suspects() {
            match self.heal(&bucket, &key).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(bucket, key, "no peer holds a good copy of a corrupt blob's version yet");
                    self.store.requeue_suspect(&bucket, &key);
                }
                Err(e) => {
                    tracing::warn!(bucket, key, error = %e, "healing a corrupt copy failed");
                    self.stats.errors += 1;
                    self.store.requeue_suspect(&bucket, &key);
                }
            }
        }
    }

    async fn heal(&mut self, bucket: &str, key: &str) -> Result<bool> {
        let Some(local) = self.store.index.get_object(bucket, key).await? else { return Ok(true) };
        if local.tombstone {
            return Ok(true);
        }
        let me = self.me().to_string();
        let peers: Vec<String> = self.layout.nodes.keys().filter(|id| **id != me && self.alive(id)).cloned().collect();
        for peer in peers {
            let mut client = self.client(&peer)?;
            let req = pb::GetRequest {
                bucket: bucket.to_string(),
                key: key.to_string(),
                expect_version: Some(local.ver.to_wire()),
                ..Default::default()
            };
            let Ok(mut stream) = rpc(client.get(req)).await else { continue };
            let meta = match stream.message().await {
                Ok(Some(pb::GetResponse { msg: Some(pb::get_response::Msg::Meta(m)) })) if !m.tombstone => m,
                _ => continue,
            };
            let (tx, rx) = mpsc::channel::<pb::PutRequest>(2);
            let header = pb::PutHeader { meta: Some(meta), verbatim: true, heal: true };
            let _ = tx.try_send(pb::PutRequest { msg: Some(pb::put_request::Msg::Header(header)) });
            let pump = tokio::spawn(async move {
                let (mut md5, mut size) = (md5::Md5::new(), 0u64);
                while let Some(m) = stream.message().await.map_err(BlobdError::ClientStream)? {
                    if let Some(pb::get_response::Msg::Chunk(c)) = m.msg {
                        md5.update(&c);
                        size += c.len() as u64;
                        if tx.send(pb::PutRequest { msg: Some(pb::put_request::Msg::Chunk(c)) }).await.is_err() {
                            return Ok::<bool, BlobdError>(false);
                        }
                    }
                }
                let commit =
                    pb::PutCommit { size, md5_hex: hex::encode(md5.finalize()), checksums: Default::default() };
                Ok(tx.send(pb::PutRequest { msg: Some(pb::put_request::Msg::Commit(commit)) }).await.is_ok())
            });
            let put = self.client(&me)?.put(ReceiverStream::new(rx)).await;
            let pumped = pump.await?;
            match (put, pumped) {
                (Ok(r), Ok(true)) if r.get_ref().applied => {
                    metrics::counter!("blobd_bitrot_healed_total").increment(1);
                    tracing::info!(bucket, key, peer, "replaced a corrupt copy with a peer's");
                    return Ok(true);
                }
                // A newer version arrived meanwhile: nothing left to heal.
                (Ok(r), Ok(true))
                    if r.get_ref()
                        .current
                        .as_ref()
                        .is_some_and(|c| Ver::from_wire(Some(c)).is_ok_and(|v| v > local.ver)) =>
                {
                    return Ok(true);
                }
                (put, pumped) => {
                    tracing::warn!(bucket, key, peer, put = ?put.err(), pumped = ?pumped, "healing from a peer failed");
                }
            }
        }
        Ok(false)
    }

    async fn bucket(&mut self, bucket: &str) -> Result<()> {
        let me = self.me().to_string();
        let grace_ms = self.cfg.tombstone_grace.as_millis() as i64;
        let now_ms = crate::index::now_ms();
        let peers: Vec<String> = self.scope.nodes.iter().map(|n| n.id.clone()).filter(|id| *id != me).collect();
        let mut leaves: HashMap<String, Vec<Leaf>> =
            peers.iter().map(|p| (p.clone(), vec![[0u8; 16]; LEAVES])).collect();
        let store = self.store;
        let mut rows = store.index.rows(bucket, None);
        let mut handoff: Vec<(SyncRow, Vec<String>)> = Vec::new();
        let mut expired: Vec<(SyncRow, Vec<String>)> = Vec::new();
        loop {
            let row = rows.next().await?;
            let end = row.is_none();
            if let Some(row) = row {
                self.stats.keys += 1;
                let digest = object_digest(bucket, &row.key);
                let owners = self.scope.owners(&digest);
                if !owners.contains(&me.as_str()) {
                    handoff.push((row, owners.into_iter().map(str::to_string).collect()));
                } else if row.tombstone && now_ms.saturating_sub(row.last_modified_ms) > grace_ms {
                    let others = owners.iter().filter(|o| **o != me).map(|o| o.to_string()).collect();
                    expired.push((row, others));
                } else {
                    let h = entry_hash(&row.key, &row.ver, row.tombstone, row.tags_hlc);
                    for o in owners.into_iter().filter(|o| *o != me) {
                        if let Some(l) = leaves.get_mut(o) {
                            xor(&mut l[usize::from(digest[0])], &h);
                        }
                    }
                }
            }
            if handoff.len() >= HANDOFF_BATCH || (end && !handoff.is_empty()) {
                self.hand_off(bucket, &std::mem::take(&mut handoff)).await;
            }
            if expired.len() >= HANDOFF_BATCH || (end && !expired.is_empty()) {
                self.collect_tombstones(bucket, &std::mem::take(&mut expired)).await;
            }
            if end {
                break;
            }
        }
        for peer in peers {
            if !self.alive(&peer) {
                continue;
            }
            let Some(mine) = leaves.remove(&peer) else { continue };
            if let Err(e) = self.exchange(bucket, &peer, &mine).await {
                tracing::warn!(bucket, peer, error = %e, "anti-entropy exchange failed");
                self.stats.errors += 1;
            }
        }
        self.uploads(bucket).await;
        Ok(())
    }

    /// Asks the given owners (`Versions`; dead owners are not asked): which of them hold
    /// each key at its version or newer, the keys some owner holds strictly newer, and the
    /// keys some owner holds older.
    async fn holders<'b>(&mut self, bucket: &str, batch: &'b [(SyncRow, Vec<String>)]) -> Holders<'b> {
        let mut holds: HashMap<&str, HashSet<&str>> = HashMap::new();
        let mut newer: HashSet<&str> = HashSet::new();
        let mut older: HashSet<&str> = HashSet::new();
        let mut by_owner: BTreeMap<&str, Vec<&SyncRow>> = BTreeMap::new();
        for (row, owners) in batch {
            for o in owners {
                by_owner.entry(o.as_str()).or_default().push(row);
            }
        }
        for (owner, rows) in by_owner {
            if !self.alive(owner) {
                continue;
            }
            match self.owner_versions(bucket, owner, &rows).await {
                // Back from a long absence, not reconciled: its copies prove nothing.
                Ok((_, true)) => older.extend(rows.iter().map(|r| r.key.as_str())),
                Ok((held, false)) => {
                    for row in rows {
                        let Some((ver, tags_hlc)) = held.get(row.key.as_str()) else { continue };
                        if *ver > row.ver {
                            newer.insert(row.key.as_str());
                        }
                        if *ver < row.ver {
                            older.insert(row.key.as_str());
                        }
                        if *ver > row.ver || (*ver == row.ver && *tags_hlc >= row.tags_hlc) {
                            holds.entry(row.key.as_str()).or_default().insert(owner);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(bucket, owner, error = %e, "cannot ask an owner what it holds");
                    self.stats.errors += 1;
                    // Unknown counts as possibly older: no tombstone is collected on it.
                    older.extend(rows.iter().map(|r| r.key.as_str()));
                }
            }
        }
        Holders { holds, newer, older }
    }

    /// Reconcile a daemon back from an absence longer than the tombstone grace: drop every
    /// local key, written before the quarantine began, that no other daemon holds in any
    /// version (value or tombstone) — a key deleted while it was away whose tombstones were
    /// collected since, or one lost everywhere else —, so it can neither push it back nor
    /// serve it. Every other daemon that may hold data must be alive to decide. A copy on
    /// another daemon that is itself back from an absence counts too (dropping on its word
    /// alone could cascade into data loss when several come back); and if *every* other
    /// daemon is back from an absence, nobody collected anything meanwhile: nothing is
    /// dropped. Whether the reconcile completed.
    async fn reconcile(&mut self) -> Result<bool> {
        let me = self.me().to_string();
        let others: Vec<String> = self
            .layout
            .nodes
            .iter()
            .filter(|(id, (n, _))| **id != me && (n.state != NodeState::Removed || self.alive(id)))
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(dead) = others.iter().find(|o| !self.alive(o)) {
            tracing::warn!(node = %dead, "quarantined until every data node is alive to reconcile with");
            return Ok(false);
        }
        let mut dropped = 0u64;
        for bucket in self.store.index.buckets().await? {
            let mut rows = self.store.index.rows(&bucket, None);
            let mut batch: Vec<SyncRow> = Vec::new();
            loop {
                let row = rows.next().await?;
                let end = row.is_none();
                batch.extend(row);
                if batch.is_empty() || (batch.len() < HANDOFF_BATCH && !end) {
                    if end {
                        break;
                    }
                    continue;
                }
                let refs: Vec<&SyncRow> = batch.iter().collect();
                let (mut fresh, mut held) = (0usize, HashSet::new());
                for o in &others {
                    let (h, stale) = self.owner_versions(&bucket, o, &refs).await?;
                    fresh += usize::from(!stale);
                    held.extend(h.into_keys());
                }
                if fresh == 0 {
                    tracing::info!("every other data node is back from an absence too: nothing to drop");
                    return Ok(true);
                }
                let since = u64::try_from(self.store.quarantined_at_ms()).unwrap_or(0);
                for r in std::mem::take(&mut batch) {
                    let before = (r.ver.hlc >> 16) < since;
                    if before && !held.contains(&r.key) && self.drop_copy(&bucket, &r).await {
                        dropped += 1;
                    }
                }
                if end {
                    break;
                }
            }
        }
        metrics::counter!("blobd_sync_stale_dropped_total").increment(dropped);
        tracing::warn!(dropped, "reconciled after a long absence: dropped the keys no up-to-date node holds");
        Ok(true)
    }

    /// Drop the local copy of `row` if it is still that version.
    async fn drop_copy(&mut self, bucket: &str, row: &SyncRow) -> bool {
        match self.store.index.purge(bucket, &row.key, &row.ver).await {
            Ok(Some(applied)) => {
                self.store.finish_write(applied).await;
                true
            }
            // Written again meanwhile (a gateway with an older layout): next cycle.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(bucket, key = %row.key, error = %e, "cannot drop a local copy");
                self.stats.errors += 1;
                false
            }
        }
    }

    /// Offer keys this daemon does not own to their owners; drop the local copy of each
    /// key every owner holds (at this version or newer), or some live owner holds newer
    /// (this copy is superseded). A key some live owner already holds is left to
    /// anti-entropy among the owners (so the bytes cross the network once per new owner,
    /// not once per old holder); a key no live owner holds is sent to the first live owner
    /// in placement order.
    async fn hand_off(&mut self, bucket: &str, batch: &[(SyncRow, Vec<String>)]) {
        let Holders { mut holds, newer, .. } = self.holders(bucket, batch).await;
        // Keys no live owner holds: to the first live owner.
        let mut sends: BTreeMap<&str, Vec<&SyncRow>> = BTreeMap::new();
        for (row, owners) in batch {
            if holds.get(row.key.as_str()).is_some_and(|h| !h.is_empty()) {
                continue;
            }
            if let Some(first) = owners.iter().find(|o| self.alive(o)) {
                sends.entry(first.as_str()).or_default().push(row);
            }
        }
        for (owner, rows) in sends {
            for (row, ok) in self.push_all(bucket, owner, rows).await {
                if ok {
                    holds.entry(row.key.as_str()).or_default().insert(owner);
                }
            }
        }
        for (row, owners) in batch {
            let held_by_all =
                holds.get(row.key.as_str()).is_some_and(|h| owners.iter().all(|o| h.contains(o.as_str())));
            let superseded = newer.contains(row.key.as_str());
            if owners.is_empty() || !(held_by_all || superseded) {
                self.stats.pending_handoff += 1;
                continue;
            }
            if self.drop_copy(bucket, row).await {
                self.stats.handed_off += 1;
                metrics::counter!("blobd_sync_handed_off_total").increment(1);
            } else {
                self.stats.pending_handoff += 1;
            }
        }
    }

    /// Drop tombstones past the grace once no other owner can bring the deleted value
    /// back: every other owner is alive and holds no older version of the key (it holds the
    /// tombstone, something newer, or nothing, having collected it already).
    async fn collect_tombstones(&mut self, bucket: &str, batch: &[(SyncRow, Vec<String>)]) {
        let h = self.holders(bucket, batch).await;
        for (row, others) in batch {
            let safe = others.iter().all(|o| self.alive(o)) && !h.older.contains(row.key.as_str());
            if safe && self.drop_copy(bucket, row).await {
                self.stats.tombstones_dropped += 1;
                metrics::counter!("blobd_sync_tombstones_dropped_total").increment(1);
            }
        }
    }

    async fn owner_versions(
        &mut self,
        bucket: &str,
        owner: &str,
        rows: &[&SyncRow],
    ) -> Result<(HashMap<String, (Ver, u64)>, bool)> {
        let mut client = self.client(owner)?;
        let req =
            pb::VersionsRequest { bucket: bucket.to_string(), keys: rows.iter().map(|r| r.key.clone()).collect() };
        let resp = tokio::time::timeout(RPC_TIMEOUT, client.versions(req))
            .await
            .map_err(|_| BlobdError::InvalidArgument(format!("{owner}: Versions timed out")))?
            .map_err(BlobdError::ClientStream)?
            .into_inner();
        self.stats.digest_bytes += prost::Message::encoded_len(&resp) as u64;
        metrics::counter!("blobd_sync_digest_bytes_total").increment(prost::Message::encoded_len(&resp) as u64);
        let held = resp
            .entries
            .into_iter()
            .filter_map(|e| {
                let ver = Ver::from_wire(e.version.as_ref()).ok()?;
                Some((e.key, (ver, e.tags_hlc)))
            })
            .collect();
        Ok((held, resp.stale))
    }

    /// Push the local copies of `rows` to `peer`, `concurrency` at a time; whether each
    /// one now holds (at least) the local version.
    async fn push_all<'r>(&mut self, bucket: &str, peer: &str, rows: Vec<&'r SyncRow>) -> Vec<(&'r SyncRow, bool)> {
        if rows.is_empty() {
            return Vec::new();
        }
        let client = match self.client(peer) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer, error = %e, "no client for a peer");
                self.stats.errors += 1;
                return rows.into_iter().map(|r| (r, false)).collect();
            }
        };
        let this = &*self;
        let mut results: Vec<(&SyncRow, Result<u64>)> = Vec::new();
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut rows = rows.into_iter();
        loop {
            while pending.len() < this.cfg.concurrency.max(1) {
                let Some(row) = rows.next() else { break };
                let client = client.clone();
                pending.push(async move { (row, this.push(client, bucket, row).await) });
            }
            match pending.next().await {
                Some(r) => results.push(r),
                None => break,
            }
        }
        drop(pending);
        results
            .into_iter()
            .map(|(row, res)| match res {
                Ok(bytes) => {
                    self.stats.pushed += 1;
                    self.stats.pushed_bytes += bytes;
                    metrics::counter!("blobd_sync_pushed_total").increment(1);
                    metrics::counter!("blobd_sync_pushed_bytes_total").increment(bytes);
                    (row, true)
                }
                Err(e) => {
                    tracing::warn!(bucket, key = %row.key, peer, error = %e, "push failed");
                    self.stats.errors += 1;
                    (row, false)
                }
            })
            .collect()
    }

    /// Send the local copy of `row`'s key (as it is now) to `client`; the body bytes sent.
    async fn push(&self, mut client: Client, bucket: &str, row: &SyncRow) -> Result<u64> {
        let Some(obj) = self.store.index.get_object(bucket, &row.key).await? else {
            // Dropped meanwhile (a tombstone collected): nothing to offer.
            return Err(BlobdError::NotFound);
        };
        let version = Some(obj.ver.to_wire());
        if obj.tombstone {
            let req = pb::DeleteRequest {
                bucket: bucket.to_string(),
                key: row.key.clone(),
                version,
                last_modified_ms: obj.meta.last_modified_ms,
            };
            tokio::time::timeout(RPC_TIMEOUT, client.delete(req))
                .await
                .map_err(|_| BlobdError::InvalidArgument("Delete timed out".into()))?
                .map_err(BlobdError::ClientStream)?;
            return Ok(0);
        }
        self.throttle.lock().await.admit(obj.size).await;
        let mut meta = obj.meta.clone();
        meta.version = version.clone();
        meta.bucket = bucket.to_string();
        meta.key = row.key.clone();
        let tags_hlc = meta.tags_hlc;
        let tags = meta.tags.clone();
        let size = obj.size;
        let segments = if size == 0 {
            Vec::new()
        } else {
            let dir = self.store.dir.clone();
            let o = obj.clone();
            tokio::task::spawn_blocking(move || open_segments(&dir, &o, 0, size - 1)).await??
        };
        // A single-part body's ETag is its MD5: a mismatch is a corrupt local blob, and
        // it is never sent (the receiver would refuse it anyway).
        let expect_md5 = (meta.part_sizes.is_empty() && !meta.etag.contains('-')).then(|| meta.etag.clone());
        let (tx, rx) = mpsc::channel::<pb::PutRequest>(2);
        let header = pb::PutRequest {
            msg: Some(pb::put_request::Msg::Header(pb::PutHeader { meta: Some(meta), verbatim: true, heal: false })),
        };
        let _ = tx.try_send(header);
        let body = Body { bucket: bucket.to_string(), key: row.key.clone(), segments, expect_md5, suspect: true };
        let reader = pump(
            Arc::clone(self.store),
            body,
            tx,
            |c| pb::PutRequest { msg: Some(pb::put_request::Msg::Chunk(c)) },
            move |md5_hex| pb::PutRequest {
                msg: Some(pb::put_request::Msg::Commit(pb::PutCommit { size, md5_hex, checksums: Default::default() })),
            },
        );
        let sent = tokio::time::timeout(body_timeout(size), client.put(ReceiverStream::new(rx))).await;
        // The reader's verdict first: a corrupt blob ends the stream without a commit.
        reader.await??;
        let resp =
            sent.map_err(|_| BlobdError::InvalidArgument("Put timed out".into()))?.map_err(BlobdError::ClientStream)?;
        let resp = resp.into_inner();
        // Same version, newer tags here: carry them over.
        if !resp.applied
            && resp.current.as_ref().is_some_and(|c| c.hlc == row.ver.hlc && c.writer == row.ver.writer)
            && tags_hlc > 0
        {
            let req = pb::SetTagsRequest { bucket: bucket.to_string(), key: row.key.clone(), version, tags, tags_hlc };
            rpc(client.set_tags(req)).await?;
        }
        Ok(size)
    }

    /// Compare digests with `peer` and push what it lacks or holds older. The peer's
    /// entries of the leaves that differ come in pages (by key); each page is compared
    /// with the local rows of the same key range, so memory stays bounded.
    async fn exchange(&mut self, bucket: &str, peer: &str, mine: &[Leaf]) -> Result<()> {
        let mut client = self.client(peer)?;
        let scope = self.scope.to_wire(self.me());
        let req = pb::DigestRequest { bucket: bucket.to_string(), scope: Some(scope.clone()), leaves: true };
        let theirs = rpc(client.digest(req)).await?;
        self.count_digest(prost::Message::encoded_len(&theirs));
        if theirs.root[..] == root(mine)[..] {
            self.stats.peers_in_sync += 1;
            return Ok(());
        }
        self.stats.peers_differing += 1;
        if theirs.leaves.len() != LEAVES {
            return Err(BlobdError::InvalidArgument(format!("{peer} sent {} leaves", theirs.leaves.len())));
        }
        let differing: HashSet<usize> = (0..LEAVES).filter(|i| theirs.leaves[*i][..] != mine[*i][..]).collect();
        let leaves: Vec<u32> = differing.iter().map(|l| *l as u32).collect();
        let me = self.me().to_string();
        let mut cursor: Option<String> = None;
        loop {
            let req = pb::EntriesRequest {
                bucket: bucket.to_string(),
                scope: Some(scope.clone()),
                leaves: leaves.clone(),
                start_after: cursor.clone().unwrap_or_default(),
                limit: ENTRIES_PAGE as u32,
            };
            let page = rpc(client.entries(req)).await?;
            self.count_digest(prost::Message::encoded_len(&page));
            let upper = (!page.covered_to.is_empty()).then_some(page.covered_to);
            let held: HashMap<String, (Ver, u64)> = page
                .entries
                .into_iter()
                .filter_map(|e| Some((e.key, (Ver::from_wire(e.version.as_ref()).ok()?, e.tags_hlc))))
                .collect();
            // The local rows of (cursor, upper], pushed in batches as they are found.
            let store = self.store;
            let mut rows = store.index.rows(bucket, cursor.clone());
            let mut batch: Vec<SyncRow> = Vec::new();
            while let Some(r) = rows.next().await? {
                if upper.as_ref().is_some_and(|u| r.key > *u) {
                    break;
                }
                if !shared_leaf(&self.scope, bucket, &r.key, &me, peer).is_some_and(|l| differing.contains(&l)) {
                    continue;
                }
                let behind = match held.get(&r.key) {
                    None => true,
                    Some((v, t)) => *v < r.ver || (*v == r.ver && *t < r.tags_hlc),
                };
                if behind {
                    batch.push(r);
                }
                if batch.len() >= HANDOFF_BATCH {
                    let rows = std::mem::take(&mut batch);
                    self.push_designated(bucket, peer, &rows).await;
                }
            }
            if !batch.is_empty() {
                self.push_designated(bucket, peer, &batch).await;
            }
            match upper {
                Some(u) => cursor = Some(u),
                None => return Ok(()),
            }
        }
    }

    /// Push `rows` that `peer` lacks, but each only once among the co-owners that hold it:
    /// the designated pusher of a key for a peer is the first live owner other than the
    /// peer (placement order). A key whose designated pusher is another node is pushed
    /// from here only when that node does not hold this version (asked with `Versions`),
    /// so a node that missed writes gets each key from one owner, not from all of them.
    async fn push_designated(&mut self, bucket: &str, peer: &str, rows: &[SyncRow]) {
        let me = self.me().to_string();
        let mut mine: Vec<&SyncRow> = Vec::new();
        let mut theirs: BTreeMap<String, Vec<&SyncRow>> = BTreeMap::new();
        for r in rows {
            let digest = object_digest(bucket, &r.key);
            let owners = self.scope.owners(&digest);
            let first = owners.into_iter().find(|o| *o != peer && self.alive(o)).unwrap_or(me.as_str()).to_string();
            if first == me {
                mine.push(r);
            } else {
                theirs.entry(first).or_default().push(r);
            }
        }
        for (other, rows) in theirs {
            match self.owner_versions(bucket, &other, &rows).await {
                Ok((held, false)) => {
                    for r in rows {
                        let covered = held
                            .get(r.key.as_str())
                            .is_some_and(|(v, t)| *v > r.ver || (*v == r.ver && *t >= r.tags_hlc));
                        if !covered {
                            mine.push(r);
                        }
                    }
                }
                // Cannot tell: push (a duplicate costs bytes, not correctness).
                Ok((_, true)) | Err(_) => mine.extend(rows),
            }
        }
        self.push_all(bucket, peer, mine).await;
    }

    fn count_digest(&mut self, bytes: usize) {
        self.stats.digest_bytes += bytes as u64;
        metrics::counter!("blobd_sync_digest_bytes_total").increment(bytes as u64);
    }
}

/// A local body to stream to a peer: `segments` of `bucket/key`, and the MD5 it must have
/// (its ETag), if known.
struct Body {
    bucket: String,
    key: String,
    segments: Vec<crate::service::Segment>,
    expect_md5: Option<String>,
    /// Make the key a suspect (healed from a peer) when the MD5 differs.
    suspect: bool,
}

/// On its own task: stream `body` into `tx` (each block checked against its checksum
/// first), as `chunk` messages, then `commit(md5_hex)` — unless the MD5 differs from the
/// expected one (a corrupt local blob is never sent: nothing is committed). `Ok(false)`:
/// the receiver went away.
fn pump<M: Send + 'static>(
    store: Arc<Store>,
    body: Body,
    tx: mpsc::Sender<M>,
    chunk: fn(Bytes) -> M,
    commit: impl FnOnce(String) -> M + Send + 'static,
) -> tokio::task::JoinHandle<Result<bool>> {
    tokio::spawn(async move {
        let mut md5 = md5::Md5::new();
        let (hasher, sender) = (&mut md5, &tx);
        let sent = read_segments(&store, &body.bucket, &body.key, body.segments, move |c| {
            hasher.update(&c);
            async move { sender.send(chunk(c)).await.is_ok() }
        })
        .await?;
        if !sent {
            return Ok(false);
        }
        let md5_hex = hex::encode(md5.finalize());
        if let Some(want) = body.expect_md5
            && !want.trim_matches('"').eq_ignore_ascii_case(&md5_hex)
        {
            if body.suspect {
                store.suspect(&body.bucket, &body.key);
            }
            return Err(BlobdError::Bitrot(format!("local blob MD5 {md5_hex} differs from its ETag {want}")));
        }
        let _ = tx.send(commit(md5_hex)).await;
        Ok(true)
    })
}

/// Time limit of a call that streams `size` body bytes.
fn body_timeout(size: u64) -> Duration {
    RPC_TIMEOUT.max(Duration::from_secs(size / (1 << 20) + 30))
}

async fn rpc<T>(f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T> {
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(r) => Ok(r.map_err(BlobdError::ClientStream)?.into_inner()),
        Err(_) => Err(BlobdError::InvalidArgument("peer call timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(hlc: u64) -> Ver {
        Ver { hlc, writer: "g".into() }
    }

    #[test]
    fn leaves_do_not_depend_on_order_and_see_every_field() {
        let a = entry_hash("a", &ver(1), false, 0);
        let b = entry_hash("b", &ver(2), true, 0);
        let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
        xor(&mut x, &a);
        xor(&mut x, &b);
        xor(&mut y, &b);
        xor(&mut y, &a);
        assert_eq!(x, y);
        assert_ne!(entry_hash("a", &ver(1), false, 0), entry_hash("a", &ver(2), false, 0));
        assert_ne!(entry_hash("a", &ver(1), false, 0), entry_hash("a", &ver(1), true, 0));
        assert_ne!(entry_hash("a", &ver(1), false, 0), entry_hash("a", &ver(1), false, 5));
        assert_ne!(entry_hash("a", &ver(1), false, 0), entry_hash("a", &Ver { hlc: 1, writer: "h".into() }, false, 0));
    }

    #[test]
    fn both_sides_of_a_pair_pick_the_same_keys() {
        let nodes: Vec<PlacementNode> =
            (0..5).map(|i| PlacementNode { id: format!("n{i}"), zone: String::new(), weight: 1 }).collect();
        let scope = Scope { nodes, rf: 3 };
        let mut shared = 0;
        for i in 0..1000 {
            let k = format!("k{i}");
            let ab = shared_leaf(&scope, "b", &k, "n0", "n1");
            assert_eq!(ab, shared_leaf(&scope, "b", &k, "n1", "n0"));
            shared += usize::from(ab.is_some());
        }
        // A pair shares a key when both are among its 3 of 5: 3/10 of the keys.
        assert!((220..380).contains(&shared), "{shared}");
    }
}
