//! The etcd v3 gRPC services (KV, Watch, Lease, Cluster, Maintenance) over one `Node`.
//! RPCs not listed keep the generated `Unimplemented` stubs.

use std::pin::Pin;
use std::sync::Arc;

use aether_common::telemetry::continue_grpc;
use aether_proto::etcd::etcdserverpb as pb;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::error::EtcdError;
use crate::mvcc::{MAX_LEASE_TTL, check_put_request, check_range_request, validate_txn};
use crate::node::Node;
use crate::peer::{MemberInfo, MemberOp};
use crate::raft::{Command, LogStore};
use crate::watch;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The etcd version metad reports (its API follows etcd 3.5).
pub const ETCD_VERSION: &str = "3.5.17";

#[derive(Clone)]
pub struct EtcdService {
    node: Arc<Node>,
}

impl EtcdService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn rpc_span(rpc: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!("etcd", otel.name = format!("etcd.{rpc}"), rpc);
    continue_grpc(&span, metadata);
    span
}

/// etcd stamps every response inside a txn with a header carrying the revision.
fn stamp_headers(resp: &mut pb::TxnResponse, revision: i64) {
    use pb::response_op::Response as R;
    let header = Some(pb::ResponseHeader { revision, ..Default::default() });
    for r in resp.responses.iter_mut().filter_map(|r| r.response.as_mut()) {
        match r {
            R::ResponseRange(x) => x.header = header,
            R::ResponsePut(x) => x.header = header,
            R::ResponseDeleteRange(x) => x.header = header,
            R::ResponseTxn(x) => {
                x.header = header;
                stamp_headers(x, revision);
            }
        }
    }
}

fn one_op_txn(op: pb::request_op::Request) -> pb::TxnRequest {
    pb::TxnRequest { compare: Vec::new(), success: vec![pb::RequestOp { request: Some(op) }], failure: Vec::new() }
}

/// The single response of a one-op txn.
fn only_response(out: Option<pb::TxnResponse>) -> Result<pb::response_op::Response, EtcdError> {
    out.and_then(|t| t.responses.into_iter().next())
        .and_then(|r| r.response)
        .ok_or_else(|| EtcdError::Internal("txn returned no response".into()))
}

impl EtcdService {
    async fn do_range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        check_range_request(&req)?;
        self.node.read_barrier(req.serializable).await?;
        let (mut resp, revision) = self.node.shared.db.range(&req).await?;
        resp.header = Some(self.node.header(revision));
        Ok(resp)
    }

    async fn do_put(&self, req: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        check_put_request(&req)?;
        let txn = one_op_txn(pb::request_op::Request::RequestPut(req));
        let out = self.node.write(Command::txn(&txn)).await?;
        match only_response(out.txn)? {
            pb::response_op::Response::ResponsePut(mut r) => {
                r.header = Some(self.node.header(out.revision));
                Ok(r)
            }
            _ => Err(EtcdError::Internal("put returned another response".into())),
        }
    }

    async fn do_delete(&self, req: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        let txn = one_op_txn(pb::request_op::Request::RequestDeleteRange(req));
        let out = self.node.write(Command::txn(&txn)).await?;
        match only_response(out.txn)? {
            pb::response_op::Response::ResponseDeleteRange(mut r) => {
                r.header = Some(self.node.header(out.revision));
                Ok(r)
            }
            _ => Err(EtcdError::Internal("delete returned another response".into())),
        }
    }

    async fn do_txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        validate_txn(&req)?;
        let out = self.node.write(Command::txn(&req)).await?;
        let mut resp = out.txn.ok_or_else(|| EtcdError::Internal("txn returned no response".into()))?;
        stamp_headers(&mut resp, out.revision);
        resp.header = Some(self.node.header(out.revision));
        Ok(resp)
    }

    async fn do_compact(&self, req: pb::CompactionRequest) -> Result<pb::CompactionResponse, EtcdError> {
        self.node.shared.read().check_compact(req.revision)?;
        let out = self.node.write(Command::Compact { revision: req.revision }).await?;
        Ok(pb::CompactionResponse { header: Some(self.node.header(out.revision)) })
    }

    async fn do_lease_grant(&self, req: pb::LeaseGrantRequest) -> Result<pb::LeaseGrantResponse, EtcdError> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        let ttl = req.ttl.max(1);
        let id = if req.id == 0 { self.node.new_lease_id() } else { req.id };
        let out = self.node.write(Command::LeaseGrant { id, ttl }).await?;
        self.node.leases.refresh(id, ttl);
        Ok(pb::LeaseGrantResponse { header: Some(self.node.header(out.revision)), id, ttl, error: String::new() })
    }

    async fn do_lease_revoke(&self, req: pb::LeaseRevokeRequest) -> Result<pb::LeaseRevokeResponse, EtcdError> {
        let out = self.node.write(Command::LeaseRevoke { id: req.id }).await?;
        self.node.leases.remove(req.id);
        Ok(pb::LeaseRevokeResponse { header: Some(self.node.header(out.revision)) })
    }

    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, EtcdError> {
        let ttl = self.node.keep_alive(id).await?;
        Ok(pb::LeaseKeepAliveResponse { header: Some(self.node.current_header()), id, ttl })
    }

    async fn do_time_to_live(&self, req: pb::LeaseTimeToLiveRequest) -> Result<pb::LeaseTimeToLiveResponse, EtcdError> {
        self.node.read_barrier(false).await?;
        let (lease, revision) = {
            let st = self.node.shared.read();
            (st.lease_ttl(req.id), st.revision)
        };
        let keys = if req.keys && lease.is_some() { self.node.shared.db.lease_keys(req.id).await? } else { Vec::new() };
        let header = Some(self.node.header(revision));
        Ok(match lease {
            Some(granted_ttl) => {
                let ttl = match self.node.lease_remaining(req.id).await? {
                    Some(secs) => i64::try_from(secs).unwrap_or(granted_ttl),
                    None => granted_ttl,
                };
                pb::LeaseTimeToLiveResponse { header, id: req.id, ttl, granted_ttl, keys }
            }
            None => pb::LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, granted_ttl: 0, keys: Vec::new() },
        })
    }

    fn pb_members(members: &[MemberInfo]) -> Vec<pb::Member> {
        members.iter().map(pb_member).collect()
    }

    async fn do_member_add(&self, req: pb::MemberAddRequest) -> Result<pb::MemberAddResponse, EtcdError> {
        let op = MemberOp::Add { peer_urls: req.peer_ur_ls, learner: req.is_learner };
        let (id, members) = self.node.member_op(op).await?;
        let member = members.iter().find(|m| m.id == id).map(pb_member);
        Ok(pb::MemberAddResponse {
            header: Some(self.node.current_header()),
            member,
            members: Self::pb_members(&members),
        })
    }

    async fn do_member_op(&self, op: MemberOp) -> Result<(pb::ResponseHeader, Vec<pb::Member>), EtcdError> {
        let (_, members) = self.node.member_op(op).await?;
        Ok((self.node.current_header(), Self::pb_members(&members)))
    }

    /// A consistent copy of the state database, streamed in `SNAPSHOT_CHUNK` messages and
    /// ending with the SHA-256 of everything before it, like etcd's.
    async fn do_snapshot(&self) -> Result<BoxStream<pb::SnapshotResponse>, EtcdError> {
        use sha2::Digest as _;
        use tokio::io::AsyncReadExt as _;
        self.node.read_barrier(false).await?;
        let dir = tempfile_dir(&self.node.db_path);
        let path = dir.join(format!("snapshot-rpc-{}.db", uuid::Uuid::new_v4()));
        let io = |e: &dyn std::fmt::Display| EtcdError::Internal(format!("snapshot: {e}"));
        self.node.shared.db.copy_to(&path).await.map_err(|e| io(&e))?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| io(&e))?;
        // Unlinked now: the open file stays readable and nothing is left behind.
        let _ = tokio::fs::remove_file(&path).await;
        let total = file.metadata().await.map_err(|e| io(&e))?.len() + 32;
        let header = self.node.current_header();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut hasher = sha2::Sha256::new();
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(io(&e)))).await;
                        return;
                    }
                };
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hasher.update(&buf);
                sent += n as u64;
                let msg = pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total - sent,
                    blob: buf,
                    version: ETCD_VERSION.to_string(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            let sum = hasher.finalize().to_vec();
            let msg = pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: sum,
                version: ETCD_VERSION.to_string(),
            };
            let _ = tx.send(Ok(msg)).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Where temporary copies go: next to the databases (same filesystem).
fn tempfile_dir(db_path: &std::path::Path) -> std::path::PathBuf {
    db_path.parent().map(std::path::Path::to_path_buf).unwrap_or_default()
}

/// Bytes per Maintenance.Snapshot message.
const SNAPSHOT_CHUNK: usize = 1 << 20;

fn pb_member(m: &MemberInfo) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.member.name.clone(),
        peer_ur_ls: vec![m.member.addr.clone()],
        client_ur_ls: m.member.client_urls.clone(),
        is_learner: m.learner,
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let span = rpc_span("Range", request.metadata());
        self.do_range(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let span = rpc_span("Put", request.metadata());
        self.do_put(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let span = rpc_span("DeleteRange", request.metadata());
        self.do_delete(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let span = rpc_span("Txn", request.metadata());
        self.do_txn(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let span = rpc_span("Compact", request.metadata());
        self.do_compact(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for EtcdService {
    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        let span = rpc_span("Watch", request.metadata());
        let _entered = span.enter();
        let rx = watch::spawn_session(self.node.clone(), request.into_inner());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for EtcdService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let span = rpc_span("LeaseGrant", request.metadata());
        self.do_lease_grant(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let span = rpc_span("LeaseRevoke", request.metadata());
        self.do_lease_revoke(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<pb::LeaseKeepAliveResponse>>, Status> {
        let span = rpc_span("LeaseKeepAlive", request.metadata());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(watch::STREAM_BUFFER);
        let this = self.clone();
        let shutdown = self.node.shutdown.clone();
        tokio::spawn(
            async move {
                loop {
                    let msg = tokio::select! {
                        () = shutdown.wait() => break,
                        msg = inbound.next() => msg,
                    };
                    match msg {
                        Some(Ok(req)) => {
                            let resp = this.keep_alive_once(req.id).await.map_err(Status::from);
                            let failed = resp.is_err();
                            let sent = tokio::select! {
                                r = tx.send(resp) => r.is_ok(),
                                () = shutdown.wait() => false,
                            };
                            if !sent || failed {
                                break;
                            }
                        }
                        Some(Err(status)) => {
                            tracing::debug!(error = %status, "keepalive stream ended by client error");
                            break;
                        }
                        None => break,
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let span = rpc_span("LeaseTimeToLive", request.metadata());
        self.do_time_to_live(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let span = rpc_span("LeaseLeases", request.metadata());
        let _entered = span.enter();
        let st = self.node.shared.read();
        let leases = st.leases.keys().map(|&id| pb::LeaseStatus { id }).collect();
        let header = Some(self.node.header(st.revision));
        Ok(Response::new(pb::LeaseLeasesResponse { header, leases }))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for EtcdService {
    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let span = rpc_span("MemberList", request.metadata());
        let members = if request.get_ref().linearizable {
            self.node.read_barrier(false).instrument(span.clone()).await.map_err(Status::from)?;
            self.node.members()
        } else {
            self.node.members()
        };
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.current_header()),
            members: Self::pb_members(&members),
        }))
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let span = rpc_span("MemberAdd", request.metadata());
        self.do_member_add(request.into_inner()).instrument(span).await.map(Response::new).map_err(Status::from)
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let span = rpc_span("MemberRemove", request.metadata());
        let op = MemberOp::Remove { id: request.get_ref().id };
        let (header, members) = self.do_member_op(op).instrument(span).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header: Some(header), members }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let span = rpc_span("MemberUpdate", request.metadata());
        let req = request.into_inner();
        let op = MemberOp::Update { id: req.id, peer_urls: req.peer_ur_ls };
        let (header, members) = self.do_member_op(op).instrument(span).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header: Some(header), members }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let span = rpc_span("MemberPromote", request.metadata());
        let op = MemberOp::Promote { id: request.get_ref().id };
        let (header, members) = self.do_member_op(op).instrument(span).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header: Some(header), members }))
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for EtcdService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        let span = rpc_span("Alarm", request.metadata());
        let _entered = span.enter();
        Ok(Response::new(pb::AlarmResponse { header: Some(self.node.current_header()), alarms: Vec::new() }))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let span = rpc_span("Status", request.metadata());
        let (raft_index, raft_applied_index, raft_term, leader) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            (
                m.last_log_index.unwrap_or(0),
                m.last_applied.map(|l| l.index).unwrap_or(0),
                m.current_term,
                m.current_leader,
            )
        };
        let header = self.node.current_header();
        let (state_size, in_use) = self.node.shared.db.sizes().instrument(span.clone()).await;
        let on_disk = LogStore::disk_size(&self.node.db_path) + u64::try_from(state_size).unwrap_or(0);
        Ok(Response::new(pb::StatusResponse {
            header: Some(header),
            version: ETCD_VERSION.to_string(),
            db_size: i64::try_from(on_disk).unwrap_or(i64::MAX),
            leader: leader.unwrap_or(0),
            raft_index,
            raft_term,
            raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: in_use,
            is_learner: self.node.members().iter().any(|m| m.id == self.node.id && m.learner),
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let span = rpc_span("Defragment", request.metadata());
        LogStore::vacuum(&self.node.db_path)
            .instrument(span)
            .await
            .map_err(|e| Status::from(EtcdError::Internal(e.to_string())))?;
        Ok(Response::new(pb::DefragmentResponse { header: Some(self.node.current_header()) }))
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let span = rpc_span("Hash", request.metadata());
        let (hash, _, _, current) = self.node.shared.db.hash_kv(0).instrument(span).await.map_err(Status::from)?;
        Ok(Response::new(pb::HashResponse { header: Some(self.node.header(current)), hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let span = rpc_span("HashKV", request.metadata());
        let rev = request.get_ref().revision;
        let (hash, compact_revision, hash_revision, current) =
            self.node.shared.db.hash_kv(rev).instrument(span).await.map_err(Status::from)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.node.header(current)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<BoxStream<pb::SnapshotResponse>>, Status> {
        let span = rpc_span("Snapshot", request.metadata());
        let stream = self.do_snapshot().instrument(span).await.map_err(Status::from)?;
        Ok(Response::new(stream))
    }
}
