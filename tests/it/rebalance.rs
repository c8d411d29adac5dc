//! Anti-entropy, handoff (grow, drain), tombstone collection and a crash under load: blobd's
//! sync loop on a real cluster, checked on each daemon's own index.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aether_common::catalog::NodeState;
use aether_common::placement::{PlacementNode, replicas};
use aether_proto::blob::v1::{
    GetUploadRequest, ListUploadsRequest, NodeStatsRequest, NodeStatsResponse, VersionsRequest,
};
use aether_tests::{Cluster, ClusterOptions, pattern, wait_for};
use anyhow::Context as _;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::Digest as _;

use crate::{body_bytes, bs};

/// What blobd `i` holds of `keys`: key -> (hlc, writer, tombstone), from its own index.
pub(crate) async fn held(
    c: &Cluster,
    i: usize,
    bucket: &str,
    keys: &[String],
) -> anyhow::Result<BTreeMap<String, (u64, String, bool)>> {
    let mut cl = c.blob_client(i).await?;
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(1000) {
        let r = cl.versions(VersionsRequest { bucket: bucket.into(), keys: chunk.to_vec() }).await?.into_inner();
        for e in r.entries {
            let v = e.version.unwrap_or_default();
            out.insert(e.key, (v.hlc, v.writer, e.tombstone));
        }
    }
    Ok(out)
}

/// For every key, which running nodes hold a live copy.
async fn copies(
    c: &Cluster,
    nodes: &[usize],
    bucket: &str,
    keys: &[String],
) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = keys.iter().map(|k| (k.clone(), BTreeSet::new())).collect();
    for &i in nodes {
        for (k, (_, _, tomb)) in held(c, i, bucket, keys).await? {
            if !tomb {
                out.entry(k).or_default().insert(c.blobds[i].node_id.clone());
            }
        }
    }
    Ok(out)
}

fn placement(c: &Cluster, active: &[usize]) -> Vec<PlacementNode> {
    active.iter().map(|&i| PlacementNode { id: c.blobds[i].node_id.clone(), zone: String::new(), weight: 1 }).collect()
}

/// Keys whose live copies are not exactly on their owners (at most a few, for messages).
fn misplaced(
    have: &BTreeMap<String, BTreeSet<String>>,
    nodes: &[PlacementNode],
    bucket: &str,
    rf: usize,
) -> Vec<String> {
    have.iter()
        .filter(|(k, on)| {
            let want: BTreeSet<String> = replicas(nodes, bucket, k, rf).iter().map(|n| n.id.clone()).collect();
            **on != want
        })
        .map(|(k, on)| format!("{k} on {} node(s)", on.len()))
        .take(5)
        .collect()
}

fn body(i: usize) -> Vec<u8> {
    pattern(64 + i % 300, i as u64)
}

/// Grow 3 -> 5 with 2,000 objects: afterwards every object has exactly RF = 3 copies, on
/// its owners over five nodes, the two new nodes hold about 2/5 of the copies, and reads
/// during the move never failed. Then drain a node: it ends up holding nothing, every key
/// is on exactly its owners over the four others, and every object reads back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_three_to_five_then_drain_moves_only_what_must_move() -> anyhow::Result<()> {
    const N: usize = 2000;
    let mut c =
        Cluster::start(ClusterOptions { gateways: 1, sync_interval_secs: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("grow").send().await?;
    let keys: Arc<Vec<String>> = Arc::new((0..N).map(|i| format!("obj/{i:05}")).collect());
    futures::stream::iter(0..N)
        .map(|i| {
            let (s3, k) = (s3.clone(), keys[i].clone());
            async move { s3.put_object().bucket("grow").key(k).body(bs(&body(i))).send().await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;

    // Reads go on through the whole move; each must return the object's exact bytes.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (s3, keys, stop, reads, failures) =
            (s3.clone(), keys.clone(), stop.clone(), reads.clone(), failures.clone());
        tokio::spawn(async move {
            let mut first_failure = None;
            for n in 0..200_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = (n * 7919) % N;
                let outcome = match s3.get_object().bucket("grow").key(&keys[i]).send().await {
                    Ok(out) => {
                        if body_bytes(out).await == body(i) {
                            Ok(())
                        } else {
                            Err("wrong bytes".to_string())
                        }
                    }
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(()) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_failure.get_or_insert(format!("{}: {e}", keys[i]));
                    }
                }
            }
            first_failure
        })
    };

    c.add_blobd().await?;
    c.add_blobd().await?;
    c.wait_alive(5).await?;
    let five = placement(&c, &[0, 1, 2, 3, 4]);
    wait_for("every key on exactly its 3 owners of 5", Duration::from_secs(180), || async {
        let have = copies(&c, &[0, 1, 2, 3, 4], "grow", &keys).await.ok()?;
        misplaced(&have, &five, "grow", 3).is_empty().then_some(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let first_failure = reader.await?;
    assert_eq!(failures.load(Ordering::Relaxed), 0, "reads failed during the move, first: {first_failure:?}");
    assert!(reads.load(Ordering::Relaxed) > 0, "no read ran during the move");

    let have = copies(&c, &[0, 1, 2, 3, 4], "grow", &keys).await?;
    let total: usize = have.values().map(BTreeSet::len).sum();
    assert_eq!(total, 3 * N, "exactly RF copies of every object");
    let on_new =
        have.values().flatten().filter(|id| **id == c.blobds[3].node_id || **id == c.blobds[4].node_id).count();
    // Ideal: 2/5 of 6,000 copies = 2,400.
    assert!((2100..=2700).contains(&on_new), "the new nodes hold {on_new} of {total} copies");

    // Drain node 0: its keys go to their owners among the four others.
    c.set_node(0, |n| n.state = NodeState::Draining).await?;
    let four = placement(&c, &[1, 2, 3, 4]);
    wait_for("node 0 drained", Duration::from_secs(180), || async {
        let have = copies(&c, &[0, 1, 2, 3, 4], "grow", &keys).await.ok()?;
        misplaced(&have, &four, "grow", 3).is_empty().then_some(())
    })
    .await?;
    assert!(held(&c, 0, "grow", &keys).await?.is_empty(), "a drained node holds nothing");
    for (i, k) in keys.iter().enumerate().step_by(7) {
        let got = s3.get_object().bucket("grow").key(k).send().await?;
        assert_eq!(body_bytes(got).await, body(i), "{k}");
    }
    assert_eq!(
        s3.list_objects_v2().bucket("grow").prefix("obj/0000").send().await?.key_count(),
        Some(10),
        "listing after the drain"
    );
    Ok(())
}

/// A replica that was down while keys were written, overwritten and deleted converges by
/// anti-entropy alone (no read touches the keys): the same versions, tombstones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anti_entropy_brings_back_a_replica_that_missed_writes() -> anyhow::Result<()> {
    let mut c =
        Cluster::start(ClusterOptions { gateways: 1, sync_interval_secs: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("anti-entropy").send().await?;
    for i in 0..100 {
        s3.put_object().bucket("anti-entropy").key(format!("old/{i:03}")).body(bs(&body(i))).send().await?;
    }
    c.stop_blobd(2).await?;
    for i in 0..300 {
        s3.put_object().bucket("anti-entropy").key(format!("new/{i:03}")).body(bs(&body(1000 + i))).send().await?;
    }
    for i in 0..50 {
        s3.put_object().bucket("anti-entropy").key(format!("old/{i:03}")).body(bs(&body(5000 + i))).send().await?;
    }
    for i in 50..100 {
        s3.delete_object().bucket("anti-entropy").key(format!("old/{i:03}")).send().await?;
    }
    let keys: Vec<String> =
        (0..100).map(|i| format!("old/{i:03}")).chain((0..300).map(|i| format!("new/{i:03}"))).collect();
    let reference = held(&c, 0, "anti-entropy", &keys).await?;
    assert_eq!(reference.len(), 400);

    c.start_blobd(2).await?;
    c.wait_alive(3).await?;
    wait_for("blobd 2 to converge", Duration::from_secs(60), || async {
        (held(&c, 2, "anti-entropy", &keys).await.ok()? == reference).then_some(())
    })
    .await?;
    let copy = crate::cluster::copy_on(&c, 2, "anti-entropy", "old/007").await?.expect("a copy");
    assert_eq!(copy.1, body(5007), "the overwritten bytes");
    let copy = crate::cluster::copy_on(&c, 2, "anti-entropy", "new/123").await?.expect("a copy");
    assert_eq!(copy.1, body(1123));
    Ok(())
}

/// Tombstones past their grace are collected on every replica, and the key stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tombstones_are_collected_after_the_grace() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        tombstone_grace_secs: 2,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("tombstones").send().await?;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for k in &keys {
        s3.put_object().bucket("tombstones").key(k).body(bs(b"x")).send().await?;
    }
    for k in &keys[..10] {
        s3.delete_object().bucket("tombstones").key(k).send().await?;
    }
    assert!(held(&c, 0, "tombstones", &keys).await?.values().any(|(_, _, t)| *t), "tombstones written");
    wait_for("tombstones collected", Duration::from_secs(30), || async {
        for i in 0..3 {
            let h = held(&c, i, "tombstones", &keys).await.ok()?;
            if h.len() != 10 || h.values().any(|(_, _, t)| *t) {
                return None;
            }
        }
        Some(())
    })
    .await?;
    for k in &keys[..10] {
        assert_eq!(crate::err_code(s3.get_object().bucket("tombstones").key(k).send().await), "NoSuchKey");
    }
    assert_eq!(s3.list_objects_v2().bucket("tombstones").send().await?.key_count(), Some(10));
    Ok(())
}

/// RF = 3, W = 2: a blobd killed (like SIGKILL) in the middle of 1,000 concurrent puts; every
/// put that got a 200 reads back with its exact bytes (SHA-256 compared), and once the
/// node is back anti-entropy gives it every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_1000_concurrent_puts_loses_no_acknowledged_write() -> anyhow::Result<()> {
    const N: usize = 1000;
    let mut c =
        Cluster::start(ClusterOptions { gateways: 1, sync_interval_secs: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("crash").send().await?;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let puts = {
        let (s3, acked) = (s3.clone(), acked.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..N)
                .map(|i| {
                    let (s3, acked) = (s3.clone(), acked.clone());
                    async move {
                        let r = s3.put_object().bucket("crash").key(format!("k{i:04}")).body(bs(&body(i))).send().await;
                        if r.is_ok() {
                            acked.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                        }
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        })
    };
    wait_for("300 puts acknowledged", Duration::from_secs(120), || async {
        (acked.lock().unwrap_or_else(|e| e.into_inner()).len() >= 300).then_some(())
    })
    .await?;
    c.kill_blobd(1);
    puts.await?;
    let acked: Vec<usize> = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(acked.len() > N / 2, "only {} of {N} puts succeeded with 2 of 3 nodes up", acked.len());
    for &i in &acked {
        let got = s3.get_object().bucket("crash").key(format!("k{i:04}")).send().await?;
        let bytes = body_bytes(got).await;
        assert_eq!(sha2::Sha256::digest(&bytes), sha2::Sha256::digest(body(i)), "k{i:04}");
    }

    c.start_blobd(1).await?;
    c.wait_alive(3).await?;
    let keys: Vec<String> = acked.iter().map(|i| format!("k{i:04}")).collect();
    wait_for("the killed node to get every acknowledged key", Duration::from_secs(60), || async {
        let h = held(&c, 1, "crash", &keys).await.ok()?;
        (h.len() == keys.len()).then_some(())
    })
    .await?;
    Ok(())
}

/// Every blob file under blobd `i`'s data dir.
fn blob_files(c: &Cluster, i: usize) -> anyhow::Result<BTreeSet<std::path::PathBuf>> {
    let mut out = BTreeSet::new();
    for shard in std::fs::read_dir(c.blobds[i].data_dir.join("blobs"))? {
        for f in std::fs::read_dir(shard?.path())? {
            out.insert(f?.path());
        }
    }
    Ok(out)
}

/// Flip one bit of the file at `offset`.
fn flip(path: &std::path::Path, offset: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    f.write_all_at(&[b[0] ^ 0x10], offset)?;
    f.sync_all()?;
    Ok(())
}

/// A blob file corrupted on disk is never served: GETs (whole and ranged) return the right
/// bytes, the gateway moving to another replica in the middle of the body; the bad copy is
/// replaced from a peer. A corruption no read touches is found by the scrub and healed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_blobs_are_never_served_and_are_healed() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        scrub_interval_secs: 1,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("bitrot").send().await?;
    let big = pattern((3 << 20) + 1234, 9);
    s3.put_object().bucket("bitrot").key("read-me").body(bs(&big)).send().await?;
    // A GET streams from the first replica in HRW order: corrupt that one, in block 1.
    let nodes = placement(&c, &[0, 1, 2]);
    let first_id = replicas(&nodes, "bitrot", "read-me", 3)[0].id.clone();
    let first = c.blobds.iter().position(|b| b.node_id == first_id).expect("a node");
    // The PUT returned after a write quorum: the third replica may still be committing.
    let files = wait_for("the first replica to hold the blob", Duration::from_secs(30), || async {
        blob_files(&c, first).ok().filter(|f| f.len() == 1)
    })
    .await?;
    let bad = files.first().expect("one file").clone();
    flip(&bad, (1 << 20) + 17)?;
    for _ in 0..3 {
        let got = s3.get_object().bucket("bitrot").key("read-me").send().await?;
        assert!(body_bytes(got).await == big, "a GET returned corrupt bytes");
    }
    let got = s3.get_object().bucket("bitrot").key("read-me").range("bytes=1048000-1049999").send().await?;
    assert_eq!(body_bytes(got).await, big[1_048_000..1_050_000].to_vec());
    wait_for("the corrupt copy replaced", Duration::from_secs(30), || async {
        if bad.exists() {
            return None;
        }
        let copy = crate::cluster::copy_on(&c, first, "bitrot", "read-me").await.ok()??;
        (copy.1 == big).then_some(())
    })
    .await?;

    // No read: the scrub finds it.
    let before: Vec<_> = (0..3).map(|i| blob_files(&c, i)).collect::<anyhow::Result<_>>()?;
    let small = pattern(5000, 10);
    s3.put_object().bucket("bitrot").key("scrub-me").body(bs(&small)).send().await?;
    let victim = 2;
    let new_file = wait_for("blobd 2 to hold the new blob", Duration::from_secs(30), || async {
        blob_files(&c, victim).ok()?.difference(&before[victim]).next().cloned()
    })
    .await?;
    flip(&new_file, 4321)?;
    wait_for("the scrub to find and heal the copy", Duration::from_secs(30), || async {
        (!new_file.exists()).then_some(())
    })
    .await?;
    let copy = crate::cluster::copy_on(&c, victim, "bitrot", "scrub-me").await?.expect("a copy");
    assert_eq!(copy.1, small);
    Ok(())
}

/// Opt-in eviction: a blobd dead (killed, its lease expired) for longer than the grace is
/// marked `removed` in the layout; its keys get a new replica from the survivors, so every
/// object has 3 copies again, on exactly its owners among the three left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_dead_past_the_eviction_grace_is_removed_and_its_keys_re_replicate() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterOptions {
        blobds: 4,
        gateways: 1,
        sync_interval_secs: 1,
        evict_grace_secs: Some(2),
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("evict").send().await?;
    let keys: Vec<String> = (0..120).map(|i| format!("e/{i:03}")).collect();
    for (i, k) in keys.iter().enumerate() {
        s3.put_object().bucket("evict").key(k).body(bs(&body(i))).send().await?;
    }
    c.kill_blobd(3);
    let key = aether_common::catalog::Keys::default().node(&c.blobds[3].node_id);
    wait_for("blobd 3 evicted", Duration::from_secs(60), || async {
        let mut etcd = c.etcd().await.ok()?;
        let r = etcd.get(key.as_str(), None).await.ok()?;
        let entry: aether_common::catalog::NodeEntry = serde_json::from_slice(r.kvs().first()?.value()).ok()?;
        (entry.state == NodeState::Removed).then_some(())
    })
    .await?;
    let three = placement(&c, &[0, 1, 2]);
    wait_for("every key on exactly its owners of the 3 left", Duration::from_secs(60), || async {
        let have = copies(&c, &[0, 1, 2], "evict", &keys).await.ok()?;
        misplaced(&have, &three, "evict", 3).is_empty().then_some(())
    })
    .await?;
    for (i, k) in keys.iter().enumerate().step_by(11) {
        let got = s3.get_object().bucket("evict").key(k).send().await?;
        assert_eq!(body_bytes(got).await, body(i));
    }
    Ok(())
}

/// Each scrub pass removes blob files nothing references and staging leftovers that are old
/// enough not to be writes in flight (an hour), and keeps every referenced blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreferenced_files_are_swept() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions { gateways: 1, scrub_interval_secs: 1, ..ClusterOptions::default() }).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("sweep").send().await?;
    s3.put_object().bucket("sweep").key("kept").body(bs(b"still here")).send().await?;
    let dir = &c.blobds[0].data_dir;
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let make = |path: std::path::PathBuf, old: bool| -> anyhow::Result<std::path::PathBuf> {
        let f = std::fs::File::create(&path)?;
        std::io::Write::write_all(&mut &f, b"orphan")?;
        if old {
            f.set_modified(two_hours_ago)?;
        }
        Ok(path)
    };
    let old_blob = make(dir.join("blobs/ab/ab0000000000000000000000000000ff"), true)?;
    let young_blob = make(dir.join("blobs/cd/cd0000000000000000000000000000ff"), false)?;
    let old_staging = make(dir.join("staging/0000000000000000000000000000beef"), true)?;
    wait_for("old orphans removed", Duration::from_secs(30), || async {
        (!old_blob.exists() && !old_staging.exists()).then_some(())
    })
    .await?;
    assert!(young_blob.exists(), "a young file may be a write in flight");
    let copy = crate::cluster::copy_on(&c, 0, "sweep", "kept").await?.expect("the referenced blob");
    assert_eq!(copy.1, b"still here".to_vec());
    Ok(())
}

/// The uploads blobd `i` holds in `bucket` (in progress): upload id -> part numbers.
async fn uploads_on(c: &Cluster, i: usize, bucket: &str) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
    let mut cl = c.blob_client(i).await?;
    let listed = cl
        .list_uploads(ListUploadsRequest { bucket: bucket.into(), limit: 10_000, ..Default::default() })
        .await?
        .into_inner();
    let mut out = BTreeMap::new();
    for u in listed.uploads {
        let got = cl
            .get_upload(GetUploadRequest {
                bucket: bucket.into(),
                key: u.key.clone(),
                upload_id: u.upload_id.clone(),
                completed: false,
            })
            .await?
            .into_inner();
        out.insert(u.upload_id, got.parts.iter().map(|p| p.part_number).collect());
    }
    Ok(out)
}

async fn upload_part(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    n: i32,
    bytes: &[u8],
) -> anyhow::Result<CompletedPart> {
    let out = s3
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(n)
        .body(bs(bytes))
        .send()
        .await
        .with_context(|| format!("part {n} of {key}"))?;
    Ok(CompletedPart::builder().part_number(n).set_e_tag(out.e_tag).build())
}

/// CompleteMultipartUpload, retried while the gateway answers 503 (fewer than a write
/// quorum of nodes hold every part yet: anti-entropy is still moving them).
async fn complete(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
) -> anyhow::Result<()> {
    let done = wait_for("a complete that is not 503", Duration::from_secs(60), || {
        let req = s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.clone())).build());
        async move {
            match req.send().await {
                Ok(_) => Some(Ok(())),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 503) => None,
                Err(e) => Some(Err(e)),
            }
        }
    })
    .await?;
    done.with_context(|| format!("complete {key}"))?;
    Ok(())
}

/// Multipart uploads in progress while the cluster grows 3 -> 5: parts uploaded after the
/// change land (the gateway follows an upload its key's new replicas do not know yet, and
/// anti-entropy hands the earlier parts over), every upload completes into the right
/// bytes, an upload aborted after the change is gone everywhere, and in the end every
/// object sits on exactly its 3 owners and no node holds an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_uploads_in_progress_follow_a_layout_change() -> anyhow::Result<()> {
    const UPLOADS: usize = 30;
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        min_part_size: 1,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("mpu-grow").send().await?;
    let keys: Vec<String> = (0..UPLOADS).map(|i| format!("big/{i:02}")).collect();
    let part = |i: usize, n: usize| pattern(1000 + 37 * n, (i * 10 + n) as u64);
    let mut uploads = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let id = s3.create_multipart_upload().bucket("mpu-grow").key(key).send().await?.upload_id.context("id")?;
        let mut parts = Vec::new();
        for n in 1..=2 {
            parts.push(upload_part(&s3, "mpu-grow", key, &id, n as i32, &part(i, n)).await?);
        }
        uploads.push((id, parts));
    }

    c.add_blobd().await?;
    c.add_blobd().await?;
    c.wait_alive(5).await?;
    let five = placement(&c, &[0, 1, 2, 3, 4]);
    let (new3, new4) = (c.blobds[3].node_id.clone(), c.blobds[4].node_id.clone());
    let moved_two = keys
        .iter()
        .filter(|k| {
            let owners: Vec<String> = replicas(&five, "mpu-grow", k, 3).iter().map(|n| n.id.clone()).collect();
            owners.contains(&new3) && owners.contains(&new4)
        })
        .count();
    assert!(moved_two > 0, "some key must get two new owners (a write quorum that never saw its upload)");

    // The last upload is aborted; the others get a third part and complete.
    let (abort_id, _) = uploads.pop().context("uploads")?;
    s3.abort_multipart_upload().bucket("mpu-grow").key(&keys[UPLOADS - 1]).upload_id(&abort_id).send().await?;
    for (i, (id, mut parts)) in uploads.into_iter().enumerate() {
        parts.push(upload_part(&s3, "mpu-grow", &keys[i], &id, 3, &part(i, 3)).await?);
        complete(&s3, "mpu-grow", &keys[i], &id, parts).await?;
        let got = s3.get_object().bucket("mpu-grow").key(&keys[i]).send().await?;
        let want: Vec<u8> = (1..=3).flat_map(|n| part(i, n)).collect();
        assert_eq!(body_bytes(got).await, want, "{}", keys[i]);
    }

    let done: Vec<String> = keys[..UPLOADS - 1].to_vec();
    wait_for(
        "completed objects on exactly their owners, no upload left anywhere",
        Duration::from_secs(120),
        || async {
            let have = copies(&c, &[0, 1, 2, 3, 4], "mpu-grow", &done).await.ok()?;
            if !misplaced(&have, &five, "mpu-grow", 3).is_empty() {
                return None;
            }
            for i in 0..5 {
                if !uploads_on(&c, i, "mpu-grow").await.ok()?.is_empty() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    let listed = s3.list_multipart_uploads().bucket("mpu-grow").send().await?;
    assert!(listed.uploads().is_empty(), "uploads still listed: {:?}", listed.uploads());
    let err = s3.get_object().bucket("mpu-grow").key(&keys[UPLOADS - 1]).send().await.expect_err("aborted");
    assert!(format!("{err:?}").contains("NoSuchKey"), "{err:?}");
    Ok(())
}

/// A replica that was down while a part was uploaded, an upload completed and another
/// aborted: after it comes back, anti-entropy gives it the part (so the upload completes
/// with another replica down), and it ends its copies of the completed and the aborted
/// uploads instead of keeping or pushing them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_missed_multipart_writes_catches_up() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterOptions {
        gateways: 1,
        sync_interval_secs: 1,
        min_part_size: 1,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("mpu-ae").send().await?;
    let mut ids = Vec::new();
    let mut firsts = Vec::new();
    for key in ["open", "completed", "aborted"] {
        let id = s3.create_multipart_upload().bucket("mpu-ae").key(key).send().await?.upload_id.context("id")?;
        firsts.push(upload_part(&s3, "mpu-ae", key, &id, 1, &pattern(3000, 1)).await?);
        ids.push(id);
    }
    c.stop_blobd(2).await?;
    let second = upload_part(&s3, "mpu-ae", "open", &ids[0], 2, &pattern(2000, 2)).await?;
    complete(&s3, "mpu-ae", "completed", &ids[1], vec![firsts[1].clone()]).await?;
    s3.abort_multipart_upload().bucket("mpu-ae").key("aborted").upload_id(&ids[2]).send().await?;
    c.start_blobd(2).await?;
    c.wait_alive(3).await?;

    let want: BTreeMap<String, Vec<u32>> = [(ids[0].clone(), vec![1, 2])].into();
    wait_for("blobd 2 holds the part it missed and only the open upload", Duration::from_secs(60), || async {
        (uploads_on(&c, 2, "mpu-ae").await.ok()? == want).then_some(())
    })
    .await?;
    for i in 0..2 {
        assert_eq!(uploads_on(&c, i, "mpu-ae").await?, want, "blobd {i}");
    }
    // With blobd 0 down, blobd 1 and 2 are a write quorum that holds every part.
    c.stop_blobd(0).await?;
    complete(&s3, "mpu-ae", "open", &ids[0], vec![firsts[0].clone(), second]).await?;
    let got = s3.get_object().bucket("mpu-ae").key("open").send().await?;
    let want: Vec<u8> = pattern(3000, 1).into_iter().chain(pattern(2000, 2)).collect();
    assert_eq!(body_bytes(got).await, want);
    Ok(())
}

/// 4 blobd (RF 3, a sync cycle every second, the given tombstone grace), one gateway, and
/// `k/00`..`k/59` written to `bucket` (bodies `body(i)`).
async fn four_nodes_with_60_keys(bucket: &str, grace_secs: u64) -> anyhow::Result<(Cluster, Vec<String>)> {
    let c = Cluster::start(ClusterOptions {
        blobds: 4,
        gateways: 1,
        sync_interval_secs: 1,
        tombstone_grace_secs: grace_secs,
        ..ClusterOptions::default()
    })
    .await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket(bucket).send().await?;
    let keys: Vec<String> = (0..60).map(|i| format!("k/{i:02}")).collect();
    for (i, k) in keys.iter().enumerate() {
        s3.put_object().bucket(bucket).key(k).body(bs(&body(i))).send().await?;
    }
    Ok((c, keys))
}

async fn node_stats(c: &Cluster, i: usize) -> anyhow::Result<NodeStatsResponse> {
    Ok(c.blob_client(i).await?.node_stats(NodeStatsRequest {}).await?.into_inner())
}

/// A node removed from the layout while it was down comes back after the tombstones of
/// keys it held were collected. Without a guard its handoff would push those keys to
/// owners that no longer hold them (and a gateway reading every node would serve them):
/// deletes would come back. It starts quarantined (serves none of its copies), reconciles
/// with the up-to-date nodes (drops what none of them holds), then hands off the rest; the
/// deleted keys stay deleted throughout, the others stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_back_after_the_tombstone_grace_does_not_resurrect_deletes() -> anyhow::Result<()> {
    let (mut c, keys) = four_nodes_with_60_keys("back", 2).await?;
    let s3 = c.s3(0);
    wait_for("blobd 3 to complete a sync cycle", Duration::from_secs(30), || async {
        (node_stats(&c, 3).await.ok()?.last_synced_ms > 0).then_some(())
    })
    .await?;
    let on3: Vec<String> = held(&c, 3, "back", &keys).await?.into_keys().collect();
    c.stop_blobd(3).await?;
    c.set_node(3, |n| n.state = NodeState::Removed).await?;
    let deleted: Vec<String> = on3.iter().step_by(2).cloned().collect();
    assert!(deleted.len() >= 10, "blobd 3 held {} keys", on3.len());
    for k in &deleted {
        s3.delete_object().bucket("back").key(k).send().await?;
    }
    let kept: Vec<String> = keys.iter().filter(|k| !deleted.contains(k)).cloned().collect();
    let three = placement(&c, &[0, 1, 2]);
    wait_for("the tombstones collected, every other key on its 3 owners", Duration::from_secs(60), || async {
        for i in 0..3 {
            if !held(&c, i, "back", &deleted).await.ok()?.is_empty() {
                return None;
            }
        }
        let have = copies(&c, &[0, 1, 2], "back", &kept).await.ok()?;
        misplaced(&have, &three, "back", 3).is_empty().then_some(())
    })
    .await?;

    // Back, still `removed`, with its old copies. Every read of a deleted key must miss,
    // from its start until it has reconciled and handed off everything.
    c.start_blobd(3).await?;
    wait_for("blobd 3 reconciled and handed off (holds nothing)", Duration::from_secs(60), || async {
        for k in &deleted {
            let r = s3.get_object().bucket("back").key(k).send().await;
            assert!(r.is_err(), "{k} was deleted, and read back while blobd 3 returned");
        }
        let s = node_stats(&c, 3).await.ok()?;
        (!s.quarantined && s.last_synced_ms > 0 && held(&c, 3, "back", &keys).await.ok()?.is_empty()).then_some(())
    })
    .await?;
    for i in 0..4 {
        assert!(held(&c, i, "back", &deleted).await?.is_empty(), "blobd {i} holds a deleted key");
    }
    for k in &deleted {
        assert_eq!(crate::err_code(s3.get_object().bucket("back").key(k).send().await), "NoSuchKey", "{k}");
    }
    for (i, k) in keys.iter().enumerate().filter(|(_, k)| !deleted.contains(k)) {
        let got = s3.get_object().bucket("back").key(k).send().await?;
        assert_eq!(body_bytes(got).await, body(i), "{k}");
    }
    Ok(())
}

/// A whole cluster (4 blobd, RF 3) powered off longer than the tombstone grace: every node
/// comes back quarantined, and none may drop a key another node holds (a node that
/// reconciled first must not become the only reference of the next ones: that cascade
/// would drop every key it does not own). Every object is readable afterwards and still
/// has exactly 3 copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_back_after_the_tombstone_grace_loses_nothing() -> anyhow::Result<()> {
    let (mut c, keys) = four_nodes_with_60_keys("off", 1).await?;
    let s3 = c.s3(0);
    let mut last = 0;
    for i in 0..4 {
        let s = wait_for("a completed sync cycle", Duration::from_secs(30), || async {
            let s = node_stats(&c, i).await.ok()?;
            (s.last_synced_ms > 0).then_some(s)
        })
        .await?;
        last = last.max(s.last_synced_ms);
    }
    for i in 0..4 {
        c.stop_blobd(i).await?;
    }
    // Off for longer than the grace (the clock is the condition).
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
    wait_for("the grace to pass", Duration::from_secs(10), || async { (now_ms().ok()? > last + 1500).then_some(()) })
        .await?;
    for i in 0..4 {
        c.start_blobd(i).await?;
    }
    c.wait_alive(4).await?;
    wait_for("every node out of quarantine", Duration::from_secs(60), || async {
        for i in 0..4 {
            if node_stats(&c, i).await.ok()?.quarantined {
                return None;
            }
        }
        Some(())
    })
    .await?;
    let four = placement(&c, &[0, 1, 2, 3]);
    let have = copies(&c, &[0, 1, 2, 3], "off", &keys).await?;
    assert_eq!(misplaced(&have, &four, "off", 3), Vec::<String>::new(), "every key still on its 3 owners");
    for (i, k) in keys.iter().enumerate() {
        let got = s3.get_object().bucket("off").key(k).send().await?;
        assert_eq!(body_bytes(got).await, body(i), "{k}");
    }
    Ok(())
}

/// The replication factor is the cluster's, in metad (`cluster/config`): the first blobd
/// writes it from its setting; a gateway configured otherwise follows the stored value;
/// lowering it to 2 leaves every object on exactly its 2 owners (anti-entropy drops the
/// third copies), raising it to 3 gives every object its third copy, and every object reads
/// back intact throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_replication_factor_is_the_clusters_and_can_change() -> anyhow::Result<()> {
    use aether_common::catalog::{ClusterConfig, Keys};
    // W = all: a put returns once every replica the gateway chose holds it, so its copies
    // can be counted right away (before anti-entropy could add any).
    let mut c = Cluster::start(ClusterOptions {
        blobds: 4,
        gateways: 1,
        sync_interval_secs: 1,
        write_quorum: aether_common::config::Quorum::All,
        ..ClusterOptions::default()
    })
    .await?;
    let key = Keys::default().cluster_config();
    let mut etcd = c.etcd().await?;
    let stored = etcd.get(key.as_str(), None).await?;
    let stored = stored.kvs().first().and_then(|kv| ClusterConfig::parse(kv.value()));
    assert_eq!(stored, Some(ClusterConfig { replication_factor: 3 }), "written by the first blobd");
    // A gateway configured with RF 1 follows the cluster's 3.
    c.opts.replication_factor = 1;
    let gw = c.start_gateway().await?;
    let s3 = c.s3(gw);
    s3.create_bucket().bucket("rfac").send().await?;
    let keys: Vec<String> = (0..60).map(|i| format!("k/{i:02}")).collect();
    let all = [0, 1, 2, 3];
    let four = placement(&c, &all);
    for (i, k) in keys.iter().enumerate() {
        s3.put_object().bucket("rfac").key(k).body(bs(&body(i))).send().await?;
        if i < 3 {
            let have = copies(&c, &all, "rfac", &keys[i..=i]).await?;
            assert_eq!(misplaced(&have, &four, "rfac", 3), Vec::<String>::new(), "{k} written to its 3 owners");
        }
    }

    for rf in [2, 3] {
        etcd.put(key.as_str(), serde_json::to_vec(&ClusterConfig { replication_factor: rf })?, None).await?;
        wait_for(&format!("every key on exactly its {rf} owners"), Duration::from_secs(60), || async {
            let have = copies(&c, &all, "rfac", &keys).await.ok()?;
            misplaced(&have, &four, "rfac", rf).is_empty().then_some(())
        })
        .await?;
        for (i, k) in keys.iter().enumerate() {
            let got = c.s3(0).get_object().bucket("rfac").key(k).send().await?;
            assert_eq!(body_bytes(got).await, body(i), "{k} at rf {rf}");
        }
    }
    c.stop_all().await
}
