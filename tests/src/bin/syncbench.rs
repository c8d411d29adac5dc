//! Anti-entropy and rebalance numbers on the in-process cluster (3 blobd, RF 3, W 2, one
//! gateway, real gRPC and SQLite on loopback), several runs, medians printed:
//!
//! 1. convergence: blobd 2 is down while N objects are written; after it is back, the time
//!    until anti-entropy alone (no reads) has given it all N;
//! 2. steady state: with nothing changing (after two settling cycles), body bytes pushed
//!    (should be 0) and digest bytes exchanged per cycle, over three cycles of every node;
//! 3. grow: a 4th node joins; the body bytes pushed until every key sits on exactly its
//!    owners, against the ideal (the copies the new node must hold: 1/4 of all).
//!
//! syncbench --objects 10000 --size 1024 --runs 3 --interval 1

use std::time::{Duration, Instant};

use aether_common::placement::{PlacementNode, replicas};
use aether_proto::blob::v1::NodeStatsRequest;
use aether_tests::{Cluster, ClusterOptions, wait_for};
use anyhow::{Context, bail};
use aws_sdk_s3::primitives::ByteStream;
use futures::{StreamExt as _, TryStreamExt as _};

struct Args {
    objects: usize,
    size: usize,
    runs: usize,
    interval: u64,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args { objects: 10_000, size: 1024, runs: 3, interval: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--objects" => a.objects = v.parse()?,
            "--size" => a.size = v.parse()?,
            "--runs" => a.runs = v.parse()?,
            "--interval" => a.interval = v.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// The sum of every series of a metric in this process's Prometheus text (all blobd of
/// the in-process cluster share one recorder), optionally only those with `label`.
fn metric(name: &str, label: Option<&str>) -> f64 {
    let text = aether_common::admin::prometheus().map(|h| h.render()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter(|l| label.is_none_or(|s| l.contains(s)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn objects_on(c: &Cluster, i: usize) -> anyhow::Result<u64> {
    Ok(c.blob_client(i).await?.node_stats(NodeStatsRequest {}).await?.into_inner().objects)
}

struct Run {
    converge_secs: f64,
    steady_pushed: f64,
    steady_digest_per_cycle: f64,
    grow_pushed: f64,
    grow_ideal: f64,
    stored: f64,
}

async fn one_run(a: &Args) -> anyhow::Result<Run> {
    let mut c =
        Cluster::start(ClusterOptions { gateways: 1, sync_interval_secs: a.interval, ..ClusterOptions::default() })
            .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("syncbench").send().await?;
    c.stop_blobd(2).await?;
    let body = vec![0x5au8; a.size];
    futures::stream::iter(0..a.objects)
        .map(|i| {
            let (s3, body) = (s3.clone(), body.clone());
            async move {
                s3.put_object().bucket("syncbench").key(format!("k/{i:06}")).body(ByteStream::from(body)).send().await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;

    // 1. convergence of the node that missed every write.
    c.start_blobd(2).await?;
    let t0 = Instant::now();
    let n = a.objects as u64;
    wait_for("blobd 2 to converge", Duration::from_secs(1800), || async {
        (objects_on(&c, 2).await.ok()? == n).then_some(())
    })
    .await?;
    let converge_secs = t0.elapsed().as_secs_f64();

    // 2. steady state: after two more cycles of each node (pushes of the last converging
    //    cycle finish), three cycles of each of the three nodes.
    let cycles = |m: &str| metric("blobd_sync_cycles_total", Some(m));
    let settle = cycles("ok");
    wait_for("six cycles to settle", Duration::from_secs(600), || async {
        (cycles("ok") >= settle + 6.0).then_some(())
    })
    .await?;
    let (c0, p0, d0) =
        (cycles("ok"), metric("blobd_sync_pushed_bytes_total", None), metric("blobd_sync_digest_bytes_total", None));
    wait_for("nine more sync cycles", Duration::from_secs(600), || async { (cycles("ok") >= c0 + 9.0).then_some(()) })
        .await?;
    let done = cycles("ok") - c0;
    let steady_pushed = metric("blobd_sync_pushed_bytes_total", None) - p0;
    let steady_digest_per_cycle = (metric("blobd_sync_digest_bytes_total", None) - d0) / done;

    // 3. a 4th node.
    let p1 = metric("blobd_sync_pushed_bytes_total", None);
    let i = c.add_blobd().await?;
    c.wait_alive(4).await?;
    let nodes: Vec<PlacementNode> =
        c.blobds.iter().map(|b| PlacementNode { id: b.node_id.clone(), zone: String::new(), weight: 1 }).collect();
    let want_new = (0..a.objects)
        .filter(|k| replicas(&nodes, "syncbench", &format!("k/{k:06}"), 3).iter().any(|p| p.id == nodes[i].id))
        .count() as u64;
    wait_for("every key on its owners of 4", Duration::from_secs(1800), || async {
        let mut total = 0;
        for j in 0..4 {
            total += objects_on(&c, j).await.ok()?;
        }
        (total == 3 * n && objects_on(&c, i).await.ok()? == want_new).then_some(())
    })
    .await?;
    let grow_pushed = metric("blobd_sync_pushed_bytes_total", None) - p1;
    c.stop_all().await?;
    Ok(Run {
        converge_secs,
        steady_pushed,
        steady_digest_per_cycle,
        grow_pushed,
        grow_ideal: (want_new as usize * a.size) as f64,
        stored: (3 * a.objects * a.size) as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let mut runs = Vec::new();
    println!("{} objects of {} B, RF 3, W 2, sync interval {} s, {} run(s)", a.objects, a.size, a.interval, a.runs);
    for r in 0..a.runs {
        let run = one_run(&a).await?;
        println!(
            "run {r}: converge {:.2} s ({:.0} keys/s); steady: {} body bytes pushed, {:.0} digest bytes per node-cycle \
             ({:.2e} per stored byte); grow 3->4: {:.0} bytes pushed = {:.3} of stored, {:.2}x the ideal",
            run.converge_secs,
            a.objects as f64 / run.converge_secs,
            run.steady_pushed,
            run.steady_digest_per_cycle,
            run.steady_digest_per_cycle / run.stored,
            run.grow_pushed,
            run.grow_pushed / run.stored,
            run.grow_pushed / run.grow_ideal,
        );
        runs.push(run);
    }
    println!(
        "median: converge {:.2} s; steady pushed {} B, digest {:.0} B per node-cycle; grow moved {:.3} of stored ({:.2}x ideal 0.25)",
        median(runs.iter().map(|r| r.converge_secs).collect()),
        median(runs.iter().map(|r| r.steady_pushed).collect()),
        median(runs.iter().map(|r| r.steady_digest_per_cycle).collect()),
        median(runs.iter().map(|r| r.grow_pushed / r.stored).collect()),
        median(runs.iter().map(|r| r.grow_pushed / r.grow_ideal).collect()),
    );
    Ok(())
}
