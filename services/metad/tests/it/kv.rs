use std::sync::Arc;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::Barrier;

use crate::harness::{Server, status};

#[tokio::test]
async fn put_get_range_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;

    // Empty store: revision 1, a missing key is an empty Range.
    let r = c.get("missing", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1);
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    let h = r.header().unwrap();
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);

    let p = c.put("a/1", "one", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 2);
    c.put("a/2", "two", None).await.unwrap();
    c.put("a/3", "three", None).await.unwrap();
    c.put("b", "bee", None).await.unwrap();
    let p = c.put("a/1", "uno", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 6);
    let prev = p.prev_key().unwrap();
    assert_eq!((prev.value(), prev.mod_revision(), prev.version()), (&b"one"[..], 2, 1));

    let r = c.get("a/1", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!((kv.value(), kv.create_revision(), kv.mod_revision(), kv.version()), (&b"uno"[..], 2, 6, 2));
    assert_eq!(r.header().unwrap().revision(), 6);

    // Prefix, limit (+more), count_only, keys_only, sort, range end, from-key, old revision.
    let r = c.get("a/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.kvs().iter().map(|k| k.key()).collect::<Vec<_>>(), vec![&b"a/1"[..], b"a/2", b"a/3"]);
    assert_eq!(r.count(), 3);
    let r = c.get("a/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!(r.kvs().len(), 2);
    assert!(r.more());
    assert_eq!(r.count(), 3);
    let r = c.get("a/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
    let r = c.get("a/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty() && !kv.key().is_empty()));
    let r = c
        .get("a/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].key(), b"a/3");
    let r = c.get("a/2", Some(GetOptions::new().with_range("b"))).await.unwrap();
    assert_eq!(r.kvs().len(), 2);
    let r = c.get("a/3", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(r.kvs().iter().map(|k| k.key()).collect::<Vec<_>>(), vec![&b"a/3"[..], b"b"]);
    let r = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(r.count(), 4);
    let r = c.get("a/1", Some(GetOptions::new().with_revision(5))).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"one");
    let r = c.get("a/1", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"uno");

    // Delete with prev_kv.
    let d = c.delete("a/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
    assert_eq!(d.deleted(), 3);
    assert_eq!(d.prev_kvs().len(), 3);
    assert_eq!(d.header().unwrap().revision(), 7);
    let d = c.delete("a/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    assert_eq!(d.deleted(), 0);
    assert_eq!(d.header().unwrap().revision(), 7, "deleting nothing does not bump the revision");
    let r = c.get("a/1", None).await.unwrap();
    assert!(r.kvs().is_empty());
    c.put("a/1", "again", None).await.unwrap();
    let kv = c.get("a/1", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (8, 1));

    // Errors, with etcd's codes and messages.
    let e = c.get("a/1", Some(GetOptions::new().with_revision(100))).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision".into()));
    c.compact(7, None).await.unwrap();
    let e = c.get("a/1", Some(GetOptions::new().with_revision(5))).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into()));
    let e = c.compact(6, None).await.unwrap_err();
    assert_eq!(status(e).1, "etcdserver: mvcc: required revision has been compacted");
    let e = c.put("", "x", None).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::InvalidArgument, "etcdserver: key is not provided".into()));
    let e = c.put("k", "x", Some(PutOptions::new().with_lease(12345))).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::NotFound, "etcdserver: requested lease not found".into()));
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let e = c.txn(dup).await.unwrap_err();
    assert_eq!(status(e), (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into()));

    // Cluster and maintenance.
    // The member publishes its client URLs once it leads.
    let m = crate::harness::eventually("client URLs published", || {
        let mut c = c.clone();
        async move { c.member_list().await.ok().filter(|m| !m.members()[0].client_urls().is_empty()) }
    })
    .await;
    assert_eq!(m.members().len(), 1);
    assert_eq!(m.members()[0].client_urls(), [server.endpoint()]);
    assert_eq!(m.members()[0].name(), "default");
    let s = c.status().await.unwrap();
    assert_eq!(s.version(), "3.5.17");
    assert_eq!(s.leader(), s.header().unwrap().member_id());
    assert!(s.raft_index() > 0);
    // Ready follows from the published attributes (its task is woken by the applied
    // membership changing, a moment after the member list shows it).
    crate::harness::eventually("ready", || async {
        crate::harness::admin_get(server.admin, "/ready").await.contains("200").then_some(())
    })
    .await;
    assert!(
        c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap().alarms().is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn txn_compares_and_nested() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut c = server.client().await;
    c.put("k", "v1", None).await.unwrap();
    let rev = c.put("k", "v2", None).await.unwrap().header().unwrap().revision();

    let t = Txn::new()
        .when([
            Compare::value("k", CompareOp::Equal, "v2"),
            Compare::version("k", CompareOp::Greater, 1),
            Compare::mod_revision("k", CompareOp::Equal, rev),
            Compare::create_revision("k", CompareOp::Less, rev),
            Compare::lease("k", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("x", "1", None),
            TxnOp::put("y", "2", None),
            TxnOp::get("k", None),
            TxnOp::txn(
                Txn::new()
                    .when([Compare::version("nope", CompareOp::NotEqual, 0)])
                    .or_else([TxnOp::put("z", "3", None)]),
            ),
        ])
        .or_else([TxnOp::put("failed", "1", None)]);
    let r = c.txn(t).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), rev + 1, "one revision for all of a txn's writes");
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v2"),
        other => panic!("unexpected {other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Txn(t) => assert!(!t.succeeded()),
        other => panic!("unexpected {other:?}"),
    }
    for k in ["x", "y", "z"] {
        assert_eq!(c.get(k, None).await.unwrap().kvs()[0].mod_revision(), rev + 1);
    }
    assert!(c.get("failed", None).await.unwrap().kvs().is_empty());

    // A failing compare runs the failure branch; a missing key's VALUE compare is false.
    let t = Txn::new().when([Compare::value("missing", CompareOp::Equal, "")]).or_else([TxnOp::get("x", None)]);
    let r = c.txn(t).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(r.header().unwrap().revision(), rev + 1, "a read-only txn does not bump the revision");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_create_if_absent_race() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    for round in 0..10 {
        let key = format!("lock/{round}");
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = Vec::new();
        for who in 0..2 {
            let mut c = server.client().await;
            let key = key.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let t = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), format!("owner-{who}"), None)]);
                barrier.wait().await;
                c.txn(t).await.unwrap().succeeded()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1, "exactly one create-if-absent wins (round {round})");
        let mut c = server.client().await;
        assert_eq!(c.get(key.as_str(), None).await.unwrap().kvs()[0].version(), 1);
    }
    server.stop().await;
}
