//! A small S3 load generator over the official aws-sdk-s3: N concurrent workers PUT (or
//! GET) objects of one size for a fixed time, several runs; prints ops/s, MiB/s and latency
//! percentiles per run and the median over runs. Loopback targets only.
//!
//! s3bench --endpoint http://127.0.0.1:9000 --op put --size 4096 --concurrency 32 --secs 10 --runs 3

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_s3::primitives::ByteStream;

struct Args {
    endpoint: String,
    access_key: String,
    secret_key: String,
    bucket: String,
    op: String,
    size: usize,
    concurrency: usize,
    secs: u64,
    runs: usize,
    keys: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        endpoint: "http://127.0.0.1:9000".into(),
        access_key: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "AKIAEXAMPLEAETHER0001".into()),
        secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "aether-dev-secret-change-me".into()),
        bucket: "s3bench".into(),
        op: "put".into(),
        size: 4096,
        concurrency: 32,
        secs: 10,
        runs: 3,
        keys: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => a.endpoint = v,
            "--bucket" => a.bucket = v,
            "--op" => a.op = v,
            "--size" => a.size = v.parse()?,
            "--concurrency" => a.concurrency = v.parse()?,
            "--secs" => a.secs = v.parse()?,
            "--runs" => a.runs = v.parse()?,
            "--keys" => a.keys = v.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let host = a.endpoint.split("://").nth(1).unwrap_or(&a.endpoint);
    if !(host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")) {
        bail!("s3bench only targets loopback endpoints, not {}", a.endpoint);
    }
    if a.op != "put" && a.op != "get" {
        bail!("--op is put or get");
    }
    Ok(a)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let s3 = aether_tests::s3_client(&a.endpoint, &a.access_key, &a.secret_key);
    let _ = s3.create_bucket().bucket(&a.bucket).send().await;
    let body = bytes::Bytes::from(vec![0x5au8; a.size]);
    if a.op == "get" {
        for k in 0..a.keys {
            s3.put_object().bucket(&a.bucket).key(format!("k{k}")).body(ByteStream::from(body.clone())).send().await?;
        }
    }
    let mut rates = Vec::new();
    for run in 1..=a.runs {
        let deadline = Instant::now() + Duration::from_secs(a.secs);
        let start = Instant::now();
        let workers = (0..a.concurrency).map(|w| {
            let (s3, bucket, body, op, keys) = (s3.clone(), a.bucket.clone(), body.clone(), a.op.clone(), a.keys);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0usize;
                while Instant::now() < deadline {
                    let key = format!("k{}", (w * 7919 + i) % keys);
                    let t = Instant::now();
                    if op == "put" {
                        s3.put_object().bucket(&bucket).key(key).body(ByteStream::from(body.clone())).send().await?;
                    } else {
                        let out = s3.get_object().bucket(&bucket).key(key).send().await?;
                        out.body.collect().await?;
                    }
                    lat.push(t.elapsed());
                    i += 1;
                }
                anyhow::Ok(lat)
            })
        });
        let mut lat = Vec::new();
        for h in futures::future::join_all(workers).await {
            lat.extend(h??);
        }
        let elapsed = start.elapsed().as_secs_f64();
        lat.sort();
        let ops = lat.len() as f64 / elapsed;
        rates.push(ops);
        println!(
            "run {run}: {} {}B x{}: {:.0} ops/s, {:.1} MiB/s, p50 {:.2} ms, p99 {:.2} ms ({} ops)",
            a.op,
            a.size,
            a.concurrency,
            ops,
            ops * a.size as f64 / (1 << 20) as f64,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.len()
        );
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "median over {} runs: {:.0} ops/s, {:.1} MiB/s",
        rates.len(),
        median,
        median * a.size as f64 / (1 << 20) as f64
    );
    Ok(())
}
