//! Reaping abandoned multipart uploads (opt-in, `mpu_reap_age_secs`, the seed's
//! `AETHER_MPU_REAP_AGE`): an upload initiated longer ago than the age and with no part
//! uploaded within it is aborted here, its parts' blobs unlinked. Every replica of an
//! upload reaps its own copy by the same rule, so they agree without talking.

use std::sync::Arc;
use std::time::Duration;

use aether_common::shutdown::Shutdown;

use crate::error::{BlobdError, Result};
use crate::service::Store;

/// Uploads looked at per index query.
const PAGE: u32 = 500;
/// Pages per sweep at most (a sweep that does not finish resumes at the next).
const MAX_PAGES: usize = 2_000;

pub async fn run(store: Arc<Store>, age: Duration, stop: Shutdown) {
    // Often enough that an upload goes at most a quarter of the age late.
    let every = (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    tracing::info!(age_secs = age.as_secs(), "reaping multipart uploads idle longer than the age");
    loop {
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
        match sweep(&store, age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "reaped abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "multipart reaping failed; retrying at the next sweep"),
        }
    }
}

/// One pass over the uploads; how many were aborted.
async fn sweep(store: &Store, age: Duration) -> Result<usize> {
    let cutoff = crate::index::now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    let mut after = String::new();
    let mut reaped = 0;
    for _ in 0..MAX_PAGES {
        let (stale, next) = store.index.stale_uploads(cutoff, &after, PAGE).await?;
        for (bucket, key, upload_id) in stale {
            match store.index.abort_upload(&bucket, &key, &upload_id).await {
                Ok(blobs) => {
                    tracing::debug!(%bucket, %key, %upload_id, parts = blobs.len(), "reaping multipart upload");
                    store.dir.unlink(blobs).await;
                    metrics::counter!("blobd_mpu_reaped_total").increment(1);
                    reaped += 1;
                }
                // Completed or aborted since the query.
                Err(BlobdError::NoSuchUpload) => {}
                Err(e) => return Err(e),
            }
        }
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    Ok(reaped)
}
