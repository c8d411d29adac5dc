//! Registration against a real etcd (the `etcd` binary on PATH, or `AETHER_ETCD_BIN`);
//! skipped with a message when there is none. metad will be tested the same way once it
//! exists.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aether_common::catalog::{AliveEntry, Keys, NodeEntry, NodeState};
use etcd_client::Client;

use crate::harness::*;

fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AETHER_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("etcd")).find(|p| p.is_file())
}

struct Etcd {
    _child: tokio::process::Child,
    endpoint: String,
}

async fn start_etcd(dir: &std::path::Path) -> Option<Etcd> {
    let bin = etcd_bin()?;
    let client_port = dead_port().await;
    let peer_port = dead_port().await;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = tokio::process::Command::new(bin)
        .arg("--name=t")
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=t={peer_url}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let endpoint = format!("127.0.0.1:{client_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Client::connect([&endpoint], None).await
            && c.get("x", None).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(Etcd { _child: child, endpoint })
}

async fn get_json<T: serde::de::DeserializeOwned>(c: &mut Client, key: &str) -> Option<(T, i64)> {
    let r = c.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| (serde_json::from_slice(kv.value()).unwrap(), kv.lease()))
}

/// Poll an async condition with a deadline.
async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn registers_keeps_alive_and_revokes_with_real_etcd() {
    let etcd_dir = tempfile::tempdir().unwrap();
    let Some(etcd) = start_etcd(etcd_dir.path()).await else {
        println!("SKIPPED: no etcd binary (install etcd-server or set AETHER_ETCD_BIN)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut ec = Client::connect([&etcd.endpoint], None).await.unwrap();
    let keys = Keys::default();

    let node = start_with(tmp.path(), vec![etcd.endpoint.clone()]).await;
    eventually("ready", 20, || async { node.admin_status("/ready").await == 200 }).await;
    let id = aether_blobd::read_or_create_node_id(tmp.path()).unwrap();
    let (entry, _) = get_json::<NodeEntry>(&mut ec, &keys.node(&id)).await.unwrap();
    assert_eq!(
        entry,
        NodeEntry { addr: node.grpc.to_string(), zone: String::new(), weight: 1, state: NodeState::Active }
    );
    let (alive, lease) = get_json::<AliveEntry>(&mut ec, &keys.alive(&id)).await.unwrap();
    assert_eq!(alive.addr, node.grpc.to_string());
    assert_ne!(lease, 0);

    // The lease outlives several TTLs (2 s) thanks to keep-alives.
    let t = ec.lease_time_to_live(lease, None).await.unwrap();
    assert!(t.ttl() > 0);

    // Lease lost (revoked behind its back): blobd grants a new one and puts alive again.
    ec.lease_revoke(lease).await.unwrap();
    eventually("a new lease", 20, || {
        let mut ec = ec.clone();
        let key = keys.alive(&id);
        async move { get_json::<AliveEntry>(&mut ec, &key).await.is_some_and(|(_, l)| l != 0 && l != lease) }
    })
    .await;
    eventually("ready after re-registering", 20, || async { node.admin_status("/ready").await == 200 }).await;

    // Shutdown revokes the lease: the alive key goes away at once.
    node.stop().await;
    assert!(get_json::<AliveEntry>(&mut ec, &keys.alive(&id)).await.is_none());
    assert!(get_json::<NodeEntry>(&mut ec, &keys.node(&id)).await.is_some(), "the layout entry stays");

    // An operator changed zone/weight/state; the node comes back on a new address:
    // only the address changes.
    let edited = NodeEntry { addr: "10.0.0.1:1".into(), zone: "z9".into(), weight: 5, state: NodeState::Draining };
    ec.put(keys.node(&id), serde_json::to_vec(&edited).unwrap(), None).await.unwrap();
    let node = start_with(tmp.path(), vec![etcd.endpoint.clone()]).await;
    eventually("ready again", 20, || async { node.admin_status("/ready").await == 200 }).await;
    let (entry, _) = get_json::<NodeEntry>(&mut ec, &keys.node(&id)).await.unwrap();
    assert_eq!(entry, NodeEntry { addr: node.grpc.to_string(), ..edited });
    node.stop().await;
}
