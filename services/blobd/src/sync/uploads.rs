//! Multipart state in anti-entropy and handoff.
//!
//! Uploads in progress are few and short-lived next to objects, so they are not folded
//! into the digest tree: each cycle, a daemon asks every live co-owner of each upload it
//! holds what that peer holds of it (`Uploads`, by upload id), and
//!
//! - a peer that *ended* it (completed or aborted there: `ended_uploads`, kept for the
//!   tombstone grace) makes this daemon end its copy too (a replica that missed the complete or the
//!   abort must not keep, or push back, a dead upload);
//! - a peer that lacks it gets it (`CreateUpload` with the same meta);
//! - a peer that lacks a part, or holds an older different copy of a part number, gets the
//!   local part (`PutPart` with the recorded time kept, body checked block by block and
//!   against its MD5, the part's ETag).
//!
//! An upload of a key this daemon no longer owns is handed off like an object: sent to the
//! first live owner when no owner holds every local part, and dropped here (without an
//! `ended_uploads` row: the upload goes on elsewhere) once every owner does.

use std::collections::{BTreeMap, HashMap};

use aether_common::placement::object_digest;
use aether_proto::blob::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Body, Client, Cycle, HANDOFF_BATCH, body_timeout, pump, rpc};
use crate::error::{BlobdError, Result};
use crate::service::Store;

/// Uploads read from the local index per query.
const LOCAL_PAGE: u32 = 256;
/// Uploads asked about per `Uploads` call: up to 10,000 parts each at ~80 bytes keeps an
/// answer far below the 64 MiB message limit.
const ASK_BATCH: usize = 32;

/// Serving side: the asked uploads as this daemon knows them.
pub async fn uploads(store: &Store, req: pb::UploadsRequest) -> Result<pb::UploadsResponse> {
    if req.upload_ids.len() > HANDOFF_BATCH {
        return Err(BlobdError::InvalidArgument(format!("at most {HANDOFF_BATCH} upload ids")));
    }
    Ok(pb::UploadsResponse { uploads: store.index.uploads_by_id(&req.bucket, &req.upload_ids).await? })
}

/// What a peer holds of one upload, compared with the local copy.
enum PeerCopy<'a> {
    Ended,
    Missing,
    /// Holds it; the local parts it lacks (or holds older and different).
    Lacks(Vec<&'a pb::UploadPart>),
}

fn compare<'a>(mine: &'a pb::SyncUpload, theirs: Option<&pb::SyncUpload>) -> PeerCopy<'a> {
    let Some(theirs) = theirs else { return PeerCopy::Missing };
    if theirs.ended {
        return PeerCopy::Ended;
    }
    let held: HashMap<u32, &pb::UploadPart> = theirs.parts.iter().map(|p| (p.part_number, p)).collect();
    PeerCopy::Lacks(
        mine.parts
            .iter()
            .filter(|p| match held.get(&p.part_number) {
                None => true,
                Some(t) => t.etag != p.etag && t.last_modified_ms < p.last_modified_ms,
            })
            .collect(),
    )
}

impl Cycle<'_> {
    /// The upload half of a bucket's cycle (see the module doc).
    pub(super) async fn uploads(&mut self, bucket: &str) {
        let mut live: Vec<pb::SyncUpload> = Vec::new();
        let mut after = String::new();
        loop {
            match self.store.index.sync_uploads(bucket, &after, LOCAL_PAGE).await {
                Ok((page, next)) => {
                    live.extend(page.into_iter().filter(|u| !u.ended));
                    match next {
                        Some(n) => after = n,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "cannot read local uploads");
                    self.stats.errors += 1;
                    return;
                }
            }
        }
        if live.is_empty() {
            return;
        }
        let me = self.me().to_string();
        // Per live peer: the uploads both own (exchange); and those this daemon does not own.
        let mut shared: BTreeMap<String, Vec<&pb::SyncUpload>> = BTreeMap::new();
        let mut foreign: Vec<(&pb::SyncUpload, Vec<String>)> = Vec::new();
        for u in &live {
            let owners: Vec<String> =
                self.scope.owners(&object_digest(bucket, &u.key)).into_iter().map(str::to_string).collect();
            if owners.contains(&me) {
                for o in owners.iter().filter(|o| **o != me && self.alive(o)) {
                    shared.entry(o.clone()).or_default().push(u);
                }
            } else {
                foreign.push((u, owners));
            }
        }
        for (peer, ups) in shared {
            for batch in ups.chunks(ASK_BATCH) {
                if let Err(e) = self.exchange_uploads(bucket, &peer, batch).await {
                    tracing::warn!(bucket, peer, error = %e, "upload exchange failed");
                    self.stats.errors += 1;
                }
            }
        }
        for batch in foreign.chunks(ASK_BATCH) {
            self.hand_off_uploads(bucket, batch).await;
        }
    }

    async fn peer_uploads(
        &mut self,
        bucket: &str,
        peer: &str,
        ids: Vec<String>,
    ) -> Result<HashMap<String, pb::SyncUpload>> {
        let mut client = self.client(peer)?;
        let resp = rpc(client.uploads(pb::UploadsRequest { bucket: bucket.to_string(), upload_ids: ids })).await?;
        self.count_digest(prost::Message::encoded_len(&resp));
        Ok(resp.uploads.into_iter().map(|u| (u.upload_id.clone(), u)).collect())
    }

    async fn exchange_uploads(&mut self, bucket: &str, peer: &str, batch: &[&pb::SyncUpload]) -> Result<()> {
        let theirs = self.peer_uploads(bucket, peer, batch.iter().map(|u| u.upload_id.clone()).collect()).await?;
        let client = self.client(peer)?;
        for u in batch {
            // A failed send is counted and logged there; the next cycle tries again.
            match compare(u, theirs.get(&u.upload_id)) {
                PeerCopy::Ended => self.end_upload(bucket, u).await,
                PeerCopy::Missing => {
                    self.send_upload(client.clone(), bucket, peer, u, true, u.parts.iter().collect()).await;
                }
                PeerCopy::Lacks(parts) if !parts.is_empty() => {
                    self.send_upload(client.clone(), bucket, peer, u, false, parts).await;
                }
                PeerCopy::Lacks(_) => {}
            }
        }
        Ok(())
    }

    async fn hand_off_uploads(&mut self, bucket: &str, batch: &[(&pb::SyncUpload, Vec<String>)]) {
        let mut by_owner: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (u, owners) in batch {
            for o in owners.iter().filter(|o| self.alive(o)) {
                by_owner.entry(o.as_str()).or_default().push(u.upload_id.clone());
            }
        }
        let mut held: HashMap<&str, HashMap<String, pb::SyncUpload>> = HashMap::new();
        for (owner, ids) in by_owner {
            match self.peer_uploads(bucket, owner, ids).await {
                Ok(h) => {
                    held.insert(owner, h);
                }
                Err(e) => {
                    tracing::warn!(bucket, owner, error = %e, "cannot ask an owner about uploads");
                    self.stats.errors += 1;
                }
            }
        }
        for (u, owners) in batch {
            let copies: Vec<(&str, PeerCopy)> = owners
                .iter()
                .filter_map(|o| held.get(o.as_str()).map(|h| (o.as_str(), compare(u, h.get(&u.upload_id)))))
                .collect();
            if copies.iter().any(|(_, c)| matches!(c, PeerCopy::Ended)) {
                self.end_upload(bucket, u).await;
                continue;
            }
            let complete = |c: &PeerCopy| matches!(c, PeerCopy::Lacks(p) if p.is_empty());
            let mut holders = copies.iter().filter(|(_, c)| complete(c)).count();
            // No owner holds every local part: send them to the first owner (in placement
            // order) that takes them; anti-entropy among the owners does the rest.
            if holders == 0 {
                for (owner, copy) in &copies {
                    let Ok(client) = self.client(owner) else { continue };
                    let (create, parts) = match copy {
                        PeerCopy::Lacks(p) => (false, p.clone()),
                        _ => (true, u.parts.iter().collect()),
                    };
                    if self.send_upload(client, bucket, owner, u, create, parts).await {
                        holders += 1;
                        break;
                    }
                }
            }
            if owners.is_empty() || holders < owners.len() || copies.len() < owners.len() {
                self.stats.pending_handoff += 1;
                continue;
            }
            let expect: Vec<(u32, &str)> = u.parts.iter().map(|p| (p.part_number, p.etag.as_str())).collect();
            match self.store.index.drop_upload(bucket, &u.key, &u.upload_id, &expect).await {
                Ok(Some(blobs)) => {
                    self.store.dir.unlink(blobs).await;
                    self.stats.handed_off += 1;
                    metrics::counter!("blobd_sync_uploads_handed_off_total").increment(1);
                }
                // A part arrived since the owners were asked: the next cycle hands it off.
                Ok(None) => self.stats.pending_handoff += 1,
                // Completed, aborted or dropped meanwhile.
                Err(BlobdError::NoSuchUpload) => {}
                Err(e) => {
                    tracing::warn!(bucket, upload_id = %u.upload_id, error = %e, "cannot drop a handed-off upload");
                    self.stats.errors += 1;
                }
            }
        }
    }

    /// A peer ended the upload: end the local copy (and remember it ended).
    async fn end_upload(&mut self, bucket: &str, u: &pb::SyncUpload) {
        match self.store.index.abort_upload(bucket, &u.key, &u.upload_id).await {
            Ok(blobs) => {
                self.store.dir.unlink(blobs).await;
                metrics::counter!("blobd_sync_uploads_ended_total").increment(1);
                tracing::info!(bucket, key = %u.key, upload_id = %u.upload_id, "ended an upload a peer completed or aborted");
            }
            Err(BlobdError::NoSuchUpload) => {}
            Err(e) => {
                tracing::warn!(bucket, upload_id = %u.upload_id, error = %e, "cannot end an upload");
                self.stats.errors += 1;
            }
        }
    }

    /// Create the upload on `peer` (when `create`) and send it `parts`; whether all of it
    /// landed.
    async fn send_upload(
        &mut self,
        mut client: Client,
        bucket: &str,
        peer: &str,
        u: &pb::SyncUpload,
        create: bool,
        parts: Vec<&pb::UploadPart>,
    ) -> bool {
        let res: Result<u64> = async {
            if create {
                let (row, _) = self.store.index.get_upload(bucket, &u.key, &u.upload_id).await?;
                let req = pb::CreateUploadRequest { upload_id: u.upload_id.clone(), meta: Some(row.meta) };
                rpc(client.create_upload(req)).await?;
            }
            let mut bytes = 0;
            for p in parts {
                bytes += self.send_part(client.clone(), bucket, u, p).await?;
            }
            Ok(bytes)
        }
        .await;
        match res {
            Ok(bytes) => {
                self.stats.pushed += 1;
                self.stats.pushed_bytes += bytes;
                metrics::counter!("blobd_sync_pushed_total").increment(1);
                metrics::counter!("blobd_sync_pushed_bytes_total").increment(bytes);
                true
            }
            // Ended or dropped here meanwhile: nothing to send.
            Err(BlobdError::NoSuchUpload) => false,
            Err(e) => {
                tracing::warn!(bucket, upload_id = %u.upload_id, peer, error = %e, "upload push failed");
                self.stats.errors += 1;
                false
            }
        }
    }

    /// Stream one local part to `client` (`PutPart`, recorded time kept); the body bytes.
    async fn send_part(&self, mut client: Client, bucket: &str, u: &pb::SyncUpload, p: &pb::UploadPart) -> Result<u64> {
        let (blob, size) =
            self.store.index.part_blob(&u.upload_id, p.part_number).await?.ok_or(BlobdError::NoSuchUpload)?;
        self.throttle.lock().await.admit(size).await;
        let segments = if size == 0 {
            Vec::new()
        } else {
            let path = self.store.dir.blob_path(&blob);
            let file = tokio::task::spawn_blocking(move || {
                crate::blocks::BlobFile::new(std::fs::File::open(path)?, size).map(|f| (f, 0, size))
            })
            .await??;
            vec![file]
        };
        let (tx, rx) = mpsc::channel::<pb::PutPartRequest>(2);
        let header = pb::PartHeader {
            bucket: bucket.to_string(),
            key: u.key.clone(),
            upload_id: u.upload_id.clone(),
            part_number: p.part_number,
            last_modified_ms: p.last_modified_ms,
        };
        let _ = tx.try_send(pb::PutPartRequest { msg: Some(pb::put_part_request::Msg::Header(header)) });
        // The part's ETag is its MD5.
        let body = Body {
            bucket: bucket.to_string(),
            key: u.key.clone(),
            segments,
            expect_md5: Some(p.etag.clone()),
            suspect: false,
        };
        let checksum = p.checksum.clone();
        let reader = pump(
            self.store.clone(),
            body,
            tx,
            |c| pb::PutPartRequest { msg: Some(pb::put_part_request::Msg::Chunk(c)) },
            move |md5_hex| {
                let checksums =
                    if checksum.is_empty() { Default::default() } else { [("part".to_string(), checksum)].into() };
                pb::PutPartRequest {
                    msg: Some(pb::put_part_request::Msg::Commit(pb::PutCommit { size, md5_hex, checksums })),
                }
            },
        );
        let sent = tokio::time::timeout(body_timeout(size), client.put_part(ReceiverStream::new(rx))).await;
        reader.await??;
        sent.map_err(|_| BlobdError::InvalidArgument("PutPart timed out".into()))?.map_err(BlobdError::ClientStream)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u32, etag: &str, at: i64) -> pb::UploadPart {
        pb::UploadPart { part_number: n, etag: etag.into(), size: 1, last_modified_ms: at, checksum: String::new() }
    }

    fn upload(parts: Vec<pb::UploadPart>, ended: bool) -> pb::SyncUpload {
        pb::SyncUpload { key: "k".into(), upload_id: "u".into(), ended, parts }
    }

    #[test]
    fn a_peer_gets_missing_and_newer_parts_only() {
        let mine = upload(vec![part(1, "a", 10), part(2, "b", 20), part(3, "c", 30), part(4, "d", 5)], false);
        let theirs = upload(vec![part(1, "a", 11), part(2, "x", 15), part(4, "y", 50)], false);
        let PeerCopy::Lacks(parts) = compare(&mine, Some(&theirs)) else { panic!("expected Lacks") };
        let numbers: Vec<u32> = parts.iter().map(|p| p.part_number).collect();
        // 1: same ETag; 2: mine newer and different; 3: missing; 4: theirs newer.
        assert_eq!(numbers, vec![2, 3]);
        assert!(matches!(compare(&mine, None), PeerCopy::Missing));
        assert!(matches!(compare(&mine, Some(&upload(Vec::new(), true))), PeerCopy::Ended));
        let PeerCopy::Lacks(none) = compare(&mine, Some(&mine)) else { panic!("expected Lacks") };
        assert!(none.is_empty());
    }
}
