//! Three-member clusters: forming, serving on every member, leader loss, isolation,
//! membership changes and snapshot install.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aether_metad::ClusterState;
use etcd_client::{Client, EventType, GetOptions, MemberAddOptions, WatchOptions};

use crate::harness::{DEADLINE, status};
use crate::multi::{MultiCluster, base_config, eventually};

async fn get(c: &mut Client, key: &str, serializable: bool) -> Result<Option<Vec<u8>>, etcd_client::Error> {
    let opts = if serializable { GetOptions::new().with_serializable() } else { GetOptions::new() };
    let r = c.get(key, Some(opts)).await?;
    Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_serve_reads_and_writes_on_every_member() {
    let c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;

    // Every member learns every other's name and client URL.
    for m in &c.members {
        let mut client = m.client().await;
        eventually("published member attributes", || {
            let mut client = client.clone();
            let want: Vec<(String, String)> = c.members.iter().map(|m| (m.name.clone(), m.endpoint())).collect();
            async move {
                let list = client.member_list().await.ok()?;
                let mut got: Vec<(String, String)> = list
                    .members()
                    .iter()
                    .map(|m| (m.name().to_string(), m.client_urls().first().cloned().unwrap_or_default()))
                    .collect();
                got.sort();
                (got == want).then_some(())
            }
        })
        .await;
        let list = client.member_list().await.unwrap();
        assert_eq!(list.members().len(), 3);
        assert!(list.members().iter().all(|m| !m.is_learner()));
    }

    // Writes through each member (followers forward), reads through each (read-index).
    let mut clients = Vec::new();
    for m in &c.members {
        clients.push(m.client().await);
    }
    let mut cluster_ids = Vec::new();
    let mut member_ids = Vec::new();
    for (k, client) in clients.iter_mut().enumerate() {
        let r = client.put(format!("k{k}"), format!("v{k}"), None).await.unwrap();
        let h = r.header().unwrap();
        cluster_ids.push(h.cluster_id());
        member_ids.push(h.member_id());
    }
    assert!(cluster_ids.iter().all(|id| *id == cluster_ids[0]), "one cluster id: {cluster_ids:?}");
    member_ids.sort_unstable();
    member_ids.dedup();
    assert_eq!(member_ids.len(), 3, "each member answers with its own id");
    for client in clients.iter_mut() {
        for k in 0..3 {
            assert_eq!(get(client, &format!("k{k}"), false).await.unwrap(), Some(format!("v{k}").into_bytes()));
        }
    }

    // Txn through a follower; the compare sees the leader's state.
    let follower = (leader + 1) % 3;
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::value("k0", etcd_client::CompareOp::Equal, "v0")])
        .and_then([etcd_client::TxnOp::put("k0", "v0b", None)]);
    let r = clients[follower].txn(txn).await.unwrap();
    assert!(r.succeeded());
    // A failed compare with no else branch: an empty response (it encodes to no bytes).
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::value("k0", etcd_client::CompareOp::Equal, "nope")])
        .and_then([etcd_client::TxnOp::put("k0", "never", None)]);
    let r = clients[follower].txn(txn).await.unwrap();
    assert!(!r.succeeded() && r.op_responses().is_empty());

    // Every member agrees on status and on the hash of the keyspace.
    let mut statuses = Vec::new();
    for client in clients.iter_mut() {
        statuses.push(client.status().await.unwrap());
    }
    let leader_id = statuses[0].leader();
    assert!(leader_id != 0 && statuses.iter().all(|s| s.leader() == leader_id));
    let rev = clients[0].get("k0", None).await.unwrap().header().unwrap().revision();
    let mut hashes = Vec::new();
    for client in clients.iter_mut() {
        // Serializable reads may lag; wait for each member to apply `rev` first.
        eventually("member applied rev", || {
            let mut client = client.clone();
            async move {
                let r = client.get("k0", Some(GetOptions::new().with_serializable())).await.ok()?;
                (r.header()?.revision() >= rev).then_some(())
            }
        })
        .await;
        hashes.push(client.hash_kv(rev).await.unwrap().hash());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "hashes differ: {hashes:?}");
}

/// A background-load put, retried (bounded) when it answers "request timed out" as a
/// CPU-starved member may, which etcd's clients retry too; anything else fails the test.
async fn put_retrying(client: &mut Client, key: String) {
    for attempt in 1..=5 {
        match client.put(key.as_str(), "x", None).await {
            Ok(_) => return,
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::Unavailable && attempt < 5 => {}
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

/// Linearizable reads share read-index rounds (and batched proposals share log entries):
/// a read that starts after a put was acknowledged, on any member, sees it, however many
/// reads and writes run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_every_member_see_every_acknowledged_put() {
    let c = MultiCluster::start(3, base_config()).await;
    c.wait_leader(&[]).await;
    let mut clients = Vec::new();
    for m in &c.members {
        clients.push(m.client().await);
    }
    for round in 0..20u32 {
        let writer = (round as usize) % clients.len();
        let value = format!("v{round}");
        clients[writer].put("shared", value.clone(), None).await.unwrap();
        // 16 reads on each member at once, all started after the put was acknowledged,
        // alongside 8 more puts of other keys.
        let mut reads = Vec::new();
        for (k, client) in clients.iter().enumerate() {
            for i in 0..16 {
                let mut client = client.clone();
                reads.push(tokio::spawn(async move {
                    if i < 8 {
                        put_retrying(&mut client, format!("other/{k}/{i}")).await;
                    }
                    get(&mut client, "shared", false).await.unwrap()
                }));
            }
        }
        for r in reads {
            assert_eq!(r.await.unwrap().as_deref(), Some(value.as_bytes()), "round {round}");
        }
    }
}

/// A follower answers a forwarded write once the leader has applied it, before it has
/// applied it itself; like etcd's members, it still shows that write to its own
/// serializable reads and starts its new watches after it (its write fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_shows_its_own_acknowledged_writes_to_serializable_reads_and_new_watches() {
    let c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;
    for (f, m) in c.members.iter().enumerate().filter(|(i, _)| *i != leader) {
        let mut client = m.client().await;
        for round in 0..50u32 {
            let key = format!("ryw/{f}");
            let value = format!("v{round}");
            let put = client.put(key.as_str(), value.as_str(), None).await.unwrap();
            let put_rev = put.header().unwrap().revision();
            // Even rounds read first, odd rounds watch first (each must wait for the fence).
            if round % 2 == 0 {
                assert_eq!(
                    get(&mut client, &key, true).await.unwrap().as_deref(),
                    Some(value.as_bytes()),
                    "member {f} round {round}: serializable read right after its own put"
                );
            }
            let mut stream = client.watch(key.as_str(), Some(WatchOptions::new())).await.unwrap();
            let created = crate::watch::next(&mut stream).await;
            assert!(created.created());
            let start = created.header().unwrap().revision();
            assert!(start >= put_rev, "member {f} round {round}: watch created at {start} before the put's {put_rev}");
            client.put(key.as_str(), "next", None).await.unwrap();
            let first = crate::watch::next(&mut stream).await;
            let ev = first.events().first().expect("an event").kv().unwrap().value().to_vec();
            assert_eq!(ev, b"next", "member {f} round {round}: a new watch replayed the earlier put");
            stream.cancel(created.watch_id()).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_put_and_watchers_see_each_event_once() {
    let mut c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;
    let watcher_member = (leader + 1) % 3;

    // A watcher on a member that stays up, from the first revision.
    let mut wc = c.members[watcher_member].client().await;
    let mut stream = wc.watch("p/", Some(WatchOptions::new().with_prefix().with_start_revision(1))).await.unwrap();

    // Writers: one client per member endpoint, sequential puts, record acknowledged ones.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(BTreeMap::<String, i64>::new()));
    let mut writers = Vec::new();
    for (w, ep) in c.members.iter().map(|m| m.endpoint()).enumerate() {
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let Ok(mut client) = Client::connect([ep], None).await else { return };
            for i in 0..100_000u32 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("p/{w}/{i:06}");
                match tokio::time::timeout(Duration::from_secs(10), client.put(key.as_str(), "x", None)).await {
                    Ok(Ok(r)) => {
                        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                        acked.lock().unwrap().insert(key, rev);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await, // retry backoff
                }
            }
        }));
    }
    let count = |n: usize| {
        let acked = acked.clone();
        async move { (acked.lock().unwrap().len() >= n).then_some(()) }
    };
    eventually("100 acknowledged puts", || count(100)).await;
    c.kill(leader);
    let new_leader = c.wait_leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    let before = acked.lock().unwrap().len();
    eventually("100 more acknowledged puts after the kill", || count(before + 100)).await;
    // Bring the old leader back; it catches up.
    let initial = c.initial_cluster();
    c.start_member(leader, &initial, ClusterState::New);
    eventually("50 more puts with the old leader back", || count(before + 150)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged put is on every member (the restarted one included).
    for m in &c.members {
        let mut client = m.client().await;
        let r = client.get("p/", Some(GetOptions::new().with_prefix())).await.unwrap();
        let got: BTreeMap<String, i64> =
            r.kvs().iter().map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision())).collect();
        for (key, rev) in &acked {
            assert_eq!(got.get(key), Some(rev), "{} lost acknowledged {key}@{rev}", m.name);
        }
    }

    // The watcher saw every revision once, in order, with no gap.
    let last_rev = *acked.values().max().unwrap();
    let mut seen: Vec<i64> = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while seen.last().copied().unwrap_or(0) < last_rev {
        let msg = tokio::time::timeout_at(deadline, stream.message()).await.expect("watch stalled").unwrap().unwrap();
        assert!(!msg.canceled(), "watch canceled: {}", msg.cancel_reason());
        for ev in msg.events() {
            assert_eq!(ev.event_type(), EventType::Put);
            seen.push(ev.kv().unwrap().mod_revision());
        }
    }
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "revisions not gap-free and increasing");
    let acked_revs: std::collections::BTreeSet<i64> = acked.values().copied().collect();
    let seen_set: std::collections::BTreeSet<i64> = seen.iter().copied().collect();
    assert!(acked_revs.is_subset(&seen_set), "watcher missed acknowledged revisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_member_serves_no_linearizable_read_or_write_and_catches_up() {
    let c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;
    let iso = (leader + 1) % 3;
    let mut ic = c.members[iso].client().await;
    ic.put("before", "1", None).await.unwrap();
    // A linearizable read makes the member apply the put before it is cut off.
    assert_eq!(get(&mut ic, "before", false).await.unwrap(), Some(b"1".to_vec()));

    c.isolate(iso);
    // The majority keeps working.
    let mut lc = c.members[leader].client().await;
    lc.put("during", "2", None).await.unwrap();

    // The isolated member refuses linearizable reads and writes (Unavailable), ...
    let e = get(&mut ic, "during", false).await.expect_err("linearizable read on an isolated member");
    assert_eq!(status(e).0, tonic::Code::Unavailable);
    let e = ic.put("refused", "3", None).await.expect_err("write on an isolated member");
    assert_eq!(status(e).0, tonic::Code::Unavailable);
    // ... but answers serializable reads from what it has.
    assert_eq!(get(&mut ic, "before", true).await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(get(&mut ic, "during", true).await.unwrap(), None);

    c.heal();
    eventually("isolated member caught up", || {
        let mut ic = ic.clone();
        async move { (get(&mut ic, "during", false).await.ok()? == Some(b"2".to_vec())).then_some(()) }
    })
    .await;
    assert_eq!(get(&mut lc, "refused", false).await.unwrap(), None, "a refused write must not appear");

    // Isolating the leader: the other two elect a new one and go on.
    let leader = c.wait_leader(&[]).await;
    c.isolate(leader);
    let new_leader = c.wait_leader(&[leader]).await;
    assert_ne!(new_leader, leader);
    let mut nc = c.members[new_leader].client().await;
    nc.put("after", "4", None).await.unwrap();
    let mut oc = c.members[leader].client().await;
    let e = oc.put("stale-leader", "5", None).await.expect_err("write on an isolated old leader");
    assert_eq!(status(e).0, tonic::Code::Unavailable);
    c.heal();
    eventually("old leader caught up", || {
        let mut oc = oc.clone();
        async move { (get(&mut oc, "after", false).await.ok()? == Some(b"4".to_vec())).then_some(()) }
    })
    .await;
    assert_eq!(get(&mut nc, "stale-leader", false).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_and_a_fresh_member_gets_a_snapshot() {
    let mut base = base_config();
    base.snapshot_threshold = 20;
    let mut c = MultiCluster::start(3, base).await;
    let leader = c.wait_leader(&[]).await;
    let mut lc = c.members[leader].client().await;
    for i in 0..200 {
        lc.put(format!("s/{i:03}"), format!("{i}"), None).await.unwrap();
    }

    // Errors etcd gives.
    let e = lc.member_remove(0xdead_beef).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::NotFound, "etcdserver: member not found".to_string()));
    let e = lc.member_add([c.members[0].peer_url()], None).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::FailedPrecondition, "etcdserver: Peer URLs already exists".to_string()));
    let e = lc.member_add(["not a url".to_string()], None).await.unwrap_err();
    assert_eq!(status(e).1, "etcdserver: given member URLs are invalid");

    // Remove a follower: it stops by itself, as etcd's removed member does. It runs with an
    // election timeout far beyond the test's deadline, so it cannot learn it was removed by
    // campaigning and being refused: the leader has to tell it.
    let gone = (leader + 1) % 3;
    let initial = c.initial_cluster();
    c.stop(gone);
    let base = c.base.clone();
    c.base.election_timeout_ms = 600_000;
    c.start_member(gone, &initial, ClusterState::New);
    c.base = base;
    let gone_id = {
        let mut gc = c.members[gone].client().await;
        eventually("restarted member caught up", || {
            let mut gc = gc.clone();
            async move { (get(&mut gc, "s/199", true).await.ok()? == Some(b"199".to_vec())).then_some(()) }
        })
        .await;
        gc.status().await.unwrap().header().unwrap().member_id()
    };
    let r = lc.member_remove(gone_id).await.unwrap();
    assert_eq!(r.members().len(), 2);
    c.wait_exit(gone).expect("a removed member stops cleanly");
    // Started again on its data dir, it refuses at once (as etcd's removed member does)
    // rather than waiting for a leader that will never talk to it.
    c.start_member(gone, &initial, ClusterState::New);
    let e = c.wait_exit(gone).expect_err("a removed member's data dir does not start");
    assert!(matches!(e, aether_metad::MetadError::Removed(_)), "{e}");

    // Wipe it and add it back (as a learner) with the same peer URL.
    std::fs::remove_dir_all(&c.members[gone].dir).unwrap();
    // The remaining two still serve (quorum of 2).
    lc.put("s/after-remove", "x", None).await.unwrap();

    let r = lc.member_add([c.members[gone].peer_url()], Some(MemberAddOptions::new().with_is_learner())).await.unwrap();
    let new_id = r.member().unwrap().id();
    assert!(r.member().unwrap().is_learner());
    assert_eq!(r.member_list().len(), 3);
    let e = lc.member_promote(new_id).await.unwrap_err();
    assert_eq!(status(e).0, tonic::Code::FailedPrecondition, "a learner that has not started is not in sync");

    c.start_member(gone, &initial, ClusterState::Existing);
    // Its log starts after the snapshot the leader took (the log below it is purged), so
    // it can only have caught up by installing that snapshot.
    let mut gc = c.members[gone].client().await;
    eventually("new member has the data", || {
        let mut gc = gc.clone();
        async move { (get(&mut gc, "s/after-remove", true).await.ok()? == Some(b"x".to_vec())).then_some(()) }
    })
    .await;
    assert!(c.members[gone].dir.join("snapshot.db").exists(), "the new member installed a snapshot");
    assert_eq!(get(&mut gc, "s/000", true).await.unwrap(), Some(b"0".to_vec()));
    assert_eq!(gc.status().await.unwrap().header().unwrap().member_id(), new_id);

    eventually("learner promoted", || {
        let mut lc = lc.clone();
        async move { lc.member_promote(new_id).await.ok() }
    })
    .await;
    let list = lc.member_list().await.unwrap();
    assert_eq!(list.members().iter().filter(|m| !m.is_learner()).count(), 3);
    let e = lc.member_promote(new_id).await.unwrap_err();
    assert_eq!(status(e).1, "etcdserver: can only promote a learner member");

    // With the promoted member, losing another one still leaves a quorum.
    let other = (0..3).find(|k| *k != leader && *k != gone).unwrap();
    c.kill(other);
    lc.put("s/with-two-of-three", "y", None).await.unwrap();
    assert_eq!(get(&mut gc, "s/with-two-of-three", false).await.unwrap(), Some(b"y".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_followers_expire_and_survive_a_leader_change() {
    let mut c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let mut c1 = c.members[f1].client().await;
    let mut c2 = c.members[f2].client().await;

    // Granted through a follower, attached, watched from the other follower.
    let short = c1.lease_grant(1, None).await.unwrap().id();
    c1.put("l/short", "x", Some(etcd_client::PutOptions::new().with_lease(short))).await.unwrap();
    let mut stream = c2.watch("l/short", None).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let deleted = loop {
        let msg = tokio::time::timeout_at(deadline, stream.message()).await.expect("no delete event").unwrap().unwrap();
        if let Some(ev) = msg.events().iter().find(|e| e.event_type() == EventType::Delete) {
            break ev.kv().unwrap().key_str().unwrap().to_string();
        }
    };
    assert_eq!(deleted, "l/short");
    assert_eq!(c2.lease_time_to_live(short, None).await.unwrap().ttl(), -1);

    // A lease kept alive through a follower survives the leader's death.
    let long = c1.lease_grant(3, None).await.unwrap().id();
    c1.put("l/long", "y", Some(etcd_client::PutOptions::new().with_lease(long))).await.unwrap();
    let (mut keeper, mut responses) = c2.lease_keep_alive(long).await.unwrap();
    let ttl = c2.lease_time_to_live(long, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3);
    assert!(ttl.ttl() >= 1 && ttl.ttl() <= 3, "ttl {}", ttl.ttl());
    c.kill(leader);
    c.wait_leader(&[leader]).await;
    // Keep it alive for a few TTLs across the change (re-dialling if the stream ended).
    for _ in 0..8 {
        if keeper.keep_alive().await.is_err() || responses.message().await.ok().flatten().is_none() {
            let (k, r) = c2.lease_keep_alive(long).await.unwrap();
            keeper = k;
            responses = r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // the keep-alive cadence under test
    }
    assert_eq!(get(&mut c1, "l/long", false).await.unwrap(), Some(b"y".to_vec()), "kept-alive lease expired");
}

/// A graceful stop ends the long-lived peer streams (AppendEntries from the leader, calls
/// forwarded to it) instead of waiting for the other side to close them: leader and
/// follower both stop promptly, and the rest of the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_is_prompt_with_peer_streams_open() {
    let mut c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;
    // A write through every member: the leader's AppendEntries streams to both followers
    // and each follower's call stream to the leader are open.
    for (i, m) in c.members.iter().enumerate() {
        m.client().await.put(format!("g/{i}"), "v", None).await.unwrap();
    }
    let started = std::time::Instant::now();
    c.stop(leader);
    let leader_stop = started.elapsed();

    let next = c.wait_leader(&[leader]).await;
    let mut nc = c.members[next].client().await;
    nc.put("g/after", "v", None).await.unwrap();
    let follower = (0..3).find(|&i| i != leader && i != next).unwrap();
    // The new leader's AppendEntries stream to this follower is open now.
    let started = std::time::Instant::now();
    c.stop(follower);
    let follower_stop = started.elapsed();
    assert!(leader_stop < DEADLINE && follower_stop < DEADLINE, "stops took {leader_stop:?} and {follower_stop:?}");
    eprintln!("graceful stops: leader {leader_stop:?}, follower {follower_stop:?}");
}
