//! Partitions and a consistency checker: a blobd cut off through a fault-injecting proxy
//! (`aether_tests::proxy`), blobd killed like SIGKILL, concurrent clients recording a
//! history that is checked afterwards.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_tests::{Cluster, ClusterOptions, wait_for};
use aws_sdk_s3::error::ProvideErrorMetadata as _;

use crate::rebalance::held;
use crate::{body_bytes, bs};

async fn converged(c: &Cluster, bucket: &str, keys: &[String]) -> Option<BTreeMap<String, (u64, String, bool)>> {
    let first = held(c, 0, bucket, keys).await.ok()?;
    for i in 1..c.blobds.len() {
        if held(c, i, bucket, keys).await.ok()? != first {
            return None;
        }
    }
    Some(first)
}

/// blobd 2 cut off from the gateway and the other blobd while keys are overwritten,
/// deleted and created (W = 2 of the other two); after the partition heals, every replica
/// converges to the newest version of every key, and deleted keys stay deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_replica_converges_after_the_partition_heals() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        proxied_blobds: vec![2],
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("partition").send().await?;
    let keys: Vec<String> = (0..60).map(|i| format!("p/{i:02}")).chain((0..30).map(|i| format!("q/{i:02}"))).collect();
    for k in &keys[..60] {
        s3.put_object().bucket("partition").key(k).body(bs(format!("v1 {k}").as_bytes())).send().await?;
    }
    let proxy = c.blobds[2].proxy.as_ref().expect("blobd 2 is proxied");
    proxy.cut();
    for k in &keys[..20] {
        s3.put_object().bucket("partition").key(k).body(bs(format!("v2 {k}").as_bytes())).send().await?;
    }
    for k in &keys[20..40] {
        s3.delete_object().bucket("partition").key(k).send().await?;
    }
    for k in &keys[60..] {
        s3.put_object().bucket("partition").key(k).body(bs(format!("v1 {k}").as_bytes())).send().await?;
    }
    let majority = held(&c, 0, "partition", &keys).await?;
    let isolated = held(&c, 2, "partition", &keys).await?;
    assert_eq!(isolated.len(), 60, "the cut-off node saw none of the writes");
    proxy.heal();
    let end =
        wait_for("every replica to converge", Duration::from_secs(60), || converged(&c, "partition", &keys)).await?;
    assert_eq!(end, majority, "the newest version of every key won");
    for (k, (_, _, tomb)) in &end {
        let deleted = keys[20..40].contains(k);
        assert_eq!(*tomb, deleted, "{k}");
    }
    for k in &keys[20..40] {
        assert_eq!(crate::err_code(s3.get_object().bucket("partition").key(k).send().await), "NoSuchKey");
    }
    let got = s3.get_object().bucket("partition").key(&keys[3]).send().await?;
    assert_eq!(body_bytes(got).await, format!("v2 {}", keys[3]).into_bytes());
    Ok(())
}

/// A layout entry giving blobd 2 blobd 1's address (a stale layout, an address another node
/// reused): blobd 1 refuses the calls meant for blobd 2, so a write with W = all cannot count
/// it twice and fails with 503 rather than being acknowledged with two copies; once the entry
/// is right again, writes reach all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_at_another_nodes_address_is_not_counted_as_that_node() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        write_quorum: aether_common::config::Quorum::All,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("reused").send().await?;
    s3.put_object().bucket("reused").key("before").body(bs(b"3 copies")).send().await?;
    let own = c.blobds[2].addr.clone().expect("blobd 2 runs");
    let other = c.blobds[1].addr.clone().expect("blobd 1 runs");
    c.set_node(2, |e| e.addr = other.clone()).await?;
    let mut tries = 0;
    wait_for("a put to be refused with W = all", Duration::from_secs(20), || {
        tries += 1;
        let s3 = s3.clone();
        let key = format!("during/{tries}");
        async move {
            let r = s3.put_object().bucket("reused").key(&key).body(bs(b"x")).send().await;
            (r.is_err() && crate::err_code(r) == "ServiceUnavailable").then_some(())
        }
    })
    .await?;
    c.set_node(2, |e| e.addr = own.clone()).await?;
    let key = wait_for("a put to reach all three again", Duration::from_secs(20), || {
        tries += 1;
        let s3 = s3.clone();
        let key = format!("after/{tries}");
        async move { s3.put_object().bucket("reused").key(&key).body(bs(b"y")).send().await.ok().map(|_| key) }
    })
    .await?;
    let keys = vec!["before".to_string(), key];
    for i in 0..3 {
        assert_eq!(held(&c, i, "reused", &keys).await?.len(), 2, "blobd {i} holds both keys");
    }
    c.stop_all().await
}

/// A real two-sided partition: {gateway 1, blobd 2} | {gateway 0, blobd 0, blobd 1}. Every
/// blobd is reached through a proxy, and each side's connections leave from its own
/// loopback address, so the proxies drop exactly the traffic that crosses the partition
/// (metad stays reachable from both sides, as when only the data network splits). Writes
/// and deletes go through both sides: the minority's fail with 503 (a write quorum of 2 is
/// out of its reach) but may have landed on blobd 2; the majority's succeed. After the heal
/// every replica holds the newest version of every key that any replica held, keys the
/// majority deleted after the minority wrote them stay deleted, and both gateways read the
/// same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_both_sides_of_a_partition_converge_to_the_newest() -> anyhow::Result<()> {
    let (majority_ip, minority_gw, minority_blobd): (IpAddr, IpAddr, IpAddr) =
        ([127, 0, 0, 1].into(), [127, 0, 0, 2].into(), [127, 0, 0, 3].into());
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        proxied_blobds: vec![0, 1, 2],
        blobd_sources: vec![(0, majority_ip), (1, majority_ip), (2, minority_blobd)],
        ..ClusterOptions::default()
    })
    .await?;
    let minority = c.start_gateway_from(Some(minority_gw)).await?;
    // The minority's client does not retry its 503s (each would only fail again).
    let small = c.s3(minority);
    let small = aws_sdk_s3::Client::from_conf(
        small.config().to_builder().retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()).build(),
    );
    let big = c.s3(0);
    big.create_bucket().bucket("split").send().await?;
    let k = |i: usize| format!("k/{i:02}");
    let keys: Vec<String> = (0..50).map(k).chain((0..10).map(|i| format!("n/{i:02}"))).collect();
    for key in &keys[..50] {
        big.put_object().bucket("split").key(key).body(bs(format!("v1 {key}").as_bytes())).send().await?;
    }
    // Both gateways work before the split.
    let got = small.get_object().bucket("split").key(k(7)).send().await?;
    assert_eq!(body_bytes(got).await, format!("v1 {}", k(7)).into_bytes());

    for i in 0..2 {
        c.blobds[i].proxy.as_ref().expect("proxied").block_from(&[minority_gw, minority_blobd]);
    }
    c.blobds[2].proxy.as_ref().expect("proxied").block_from(&[majority_ip]);

    // The minority side first: writes to k/20..k/39, deletes of k/40..k/49. No write quorum.
    for i in 20..40 {
        let r = small.put_object().bucket("split").key(k(i)).body(bs(format!("minority {i}").as_bytes())).send().await;
        assert_eq!(crate::err_code(r), "ServiceUnavailable", "{}", k(i));
    }
    for i in 40..50 {
        assert_eq!(crate::err_code(small.delete_object().bucket("split").key(k(i)).send().await), "ServiceUnavailable");
    }
    assert_eq!(crate::err_code(small.get_object().bucket("split").key(k(3)).send().await), "ServiceUnavailable");
    // Then the majority: overwrites k/00..k/19, deletes k/20..k/29 (written by the minority
    // before), creates n/*.
    for i in 0..20 {
        big.put_object().bucket("split").key(k(i)).body(bs(format!("v2 {i}").as_bytes())).send().await?;
    }
    for i in 20..30 {
        big.delete_object().bucket("split").key(k(i)).send().await?;
    }
    for key in &keys[50..] {
        big.put_object().bucket("split").key(key).body(bs(format!("v1 {key}").as_bytes())).send().await?;
    }

    // The newest version of each key any replica holds, before the heal.
    let mut newest: BTreeMap<String, (u64, String, bool)> = BTreeMap::new();
    for i in 0..3 {
        for (key, v) in held(&c, i, "split", &keys).await? {
            let e = newest.entry(key).or_insert_with(|| v.clone());
            if (v.0, &v.1) > (e.0, &e.1) {
                *e = v;
            }
        }
    }
    for i in 0..3 {
        c.blobds[i].proxy.as_ref().expect("proxied").heal();
    }
    let end = wait_for("every replica to converge", Duration::from_secs(60), || converged(&c, "split", &keys)).await?;
    assert_eq!(end, newest, "every replica holds the newest version of every key");
    for s3 in [&big, &small] {
        for i in 0..20 {
            let got = s3.get_object().bucket("split").key(k(i)).send().await?;
            assert_eq!(body_bytes(got).await, format!("v2 {i}").into_bytes(), "{}", k(i));
        }
        for i in 20..30 {
            assert_eq!(
                crate::err_code(s3.get_object().bucket("split").key(k(i)).send().await),
                "NoSuchKey",
                "{}",
                k(i)
            );
        }
        for key in &keys[50..] {
            let got = s3.get_object().bucket("split").key(key).send().await?;
            assert_eq!(body_bytes(got).await, format!("v1 {key}").into_bytes());
        }
        // The minority's failed writes and deletes: either outcome, the same everywhere.
        for i in 30..50 {
            let (_, _, tomb) = &end[&k(i)];
            match s3.get_object().bucket("split").key(k(i)).send().await {
                Ok(got) => {
                    assert!(!tomb, "{}", k(i));
                    let body = body_bytes(got).await;
                    let allowed = [format!("v1 {}", k(i)), format!("minority {i}")];
                    assert!(allowed.iter().any(|a| a.as_bytes() == body.as_slice()), "{}", k(i));
                }
                Err(e) => {
                    assert!(*tomb, "{}: {e:?}", k(i));
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Kind {
    Put(String),
    Delete,
    Get(Option<String>),
}

#[derive(Debug, Clone)]
struct Op {
    key: String,
    kind: Kind,
    call: u128,
    /// None: the outcome is unknown (an error); the write may or may not have happened.
    ret: Option<u128>,
}

/// The checker: every read returns a value (or absence) some write could have produced at
/// that point, never one older than a write acknowledged before the read started; the
/// final reads (after healing and convergence) therefore hold no acknowledged write lost.
fn check(history: &[Op]) -> Result<usize, String> {
    let mut checked = 0;
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        let writes: Vec<&&Op> = ops.iter().filter(|o| !matches!(o.kind, Kind::Get(_))).collect();
        let acked: Vec<&&Op> = writes.iter().copied().filter(|o| o.ret.is_some()).collect();
        // `w` ended before `after` began.
        let before = |w: &Op, after: &Op| w.ret.is_some_and(|r| r < after.call);
        for g in ops.iter().filter(|o| matches!(o.kind, Kind::Get(_))) {
            let Kind::Get(seen) = &g.kind else { continue };
            let g_ret = g.ret.unwrap_or(u128::MAX);
            // The writes that could have produced what the read saw.
            let producers: Vec<&&Op> = writes
                .iter()
                .copied()
                .filter(|w| w.call < g_ret)
                .filter(|w| match (&w.kind, seen) {
                    (Kind::Put(v), Some(s)) => v == s,
                    (Kind::Delete, None) => true,
                    _ => false,
                })
                .collect();
            if let Some(s) = seen
                && producers.is_empty()
            {
                return Err(format!("{key}: a read at {} saw {s:?}, which no write wrote", g.call));
            }
            // Absence is also the initial state, which every write follows: a read of
            // nothing is stale when every delete ended before an acknowledged write began.
            for w in acked.iter().filter(|w| before(w, g)) {
                if producers.iter().all(|p| before(p, w)) {
                    return Err(format!(
                        "{key}: a read at {} saw {seen:?}, older than the write {:?} acknowledged at {:?}",
                        g.call, w.kind, w.ret
                    ));
                }
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// Concurrent clients PUT, GET and DELETE a small key set while blobd 1 is cut off, blobd 2
/// is killed (both at once for a while), then both come back; the recorded history passes
/// the checker, and so do final reads of every key once the cluster has converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_under_kills_and_partitions_loses_no_acknowledged_write() -> anyhow::Result<()> {
    const CLIENTS: usize = 6;
    const OPS: usize = 120;
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        proxied_blobds: vec![1],
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("history").send().await?;
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    let origin = Instant::now();
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (s3, keys, history, done) = (s3.clone(), keys.clone(), history.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            // A fixed pseudo-random sequence per client (no seeding from the clock).
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1);
            for n in 0..OPS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = keys[(x % keys.len() as u64) as usize].clone();
                let call = origin.elapsed().as_nanos();
                let op = match (x >> 8) % 10 {
                    0..=3 => {
                        let v = format!("c{client}-{n}");
                        let r = s3.put_object().bucket("history").key(&key).body(bs(v.as_bytes())).send().await;
                        Some(Op { key, kind: Kind::Put(v), call, ret: r.ok().map(|_| origin.elapsed().as_nanos()) })
                    }
                    4 => {
                        let r = s3.delete_object().bucket("history").key(&key).send().await;
                        Some(Op { key, kind: Kind::Delete, call, ret: r.ok().map(|_| origin.elapsed().as_nanos()) })
                    }
                    _ => match s3.get_object().bucket("history").key(&key).send().await {
                        // The body can still fail after the headers (the holder killed
                        // mid-stream with no other holder reachable): a failed read too.
                        Ok(out) => match out.body.collect().await {
                            Ok(body) => {
                                let v = String::from_utf8(body.into_bytes().to_vec()).unwrap_or_default();
                                let ret = Some(origin.elapsed().as_nanos());
                                Some(Op { key, kind: Kind::Get(Some(v)), call, ret })
                            }
                            Err(_) => None,
                        },
                        Err(e) if e.code() == Some("NoSuchKey") => {
                            let ret = Some(origin.elapsed().as_nanos());
                            Some(Op { key, kind: Kind::Get(None), call, ret })
                        }
                        // A failed read tells nothing.
                        Err(_) => None,
                    },
                };
                if let Some(op) = op {
                    history.lock().unwrap_or_else(|e| e.into_inner()).push(op);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let total = CLIENTS * OPS;
    // Faults overlap in the middle: with blobd 1 cut off and blobd 2 dead, writes fail
    // (unknown outcome: some land on blobd 0 alone) and reads fail.
    reach(&done, total / 5).await?;
    c.blobds[1].proxy.as_ref().expect("proxied").cut();
    reach(&done, 2 * total / 5).await?;
    c.kill_blobd(2);
    reach(&done, 3 * total / 5).await?;
    c.blobds[1].proxy.as_ref().expect("proxied").heal();
    reach(&done, 4 * total / 5).await?;
    c.start_blobd(2).await?;
    for h in clients {
        h.await?;
    }
    c.wait_alive(3).await?;
    wait_for("every replica to converge", Duration::from_secs(60), || converged(&c, "history", &keys)).await?;
    // Final reads, recorded like the others.
    for key in &keys {
        let call = origin.elapsed().as_nanos();
        let seen = match s3.get_object().bucket("history").key(key).send().await {
            Ok(out) => Some(String::from_utf8(body_bytes(out).await).unwrap_or_default()),
            Err(e) if e.code() == Some("NoSuchKey") => None,
            Err(e) => anyhow::bail!("final read of {key}: {e:?}"),
        };
        let ret = Some(origin.elapsed().as_nanos());
        history.lock().unwrap_or_else(|e| e.into_inner()).push(Op {
            key: key.clone(),
            kind: Kind::Get(seen),
            call,
            ret,
        });
    }
    let history = history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let acked = history.iter().filter(|o| !matches!(o.kind, Kind::Get(_)) && o.ret.is_some()).count();
    assert!(acked > total / 4, "only {acked} writes acknowledged");
    let reads = check(&history).map_err(anyhow::Error::msg)?;
    let unknown = history.iter().filter(|o| o.ret.is_none()).count();
    eprintln!(
        "history: {} operations, {acked} writes acknowledged, {unknown} unknown, {reads} reads checked",
        history.len()
    );
    assert!(reads > total / 4, "only {reads} reads checked");
    Ok(())
}

async fn reach(done: &AtomicUsize, n: usize) -> anyhow::Result<()> {
    wait_for(&format!("{n} operations"), Duration::from_secs(120), || async {
        (done.load(Ordering::SeqCst) >= n).then_some(())
    })
    .await
}

#[test]
fn the_checker_catches_a_lost_write_and_a_stale_read() {
    let put = |v: &str, call, ret| Op { key: "k".into(), kind: Kind::Put(v.into()), call, ret };
    let get = |v: Option<&str>, call, ret| Op { key: "k".into(), kind: Kind::Get(v.map(str::to_string)), call, ret };
    // Stale: a read after the second acked put returns the first.
    let h = vec![put("a", 0, Some(10)), put("b", 20, Some(30)), get(Some("a"), 40, Some(50))];
    assert!(check(&h).is_err());
    // Lost: a read after an acked put finds nothing.
    let h = vec![put("a", 0, Some(10)), get(None, 40, Some(50))];
    assert!(check(&h).is_err());
    // A phantom value.
    assert!(check(&[get(Some("z"), 0, Some(1))]).is_err());
    // Concurrent writes may be seen in either order; an unknown write may be seen.
    let h = vec![
        put("a", 0, Some(30)),
        put("b", 10, Some(20)),
        get(Some("a"), 40, Some(50)),
        put("c", 60, None),
        get(Some("c"), 70, Some(80)),
    ];
    assert_eq!(check(&h), Ok(2));
}
