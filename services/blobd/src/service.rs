//! The `blob.v1.BlobService` gRPC handlers.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aether_common::telemetry::continue_grpc;
use aether_proto::blob::v1::blob_service_server::BlobService;
use aether_proto::blob::v1::{
    AbortUploadRequest, AbortUploadResponse, BucketStatsRequest, BucketStatsResponse, CompleteUploadRequest,
    CreateUploadRequest, CreateUploadResponse, DeleteRequest, FenceOp, GetRequest, GetResponse, GetUploadRequest,
    GetUploadResponse, HeadRequest, ListEntry, ListRequest, ListResponse, ListUploadsRequest, ListUploadsResponse,
    NodeStatsRequest, NodeStatsResponse, ObjectMeta, PutCommit, PutPartRequest, PutPartResponse, PutRequest,
    SetTagsRequest, SetTagsResponse, WriteResponse, get_response, put_part_request, put_request,
};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, field::Empty};

use crate::convert::{Ver, prefix_upper_bound, successor, validate_target};
use crate::error::{BlobdError, Result};
use crate::files::{BlobDir, StagedBlob};
use crate::index::{Applied, Completion, Index, NewObject, ObjRow};

/// Bytes per GetResponse chunk.
pub const READ_CHUNK: usize = 1 << 20;
/// Chunks buffered between the disk reader and the response stream.
const READ_AHEAD: usize = 2;
const DEFAULT_LIST_LIMIT: u32 = 1000;
const MAX_LIST_LIMIT: u32 = 10_000;
const MAX_PART_NUMBER: u32 = 10_000;

#[derive(Debug)]
pub struct Store {
    pub dir: BlobDir,
    pub index: Index,
    pub node_id: String,
    live: AtomicI64,
    live_bytes: AtomicI64,
    /// Keys whose local copy failed a block checksum (read or scrub): the sync loop
    /// replaces each with a good copy from a peer holding the same version.
    suspects: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Back from an absence longer than the tombstone grace, not reconciled yet: its copies
    /// may be of keys deleted (and their tombstones collected) meanwhile, so it serves none
    /// of them (Get / Head answer unavailable, List nothing) and pushes none (see `sync`).
    quarantined: std::sync::atomic::AtomicBool,
    /// When the quarantine began (Unix ms): writes since are not the absence's leftovers.
    quarantined_at: AtomicI64,
}

/// Suspect keys remembered at most (more are found again by the next scrub).
const MAX_SUSPECTS: usize = 10_000;

impl Store {
    /// Remember that `bucket/key`'s local copy is corrupt.
    pub fn suspect(&self, bucket: &str, key: &str) {
        metrics::counter!("blobd_bitrot_detected_total").increment(1);
        tracing::error!(bucket, key, "a blob failed its checksum; the copy will be replaced from a peer");
        self.requeue_suspect(bucket, key);
    }

    /// Put back a suspect key that could not be healed yet (not counted again).
    pub fn requeue_suspect(&self, bucket: &str, key: &str) {
        let mut s = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < MAX_SUSPECTS {
            s.insert((bucket.to_string(), key.to_string()));
        }
    }

    /// The suspect keys, taken (the caller puts back those it could not heal).
    pub fn take_suspects(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.suspects.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect()
    }

    pub async fn new(dir: BlobDir, index: Index, node_id: String) -> Result<Self> {
        let (live, bytes) = index.count_live().await?;
        metrics::gauge!("blobd_objects").set(live as f64);
        metrics::gauge!("blobd_bytes").set(bytes as f64);
        Ok(Self {
            dir,
            index,
            node_id,
            live: AtomicI64::new(live),
            live_bytes: AtomicI64::new(bytes),
            suspects: Default::default(),
            quarantined: Default::default(),
            quarantined_at: AtomicI64::new(0),
        })
    }

    pub fn quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    pub fn quarantined_at_ms(&self) -> i64 {
        self.quarantined_at.load(Ordering::Acquire)
    }

    pub fn set_quarantined(&self, on: bool) {
        if on {
            self.quarantined_at.store(crate::index::now_ms(), Ordering::Release);
        }
        self.quarantined.store(on, Ordering::Release);
        metrics::gauge!("blobd_quarantined").set(if on { 1.0 } else { 0.0 });
    }

    /// Live objects and their bytes (kept current by every applied write).
    pub fn totals(&self) -> (u64, u64) {
        let n = self.live.load(Ordering::Acquire).max(0) as u64;
        let b = self.live_bytes.load(Ordering::Acquire).max(0) as u64;
        (n, b)
    }

    pub(crate) async fn finish_write(&self, applied: Applied) -> WriteResponse {
        if applied.live_delta != 0 {
            let n = self.live.fetch_add(applied.live_delta, Ordering::AcqRel) + applied.live_delta;
            metrics::gauge!("blobd_objects").set(n as f64);
        }
        if applied.bytes_delta != 0 {
            let b = self.live_bytes.fetch_add(applied.bytes_delta, Ordering::AcqRel) + applied.bytes_delta;
            metrics::gauge!("blobd_bytes").set(b as f64);
        }
        self.dir.unlink(applied.unlink).await;
        WriteResponse { applied: applied.applied, current: Some(applied.current.to_wire()) }
    }
}

#[derive(Debug, Clone)]
pub struct BlobSvc {
    store: Arc<Store>,
}

impl BlobSvc {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// A body message of a Put or PutPart stream.
enum Body {
    Chunk(Bytes),
    Commit(PutCommit),
    Unexpected,
}

/// Stream the body into a staging file and place it once the commit matches.
async fn receive_body<T>(
    dir: &BlobDir,
    stream: &mut Streaming<T>,
    classify: impl Fn(T) -> Body,
) -> Result<(StagedBlob, PutCommit)> {
    let mut staged = dir.stage()?;
    let span = tracing::debug_span!("blob.staging_write", bytes = Empty);
    let commit = async {
        loop {
            let msg = stream.message().await.map_err(BlobdError::ClientStream)?;
            match msg.map(&classify) {
                Some(Body::Chunk(c)) => staged.write(c).await?,
                Some(Body::Commit(c)) => return Ok(c),
                Some(Body::Unexpected) => {
                    return Err(BlobdError::InvalidArgument("unexpected message in the body".into()));
                }
                None => return Err(BlobdError::InvalidArgument("stream ended without a commit".into())),
            }
        }
    }
    .instrument(span.clone())
    .await?;
    span.record("bytes", staged.size());
    metrics::counter!("blobd_bytes_written_total").increment(staged.size());
    Ok((staged, commit))
}

/// Run the durable part of a write (fsync, rename, index commit, unlink) to completion
/// even if the client goes away meanwhile: a cancelled handler must never leave the
/// index pointing at a file that its drop guard then removes.
async fn detached<T: Send + 'static>(fut: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(fut.in_current_span()).await?
}

fn new_span(name: &'static str, metadata: &tonic::metadata::MetadataMap, bucket: &str, key: &str) -> tracing::Span {
    let span = match name {
        "blob.put" => tracing::info_span!("blob.put", bucket, key, size = Empty, applied = Empty),
        "blob.get" => tracing::info_span!("blob.get", bucket, key),
        "blob.head" => tracing::info_span!("blob.head", bucket, key),
        "blob.delete" => tracing::info_span!("blob.delete", bucket, key, applied = Empty),
        "blob.list" => tracing::info_span!("blob.list", bucket, prefix = key),
        "blob.bucket_stats" => tracing::info_span!("blob.bucket_stats", bucket),
        _ => tracing::info_span!("blob.multipart", op = name, bucket, key),
    };
    continue_grpc(&span, metadata);
    span
}

fn range_of(req: &GetRequest, size: u64) -> Result<Option<(u64, u64)>> {
    if !req.has_range {
        return Ok(if size == 0 { None } else { Some((0, size - 1)) });
    }
    if req.start > req.end || req.end >= size {
        return Err(BlobdError::OutOfRange);
    }
    Ok(Some((req.start, req.end)))
}

/// One file's share of a ranged read: (file, offset in the body, bytes to read).
pub(crate) type Segment = (crate::blocks::BlobFile, u64, u64);

/// Open the files covering `[start, end]` now, so a concurrent overwrite that unlinks
/// them cannot break the read.
pub(crate) fn open_segments(dir: &BlobDir, row: &ObjRow, start: u64, end: u64) -> std::io::Result<Vec<Segment>> {
    let sizes = row.blob_sizes();
    if sizes.len() != row.blobs.len() {
        return Err(std::io::Error::other("index row: blob count and part sizes differ"));
    }
    let mut out = Vec::new();
    let mut base = 0u64;
    for (id, size) in row.blobs.iter().zip(sizes) {
        let (lo, hi) = (base, base + size); // [lo, hi)
        base = hi;
        if hi <= start || lo > end || size == 0 {
            continue;
        }
        let from = start.max(lo);
        let to = (end + 1).min(hi);
        let file = crate::blocks::BlobFile::new(std::fs::File::open(dir.blob_path(id))?, size)?;
        out.push((file, from - lo, to - from));
    }
    Ok(out)
}

/// Read `segments` of `bucket/key`'s body in order, each block checked against its
/// checksum first, handing every chunk (at most `READ_CHUNK`) to `send`; `Ok(false)` when
/// `send` says the receiver went away. A block that fails its checksum makes the key a
/// suspect (the sync loop replaces the copy from a peer).
pub(crate) async fn read_segments<F, Fut>(
    store: &Store,
    bucket: &str,
    key: &str,
    segments: Vec<Segment>,
    mut send: F,
) -> Result<bool>
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = bool>,
{
    for (file, offset, len) in segments {
        let file = Arc::new(file);
        let (mut pos, end) = (offset, offset + len);
        while pos < end {
            let f = Arc::clone(&file);
            let want = (end - pos).min(READ_CHUNK as u64);
            let buf = match tokio::task::spawn_blocking(move || f.read(pos, want)).await? {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than the index says",
                    );
                    return Err(BlobdError::Io(e));
                }
                Err(e) if crate::blocks::is_bitrot(&e) => {
                    store.suspect(bucket, key);
                    return Err(BlobdError::Bitrot(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            };
            pos += buf.len() as u64;
            metrics::counter!("blobd_bytes_read_total").increment(buf.len() as u64);
            if !send(Bytes::from(buf)).await {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

async fn stream_segments(
    store: Arc<Store>,
    target: (String, String),
    segments: Vec<Segment>,
    tx: mpsc::Sender<Result<GetResponse, Status>>,
) {
    let sender = &tx;
    let read = read_segments(&store, &target.0, &target.1, segments, move |chunk| async move {
        sender.send(Ok(GetResponse { msg: Some(get_response::Msg::Chunk(chunk)) })).await.is_ok()
    })
    .await;
    if let Err(e) = read {
        let _ = tx.send(Err(e.into())).await;
    }
}

impl BlobSvc {
    async fn do_put(&self, mut stream: Streaming<PutRequest>) -> Result<WriteResponse> {
        let first = stream.message().await.map_err(BlobdError::ClientStream)?;
        let Some(PutRequest { msg: Some(put_request::Msg::Header(header)) }) = first else {
            return Err(BlobdError::InvalidArgument("the first message must be the header".into()));
        };
        let verbatim = header.verbatim;
        // Healing replaces a copy of the same version: only a verbatim copy may.
        let heal = header.heal && verbatim;
        let mut meta = header.meta.ok_or_else(|| BlobdError::InvalidArgument("header without meta".into()))?;
        validate_target(&meta.bucket, &meta.key)?;
        let ver = Ver::from_wire(meta.version.as_ref())?;
        let span = tracing::Span::current();
        span.record("bucket", meta.bucket.as_str());
        span.record("key", meta.key.as_str());
        let (staged, commit) = receive_body(&self.store.dir, &mut stream, |m| match m.msg {
            Some(put_request::Msg::Chunk(c)) => Body::Chunk(c),
            Some(put_request::Msg::Commit(c)) => Body::Commit(c),
            _ => Body::Unexpected,
        })
        .await?;
        let store = self.store.clone();
        detached(async move {
            let placed = staged.finish(commit.size, &commit.md5_hex).await?;
            let span = tracing::Span::current();
            span.record("size", placed.size);
            meta.size = placed.size;
            meta.tombstone = false;
            meta.checksums.extend(commit.checksums);
            if !verbatim {
                meta.etag = placed.md5_hex.clone();
                meta.part_sizes.clear();
                meta.part_checksums.clear();
            }
            let (bucket, key) = (meta.bucket.clone(), meta.key.clone());
            let new =
                NewObject { ver, heal, tombstone: false, size: placed.size, blobs: vec![placed.id.clone()], meta };
            let applied = store.index.apply_object(&bucket, &key, new).await?;
            // The index decided; whether kept or listed in `unlink`, the file is accounted for.
            let _ = placed.keep();
            span.record("applied", applied.applied);
            metrics::counter!("blobd_puts_total").increment(1);
            Ok(store.finish_write(applied).await)
        })
        .await
    }

    async fn do_get(&self, req: GetRequest) -> Result<ReceiverStream<Result<GetResponse, Status>>> {
        validate_target(&req.bucket, &req.key)?;
        metrics::counter!("blobd_gets_total").increment(1);
        if self.store.quarantined() {
            return Err(BlobdError::Quarantined);
        }
        // A concurrent overwrite may unlink the files between reading the row and
        // opening them: read the row again (bounded).
        let mut attempt = 0;
        let (row, segments) = loop {
            attempt += 1;
            let row = self.store.index.get_object(&req.bucket, &req.key).await?.ok_or(BlobdError::NotFound)?;
            if let Some(expect) = &req.expect_version
                && (row.ver.hlc != expect.hlc || row.ver.writer != expect.writer)
            {
                return Err(BlobdError::VersionMismatch);
            }
            if row.tombstone || req.meta_only {
                break (row, Vec::new());
            }
            let Some((start, end)) = range_of(&req, row.size)? else { break (row, Vec::new()) };
            let dir = self.store.dir.clone();
            let r2 = row.clone();
            match tokio::task::spawn_blocking(move || open_segments(&dir, &r2, start, end)).await? {
                Ok(segs) => break (row, segs),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => continue,
                Err(e) if crate::blocks::is_bitrot(&e) => {
                    self.store.suspect(&req.bucket, &req.key);
                    return Err(BlobdError::Bitrot(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let mut meta = row.meta;
        meta.version = Some(row.ver.to_wire());
        // The channel is empty: the first send cannot fail for lack of room.
        let _ = tx.try_send(Ok(GetResponse { msg: Some(get_response::Msg::Meta(meta)) }));
        if !segments.is_empty() {
            let target = (req.bucket.clone(), req.key.clone());
            tokio::spawn(stream_segments(self.store.clone(), target, segments, tx).in_current_span());
        }
        Ok(ReceiverStream::new(rx))
    }

    async fn do_list(&self, req: ListRequest) -> Result<ListResponse> {
        if req.bucket.is_empty() {
            return Err(BlobdError::InvalidArgument("bucket is empty".into()));
        }
        if self.store.quarantined() {
            return Ok(ListResponse::default());
        }
        let limit = match req.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        } as usize;
        let prefix = req.prefix.as_bytes();
        let delim = req.delimiter.as_bytes();
        let start_after = req.start_after.as_bytes();
        // Valid UTF-8 never contains 0xFF, so [0xFF] is above every key.
        let upper = prefix_upper_bound(prefix).unwrap_or_else(|| vec![0xFF]);
        let mut lower = prefix.to_vec();
        if !start_after.is_empty() {
            lower = lower.max(successor(start_after));
        }
        let mut entries: Vec<ListEntry> = Vec::new();
        'scan: while entries.len() <= limit && lower < upper {
            let want = (limit + 1 - entries.len()).min(1000);
            let batch = self.store.index.scan(&req.bucket, &lower, &upper, want as i64).await?;
            let full = batch.len() == want;
            for (key, meta) in batch {
                let rest = &key[prefix.len().min(key.len())..];
                let cut = if delim.is_empty() { None } else { find(rest, delim) };
                if let Some(i) = cut {
                    let cp = key[..prefix.len() + i + delim.len()].to_vec();
                    let cp_upper = prefix_upper_bound(&cp).unwrap_or_else(|| vec![0xFF]);
                    // Roll up only prefixes beyond start_after that hold a live key here.
                    if cp.as_slice() > start_after && self.store.index.has_live(&req.bucket, &cp, &cp_upper).await? {
                        let cp = String::from_utf8(cp).map_err(|e| BlobdError::Corrupt(e.to_string()))?;
                        entries.push(ListEntry {
                            meta: Some(ObjectMeta { bucket: req.bucket.clone(), key: cp, ..Default::default() }),
                            is_prefix: true,
                        });
                    }
                    lower = cp_upper; // seek past every key under the rolled-up prefix
                    continue 'scan;
                }
                lower = successor(&key);
                entries.push(ListEntry { meta: Some(meta), is_prefix: false });
                if entries.len() > limit {
                    break 'scan;
                }
            }
            if !full {
                break;
            }
        }
        let truncated = entries.len() > limit;
        entries.truncate(limit);
        Ok(ListResponse { entries, truncated })
    }

    async fn do_put_part(&self, mut stream: Streaming<PutPartRequest>) -> Result<PutPartResponse> {
        let first = stream.message().await.map_err(BlobdError::ClientStream)?;
        let Some(PutPartRequest { msg: Some(put_part_request::Msg::Header(h)) }) = first else {
            return Err(BlobdError::InvalidArgument("the first message must be the header".into()));
        };
        validate_target(&h.bucket, &h.key)?;
        if h.part_number == 0 || h.part_number > MAX_PART_NUMBER {
            return Err(BlobdError::InvalidArgument(format!("part number {} not in 1..=10000", h.part_number)));
        }
        let span = tracing::Span::current();
        span.record("bucket", h.bucket.as_str());
        span.record("key", h.key.as_str());
        self.store.index.check_upload(&h.bucket, &h.key, &h.upload_id).await?;
        let (staged, commit) = receive_body(&self.store.dir, &mut stream, |m| match m.msg {
            Some(put_part_request::Msg::Chunk(c)) => Body::Chunk(c),
            Some(put_part_request::Msg::Commit(c)) => Body::Commit(c),
            _ => Body::Unexpected,
        })
        .await?;
        let store = self.store.clone();
        detached(async move {
            let placed = staged.finish(commit.size, &commit.md5_hex).await?;
            let old = store
                .index
                .put_part(
                    &h.bucket,
                    &h.key,
                    &h.upload_id,
                    h.part_number,
                    &placed.id,
                    placed.size,
                    &placed.md5_hex,
                    // The gateway sends the upload's declared checksum only.
                    commit.checksums.values().next().map(String::as_str).unwrap_or(""),
                    (h.last_modified_ms > 0).then_some(h.last_modified_ms),
                )
                .await?;
            let _ = placed.keep();
            store.dir.unlink(old.into_iter().collect()).await;
            Ok(PutPartResponse {})
        })
        .await
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tonic::async_trait]
impl BlobService for BlobSvc {
    async fn put(&self, request: Request<Streaming<PutRequest>>) -> Result<Response<WriteResponse>, Status> {
        let span = new_span("blob.put", request.metadata(), "", "");
        self.do_put(request.into_inner()).instrument(span).await.map(Response::new).map_err(Into::into)
    }

    type GetStream = ReceiverStream<Result<GetResponse, Status>>;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let span = new_span("blob.get", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        self.do_get(request.into_inner()).instrument(span).await.map(Response::new).map_err(Into::into)
    }

    async fn head(&self, request: Request<HeadRequest>) -> Result<Response<ObjectMeta>, Status> {
        let span = new_span("blob.head", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        let req = request.into_inner();
        async {
            validate_target(&req.bucket, &req.key)?;
            if self.store.quarantined() {
                return Err(BlobdError::Quarantined);
            }
            let row = self.store.index.get_object(&req.bucket, &req.key).await?.ok_or(BlobdError::NotFound)?;
            let mut meta = row.meta;
            meta.version = Some(row.ver.to_wire());
            Ok::<_, BlobdError>(meta)
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<WriteResponse>, Status> {
        let span = new_span("blob.delete", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        let req = request.into_inner();
        let store = self.store.clone();
        detached(async move {
            validate_target(&req.bucket, &req.key)?;
            let ver = Ver::from_wire(req.version.as_ref())?;
            let meta = ObjectMeta {
                bucket: req.bucket.clone(),
                key: req.key.clone(),
                version: Some(ver.to_wire()),
                tombstone: true,
                last_modified_ms: req.last_modified_ms,
                ..Default::default()
            };
            let new = NewObject { ver, heal: false, tombstone: true, size: 0, blobs: Vec::new(), meta };
            let applied = store.index.apply_object(&req.bucket, &req.key, new).await?;
            tracing::Span::current().record("applied", applied.applied);
            Ok(store.finish_write(applied).await)
        })
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let span = new_span("blob.list", request.metadata(), &request.get_ref().bucket, &request.get_ref().prefix);
        self.do_list(request.into_inner()).instrument(span).await.map(Response::new).map_err(Into::into)
    }

    async fn bucket_stats(
        &self,
        request: Request<BucketStatsRequest>,
    ) -> Result<Response<BucketStatsResponse>, Status> {
        let span = new_span("blob.bucket_stats", request.metadata(), &request.get_ref().bucket, "");
        let req = request.into_inner();
        async {
            let (objects, uploads) = match req.fence() {
                FenceOp::FenceNone => self.store.index.stats(&req.bucket).await?,
                op => {
                    let (counts, unlink) = self.store.index.fenced_stats(&req.bucket, req.fence_rev, op).await?;
                    self.store.dir.unlink(unlink).await;
                    counts
                }
            };
            Ok::<_, BlobdError>(BucketStatsResponse { objects, uploads })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn node_stats(&self, _request: Request<NodeStatsRequest>) -> Result<Response<NodeStatsResponse>, Status> {
        let (objects, bytes) = self.store.totals();
        let last_synced_ms =
            self.store.index.state(crate::sync::LAST_SYNCED).await.map_err(Status::from)?.unwrap_or_default();
        Ok(Response::new(NodeStatsResponse {
            node_id: self.store.node_id.clone(),
            objects,
            bytes,
            last_synced_ms,
            quarantined: self.store.quarantined(),
        }))
    }

    async fn create_upload(
        &self,
        request: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        let (b, k) = request.get_ref().meta.as_ref().map(|m| (m.bucket.clone(), m.key.clone())).unwrap_or_default();
        let span = new_span("create_upload", request.metadata(), &b, &k);
        let req = request.into_inner();
        async {
            let meta = req.meta.ok_or_else(|| BlobdError::InvalidArgument("meta is required".into()))?;
            validate_target(&meta.bucket, &meta.key)?;
            if req.upload_id.is_empty() {
                return Err(BlobdError::InvalidArgument("upload_id is empty".into()));
            }
            self.store.index.create_upload(&req.upload_id, &meta).await?;
            Ok(CreateUploadResponse {})
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn put_part(&self, request: Request<Streaming<PutPartRequest>>) -> Result<Response<PutPartResponse>, Status> {
        let span = new_span("put_part", request.metadata(), "", "");
        self.do_put_part(request.into_inner()).instrument(span).await.map(Response::new).map_err(Into::into)
    }

    async fn get_upload(&self, request: Request<GetUploadRequest>) -> Result<Response<GetUploadResponse>, Status> {
        let span = new_span("get_upload", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        let req = request.into_inner();
        async {
            match self.store.index.get_upload(&req.bucket, &req.key, &req.upload_id).await {
                Ok((up, parts)) => Ok(GetUploadResponse { meta: Some(up.meta), parts, completed: None }),
                Err(BlobdError::NoSuchUpload) if req.completed => {
                    match self.store.index.completed_upload(&req.bucket, &req.key, &req.upload_id).await? {
                        Some(c) => Ok(GetUploadResponse { meta: None, parts: Vec::new(), completed: Some(c) }),
                        None => Err(BlobdError::NoSuchUpload),
                    }
                }
                Err(e) => Err(e),
            }
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn complete_upload(
        &self,
        request: Request<CompleteUploadRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let span = new_span("complete_upload", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        let req = request.into_inner();
        let store = self.store.clone();
        detached(async move {
            validate_target(&req.bucket, &req.key)?;
            let ver = Ver::from_wire(req.version.as_ref())?;
            let c = Completion {
                bucket: req.bucket,
                key: req.key,
                upload_id: req.upload_id,
                parts: req.parts,
                ver,
                last_modified_ms: req.last_modified_ms,
                etag: req.etag,
                checksums: req.checksums,
            };
            let applied = store.index.complete_upload(c).await?;
            Ok(store.finish_write(applied).await)
        })
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn list_uploads(
        &self,
        request: Request<ListUploadsRequest>,
    ) -> Result<Response<ListUploadsResponse>, Status> {
        let span = new_span("list_uploads", request.metadata(), &request.get_ref().bucket, &request.get_ref().prefix);
        let r = request.into_inner();
        async {
            let limit = r.limit.clamp(1, 10_000);
            let uploads =
                self.store.index.list_uploads(&r.bucket, &r.prefix, &r.key_marker, &r.upload_id_marker, limit).await?;
            Ok::<_, BlobdError>(ListUploadsResponse { uploads })
        }
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn digest(
        &self,
        request: Request<aether_proto::blob::v1::DigestRequest>,
    ) -> Result<Response<aether_proto::blob::v1::DigestResponse>, Status> {
        let span = new_span("blob.sync_digest", request.metadata(), &request.get_ref().bucket, "");
        crate::sync::digest(&self.store, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(Into::into)
    }

    async fn uploads(
        &self,
        request: Request<aether_proto::blob::v1::UploadsRequest>,
    ) -> Result<Response<aether_proto::blob::v1::UploadsResponse>, Status> {
        let span = new_span("blob.sync_uploads", request.metadata(), &request.get_ref().bucket, "");
        crate::sync::uploads(&self.store, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(Into::into)
    }

    async fn entries(
        &self,
        request: Request<aether_proto::blob::v1::EntriesRequest>,
    ) -> Result<Response<aether_proto::blob::v1::EntriesResponse>, Status> {
        let span = new_span("blob.sync_entries", request.metadata(), &request.get_ref().bucket, "");
        crate::sync::entries(&self.store, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(Into::into)
    }

    async fn versions(
        &self,
        request: Request<aether_proto::blob::v1::VersionsRequest>,
    ) -> Result<Response<aether_proto::blob::v1::VersionsResponse>, Status> {
        let span = new_span("blob.sync_versions", request.metadata(), &request.get_ref().bucket, "");
        crate::sync::versions(&self.store, request.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
            .map_err(Into::into)
    }

    async fn set_tags(&self, request: Request<SetTagsRequest>) -> Result<Response<SetTagsResponse>, Status> {
        let span = new_span("blob.set_tags", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        let req = request.into_inner();
        let store = self.store.clone();
        detached(async move {
            validate_target(&req.bucket, &req.key)?;
            let ver = Ver::from_wire(req.version.as_ref())?;
            let superseded = store.index.set_tags(&req.bucket, &req.key, &ver, req.tags, req.tags_hlc).await?;
            Ok(SetTagsResponse { superseded })
        })
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }

    async fn abort_upload(
        &self,
        request: Request<AbortUploadRequest>,
    ) -> Result<Response<AbortUploadResponse>, Status> {
        let span = new_span("abort_upload", request.metadata(), &request.get_ref().bucket, &request.get_ref().key);
        let req = request.into_inner();
        let store = self.store.clone();
        detached(async move {
            let blobs = store.index.abort_upload(&req.bucket, &req.key, &req.upload_id).await?;
            store.dir.unlink(blobs).await;
            Ok(AbortUploadResponse {})
        })
        .instrument(span)
        .await
        .map(Response::new)
        .map_err(Into::into)
    }
}
