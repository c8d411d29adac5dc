//! Memory bound of a large object through the in-process cluster. A test binary of its own:
//! it reads the process's peak RSS, which tests running alongside it in one process would
//! inflate.

use aether_tests::{Cluster, ClusterOptions};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_object_streams_with_bounded_memory() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterOptions::default()).await?;
    let s3 = c.s3(0);
    s3.create_bucket().bucket("big").send().await?;
    // 100 MiB from a file on disk (the SDK streams it), hashed on both ends.
    let path = c.root().join("big.bin");
    let mut want = Sha256::new();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for i in 0..100 {
            let chunk = aether_tests::pattern(1 << 20, i);
            want.update(&chunk);
            f.write_all(&chunk)?;
        }
        f.flush()?;
    }
    let want = hex::encode(want.finalize());
    let (hwm_before, _) = aether_tests::rss_kib();
    s3.put_object()
        .bucket("big")
        .key("100mib")
        .body(aws_sdk_s3::primitives::ByteStream::from_path(&path).await?)
        .send()
        .await?;
    let mut got = s3.get_object().bucket("big").key("100mib").send().await?;
    let mut h = Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = got.body.try_next().await? {
        n += chunk.len();
        h.update(&chunk);
    }
    assert_eq!(n, 100 << 20);
    assert_eq!(hex::encode(h.finalize()), want);
    let (hwm_after, rss) = aether_tests::rss_kib();
    println!(
        "100 MiB put+get through gateway+3 blobd in one process: peak RSS {} MiB -> {} MiB (now {} MiB)",
        hwm_before / 1024,
        hwm_after / 1024,
        rss / 1024
    );
    // The whole cluster and the SDK share this process; a buffered object would add >= 100 MiB.
    assert!(hwm_after.saturating_sub(hwm_before) < 80 * 1024, "peak RSS grew by {} KiB", hwm_after - hwm_before);
    Ok(())
}
