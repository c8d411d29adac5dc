//! `aether node …`: the storage layout in metad (`nodes/<id>`), read and changed through
//! etcd-client only (so it works against a real etcd too). Every change is a
//! compare-and-swap on the entry's mod revision: a concurrent change (a daemon updating
//! its address, another operator) makes the command fail instead of being overwritten.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aether_common::catalog::{AliveEntry, Keys, NodeEntry, NodeState};
use aether_proto::blob::v1::NodeStatsRequest;
use aether_proto::blob::v1::blob_service_client::BlobServiceClient;
use anyhow::{Context, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

/// What `aether node` can change.
#[derive(Debug, Clone)]
pub enum Change {
    State(NodeState),
    Weight(u32),
    Zone(String),
}

async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    aether_common::etcd::connect(endpoints, Some(opts)).await.with_context(|| format!("connecting to {endpoints:?}"))
}

async fn layout(
    client: &mut Client,
    keys: &Keys,
) -> anyhow::Result<(BTreeMap<String, (NodeEntry, i64)>, HashMap<String, AliveEntry>)> {
    let nodes = client.get(keys.nodes(), Some(GetOptions::new().with_prefix())).await?;
    let alive = client.get(keys.alive_all(), Some(GetOptions::new().with_prefix())).await?;
    let mut out = BTreeMap::new();
    for kv in nodes.kvs() {
        let Some(id) = kv.key_str()?.strip_prefix(&keys.nodes()) else { continue };
        let entry: NodeEntry =
            serde_json::from_slice(kv.value()).with_context(|| format!("malformed layout entry for {id}"))?;
        out.insert(id.to_string(), (entry, kv.mod_revision()));
    }
    let mut live = HashMap::new();
    for kv in alive.kvs() {
        let Some(id) = kv.key_str()?.strip_prefix(&keys.alive_all()) else { continue };
        if let Ok(a) = serde_json::from_slice::<AliveEntry>(kv.value()) {
            live.insert(id.to_string(), a);
        }
    }
    Ok((out, live))
}

/// `aether node ls`: the layout, liveness and what each live node holds.
pub fn ls(endpoints: &[String], prefix: &str, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let keys = Keys::new(prefix);
        let mut client = connect(endpoints).await?;
        let (nodes, alive) = layout(&mut client, &keys).await?;
        let mut rows = Vec::new();
        for (id, (n, _)) in &nodes {
            let stats =
                if alive.contains_key(id) { node_stats(id, &n.addr).await } else { Err("not alive".to_string()) };
            rows.push(serde_json::json!({
                "id": id,
                "addr": n.addr,
                "zone": n.zone,
                "weight": n.weight,
                "state": n.state,
                "alive": alive.contains_key(id),
                "objects": stats.as_ref().ok().map(|s| s.objects),
                "bytes": stats.as_ref().ok().map(|s| s.bytes),
                "last_synced_ms": stats.as_ref().ok().map(|s| s.last_synced_ms),
                "quarantined": stats.as_ref().ok().map(|s| s.quarantined),
                "error": if alive.contains_key(id) { stats.err() } else { None },
            }));
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(());
        }
        let rf = client.get(keys.cluster_config(), None).await?;
        match rf.kvs().first().and_then(|kv| aether_common::catalog::ClusterConfig::parse(kv.value())) {
            Some(c) => println!("replication factor: {}", c.replication_factor),
            None => println!("replication factor: unset (each service's own setting)"),
        }
        println!(
            "{:<36} {:<22} {:<8} {:>6} {:<9} {:<5} {:>10} {:>14}",
            "NODE", "ADDRESS", "ZONE", "WEIGHT", "STATE", "ALIVE", "OBJECTS", "BYTES"
        );
        for r in rows {
            let s = |k: &str| match &r[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_string(),
                v => v.to_string(),
            };
            println!(
                "{:<36} {:<22} {:<8} {:>6} {:<9} {:<5} {:>10} {:>14}",
                s("id"),
                s("addr"),
                s("zone"),
                s("weight"),
                s("state"),
                match (&r["alive"], &r["quarantined"]) {
                    // Back from an absence longer than the tombstone grace, reconciling.
                    (serde_json::Value::Bool(true), serde_json::Value::Bool(true)) => "quar",
                    (serde_json::Value::Bool(true), _) => "yes",
                    _ => "no",
                },
                s("objects"),
                s("bytes")
            );
        }
        Ok(())
    })
}

/// Node `id`'s stats, from its address (a node that is not `id` refuses: wrong node).
async fn node_stats(id: &str, addr: &str) -> Result<aether_proto::blob::v1::NodeStatsResponse, String> {
    let call = async {
        let ch = aether_common::grpc::endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let r = BlobServiceClient::with_interceptor(ch, aether_common::grpc::ToNode::new(id))
            .node_stats(NodeStatsRequest {})
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(r.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(3), call).await.unwrap_or_else(|_| Err("timed out".to_string()))
}

/// Change one node's layout entry (compare-and-swap).
pub fn change(endpoints: &[String], prefix: &str, id: &str, change: Change) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let keys = Keys::new(prefix);
        let mut client = connect(endpoints).await?;
        let (nodes, _) = layout(&mut client, &keys).await?;
        let matches: Vec<&String> = nodes.keys().filter(|k| k.as_str() == id || k.starts_with(id)).collect();
        let full = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => bail!("no node {id} in the layout (see `aether node ls`)"),
            many if many.iter().any(|k| k.as_str() == id) => id.to_string(),
            many => bail!("{id} matches {} nodes: {:?}", many.len(), many),
        };
        let (entry, rev) = &nodes[&full];
        let mut next = entry.clone();
        match &change {
            Change::State(s) => next.state = *s,
            Change::Weight(w) => next.weight = *w,
            Change::Zone(z) => next.zone = z.clone(),
        }
        if next == *entry {
            println!("{full}: unchanged");
            return Ok(());
        }
        let key = keys.node(&full);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)])
            .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&next)?, None)]);
        if !client.txn(txn).await?.succeeded() {
            bail!("{full}: the layout entry changed concurrently; run the command again");
        }
        println!(
            "{full}: state {}, weight {}, zone {:?}",
            format!("{:?}", next.state).to_lowercase(),
            next.weight,
            next.zone
        );
        if matches!(change, Change::State(NodeState::Draining)) {
            println!("its keys move to the other active nodes; `aether node ls` shows 0 objects on it when done");
        }
        Ok(())
    })
}

/// Set the cluster's replication factor (the catalog's `cluster/config`, which gateways
/// and blobd follow over their own settings). A compare-and-swap on the entry.
pub fn set_rf(endpoints: &[String], prefix: &str, replication_factor: usize) -> anyhow::Result<()> {
    use aether_common::catalog::ClusterConfig;
    if replication_factor == 0 {
        bail!("the replication factor must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let keys = Keys::new(prefix);
        let mut client = connect(endpoints).await?;
        let key = keys.cluster_config();
        let got = client.get(key.as_str(), None).await?;
        let (old, rev) = match got.kvs().first() {
            Some(kv) => (ClusterConfig::parse(kv.value()), kv.mod_revision()),
            None => (None, 0),
        };
        if old.is_some_and(|c| c.replication_factor == replication_factor) {
            println!("replication factor: {replication_factor} (unchanged)");
            return Ok(());
        }
        let next = ClusterConfig { replication_factor };
        let cmp = if rev == 0 {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&next)?, None)]);
        if !client.txn(txn).await?.succeeded() {
            bail!("the cluster config changed concurrently; run the command again");
        }
        let was = old.map_or("unset".to_string(), |c| c.replication_factor.to_string());
        println!("replication factor: {replication_factor} (was {was})");
        let (nodes, _) = layout(&mut client, &keys).await?;
        let active = nodes.values().filter(|(n, _)| n.state == NodeState::Active).count();
        if active < replication_factor {
            println!("note: only {active} active node(s): each object gets {active} copies until more join");
        }
        println!("gateways place new writes by it now; anti-entropy moves existing copies to their new owners");
        Ok(())
    })
}
