//! The peer transport: Raft RPCs between members and the requests a member forwards to the
//! leader, over tonic on the peer port (`raft.v1.RaftPeer`). One lazily connected, reused
//! channel per peer URL. AppendEntries (the hot path: every write, every heartbeat) travel
//! on one long-lived bidirectional stream per follower (`AppendStream`), one message each
//! way per request; the other RPCs are unary. Payloads are JSON-encoded openraft / metad
//! types; snapshot chunks travel as raw bytes in `blob`.
//!
//! When the peer listener is bound to a specific IP, outgoing peer connections use it as
//! their source address too, so a member's traffic can be told apart (and cut, in tests)
//! by address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_common::telemetry::{continue_grpc, inject_grpc};
use aether_proto::raft::v1::Payload;
use aether_proto::raft::v1::raft_peer_client::RaftPeerClient;
use aether_proto::raft::v1::raft_peer_server::RaftPeer;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::error::EtcdError;
use crate::node::Node;
use crate::raft::{Command, Member, NodeId, TypeConfig};

/// Largest peer message (a batch of log entries or one snapshot chunk).
const MAX_MESSAGE: usize = 64 << 20;

/// A request a member sends to another (usually the leader).
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerCall {
    /// Propose a command; answered once applied.
    Write(Command),
    /// Confirm leadership and return the log index a linearizable read must wait for.
    ReadIndex,
    /// Restart a lease's TTL on the leader's clock.
    KeepAlive {
        id: i64,
    },
    /// Seconds left on a lease, by the leader's clock.
    LeaseRemaining {
        id: i64,
    },
    /// The cluster id and membership (a member joining an existing cluster asks this).
    Identity,
    Member(MemberOp),
    /// The leader tells a member that its removal is committed, so it shuts down as etcd's
    /// removed member does. Openraft stops replicating to a removed member as soon as the
    /// config without it is in the leader's log, so the member may never apply it; and one
    /// that received that config (but not its commit) is no longer a voter, so it never
    /// campaigns and never hears the leader's refusal either.
    Removed {
        cluster_id: u64,
        id: NodeId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberOp {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: NodeId,
    },
    Update {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    Promote {
        id: NodeId,
    },
    /// A member announces its name and client URLs.
    Publish {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
}

/// One member as the membership config has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub member: Member,
    pub learner: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// `txn` is a prost-encoded `TxnResponse` when `has_txn` (a failed compare with no
    /// else branch encodes to zero bytes, so emptiness says nothing).
    Written {
        revision: i64,
        /// The log index of the entry, so the forwarding member can wait to apply it.
        index: u64,
        has_txn: bool,
        #[serde(with = "crate::b64")]
        txn: Vec<u8>,
    },
    ReadIndex {
        index: Option<u64>,
    },
    KeepAlive {
        ttl: i64,
    },
    LeaseRemaining {
        secs: Option<u64>,
    },
    Identity {
        cluster_id: u64,
        members: Vec<MemberInfo>,
    },
    Member {
        id: NodeId,
        members: Vec<MemberInfo>,
    },
    Removed,
}

/// What the leader answers a Raft RPC from a member it no longer has (etcd's message).
pub const REMOVED: &str = "etcdserver: the member has been permanently removed from the cluster";

/// Calls in flight on one `CallStream` at most (the receiving member runs them
/// concurrently; beyond this it stops reading the stream, and HTTP/2 flow control holds
/// the sender back).
const CALLS_PER_STREAM: usize = 4096;

/// Outgoing peer connections.
#[derive(Debug, Clone)]
pub struct Peers {
    from: Arc<std::sync::atomic::AtomicU64>,
    /// Set when the leader said this member was removed.
    removed: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the leader told this member its removal is committed (`PeerCall::Removed`).
    removal_committed: Arc<std::sync::atomic::AtomicBool>,
    local_ip: Option<IpAddr>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// The open `CallStream` per peer URL.
    call_streams: Arc<Mutex<HashMap<String, CallStream>>>,
    /// Peer URLs of members that answered `Unimplemented` to a stream RPC (an older
    /// version): they get unary calls, for AppendEntries and forwarded calls alike, from
    /// every client of this member rather than being probed again by each.
    unary_only: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The sending half of one `CallStream`; a task reads the answers and hands each to the
/// caller waiting for its id.
#[derive(Debug, Clone)]
struct CallStream {
    tx: tokio::sync::mpsc::Sender<Payload>,
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    /// Set when the answer stream ended: nothing more will be answered.
    closed: bool,
    callers: HashMap<u64, tokio::sync::oneshot::Sender<Payload>>,
}

impl CallStream {
    fn closed(&self) -> bool {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).closed || self.tx.is_closed()
    }
}

/// Removes a caller's entry when its call ends, answered or not (timed out, cancelled).
struct Waiter {
    waiting: Arc<Mutex<Waiting>>,
    id: u64,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).callers.remove(&self.id);
    }
}

impl Peers {
    pub fn new(local_ip: Option<IpAddr>) -> Self {
        Self {
            from: Arc::default(),
            removed: Arc::default(),
            removal_committed: Arc::default(),
            local_ip,
            channels: Arc::default(),
            call_streams: Arc::default(),
            unary_only: Arc::default(),
        }
    }

    /// Whether the member at `addr` is known not to serve the stream RPCs.
    fn is_unary_only(&self, addr: &str) -> bool {
        self.unary_only.lock().unwrap_or_else(|e| e.into_inner()).contains(addr)
    }

    /// Remember that the member at `addr` does not serve the stream RPCs.
    fn set_unary_only(&self, addr: &str, rpc: &str) {
        if self.unary_only.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.to_string()) {
            tracing::info!(peer = addr, rpc, "peer has no stream RPCs; using unary calls");
        }
    }

    /// Whether the leader has told this member it was removed from the cluster.
    pub fn removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record that this member was removed from the cluster (it then shuts down).
    pub fn mark_removed(&self) {
        self.removed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record that the leader told this member its removal is committed.
    pub fn mark_removal_committed(&self) {
        self.removal_committed.store(true, std::sync::atomic::Ordering::Relaxed);
        self.mark_removed();
    }

    /// Whether the leader told this member its removal is committed.
    pub fn removal_committed(&self) -> bool {
        self.removal_committed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Set once the member id is known.
    pub fn set_from(&self, id: NodeId) {
        self.from.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
        let channel = {
            let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(addr) {
                Some(ch) => ch.clone(),
                None => {
                    let ch = aether_common::grpc::endpoint(addr)?
                        .connect_timeout(Duration::from_secs(1))
                        .local_address(self.local_ip)
                        .connect_lazy();
                    map.insert(addr.to_string(), ch.clone());
                    ch
                }
            }
        };
        Ok(RaftPeerClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
    }

    fn request(&self, data: Vec<u8>, blob: Bytes, timeout: Duration) -> Request<Payload> {
        let from = self.from.load(std::sync::atomic::Ordering::Relaxed);
        let mut req = Request::new(Payload { from, data: data.into(), blob, ..Default::default() });
        req.set_timeout(timeout);
        inject_grpc(req.metadata_mut());
        req
    }

    /// Send a `PeerCall` to the member at `addr`, on the call stream to it (unary to a member
    /// that has none). A transport failure is a timeout to the client: the request may or
    /// may not have been carried out.
    pub async fn call(&self, addr: &str, call: &PeerCall, timeout: Duration) -> Result<PeerReply, EtcdError> {
        let data = serde_json::to_vec(call).map_err(|e| EtcdError::Internal(e.to_string()))?;
        let answer = match tokio::time::timeout(timeout, self.call_streamed(addr, data.clone())).await {
            Ok(Ok(Some(answer))) => answer.data,
            Ok(Ok(None)) => {
                let mut client = self.client(addr).map_err(|e| EtcdError::Internal(format!("peer url {addr}: {e}")))?;
                let resp = client.call(self.request(data, Bytes::new(), timeout)).await.map_err(|status| {
                    tracing::debug!(peer = addr, error = %status, "peer call failed");
                    EtcdError::Timeout
                })?;
                resp.into_inner().data
            }
            Ok(Err(status)) => {
                tracing::debug!(peer = addr, error = %status, "peer call failed");
                return Err(EtcdError::Timeout);
            }
            Err(_) => return Err(EtcdError::Timeout),
        };
        let reply: Result<PeerReply, EtcdError> =
            serde_json::from_slice(&answer).map_err(|e| EtcdError::Internal(e.to_string()))?;
        reply
    }

    /// One call on the call stream to `addr` (opened if there is none or it broke); `None`
    /// if that member does not know `CallStream`.
    async fn call_streamed(&self, addr: &str, data: Vec<u8>) -> Result<Option<Payload>, Status> {
        if self.is_unary_only(addr) {
            return Ok(None);
        }
        let stream = {
            let map = self.call_streams.lock().unwrap_or_else(|e| e.into_inner());
            map.get(addr).cloned()
        };
        let stream = match stream {
            Some(s) if !s.closed() => s,
            _ => match self.open_call_stream(addr).await? {
                Some(s) => s,
                None => return Ok(None),
            },
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = {
            let mut w = stream.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if w.closed {
                return Err(Status::unavailable("call stream closed"));
            }
            let id = w.next_id;
            w.next_id += 1;
            w.callers.insert(id, tx);
            id
        };
        let _waiter = Waiter { waiting: Arc::clone(&stream.waiting), id };
        let traceparent = aether_common::telemetry::current_traceparent();
        let from = self.from.load(std::sync::atomic::Ordering::Relaxed);
        let request = Payload { from, data: data.into(), id, traceparent, ..Default::default() };
        stream.tx.send(request).await.map_err(|_| Status::unavailable("call stream closed"))?;
        rx.await.map(Some).map_err(|_| Status::unavailable("call stream closed before the answer"))
    }

    /// Open a call stream to `addr` and start the task that hands out its answers; `None`
    /// (remembered in `unary_only`) if the member does not know `CallStream`.
    async fn open_call_stream(&self, addr: &str) -> Result<Option<CallStream>, Status> {
        let mut client = self.client(addr).map_err(|e| Status::unavailable(format!("peer url {addr}: {e}")))?;
        let (tx, requests) = tokio::sync::mpsc::channel(CALLS_PER_STREAM);
        let request = Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
        let mut answers = match client.call_stream(request).await {
            Ok(resp) => resp.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                self.set_unary_only(addr, "CallStream");
                return Ok(None);
            }
            Err(status) => return Err(status),
        };
        let stream = CallStream { tx, waiting: Arc::default() };
        let waiting = Arc::clone(&stream.waiting);
        let peer = addr.to_string();
        tokio::spawn(async move {
            let end = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let caller = waiting.lock().unwrap_or_else(|e| e.into_inner()).callers.remove(&answer.id);
                        if let Some(caller) = caller {
                            let _ = caller.send(answer);
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => break Some(status),
                }
            };
            tracing::debug!(peer, error = ?end, "call stream ended");
            // Callers still waiting get a dropped sender: the call's outcome is unknown.
            let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.closed = true;
            w.callers.clear();
        });
        self.call_streams.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.to_string(), stream.clone());
        Ok(Some(stream))
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        PeerClient { peers: self.clone(), target, addr: node.addr.clone(), stream: None }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    peers: Peers,
    target: NodeId,
    addr: String,
    /// The AppendEntries stream to this peer, opened on first use and dropped on any error
    /// or timeout (a late answer must never be taken for the next request's).
    stream: Option<AppendStream>,
}

/// One open `AppendStream`: requests go into `tx`, their answers come back on `rx` in order.
struct AppendStream {
    tx: tokio::sync::mpsc::Sender<Payload>,
    rx: Streaming<Payload>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// An `InstallSnapshotRequest` without its data (which travels in `blob`).
#[derive(Serialize, Deserialize)]
struct SnapshotChunk {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, Member>,
    offset: u64,
    done: bool,
}

impl PeerClient {
    async fn send<Q, A, E>(
        &mut self,
        rpc: Rpc,
        req: &Q,
        blob: Bytes,
        option: &RPCOption,
    ) -> Result<A, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.peers.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let request = self.peers.request(data, blob, option.hard_ttl());
        let resp = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let resp = resp.map_err(|status| stream_error(status, &self.peers))?;
        let result: Result<A, RaftError<NodeId, E>> =
            serde_json::from_slice(&resp.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// A transport failure of a Raft RPC (unary or on the AppendEntries stream), as openraft
/// wants it.
fn stream_error<E: std::error::Error>(status: Status, peers: &Peers) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    match status.code() {
        tonic::Code::FailedPrecondition if status.message() == REMOVED => {
            peers.mark_removed();
            RPCError::Unreachable(Unreachable::new(&status))
        }
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl PeerClient {
    /// AppendEntries over the stream to this peer (opening it if needed); falls back to the
    /// unary RPC for a peer that does not know the stream.
    async fn append_streamed(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        if self.peers.is_unary_only(&self.addr) {
            return self.send(Rpc::Append, rpc, Bytes::new(), option).await;
        }
        let data = serde_json::to_vec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let from = self.peers.from.load(std::sync::atomic::Ordering::Relaxed);
        let ttl = option.hard_ttl();
        let exchange = async {
            if self.stream.is_none() {
                let mut client =
                    self.peers.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
                // Room for one request: openraft sends the next only after this one's answer.
                let (tx, requests) = tokio::sync::mpsc::channel(1);
                let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
                inject_grpc(request.metadata_mut());
                match client.append_stream(request).await {
                    Ok(resp) => self.stream = Some(AppendStream { tx, rx: resp.into_inner() }),
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        self.peers.set_unary_only(&self.addr, "AppendStream");
                        return Err(None);
                    }
                    Err(status) => return Err(Some(stream_error(status, &self.peers))),
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            let lost = || Some(RPCError::Unreachable(Unreachable::new(&Status::unavailable("append stream closed"))));
            stream.tx.send(Payload { from, data: data.into(), ..Default::default() }).await.map_err(|_| lost())?;
            match stream.rx.message().await {
                Ok(Some(answer)) => Ok(answer),
                Ok(None) => Err(lost()),
                Err(status) => Err(Some(stream_error(status, &self.peers))),
            }
        };
        let answer = match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(None)) => return self.send(Rpc::Append, rpc, Bytes::new(), option).await,
            Ok(Err(Some(e))) => {
                self.stream = None;
                return Err(e);
            }
            Err(elapsed) => {
                self.stream = None;
                return Err(RPCError::Network(NetworkError::new(&elapsed)));
            }
        };
        let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = serde_json::from_slice(&answer.data)
            .map_err(|e| {
                self.stream = None;
                RPCError::Network(NetworkError::new(&e))
            })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let started = std::time::Instant::now();
        let with_entries = !rpc.entries.is_empty();
        let r = self.append_streamed(&rpc, &option).await;
        if with_entries {
            metrics::histogram!("metad_peer_append_rtt_seconds").record(started.elapsed().as_secs_f64());
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        let chunk = SnapshotChunk { vote: rpc.vote, meta: rpc.meta, offset: rpc.offset, done: rpc.done };
        self.send(Rpc::Snapshot, &chunk, Bytes::from(rpc.data), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.send(Rpc::Vote, &rpc, Bytes::new(), &option).await
    }
}

/// The peer gRPC service.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl PeerService {
    /// The leader refuses Raft traffic from a member its effective membership config (the
    /// latest in its log, joint configs included) no longer has, so that member learns it
    /// was removed (as etcd's peers do).
    fn refuse_removed(&self, from: NodeId) -> Result<(), Status> {
        let known = || {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            m.membership_config.nodes().next().is_none() || m.membership_config.membership().get_node(&from).is_some()
        };
        if from != 0 && self.node.is_leader() && !known() {
            return Err(Status::failed_precondition(REMOVED));
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(data).map_err(|e| Status::invalid_argument(format!("malformed peer message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<Payload>, Status> {
    let data = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(Payload { data: data.into(), ..Default::default() }))
}

impl PeerService {
    /// Handle one AppendEntries request (unary or streamed).
    async fn append(&self, payload: Payload) -> Result<Payload, Status> {
        self.refuse_removed(payload.from)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&payload.data)?;
        let started = std::time::Instant::now();
        let with_entries = !rpc.entries.is_empty();
        let resp = self.node.raft.append_entries(rpc).await;
        if with_entries {
            metrics::histogram!("metad_peer_append_handle_seconds").record(started.elapsed().as_secs_f64());
        }
        encode(&resp).map(Response::into_inner)
    }
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send>>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.append(request.into_inner()).await.map(Response::new)
    }

    type AppendStreamStream = PayloadStream;

    /// Requests are handled one at a time, in order, inside the response stream itself
    /// (no task or channel in between); an error ends the stream with its status, and the
    /// leader opens a new one.
    async fn append_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let svc = self.clone();
        let stop = self.node.shutdown.clone();
        // Ends on shutdown: a graceful shutdown waits for every open stream, and this one
        // would otherwise stay open as long as the leader does.
        let answers = request
            .into_inner()
            .then(move |payload| {
                let svc = svc.clone();
                async move { svc.append(payload?).await }
            })
            .take_until(async move { stop.wait().await });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_removed(request.get_ref().from)?;
        let rpc: VoteRequest<NodeId> = decode(&request.into_inner().data)?;
        encode(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let p = request.into_inner();
        let c: SnapshotChunk = decode(&p.data)?;
        let rpc = InstallSnapshotRequest {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: p.blob.to_vec(),
            done: c.done,
        };
        encode(&self.node.raft.install_snapshot(rpc).await)
    }

    type CallStreamStream = PayloadStream;

    /// Each request runs in its own task (forwarded writes must be able to batch); answers
    /// go back as they finish, tagged with the request's id. At most `CALLS_PER_STREAM` run
    /// at once: beyond that the stream is not read.
    async fn call_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::CallStreamStream>, Status> {
        let (tx, answers) = tokio::sync::mpsc::channel(CALLS_PER_STREAM);
        let node = Arc::clone(&self.node);
        let mut requests = request.into_inner();
        let running = Arc::new(tokio::sync::Semaphore::new(CALLS_PER_STREAM));
        let stop = self.node.shutdown.clone();
        tokio::spawn(async move {
            loop {
                // Stops reading on shutdown (calls already running still answer).
                let p = tokio::select! {
                    m = requests.message() => match m {
                        Ok(Some(p)) => p,
                        _ => break,
                    },
                    () = stop.wait() => break,
                };
                let Ok(permit) = Arc::clone(&running).acquire_owned().await else { break };
                let (node, tx) = (Arc::clone(&node), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let span = tracing::info_span!("peer_call", from = p.from);
                    aether_common::telemetry::continue_traceparent(&span, &p.traceparent);
                    let reply = match decode::<PeerCall>(&p.data) {
                        Ok(call) => node.handle_call(p.from, call).instrument(span).await,
                        Err(status) => Err(EtcdError::Internal(status.message().to_string())),
                    };
                    let answer = match serde_json::to_vec(&reply) {
                        Ok(data) => Ok(Payload { data: data.into(), id: p.id, ..Default::default() }),
                        Err(e) => Err(Status::internal(e.to_string())),
                    };
                    let _ = tx.send(answer).await;
                });
            }
        });
        // Ends on shutdown, like `append_stream`'s, so a graceful shutdown does not wait
        // for the caller to close it.
        let stop = self.node.shutdown.clone();
        let answers = tokio_stream::wrappers::ReceiverStream::new(answers).take_until(async move { stop.wait().await });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn call(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let span = tracing::info_span!("peer_call", from = request.get_ref().from);
        continue_grpc(&span, request.metadata());
        let p = request.into_inner();
        let call: PeerCall = decode(&p.data)?;
        let reply = self.node.handle_call(p.from, call).instrument(span).await;
        encode(&reply)
    }
}
