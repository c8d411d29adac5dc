//! Linearizability of the KV API under faults: concurrent clients, each talking to one member,
//! record a history of get/put/delete/CAS while the leader is killed (twice) and restarted and
//! the leader is cut off from its peers; `aether-lincheck` then checks the history.
//!
//! Recording rules (see the lincheck crate docs): `call` is read just before a request is sent
//! and `ret` just after its answer, from one clock. A read that fails is dropped (a read changes
//! nothing). A write that fails or times out is recorded as unknown (`ret: None`): no etcd error
//! proves that a write was not applied (a leader may replicate an entry and lose contact before
//! answering, a follower may forward it and see the connection drop), so none is trusted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_lincheck::{CheckResult, Input, Operation, Output, check_with_limit};
use aether_metad::ClusterState;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::multi::{MultiCluster, base_config, eventually};

const KEYS: [&str; 4] = ["lin/a", "lin/b", "lin/c", "lin/d"];
const CLIENTS: usize = 6;
/// A request with no answer by then counts as failed (a write's outcome becomes unknown).
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause after a failed request, so an outage yields a few unknown writes, not hundreds.
const BACKOFF: Duration = Duration::from_millis(100);
/// A client moves to another member when nothing succeeded for this long, even if its member
/// still answers Status (it may be cut off from its peers), so every client keeps being useful;
/// longer than an election, so clients do not flee a member that is merely waiting for one.
const STUCK_AFTER: Duration = Duration::from_secs(3);
/// Upper bound on one client's requests (the run normally stops long before).
const MAX_ATTEMPTS: usize = 2_000;
/// Search budget per key for the checker.
const STEP_LIMIT: u64 = 50_000_000;

/// xorshift64*: a tiny deterministic generator (the seed is printed to replay a run's choices).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The one monotonic clock all clients read (ns since the test started).
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap()
    }
}

/// The key's value as one answer tells it (`None`: absent).
type Value = Option<Vec<u8>>;

/// Runs `input` on `key` as an etcd request; returns what the client observed and the key's
/// value right after the request took effect (for choosing later CAS expectations).
async fn execute(client: &mut Client, key: &str, input: &Input) -> Result<(Output, Value), etcd_client::Error> {
    Ok(match input {
        Input::Get => {
            // Linearizable (not serializable) read: the default.
            let r = client.get(key, None).await?;
            let v = r.kvs().first().map(|kv| kv.value().to_vec());
            (Output::Value(v.clone()), v)
        }
        Input::Put(v) => {
            client.put(key, v.clone(), None).await?;
            (Output::Ok, Some(v.clone()))
        }
        Input::Delete => {
            client.delete(key, None).await?;
            (Output::Ok, None)
        }
        Input::Cas { expect, new } => {
            let when = match expect {
                Some(v) => Compare::value(key, CompareOp::Equal, v.clone()),
                None => Compare::version(key, CompareOp::Equal, 0),
            };
            let then = match new {
                Some(v) => TxnOp::put(key, v.clone(), None),
                None => TxnOp::delete(key, None),
            };
            // The else branch reads the key, as etcd CAS loops usually do. (Without it, a failed
            // CAS sent through a follower comes back as "etcdserver: internal error": the leader
            // forwards the TxnResponse prost-encoded, and one with no header, succeeded = false
            // and no responses encodes to zero bytes, which the follower takes for "no txn".)
            let otherwise = TxnOp::get(key, None);
            let r = client.txn(Txn::new().when([when]).and_then([then]).or_else([otherwise])).await?;
            if r.succeeded() {
                (Output::Cas(true), new.clone())
            } else {
                let current = match r.op_responses().into_iter().next() {
                    Some(etcd_client::TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.value().to_vec()),
                    _ => None,
                };
                (Output::Cas(false), current)
            }
        }
    })
}

/// The history entry for one request: `answer` is the output and return time, `None` when the
/// request failed or timed out. Failed reads are not recorded; failed writes are unknown.
fn record(client: usize, key: &str, input: Input, call: u64, answer: Option<(Output, u64)>) -> Option<Operation> {
    let key = key.as_bytes().to_vec();
    match answer {
        Some((output, ret)) => Some(Operation { client, key, input, output, call, ret: Some(ret) }),
        None if input == Input::Get => None,
        None => Some(Operation { client, key, input, output: Output::Unknown, call, ret: None }),
    }
}

#[derive(Default, Debug)]
struct Stats {
    completed: usize,
    cas_true: usize,
    cas_false: usize,
    unknown_writes: usize,
    failed_reads: usize,
    reconnects: usize,
    /// Failed requests by kind of error.
    errors: BTreeMap<String, usize>,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.completed += o.completed;
        self.cas_true += o.cas_true;
        self.cas_false += o.cas_false;
        self.unknown_writes += o.unknown_writes;
        self.failed_reads += o.failed_reads;
        self.reconnects += o.reconnects;
        for (e, n) in o.errors {
            *self.errors.entry(e).or_default() += n;
        }
    }
}

/// A client on the first member from `start` on (round robin) that answers Status.
async fn connect(endpoints: &[String], start: usize) -> Option<(Client, usize)> {
    for i in 0..endpoints.len() {
        let k = (start + i) % endpoints.len();
        let probe = async {
            let mut c = Client::connect([endpoints[k].as_str()], None).await.ok()?;
            c.status().await.ok()?;
            Some(c)
        };
        if let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            return Some((c, k));
        }
    }
    None
}

/// Whether the client's member still answers (an isolated member does; a dead one does not).
async fn alive(client: &mut Client) -> bool {
    matches!(tokio::time::timeout(Duration::from_millis(500), client.status()).await, Ok(Ok(_)))
}

struct Shared {
    clock: Clock,
    endpoints: Vec<String>,
    stop: AtomicBool,
    /// Requests answered so far, all clients together.
    completed: AtomicUsize,
}

/// One client: random operations on `KEYS` through one member until `stop`.
async fn run_client(id: usize, seed: u64, shared: Arc<Shared>) -> (Vec<Operation>, Stats) {
    let mut rng = Rng(seed.wrapping_add((id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    let mut history = Vec::new();
    let mut stats = Stats::default();
    // Last value this client saw or wrote per key: CAS expects it, so many CAS succeed.
    let mut last: HashMap<&str, Value> = HashMap::new();
    let mut seq = 0u32;
    let mut last_success = Instant::now();
    let mut healthy = true;
    let mut member = id % shared.endpoints.len();
    let mut client = connect(&shared.endpoints, member).await.map(|(c, k)| {
        member = k;
        c
    });
    for _ in 0..MAX_ATTEMPTS {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(BACKOFF).await;
            stats.reconnects += 1;
            client = connect(&shared.endpoints, member + 1).await.map(|(c, k)| {
                member = k;
                c
            });
            continue;
        };
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let mut fresh = || {
            seq += 1;
            Some(format!("{id}-{seq}").into_bytes())
        };
        let input = match rng.below(100) {
            // After a failure only reads until one succeeds: an outage then leaves a few
            // unknown writes (those in flight when it began), not a stream of them, each of
            // which the checker must consider as possibly applied at any later time.
            _ if !healthy => Input::Get,
            0..35 => Input::Get,
            35..60 => Input::Put(fresh().unwrap()),
            60..70 => Input::Delete,
            _ => Input::Cas {
                expect: if rng.below(5) == 0 { None } else { last.get(key).cloned().flatten() },
                new: if rng.below(7) == 0 { None } else { fresh() },
            },
        };
        let call = shared.clock.now();
        let result = tokio::time::timeout(OP_TIMEOUT, execute(c, key, &input)).await;
        let ret = shared.clock.now();
        let answer = match result {
            Ok(Ok((output, value))) => {
                match output {
                    Output::Cas(true) => stats.cas_true += 1,
                    Output::Cas(false) => stats.cas_false += 1,
                    _ => {}
                }
                last.insert(key, value);
                Some((output, ret))
            }
            Ok(Err(e)) => {
                let kind = match e {
                    etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
                    other => other.to_string(),
                };
                *stats.errors.entry(kind.chars().take(100).collect()).or_default() += 1;
                None
            }
            Err(_) => {
                *stats.errors.entry("timeout".to_string()).or_default() += 1;
                None
            }
        };
        let failed = answer.is_none();
        healthy = !failed;
        match (&input, failed) {
            (Input::Get, true) => stats.failed_reads += 1,
            (_, true) => stats.unknown_writes += 1,
            (_, false) => {
                stats.completed += 1;
                shared.completed.fetch_add(1, Ordering::Relaxed);
                last_success = Instant::now();
            }
        }
        history.extend(record(id, key, input, call, answer));
        if failed {
            tokio::time::sleep(BACKOFF).await;
            if last_success.elapsed() >= STUCK_AFTER || !alive(c).await {
                // Its member is down or unusable: move on to the next one that answers.
                last_success = Instant::now();
                stats.reconnects += 1;
                client = connect(&shared.endpoints, member + 1).await.map(|(c, k)| {
                    member = k;
                    c
                });
            }
        }
    }
    (history, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_history_is_linearizable_across_leader_kills_restarts_and_isolation() {
    let started = Instant::now();
    let seed = std::env::var("LINCHECK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("seed {seed} (LINCHECK_SEED={seed} replays the clients' choices)");
    let mut c = MultiCluster::start(3, base_config()).await;
    let shared = Arc::new(Shared {
        clock: Clock(Instant::now()),
        endpoints: c.members.iter().map(|m| m.endpoint()).collect(),
        stop: AtomicBool::new(false),
        completed: AtomicUsize::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS).map(|id| tokio::spawn(run_client(id, seed, shared.clone()))).collect();

    // The fault schedule, each step once the clients have made some progress.
    let events = Mutex::new(Vec::<String>::new());
    let event = |what: String| {
        let line = format!("t={}ms {what}", shared.clock.now() / 1_000_000);
        println!("{line}");
        events.lock().unwrap().push(line);
    };
    let progress = |n: usize| {
        let target = shared.completed.load(Ordering::Relaxed) + n;
        let shared = shared.clone();
        eventually("client progress", move || {
            let shared = shared.clone();
            async move { (shared.completed.load(Ordering::Relaxed) >= target).then_some(()) }
        })
    };
    let initial = c.initial_cluster();
    progress(250).await;

    // Kill the leader and restart it, twice.
    for _ in 0..2 {
        let leader = c.wait_leader(&[]).await;
        event(format!("kill leader m{leader}"));
        c.kill(leader);
        let l = c.wait_leader(&[leader]).await;
        event(format!("new leader m{l}"));
        progress(200).await;
        event(format!("restart m{leader}"));
        c.start_member(leader, &initial, ClusterState::New);
        progress(200).await;
    }

    let third = c.wait_leader(&[]).await;
    event(format!("isolate leader m{third}"));
    c.isolate(third);
    let l = c.wait_leader(&[third]).await;
    event(format!("new leader m{l}"));
    progress(200).await;
    event(format!("heal m{third}"));
    c.heal();
    progress(250).await;
    event("stop clients".to_string());
    shared.stop.store(true, Ordering::Relaxed);

    let mut history = Vec::new();
    let mut stats = Stats::default();
    for task in clients {
        let (h, s) = task.await.unwrap();
        history.extend(h);
        stats.add(s);
    }
    let run = started.elapsed();
    println!("{stats:?}; {} operations recorded; run took {run:?}", history.len());

    // The history must be substantial, or passing would mean little.
    assert!(stats.completed > 500, "too few completed operations: {stats:?}");
    assert!(stats.cas_true >= 20 && stats.cas_false >= 20, "too few CAS of either outcome: {stats:?}");
    let reads = history.iter().filter(|o| o.input == Input::Get).count();
    assert!(reads >= 200, "too few successful reads: {reads}");

    let t = Instant::now();
    let result = check_with_limit(&history, STEP_LIMIT);
    println!("check took {:?}", t.elapsed());
    if !result.is_ok() {
        let path = std::env::temp_dir().join(format!("metad-lincheck-{seed}.txt"));
        let mut dump: Vec<String> = events.lock().unwrap().clone();
        let mut sorted: Vec<usize> = (0..history.len()).collect();
        sorted.sort_by_key(|&i| history[i].call);
        dump.extend(sorted.iter().map(|&i| format!("#{i} {}", history[i])));
        let _ = std::fs::write(&path, dump.join("\n"));
        panic!(
            "{}\nfaults:\n{}\n(full history, by call time: {})",
            result.describe(&history),
            events.lock().unwrap().join("\n"),
            path.display()
        );
    }
}

/// The recording above is meaningful: a history recorded the same way is accepted, and the same
/// history with one read corrupted (a stale value) is rejected.
#[test]
fn a_recorded_history_with_one_corrupted_read_is_rejected() {
    let v = |s: &str| Some(s.as_bytes().to_vec());
    let cas = |expect, new| Input::Cas { expect, new };
    // (client, input, answer or None for a failed request), one after another, 10 ns apart.
    let steps = [
        (0, Input::Put(b"0-1".to_vec()), Some(Output::Ok)),
        (1, cas(None, v("1-1")), Some(Output::Cas(false))),
        (1, cas(v("0-1"), v("1-2")), Some(Output::Cas(true))),
        (0, Input::Put(b"0-2".to_vec()), None), // unknown: may land at any later time
        (2, Input::Get, Some(Output::Value(v("1-2")))),
        (2, Input::Get, None), // failed read: not recorded
        (1, Input::Delete, Some(Output::Ok)),
        (2, Input::Get, Some(Output::Value(v("0-2")))), // the unknown put landed
    ];
    let history: Vec<Operation> = (0u64..)
        .zip(steps)
        .filter_map(|(t, (client, input, output))| record(client, "k", input, t * 10, output.map(|o| (o, t * 10 + 5))))
        .collect();
    assert_eq!(history.len(), 7);
    assert_eq!(history[3].output, Output::Unknown);
    assert!(check_with_limit(&history, 1_000_000).is_ok());

    let mut corrupted = history.clone();
    corrupted[4].output = Output::Value(v("0-1")); // stale: the successful CAS already replaced it
    let result = check_with_limit(&corrupted, 1_000_000);
    assert!(matches!(&result, CheckResult::Illegal { key, .. } if key == b"k"), "{}", result.describe(&corrupted));
}
