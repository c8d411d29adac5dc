//! metad against etcd, side by side: starts a 3-member metad cluster (`aether metad`
//! processes) and a 3-member etcd cluster (`etcd` processes) on 127.0.0.1, then runs the
//! same load against each, alternating, several rounds: put and range (linearizable get of
//! one key; `srange`: serializable) at concurrency 1 and 64, for a fixed time. Prints ops/s and p50/p99 latency per
//! run and the median per (system, workload) over the rounds, with the CPU time the three
//! member processes used per operation (user + system, from `/proc`). Every client gets all three
//! client endpoints, as gateways and blobd do.
//!
//! etcdbench --aether target/release/aether --etcd /usr/bin/etcd --secs 5 --rounds 3
//!     [--systems metad,etcd] [--workloads put:1,put:64,range:1,range:64] [--keys N] [--value-size B]
//!     [--target all|leader|follower] [--metrics PREFIX] [--aether2 PATH --systems metad,metad2]
//!
//! `--target leader` (or `follower`) gives the client only the leader's (or one follower's)
//! endpoint, to tell the leader's write path from the forwarded one. `--metrics metad_`
//! prints, per metad member, the median lines of its `/metrics` summaries whose names start
//! with the prefix (they cover the whole run, pre-fill included: use `--keys 1`). `--aether2`
//! names a second aether binary, run as system `metad2`: two builds side by side in one run.
//! After the medians it prints, per workload, the median over the rounds of each system's
//! ratio to etcd in the same round: on a host whose speed swings between rounds, many short
//! rounds (`--secs 1 --rounds 40`) and these paired ratios tell builds apart best.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, GetOptions};

struct Args {
    aether: PathBuf,
    /// A second aether binary, benchmarked as system `metad2` (an A/B comparison in one run).
    aether2: Option<PathBuf>,
    etcd: PathBuf,
    secs: u64,
    rounds: usize,
    value_size: usize,
    keys: usize,
    systems: Vec<String>,
    workloads: Vec<(String, usize)>,
    target: String,
    metrics: Option<String>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        aether: PathBuf::from("target/release/aether"),
        aether2: None,
        etcd: PathBuf::from("/usr/bin/etcd"),
        secs: 5,
        rounds: 3,
        value_size: 256,
        keys: 10_000,
        systems: vec!["metad".into(), "etcd".into()],
        workloads: vec![("put".into(), 1), ("put".into(), 64), ("range".into(), 1), ("range".into(), 64)],
        target: "all".into(),
        metrics: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--aether" => a.aether = v.into(),
            "--aether2" => a.aether2 = Some(v.into()),
            "--etcd" => a.etcd = v.into(),
            "--secs" => a.secs = v.parse()?,
            "--rounds" => a.rounds = v.parse()?,
            "--value-size" => a.value_size = v.parse()?,
            "--keys" => a.keys = v.parse()?,
            "--target" => {
                if !["all", "leader", "follower"].contains(&v.as_str()) {
                    bail!("--target is all, leader or follower, not {v:?}");
                }
                a.target = v
            }
            "--metrics" => a.metrics = Some(v),
            "--systems" => a.systems = v.split(',').map(str::to_string).collect(),
            "--workloads" => {
                a.workloads = v
                    .split(',')
                    .map(|w| {
                        let (op, c) = w.split_once(':').context("a workload is op:concurrency, e.g. put:64")?;
                        if !["put", "range", "srange"].contains(&op) {
                            bail!("unknown workload op {op:?} (put, range or srange)");
                        }
                        Ok((op.to_string(), c.parse()?))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// `n` distinct free ports for the member processes to bind.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let port = || aether_common::ports::unassigned_port(std::net::Ipv4Addr::LOCALHOST);
    Ok((0..n).map(|_| port()).collect::<Result<_, _>>()?)
}

/// Three member processes; killed on drop.
struct Cluster {
    name: &'static str,
    children: Vec<Child>,
    endpoints: Vec<String>,
    /// metad's admin (metrics) addresses.
    admin: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(system: &str, a: &Args) -> anyhow::Result<Cluster> {
    let dir = tempfile::Builder::new().prefix("etcdbench-").tempdir()?;
    eprintln!("{system}: data and member logs in {}", dir.path().display());
    let free = free_ports(9)?;
    let ports: Vec<(u16, u16)> = (0..3).map(|i| (free[2 * i], free[2 * i + 1])).collect();
    let admin_ports = &free[6..];
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
    let initial = initial.join(",");
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data = dir.path().join(format!("m{i}"));
        let client_url = format!("http://127.0.0.1:{client}");
        let mut cmd = match system {
            "metad" | "metad2" => {
                let bin = match system {
                    "metad2" => a.aether2.as_ref().context("system metad2 needs --aether2")?,
                    _ => &a.aether,
                };
                let mut c = Command::new(bin);
                c.arg("metad")
                    .args(["--name", &format!("m{i}")])
                    .args(["--listen", &format!("127.0.0.1:{client}")])
                    .args(["--listen-peer", &format!("127.0.0.1:{peer}")])
                    .args(["--admin-listen", &format!("127.0.0.1:{}", admin_ports[i])])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--advertise-client-urls", &client_url])
                    .env("AETHER_LOG_LEVEL", "warn");
                c
            }
            "etcd" => {
                let mut c = Command::new(&a.etcd);
                c.args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &client_url])
                    .args(["--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--log-level", "warn"]);
                c
            }
            other => bail!("unknown system {other}"),
        };
        // Each member's output goes to a log file next to its data dir (kept while it runs).
        let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))?;
        cmd.stdout(Stdio::null()).stderr(log);
        children.push(cmd.spawn().with_context(|| format!("starting {system}"))?);
        endpoints.push(client_url);
    }
    let name = match system {
        "metad" => "metad",
        "metad2" => "metad2",
        _ => "etcd",
    };
    let admin = if system.starts_with("metad") {
        admin_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    } else {
        vec![]
    };
    Ok(Cluster { name, children, endpoints, admin, _dir: dir })
}

/// Wait until every member answers Status and a put through the cluster succeeds
/// (bounded); a member that exited is an error naming its log.
async fn wait_ready(c: &mut Cluster) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, child) in c.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                bail!("{} member m{i} exited ({status}); see m{i}.log in its data dir", c.name);
            }
        }
        let mut all = true;
        for ep in &c.endpoints {
            let ok = async {
                let mut one = Client::connect([ep.clone()], None).await.ok()?;
                one.status().await.ok()
            };
            all &= tokio::time::timeout(Duration::from_secs(2), ok).await.ok().flatten().is_some();
        }
        if all
            && let Ok(Ok(mut client)) =
                tokio::time::timeout(Duration::from_secs(2), Client::connect(c.endpoints.clone(), None)).await
            && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), client.put("bench/ready", "1", None)).await
        {
            return Ok(client);
        }
        if Instant::now() > deadline {
            bail!("{} cluster did not become ready", c.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
}

struct RunResult {
    ops: u64,
    secs: f64,
    lat_us: Vec<u64>,
}

impl RunResult {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
}

async fn run_load(client: &Client, op: &str, concurrency: usize, a: &Args) -> anyhow::Result<RunResult> {
    let value = vec![b'v'; a.value_size];
    let start = Instant::now();
    let end = start + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = client.clone();
        let value = value.clone();
        let op = op.to_string();
        let keys = a.keys;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = w;
            while Instant::now() < end {
                let key = format!("bench/k{:06}", i % keys);
                i += concurrency;
                let t = Instant::now();
                let r = if op == "put" {
                    client.put(key, value.clone(), None).await.map(|_| ())
                } else if op == "range" {
                    client.get(key, Some(GetOptions::new())).await.map(|_| ())
                } else {
                    client.get(key, Some(GetOptions::new().with_serializable())).await.map(|_| ())
                };
                match r {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat_us.extend(l);
        errors += e;
    }
    if errors > 0 {
        eprintln!("  ({errors} errors)");
    }
    let secs = start.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    Ok(RunResult { ops: lat_us.len() as u64, secs, lat_us })
}

/// The body of `GET /metrics` from an admin address (HTTP/1.0, so the server closes).
fn scrape(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// One run's (ops/s, p50 ms, p99 ms, server CPU µs per op).
type Row = (f64, f64, f64, f64);

/// CPU seconds (user + system) the cluster's member processes have used so far, from
/// `/proc/<pid>/stat` (in USER_HZ ticks, 100 per second on Linux).
fn cpu_secs(c: &Cluster) -> f64 {
    c.children
        .iter()
        .filter_map(|ch| std::fs::read_to_string(format!("/proc/{}/stat", ch.id())).ok())
        .filter_map(|stat| {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let mut clusters = Vec::new();
    for s in &a.systems {
        let mut c = start(s, &a)?;
        let client = wait_ready(&mut c).await?;
        // Pre-fill the key space so ranges find values (16 writers).
        let fill = a.keys.min(2000);
        let mut writers = Vec::new();
        for w in 0..16 {
            let mut cl = client.clone();
            let value = vec![b'v'; a.value_size];
            writers.push(tokio::spawn(async move {
                for i in (w..fill).step_by(16) {
                    cl.put(format!("bench/k{i:06}"), value.clone(), None).await?;
                }
                anyhow::Ok(())
            }));
        }
        for w in writers {
            w.await??;
        }
        let client = match a.target.as_str() {
            "all" => client,
            want => {
                let mut chosen = None;
                for ep in &c.endpoints {
                    let mut one = Client::connect([ep.clone()], None).await?;
                    let st = one.status().await?;
                    let leads = st.leader() == st.header().map(|h| h.member_id()).unwrap_or(0);
                    if leads == (want == "leader") {
                        eprintln!("{}: client uses {ep} only ({want})", c.name);
                        chosen = Some(one);
                        break;
                    }
                }
                chosen.with_context(|| format!("{}: no {want} endpoint", c.name))?
            }
        };
        clusters.push((c, client));
    }
    // Per (system, workload): each round's (ops/s, p50, p99).
    let mut results: Vec<(String, String, Vec<Row>)> = Vec::new();
    for round in 0..a.rounds {
        for (op, conc) in &a.workloads {
            let (op, conc) = (op.as_str(), *conc);
            for (c, client) in &clusters {
                let cpu_before = cpu_secs(c);
                let r = run_load(client, op, conc, &a).await?;
                let cpu_us = (cpu_secs(c) - cpu_before) * 1e6 / r.ops.max(1) as f64;
                let row = (r.ops_per_sec(), r.pct(0.5), r.pct(0.99), cpu_us);
                println!(
                    "round {round} {:<6} {op:<5} c{conc:<3} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  cpu {:>5.0} µs/op",
                    c.name, row.0, row.1, row.2, row.3
                );
                let wl = format!("{op} c{conc}");
                match results.iter_mut().find(|(s, w, _)| s == c.name && *w == wl) {
                    Some((_, _, v)) => v.push(row),
                    None => results.push((c.name.to_string(), wl, vec![row])),
                }
            }
        }
    }
    println!(
        "\nmedians over {} rounds ({} s each, {} B values, 3 members, client on the same host):",
        a.rounds, a.secs, a.value_size
    );
    println!(
        "{:<6} {:<10} {:>10} {:>10} {:>10} {:>12}",
        "system", "workload", "ops/s", "p50 ms", "p99 ms", "cpu µs/op"
    );
    for (s, w, v) in &results {
        let ops = median(v.iter().map(|r| r.0).collect());
        let p50 = median(v.iter().map(|r| r.1).collect());
        let p99 = median(v.iter().map(|r| r.2).collect());
        let cpu = median(v.iter().map(|r| r.3).collect());
        println!("{s:<6} {w:<10} {ops:>10.0} {p50:>10.2} {p99:>10.2} {cpu:>12.0}");
    }
    // Ratios within each round (each system's round against etcd's in the same round, run
    // seconds apart): on a host whose speed swings from one round to the next (steal
    // time on a shared VM), their median is steadier than the ratio of the medians.
    let base = |w: &str| results.iter().find(|(s, rw, _)| s == "etcd" && rw == w).map(|(_, _, v)| v);
    let mut header = false;
    for (s, w, v) in results.iter().filter(|(s, _, _)| s != "etcd") {
        let Some(e) = base(w) else { continue };
        if !header {
            println!(
                "\nper-round ratios against etcd, medians (ops/s: above 1 is faster; p50, p99: below 1 is faster):"
            );
            println!("{:<6} {:<10} {:>10} {:>10} {:>10}", "system", "workload", "ops/s", "p50", "p99");
            header = true;
        }
        let ratio = |f: fn(&Row) -> f64| median(v.iter().zip(e).map(|(x, y)| f(x) / f(y)).collect());
        let (ops, p50, p99) = (ratio(|r| r.0), ratio(|r| r.1), ratio(|r| r.2));
        println!("{s:<6} {w:<10} {ops:>10.3} {p50:>10.3} {p99:>10.3}");
    }
    if let Some(prefix) = &a.metrics {
        for (c, _) in &clusters {
            for (i, addr) in c.admin.iter().enumerate() {
                println!("\n{} m{i} ({addr}) /metrics, medians:", c.name);
                for line in scrape(addr)?.lines() {
                    if line.starts_with(prefix.as_str()) && line.contains("quantile=\"0.5\"") {
                        println!("  {line}");
                    }
                }
            }
        }
    }
    Ok(())
}
