//! openraft glue: the type config and member type, the commands that go through the log,
//! the log store (SQLite, WAL, synchronous=FULL; also holds this member's identity) and the
//! state machine (the MVCC store in memory, snapshots in a file). The network is in
//! `peer.rs`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use aether_proto::etcd::etcdserverpb as pb;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
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
    /// Several commands proposed together (one log entry, applied in order, each with its
    /// own revision): the leader batches concurrent proposals this way.
    Batch(Vec<Command>),
}

impl Command {
    pub fn txn(req: &pb::TxnRequest) -> Self {
        Command::Txn(req.encode_to_vec())
    }

    /// The commands this one carries: a batch's, or itself.
    pub fn commands(&self) -> &[Command] {
        match self {
            Command::Batch(cmds) => cmds,
            one => std::slice::from_ref(one),
        }
    }

    /// Roughly what the command costs in memory and on the wire.
    pub fn size(&self) -> usize {
        64 + match self {
            Command::Txn(b) => b.len(),
            Command::Batch(cmds) => cmds.iter().map(Command::size).sum(),
            _ => 0,
        }
    }
}

/// What applying one entry returned: one outcome per command (several for a `Batch`).
/// Only the leader that proposed the entry reads it, in process, so it is never serialized.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandResult {
    #[serde(skip)]
    pub outcomes: Vec<Result<WriteOutcome, EtcdError>>,
}

// ---------------------------------------------------------------------------------------
// Log store

/// Raft log, vote and committed id in SQLite (`synchronous=FULL`); every log or vote write
/// is a committed (fsynced) transaction before it is acknowledged. The committed id is
/// written along with an append (at most every `COMMITTED_SAVE_INTERVAL`) rather than with
/// an fsync of its own: after a
/// restart the node re-applies up to the committed id it finds, and the rest once it has
/// led and committed again.
///
/// A writer thread takes work in order. A follower's append that nothing is queued ahead of
/// is committed inline (openraft's core waits for it anyway); any other `append` does not
/// wait for the disk: it puts the entries in the in-memory tail (`cache`) and queues them, and
/// the writer reports each append flushed (openraft's `LogFlushed`) once its SQLite
/// transaction has committed. openraft counts an entry towards a quorum only when flushed;
/// on the leader it does not wait for that before replicating (a patch to the vendored
/// openraft, `vendor/README.md`), so the leader's fsync overlaps with replication, and appends
/// that queue up while one commits share the next commit (group commit). The log reader
/// serves the tail from `cache` (replication reads what was just appended) and only older
/// entries from disk.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

struct LogInner {
    path: PathBuf,
    /// Reads of the stored state (start-up, and entries older than the cache).
    reader: std::sync::Mutex<Connection>,
    committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    cache: Arc<std::sync::Mutex<LogCache>>,
    writer: tokio::sync::mpsc::Sender<WriteOp>,
    /// The write connection (shared by the writer thread and inline appends).
    log_writer: Arc<std::sync::Mutex<LogWriter>>,
    /// Ops sent to the writer thread and not finished yet.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Dropping it stops the checkpointer.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("path", &self.inner.path).finish()
    }
}

/// The newest log entries: a contiguous tail of the log, everything not yet on disk and
/// as much on disk as the limits allow.
#[derive(Default)]
struct LogCache {
    entries: std::collections::BTreeMap<u64, Entry<TypeConfig>>,
    /// Encoded size of `entries`.
    bytes: usize,
    /// Entries up to this index are on disk (kept in step by the writer thread, in order
    /// with truncations), so only those may leave the cache.
    durable: u64,
}

/// Entries and bytes the cache keeps at most (beyond what is not yet on disk).
const CACHE_ENTRIES: usize = 20_000;
const CACHE_BYTES: usize = 64 << 20;

impl LogCache {
    fn insert(&mut self, e: Entry<TypeConfig>) {
        self.bytes += entry_size(&e);
        if let Some(old) = self.entries.insert(e.log_id.index, e) {
            self.bytes = self.bytes.saturating_sub(entry_size(&old));
        }
        while (self.entries.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES)
            && self.entries.first_key_value().is_some_and(|(i, _)| *i <= self.durable)
        {
            if let Some((_, e)) = self.entries.pop_first() {
                self.bytes = self.bytes.saturating_sub(entry_size(&e));
            }
        }
    }

    fn remove_from(&mut self, index: u64) {
        for (_, e) in self.entries.split_off(&index) {
            self.bytes = self.bytes.saturating_sub(entry_size(&e));
        }
    }

    fn remove_upto(&mut self, index: u64) {
        let keep = self.entries.split_off(&(index + 1));
        for e in std::mem::replace(&mut self.entries, keep).values() {
            self.bytes = self.bytes.saturating_sub(entry_size(e));
        }
    }
}

/// Roughly what an entry costs in memory (its payload dominates).
fn entry_size(e: &Entry<TypeConfig>) -> usize {
    match &e.payload {
        EntryPayload::Normal(c) => c.size(),
        _ => 64,
    }
}

type WriterJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// Encoded log entries of one append, by index.
type LogRows = Vec<(u64, Vec<u8>)>;

/// Work for the log writer thread, in order.
enum WriteOp {
    Append {
        rows: LogRows,
        done: LogFlushed<TypeConfig>,
    },
    /// Anything else that writes (vote, truncate, purge, meta), after everything before it.
    Run(WriterJob),
}

/// Appends per SQLite transaction at most (the queue holds up to `WRITE_QUEUE`).
const GROUP_COMMIT: usize = 256;

/// How often at most the committed log id is written along with an append.
const COMMITTED_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
const WRITE_QUEUE: usize = 1024;

/// The log's write connection and what the writer remembers between commits; the writer
/// thread holds it while it runs an op, an inline append (see `LogStore::append`) while
/// it commits.
struct LogWriter {
    conn: Connection,
    /// The committed id last written, and when.
    saved_committed: (Option<LogId<NodeId>>, Option<std::time::Instant>),
    committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>>,
    cache: Arc<std::sync::Mutex<LogCache>>,
}

impl LogWriter {
    /// Commit appended rows in one transaction (fsynced), mark them durable in the cache
    /// and report each append's flush.
    fn commit(&mut self, batch: Vec<(LogRows, LogFlushed<TypeConfig>)>) {
        let started = std::time::Instant::now();
        let commit = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO log (idx, entry) VALUES (?, ?)")?;
                for (rows, _) in &batch {
                    for (i, bytes) in rows {
                        insert.execute(params![idx(*i), bytes])?;
                    }
                }
            }
            // The committed id is only a start-up hint (see `LogStore`), so it rides along
            // at most every COMMITTED_SAVE_INTERVAL: written with every append it was a
            // second page (meta) in each commit's fsync.
            let committed = *self.committed.lock().unwrap_or_else(|e| e.into_inner());
            let due = self.saved_committed.1.is_none_or(|at| at.elapsed() >= COMMITTED_SAVE_INTERVAL);
            if committed.is_some() && committed != self.saved_committed.0 && due {
                let bytes = serde_json::to_vec(&committed).unwrap_or_default();
                crate::mvcc::set_meta(&tx, "committed", &bytes)?;
                self.saved_committed = (committed, Some(std::time::Instant::now()));
            }
            tx.commit()
        })();
        metrics::histogram!("metad_log_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("metad_log_commit_appends").record(batch.len() as f64);
        if let Err(e) = &commit {
            tracing::error!(error = %e, "raft log write failed");
        } else if let Some(last) = batch.iter().flat_map(|(rows, _)| rows.iter().map(|(i, _)| *i)).max() {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            c.durable = c.durable.max(last);
        }
        for (_, done) in batch {
            let result = commit.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
            done.log_io_completed(result);
        }
    }
}

/// The writer thread: runs queued ops in order, group-committing consecutive appends;
/// `pending` counts the ops queued and not yet finished.
fn log_writer(
    writer: Arc<std::sync::Mutex<LogWriter>>,
    pending: Arc<std::sync::atomic::AtomicUsize>,
    mut rx: tokio::sync::mpsc::Receiver<WriteOp>,
) {
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(op) => op,
            None => match rx.blocking_recv() {
                Some(op) => op,
                None => return,
            },
        };
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        let (rows, done) = match first {
            WriteOp::Run(job) => {
                job(&mut w.conn);
                drop(w);
                pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                continue;
            }
            WriteOp::Append { rows, done } => (rows, done),
        };
        let mut batch = vec![(rows, done)];
        while batch.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(WriteOp::Append { rows, done }) => batch.push((rows, done)),
                Ok(other) => {
                    carry = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let n = batch.len();
        w.commit(batch);
        drop(w);
        pending.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

fn idx(i: u64) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

fn open_log_db(path: &Path) -> rusqlite::Result<Connection> {
    crate::mvcc::open_wal(path, "FULL")
}

impl LogStore {
    pub async fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let path = path.to_path_buf();
        let (conn, reader) = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let conn = open_log_db(&path)?;
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
                     CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
                )?;
                let reader = open_log_db(&path)?;
                Ok::<_, rusqlite::Error>((conn, reader))
            })
            .await
            .map_err(crate::mvcc::other_err)??
        };
        let committed: Arc<std::sync::Mutex<Option<LogId<NodeId>>>> = Arc::default();
        let cache: Arc<std::sync::Mutex<LogCache>> = Arc::default();
        let (writer, rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let log_writer_state = Arc::new(std::sync::Mutex::new(LogWriter {
            conn,
            saved_committed: (None, None),
            committed: Arc::clone(&committed),
            cache: Arc::clone(&cache),
        }));
        let pending: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (w, p) = (Arc::clone(&log_writer_state), Arc::clone(&pending));
        std::thread::Builder::new()
            .name("metad-log-writer".into())
            .spawn(move || log_writer(w, p, rx))
            .map_err(crate::mvcc::other_err)?;
        let checkpointer = crate::mvcc::spawn_checkpointer(&path)?;
        let inner = LogInner {
            path,
            reader: std::sync::Mutex::new(reader),
            committed,
            cache,
            writer,
            log_writer: log_writer_state,
            pending,
            _checkpointer: checkpointer,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Run `job` on the writer thread after everything queued before it; its result.
    async fn on_writer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StorageIOError<NodeId>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || StorageIOError::write_logs(&std::io::Error::other("raft log writer stopped"));
        let op = WriteOp::Run(Box::new(move |conn| {
            let _ = tx.send(job(conn));
        }));
        self.send_to_writer(op).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(|e| StorageIOError::write_logs(&e))
    }

    /// Queue an op for the writer thread (counted in `pending` until it has run).
    async fn send_to_writer(&self, op: WriteOp) -> Result<(), ()> {
        self.inner.pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if self.inner.writer.send(op).await.is_err() {
            self.inner.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(());
        }
        Ok(())
    }

    /// Wait until everything queued so far is on disk.
    pub async fn close(&self) {
        let _ = self.on_writer(|_| Ok(())).await;
    }

    #[allow(clippy::result_large_err)] // openraft's error type, which its traits return anyway
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StorageIOError<NodeId>> {
        let conn = self.inner.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|e| StorageIOError::read(&e))
    }

    #[allow(clippy::result_large_err)]
    fn get_meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StorageIOError<NodeId>> {
        let v: Option<Vec<u8>> = self.read(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE name = ?")?.query_row([name], |r| r.get(0)).optional()
        })?;
        v.map(|b| serde_json::from_slice(&b)).transpose().map_err(|e| StorageIOError::read(&e))
    }

    async fn set_meta<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StorageIOError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        let name = name.to_string();
        self.on_writer(move |c| crate::mvcc::set_meta(c, &name, &bytes)).await
    }

    /// This member's identity, if the data dir has one.
    pub async fn identity(&self) -> Result<Option<Identity>, StorageIOError<NodeId>> {
        self.get_meta("identity")
    }

    pub async fn save_identity(&self, id: &Identity) -> Result<(), StorageIOError<NodeId>> {
        self.set_meta("identity", id).await
    }

    /// Whether the log store holds Raft state (a vote or log entries).
    pub async fn has_state(&self) -> Result<bool, StorageIOError<NodeId>> {
        let vote: Option<Vote<NodeId>> = self.get_meta("vote")?;
        let n: i64 = self.read(|c| c.query_row("SELECT COUNT(*) FROM log", [], |r| r.get(0)))?;
        Ok(vote.is_some() || n > 0)
    }

    /// Rebuild the log database file at `path` (etcd's Defragment), on a connection of its
    /// own: VACUUM takes SQLite's lock, so it waits for (and then briefly blocks) the writer.
    pub async fn vacuum(path: &Path) -> Result<(), rusqlite::Error> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let conn = open_log_db(&path)?;
            conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        })
        .await
        .map_err(crate::mvcc::other_err)?
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

#[allow(clippy::result_large_err)]
fn decode_entry(b: &[u8]) -> Result<Entry<TypeConfig>, StorageIOError<NodeId>> {
    serde_json::from_slice(b).map_err(|e| StorageIOError::read_logs(&e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(x) => *x - 1,
            Bound::Unbounded => u64::MAX,
        };
        if end < start {
            return Ok(Vec::new());
        }
        {
            let c = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            if c.entries.first_key_value().is_some_and(|(first, _)| *first <= start) {
                return Ok(c.entries.range(start..=end).map(|(_, e)| e.clone()).collect());
            }
        }
        // Older than the cache: from disk, then the cache on top (one that left the cache
        // meanwhile is on disk already).
        let rows: Vec<Vec<u8>> = {
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                let c = this.inner.reader.lock().unwrap_or_else(|e| e.into_inner());
                c.prepare_cached("SELECT entry FROM log WHERE idx >= ? AND idx <= ? ORDER BY idx")?
                    .query_map([idx(start), idx(end)], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<Vec<u8>>>>()
            })
            .await
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map_err(|e| StorageIOError::read_logs(&e))?
        };
        let mut by_index = std::collections::BTreeMap::new();
        for b in &rows {
            let e = decode_entry(b)?;
            by_index.insert(e.log_id.index, e);
        }
        let c = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (i, e) in c.entries.range(start..=end) {
            by_index.insert(*i, e.clone());
        }
        Ok(by_index.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last: Option<Vec<u8>> =
            self.read(|c| c.query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| r.get(0)).optional())?;
        let stored = match last {
            Some(b) => Some(decode_entry(&b)?.log_id),
            None => last_purged_log_id,
        };
        let cached =
            self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).entries.values().next_back().map(|e| e.log_id);
        let last_log_id = std::cmp::max(stored, cached);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        Ok(self.set_meta("vote", vote).await?)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.get_meta("vote")?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        *self.inner.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        {
            let mut c = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
                rows.push((entry.log_id.index, bytes));
                c.insert(entry);
            }
        }
        // An append openraft waits for (a follower's) with nothing queued before it is
        // committed right here: the Raft core would only wait for the writer thread anyway,
        // and handing it over and back cost two thread wake-ups on the path of every write.
        // openraft calls the log store from its core task only, so nothing can be queued
        // between the check and the commit.
        if callback.waited_on() && self.inner.pending.load(std::sync::atomic::Ordering::Acquire) == 0 {
            let mut w = self.inner.log_writer.lock().unwrap_or_else(|e| e.into_inner());
            w.commit(vec![(rows, callback)]);
            return Ok(());
        }
        let op = WriteOp::Append { rows, done: callback };
        self.send_to_writer(op)
            .await
            .map_err(|_| StorageIOError::write_logs(&std::io::Error::other("raft log writer stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let index = log_id.index;
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).remove_from(index);
        let cache = Arc::clone(&self.inner.cache);
        // After the appends queued before it (openraft issues nothing else meanwhile).
        self.on_writer(move |c| {
            c.execute("DELETE FROM log WHERE idx >= ?", [idx(index)])?;
            let mut k = cache.lock().unwrap_or_else(|e| e.into_inner());
            k.durable = k.durable.min(index.saturating_sub(1));
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let bytes = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let index = log_id.index;
        self.on_writer(move |c| {
            let tx = c.transaction()?;
            crate::mvcc::set_meta(&tx, "last_purged", &bytes)?;
            tx.execute("DELETE FROM log WHERE idx <= ?", [idx(index)])?;
            tx.commit()
        })
        .await?;
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).remove_upto(index);
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
    /// Notified whenever the applied membership config changes.
    pub membership_changed: tokio::sync::Notify,
}

impl Shared {
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the state (after an applied batch or an installed snapshot).
    fn replace(&self, st: State) {
        let changed = {
            let mut cur = self.state.write().unwrap_or_else(|e| e.into_inner());
            let changed = cur.membership != st.membership;
            *cur = st;
            changed
        };
        if changed {
            self.membership_changed.notify_waiters();
        }
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
    data_dir: PathBuf,
}

/// Commands an applied batch may hold to be applied on the state machine's own task.
const INLINE_APPLY: usize = 16;

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
        let shared = Shared { state: RwLock::new(st), db, events, membership_changed: tokio::sync::Notify::new() };
        Ok(Self { shared: Arc::new(shared), data_dir: data_dir.to_path_buf() })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

fn apply_command(a: &mut Applier<'_>, cmd: &Command) -> ApplyResult {
    match cmd {
        Command::Txn(bytes) => match pb::TxnRequest::decode(bytes.as_slice()) {
            Ok(req) => a.txn(&req),
            Err(e) => Ok(Err(EtcdError::Internal(e.to_string()))),
        },
        Command::Compact { revision } => a.compact_cmd(*revision),
        Command::LeaseGrant { id, ttl } => a.lease_grant(*id, *ttl),
        Command::LeaseRevoke { id } => a.lease_revoke(*id),
        Command::Batch(_) => Ok(Err(EtcdError::Internal("nested command batch".into()))),
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
        let io = |e: rusqlite::Error| StorageError::from(StorageIOError::<NodeId>::write_state_machine(&e));
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let commands: usize = entries
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => cmd.commands().len(),
                _ => 1,
            })
            .sum();
        let shared = Arc::clone(&self.shared);
        // The whole batch in one SQLite transaction.
        let started = std::time::Instant::now();
        let apply = move || {
            metrics::histogram!("metad_apply_batch_entries").record(entries.len() as f64);
            let mut work = shared.read().clone();
            let mut results = Vec::with_capacity(entries.len());
            let mut events = Vec::new();
            shared.db.write(|tx| {
                for entry in entries {
                    work.last_applied = Some(entry.log_id);
                    match entry.payload {
                        EntryPayload::Blank => results.push(CommandResult::default()),
                        EntryPayload::Membership(m) => {
                            work.membership = StoredMembership::new(Some(entry.log_id), m);
                            results.push(CommandResult::default());
                        }
                        EntryPayload::Normal(cmd) => {
                            let cmds = cmd.commands();
                            let mut outcomes = Vec::with_capacity(cmds.len());
                            for cmd in cmds {
                                let mut outcome = apply_command(&mut Applier { conn: tx, st: &mut work }, cmd)?;
                                // Nothing downstream of apply reads an outcome's events but
                                // the watchers: moved, not copied.
                                if let Ok(WriteOutcome { events: ev @ Some(_), .. }) = &mut outcome {
                                    events.extend(ev.take().map(Arc::new));
                                }
                                if let Err(EtcdError::Internal(detail)) = &outcome {
                                    tracing::error!(detail = %detail, "apply failed");
                                }
                                outcomes.push(outcome);
                            }
                            results.push(CommandResult { outcomes });
                        }
                    }
                }
                // `shared` still holds the state before this batch (replaced below).
                crate::mvcc::save_state_changes(tx, &work, Some(&shared.read()))
            })?;
            Ok::<_, rusqlite::Error>((results, work, events))
        };
        // A few commands run right here (microseconds of SQLite, no fsync: a hand-off to
        // another thread would cost more); a large batch goes to the blocking pool.
        let applied = if commands <= INLINE_APPLY {
            apply()
        } else {
            tokio::task::spawn_blocking(apply)
                .await
                .map_err(|e| StorageError::from(StorageIOError::<NodeId>::write_state_machine(&e)))?
        };
        let (results, work, events) = applied.map_err(io)?;
        metrics::histogram!("metad_apply_batch_seconds").record(started.elapsed().as_secs_f64());
        self.shared.replace(work);
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
        self.shared.replace(st);
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
