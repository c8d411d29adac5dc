use aether_common::config::Quorum;
use aether_common::placement::{PlacementNode, replicas};
use std::time::Duration;

use aether_proto::blob::v1::{GetRequest, HeadRequest, ObjectMeta, get_response};
use aether_tests::{Cluster, ClusterOptions, wait_for};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::Digest as _;

use crate::{body_bytes, bs, pattern};

/// Does blobd `i` hold a live (non-tombstone) copy of bucket/key?
async fn holds(c: &Cluster, i: usize, bucket: &str, key: &str) -> anyhow::Result<bool> {
    let mut cl = c.blob_client(i).await?;
    match cl.head(HeadRequest { bucket: bucket.into(), key: key.into() }).await {
        Ok(meta) => Ok(!meta.into_inner().tombstone),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(s.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_live_exactly_on_their_hrw_replicas() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions {
        blobds: 5,
        gateways: 1,
        write_quorum: Quorum::All,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("place").send().await?;
    let nodes: Vec<PlacementNode> =
        c.blobds.iter().map(|b| PlacementNode { id: b.node_id.clone(), zone: String::new(), weight: 1 }).collect();
    let mut per_node = vec![0usize; 5];
    for k in 0..60 {
        let key = format!("obj-{k}");
        s3.put_object().bucket("place").key(&key).body(bs(key.as_bytes())).send().await?;
        let want: Vec<String> = replicas(&nodes, "place", &key, 3).iter().map(|n| n.id.clone()).collect();
        for (i, b) in c.blobds.iter().enumerate() {
            let has = holds(&c, i, "place", &key).await?;
            assert_eq!(has, want.contains(&b.node_id), "key {key} on node {i}");
            per_node[i] += usize::from(has);
        }
    }
    // 60 keys x 3 replicas spread over 5 nodes.
    assert_eq!(per_node.iter().sum::<usize>(), 180);
    assert!(per_node.iter().all(|n| *n > 10), "skewed placement {per_node:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_survives_one_blobd_down() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("ha-bucket").send().await?;
    for k in 0..20 {
        s3.put_object()
            .bucket("ha-bucket")
            .key(format!("before-{k}"))
            .body(bs(&pattern(1000 + k, k as u64)))
            .send()
            .await?;
    }
    c.stop_blobd(0).await?;
    for k in 0..20 {
        s3.put_object()
            .bucket("ha-bucket")
            .key(format!("after-{k}"))
            .body(bs(&pattern(2000 + k, k as u64)))
            .send()
            .await?;
    }
    let s3b = c.s3(1);
    for k in 0..20 {
        let got = s3b.get_object().bucket("ha-bucket").key(format!("before-{k}")).send().await?;
        assert_eq!(body_bytes(got).await, pattern(1000 + k, k as u64));
        let got = s3b.get_object().bucket("ha-bucket").key(format!("after-{k}")).send().await?;
        assert_eq!(body_bytes(got).await, pattern(2000 + k, k as u64));
    }
    let listed = s3b.list_objects_v2().bucket("ha-bucket").send().await?;
    assert_eq!(listed.key_count(), Some(40));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_every_acknowledged_object_and_bucket() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    for b in ["keep-a", "keep-b"] {
        s3.create_bucket().bucket(b).send().await?;
    }
    for k in 0..30 {
        s3.put_object().bucket("keep-a").key(format!("k{k}")).body(bs(&pattern(k * 100, k as u64))).send().await?;
    }
    s3.delete_object().bucket("keep-a").key("k0").send().await?;
    c.restart_all().await?;
    let s3 = c.s3(1);
    let mut names: Vec<String> =
        s3.list_buckets().send().await?.buckets().iter().filter_map(|b| b.name().map(str::to_string)).collect();
    names.sort();
    assert_eq!(names, vec!["keep-a".to_string(), "keep-b".to_string()]);
    for k in 1..30 {
        let got = s3.get_object().bucket("keep-a").key(format!("k{k}")).send().await?;
        assert_eq!(body_bytes(got).await, pattern(k * 100, k as u64));
    }
    assert_eq!(crate::err_code(s3.get_object().bucket("keep-a").key("k0").send().await), "NoSuchKey");
    assert_eq!(s3.list_objects_v2().bucket("keep-a").send().await?.key_count(), Some(29));
    Ok(())
}

/// What blobd `i` holds for bucket/key: its meta (tombstones too) and body, read from it
/// alone; None when it does not know the key.
pub(crate) async fn copy_on(
    c: &Cluster,
    i: usize,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Option<(ObjectMeta, Vec<u8>)>> {
    let mut cl = c.blob_client(i).await?;
    let req = GetRequest { bucket: bucket.into(), key: key.into(), ..Default::default() };
    let mut stream = match cl.get(req).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(s.into()),
    };
    let (mut meta, mut body) = (None, Vec::new());
    while let Some(m) = stream.message().await? {
        match m.msg {
            Some(get_response::Msg::Meta(x)) => meta = Some(x),
            Some(get_response::Msg::Chunk(b)) => body.extend_from_slice(&b),
            None => {}
        }
    }
    Ok(meta.map(|m| (m, body)))
}

/// Read repair: what a replica missed while it was down (a plain object, a multipart one,
/// a delete) reaches it once a quorum read sees it behind — here every read asks all three
/// (read quorum `all`). The copies are verbatim: same version, ETag, parts; same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_repair_a_replica_that_missed_writes() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        read_quorum: Quorum::All,
        min_part_size: 1024,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("repair").send().await?;
    s3.put_object().bucket("repair").key("gone").body(bs(b"to be deleted")).send().await?;
    c.stop_blobd(2).await?;

    let small = pattern(3000, 1);
    s3.put_object().bucket("repair").key("small").body(bs(&small)).send().await?;
    let up = s3.create_multipart_upload().bucket("repair").key("mpu").send().await?;
    let id = up.upload_id().expect("upload id").to_string();
    let (p1, p2) = (pattern(2048, 2), pattern(100, 3));
    let mut parts = Vec::new();
    for (n, d) in [(1, &p1), (2, &p2)] {
        let out = s3.upload_part().bucket("repair").key("mpu").upload_id(&id).part_number(n).body(bs(d)).send().await?;
        parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap_or_default()).build());
    }
    let done = s3
        .complete_multipart_upload()
        .bucket("repair")
        .key("mpu")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await?;
    let mpu_etag = done.e_tag().unwrap_or_default().trim_matches('"').to_string();
    assert!(mpu_etag.ends_with("-2"), "{mpu_etag}");
    s3.delete_object().bucket("repair").key("gone").send().await?;
    let small_ref = copy_on(&c, 0, "repair", "small").await?.expect("blobd 0 holds small").0;
    let mpu_ref = copy_on(&c, 0, "repair", "mpu").await?.expect("blobd 0 holds mpu").0;
    let gone_ref = copy_on(&c, 0, "repair", "gone").await?.expect("blobd 0 holds the tombstone").0;
    assert!(gone_ref.tombstone);

    c.start_blobd(2).await?;
    c.wait_alive(3).await?;
    assert!(copy_on(&c, 2, "repair", "small").await?.is_none(), "blobd 2 missed the writes");

    // Every round of reads notices blobd 2 behind and repairs it in the background.
    wait_for("blobd 2 repaired by reads", Duration::from_secs(30), || async {
        for key in ["small", "mpu", "gone"] {
            let _ = s3.head_object().bucket("repair").key(key).send().await;
        }
        let small_copy = copy_on(&c, 2, "repair", "small").await.ok()??;
        let mpu_copy = copy_on(&c, 2, "repair", "mpu").await.ok()??;
        let gone_copy = copy_on(&c, 2, "repair", "gone").await.ok()??;
        (gone_copy.0.tombstone && small_copy.0.version == small_ref.version && mpu_copy.0.version == mpu_ref.version)
            .then_some((small_copy, mpu_copy, gone_copy))
    })
    .await
    .map(|(small_copy, mpu_copy, gone_copy)| {
        assert_eq!(small_copy.1, small, "small: the same bytes");
        assert_eq!(small_copy.0.etag, hex::encode(md5::Md5::digest(&small)));
        assert_eq!(mpu_copy.1, [p1.clone(), p2.clone()].concat(), "mpu: the same bytes");
        assert_eq!(mpu_copy.0.etag, mpu_ref.etag, "mpu: the multipart ETag is kept");
        assert_eq!(mpu_copy.0.part_sizes, vec![2048, 100], "mpu: the part sizes are kept");
        assert_eq!(gone_copy.0.version, gone_ref.version, "the tombstone's version");
    })?;

    Ok(())
}
