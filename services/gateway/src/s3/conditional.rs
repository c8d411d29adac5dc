//! Conditional writes: `If-None-Match: *` (create only if absent) and `If-Match: <etag>`
//! (replace only that version) on PutObject and CompleteMultipartUpload, atomic across
//! every gateway. The check and the write run under a per-key lock in metad: a key under
//! `locks/` created only if absent, on a lease this gateway keeps alive while it holds it
//! (a gateway that dies lets it go when the lease expires). Of two racing conditional
//! writes, the second either finds the lock held (`409 ConditionalRequestConflict`, S3's
//! answer to a race) or, once it is free, reads the first's write (a read quorum sees
//! every write quorum) and fails its condition (`412`). Unconditional writes do not lock.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use http::HeaderMap;

use super::bucket::metad_error;
use super::{AppState, header_str, newest_live};
use crate::error::S3Error;

/// Lease of a held key lock: how long a lock outlives a gateway that died holding it.
const LOCK_TTL_SECS: i64 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteCondition {
    /// `If-None-Match: *`: the key must have no object.
    Absent,
    /// `If-Match: <etag>`: the key's object must have this ETag.
    Matches(String),
}

/// The write condition a PutObject / CompleteMultipartUpload carries, if any.
pub fn write_condition(headers: &HeaderMap) -> Result<Option<WriteCondition>, S3Error> {
    match (header_str(headers, "if-none-match"), header_str(headers, "if-match")) {
        (None, None) => Ok(None),
        (Some(v), None) if v.trim() == "*" => Ok(Some(WriteCondition::Absent)),
        (Some(_), None) => Err(S3Error::NotImplemented("If-None-Match on a write with a value other than *".into())),
        (None, Some(etag)) => Ok(Some(WriteCondition::Matches(etag.trim().trim_matches('"').to_string()))),
        (Some(_), Some(_)) => Err(S3Error::NotImplemented("If-None-Match together with If-Match on a write".into())),
    }
}

/// A held key lock. `release` lets it go before the answer is sent (so the same client's
/// next write cannot find it still held); dropped unreleased (the request was cancelled),
/// it is let go in the background.
pub struct KeyLock {
    client: etcd_client::Client,
    lease: i64,
    keep_alive: tokio::task::JoinHandle<()>,
    released: bool,
}

impl KeyLock {
    pub async fn release(mut self) {
        self.released = true;
        self.keep_alive.abort();
        if let Err(e) = self.client.lease_revoke(self.lease).await {
            tracing::warn!(error = %e, "could not release a key lock; its lease will expire");
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.keep_alive.abort();
        let (mut client, lease) = (self.client.clone(), self.lease);
        tokio::spawn(async move {
            let _ = client.lease_revoke(lease).await;
        });
    }
}

/// Take the key's lock, or `ConditionalRequestConflict` if another write holds it.
async fn lock(state: &AppState, bucket: &str, key: &str) -> Result<KeyLock, S3Error> {
    let mut client = state.store.catalog.client().map_err(metad_error)?;
    let lease = client.lease_grant(LOCK_TTL_SECS, None).await.map_err(metad_error)?.id();
    let lock_key = state.store.catalog.keys().lock(bucket, key);
    let txn = Txn::new()
        .when([Compare::create_revision(lock_key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(lock_key.as_str(), "locked", Some(PutOptions::new().with_lease(lease)))]);
    let taken = client.txn(txn).await.map(|r| r.succeeded());
    if !matches!(taken, Ok(true)) {
        let mut c = client.clone();
        tokio::spawn(async move {
            let _ = c.lease_revoke(lease).await;
        });
        return match taken {
            Ok(_) => Err(S3Error::ConditionalRequestConflict),
            Err(e) => Err(metad_error(e)),
        };
    }
    let mut keeper_client = client.clone();
    let keep_alive = tokio::spawn(async move {
        let Ok((mut keeper, mut answers)) = keeper_client.lease_keep_alive(lease).await else { return };
        loop {
            tokio::time::sleep(Duration::from_secs((LOCK_TTL_SECS / 3).max(1) as u64)).await;
            if keeper.keep_alive().await.is_err() || !matches!(answers.message().await, Ok(Some(_))) {
                tracing::warn!(lease, "key lock keep-alive failed");
                return;
            }
        }
    });
    Ok(KeyLock { client, lease, keep_alive, released: false })
}

/// Lock the key and check `cond` against its newest version; the lock is held until the
/// caller's write is done. The gateway's clock is moved past the version it read, so the
/// write that follows is newer than it.
pub async fn lock_and_check(
    state: &AppState,
    bucket: &str,
    key: &str,
    cond: &WriteCondition,
) -> Result<KeyLock, S3Error> {
    let held = lock(state, bucket, key).await?;
    let checked = match newest_live(state, bucket, key, false).await {
        Ok(read) => {
            state.store.observe(read.meta.version.as_ref());
            match cond {
                WriteCondition::Absent => Err(S3Error::PreconditionFailed("If-None-Match")),
                WriteCondition::Matches(etag) if etag == "*" || *etag == read.meta.etag => Ok(()),
                WriteCondition::Matches(_) => Err(S3Error::PreconditionFailed("If-Match")),
            }
        }
        Err(S3Error::NoSuchKey) => match cond {
            WriteCondition::Absent => Ok(()),
            WriteCondition::Matches(_) => Err(S3Error::NoSuchKey),
        },
        Err(e) => Err(e),
    };
    match checked {
        Ok(()) => Ok(held),
        Err(e) => {
            // Let go before answering: the client's next write must not find it held.
            held.release().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn conditions_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(write_condition(&h).unwrap(), None);
        h.insert("if-none-match", HeaderValue::from_static("*"));
        assert_eq!(write_condition(&h).unwrap(), Some(WriteCondition::Absent));
        h.insert("if-none-match", HeaderValue::from_static("\"abc\""));
        assert!(matches!(write_condition(&h), Err(S3Error::NotImplemented(_))));
        h.remove("if-none-match");
        h.insert("if-match", HeaderValue::from_static("\"abc\""));
        assert_eq!(write_condition(&h).unwrap(), Some(WriteCondition::Matches("abc".into())));
    }
}
