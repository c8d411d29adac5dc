use aether_proto::blob::v1::{
    BucketStatsRequest, CreateUploadRequest, DeleteRequest, FenceOp, GetRequest, HeadRequest, PutCommit, PutHeader,
    PutRequest, Version, put_request,
};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn put_get_round_trip_and_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let data = body(3 * 1024 * 1024 + 17, 1);
    let r = put(&mut c, "b", "dir/obj.bin", ver(10, "gw1"), &data).await;
    assert!(r.applied);
    assert_eq!(r.current, Some(ver(10, "gw1")));

    let (m, got) = get(&mut c, get_req("b", "dir/obj.bin")).await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert_eq!(m.size, data.len() as u64);
    assert_eq!(m.etag, md5_hex(&data));
    assert_eq!(m.version, Some(ver(10, "gw1")));
    assert_eq!(m.content_type, "text/plain");
    assert_eq!(m.user_metadata.get("color").map(String::as_str), Some("blue"));
    assert!(!m.tombstone);

    // Ranges, including across the 1 MiB read-chunk boundary.
    for (s, e) in [(0u64, 0u64), (5, 100), ((1 << 20) - 3, (1 << 20) + 3), (0, data.len() as u64 - 1)] {
        let req = GetRequest { has_range: true, start: s, end: e, ..get_req("b", "dir/obj.bin") };
        let (_, got) = get(&mut c, req).await.unwrap();
        assert!(got == data[s as usize..=e as usize], "range {s}-{e}");
    }
    let req = GetRequest { has_range: true, start: 0, end: data.len() as u64, ..get_req("b", "dir/obj.bin") };
    let err = get(&mut c, req).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(code(&err), "out_of_range");

    // meta_only, expect_version.
    let (m2, got) = get(&mut c, GetRequest { meta_only: true, ..get_req("b", "dir/obj.bin") }).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(m2.etag, m.etag);
    let req = GetRequest { expect_version: Some(ver(10, "gw1")), ..get_req("b", "dir/obj.bin") };
    assert_eq!(get(&mut c, req).await.unwrap().1.len(), data.len());
    let req = GetRequest { expect_version: Some(ver(11, "gw1")), ..get_req("b", "dir/obj.bin") };
    let err = get(&mut c, req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(code(&err), "version_mismatch");

    // Unknown key, head.
    let err = get(&mut c, get_req("b", "nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(code(&err), "not_found");
    let h = c.head(HeadRequest { bucket: "b".into(), key: "dir/obj.bin".into() }).await.unwrap().into_inner();
    assert_eq!(h.size, data.len() as u64);
    let err = c.head(HeadRequest { bucket: "b".into(), key: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Empty object.
    put(&mut c, "b", "empty", ver(1, "gw1"), b"").await;
    let (m, got) = get(&mut c, get_req("b", "empty")).await.unwrap();
    assert_eq!((m.size, got.len()), (0, 0));
    assert_eq!(m.etag, md5_hex(b""));
    node.stop().await;
}

#[tokio::test]
async fn last_writer_wins_in_any_order_and_tombstones() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let new = body(1000, 2);
    let old = body(2000, 3);
    assert!(put(&mut c, "b", "k", ver(20, "a"), &new).await.applied);
    // An older version arriving later does not overwrite.
    let r = put(&mut c, "b", "k", ver(19, "z"), &old).await;
    assert!(!r.applied);
    assert_eq!(r.current, Some(ver(20, "a")));
    // Same hlc: the writer breaks the tie.
    let r = put(&mut c, "b", "k", ver(20, "0"), &old).await;
    assert!(!r.applied);
    assert!(get(&mut c, get_req("b", "k")).await.unwrap().1 == new);
    assert_eq!(node.blob_files(), 1, "losers' files are unlinked");
    let newer = body(10, 4);
    assert!(put(&mut c, "b", "k", ver(20, "b"), &newer).await.applied);
    assert!(get(&mut c, get_req("b", "k")).await.unwrap().1 == newer);
    assert_eq!(node.blob_files(), 1, "the replaced version's file is unlinked");

    // Tombstone hides; an older put after it does not resurrect.
    let d = c
        .delete(DeleteRequest { bucket: "b".into(), key: "k".into(), version: Some(ver(30, "a")), last_modified_ms: 5 })
        .await
        .unwrap()
        .into_inner();
    assert!(d.applied);
    assert_eq!(node.blob_files(), 0);
    let (m, got) = get(&mut c, get_req("b", "k")).await.unwrap();
    assert!(m.tombstone);
    assert!(got.is_empty());
    assert_eq!(m.version, Some(ver(30, "a")));
    let h = c.head(HeadRequest { bucket: "b".into(), key: "k".into() }).await.unwrap().into_inner();
    assert!(h.tombstone);
    let r = put(&mut c, "b", "k", ver(25, "z"), &old).await;
    assert!(!r.applied);
    assert_eq!(r.current, Some(ver(30, "a")));
    assert!(get(&mut c, get_req("b", "k")).await.unwrap().0.tombstone);
    assert_eq!(node.blob_files(), 0);
    // An older delete does not win either; a newer put does.
    let d = c
        .delete(DeleteRequest { bucket: "b".into(), key: "k".into(), version: Some(ver(29, "a")), last_modified_ms: 5 })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.applied);
    assert!(put(&mut c, "b", "k", ver(31, "a"), &old).await.applied);
    assert!(get(&mut c, get_req("b", "k")).await.unwrap().1 == old);
    let s = c
        .bucket_stats(aether_proto::blob::v1::BucketStatsRequest { bucket: "b".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.objects, s.uploads), (1, 0));
    node.stop().await;
}

#[tokio::test]
async fn incomplete_or_bad_puts_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let data = body(300_000, 5);

    // Stream ends without a commit.
    let mut msgs = put_msgs("b", "k", ver(1, "a"), &data, 65536);
    msgs.pop();
    let err = c.put(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(node.staging_files(), 0);
    assert_eq!(node.blob_files(), 0);
    assert_eq!(c.head(HeadRequest { bucket: "b".into(), key: "k".into() }).await.unwrap_err().code(), Code::NotFound);

    // Bad MD5 / bad size in the commit.
    let mut msgs = put_msgs("b", "k", ver(1, "a"), &data, 65536);
    let last = msgs.len() - 1;
    msgs[last] = PutRequest {
        msg: Some(put_request::Msg::Commit(PutCommit {
            size: data.len() as u64,
            md5_hex: md5_hex(b"x"),
            ..Default::default()
        })),
    };
    let err = c.put(tokio_stream::iter(msgs.clone())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(code(&err), "bad_digest");
    msgs[last] = PutRequest {
        msg: Some(put_request::Msg::Commit(PutCommit { size: 7, md5_hex: md5_hex(&data), ..Default::default() })),
    };
    let err = c.put(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(node.staging_files(), 0);
    assert_eq!(node.blob_files(), 0);
    assert_eq!(c.head(HeadRequest { bucket: "b".into(), key: "k".into() }).await.unwrap_err().code(), Code::NotFound);

    // First message not a header.
    let msgs = vec![PutRequest { msg: Some(put_request::Msg::Chunk(vec![1, 2, 3].into())) }];
    assert_eq!(c.put(tokio_stream::iter(msgs)).await.unwrap_err().code(), Code::InvalidArgument);

    // The client goes away mid-stream: the staging file is removed.
    let (tx, rx) = tokio::sync::mpsc::channel::<PutRequest>(4);
    let header = PutRequest {
        msg: Some(put_request::Msg::Header(PutHeader {
            meta: Some(meta("b", "k", ver(1, "a"))),
            verbatim: false,
            heal: false,
        })),
    };
    tx.send(header).await.unwrap();
    tx.send(PutRequest { msg: Some(put_request::Msg::Chunk(data.clone().into())) }).await.unwrap();
    let mut c2 = node.client().await;
    let call = tokio::spawn(async move { c2.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    wait_for("a staging file", 10, || node.staging_files() == 1).await;
    call.abort();
    let _ = call.await;
    drop(tx);
    wait_for("staging to be cleaned", 10, || node.staging_files() == 0).await;
    assert_eq!(node.blob_files(), 0);
    assert_eq!(c.head(HeadRequest { bucket: "b".into(), key: "k".into() }).await.unwrap_err().code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_converge_on_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let c = node.client().await;
    // Versions in a scrambled order, written concurrently (puts and one delete).
    let order = [7u64, 3, 15, 1, 12, 9, 4, 14, 2, 10, 6, 13, 5, 11, 8, 16];
    let tasks: Vec<_> = order
        .iter()
        .map(|&v| {
            let mut c = c.clone();
            tokio::spawn(async move {
                if v == 13 {
                    c.delete(DeleteRequest {
                        bucket: "b".into(),
                        key: "k".into(),
                        version: Some(ver(v, "w")),
                        last_modified_ms: 1,
                    })
                    .await
                    .unwrap();
                } else {
                    put(&mut c, "b", "k", ver(v, "w"), &body(50_000 + v as usize, v as u8)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = c.clone();
    let (m, got) = get(&mut c, get_req("b", "k")).await.unwrap();
    assert_eq!(m.version, Some(ver(16, "w")));
    assert!(got == body(50_016, 16));
    assert_eq!(node.blob_files(), 1);
    assert_eq!(node.staging_files(), 0);
    node.stop().await;
}

/// A put of `body` into incarnation `rev` of bucket `b`.
async fn put_rev(c: &mut Client, key: &str, v: Version, rev: i64) -> Result<(), tonic::Status> {
    let mut msgs = put_msgs("b", key, v, b"x", 1024);
    if let Some(put_request::Msg::Header(PutHeader { meta: Some(m), .. })) = &mut msgs[0].msg {
        m.bucket_rev = rev;
    }
    c.put(tokio_stream::iter(msgs)).await.map(|_| ())
}

async fn fence(c: &mut Client, rev: i64, op: FenceOp) -> (u64, u64) {
    let r = c
        .bucket_stats(BucketStatsRequest { bucket: "b".into(), fence_rev: rev, fence: op as i32 })
        .await
        .unwrap()
        .into_inner();
    (r.objects, r.uploads)
}

fn refused_as_deleted(r: Result<(), tonic::Status>) {
    let s = r.expect_err("a fenced write is refused");
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(s.metadata().get(aether_blobd::CODE_KEY).and_then(|v| v.to_str().ok()), Some("bucket_deleted"));
}

/// DeleteBucket's fence: counted and fenced in one transaction; then new objects and
/// uploads of that incarnation (or an unknown one) are refused, a newer incarnation's
/// are not, deletes still apply, and lifting the fence lets writes in again.
#[tokio::test]
async fn bucket_fence_refuses_writes_of_the_fenced_incarnation() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    put_rev(&mut c, "before", ver(10, "gw"), 5).await.unwrap();
    assert_eq!(fence(&mut c, 5, FenceOp::FenceTemporary).await, (1, 0));
    refused_as_deleted(put_rev(&mut c, "after", ver(11, "gw"), 5).await);
    refused_as_deleted(put_rev(&mut c, "after", ver(11, "gw"), 0).await);
    let mut up = meta("b", "up", ver(12, "gw"));
    up.bucket_rev = 5;
    let r = c.create_upload(CreateUploadRequest { upload_id: "u1".into(), meta: Some(up.clone()) }).await;
    refused_as_deleted(r.map(|_| ()));
    // A delete (tombstone) still applies, so emptying the bucket works.
    let del =
        DeleteRequest { bucket: "b".into(), key: "before".into(), version: Some(ver(13, "gw")), last_modified_ms: 1 };
    c.delete(del).await.unwrap();
    assert_eq!(fence(&mut c, 0, FenceOp::FenceNone).await, (0, 0));
    // The name re-created (a later incarnation) takes writes; the fence survives restarts.
    put_rev(&mut c, "new", ver(14, "gw"), 9).await.unwrap();
    node.stop().await;
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    refused_as_deleted(put_rev(&mut c, "after", ver(15, "gw"), 5).await);
    // Lifted (the delete did not happen): writes of incarnation 5 go in again.
    assert_eq!(fence(&mut c, 5, FenceOp::FenceLift).await, (1, 0));
    put_rev(&mut c, "after", ver(16, "gw"), 5).await.unwrap();
    up.bucket_rev = 5;
    c.create_upload(CreateUploadRequest { upload_id: "u1".into(), meta: Some(up) }).await.unwrap();
    assert_eq!(fence(&mut c, 0, FenceOp::FenceNone).await, (2, 1));
    node.stop().await;
}
