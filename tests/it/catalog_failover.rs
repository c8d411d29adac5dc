//! Catalog failover on a 3-member real etcd: members are killed (SIGKILL) one at a time
//! while the gateway watches the catalog and blobd keeps its lease alive through them.
//! Skipped, with a message, when there is no etcd binary.

use std::time::{Duration, Instant};

use aether_common::catalog::{BucketEntry, BucketState, Keys};
use aether_common::shutdown::Shutdown;
use aether_gateway::catalog::{Catalog, CatalogStats};
use aether_tests::{CatalogBackend, Cluster, ClusterOptions, http1, wait_for};
use etcd_client::{Client, CompactionOptions};

use crate::bs;

/// blobd's lease TTL in the harness.
const LEASE_TTL: Duration = Duration::from_secs(5);

fn have_etcd(test: &str) -> bool {
    let have = aether_tests::etcd_bin().is_some();
    if !have {
        println!("SKIPPED {test}: no etcd binary (install etcd-server or set AETHER_ETCD_BIN)");
    }
    have
}

async fn three_members(blobds: usize, gateways: usize) -> anyhow::Result<Cluster> {
    Cluster::start(ClusterOptions {
        catalog: CatalogBackend::Etcd,
        etcd_members: 3,
        blobds,
        gateways,
        replication_factor: blobds.max(1),
        ..ClusterOptions::default()
    })
    .await
}

/// A client to etcd member `i` only.
async fn member(c: &Cluster, i: usize) -> anyhow::Result<Client> {
    Ok(Client::connect([c.etcd_members[i].endpoint()], None).await?)
}

fn bucket_json() -> Vec<u8> {
    let e = BucketEntry {
        created: "2026-01-01T00:00:00Z".into(),
        owner: "failover-test".into(),
        state: BucketState::Active,
        tags: Default::default(),
        cors: Vec::new(),
    };
    serde_json::to_vec(&e).expect("bucket entry")
}

/// Put (or delete, with `None`) a catalog key through member `i`, retrying while the
/// cluster elects a new leader.
async fn write_via(c: &Cluster, i: usize, key: String, value: Option<Vec<u8>>) -> anyhow::Result<()> {
    let ep = c.etcd_members[i].endpoint();
    wait_for(&format!("write {key} through member {i}"), Duration::from_secs(30), || {
        let (ep, key, value) = (ep.clone(), key.clone(), value.clone());
        async move {
            let mut cl = Client::connect([ep], None).await.ok()?;
            let r = match value {
                Some(v) => cl.put(key, v, None).await.map(|_| ()),
                None => cl.delete(key, None).await.map(|_| ()),
            };
            r.ok()
        }
    })
    .await
}

/// Open gRPC streams of `method` ("Watch", "LeaseKeepAlive") on etcd member `i`, from its
/// /metrics (started minus handled); None if it cannot be read.
async fn open_streams(c: &Cluster, i: usize, method: &str) -> Option<i64> {
    let r = http1::request(&c.etcd_members[i].endpoint(), "GET", "/metrics", &[], Vec::new()).await.ok()?;
    let text = r.body_text();
    let service = if method == "Watch" { "etcdserverpb.Watch" } else { "etcdserverpb.Lease" };
    let tag = format!("grpc_method=\"{method}\",grpc_service=\"{service}\"");
    let sum = |metric: &str| -> i64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains(&tag))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64
    };
    Some(sum("grpc_server_started_total{") - sum("grpc_server_handled_total{"))
}

/// The live member holding the gateway's catalog watch (the only Watch streams in the
/// test), else the first live member from `fallback` on.
async fn watch_holder(c: &Cluster, fallback: usize) -> usize {
    for i in 0..c.etcd_members.len() {
        if c.etcd_members[i].is_running() && open_streams(c, i, "Watch").await.unwrap_or(0) > 0 {
            return i;
        }
    }
    (fallback..fallback + 3).map(|i| i % 3).find(|&i| c.etcd_members[i].is_running()).unwrap_or(fallback)
}

/// blobd's liveness keys and the lease each is attached to, read through member `i`.
async fn alive_leases(c: &Cluster, i: usize) -> anyhow::Result<Vec<Option<i64>>> {
    let keys = Keys::default();
    let mut cl = member(c, i).await?;
    let mut out = Vec::new();
    for b in &c.blobds {
        let r = cl.get(keys.alive(&b.node_id), None).await?;
        out.push(r.kvs().first().map(|kv| kv.lease()));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_and_blobd_fail_over_when_etcd_members_die() -> anyhow::Result<()> {
    if !have_etcd("gateway_and_blobd_fail_over_when_etcd_members_die") {
        return Ok(());
    }
    let mut c = three_members(3, 1).await?;
    let s3 = c.s3(0);
    let keys = Keys::default();
    for r in 0..3 {
        s3.create_bucket().bucket(format!("doomed-{r}")).send().await?;
    }
    let leases = alive_leases(&c, 0).await?;
    assert!(leases.iter().all(Option::is_some), "every blobd alive before the kills: {leases:?}");

    for round in 0..3 {
        let victim = watch_holder(&c, round).await;
        let other = (victim + 1) % 3;
        println!(
            "round {round}: killing etcd member {victim} (Watch streams {:?}, LeaseKeepAlive streams {:?})",
            open_streams(&c, victim, "Watch").await,
            open_streams(&c, victim, "LeaseKeepAlive").await
        );
        let killed_at = Instant::now();
        c.kill_etcd(victim)?;

        // Catalog changes through another member, while the gateway's watch is broken.
        let (created, doomed) = (format!("after-kill-{round}"), format!("doomed-{round}"));
        write_via(&c, other, keys.bucket(&created), Some(bucket_json())).await?;
        write_via(&c, other, keys.bucket(&doomed), None).await?;

        // (a) the new bucket reaches the gateway's catalog: it serves a PUT into it.
        wait_for(&format!("gateway to serve a PUT into {created}"), Duration::from_secs(30), || {
            let (s3, created) = (s3.clone(), created.clone());
            async move { s3.put_object().bucket(created).key("k").body(bs(b"after the kill")).send().await.ok() }
        })
        .await?;
        // (c) the bucket deleted meanwhile is gone from it.
        wait_for(&format!("gateway to forget {doomed}"), Duration::from_secs(30), || {
            let (s3, doomed) = (s3.clone(), doomed.clone());
            async move {
                let r = s3.put_object().bucket(doomed).key("k").body(bs(b"x")).send().await;
                (r.is_err() && crate::err_code(r) == "NoSuchBucket").then_some(())
            }
        })
        .await?;
        // (b) every liveness key stays, on the same lease, for longer than a TTL (plus the
        // lease extension a new leader grants) after the kill: the keep-alives went on
        // through the surviving members. Checked at every poll, not just at the end.
        let window = LEASE_TTL + Duration::from_secs(2);
        wait_for("liveness leases kept alive past a TTL after the kill", window * 3, || {
            let c = &c;
            let leases = &leases;
            async move {
                let now = alive_leases(c, other).await.ok()?;
                assert_eq!(&now, leases, "a liveness key vanished or moved to a new lease (round {round})");
                (killed_at.elapsed() > window).then_some(())
            }
        })
        .await?;
        let survivors: Vec<(usize, Option<i64>, Option<i64>)> = {
            let mut v = Vec::new();
            for i in (0..3).filter(|&i| i != victim) {
                v.push((i, open_streams(&c, i, "Watch").await, open_streams(&c, i, "LeaseKeepAlive").await));
            }
            v
        };
        println!("round {round}: streams (member, Watch, LeaseKeepAlive) on the survivors: {survivors:?}");
        let keepalives: i64 = survivors.iter().filter_map(|s| s.2).sum();
        assert!(keepalives >= 3, "the 3 blobd keep-alive streams moved to the survivors: {survivors:?}");

        c.restart_etcd(victim).await?;
    }
    // Every object written after a kill is still there.
    for round in 0..3 {
        let got = s3.get_object().bucket(format!("after-kill-{round}")).key("k").send().await?;
        assert_eq!(crate::body_bytes(got).await, b"after the kill");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_client_moves_to_a_live_member_when_its_member_dies() -> anyhow::Result<()> {
    if !have_etcd("etcd_client_moves_to_a_live_member_when_its_member_dies") {
        return Ok(());
    }
    let mut c = three_members(0, 0).await?;
    let mut cl = aether_common::etcd::connect(&c.catalog_endpoints(), None).await?;
    cl.put("/failover/x", "1", None).await?;
    // The client starts on the first endpoint; kill it.
    c.kill_etcd(0)?;
    let mut failures = 0;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(10), cl.get("/failover/x", None)).await {
            Ok(Ok(r)) => assert_eq!(r.kvs().first().map(|kv| kv.value()), Some(&b"1"[..])),
            Ok(Err(e)) => {
                println!("call failed: {e}");
                failures += 1;
            }
            Err(_) => panic!("a call hung for 10 s"),
        }
    }
    // Only the call that found the member dead fails (or one more, if it was the leader
    // and the next member answered while the election ran).
    assert!(failures <= 2, "{failures} of 20 calls failed after one member died");
    Ok(())
}

/// A catalog cache watching through member 0 only, so its watch stays broken exactly
/// while member 0 is down; changes are made through member 1 meanwhile.
struct Watched {
    catalog: Catalog,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    fn start(c: &Cluster) -> Self {
        let catalog = Catalog::new(aether_common::catalog::DEFAULT_PREFIX);
        let shutdown = Shutdown::new();
        let task = tokio::spawn(catalog.clone().run(vec![c.etcd_members[0].endpoint()], shutdown.clone()));
        Self { catalog, shutdown, task }
    }

    async fn wait_buckets(&self, present: &[&str], absent: &[&str]) -> anyhow::Result<()> {
        let what = format!("catalog with {present:?} and without {absent:?}");
        wait_for(&what, Duration::from_secs(30), || async {
            let snap = self.catalog.snapshot();
            (present.iter().all(|b| snap.buckets.contains_key(*b))
                && absent.iter().all(|b| !snap.buckets.contains_key(*b)))
            .then_some(())
        })
        .await
    }

    async fn stop(self) -> CatalogStats {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.catalog.stats()
    }
}

/// Kill member 0, create `during` and delete `before` through member 1 (then compact, if
/// asked), start member 0 again; the catalog must end with `during` and without `before`.
async fn break_change_and_heal(compact: bool) -> anyhow::Result<CatalogStats> {
    let mut c = three_members(0, 0).await?;
    let keys = Keys::default();
    write_via(&c, 1, keys.bucket("before"), Some(bucket_json())).await?;
    let w = Watched::start(&c);
    w.wait_buckets(&["before"], &[]).await?;
    write_via(&c, 1, keys.bucket("watched"), Some(bucket_json())).await?;
    w.wait_buckets(&["before", "watched"], &[]).await?;
    assert_eq!(w.catalog.stats(), CatalogStats { full_loads: 1, resumed_watches: 0, compacted_fallbacks: 0 });

    c.kill_etcd(0)?;
    write_via(&c, 1, keys.bucket("during"), Some(bucket_json())).await?;
    write_via(&c, 1, keys.bucket("before"), None).await?;
    // Filler revisions, so a compaction lands well past the catalog's last revision.
    for i in 0..5 {
        write_via(&c, 1, format!("/unrelated/{i}"), Some(b"x".to_vec())).await?;
    }
    if compact {
        let mut m1 = member(&c, 1).await?;
        let rev = m1.get("/unrelated/4", None).await?.header().map(|h| h.revision()).unwrap_or(0);
        m1.compact(rev, Some(CompactionOptions::new().with_physical())).await?;
    }
    // The catalog still shows the old state: its only endpoint is down.
    let snap = w.catalog.snapshot();
    assert!(snap.buckets.contains_key("before") && !snap.buckets.contains_key("during"));

    c.restart_etcd(0).await?;
    w.wait_buckets(&["during", "watched"], &["before"]).await?;
    Ok(w.stop().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_watch_resumes_from_the_last_revision_after_its_member_dies() -> anyhow::Result<()> {
    if !have_etcd("catalog_watch_resumes_from_the_last_revision_after_its_member_dies") {
        return Ok(());
    }
    let stats = break_change_and_heal(false).await?;
    println!("{stats:?}");
    assert_eq!(stats.full_loads, 1, "resumed without a reload: {stats:?}");
    assert!(stats.resumed_watches >= 1, "{stats:?}");
    assert_eq!(stats.compacted_fallbacks, 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_reloads_when_its_last_revision_was_compacted() -> anyhow::Result<()> {
    if !have_etcd("catalog_reloads_when_its_last_revision_was_compacted") {
        return Ok(());
    }
    let stats = break_change_and_heal(true).await?;
    println!("{stats:?}");
    assert!(stats.compacted_fallbacks >= 1, "the resume was refused as compacted: {stats:?}");
    assert!(stats.full_loads >= 2, "and a full reload followed: {stats:?}");
    Ok(())
}
