//! Read repair: a quorum read that finds replicas behind (missing the key, or holding an
//! older version) brings them up to the newest version in the background — the body
//! streamed from a replica that holds it and written verbatim (same version, ETag,
//! checksums and parts; the copy's size and MD5 checked by the receiver), or the
//! tombstone. Versions are HLC-ordered, so a repair that races a newer write loses to it.
//!
//! Bounded: at most [`IN_FLIGHT`] repair tasks per gateway, each holding at most two body
//! chunks, one per key at a time; a repair that finds no free slot is skipped (counted;
//! anti-entropy's to do).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aether_proto::blob::v1 as pb;
use md5::Digest as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::replicas::{BlobClient, Replica, Store};

const IN_FLIGHT: usize = 8;
/// One repair's time limit (the body of a large object included).
const REPAIR_TIMEOUT: Duration = Duration::from_secs(300);

static SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(IN_FLIGHT)));
/// Keys being repaired: reads of a hot key that is behind start one repair, not one each.
static REPAIRING: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(Mutex::default);

/// Holds a key in [`REPAIRING`] until dropped.
struct Claim((String, String));

impl Claim {
    fn take(bucket: &str, key: &str) -> Option<Self> {
        let id = (bucket.to_string(), key.to_string());
        // The guard is dropped at the end of this statement: a `Claim` built (and dropped)
        // while it is held would lock again in `drop` and deadlock.
        let claimed = REPAIRING.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
        claimed.then(|| Self(id))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        REPAIRING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

fn count(result: &'static str, n: usize) {
    metrics::counter!("gateway_read_repairs_total", "result" => result).increment(n as u64);
}

/// Make the counters exist (at zero) from the start.
pub fn register_metrics() {
    for result in ["repaired", "superseded", "failed", "skipped"] {
        count(result, 0);
    }
}

/// Bring `stale` up to `newest` (held by `holders`) in the background.
pub fn repair_in_background(store: &Store, newest: &pb::ObjectMeta, holders: &[Replica], stale: &[Replica]) {
    if stale.is_empty() {
        return;
    }
    let Some(claim) = Claim::take(&newest.bucket, &newest.key) else { return };
    let Ok(permit) = SLOTS.clone().try_acquire_owned() else {
        count("skipped", stale.len());
        return;
    };
    let source = holders.iter().find_map(|h| store.client(&h.id, &h.addr).ok());
    let targets: Vec<(String, BlobClient)> =
        stale.iter().filter_map(|r| Some((r.id.clone(), store.client(&r.id, &r.addr).ok()?))).collect();
    let meta = newest.clone();
    // Its own trace: the read that noticed it has already been answered.
    let span = tracing::info_span!(parent: None, "read_repair", bucket = %meta.bucket, key = %meta.key, replicas = targets.len());
    tokio::spawn(
        async move {
            let (_permit, _claim) = (permit, claim);
            for (node, target) in targets {
                let res = tokio::time::timeout(REPAIR_TIMEOUT, repair_one(source.clone(), target, &meta)).await;
                match res {
                    Ok(Ok(true)) => {
                        tracing::info!(node = %node, tombstone = meta.tombstone, "read repair: replica brought up to date");
                        count("repaired", 1);
                    }
                    // The replica already had this version or got a newer one meanwhile.
                    Ok(Ok(false)) => count("superseded", 1),
                    Ok(Err(s)) => {
                        tracing::warn!(node = %node, code = ?s.code(), message = s.message(), "read repair failed");
                        count("failed", 1);
                    }
                    Err(_) => {
                        tracing::warn!(node = %node, "read repair timed out");
                        count("failed", 1);
                    }
                }
            }
        }
        .instrument(span),
    );
}

/// Write `meta`'s version to `target`: its tombstone, or its body copied from `source`.
/// `Ok(applied)`: whether the target took it (false: it held that version or a newer one).
async fn repair_one(
    source: Option<BlobClient>,
    mut target: BlobClient,
    meta: &pb::ObjectMeta,
) -> Result<bool, tonic::Status> {
    if meta.tombstone {
        let req = pb::DeleteRequest {
            bucket: meta.bucket.clone(),
            key: meta.key.clone(),
            version: meta.version.clone(),
            last_modified_ms: meta.last_modified_ms,
        };
        return Ok(target.delete(req).await?.into_inner().applied);
    }
    let mut source = source.ok_or_else(|| tonic::Status::unavailable("no reachable replica holds the version"))?;
    let req = pb::GetRequest {
        bucket: meta.bucket.clone(),
        key: meta.key.clone(),
        expect_version: meta.version.clone(),
        ..Default::default()
    };
    let mut body = source.get(req).await?.into_inner();
    match body.message().await? {
        Some(pb::GetResponse { msg: Some(pb::get_response::Msg::Meta(_)) }) => {}
        _ => return Err(tonic::Status::internal("get stream did not start with meta")),
    }
    let (tx, rx) = mpsc::channel::<pb::PutRequest>(2);
    let header = pb::PutHeader { meta: Some(meta.clone()), verbatim: true, heal: false };
    // The channel is empty: the first send cannot fail for lack of room.
    let _ = tx.try_send(pb::PutRequest { msg: Some(pb::put_request::Msg::Header(header)) });
    let put = tokio::spawn(async move { target.put(ReceiverStream::new(rx)).await }.in_current_span());
    let mut md5 = md5::Md5::new();
    let mut size = 0u64;
    let copied = async {
        while let Some(m) = body.message().await? {
            if let Some(pb::get_response::Msg::Chunk(chunk)) = m.msg {
                md5.update(&chunk);
                size += chunk.len() as u64;
                if tx.send(pb::PutRequest { msg: Some(pb::put_request::Msg::Chunk(chunk)) }).await.is_err() {
                    break; // the target ended its stream: its answer says why
                }
            }
        }
        Ok::<_, tonic::Status>(())
    }
    .await;
    if let Err(e) = copied {
        put.abort();
        return Err(e);
    }
    if size != meta.size {
        // Ending the stream without a commit: the target keeps nothing.
        put.abort();
        return Err(tonic::Status::data_loss(format!("source sent {size} of {} bytes", meta.size)));
    }
    let commit = pb::PutCommit { size, md5_hex: hex::encode(md5.finalize()), checksums: Default::default() };
    let _ = tx.send(pb::PutRequest { msg: Some(pb::put_request::Msg::Commit(commit)) }).await;
    drop(tx);
    let answer = put.await.map_err(|e| tonic::Status::internal(format!("repair task: {e}")))??;
    Ok(answer.into_inner().applied)
}

#[cfg(test)]
mod tests {
    use super::Claim;

    #[test]
    fn a_key_is_claimed_once_until_released() {
        let first = Claim::take("b", "k").expect("first claim");
        // A second claim of the same key is refused (and must neither deadlock nor release
        // the first one's claim).
        assert!(Claim::take("b", "k").is_none());
        assert!(Claim::take("b", "k").is_none());
        let other = Claim::take("b", "other").expect("another key");
        drop(first);
        assert!(Claim::take("b", "k").is_some());
        drop(other);
    }
}
