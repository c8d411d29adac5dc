//! The state every gRPC service shares: the Raft handle, the applied state, this member's
//! identity, the leader-local lease clock, and the paths by which a follower serves a
//! request (writes, read-index and lease keep-alives go to the leader).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aether_common::shutdown::Shutdown;
use aether_proto::etcd::etcdserverpb as pb;
use openraft::ChangeMembers;
use prost::Message as _;
use tracing::Instrument as _;

use crate::error::{EtcdError, from_read_error, from_write_error};
use crate::lease::LeaseClock;
use crate::mvcc::WriteOutcome;
use crate::peer::{MemberInfo, MemberOp, PeerCall, PeerReply, Peers};
use crate::raft::{Command, Identity, Member, NodeId, Raft, Shared};

/// How long a request waits for a leader to be known before `etcdserver: no leader`.
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a proposal or read-index may take before `etcdserver: request timed out`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Node {
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub name: String,
    pub id: NodeId,
    pub cluster_id: u64,
    pub client_urls: Vec<String>,
    pub db_path: PathBuf,
    pub leases: LeaseClock,
    pub peers: Peers,
    pub shutdown: Shutdown,
    /// How often watchers with `progress_notify` hear the current revision.
    pub watch_progress_interval: Duration,
    lease_seq: AtomicU64,
    /// Membership changes go one at a time (openraft refuses one while another is in flight).
    member_lock: tokio::sync::Mutex<()>,
    /// Set once this member has seen itself in the membership config; if it later
    /// disappears, the member was removed.
    was_member: AtomicBool,
    /// Proposals on their way into the log (see `propose_batches`).
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    /// Entries being proposed at once (`PROPOSALS_IN_FLIGHT`), shared with the proposer.
    proposal_slots: Arc<tokio::sync::Semaphore>,
    /// Read-index rounds shared by concurrent linearizable reads.
    read_rounds: ReadRounds,
    /// The highest log index of a write this member forwarded and answered: its
    /// serializable reads and new watches wait until it has applied that far.
    write_fence: AtomicU64,
}

/// A finished read-index round: its number and result.
type ReadRound = (u64, Result<Option<u64>, EtcdError>);

struct ReadRounds {
    /// Rounds started so far.
    started: AtomicU64,
    /// Held while a round runs.
    running: tokio::sync::Mutex<()>,
    /// The last finished round.
    done: tokio::sync::watch::Sender<ReadRound>,
}

/// A command waiting to be proposed, and who waits for its outcome and log index.
type Proposal = (Command, tokio::sync::oneshot::Sender<Result<(WriteOutcome, u64), EtcdError>>);

/// Proposals queued at most (callers wait for room beyond that).
const PROPOSAL_QUEUE: usize = 4096;
/// Batches in flight in Raft at once; while all are, new proposals gather into the next.
const PROPOSALS_IN_FLIGHT: usize = 4;
/// Commands and bytes in one batch at most.
const BATCH_COMMANDS: usize = 1024;
const BATCH_BYTES: usize = 4 << 20;

/// The leader's proposer: concurrent proposals go into the log together, one entry per
/// batch (`Command::Batch`), so Raft's per-entry work (core loop, append, replication
/// bookkeeping, flush) is paid once per batch rather than per request. Batches form only
/// while `PROPOSALS_IN_FLIGHT` are in flight; a proposal that finds a free slot and an
/// empty queue does not come here at all (`Node::write_local` proposes it at once).
async fn propose_batches(
    raft: Raft,
    slots: Arc<tokio::sync::Semaphore>,
    mut rx: tokio::sync::mpsc::Receiver<Proposal>,
) {
    while let Some(first) = rx.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let mut bytes = first.0.size();
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.0.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (timed out while this queued) is not proposed for.
        batch.retain(|(_, w)| !w.is_closed());
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (mut cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let cmd = if cmds.len() == 1 { cmds.remove(0) } else { Command::Batch(cmds) };
            let mut outcomes = propose(&raft, cmd, waiters.len()).await;
            for w in waiters {
                let _ = w.send(outcomes.next().unwrap_or(Err(EtcdError::Timeout)));
            }
        });
    }
}

/// Propose one entry carrying `commands` commands; each one's outcome and the entry's index,
/// in order (every one the same error if the entry failed).
async fn propose(
    raft: &Raft,
    cmd: Command,
    commands: usize,
) -> impl Iterator<Item = Result<(WriteOutcome, u64), EtcdError>> {
    metrics::histogram!("metad_proposal_batch_commands").record(commands as f64);
    let started = std::time::Instant::now();
    let (outcomes, error) = match tokio::time::timeout(REQUEST_TIMEOUT, raft.client_write(cmd)).await {
        Ok(Ok(resp)) => {
            metrics::histogram!("metad_proposal_seconds").record(started.elapsed().as_secs_f64());
            let index = resp.log_id.index;
            let outcomes: Vec<_> = resp.data.outcomes.into_iter().map(|o| o.map(|o| (o, index))).collect();
            (outcomes, EtcdError::Internal("applied entry returned no outcome".into()))
        }
        Ok(Err(e)) => (Vec::new(), from_write_error(e)),
        Err(_) => (Vec::new(), EtcdError::Timeout),
    };
    let missing = commands.saturating_sub(outcomes.len());
    outcomes.into_iter().chain(std::iter::repeat_n(Err(error), missing))
}

/// FNV-1a, 64 bit: stable ids derived from names (never 0).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

pub struct NodeParts {
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub name: String,
    pub identity: Identity,
    pub client_urls: Vec<String>,
    pub db_path: PathBuf,
    pub peers: Peers,
    pub shutdown: Shutdown,
    pub watch_progress_interval: Duration,
}

impl Node {
    pub fn new(p: NodeParts) -> Self {
        let (proposals, rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        let proposal_slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
        tokio::spawn(propose_batches(p.raft.clone(), Arc::clone(&proposal_slots), rx));
        Self {
            raft: p.raft,
            shared: p.shared,
            name: p.name,
            id: p.identity.member_id,
            cluster_id: p.identity.cluster_id,
            client_urls: p.client_urls,
            db_path: p.db_path,
            leases: LeaseClock::default(),
            peers: p.peers,
            shutdown: p.shutdown,
            watch_progress_interval: p.watch_progress_interval,
            lease_seq: AtomicU64::new(0),
            was_member: AtomicBool::new(false),
            member_lock: tokio::sync::Mutex::new(()),
            proposals,
            proposal_slots,
            write_fence: AtomicU64::new(0),
            read_rounds: ReadRounds {
                started: AtomicU64::new(0),
                running: tokio::sync::Mutex::new(()),
                done: tokio::sync::watch::Sender::new((0, Ok(None))),
            },
        }
    }

    pub fn raft_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader { cluster_id: self.cluster_id, member_id: self.id, revision, raft_term: self.raft_term() }
    }

    pub fn current_header(&self) -> pb::ResponseHeader {
        let rev = self.shared.read().revision;
        self.header(rev)
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.id)
    }

    /// Members as the applied membership config has them (voters first, then learners).
    pub fn members(&self) -> Vec<MemberInfo> {
        let st = self.shared.read();
        let m = st.membership.membership();
        let voters: std::collections::BTreeSet<NodeId> = m.voter_ids().collect();
        let mut out: Vec<MemberInfo> = m
            .nodes()
            .map(|(id, member)| MemberInfo { id: *id, member: member.clone(), learner: !voters.contains(id) })
            .collect();
        out.sort_by_key(|m| (m.learner, m.id));
        out
    }

    /// One member's attributes, as the applied membership config has them.
    fn member(&self, id: NodeId) -> Option<Member> {
        self.shared.read().membership.membership().get_node(&id).cloned()
    }

    /// Whether the applied membership config has this member's name and client URLs.
    pub fn published(&self) -> bool {
        let st = self.shared.read();
        st.membership
            .membership()
            .get_node(&self.id)
            .is_some_and(|m| m.name == self.name && m.client_urls == self.client_urls)
    }

    /// `etcdserver: the member has been permanently removed from the cluster` once the
    /// membership config this member applied no longer lists it, or the leader said so.
    pub fn check_removed(&self) -> Result<(), EtcdError> {
        if self.peers.removed() || self.left_applied_membership() {
            return Err(EtcdError::MemberRemoved);
        }
        Ok(())
    }

    /// Whether this member's removal is known to be committed: it applied a membership
    /// config without itself, or the leader told it so. (A leader refusing its Raft traffic
    /// judges by a config that may not be committed yet, so that alone is not final.)
    pub fn removal_committed(&self) -> bool {
        self.peers.removal_committed() || self.left_applied_membership()
    }

    /// Whether the applied membership config no longer lists this member though an earlier
    /// one did (remembered here: a member joining is not listed yet either).
    fn left_applied_membership(&self) -> bool {
        let present = self.shared.read().membership.membership().get_node(&self.id).is_some();
        if present {
            self.was_member.store(true, Ordering::Relaxed);
        }
        !present && self.was_member.load(Ordering::Relaxed)
    }

    /// The leader, waiting up to `LEADER_WAIT` for one to be known.
    async fn leader(&self) -> Result<(NodeId, Member), EtcdError> {
        self.check_removed()?;
        let mut metrics = self.raft.metrics();
        let wait = metrics.wait_for(|m| m.current_leader.is_some());
        let leader = tokio::select! {
            r = tokio::time::timeout(LEADER_WAIT, wait) => match r {
                Ok(Ok(m)) => m.current_leader,
                Ok(Err(_)) => return Err(EtcdError::Stopped),
                Err(_) => return Err(EtcdError::NoLeader),
            },
            () = self.shutdown.wait() => return Err(EtcdError::Stopped),
        };
        let id = leader.ok_or(EtcdError::NoLeader)?;
        if id == self.id {
            return Ok((id, Member::default()));
        }
        let member = self.member(id).ok_or(EtcdError::NoLeader)?;
        Ok((id, member))
    }

    /// Send `call` to the leader (which must not be this member).
    async fn to_leader(&self, leader: &Member, call: &PeerCall) -> Result<PeerReply, EtcdError> {
        self.peers.call(&leader.addr, call, REQUEST_TIMEOUT).await
    }

    /// Propose a command and wait for it to be applied (on the leader, forwarded if this
    /// member is a follower).
    pub async fn write(&self, cmd: Command) -> Result<WriteOutcome, EtcdError> {
        let (leader, member) = self.leader().await?;
        if leader == self.id {
            return self.write_local(cmd).await.map(|(out, _)| out);
        }
        let started = std::time::Instant::now();
        let span = tracing::info_span!("raft.forward", leader = %format!("{leader:x}"));
        match self.to_leader(&member, &PeerCall::Write(cmd)).instrument(span).await? {
            PeerReply::Written { revision, index, has_txn, txn } => {
                metrics::histogram!("metad_forwarded_write_seconds").record(started.elapsed().as_secs_f64());
                // Answered as soon as the leader has applied it. A serializable read or a
                // watch created here afterwards still sees the write, as on etcd (which
                // answers once this member applied it): they wait for `write_fence` first.
                // (Waiting here instead would wait for the leader to tell this member of
                // the commit, which it defers until entries carry it or a heartbeat is due.)
                self.write_fence.fetch_max(index, Ordering::AcqRel);
                let txn = if has_txn {
                    Some(pb::TxnResponse::decode(txn.as_slice()).map_err(|e| EtcdError::Internal(e.to_string()))?)
                } else {
                    None
                };
                Ok(WriteOutcome { revision, txn, events: None })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Propose only if this member leads (never forwarded); the outcome and the log index
    /// of the entry that carried it.
    pub async fn write_local(&self, cmd: Command) -> Result<(WriteOutcome, u64), EtcdError> {
        // One span per proposal as its caller sees it: proposed, committed by a quorum and
        // applied (a batch of concurrent proposals shares one Raft entry).
        let span = tracing::info_span!("raft.propose_apply", index = tracing::field::Empty);
        async {
            // Nothing queued and a slot free: propose here, without the proposer's hand-offs.
            let r = if self.proposals.capacity() == PROPOSAL_QUEUE
                && let Ok(_slot) = Arc::clone(&self.proposal_slots).try_acquire_owned()
            {
                propose(&self.raft, cmd, 1).await.next().unwrap_or(Err(EtcdError::Timeout))
            } else {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let queued = async {
                    self.proposals.send((cmd, tx)).await.map_err(|_| EtcdError::Stopped)?;
                    rx.await.map_err(|_| EtcdError::Stopped)?
                };
                match tokio::time::timeout(REQUEST_TIMEOUT, queued).await {
                    Ok(r) => r,
                    Err(_) => Err(EtcdError::Timeout),
                }
            };
            if let Ok((_, index)) = &r {
                tracing::Span::current().record("index", index);
            }
            r
        }
        .instrument(span)
        .await
    }

    /// A read-index round unless the client asked for a serializable read: the leader
    /// confirms it still leads, and this member waits until it has applied that far.
    pub async fn read_barrier(&self, serializable: bool) -> Result<(), EtcdError> {
        self.check_removed()?;
        if serializable {
            return self.await_write_fence().await;
        }
        let index = self.shared_read_index().await?;
        if let Some(index) = index {
            self.raft
                .wait(Some(REQUEST_TIMEOUT))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|_| EtcdError::Timeout)?;
        }
        Ok(())
    }

    /// Wait until this member has applied every write it has answered (see `write_fence`).
    pub async fn await_write_fence(&self) -> Result<(), EtcdError> {
        let fence = self.write_fence.load(Ordering::Acquire);
        if fence == 0 || self.raft.metrics().borrow().last_applied.is_some_and(|l| l.index >= fence) {
            return Ok(());
        }
        let waited = std::time::Instant::now();
        self.raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(fence), "write fence")
            .await
            .map_err(|_| EtcdError::Timeout)?;
        metrics::histogram!("metad_write_fence_wait_seconds").record(waited.elapsed().as_secs_f64());
        Ok(())
    }

    /// A read index obtained after this call began, shared with every other read waiting
    /// for one: while a round (a leader's heartbeat round, or a follower's call to the
    /// leader) is under way, the reads that arrive meanwhile wait and share the next round.
    /// A round numbered above the count of rounds started when a read arrived began after
    /// it, so its index serves that read linearizably.
    async fn shared_read_index(&self) -> Result<Option<u64>, EtcdError> {
        let rounds = &self.read_rounds;
        let arrived = rounds.started.load(Ordering::SeqCst);
        let mut done = rounds.done.subscribe();
        let usable = |done: &tokio::sync::watch::Receiver<ReadRound>| {
            let (n, r) = &*done.borrow();
            (*n > arrived).then(|| r.clone())
        };
        loop {
            if let Some(r) = usable(&done) {
                return r;
            }
            tokio::select! {
                biased;
                _ = done.changed() => continue,
                _guard = rounds.running.lock() => {
                    if let Some(r) = usable(&done) {
                        return r;
                    }
                    let n = rounds.started.fetch_add(1, Ordering::SeqCst) + 1;
                    let r = self.read_index_round().await;
                    let _previous = rounds.done.send_replace((n, r.clone()));
                    return r;
                }
            }
        }
    }

    /// One read-index round: the leader confirms it still leads (a follower asks it).
    async fn read_index_round(&self) -> Result<Option<u64>, EtcdError> {
        let (leader, member) = self.leader().await?;
        if leader == self.id {
            return self.read_index_local().await;
        }
        match self.to_leader(&member, &PeerCall::ReadIndex).await? {
            PeerReply::ReadIndex { index } => Ok(index),
            other => Err(unexpected(&other)),
        }
    }

    async fn read_index_local(&self) -> Result<Option<u64>, EtcdError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(r) => Ok(r.map_err(from_read_error)?.map(|l| l.index)),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Restart a lease's TTL on the leader's clock; the TTL, or 0 for an unknown lease.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let (leader, member) = self.leader().await?;
        if leader != self.id {
            return match self.to_leader(&member, &PeerCall::KeepAlive { id }).await? {
                PeerReply::KeepAlive { ttl } => Ok(ttl),
                other => Err(unexpected(&other)),
            };
        }
        let ttl = self.shared.read().lease_ttl(id);
        Ok(match ttl {
            Some(ttl) => {
                self.leases.refresh(id, ttl);
                ttl
            }
            None => 0,
        })
    }

    /// Seconds left on a lease by the leader's clock (`None`: the leader has no deadline
    /// for it yet, so it has its full TTL).
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<u64>, EtcdError> {
        let (leader, member) = self.leader().await?;
        if leader != self.id {
            return match self.to_leader(&member, &PeerCall::LeaseRemaining { id }).await? {
                PeerReply::LeaseRemaining { secs } => Ok(secs),
                other => Err(unexpected(&other)),
            };
        }
        Ok(self.leases.remaining(id).map(|d| d.as_secs()))
    }

    /// A membership change, carried out by the leader.
    pub async fn member_op(&self, op: MemberOp) -> Result<(NodeId, Vec<MemberInfo>), EtcdError> {
        let (leader, member) = self.leader().await?;
        if leader != self.id {
            return match self.to_leader(&member, &PeerCall::Member(op)).await? {
                PeerReply::Member { id, members } => Ok((id, members)),
                other => Err(unexpected(&other)),
            };
        }
        let id = self.member_op_local(op).await?;
        Ok((id, self.members()))
    }

    async fn member_op_local(&self, op: MemberOp) -> Result<NodeId, EtcdError> {
        let _one_at_a_time = self.member_lock.lock().await;
        let members = self.members();
        let find = |id: NodeId| members.iter().find(|m| m.id == id).cloned().ok_or(EtcdError::MemberNotFound);
        let mut removed_addr = None;
        let (id, change) = match op {
            MemberOp::Add { peer_urls, learner } => {
                let addr = valid_peer_url(&peer_urls)?;
                if members.iter().any(|m| m.member.addr == addr) {
                    return Err(EtcdError::PeerUrlExists);
                }
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let id = fnv1a(&[addr.as_bytes(), &self.cluster_id.to_be_bytes(), &nanos.to_be_bytes()]);
                let member = Member { addr, name: String::new(), client_urls: Vec::new() };
                let nodes = std::collections::BTreeMap::from([(id, member)]);
                (id, if learner { ChangeMembers::AddNodes(nodes) } else { ChangeMembers::AddVoters(nodes) })
            }
            MemberOp::Remove { id } => {
                let m = find(id)?;
                removed_addr = Some(m.member.addr.clone());
                let ids = std::collections::BTreeSet::from([id]);
                (id, if m.learner { ChangeMembers::RemoveNodes(ids) } else { ChangeMembers::RemoveVoters(ids) })
            }
            MemberOp::Update { id, peer_urls } => {
                let addr = valid_peer_url(&peer_urls)?;
                let m = find(id)?;
                if members.iter().any(|o| o.id != id && o.member.addr == addr) {
                    return Err(EtcdError::PeerUrlExists);
                }
                let member = Member { addr, ..m.member };
                (id, ChangeMembers::SetNodes(std::collections::BTreeMap::from([(id, member)])))
            }
            MemberOp::Promote { id } => {
                let m = find(id)?;
                if !m.learner {
                    return Err(EtcdError::MemberNotLearner);
                }
                if !self.learner_in_sync(id) {
                    return Err(EtcdError::LearnerNotReady);
                }
                (id, ChangeMembers::AddVoterIds(std::collections::BTreeSet::from([id])))
            }
            MemberOp::Publish { id, name, client_urls } => {
                let m = find(id)?;
                if m.member.name == name && m.member.client_urls == client_urls {
                    return Ok(id);
                }
                let member = Member { name, client_urls, ..m.member };
                (id, ChangeMembers::SetNodes(std::collections::BTreeMap::from([(id, member)])))
            }
        };
        self.change_membership(change).await?;
        if let Some(addr) = removed_addr.filter(|_| id != self.id) {
            self.tell_removed(id, addr);
        }
        Ok(id)
    }

    /// Tell a member whose removal this leader just committed, in the background: up to 10
    /// tries over about 10 s (it may be down; it then learns from the leader's refusal of
    /// its votes, if it campaigns, or an operator stops it, as openraft's docs tell).
    fn tell_removed(&self, id: NodeId, addr: String) {
        let peers = self.peers.clone();
        let call = PeerCall::Removed { cluster_id: self.cluster_id, id };
        tokio::spawn(async move {
            for attempt in 1..=10u32 {
                match peers.call(&addr, &call, Duration::from_millis(500)).await {
                    Ok(_) => return,
                    Err(EtcdError::Timeout) if attempt < 10 => tokio::time::sleep(Duration::from_millis(500)).await, // retry backoff
                    Err(e) => {
                        tracing::warn!(member = %format!("{id:x}"), peer = %addr, error = %e, "could not tell a removed member it was removed");
                        return;
                    }
                }
            }
        });
    }

    /// Propose a membership change, retrying (bounded) while another one is in progress.
    async fn change_membership(&self, change: ChangeMembers<NodeId, Member>) -> Result<(), EtcdError> {
        use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
        for attempt in 0..50u32 {
            let r = tokio::time::timeout(REQUEST_TIMEOUT, self.raft.change_membership(change.clone(), false)).await;
            match r {
                Err(_) => return Err(EtcdError::Timeout),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) if attempt < 49 => {
                    tokio::time::sleep(Duration::from_millis(100)).await; // retry backoff
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    tracing::warn!(error = %e, "membership change refused");
                    return Err(match e {
                        ChangeMembershipError::LearnerNotFound(_) => EtcdError::MemberNotFound,
                        _ => EtcdError::Unhealthy,
                    });
                }
                Ok(Err(e)) => return Err(from_write_error(e)),
            }
        }
        Err(EtcdError::Unhealthy)
    }

    /// etcd promotes a learner only once it holds at least 90% of the leader's log.
    fn learner_in_sync(&self, id: NodeId) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned()).flatten().map(|l| l.index).unwrap_or(0);
        matched.saturating_mul(10) >= last.saturating_mul(9)
    }

    /// Serve a request another member sent.
    pub async fn handle_call(&self, from: NodeId, call: PeerCall) -> Result<PeerReply, EtcdError> {
        // Everything but Identity and Removed is for the leader; a member that is not (any more) says
        // so rather than forwarding again.
        if !matches!(call, PeerCall::Identity | PeerCall::Removed { .. }) && !self.is_leader() {
            return Err(EtcdError::LeaderChanged);
        }
        match call {
            PeerCall::Write(cmd) => {
                let (out, index) = self.write_local(cmd).await?;
                Ok(PeerReply::Written {
                    revision: out.revision,
                    index,
                    has_txn: out.txn.is_some(),
                    txn: out.txn.map(|t| t.encode_to_vec()).unwrap_or_default(),
                })
            }
            PeerCall::ReadIndex => Ok(PeerReply::ReadIndex { index: self.shared_read_index().await? }),
            PeerCall::KeepAlive { id } => Ok(PeerReply::KeepAlive { ttl: self.keep_alive(id).await? }),
            PeerCall::LeaseRemaining { id } => Ok(PeerReply::LeaseRemaining { secs: self.lease_remaining(id).await? }),
            PeerCall::Member(op) => {
                let id = self.member_op_local(op).await?;
                Ok(PeerReply::Member { id, members: self.members() })
            }
            PeerCall::Identity => Ok(PeerReply::Identity { cluster_id: self.cluster_id, members: self.members() }),
            PeerCall::Removed { cluster_id, id } => {
                // Only from another member of this cluster (the leader that removed it).
                let peer = from != self.id && self.shared.read().membership.membership().get_node(&from).is_some();
                if cluster_id != self.cluster_id || id != self.id || !peer {
                    return Err(EtcdError::MemberNotFound);
                }
                tracing::warn!("the leader says this member was removed from the cluster");
                self.peers.mark_removal_committed();
                Ok(PeerReply::Removed)
            }
        }
    }

    /// A fresh lease id (positive, not in use), as etcd assigns when the client asks for 0.
    pub fn new_lease_id(&self) -> i64 {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let st = self.shared.read();
        let mut id = 0;
        for _ in 0..64 {
            let seq = self.lease_seq.fetch_add(1, Ordering::Relaxed);
            let candidate = (((millis << 16) ^ (self.id & 0xffff) ^ (seq << 4)) & (i64::MAX as u64)) as i64;
            id = candidate.max(1);
            if st.lease_ttl(id).is_none() {
                break;
            }
        }
        id
    }
}

fn unexpected(reply: &PeerReply) -> EtcdError {
    EtcdError::Internal(format!("unexpected peer reply {reply:?}"))
}

/// The first peer URL, if every given URL is an `http(s)://host:port` URL.
fn valid_peer_url(urls: &[String]) -> Result<String, EtcdError> {
    let valid = |u: &String| {
        let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
        rest.is_some_and(|r| r.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()))
    };
    match urls.first() {
        Some(first) if urls.iter().all(valid) => Ok(first.clone()),
        _ => Err(EtcdError::BadMemberUrls),
    }
}
