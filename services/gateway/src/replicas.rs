//! Placement and fan-out to blobd: which replicas hold a key, streaming writes to all of
//! them at once with a write quorum, quorum reads of object metadata, and unary calls.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aether_common::catalog::NodeState;
use aether_common::config::Quorum;
use aether_common::grpc::ChannelPool;
use aether_common::grpc::ToNode;
use aether_common::hlc::Hlc;
use aether_proto::blob::v1 as pb;
use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use futures::Stream;
use futures::stream::{FuturesUnordered, StreamExt};
use md5::Digest as _;
use pb::blob_service_client::BlobServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::auth::checksum::{ChecksumAlgorithm, Hasher};
use crate::catalog::{Catalog, Snapshot};
use crate::cluster;
use crate::error::S3Error;

pub type BlobClient = BlobServiceClient<InterceptedService<Channel, ToNode>>;

/// Body bytes are forwarded to the replicas in chunks of exactly this size (the last
/// one shorter). 256 KiB rather than 1 MiB: each replica holds about three chunks in
/// flight (queue, gRPC encoder, HTTP/2 send buffer), and with 1 MiB an aws-cli multipart
/// upload (10 parts at once, 3 replicas) peaked at 170 MB RSS; with 256 KiB at 77 MB,
/// and no slower.
pub const CHUNK_SIZE: usize = 256 << 10;
/// Chunks queued per replica before the writer waits (bounded memory per request).
const REPLICA_QUEUE: usize = 1;
/// How long a replica may lag behind a write quorum on one frame before it is dropped
/// from the write.
const STRAGGLER_GRACE: Duration = Duration::from_secs(2);
/// How long a quorum read waits on a replica before also asking the next one.
const HEDGE_AFTER: Duration = Duration::from_millis(500);

/// One replica of a key: its node id, address and whether it holds a live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub addr: String,
    pub alive: bool,
}

/// Compare two versions: (hlc, writer), the newest wins.
pub fn version_key(v: Option<&pb::Version>) -> (u64, &str) {
    v.map(|v| (v.hlc, v.writer.as_str())).unwrap_or((0, ""))
}

/// Order two copies of a key's meta: by version, and of one version by the latest tag
/// change (metadata-only updates keep the version).
pub fn newer(a: &&pb::ObjectMeta, b: &&pb::ObjectMeta) -> std::cmp::Ordering {
    (version_key(a.version.as_ref()), a.tags_hlc).cmp(&(version_key(b.version.as_ref()), b.tags_hlc))
}

/// Everything the handlers need to reach blobd.
pub struct Store {
    pool: ChannelPool,
    pub catalog: Catalog,
    hlc: Hlc,
    gateway_id: String,
    replication_factor: usize,
    write_quorum: Quorum,
    read_quorum: Quorum,
    pub timeout: Duration,
}

impl Store {
    pub fn new(
        catalog: Catalog,
        gateway_id: String,
        replication_factor: usize,
        write_quorum: Quorum,
        read_quorum: Quorum,
        timeout: Duration,
        source_addr: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            pool: ChannelPool::with_source(source_addr),
            catalog,
            hlc: Hlc::new(),
            gateway_id,
            replication_factor: replication_factor.max(1),
            write_quorum,
            read_quorum,
            timeout,
        }
    }

    /// A client for storage node `id` on the pooled channel for its `addr`; its calls carry
    /// the trace context and the node id (a node at a reused address refuses them).
    pub fn client(&self, id: &str, addr: &str) -> Result<BlobClient, S3Error> {
        let channel = self.pool.get(addr).map_err(|e| S3Error::InternalError(format!("channel to {addr}: {e}")))?;
        Ok(BlobServiceClient::with_interceptor(channel, ToNode::new(id))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// The cluster's replication factor: the catalog's (`cluster/config`), this gateway's
    /// own setting only while the catalog has none.
    pub fn replication_factor(&self, snap: &Snapshot) -> usize {
        snap.cluster.map_or(self.replication_factor, |c| c.replication_factor).max(1)
    }

    /// The replicas of `bucket/key` in HRW order.
    fn replicas(&self, snap: &Snapshot, bucket: &str, key: &str) -> Vec<Replica> {
        let nodes = snap.placement_nodes();
        let rf = self.replication_factor(snap).min(nodes.len());
        aether_common::placement::replicas(&nodes, bucket, key, rf)
            .into_iter()
            .filter_map(|n| {
                let addr = snap.addr(&n.id)?.to_string();
                Some(Replica { id: n.id.clone(), addr, alive: snap.is_alive(&n.id) })
            })
            .collect()
    }

    /// The replica set of `bucket/key` from the current catalog; no active storage node at
    /// all is `503 ServiceUnavailable` for every operation.
    pub fn replica_set(&self, bucket: &str, key: &str) -> Result<Vec<Replica>, S3Error> {
        let replicas = self.replicas(&self.catalog.snapshot(), bucket, key);
        if replicas.is_empty() {
            tracing::warn!("no active storage nodes");
            return Err(S3Error::ServiceUnavailable);
        }
        Ok(replicas)
    }

    /// Every node that may hold data (listing, bucket stats and read fallback scatter over
    /// these): `active` and `draining` nodes, alive or not, and `removed` nodes still
    /// alive (they hand their keys off before they hold nothing).
    pub fn data_nodes(&self, snap: &Snapshot) -> Vec<Replica> {
        snap.nodes
            .iter()
            .filter(|(id, n)| n.state != NodeState::Removed || snap.is_alive(id))
            .map(|(id, n)| Replica { id: id.clone(), addr: n.addr.clone(), alive: snap.is_alive(id) })
            .collect()
    }

    /// This gateway's HLC writer id.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    pub fn write_quorum(&self, n: usize) -> usize {
        self.write_quorum.required(n).max(1)
    }

    pub fn read_quorum(&self, n: usize) -> usize {
        self.read_quorum.required(n).max(1)
    }

    /// A new version for a write by this gateway.
    pub fn new_version(&self) -> pb::Version {
        pb::Version { hlc: self.hlc.now(), writer: self.gateway_id.clone() }
    }

    pub fn observe(&self, v: Option<&pb::Version>) {
        if let Some(v) = v {
            self.hlc.observe(v.hlc);
        }
    }

    /// Run `call` against every live replica; return once `need` succeeded (the others
    /// finish in the background) or all answered. Dead replicas count as failed.
    pub async fn unary_quorum<T, F, Fut>(
        &self,
        replicas: &[Replica],
        need: usize,
        call: F,
    ) -> (Vec<T>, Vec<tonic::Status>)
    where
        F: Fn(BlobClient) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let mut pending = FuturesUnordered::new();
        let mut errors = Vec::new();
        for r in replicas {
            if !r.alive {
                errors.push(tonic::Status::unavailable(format!("node {} has no live lease", r.id)));
                continue;
            }
            let client = match self.client(&r.id, &r.addr) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(tonic::Status::unavailable(e.to_string()));
                    continue;
                }
            };
            let fut = tokio::time::timeout(self.timeout, call(client));
            let node = r.id.clone();
            let handle: JoinHandle<Result<T, tonic::Status>> = tokio::spawn(
                async move {
                    match fut.await {
                        Ok(r) => r,
                        Err(_) => Err(tonic::Status::deadline_exceeded(format!("node {node} timed out"))),
                    }
                }
                .in_current_span(),
            );
            pending.push(handle);
        }
        let mut oks = Vec::new();
        while let Some(joined) = pending.next().await {
            match joined {
                Ok(Ok(v)) => {
                    oks.push(v);
                    if oks.len() >= need {
                        break;
                    }
                }
                Ok(Err(status)) => errors.push(status),
                Err(e) => errors.push(tonic::Status::internal(format!("task: {e}"))),
            }
        }
        (oks, errors)
    }

    /// A unary write (create upload, complete, delete) on the replica set: succeed once the
    /// write quorum answered, else log every replica's failure and answer 503.
    pub async fn write_unary<T, F, Fut>(
        &self,
        replicas: &[Replica],
        what: &'static str,
        call: F,
    ) -> Result<Vec<T>, S3Error>
    where
        F: Fn(BlobClient) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let need = self.write_quorum(replicas.len());
        let (oks, errs) = self.unary_quorum(replicas, need, call).await;
        if oks.len() < need {
            for e in &errs {
                tracing::warn!(op = what, code = ?e.code(), message = e.message(), "replica write failed");
            }
            if errs.iter().any(bucket_deleted) {
                return Err(S3Error::NoSuchBucket);
            }
            cluster::quorum_failed("write");
            return Err(S3Error::ServiceUnavailable);
        }
        Ok(oks)
    }

    /// Stream a body to every replica at once and commit it after all checks passed;
    /// succeed after the write quorum acknowledged.
    pub async fn put_stream<S>(
        &self,
        replicas: &[Replica],
        target: PutTarget,
        body: S,
        checks: BodyChecks,
    ) -> Result<PutOutcome, S3Error>
    where
        S: Stream<Item = Result<Bytes, S3Error>> + Unpin,
    {
        let need = self.write_quorum(replicas.len());
        let mut slots = SlotGuard(Vec::new(), Vec::new());
        for r in replicas.iter().filter(|r| r.alive) {
            let mut client = match self.client(&r.id, &r.addr) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(node = %r.id, error = %e, "replica unreachable");
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel::<Frame>(REPLICA_QUEUE);
            // One span per replica written (HRW rank, node, address): blobd's own spans nest
            // under it.
            let span = tracing::info_span!("replica.put", node = %r.id, addr = %r.addr);
            let handle = match &target {
                PutTarget::Object(meta) => {
                    let first = pb::PutRequest {
                        msg: Some(pb::put_request::Msg::Header(pb::PutHeader {
                            meta: Some((**meta).clone()),
                            verbatim: false,
                            heal: false,
                        })),
                    };
                    let rest = ReceiverStream::new(rx).map(|f| pb::PutRequest {
                        msg: Some(match f {
                            Frame::Chunk(b) => pb::put_request::Msg::Chunk(b),
                            Frame::Commit(c) => pb::put_request::Msg::Commit(c),
                        }),
                    });
                    let stream = futures::stream::once(async move { first }).chain(rest);
                    tokio::spawn(
                        async move { client.put(stream).await.map(|r| r.into_inner().applied) }.instrument(span),
                    )
                }
                PutTarget::Part(header) => {
                    let first = pb::PutPartRequest { msg: Some(pb::put_part_request::Msg::Header(header.clone())) };
                    let rest = ReceiverStream::new(rx).map(|f| pb::PutPartRequest {
                        msg: Some(match f {
                            Frame::Chunk(b) => pb::put_part_request::Msg::Chunk(b),
                            Frame::Commit(c) => pb::put_part_request::Msg::Commit(c),
                        }),
                    });
                    let stream = futures::stream::once(async move { first }).chain(rest);
                    tokio::spawn(async move { client.put_part(stream).await.map(|_| true) }.instrument(span))
                }
            };
            slots.0.push(Slot { node: r.id.clone(), tx: Some(tx), handle: Some(handle) });
        }
        cluster::replica_writes_missed(replicas.len() - slots.0.len());
        if slots.live() < need {
            tracing::warn!(live = slots.live(), need, "not enough live replicas for the write quorum");
            cluster::quorum_failed("write");
            return Err(S3Error::ServiceUnavailable);
        }

        let mut hashes = BodyHashes::new(&checks);
        let mut body = body;
        let mut buf = BytesMut::new();
        let mut len: u64 = 0;
        while let Some(item) = body.next().await {
            let data = item?;
            len += data.len() as u64;
            if len > checks.max_len {
                return Err(S3Error::EntityTooLarge {
                    proposed: checks.declared_len.unwrap_or(len),
                    max: checks.max_len,
                });
            }
            if checks.declared_len.is_some_and(|d| len > d) {
                return Err(S3Error::InvalidRequest("The request body is longer than its declared length.".into()));
            }
            hashes.update(&data);
            // Coalesce into chunks of exactly CHUNK_SIZE (exact capacity: no regrowth).
            let mut data = data;
            while !data.is_empty() {
                if buf.is_empty() && data.len() >= CHUNK_SIZE {
                    let chunk = data.split_to(CHUNK_SIZE);
                    self.send_all(&mut slots, Frame::Chunk(chunk), need).await?;
                    continue;
                }
                if buf.capacity() == 0 {
                    buf = BytesMut::with_capacity(CHUNK_SIZE);
                }
                let take = (CHUNK_SIZE - buf.len()).min(data.len());
                buf.extend_from_slice(&data.split_to(take));
                if buf.len() == CHUNK_SIZE {
                    let chunk = buf.split().freeze();
                    self.send_all(&mut slots, Frame::Chunk(chunk), need).await?;
                }
            }
        }
        if !buf.is_empty() {
            let chunk = buf.split().freeze();
            self.send_all(&mut slots, Frame::Chunk(chunk), need).await?;
        }
        if checks.declared_len.is_some_and(|d| len < d) {
            return Err(S3Error::IncompleteBody);
        }
        let outcome = hashes.finish(&checks, len)?;

        let commit = pb::PutCommit {
            size: len,
            md5_hex: hex::encode(outcome.md5),
            checksums: outcome.recorded.iter().map(|(a, v)| (a.name().to_ascii_lowercase(), v.clone())).collect(),
        };
        self.send_all(&mut slots, Frame::Commit(commit), need).await?;
        // Close every stream and wait for the acknowledgements.
        let mut pending = FuturesUnordered::new();
        for slot in slots.0.iter_mut() {
            slot.tx = None;
            if let Some(h) = slot.handle.take() {
                let node = slot.node.clone();
                let timeout = self.timeout;
                pending.push(async move { (node, tokio::time::timeout(timeout, h).await) });
            }
        }
        let mut acks = 0;
        while let Some((node, res)) = pending.next().await {
            match res {
                Ok(Ok(Ok(_applied))) => {
                    acks += 1;
                    if acks >= need {
                        return Ok(outcome);
                    }
                }
                Ok(Ok(Err(status))) => {
                    if is_refusal(&status) {
                        tracing::debug!(node = %node, code = ?status.code(), message = status.message(), "replica refused the write");
                    } else {
                        tracing::warn!(node = %node, code = ?status.code(), message = status.message(), "replica write failed");
                        cluster::replica_writes_missed(1);
                    }
                    slots.1.push(status);
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node, error = %e, "replica write task failed");
                    cluster::replica_writes_missed(1);
                }
                Err(_) => {
                    tracing::warn!(node = %node, "replica write timed out");
                    cluster::replica_writes_missed(1);
                }
            }
        }
        let err = quorum_error(&slots.1);
        // A refusal the client caused (no such upload, bucket being deleted) is its answer,
        // not a replica problem.
        if matches!(err, S3Error::ServiceUnavailable) {
            tracing::warn!(acks, need, "write quorum not reached");
            cluster::quorum_failed("write");
        } else {
            tracing::debug!(acks, need, code = err.code(), "write refused by the replicas");
        }
        Err(err)
    }

    /// Send one frame to every live replica concurrently; a replica whose stream ended is
    /// dropped, and so is one whose queue stays full for the request timeout or, once a
    /// write quorum has taken the frame, for `STRAGGLER_GRACE` longer (a replica that is cut
    /// off without a reset, or stalled, does not hold the write up; anti-entropy gives it
    /// the object later).
    async fn send_all(&self, slots: &mut SlotGuard, frame: Frame, need: usize) -> Result<(), S3Error> {
        let mut sends: FuturesUnordered<_> = slots
            .0
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let tx = s.tx.clone()?;
                let frame = frame.clone();
                Some(async move { (i, tx.send(frame).await.is_ok()) })
            })
            .collect();
        let started: Vec<usize> = slots.0.iter().enumerate().filter(|(_, s)| s.tx.is_some()).map(|(i, _)| i).collect();
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let (mut taken, mut results) = (0usize, Vec::new());
        loop {
            tokio::select! {
                r = sends.next() => match r {
                    Some((i, ok)) => {
                        taken += usize::from(ok);
                        results.push((i, Some(ok)));
                        if taken == need {
                            let grace = tokio::time::Instant::now() + STRAGGLER_GRACE;
                            if grace < deadline.deadline() {
                                deadline.as_mut().reset(grace);
                            }
                        }
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        drop(sends);
        for i in started {
            if !results.iter().any(|(j, _)| *j == i) {
                results.push((i, None));
            }
        }
        for (i, res) in results {
            let (failed, closed) = match res {
                Some(true) => continue,
                Some(false) => ("stream ended", true),
                None => ("queue full while a write quorum went on", false),
            };
            let slot = &mut slots.0[i];
            tracing::warn!(node = %slot.node, reason = failed, "dropping replica from this write");
            cluster::replica_writes_missed(1);
            slot.tx = None;
            if let Some(mut h) = slot.handle.take() {
                if closed {
                    // The replica ended its stream: keep its answer (e.g. NOT_FOUND).
                    match tokio::time::timeout(Duration::from_secs(1), &mut h).await {
                        Ok(Ok(Err(status))) => slots.1.push(status),
                        Ok(_) => {}
                        Err(_) => h.abort(),
                    }
                } else {
                    h.abort();
                }
            }
        }
        if slots.live() < need {
            tracing::warn!(live = slots.live(), need, "write quorum lost while streaming");
            let err = quorum_error(&slots.1);
            if matches!(err, S3Error::ServiceUnavailable) {
                cluster::quorum_failed("write");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Read the object's metadata from `read_quorum` replicas (HRW order, skipping dead
    /// nodes, falling back to the next on error). `Ok(None)`: no replica holds the key.
    /// With `with_body`, the first replica is asked with `Get` instead of `Head`, so when
    /// it holds the newest version its open stream serves the body (one round trip).
    pub async fn read_newest(
        &self,
        replicas: &[Replica],
        bucket: &str,
        key: &str,
        with_body: bool,
    ) -> Result<Option<NewestRead>, S3Error> {
        let candidates: Vec<&Replica> = replicas.iter().filter(|r| r.alive).collect();
        if candidates.is_empty() {
            tracing::warn!("no live replica for a read");
            cluster::quorum_failed("read");
            return Err(S3Error::ServiceUnavailable);
        }
        let need = self.read_quorum(replicas.len());
        if candidates.len() < need {
            tracing::warn!(live = candidates.len(), need, "not enough live replicas for the read quorum");
            cluster::quorum_failed("read");
            return Err(S3Error::ServiceUnavailable);
        }
        let ask = |r: &Replica, get: bool| {
            let client = self.client(&r.id, &r.addr);
            let timeout = self.timeout;
            let replica = r.clone();
            let (bucket, key) = (bucket.to_string(), key.to_string());
            async move {
                let res = match client {
                    Ok(c) => tokio::time::timeout(timeout, ask_replica(c, bucket, key, get))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_string())),
                    Err(e) => Err(e.to_string()),
                };
                (replica, res)
            }
            .boxed()
        };
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        while next < need {
            pending.push(ask(candidates[next], with_body && next == 0));
            next += 1;
        }
        let mut answers: Vec<(Replica, Option<pb::ObjectMeta>)> = Vec::new();
        let mut open: Option<(Replica, tonic::Streaming<pb::GetResponse>)> = None;
        // A replica that has not answered within HEDGE_AFTER (a node killed or cut off
        // still holds its lease for a while, and its connection takes the keep-alive
        // timeout to fail) does not hold the read up: the next candidate is asked too.
        let hedge = tokio::time::sleep(HEDGE_AFTER);
        tokio::pin!(hedge);
        loop {
            tokio::select! {
                answer = pending.next() => {
                    let Some((replica, res)) = answer else { break };
                    match res {
                        Ok((meta, stream)) => {
                            if let Some(stream) = stream {
                                open = Some((replica.clone(), stream));
                            }
                            answers.push((replica, meta));
                            if answers.len() >= need {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(node = %replica.id, error = %e, "replica read failed");
                            if next < candidates.len() {
                                pending.push(ask(candidates[next], false));
                                next += 1;
                            }
                        }
                    }
                }
                () = &mut hedge, if next < candidates.len() => {
                    tracing::debug!(node = %candidates[next].id, "a replica is slow to answer; asking the next one too");
                    pending.push(ask(candidates[next], false));
                    next += 1;
                    hedge.as_mut().reset(tokio::time::Instant::now() + HEDGE_AFTER);
                }
            }
        }
        if answers.len() < need {
            tracing::warn!(answers = answers.len(), need, "read quorum not reached");
            cluster::quorum_failed("read");
            return Err(S3Error::ServiceUnavailable);
        }
        let newest = answers.iter().filter_map(|(_, m)| m.as_ref()).max_by(newer).cloned();
        let Some(newest) = newest else {
            let asked: Vec<Replica> = answers.into_iter().map(|(r, _)| r).collect();
            return Ok(self.read_elsewhere(replicas, &asked, bucket, key).await);
        };
        self.observe(newest.version.as_ref());
        let want = version_key(newest.version.as_ref());
        // Replicas that answered without this version (missing the key or behind it).
        let stale: Vec<Replica> = answers
            .iter()
            .filter(|(_, m)| m.as_ref().is_none_or(|m| version_key(m.version.as_ref()) < want))
            .map(|(r, _)| r.clone())
            .collect();
        let holders: Vec<Replica> = answers
            .into_iter()
            .filter(|(_, m)| m.as_ref().is_some_and(|m| version_key(m.version.as_ref()) == want))
            .map(|(r, _)| r)
            .collect();
        crate::repair::repair_in_background(self, &newest, &holders, &stale);
        let stream = open.filter(|(r, _)| holders.contains(r)).map(|(_, s)| s);
        Ok(Some(NewestRead { meta: newest, holders, stream }))
    }

    /// No replica asked holds the key: ask every other live node that may hold data.
    /// During a layout change (a node added, drained or removed) a key's new replicas may
    /// not hold it yet while its old ones still do; a read that finds it there copies it to
    /// the replicas it asked (read repair). Handoff sends a key to all its new replicas
    /// before the old holder drops it, so when that race makes this round miss, the replica
    /// set holds it by now: it is asked once more. Nodes that fail to answer count as not
    /// holding the key.
    async fn read_elsewhere(
        &self,
        replicas: &[Replica],
        asked: &[Replica],
        bucket: &str,
        key: &str,
    ) -> Option<NewestRead> {
        let snap = self.catalog.snapshot();
        let others: Vec<Replica> =
            self.data_nodes(&snap).into_iter().filter(|n| n.alive && !asked.iter().any(|r| r.id == n.id)).collect();
        if others.is_empty() {
            return None;
        }
        let mut found = self.heads(&others, bucket, key).await;
        if found.is_empty() {
            let set: Vec<Replica> = replicas.iter().filter(|r| r.alive).cloned().collect();
            found = self.heads(&set, bucket, key).await;
        }
        let newest = found.iter().map(|(_, m)| m).max_by(newer).cloned()?;
        metrics::counter!("gateway_read_fallbacks_total").increment(1);
        self.observe(newest.version.as_ref());
        let want = version_key(newest.version.as_ref());
        let holders: Vec<Replica> =
            found.into_iter().filter(|(_, m)| version_key(m.version.as_ref()) == want).map(|(r, _)| r).collect();
        let stale: Vec<Replica> = asked.iter().filter(|r| !holders.contains(r)).cloned().collect();
        tracing::debug!(bucket, key, holders = holders.len(), "key found outside the replicas asked");
        crate::repair::repair_in_background(self, &newest, &holders, &stale);
        Some(NewestRead { meta: newest, holders, stream: None })
    }

    /// `Head` on each node at once: the nodes that hold the key, with its meta.
    async fn heads(&self, nodes: &[Replica], bucket: &str, key: &str) -> Vec<(Replica, pb::ObjectMeta)> {
        self.head_answers(nodes, bucket, key).await.into_iter().filter_map(|(r, m)| Some((r, m?))).collect()
    }

    /// `Head` on each node at once: every node that answered, with the key's meta (`None`:
    /// it holds no version of it). Nodes that fail to answer are left out.
    pub async fn head_answers(
        &self,
        nodes: &[Replica],
        bucket: &str,
        key: &str,
    ) -> Vec<(Replica, Option<pb::ObjectMeta>)> {
        let timeout = self.timeout;
        futures::future::join_all(nodes.iter().map(|r| {
            let client = self.client(&r.id, &r.addr);
            let (bucket, key, r) = (bucket.to_string(), key.to_string(), r.clone());
            async move {
                let res = tokio::time::timeout(timeout, ask_replica(client.ok()?, bucket, key, false)).await;
                match res {
                    Ok(Ok((meta, _))) => Some((r, meta)),
                    _ => None,
                }
            }
        }))
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// The body of exactly `meta`'s version (`range` inclusive, else all of it): from the
    /// open stream `first` when given (the whole body), else from the first holder that
    /// answers (none: `ServiceUnavailable`, before any byte is sent). When a holder fails
    /// in the middle (it crashed, or a block failed its checksum there), the rest is read
    /// from the next holder at the offset reached: a corrupt copy is never served.
    pub async fn body(
        &self,
        first: Option<tonic::Streaming<pb::GetResponse>>,
        holders: &[Replica],
        meta: &pb::ObjectMeta,
        range: Option<(u64, u64)>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, S3Error> {
        let (start, end) = match range {
            Some(r) => r,
            None if meta.size == 0 => (1, 0),
            None => (0, meta.size - 1),
        };
        // After the holders the read found, the key's other live replicas: one the read did
        // not ask (or that was still committing then) may hold exactly this version, and is
        // asked for it only if every holder fails (a replica lacking it refuses).
        let mut candidates = holders.to_vec();
        if let Ok(set) = self.replica_set(&meta.bucket, &meta.key) {
            candidates.extend(set.into_iter().filter(|r| r.alive && !holders.iter().any(|h| h.id == r.id)));
        }
        let first = match first {
            Some(s) if range.is_none() => Some(s),
            _ if start > end => None,
            _ => Some(self.open_stream(&candidates, meta, range).await?),
        };
        let st = Resume {
            pool: self.pool.clone(),
            timeout: self.timeout,
            holders: candidates,
            next_holder: 0,
            meta: meta.clone(),
            pos: start,
            end,
            cur: first,
            done: false,
        };
        Ok(futures::stream::unfold(st, Resume::next))
    }

    async fn open_stream(
        &self,
        holders: &[Replica],
        meta: &pb::ObjectMeta,
        range: Option<(u64, u64)>,
    ) -> Result<tonic::Streaming<pb::GetResponse>, S3Error> {
        for r in holders {
            match open_at(&self.pool, self.timeout, r, meta, range).await {
                Ok(stream) => return Ok(stream),
                Err(e) => tracing::warn!(node = %r.id, error = %e, "replica get failed"),
            }
        }
        Err(S3Error::ServiceUnavailable)
    }
}

/// A Get stream for exactly `meta`'s version from `r` (`range` inclusive), its meta read.
async fn open_at(
    pool: &ChannelPool,
    timeout: Duration,
    r: &Replica,
    meta: &pb::ObjectMeta,
    range: Option<(u64, u64)>,
) -> Result<tonic::Streaming<pb::GetResponse>, String> {
    let channel = pool.get(&r.addr).map_err(|e| e.to_string())?;
    let mut client = BlobServiceClient::with_interceptor(channel, ToNode::new(&r.id))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let req = pb::GetRequest {
        bucket: meta.bucket.clone(),
        key: meta.key.clone(),
        has_range: range.is_some(),
        start: range.map(|r| r.0).unwrap_or(0),
        end: range.map(|r| r.1).unwrap_or(0),
        meta_only: false,
        expect_version: meta.version.clone(),
    };
    let opened = tokio::time::timeout(timeout, async {
        let mut stream = client.get(req).await?.into_inner();
        // The first message is the meta; anything else is a protocol error.
        match stream.message().await? {
            Some(pb::GetResponse { msg: Some(pb::get_response::Msg::Meta(_)) }) => Ok(stream),
            _ => Err(tonic::Status::internal("get stream did not start with meta")),
        }
    })
    .await;
    match opened {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("timed out".to_string()),
    }
}

/// The state of a body read that moves to the next holder when one fails.
struct Resume {
    pool: ChannelPool,
    timeout: Duration,
    holders: Vec<Replica>,
    next_holder: usize,
    meta: pb::ObjectMeta,
    /// The next byte to send; `end` is the last (inclusive).
    pos: u64,
    end: u64,
    cur: Option<tonic::Streaming<pb::GetResponse>>,
    done: bool,
}

impl Resume {
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        if self.done || self.pos > self.end {
            return None;
        }
        loop {
            let Some(cur) = self.cur.as_mut() else {
                let Some(r) = self.holders.get(self.next_holder).cloned() else {
                    self.done = true;
                    let e = std::io::Error::other("no replica could serve the rest of the body");
                    return Some((Err(e), self));
                };
                self.next_holder += 1;
                match open_at(&self.pool, self.timeout, &r, &self.meta, Some((self.pos, self.end))).await {
                    Ok(s) => {
                        metrics::counter!("gateway_read_resumes_total").increment(1);
                        tracing::info!(node = %r.id, offset = self.pos, "body resumed from another replica");
                        self.cur = Some(s);
                    }
                    Err(e) => tracing::warn!(node = %r.id, error = %e, "replica cannot resume the body"),
                }
                continue;
            };
            match cur.message().await {
                Ok(Some(pb::GetResponse { msg: Some(pb::get_response::Msg::Chunk(c)) })) => {
                    let room = self.end + 1 - self.pos;
                    let c = if c.len() as u64 > room { c.slice(..room as usize) } else { c };
                    self.pos += c.len() as u64;
                    return Some((Ok(c), self));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(offset = self.pos, "a replica's body ended early");
                    self.cur = None;
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), message = s.message(), offset = self.pos, "a replica failed mid-body");
                    self.cur = None;
                }
            }
        }
    }
}

/// The newest version found by a quorum read.
pub struct NewestRead {
    pub meta: pb::ObjectMeta,
    /// Replicas that answered with exactly that version.
    pub holders: Vec<Replica>,
    /// An open Get stream (meta already consumed) of a holder, when one was asked.
    pub stream: Option<tonic::Streaming<pb::GetResponse>>,
}

type Answer = (Option<pb::ObjectMeta>, Option<tonic::Streaming<pb::GetResponse>>);

/// Ask one replica for the key's meta: `Head`, or `Get` keeping the stream open.
async fn ask_replica(mut client: BlobClient, bucket: String, key: String, get: bool) -> Result<Answer, String> {
    let absent = |s: &tonic::Status| s.code() == tonic::Code::NotFound;
    if !get {
        return match client.head(pb::HeadRequest { bucket, key }).await {
            Ok(resp) => Ok((Some(resp.into_inner()), None)),
            Err(s) if absent(&s) => Ok((None, None)),
            Err(s) => Err(s.to_string()),
        };
    }
    let req = pb::GetRequest { bucket, key, ..Default::default() };
    let mut stream = match client.get(req).await {
        Ok(resp) => resp.into_inner(),
        Err(s) if absent(&s) => return Ok((None, None)),
        Err(s) => return Err(s.to_string()),
    };
    match stream.message().await {
        Ok(Some(pb::GetResponse { msg: Some(pb::get_response::Msg::Meta(meta)) })) => {
            let keep = (!meta.tombstone).then_some(stream);
            Ok((Some(meta), keep))
        }
        Ok(_) => Err("get stream did not start with meta".to_string()),
        Err(s) if absent(&s) => Ok((None, None)),
        Err(s) => Err(s.to_string()),
    }
}

/// What a streamed write creates: an object version or a multipart part.
#[derive(Debug, Clone)]
pub enum PutTarget {
    Object(Box<pb::ObjectMeta>),
    Part(pb::PartHeader),
}

/// The checks a streamed body must pass before the write is committed.
#[derive(Debug, Clone, Default)]
pub struct BodyChecks {
    /// Content-Length, or x-amz-decoded-content-length for aws-chunked bodies.
    pub declared_len: Option<u64>,
    pub max_len: u64,
    /// Expected SHA-256 of the payload (`PayloadCheck::Sha256`).
    pub sha256: Option<[u8; 32]>,
    pub content_md5: Option<[u8; 16]>,
    /// `x-amz-checksum-*` headers (algorithm, base64 value).
    pub checksums: Vec<(ChecksumAlgorithm, String)>,
    /// A checksum to compute and store with the object (sent in the commit): an
    /// aws-chunked trailer's algorithm (the decoder verifies the value), or S3's default
    /// CRC64NVME when the request names none.
    pub record: Option<ChecksumAlgorithm>,
}

#[derive(Debug, Clone)]
pub struct PutOutcome {
    pub size: u64,
    pub md5: [u8; 16],
    /// The `record` checksum's value.
    pub recorded: Option<(ChecksumAlgorithm, String)>,
}

struct BodyHashes {
    md5: md5::Md5,
    sha256: Option<sha2::Sha256>,
    checksums: Vec<(ChecksumAlgorithm, Hasher)>,
    record: Option<(ChecksumAlgorithm, Hasher)>,
}

impl BodyHashes {
    fn new(checks: &BodyChecks) -> Self {
        Self {
            md5: md5::Md5::new(),
            sha256: checks.sha256.map(|_| sha2::Sha256::new()),
            checksums: checks.checksums.iter().map(|(a, _)| (*a, Hasher::new(*a))).collect(),
            record: checks.record.map(|a| (a, Hasher::new(a))),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        if let Some(h) = self.sha256.as_mut() {
            sha2::Digest::update(h, data);
        }
        for (_, h) in self.checksums.iter_mut() {
            h.update(data);
        }
        if let Some((_, h)) = self.record.as_mut() {
            h.update(data);
        }
    }

    fn finish(self, checks: &BodyChecks, size: u64) -> Result<PutOutcome, S3Error> {
        if let (Some(h), Some(want)) = (self.sha256, checks.sha256) {
            let got: [u8; 32] = sha2::Digest::finalize(h).into();
            if got != want {
                return Err(S3Error::XAmzContentSHA256Mismatch);
            }
        }
        let md5: [u8; 16] = self.md5.finalize().into();
        if checks.content_md5.is_some_and(|want| want != md5) {
            return Err(S3Error::BadDigest);
        }
        for ((alg, h), (_, want)) in self.checksums.into_iter().zip(checks.checksums.iter()) {
            if h.finalize_base64() != *want {
                return Err(S3Error::BadChecksum(alg.name()));
            }
        }
        let recorded = self.record.map(|(alg, h)| (alg, h.finalize_base64()));
        Ok(PutOutcome { size, md5, recorded })
    }
}

#[derive(Debug, Clone)]
enum Frame {
    Chunk(Bytes),
    Commit(pb::PutCommit),
}

struct Slot {
    node: String,
    tx: Option<mpsc::Sender<Frame>>,
    handle: Option<JoinHandle<Result<bool, tonic::Status>>>,
}

/// A replica refused the write because the bucket is being deleted or was deleted.
fn bucket_deleted(s: &tonic::Status) -> bool {
    s.metadata().get(aether_common::grpc::ERROR_CODE_KEY).and_then(|v| v.to_str().ok()) == Some("bucket_deleted")
}

/// Aborts every replica stream that is still running when the write fails, so an
/// uncommitted write never lands.
struct SlotGuard(Vec<Slot>, Vec<tonic::Status>);

/// The error for a write that missed its quorum: a replica that does not know the
/// multipart upload makes it `NoSuchUpload`, anything else is `ServiceUnavailable`.
/// A daemon's refusal of the request itself (the upload or bucket is gone), as opposed to
/// a failure of the replica.
fn is_refusal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::NotFound || bucket_deleted(status)
}

pub fn quorum_error(failures: &[tonic::Status]) -> S3Error {
    if failures.iter().any(bucket_deleted) {
        S3Error::NoSuchBucket
    } else if failures.iter().any(|s| s.code() == tonic::Code::NotFound) {
        S3Error::NoSuchUpload
    } else {
        S3Error::ServiceUnavailable
    }
}

impl SlotGuard {
    fn live(&self) -> usize {
        self.0.iter().filter(|s| s.tx.is_some()).count()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        for s in self.0.iter_mut() {
            // Handles already taken belong to committed writes that finish on their own.
            if let Some(h) = s.handle.take() {
                h.abort();
            }
        }
    }
}

/// Shared handle type.
pub type SharedStore = Arc<Store>;
