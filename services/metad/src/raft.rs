//! openraft glue: the type config and member type, the commands that go through the log,
//! the log store (SQLite, WAL, synchronous=FULL; also holds this member's identity) and the
//! state machine (the MVCC store in memory, snapshots in a file). The network is in
//! `peer.rs`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aether_proto::etcd::etcdserverpb as pb;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use prost::Message as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::broadcast;

use crate::error::EtcdError;
use crate::mvcc::{Applier, ApplyResult, Db, RevisionEvents, State, WriteOutcome};

/// A Raft node id is the etcd member id.
pub type NodeId = u64;

/// What the membership config knows about a member. `addr` is its peer URL (the field name
/// is openraft's `BasicNode`'s, so data written by the single-node first cut still loads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub addr: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub client_urls: Vec<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// Who this member is, fixed when its data dir is first used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub member_id: NodeId,
    pub cluster_id: u64,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
        Entry = Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What goes through the Raft log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A prost-encoded `TxnRequest` (Put and DeleteRange travel as one-op txns).
    Txn(#[serde(with = "crate::b64")] Vec<u8>),
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
}

impl Command {
    pub fn txn(req: &pb::TxnRequest) -> Self {
        Command::Txn(req.encode_to_vec())
    }
}

/// What applying one entry returned. Only the leader that proposed the entry reads it, in
/// process, so it is never serialized.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandResult {
    #[serde(skip)]
    pub outcome: Option<Result<WriteOutcome, EtcdError>>,
}

// ---------------------------------------------------------------------------------------
// Log store

/// Raft log, vote and committed id in SQLite; every log or vote write is a committed
/// (fsynced) transaction before it is acknowledged. The committed id is written along with
/// the next append rather than with an fsync of its own: after a restart the node re-applies
/// up to the committed id it finds, and the rest once it has led and committed again.
///
/// `append` does not wait for the disk: it hands the entries to a writer task and returns,
/// and the writer reports each append flushed (openraft's `LogFlushed`) once its SQLite
/// transaction has committed. openraft counts an entry towards a quorum only when flushed,
/// so the leader's fsync overlaps with replication instead of preceding it, and appends
/// that queue up while one commits share the next commit (group commit). Until then the
/// entries sit in `pending`, where the log reader finds them.
#[derive(Debug, Clone)]
pub struct LogStore {
    pool: SqlitePool,
    committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    pending: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Entry<TypeConfig>>>>,
    writer: tokio::sync::mpsc::Sender<WriteOp>,
}

/// Work for the log writer task, in order.
enum WriteOp {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Answered once every op queued before it has committed.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteOp::Append { rows, .. } => write!(f, "Append({} entries)", rows.len()),
            WriteOp::Barrier(_) => write!(f, "Barrier"),
        }
    }
}

/// Appends per SQLite transaction at most (the queue holds up to `WRITE_QUEUE`).
const GROUP_COMMIT: usize = 256;
const WRITE_QUEUE: usize = 1024;

async fn log_writer(
    pool: SqlitePool,
    committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    pending: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Entry<TypeConfig>>>>,
    mut rx: tokio::sync::mpsc::Receiver<WriteOp>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let commit = async {
            let mut tx = pool.begin().await?;
            for op in &batch {
                if let WriteOp::Append { rows, .. } = op {
                    for (i, bytes) in rows {
                        sqlx::query("INSERT OR REPLACE INTO log (idx, entry) VALUES (?, ?)")
                            .bind(idx(*i))
                            .bind(bytes.as_slice())
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            let committed = *committed.lock().unwrap_or_else(|e| e.into_inner());
            if committed.is_some() {
                let bytes = serde_json::to_vec(&committed).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO meta (name, value) VALUES ('committed', ?) \
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                )
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = &commit {
            tracing::error!(error = %e, "raft log write failed");
        }
        for op in batch {
            match op {
                WriteOp::Append { rows, done } => {
                    if commit.is_ok() {
                        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                        for (i, _) in &rows {
                            p.remove(i);
                        }
                    }
                    let result = commit.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
                    done.log_io_completed(result);
                }
                WriteOp::Barrier(tx) => {
                    let _ = tx.send(());
                }
            }
        }
    }
}

fn idx(i: u64) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

impl LogStore {
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
            .execute(&pool)
            .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
            .execute(&pool)
            .await?;
        let committed = Arc::default();
        let pending = Arc::default();
        let (writer, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        tokio::spawn(log_writer(pool.clone(), Arc::clone(&committed), Arc::clone(&pending), rx));
        Ok(Self { pool, committed, pending, writer })
    }

    /// Wait until every append queued so far has committed.
    async fn barrier(&self) -> Result<(), StorageIOError<NodeId>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || StorageIOError::write_logs(&std::io::Error::other("raft log writer stopped"));
        self.writer.send(WriteOp::Barrier(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn get_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageIOError<NodeId>> {
        let v: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM meta WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StorageIOError::read(&e))?;
        v.map(|b| serde_json::from_slice(&b)).transpose().map_err(|e| StorageIOError::read(&e))
    }

    async fn set_meta<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StorageIOError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(bytes)
        .execute(&self.pool)
        .await
        .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// This member's identity, if the data dir has one.
    pub async fn identity(&self) -> Result<Option<Identity>, StorageIOError<NodeId>> {
        self.get_meta("identity").await
    }

    pub async fn save_identity(&self, id: &Identity) -> Result<(), StorageIOError<NodeId>> {
        self.set_meta("identity", id).await
    }

    /// Whether the log store holds Raft state (a vote or log entries).
    pub async fn has_state(&self) -> Result<bool, StorageIOError<NodeId>> {
        let vote: Option<Vote<NodeId>> = self.get_meta("vote").await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM log")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(vote.is_some() || n > 0)
    }

    /// Rebuild the database file (etcd's Defragment).
    pub async fn vacuum(&self) -> Result<(), sqlx::Error> {
        sqlx::query("VACUUM").execute(&self.pool).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        Ok(())
    }

    /// Bytes on disk (database and its WAL).
    pub fn disk_size(path: &Path) -> u64 {
        let mut n = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        n += std::fs::metadata(PathBuf::from(wal)).map(|m| m.len()).unwrap_or(0);
        n
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => idx(*x),
            Bound::Excluded(x) => idx(*x).saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => idx(*x),
            Bound::Excluded(x) => idx(*x) - 1,
            Bound::Unbounded => i64::MAX,
        };
        // Pending entries first: one that commits meanwhile is then in the table.
        let pending: Vec<Entry<TypeConfig>> = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let lo = u64::try_from(start.max(0)).unwrap_or(0);
            let hi = u64::try_from(end.max(0)).unwrap_or(0);
            if end < start { Vec::new() } else { p.range(lo..=hi).map(|(_, e)| e.clone()).collect() }
        };
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT entry FROM log WHERE idx >= ? AND idx <= ? ORDER BY idx")
            .bind(start)
            .bind(end)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let mut by_index = std::collections::BTreeMap::new();
        for b in &rows {
            let e: Entry<TypeConfig> = serde_json::from_slice(b).map_err(|e| StorageIOError::read_logs(&e))?;
            by_index.insert(e.log_id.index, e);
        }
        for e in pending {
            by_index.insert(e.log_id.index, e);
        }
        Ok(by_index.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta("last_purged").await?;
        let last: Option<Vec<u8>> = sqlx::query_scalar("SELECT entry FROM log ORDER BY idx DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let stored = match last {
            Some(b) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(&b).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(e.log_id)
            }
            None => last_purged_log_id,
        };
        let queued = self.pending.lock().unwrap_or_else(|e| e.into_inner()).values().next_back().map(|e| e.log_id);
        let last_log_id = std::cmp::max(stored, queued);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        Ok(self.set_meta("vote", vote).await?)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.get_meta("vote").await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed").await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
                rows.push((entry.log_id.index, bytes));
                p.insert(entry.log_id.index, entry);
            }
        }
        let op = WriteOp::Append { rows, done: callback };
        self.writer
            .send(op)
            .await
            .map_err(|_| StorageIOError::write_logs(&std::io::Error::other("raft log writer stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Queued appends land first; openraft issues nothing else while this runs.
        self.barrier().await?;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|i, _| *i < log_id.index);
        sqlx::query("DELETE FROM log WHERE idx >= ?")
            .bind(idx(log_id.index))
            .execute(&self.pool)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.barrier().await?;
        self.set_meta("last_purged", &log_id).await?;
        sqlx::query("DELETE FROM log WHERE idx <= ?")
            .bind(idx(log_id.index))
            .execute(&self.pool)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// State machine

/// What the gRPC services share with the state machine.
#[derive(Debug)]
pub struct Shared {
    state: RwLock<State>,
    /// The MVCC store on disk; every read goes here.
    pub db: Db,
    /// Every applied revision's events; watchers subscribe. Never blocks the apply path.
    pub events: broadcast::Sender<Arc<RevisionEvents>>,
}

impl Shared {
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
    data_dir: PathBuf,
}

/// Capacity of the event broadcast (revisions a watch stream may lag before it must
/// catch up from history).
pub const EVENT_BUFFER: usize = 1024;

/// The last snapshot: a copy of `state.db` (its `meta` table says which log id it holds).
const SNAPSHOT_FILE: &str = "snapshot.db";
const SNAPSHOT_RECV: &str = "snapshot.recv";

/// The first cut's snapshot file (JSON header + store image), imported once if found.
#[derive(Serialize, Deserialize)]
struct LegacySnapshotHeader {
    meta: SnapshotMeta<NodeId, Member>,
}

impl StateMachine {
    /// Open the state database (importing the first cut's snapshot file into a new one).
    pub async fn open(data_dir: &Path) -> Result<Self, crate::MetadError> {
        let snap_err = |e: &dyn std::fmt::Display| crate::MetadError::Snapshot(e.to_string());
        let (db, mut st) = Db::open(&data_dir.join("state.db")).await?;
        let legacy = data_dir.join("snapshot.bin");
        if st.last_applied.is_none() && tokio::fs::try_exists(&legacy).await.unwrap_or(false) {
            let bytes = tokio::fs::read(&legacy).await.map_err(|e| snap_err(&e))?;
            let len = bytes.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes).unwrap_or(0);
            let header = bytes.get(4..4 + len as usize).ok_or_else(|| snap_err(&"malformed snapshot.bin"))?;
            let header: LegacySnapshotHeader = serde_json::from_slice(header).map_err(|e| snap_err(&e))?;
            st = db
                .import_legacy(&bytes[4 + len as usize..], header.meta.last_log_id, header.meta.last_membership)
                .await
                .map_err(|e| snap_err(&e))?;
            tokio::fs::rename(&legacy, data_dir.join("snapshot.bin.imported")).await.map_err(|e| snap_err(&e))?;
            tracing::info!(revision = st.revision, "imported the first-cut snapshot.bin into state.db");
        }
        // After a power loss state.db (synchronous=NORMAL) may be behind the last snapshot,
        // whose log may be purged: start from the snapshot then.
        let snap = data_dir.join(SNAPSHOT_FILE);
        if tokio::fs::try_exists(&snap).await.unwrap_or(false) {
            let (snap_applied, _, _) = Db::read_position(&snap).await?;
            if snap_applied > st.last_applied {
                st = db.import(&snap).await?;
                tracing::warn!(applied = ?st.last_applied, "state.db was behind the last snapshot; restored it");
            }
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self { shared: Arc::new(Shared { state: RwLock::new(st), db, events }), data_dir: data_dir.to_path_buf() })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

async fn apply_command(a: &mut Applier<'_>, cmd: &Command) -> ApplyResult {
    match cmd {
        Command::Txn(bytes) => match pb::TxnRequest::decode(bytes.as_slice()) {
            Ok(req) => a.txn(&req).await,
            Err(e) => Ok(Err(EtcdError::Internal(e.to_string()))),
        },
        Command::Compact { revision } => a.compact_cmd(*revision).await,
        Command::LeaseGrant { id, ttl } => a.lease_grant(*id, *ttl).await,
        Command::LeaseRevoke { id } => a.lease_revoke(*id).await,
    }
}

fn snapshot_id(last: &Option<LogId<NodeId>>, revision: i64) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, revision),
        None => format!("0-0-{revision}"),
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    data_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let tmp = self.data_dir.join("snapshot.tmp");
        let path = self.data_dir.join(SNAPSHOT_FILE);
        let w = |e: &dyn std::fmt::Display| StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string()));
        self.shared.db.copy_to(&tmp).await.map_err(|e| w(&e))?;
        let (last_log_id, last_membership, revision) = Db::read_position(&tmp).await.map_err(|e| w(&e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| w(&e))?;
        sync_dir(&self.data_dir).await.map_err(|e| w(&e))?;
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id: snapshot_id(&last_log_id, revision) };
        tracing::info!(snapshot = %meta, "snapshot written");
        let file = tokio::fs::File::open(&path).await.map_err(|e| w(&e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let st = self.shared.read();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let io = |e: sqlx::Error| StorageError::from(StorageIOError::<NodeId>::write_state_machine(&e));
        let mut work = self.shared.read().clone();
        let mut results = Vec::new();
        let mut events = Vec::new();
        let mut tx = self.shared.db.begin_write().await.map_err(io)?;
        for entry in entries {
            work.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(CommandResult::default()),
                EntryPayload::Membership(m) => {
                    work.membership = StoredMembership::new(Some(entry.log_id), m);
                    results.push(CommandResult::default());
                }
                EntryPayload::Normal(cmd) => {
                    let outcome =
                        apply_command(&mut Applier { conn: &mut tx, st: &mut work }, &cmd).await.map_err(io)?;
                    if let Ok(WriteOutcome { events: Some(ev), .. }) = &outcome {
                        events.push(Arc::new(ev.clone()));
                    }
                    if let Err(EtcdError::Internal(detail)) = &outcome {
                        tracing::error!(detail = %detail, "apply failed");
                    }
                    results.push(CommandResult { outcome: Some(outcome) });
                }
            }
        }
        crate::mvcc::save_state(&mut tx, &work).await.map_err(io)?;
        tx.commit().await.map_err(io)?;
        *self.shared.write() = work;
        for ev in events {
            // No receivers is fine; a lagging receiver catches up from history.
            let _ = self.shared.events.send(ev);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone(), data_dir: self.data_dir.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.data_dir.join(SNAPSHOT_RECV);
        let file = tokio::fs::File::create(&path).await.map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let w = |e: &dyn std::fmt::Display| {
            StorageIOError::write_snapshot(Some(meta.signature()), &std::io::Error::other(e.to_string()))
        };
        snapshot.sync_all().await.map_err(|e| w(&e))?;
        drop(snapshot);
        let path = self.data_dir.join(SNAPSHOT_FILE);
        tokio::fs::rename(self.data_dir.join(SNAPSHOT_RECV), &path).await.map_err(|e| w(&e))?;
        sync_dir(&self.data_dir).await.map_err(|e| w(&e))?;
        let mut st = self.shared.db.import(&path).await.map_err(|e| w(&e))?;
        // The snapshot's own meta is authoritative for Raft.
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta, revision = st.revision, "installed a snapshot");
        *self.shared.write() = st;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let path = self.data_dir.join(SNAPSHOT_FILE);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(None);
        }
        let r = |e: &dyn std::fmt::Display| StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string()));
        let (last_log_id, last_membership, revision) = Db::read_position(&path).await.map_err(|e| r(&e))?;
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id: snapshot_id(&last_log_id, revision) };
        let file = tokio::fs::File::open(&path).await.map_err(|e| r(&e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}
