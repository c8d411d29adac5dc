use aether_common::config::Quorum;
use aether_common::placement::{PlacementNode, replicas};
use aether_proto::blob::v1::HeadRequest;
use aether_tests::{Cluster, ClusterOptions};

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
