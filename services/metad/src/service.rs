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
use crate::mvcc::{MAX_LEASE_TTL, Store};
use crate::node::Node;
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
    let span = tracing::info_span!("etcd", rpc);
    continue_grpc(&span, metadata);
    span
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
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        self.node.read_barrier(req.serializable).await?;
        let (mut resp, revision) = {
            let st = self.node.shared.read();
            (st.store.range(&req)?, st.store.revision())
        };
        resp.header = Some(self.node.header(revision));
        Ok(resp)
    }

    async fn do_put(&self, req: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
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
        Store::validate_txn(&req)?;
        let out = self.node.write(Command::txn(&req)).await?;
        let mut resp = out.txn.ok_or_else(|| EtcdError::Internal("txn returned no response".into()))?;
        resp.header = Some(self.node.header(out.revision));
        Ok(resp)
    }

    async fn do_compact(&self, req: pb::CompactionRequest) -> Result<pb::CompactionResponse, EtcdError> {
        self.node.shared.read().store.check_compact(req.revision)?;
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

    fn keep_alive_once(&self, id: i64) -> pb::LeaseKeepAliveResponse {
        let (ttl, revision) = {
            let st = self.node.shared.read();
            (st.store.lease(id).map(|l| l.ttl), st.store.revision())
        };
        let ttl = match ttl {
            Some(ttl) => {
                self.node.leases.refresh(id, ttl);
                ttl
            }
            None => 0,
        };
        pb::LeaseKeepAliveResponse { header: Some(self.node.header(revision)), id, ttl }
    }

    async fn do_time_to_live(&self, req: pb::LeaseTimeToLiveRequest) -> Result<pb::LeaseTimeToLiveResponse, EtcdError> {
        self.node.read_barrier(false).await?;
        let (lease, keys, revision) = {
            let st = self.node.shared.read();
            let keys = if req.keys { st.store.lease_keys(req.id) } else { Vec::new() };
            (st.store.lease(req.id).map(|l| l.ttl), keys, st.store.revision())
        };
        let header = Some(self.node.header(revision));
        Ok(match lease {
            Some(granted_ttl) => {
                let ttl = match self.node.leases.remaining(req.id) {
                    Some(d) => i64::try_from(d.as_secs()).unwrap_or(granted_ttl),
                    None => granted_ttl,
                };
                pb::LeaseTimeToLiveResponse { header, id: req.id, ttl, granted_ttl, keys }
            }
            None => pb::LeaseTimeToLiveResponse { header, id: req.id, ttl: -1, granted_ttl: 0, keys: Vec::new() },
        })
    }

    fn member(&self) -> pb::Member {
        pb::Member {
            id: self.node.member_id,
            name: self.node.name.clone(),
            peer_ur_ls: vec![self.node.client_url.clone()],
            client_ur_ls: vec![self.node.client_url.clone()],
            is_learner: false,
        }
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
                            let sent = tokio::select! {
                                r = tx.send(Ok(this.keep_alive_once(req.id))) => r.is_ok(),
                                () = shutdown.wait() => false,
                            };
                            if !sent {
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
        let leases = st.store.leases().map(|(id, _)| pb::LeaseStatus { id }).collect();
        let header = Some(self.node.header(st.store.revision()));
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
        let _entered = span.enter();
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.current_header()),
            members: vec![self.member()],
        }))
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
        let _entered = span.enter();
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
        let (in_use, header) = {
            let st = self.node.shared.read();
            (st.store.approx_size(), self.node.header(st.store.revision()))
        };
        let on_disk = LogStore::disk_size(&self.node.db_path)
            + std::fs::metadata(&self.node.snapshot_path).map(|m| m.len()).unwrap_or(0);
        Ok(Response::new(pb::StatusResponse {
            header: Some(header),
            version: ETCD_VERSION.to_string(),
            db_size: i64::try_from(on_disk).unwrap_or(i64::MAX),
            leader: if leader == Some(crate::node::NODE_ID) { self.node.member_id } else { 0 },
            raft_index,
            raft_term,
            raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: in_use,
            is_learner: false,
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }
}
