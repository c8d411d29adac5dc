use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};

use crate::harness::{DEADLINE, Server};

/// The next response on a watch stream, bounded by `DEADLINE`.
pub async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("no watch response before the deadline")
        .unwrap()
        .expect("watch stream ended")
}

/// Collect events until `n` have arrived.
async fn events(stream: &mut WatchStream, n: usize) -> Vec<(EventType, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(stream).await;
        for e in r.events() {
            let kv = e.kv().unwrap();
            out.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn watch_from_old_revision_then_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    c.put("w/a", "1", None).await.unwrap(); // rev 2
    let r = c.get("w/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    let seen = r.header().unwrap().revision();
    // Writes the client has not seen yet.
    c.put("w/b", "2", None).await.unwrap(); // rev 3
    c.delete("w/a", None).await.unwrap(); // rev 4
    c.put("other", "x", None).await.unwrap(); // rev 5

    let mut stream = c
        .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(seen + 1).with_prev_key()))
        .await
        .unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    let got = events(&mut stream, 2).await;
    assert_eq!(
        got,
        vec![(EventType::Put, "w/b".into(), "2".into(), 3), (EventType::Delete, "w/a".into(), "".into(), 4)]
    );

    // A second watch on the same stream, with a filter, then live events.
    stream
        .watch("w/c", Some(WatchOptions::new().with_filters([etcd_client::WatchFilterType::NoDelete])))
        .await
        .unwrap();
    let created2 = next(&mut stream).await;
    assert!(created2.created());
    assert_ne!(created2.watch_id(), created.watch_id());
    c.put("w/c", "3", None).await.unwrap(); // rev 6
    c.delete("w/c", None).await.unwrap(); // rev 7
    let mut by_watch: Vec<(i64, EventType, i64)> = Vec::new();
    while by_watch.len() < 3 {
        let r = next(&mut stream).await;
        for e in r.events() {
            by_watch.push((r.watch_id(), e.event_type(), e.kv().unwrap().mod_revision()));
        }
    }
    by_watch.sort_by_key(|(id, _, rev)| (*id, *rev));
    let mut want = vec![
        (created.watch_id(), EventType::Put, 6),
        (created.watch_id(), EventType::Delete, 7),
        (created2.watch_id(), EventType::Put, 6),
    ];
    want.sort_by_key(|(id, _, rev)| (*id, *rev));
    assert_eq!(by_watch, want);

    // Cancel.
    stream.cancel(created.watch_id()).await.unwrap();
    let r = next(&mut stream).await;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), created.watch_id());

    // A start revision below the compaction point is refused with the compact revision.
    c.compact(6, None).await.unwrap();
    let mut old = c.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(3))).await.unwrap();
    let first = next(&mut old).await;
    assert!(first.created());
    let r = next(&mut old).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 6);
    drop(stream);
    drop(old);
    server.stop().await;
}

#[tokio::test]
async fn many_writes_reach_a_watcher_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    let mut stream = c.watch("n/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(next(&mut stream).await.created());
    let n = 300;
    for i in 0..n {
        c.put(format!("n/{}", i % 7), i.to_string(), None).await.unwrap();
    }
    let got = events(&mut stream, n).await;
    let revs: Vec<i64> = got.iter().map(|e| e.3).collect();
    assert_eq!(revs, (2..2 + n as i64).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_never_blocks_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    let mut stream = c.watch("slow/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(next(&mut stream).await.created());
    // Far more revisions than the event broadcast holds, while nobody reads the watch.
    let n = 2500;
    let value = "v".repeat(8192);
    let writes = async {
        for i in 0..n {
            c.put(format!("slow/{}", i % 50), value.as_str(), None).await.unwrap();
        }
    };
    tokio::time::timeout(DEADLINE * 4, writes).await.expect("writes stalled behind a slow watcher");
    // The lagging stream caught up from history: every revision, in order, once.
    let got = events(&mut stream, n).await;
    let revs: Vec<i64> = got.iter().map(|e| e.3).collect();
    assert_eq!(revs, (2..2 + n as i64).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn progress_notify_reports_the_current_revision_to_an_idle_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        aether_metad::MetadConfig { watch_progress_notify_interval_ms: 200, ..crate::harness::config(dir.path()) };
    let server = Server::start_with(cfg).await;
    let mut c = server.client().await;
    let rev = c.put("other", "x", None).await.unwrap().header().unwrap().revision();
    let mut quiet = c.watch("p/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let mut notified = c.watch("q/", Some(WatchOptions::new().with_prefix().with_progress_notify())).await.unwrap();
    assert!(next(&mut quiet).await.created());
    let created = next(&mut notified).await;
    assert!(created.created());
    // An empty response carrying the current revision, for the watcher that asked only.
    let r = next(&mut notified).await;
    assert!(r.events().is_empty() && !r.canceled() && !r.created());
    assert_eq!(r.watch_id(), created.watch_id());
    assert_eq!(r.header().unwrap().revision(), rev);
    let r = tokio::time::timeout(std::time::Duration::from_millis(600), quiet.message()).await;
    assert!(r.is_err(), "a watcher without progress_notify got {r:?}");
}
