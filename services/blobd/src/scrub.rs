//! The scrub: a background walk over every stored blob, reading each block against its
//! checksum at a bounded rate (`scrub_bytes_per_sec`), one full pass every
//! `scrub_interval`. A blob that fails (or is missing while the index still references
//! it) makes its key a suspect; the sync loop replaces the copy with a peer's. Each pass
//! starts by removing files nothing references (see `BlobDir::sweep`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_common::shutdown::Shutdown;

use crate::blocks::{BlobFile, is_bitrot};
use crate::error::Result;
use crate::service::Store;
use crate::sync::Throttle;

pub async fn run(store: Arc<Store>, interval: Duration, bytes_per_sec: u64, orphan_age: Duration, stop: Shutdown) {
    metrics::counter!("blobd_scrub_bytes_total").increment(0);
    metrics::counter!("blobd_orphans_removed_total").increment(0);
    metrics::counter!("blobd_bitrot_detected_total").increment(0);
    loop {
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let started = Instant::now();
        match sweep(&store, orphan_age).await {
            Ok((0, 0)) => {}
            Ok((blobs, staging)) => {
                metrics::counter!("blobd_orphans_removed_total").increment((blobs + staging) as u64);
                tracing::info!(blobs, staging, "removed files nothing references");
            }
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
        }
        let res = tokio::select! {
            () = stop.wait() => return,
            r = pass(&store, bytes_per_sec) => r,
        };
        match res {
            Ok((blobs, bytes, bad)) => {
                metrics::counter!("blobd_scrub_passes_total").increment(1);
                let level_info = bad > 0;
                if level_info {
                    tracing::warn!(
                        blobs,
                        bytes,
                        bad,
                        secs = started.elapsed().as_secs_f64(),
                        "scrub pass found corrupt blobs"
                    );
                } else {
                    tracing::debug!(blobs, bytes, secs = started.elapsed().as_secs_f64(), "scrub pass clean");
                }
            }
            Err(e) => tracing::warn!(error = %e, "scrub pass failed; retrying at the next"),
        }
    }
}

/// Remove unreferenced blob files and staging leftovers older than `min_age`.
async fn sweep(store: &Arc<Store>, min_age: Duration) -> Result<(usize, usize)> {
    let referenced = store.index.referenced_blobs().await?;
    let dir = store.dir.clone();
    tokio::task::spawn_blocking(move || dir.sweep(&referenced, min_age)).await?
}

/// One pass: (blobs checked, bytes read, keys found corrupt).
async fn pass(store: &Arc<Store>, bytes_per_sec: u64) -> Result<(u64, u64, u64)> {
    let mut throttle = Throttle::new(Some(bytes_per_sec));
    let (mut blobs, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    for bucket in store.index.buckets().await? {
        let mut rows = store.index.rows(&bucket, None);
        while let Some(r) = rows.next().await? {
            if r.tombstone {
                continue;
            }
            let Some(obj) = store.index.get_object(&bucket, &r.key).await? else { continue };
            if obj.tombstone || obj.ver != r.ver {
                continue;
            }
            for (id, size) in obj.blobs.iter().zip(obj.blob_sizes()) {
                let path = store.dir.blob_path(id);
                let checked =
                    tokio::task::spawn_blocking(move || BlobFile::new(std::fs::File::open(path)?, size)?.check_all())
                        .await?;
                blobs += 1;
                match checked {
                    Ok(n) => {
                        bytes += n;
                        metrics::counter!("blobd_scrub_bytes_total").increment(n);
                        throttle.admit(n).await;
                    }
                    Err(e) if is_bitrot(&e) || e.kind() == std::io::ErrorKind::NotFound => {
                        // A missing file may be an overwrite that unlinked it just now.
                        let current = store.index.get_object(&bucket, &r.key).await?;
                        if current.is_some_and(|c| c.ver == obj.ver && c.blobs.contains(id)) {
                            tracing::error!(bucket, key = %r.key, blob = %id, error = %e, "scrub: corrupt blob");
                            store.suspect(&bucket, &r.key);
                            bad += 1;
                        }
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok((blobs, bytes, bad))
}
