use std::time::{Duration, Instant};

use aether_proto::blob::v1::{
    AbortUploadRequest, BucketStatsRequest, CompleteUploadRequest, CompletedPart, CreateUploadRequest, GetRequest,
    GetUploadRequest, PartHeader, PutCommit, PutPartRequest, UploadsRequest, put_part_request,
};
use tonic::Code;

use crate::harness::*;

async fn put_part(c: &mut Client, key: &str, upload: &str, n: u32, data: &[u8]) -> Result<(), tonic::Status> {
    let mut msgs = vec![PutPartRequest {
        msg: Some(put_part_request::Msg::Header(PartHeader {
            bucket: "b".into(),
            key: key.into(),
            upload_id: upload.into(),
            part_number: n,
            ..Default::default()
        })),
    }];
    for ch in data.chunks(100_000) {
        msgs.push(PutPartRequest { msg: Some(put_part_request::Msg::Chunk(ch.to_vec().into())) });
    }
    msgs.push(PutPartRequest {
        msg: Some(put_part_request::Msg::Commit(PutCommit {
            size: data.len() as u64,
            md5_hex: md5_hex(data),
            ..Default::default()
        })),
    });
    c.put_part(tokio_stream::iter(msgs)).await.map(|_| ())
}

async fn create(c: &mut Client, key: &str, upload: &str) {
    c.create_upload(CreateUploadRequest { upload_id: upload.into(), meta: Some(meta("b", key, ver(0, ""))) })
        .await
        .unwrap();
}

fn part(n: u32, data: &[u8]) -> CompletedPart {
    CompletedPart { part_number: n, etag: format!("\"{}\"", md5_hex(data)) }
}

#[tokio::test]
async fn multipart_create_parts_complete_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let p1 = body((1 << 20) + (1 << 19) + 3, 1);
    let p2 = body(1 << 20, 2);
    let p3 = body(7, 3);
    let unused = body(1000, 4);
    create(&mut c, "mp/obj", "u1").await;
    let s = c.bucket_stats(BucketStatsRequest { bucket: "b".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(s.uploads, 1);
    put_part(&mut c, "mp/obj", "u1", 1, &unused).await.unwrap();
    put_part(&mut c, "mp/obj", "u1", 1, &p1).await.unwrap(); // replaces part 1
    put_part(&mut c, "mp/obj", "u1", 3, &p3).await.unwrap();
    put_part(&mut c, "mp/obj", "u1", 2, &p2).await.unwrap();
    put_part(&mut c, "mp/obj", "u1", 5, &unused).await.unwrap();
    assert_eq!(node.blob_files(), 4, "the replaced part's blob is unlinked");
    // Unknown upload, wrong key.
    let err = put_part(&mut c, "mp/obj", "nope", 1, &p3).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = put_part(&mut c, "other", "u1", 1, &p3).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(node.staging_files(), 0);

    let up = c
        .get_upload(GetUploadRequest {
            bucket: "b".into(),
            key: "mp/obj".into(),
            upload_id: "u1".into(),
            completed: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.meta.as_ref().unwrap().content_type, "text/plain");
    let parts: Vec<(u32, u64, String)> = up.parts.iter().map(|p| (p.part_number, p.size, p.etag.clone())).collect();
    assert_eq!(
        parts,
        [
            (1, p1.len() as u64, md5_hex(&p1)),
            (2, p2.len() as u64, md5_hex(&p2)),
            (3, 7, md5_hex(&p3)),
            (5, 1000, md5_hex(&unused))
        ]
    );

    let complete = |parts: Vec<CompletedPart>, hlc: u64| CompleteUploadRequest {
        bucket: "b".into(),
        key: "mp/obj".into(),
        upload_id: "u1".into(),
        parts,
        version: Some(ver(hlc, "gw")),
        last_modified_ms: 42,
        etag: "abc-3".into(),
        checksums: Default::default(),
    };
    // A wrong etag names the part.
    let err = c.complete_upload(complete(vec![part(1, &p1), part(2, &p3)], 10)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("part 2"), "{}", err.message());
    let err = c.complete_upload(complete(vec![part(1, &p1), part(4, &p3)], 10)).await.unwrap_err();
    assert!(err.message().contains("part 4"), "{}", err.message());

    let r = c.complete_upload(complete(vec![part(1, &p1), part(2, &p2), part(3, &p3)], 10)).await.unwrap().into_inner();
    assert!(r.applied);
    assert_eq!(node.blob_files(), 3, "the unlisted part's blob is unlinked, listed ones are not copied");
    let whole: Vec<u8> = [p1.as_slice(), &p2, &p3].concat();
    let (m, got) = get(&mut c, get_req("b", "mp/obj")).await.unwrap();
    assert!(got == whole);
    assert_eq!(m.size, whole.len() as u64);
    assert_eq!(m.etag, "abc-3");
    assert_eq!(m.part_sizes, [p1.len() as u64, p2.len() as u64, 7]);
    assert_eq!(m.last_modified_ms, 42);
    assert_eq!(m.content_type, "text/plain");
    // Ranges across part boundaries.
    let b1 = p1.len() as u64;
    let b2 = b1 + p2.len() as u64;
    for (s, e) in [(b1 - 1, b1), (b1 - 10, b2 + 3), (b2, b2 + 6), (0, whole.len() as u64 - 1), (b1, b1), (3, b2 - 1)] {
        let req = GetRequest { has_range: true, start: s, end: e, ..get_req("b", "mp/obj") };
        let (_, got) = get(&mut c, req).await.unwrap();
        assert!(got == whole[s as usize..=e as usize], "range {s}-{e}");
    }
    // The upload is gone; asked for completions, the daemon tells what it made of it (a
    // retried completion's answer), for that bucket and key only.
    let err = c
        .get_upload(GetUploadRequest {
            bucket: "b".into(),
            key: "mp/obj".into(),
            upload_id: "u1".into(),
            completed: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let done = c
        .get_upload(GetUploadRequest {
            bucket: "b".into(),
            key: "mp/obj".into(),
            upload_id: "u1".into(),
            completed: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.meta, done.parts.len()), (None, 0));
    assert_eq!(done.completed.map(|d| d.etag), Some("abc-3".to_string()));
    let err = c
        .get_upload(GetUploadRequest {
            bucket: "b".into(),
            key: "mp/other".into(),
            upload_id: "u1".into(),
            completed: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let s = c.bucket_stats(BucketStatsRequest { bucket: "b".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((s.objects, s.uploads), (1, 0));

    // A plain put replacing a multipart object unlinks all its parts.
    put(&mut c, "b", "mp/obj", ver(11, "gw"), b"small").await;
    assert_eq!(node.blob_files(), 1);

    // Abort removes the upload, its parts and their blobs.
    create(&mut c, "mp/two", "u2").await;
    put_part(&mut c, "mp/two", "u2", 1, &p3).await.unwrap();
    put_part(&mut c, "mp/two", "u2", 2, &p3).await.unwrap();
    assert_eq!(node.blob_files(), 3);
    c.abort_upload(AbortUploadRequest { bucket: "b".into(), key: "mp/two".into(), upload_id: "u2".into() })
        .await
        .unwrap();
    assert_eq!(node.blob_files(), 1);
    let err = c
        .abort_upload(AbortUploadRequest { bucket: "b".into(), key: "mp/two".into(), upload_id: "u2".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A completion older than the stored version loses and leaves nothing behind.
    create(&mut c, "mp/obj", "u3").await;
    put_part(&mut c, "mp/obj", "u3", 1, &p3).await.unwrap();
    let mut req = complete(vec![part(1, &p3)], 5);
    req.upload_id = "u3".into();
    let r = c.complete_upload(req).await.unwrap().into_inner();
    assert!(!r.applied);
    assert_eq!(r.current, Some(ver(11, "gw")));
    assert_eq!(node.blob_files(), 1);
    assert!(get(&mut c, get_req("b", "mp/obj")).await.unwrap().1 == b"small");
    node.stop().await;
}

/// A part as anti-entropy copies it: recorded at the peer's time `at`.
async fn copy_part(c: &mut Client, key: &str, upload: &str, n: u32, at: i64, data: &[u8]) {
    let msgs = vec![
        PutPartRequest {
            msg: Some(put_part_request::Msg::Header(PartHeader {
                bucket: "b".into(),
                key: key.into(),
                upload_id: upload.into(),
                part_number: n,
                last_modified_ms: at,
            })),
        },
        PutPartRequest { msg: Some(put_part_request::Msg::Chunk(data.to_vec().into())) },
        PutPartRequest {
            msg: Some(put_part_request::Msg::Commit(PutCommit {
                size: data.len() as u64,
                md5_hex: md5_hex(data),
                ..Default::default()
            })),
        },
    ];
    c.put_part(tokio_stream::iter(msgs)).await.unwrap();
}

/// Multipart state for anti-entropy: `Uploads` reports uploads in progress (with their
/// parts) and ended ones (completed or aborted here), so a late copy of an ended upload
/// from a peer is refused; a part copied from a peer keeps its recorded time and never
/// replaces a part recorded here later; an abort of an upload this daemon never had
/// records nothing (it may name the wrong key).
#[tokio::test]
async fn ended_uploads_are_remembered_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path()).await;
    let mut c = node.client().await;
    let (p, q) = (body(500, 1), body(700, 2));
    create(&mut c, "k/open", "open").await;
    put_part(&mut c, "k/open", "open", 1, &p).await.unwrap();
    copy_part(&mut c, "k/open", "open", 2, 1234, &p).await;
    // An older copy of part 1 (the client re-uploaded it here since) loses, and its blob
    // is not kept.
    copy_part(&mut c, "k/open", "open", 1, 1000, &q).await;
    assert_eq!(node.blob_files(), 2);
    create(&mut c, "k/aborted", "aborted").await;
    c.abort_upload(AbortUploadRequest { bucket: "b".into(), key: "k/aborted".into(), upload_id: "aborted".into() })
        .await
        .unwrap();
    let err = c
        .abort_upload(AbortUploadRequest { bucket: "b".into(), key: "k/missed".into(), upload_id: "missed".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An aborted upload was not completed.
    let err = c
        .get_upload(GetUploadRequest {
            bucket: "b".into(),
            key: "k/aborted".into(),
            upload_id: "aborted".into(),
            completed: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let ids = ["open", "aborted", "missed"].map(String::from).to_vec();
    let got = c.uploads(UploadsRequest { bucket: "b".into(), upload_ids: ids }).await.unwrap().into_inner();
    let seen = &got.uploads;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let parts: Vec<(u32, i64, &str)> =
        seen[0].parts.iter().map(|p| (p.part_number, p.last_modified_ms, p.etag.as_str())).collect();
    assert_eq!((seen[0].upload_id.as_str(), seen[0].ended, parts.len()), ("open", false, 2));
    assert!(parts[0].1 > 1234, "a part uploaded here has the local time");
    assert_eq!(parts[0].2, md5_hex(&p), "the older copy did not replace it");
    assert_eq!((parts[1].0, parts[1].1), (2, 1234), "a copied part keeps the peer's time");
    assert_eq!((seen[1].upload_id.as_str(), seen[1].ended), ("aborted", true));

    // A late copy of an ended upload (a peer that missed the abort) is refused.
    let err = c
        .create_upload(CreateUploadRequest {
            upload_id: "aborted".into(),
            meta: Some(meta("b", "k/aborted", ver(0, ""))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.stop().await;
}

/// Reaping (`mpu_reap_age_secs`): an upload idle longer than the age (initiated before it,
/// no part since) is aborted and its parts' blobs unlinked; a part upload keeps it alive.
#[tokio::test]
async fn abandoned_uploads_are_reaped_after_the_age() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", dead_port().await);
    let node = start_cfg(tmp.path(), vec![dead], |c| c.mpu_reap_age_secs = Some(10)).await;
    let mut c = node.client().await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let exists = |c: &mut Client, key: &'static str, id: &'static str| {
        let mut c = c.clone();
        async move {
            match c
                .get_upload(GetUploadRequest {
                    bucket: "b".into(),
                    key: key.into(),
                    upload_id: id.into(),
                    completed: false,
                })
                .await
            {
                Ok(_) => true,
                Err(s) if s.code() == Code::NotFound => false,
                Err(s) => panic!("get_upload: {s}"),
            }
        }
    };
    // Initiated long ago (`meta` dates it 2023), nothing since.
    create(&mut c, "idle", "u-idle").await;
    // Initiated long ago, but a part arrives now.
    create(&mut c, "busy", "u-busy").await;
    put_part(&mut c, "busy", "u-busy", 1, &body(1000, 1)).await.unwrap();
    // Initiated now, with a part.
    let mut fresh = meta("b", "fresh", ver(0, ""));
    fresh.last_modified_ms = now_ms;
    c.create_upload(CreateUploadRequest { upload_id: "u-fresh".into(), meta: Some(fresh) }).await.unwrap();
    put_part(&mut c, "fresh", "u-fresh", 1, &body(1000, 2)).await.unwrap();
    assert_eq!(node.blob_files(), 2);

    // The first sweep (a quarter of the age in) takes only the idle one.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    wait_until("the idle upload to be reaped", deadline, || {
        let mut c = c.clone();
        async move { !exists(&mut c, "idle", "u-idle").await }
    })
    .await;
    if started.elapsed() < Duration::from_secs(8) {
        assert!(exists(&mut c, "busy", "u-busy").await, "a part upload keeps an upload alive");
        assert!(exists(&mut c, "fresh", "u-fresh").await);
        assert_eq!(node.blob_files(), 2);
    }
    // Once they are idle for the age too, they go, with their parts.
    wait_until("the other uploads to be reaped once idle", deadline, || {
        let mut c = c.clone();
        async move { !exists(&mut c, "busy", "u-busy").await && !exists(&mut c, "fresh", "u-fresh").await }
    })
    .await;
    assert_eq!(node.blob_files(), 0, "reaped parts are unlinked");
    let err = put_part(&mut c, "busy", "u-busy", 2, &body(10, 3)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.stop().await;
}
