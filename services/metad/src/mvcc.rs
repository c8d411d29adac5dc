//! The MVCC key-value store behind the state machine, persisted in SQLite (`state.db`):
//! etcd's revision model (one cluster-wide revision, per-key create/mod revision and
//! version), history until compaction, leases and their attached keys. Deterministic:
//! every replica that applies the same commands reaches the same rows.
//!
//! Tables: `kv` holds every change of every key (the history; a delete is a row with
//! `deleted = 1`), `cur` the live value of every key (what reads at the current revision
//! and txn compares use), `leases` the granted leases, `meta` the revision, the compaction
//! point, the last applied log id and the membership config. Reads run in one SQLite read
//! transaction (WAL: a consistent snapshot, never blocking the writer) and scan only the
//! requested key range; nothing loads the whole keyspace. Writes happen only in `apply`,
//! one SQLite transaction per applied batch, `synchronous=NORMAL`: the Raft log (fsynced)
//! is what makes an entry durable, and `last_applied` commits with the rows, so after a
//! crash the store is at some applied prefix and the rest is re-applied from the log.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aether_proto::etcd::etcdserverpb as pb;
use aether_proto::etcd::mvccpb;
use openraft::{LogId, StoredMembership};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params, params_from_iter};
use serde::Deserialize;

use crate::error::EtcdError;
use crate::raft::{Member, NodeId};

/// History kept without an explicit Compact: once more than twice this many revisions
/// are held, history is compacted down to this many (deterministic, so replicas agree).
pub const HISTORY_REVISIONS: i64 = 10_000;
/// etcd's limit on operations in one txn.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's maximum lease TTL (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Everything that changed at one revision, in order.
#[derive(Debug, Clone)]
pub struct RevisionEvents {
    pub revision: i64,
    /// Each event carries `prev_kv` when one is known; watchers strip it if not asked.
    pub events: Vec<mvccpb::Event>,
}

/// The result of applying one write command.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// The store's revision after the command.
    pub revision: i64,
    pub txn: Option<pb::TxnResponse>,
    pub events: Option<RevisionEvents>,
}

/// The small part of the state kept in memory (and in `meta` / `leases`).
#[derive(Debug, Clone, Default)]
pub struct State {
    pub revision: i64,
    pub compact_revision: i64,
    /// Lease id → granted TTL. Shared, so that the copy of the state each applied batch
    /// works on costs nothing per lease; a grant or revoke copies it (`Arc::make_mut`).
    pub leases: Arc<BTreeMap<i64, i64>>,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
}

impl State {
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).copied()
    }

    /// Check a Compact request (before it goes through the log).
    pub fn check_compact(&self, revision: i64) -> Result<(), EtcdError> {
        if revision > self.revision {
            return Err(EtcdError::FutureRev);
        }
        if revision <= self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        Ok(())
    }

    /// `None` = read at the current revision.
    fn check_read_revision(&self, revision: i64) -> Result<Option<i64>, EtcdError> {
        if revision <= 0 || revision == self.revision {
            return Ok(None);
        }
        if revision > self.revision {
            return Err(EtcdError::FutureRev);
        }
        if revision < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        Ok(Some(revision))
    }
}

/// The store's layout, etcd's in spirit: history is appended, never updated in place.
/// - `hist`: every change of every key, keyed by `id` = revision << SUB_BITS | sub (the
///   change's place in its revision), so a write appends at the end of one B-tree; each
///   record points at the key's previous record (`prev_id`, 0 for none). A delete is a
///   record with `deleted = 1`.
/// - `cur`: the live keys with the `id` of their newest record (the value is read from
///   there: written once, and `cur`'s rows stay small) and what compares and lease lookups
///   need.
/// - `tomb`: keys whose newest record is a delete, with its id, until compaction drops it
///   (a read at an old revision starts from `cur` and `tomb` and walks `prev_id` back).
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS hist (id INTEGER PRIMARY KEY, key BLOB NOT NULL, create_rev INTEGER NOT NULL,
     version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL, deleted INTEGER NOT NULL,
     prev_id INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS cur (key BLOB PRIMARY KEY, mod_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL,
     version INTEGER NOT NULL, lease INTEGER NOT NULL, id INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS cur_by_lease ON cur (lease) WHERE lease != 0;
    CREATE TABLE IF NOT EXISTS tomb (key BLOB PRIMARY KEY, id INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
";

/// The first layout's history table (key-ordered, every change; its `cur` held values and
/// no ids). Stores written with it are converted at open (`migrate_layout`); the first
/// cut's JSON image is loaded through it too.
const LEGACY_KV_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS kv (key BLOB NOT NULL, rev INTEGER NOT NULL, sub INTEGER NOT NULL,
     create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL,
     deleted INTEGER NOT NULL, PRIMARY KEY (key, rev, sub)) WITHOUT ROWID;
";

/// Bits of a history id below the revision: the changes one revision can hold.
const SUB_BITS: u32 = 20;
const MAX_SUB: i64 = (1 << SUB_BITS) - 1;

/// The history id of change `sub` of revision `rev`.
fn hist_id(rev: i64, sub: i64) -> i64 {
    (rev << SUB_BITS) | sub
}

/// The largest history id of revision `rev` (every change at or before it is <= this).
fn rev_bound(rev: i64) -> i64 {
    hist_id(rev, MAX_SUB)
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")?
        .query_row([name], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Convert a store in the first layout (`kv`, and a `cur` with values) to this one, in
/// the caller's transaction: the same records, ids from (rev, sub), each pointing at its
/// key's previous one; `cur` and `tomb` rebuilt from each key's newest record. Does
/// nothing when there is no `kv` table.
fn migrate_layout(conn: &Connection) -> rusqlite::Result<()> {
    if !has_table(conn, "kv")? {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "DELETE FROM hist; DELETE FROM tomb; DROP TABLE IF EXISTS cur;
         {SCHEMA}
         INSERT INTO hist (id, key, create_rev, version, lease, value, deleted, prev_id)
          SELECT (rev << {b}) | sub, key, create_rev, version, lease, value, deleted,
           COALESCE(LAG((rev << {b}) | sub) OVER (PARTITION BY key ORDER BY rev, sub), 0) FROM kv;
         CREATE TEMP TABLE newest AS SELECT a.key AS key, a.rev AS rev, a.sub AS sub, a.create_rev AS create_rev,
          a.version AS version, a.lease AS lease, a.deleted AS deleted FROM kv AS a WHERE NOT EXISTS
          (SELECT 1 FROM kv AS n WHERE n.key = a.key AND (n.rev > a.rev OR (n.rev = a.rev AND n.sub > a.sub)));
         INSERT INTO cur (key, mod_rev, create_rev, version, lease, id)
          SELECT key, rev, create_rev, version, lease, (rev << {b}) | sub FROM newest WHERE deleted = 0;
         INSERT INTO tomb (key, id) SELECT key, (rev << {b}) | sub FROM newest WHERE deleted = 1;
         DROP TABLE temp.newest;
         DROP TABLE kv;",
        b = SUB_BITS
    ))
}

/// SQLite errors of the store (a storage failure, fatal for the state machine).
pub type DbError = rusqlite::Error;

fn db_err(e: DbError) -> EtcdError {
    EtcdError::Internal(format!("state db: {e}"))
}

/// Any other failure (a join, an I/O or encoding error) around a store operation, as a
/// SQLite error.
pub(crate) fn other_err(e: impl std::error::Error + Send + Sync + 'static) -> DbError {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// A live value as a KeyValue.
fn kv_of(
    key: Vec<u8>,
    mod_revision: i64,
    create_revision: i64,
    version: i64,
    lease: i64,
    value: Vec<u8>,
) -> mvccpb::KeyValue {
    mvccpb::KeyValue { key, create_revision, mod_revision, version, value, lease }
}

/// A query parameter.
#[derive(Debug, Clone)]
enum P {
    B(Vec<u8>),
    I(i64),
}

impl rusqlite::ToSql for P {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            P::B(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            P::I(i) => ToSqlOutput::Owned(Value::Integer(*i)),
        })
    }
}

/// SQL for a key range on `col`, and its parameters (`None`: an empty range).
fn range_sql(range: &KeyRange, col: &str) -> Option<(String, Vec<P>)> {
    match range.bounds()? {
        (Bound::Included(k), Bound::Included(_)) => Some((format!("{col} = ?"), vec![P::B(k.to_vec())])),
        (Bound::Included(k), Bound::Unbounded) => Some((format!("{col} >= ?"), vec![P::B(k.to_vec())])),
        (Bound::Included(k), Bound::Excluded(e)) => {
            Some((format!("{col} >= ? AND {col} < ?"), vec![P::B(k.to_vec()), P::B(e.to_vec())]))
        }
        _ => None,
    }
}

/// A live key's row (key, mod_rev, create_rev, version, lease, value, id), from `cur AS c`
/// joined with its newest record `hist AS h`.
const CUR_COLS: &str = "c.key AS key, c.mod_rev AS mod_rev, c.create_rev AS create_rev, c.version AS version, \
                        c.lease AS lease, h.value AS value, c.id AS id";

/// The values visible at `at` (None = current) in a key range, as rows
/// (key, mod_rev, create_rev, version, lease, value).
fn visible_sql(range: &KeyRange, at: Option<i64>) -> Option<(String, Vec<P>)> {
    match at {
        None => {
            let (w, p) = range_sql(range, "c.key")?;
            Some((format!("SELECT {CUR_COLS} FROM cur AS c JOIN hist AS h ON h.id = c.id WHERE {w}"), p))
        }
        // Every key that is live or has a tombstone now, walked back along its records
        // (newest first) to the last one at or before `rev`: visible if that is no delete.
        // A walk that reaches a compacted record (or 0) finds nothing.
        Some(rev) => {
            let (w, mut p) = range_sql(range, "key")?;
            p.extend(p.clone());
            let bound = rev_bound(rev);
            p.push(P::I(bound));
            p.push(P::I(bound));
            Some((
                format!(
                    "WITH RECURSIVE walk(id) AS (SELECT id FROM (SELECT id FROM cur WHERE {w} \
                     UNION ALL SELECT id FROM tomb WHERE {w}) \
                     UNION ALL SELECT h.prev_id FROM walk JOIN hist AS h ON h.id = walk.id WHERE walk.id > ?) \
                     SELECT h.key AS key, h.id >> {SUB_BITS} AS mod_rev, h.create_rev AS create_rev, \
                     h.version AS version, h.lease AS lease, h.value AS value \
                     FROM walk JOIN hist AS h ON h.id = walk.id WHERE walk.id <= ? AND h.deleted = 0"
                ),
                p,
            ))
        }
    }
}

fn row_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<mvccpb::KeyValue> {
    Ok(kv_of(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

/// Every row of `sql` with `params` as KeyValues.
fn query_kvs(conn: &Connection, sql: &str, params: &[P]) -> rusqlite::Result<Vec<mvccpb::KeyValue>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params_from_iter(params.iter()), row_kv)?;
    rows.collect()
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// A key range as etcd defines it: empty `end` = the single key; `end == [0]` = every key
/// >= `key` (`key == [0]` too = every key); otherwise `[key, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    pub fn new(key: &[u8], end: &[u8]) -> Self {
        Self { key: key.to_vec(), end: end.to_vec() }
    }

    fn bounds(&self) -> Option<KeyBounds<'_>> {
        if self.end.is_empty() {
            return Some((Bound::Included(&self.key), Bound::Included(&self.key)));
        }
        if self.end == [0] {
            return Some((Bound::Included(&self.key), Bound::Unbounded));
        }
        if self.end.as_slice() <= self.key.as_slice() {
            return None;
        }
        Some((Bound::Included(&self.key), Bound::Excluded(&self.end)))
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            return k == self.key.as_slice();
        }
        if k < self.key.as_slice() {
            return false;
        }
        self.end == [0] || k < self.end.as_slice()
    }
}

/// Checks etcd makes before a txn reaches the log.
pub fn validate_txn(req: &pb::TxnRequest) -> Result<(), EtcdError> {
    check_txn_request(req)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`: op counts, empty keys, and every op of both branches
/// (nested txns too) checked before anything runs.
fn check_txn_request(req: &pb::TxnRequest) -> Result<(), EtcdError> {
    if req.compare.len().max(req.success.len()).max(req.failure.len()) > MAX_TXN_OPS {
        return Err(EtcdError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in req.success.iter().chain(req.failure.iter()) {
        match &op.request {
            Some(pb::request_op::Request::RequestRange(r)) => check_range_request(r)?,
            Some(pb::request_op::Request::RequestPut(p)) => check_put_request(p)?,
            Some(pb::request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(EtcdError::EmptyKey);
            }
            Some(pb::request_op::Request::RequestDeleteRange(_)) => {}
            Some(pb::request_op::Request::RequestTxn(t)) => check_txn_request(t)?,
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// etcd's `checkRangeRequest`.
pub fn check_range_request(r: &pb::RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub fn check_put_request(p: &pb::PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkIntervals`: within one branch no key is put twice or put and deleted,
/// except that the two branches of a nested txn exclude each other.
fn check_intervals(reqs: &[pb::RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), EtcdError> {
    // This level's deletes first, to check the puts of nested txns against.
    let mut dels: Vec<KeyRange> = reqs
        .iter()
        .filter_map(|r| match &r.request {
            Some(pb::request_op::Request::RequestDeleteRange(d)) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for r in reqs {
        let Some(pb::request_op::Request::RequestTxn(t)) = &r.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // Then and else exclude each other: a key from puts_then may repeat here.
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for r in reqs {
        let Some(pb::request_op::Request::RequestPut(p)) = &r.request else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// The store's revision marks, read inside the caller's transaction.
fn read_revs(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let mut stmt =
        conn.prepare_cached("SELECT name, value FROM meta WHERE name IN ('revision', 'compact_revision')")?;
    let mut rows = stmt.query([])?;
    let (mut rev, mut compact) = (1, 0);
    while let Some(r) = rows.next()? {
        let name: String = r.get(0)?;
        let v: Vec<u8> = r.get(1)?;
        let n = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if name == "revision" {
            rev = n;
        } else {
            compact = n;
        }
    }
    Ok((rev, compact))
}

fn get_meta<T: serde::de::DeserializeOwned>(conn: &Connection, name: &str) -> rusqlite::Result<Option<T>> {
    let v: Option<Vec<u8>> =
        conn.prepare_cached("SELECT value FROM meta WHERE name = ?")?.query_row([name], |r| r.get(0)).optional()?;
    Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Upsert one row of a `meta (name, value)` table (the state and the log databases have one).
pub(crate) fn set_meta(conn: &Connection, name: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// Load the in-memory part of the state.
fn load_state(conn: &Connection) -> rusqlite::Result<State> {
    let (revision, compact_revision) = read_revs(conn)?;
    let leases = conn
        .prepare_cached("SELECT id, ttl FROM leases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<BTreeMap<i64, i64>>>()?;
    let last_applied = get_meta(conn, "last_applied")?;
    let membership = get_meta(conn, "membership")?.unwrap_or_default();
    Ok(State { revision, compact_revision, leases: Arc::new(leases), last_applied, membership })
}

pub fn save_state(conn: &Connection, st: &State) -> rusqlite::Result<()> {
    save_state_changes(conn, st, None)
}

/// Write the fields of `st` that differ from `before` (all of them without `before`): an
/// apply usually moves only the revision and the applied log id.
pub fn save_state_changes(conn: &Connection, st: &State, before: Option<&State>) -> rusqlite::Result<()> {
    if before.is_none_or(|b| b.revision != st.revision) {
        set_meta(conn, "revision", st.revision.to_string().as_bytes())?;
    }
    if before.is_none_or(|b| b.compact_revision != st.compact_revision) {
        set_meta(conn, "compact_revision", st.compact_revision.to_string().as_bytes())?;
    }
    if before.is_none_or(|b| b.last_applied != st.last_applied) {
        set_meta(conn, "last_applied", &serde_json::to_vec(&st.last_applied).map_err(other_err)?)?;
    }
    if before.is_none_or(|b| b.membership != st.membership) {
        set_meta(conn, "membership", &serde_json::to_vec(&st.membership).map_err(other_err)?)?;
    }
    Ok(())
}

/// The live value of one key and the id of its newest history record.
fn latest(conn: &Connection, key: &[u8]) -> rusqlite::Result<Option<(mvccpb::KeyValue, i64)>> {
    conn.prepare_cached(&format!("SELECT {CUR_COLS} FROM cur AS c JOIN hist AS h ON h.id = c.id WHERE c.key = ?"))?
        .query_row([key], |r| Ok((row_kv(r)?, r.get(6)?)))
        .optional()
}

/// A Range read at `at` (None = current) on `conn` (header left for the caller).
fn range_on(conn: &Connection, req: &pb::RangeRequest, at: Option<i64>) -> rusqlite::Result<pb::RangeResponse> {
    use pb::range_request::{SortOrder, SortTarget};
    let range = KeyRange::new(&req.key, &req.range_end);
    let Some((inner, mut params)) = visible_sql(&range, at) else {
        return Ok(pb::RangeResponse::default());
    };
    let mut filters = Vec::new();
    for (v, cond) in [
        (req.min_mod_revision, "mod_rev >= ?"),
        (req.max_mod_revision, "mod_rev <= ?"),
        (req.min_create_revision, "create_rev >= ?"),
        (req.max_create_revision, "create_rev <= ?"),
    ] {
        if v > 0 {
            filters.push(cond);
            params.push(P::I(v));
        }
    }
    let filter = if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
    // etcd counts every key in the range, before the revision filters.
    let n_range_params = params.len() - filters.len();
    let count_sql = format!("SELECT COUNT(*) FROM ({inner})");
    let count: i64 =
        conn.prepare_cached(&count_sql)?.query_row(params_from_iter(params[..n_range_params].iter()), |r| r.get(0))?;
    if req.count_only {
        return Ok(pb::RangeResponse { header: None, kvs: Vec::new(), more: false, count });
    }
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let col = match target {
        SortTarget::Key => "",
        SortTarget::Version => "version",
        SortTarget::Create => "create_rev",
        SortTarget::Mod => "mod_rev",
        SortTarget::Value => "value",
    };
    // Ties keep key order (descending too, as a reversed stable sort would).
    let order_sql = match (order, col) {
        (SortOrder::Descend, "") => "key DESC".to_string(),
        (SortOrder::Descend, c) => format!("{c} DESC, key DESC"),
        (_, "") | (SortOrder::None, _) => "key ASC".to_string(),
        (_, c) => format!("{c} ASC, key ASC"),
    };
    let limit = if req.limit > 0 { format!(" LIMIT {}", req.limit.saturating_add(1)) } else { String::new() };
    let sql = format!("SELECT * FROM ({inner}){filter} ORDER BY {order_sql}{limit}");
    let mut kvs = query_kvs(conn, &sql, &params)?;
    let mut more = false;
    if req.limit > 0 && kvs.len() as i64 > req.limit {
        kvs.truncate(usize::try_from(req.limit).unwrap_or(usize::MAX));
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(pb::RangeResponse { header: None, kvs, more, count })
}

fn compare(conn: &Connection, c: &pb::Compare) -> rusqlite::Result<bool> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
    let range = KeyRange::new(&c.key, &c.range_end);
    let mut checked = match visible_sql(&range, None) {
        Some((sql, params)) => query_kvs(conn, &sql, &params)?,
        None => Vec::new(),
    };
    if checked.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        checked.push(mvccpb::KeyValue::default());
    }
    let ord_of = |kv: &mvccpb::KeyValue| -> std::cmp::Ordering {
        match (target, &c.target_union) {
            (CompareTarget::Value, Some(TargetUnion::Value(want))) => kv.value.as_slice().cmp(want.as_slice()),
            (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[]),
            (CompareTarget::Version, u) => kv.version.cmp(&int_of(u)),
            (CompareTarget::Create, u) => kv.create_revision.cmp(&int_of(u)),
            (CompareTarget::Mod, u) => kv.mod_revision.cmp(&int_of(u)),
            (CompareTarget::Lease, u) => kv.lease.cmp(&int_of(u)),
        }
    };
    Ok(checked.iter().all(|kv| {
        let ord = ord_of(kv);
        match result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
            CompareResult::NotEqual => ord.is_ne(),
        }
    }))
}

/// Every compare in a txn tree (both branches of nested txns), depth first.
fn all_compares<'a>(req: &'a pb::TxnRequest, out: &mut Vec<&'a pb::Compare>) {
    out.extend(req.compare.iter());
    for op in req.success.iter().chain(req.failure.iter()) {
        if let Some(pb::request_op::Request::RequestTxn(t)) = &op.request {
            all_compares(t, out);
        }
    }
}

/// Compare results by the compare's address in the request.
type Compared = std::collections::HashMap<usize, bool>;

fn compared(c: &Compared, cmp: &pb::Compare) -> bool {
    c.get(&(cmp as *const pb::Compare as usize)).copied().unwrap_or(false)
}

/// The ops a txn will run, nested txns resolved, with every compare evaluated before any write.
fn plan<'a>(req: &'a pb::TxnRequest, c: &Compared, out: &mut Vec<Planned<'a>>) -> bool {
    let ok = req.compare.iter().all(|cmp| compared(c, cmp));
    let branch = if ok { &req.success } else { &req.failure };
    for op in branch {
        match &op.request {
            Some(pb::request_op::Request::RequestTxn(t)) => {
                let start = out.len();
                out.push(Planned::TxnStart(false));
                let nested_ok = plan(t, c, out);
                out[start] = Planned::TxnStart(nested_ok);
                out.push(Planned::TxnEnd);
            }
            Some(other) => out.push(Planned::Op(other)),
            None => out.push(Planned::Empty),
        }
    }
    ok
}

/// The state of one txn while it executes.
struct WriteCtx {
    rev: i64,
    sub: i64,
    events: Vec<mvccpb::Event>,
    /// Keys written so far in this txn, with their record's id.
    written: std::collections::HashMap<Vec<u8>, i64>,
}

impl WriteCtx {
    fn new(rev: i64) -> Self {
        Self { rev, sub: 0, events: Vec::new(), written: Default::default() }
    }
}

/// A storage failure (fatal for the state machine) outside, the request's result inside.
pub type ApplyResult = Result<Result<WriteOutcome, EtcdError>, DbError>;

/// Applies commands inside one SQLite write transaction, keeping `st` in step.
pub struct Applier<'c> {
    pub conn: &'c Connection,
    pub st: &'c mut State,
}

impl Applier<'_> {
    fn check_planned(&mut self, plan: &[Planned<'_>]) -> Result<Result<(), EtcdError>, DbError> {
        // Changes one revision can hold (history ids); only a huge DeleteRange comes near.
        let mut changes = 0i64;
        for p in plan {
            match p {
                Planned::Op(pb::request_op::Request::RequestPut(_)) => changes += 1,
                Planned::Op(pb::request_op::Request::RequestDeleteRange(d)) => {
                    if let Some((w, params)) = range_sql(&KeyRange::new(&d.key, &d.range_end), "key") {
                        let sql = format!("SELECT COUNT(*) FROM cur WHERE {w}");
                        let n: i64 =
                            self.conn.prepare_cached(&sql)?.query_row(params_from_iter(params.iter()), |r| r.get(0))?;
                        changes += n;
                    }
                }
                _ => {}
            }
        }
        if changes > MAX_SUB {
            return Ok(Err(EtcdError::TooManyOps));
        }
        for p in plan {
            match p {
                Planned::Op(pb::request_op::Request::RequestPut(put)) => {
                    if put.key.is_empty() {
                        return Ok(Err(EtcdError::EmptyKey));
                    }
                    if put.ignore_value && !put.value.is_empty() {
                        return Ok(Err(EtcdError::ValueProvided));
                    }
                    if put.ignore_lease && put.lease != 0 {
                        return Ok(Err(EtcdError::LeaseProvided));
                    }
                    if (put.ignore_value || put.ignore_lease) && latest(self.conn, &put.key)?.is_none() {
                        return Ok(Err(EtcdError::KeyNotFound));
                    }
                    if put.lease != 0 && !self.st.leases.contains_key(&put.lease) {
                        return Ok(Err(EtcdError::LeaseNotFound));
                    }
                }
                Planned::Op(pb::request_op::Request::RequestRange(r)) => {
                    if r.key.is_empty() {
                        return Ok(Err(EtcdError::EmptyKey));
                    }
                    if let Err(e) = self.st.check_read_revision(r.revision) {
                        return Ok(Err(e));
                    }
                }
                Planned::Op(pb::request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                    return Ok(Err(EtcdError::EmptyKey));
                }
                _ => {}
            }
        }
        Ok(Ok(()))
    }

    /// Apply a txn (Put and DeleteRange arrive as one-op txns).
    pub fn txn(&mut self, req: &pb::TxnRequest) -> ApplyResult {
        let mut compares = Vec::new();
        all_compares(req, &mut compares);
        let mut results = Compared::new();
        for c in compares {
            let ok = compare(self.conn, c)?;
            results.insert(c as *const pb::Compare as usize, ok);
        }
        let mut planned = Vec::new();
        let succeeded = plan(req, &results, &mut planned);
        if let Err(e) = self.check_planned(&planned)? {
            return Ok(Err(e));
        }
        let mut ctx = WriteCtx::new(self.st.revision + 1);
        let unbalanced = || Ok(Err(EtcdError::Internal("txn plan unbalanced".into())));
        // Execute; nested txns are rebuilt from the flat plan with a stack.
        let mut stack: Vec<pb::TxnResponse> = vec![pb::TxnResponse { header: None, succeeded, responses: Vec::new() }];
        for p in planned {
            match p {
                Planned::TxnStart(ok) => {
                    stack.push(pb::TxnResponse { header: None, succeeded: ok, responses: Vec::new() })
                }
                Planned::TxnEnd => {
                    let Some(done) = stack.pop() else { return unbalanced() };
                    let Some(parent) = stack.last_mut() else { return unbalanced() };
                    parent
                        .responses
                        .push(pb::ResponseOp { response: Some(pb::response_op::Response::ResponseTxn(done)) });
                }
                Planned::Empty => {
                    if let Some(top) = stack.last_mut() {
                        top.responses.push(pb::ResponseOp { response: None });
                    }
                }
                Planned::Op(op) => {
                    let resp = match op {
                        pb::request_op::Request::RequestRange(r) => {
                            let at = match self.st.check_read_revision(r.revision) {
                                Ok(at) => at,
                                Err(e) => return Ok(Err(e)),
                            };
                            pb::response_op::Response::ResponseRange(range_on(self.conn, r, at)?)
                        }
                        pb::request_op::Request::RequestPut(put) => {
                            pb::response_op::Response::ResponsePut(self.put(&mut ctx, put)?)
                        }
                        pb::request_op::Request::RequestDeleteRange(d) => {
                            pb::response_op::Response::ResponseDeleteRange(self.delete(&mut ctx, d)?)
                        }
                        pb::request_op::Request::RequestTxn(_) => {
                            return Ok(Err(EtcdError::Internal("nested txn not planned".into())));
                        }
                    };
                    if let Some(top) = stack.last_mut() {
                        top.responses.push(pb::ResponseOp { response: Some(resp) });
                    }
                }
            }
        }
        let Some(txn) = stack.pop() else { return unbalanced() };
        let events = self.finish(ctx)?;
        Ok(Ok(WriteOutcome { revision: self.st.revision, txn: Some(txn), events }))
    }

    /// Bump the revision if anything changed, and auto-compact old history.
    fn finish(&mut self, ctx: WriteCtx) -> Result<Option<RevisionEvents>, DbError> {
        if ctx.events.is_empty() {
            return Ok(None);
        }
        self.st.revision = ctx.rev;
        if self.st.revision - self.st.compact_revision > 2 * HISTORY_REVISIONS {
            self.compact(self.st.revision - HISTORY_REVISIONS)?;
        }
        Ok(Some(RevisionEvents { revision: ctx.rev, events: ctx.events }))
    }

    /// Record one change of `key` at the txn's revision (`None` = delete); `prev_id` is the
    /// key's newest record before this txn (0: none).
    fn write_rec(
        &mut self,
        ctx: &mut WriteCtx,
        key: &[u8],
        val: Option<&mvccpb::KeyValue>,
        prev_id: i64,
    ) -> Result<(), DbError> {
        if ctx.sub > MAX_SUB {
            // Txns are checked against this (TooManyOps); only a lease revoke with more keys
            // than that attached could get here.
            return Err(other_err(std::io::Error::other("more changes in one revision than history ids hold")));
        }
        let id = hist_id(ctx.rev, ctx.sub);
        // A key written twice in one txn (only through nested txns) keeps the last: the
        // earlier record goes and this one takes its place in the key's chain.
        let prev_id = match ctx.written.get(key) {
            Some(&earlier) => self
                .conn
                .prepare_cached("DELETE FROM hist WHERE id = ? RETURNING prev_id")?
                .query_row([earlier], |r| r.get(0))?,
            None => prev_id,
        };
        let empty = mvccpb::KeyValue::default();
        let v = val.unwrap_or(&empty);
        self.conn
            .prepare_cached(
                "INSERT INTO hist (id, key, create_rev, version, lease, value, deleted, prev_id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                id,
                key,
                v.create_revision,
                v.version,
                v.lease,
                v.value.as_slice(),
                i64::from(val.is_none()),
                prev_id
            ])?;
        ctx.written.insert(key.to_vec(), id);
        ctx.sub += 1;
        match val {
            Some(v) => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO cur (key, mod_rev, create_rev, version, lease, id) VALUES (?, ?, ?, ?, ?, ?) \
                         ON CONFLICT(key) DO UPDATE SET mod_rev = excluded.mod_rev, create_rev = excluded.create_rev, \
                         version = excluded.version, lease = excluded.lease, id = excluded.id",
                    )?
                    .execute(params![key, ctx.rev, v.create_revision, v.version, v.lease, id])?;
            }
            None => {
                self.conn.prepare_cached("DELETE FROM cur WHERE key = ?")?.execute([key])?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO tomb (key, id) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET id = excluded.id",
                    )?
                    .execute(params![key, id])?;
            }
        }
        Ok(())
    }

    fn put(&mut self, ctx: &mut WriteCtx, put: &pb::PutRequest) -> Result<pb::PutResponse, DbError> {
        let (prev, prev_id) = match latest(self.conn, &put.key)? {
            Some((kv, id)) => (Some(kv), id),
            // A key created again continues its chain from the delete (for reads before it).
            None => {
                let tomb: Option<i64> = self
                    .conn
                    .prepare_cached("DELETE FROM tomb WHERE key = ? RETURNING id")?
                    .query_row([&put.key], |r| r.get(0))
                    .optional()?;
                (None, tomb.unwrap_or(0))
            }
        };
        let value = match (&prev, put.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => put.value.clone(),
        };
        let lease = match (&prev, put.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => put.lease,
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (ctx.rev, 1),
        };
        let kv = kv_of(put.key.clone(), ctx.rev, create_revision, version, lease, value);
        ctx.events.push(mvccpb::Event {
            r#type: mvccpb::event::EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev.clone(),
        });
        self.write_rec(ctx, &put.key, Some(&kv), prev_id)?;
        Ok(pb::PutResponse { header: None, prev_kv: if put.prev_kv { prev } else { None } })
    }

    fn delete(&mut self, ctx: &mut WriteCtx, d: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, DbError> {
        let range = KeyRange::new(&d.key, &d.range_end);
        let (doomed, ids): (Vec<mvccpb::KeyValue>, Vec<i64>) = match range_sql(&range, "c.key") {
            Some((w, params)) => {
                let sql =
                    format!("SELECT {CUR_COLS} FROM cur AS c JOIN hist AS h ON h.id = c.id WHERE {w} ORDER BY key");
                let mut stmt = self.conn.prepare_cached(&sql)?;
                let rows =
                    stmt.query_map(params_from_iter(params.iter()), |r| Ok((row_kv(r)?, r.get::<_, i64>(6)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?.into_iter().unzip()
            }
            None => (Vec::new(), Vec::new()),
        };
        for (prev, prev_id) in doomed.iter().zip(ids) {
            ctx.events.push(mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue { key: prev.key.clone(), mod_revision: ctx.rev, ..Default::default() }),
                prev_kv: Some(prev.clone()),
            });
            self.write_rec(ctx, &prev.key, None, prev_id)?;
        }
        let deleted = doomed.len() as i64;
        Ok(pb::DeleteRangeResponse { header: None, deleted, prev_kvs: if d.prev_kv { doomed } else { Vec::new() } })
    }

    pub fn compact_cmd(&mut self, revision: i64) -> ApplyResult {
        if let Err(e) = self.st.check_compact(revision) {
            return Ok(Err(e));
        }
        self.compact(revision)?;
        Ok(Ok(WriteOutcome { revision: self.st.revision, ..Default::default() }))
    }

    /// Drop history below `revision`: each key keeps its record visible at `revision`
    /// (unless that is a delete) and everything newer. Only records changed since the last
    /// compaction can be newly superseded, so only that stretch of history is read.
    fn compact(&mut self, revision: i64) -> Result<(), DbError> {
        let since = if self.st.compact_revision > 0 { rev_bound(self.st.compact_revision) } else { 0 };
        let upto = rev_bound(revision);
        self.conn.execute(
            "DELETE FROM hist WHERE id IN (SELECT prev_id FROM hist WHERE id > ?1 AND id <= ?2 AND prev_id != 0)",
            [since, upto],
        )?;
        self.conn.execute("DELETE FROM hist WHERE id > ?1 AND id <= ?2 AND deleted = 1", [since, upto])?;
        self.conn.execute("DELETE FROM tomb WHERE id <= ?", [upto])?;
        self.st.compact_revision = revision;
        Ok(())
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> ApplyResult {
        if self.st.leases.contains_key(&id) {
            return Ok(Err(EtcdError::LeaseExists));
        }
        self.conn.prepare_cached("INSERT INTO leases (id, ttl) VALUES (?, ?)")?.execute([id, ttl])?;
        Arc::make_mut(&mut self.st.leases).insert(id, ttl);
        Ok(Ok(WriteOutcome { revision: self.st.revision, ..Default::default() }))
    }

    /// Revoke a lease and delete its keys (one revision for all of them).
    pub fn lease_revoke(&mut self, id: i64) -> ApplyResult {
        if Arc::make_mut(&mut self.st.leases).remove(&id).is_none() {
            return Ok(Err(EtcdError::LeaseNotFound));
        }
        self.conn.prepare_cached("DELETE FROM leases WHERE id = ?")?.execute([id])?;
        let keys = lease_keys_on(self.conn, id)?;
        let mut ctx = WriteCtx::new(self.st.revision + 1);
        for key in keys {
            let d = pb::DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: false };
            self.delete(&mut ctx, &d)?;
        }
        let events = self.finish(ctx)?;
        Ok(Ok(WriteOutcome { revision: self.st.revision, txn: None, events }))
    }
}

/// Keys attached to a lease, sorted.
fn lease_keys_on(conn: &Connection, id: i64) -> rusqlite::Result<Vec<Vec<u8>>> {
    conn.prepare_cached("SELECT key FROM cur WHERE lease = ? ORDER BY key")?.query_map([id], |r| r.get(0))?.collect()
}

/// Readers kept open for reuse (more are opened when all are busy, and closed after).
const IDLE_READERS: usize = 8;

/// The state database. Statements run synchronously on the calling thread (SQLite on a
/// local file answers in microseconds; a hand-off to another thread per statement cost
/// more than the statement): the state machine applies a whole batch in one blocking task,
/// point reads run inline, scans that may be long (watch replay, hashes, copies) run on the
/// blocking pool. One writer connection; readers see WAL snapshots and never block it.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Dropping it stops the checkpointer.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// How often the checkpointer looks at the WAL, and the size that makes it checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
const CHECKPOINT_WAL_BYTES: u64 = 4 << 20;

/// Copy the WAL of the database at `path` back into it from a thread of its own whenever
/// it has grown past `CHECKPOINT_WAL_BYTES` (SQLite's automatic checkpoint would do it
/// inside a commit, fsyncs included, stalling the writer). PASSIVE never blocks the
/// writer or readers; it stops when the returned sender is dropped.
pub fn spawn_checkpointer(path: &Path) -> rusqlite::Result<std::sync::mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let (stop, rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(CHECKPOINT_EVERY) {
            if std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) < CHECKPOINT_WAL_BYTES {
                continue;
            }
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, wal = %wal.display(), "checkpoint failed");
            }
        }
    });
    spawned.map_err(other_err)?;
    Ok(stop)
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.inner.path).finish()
    }
}

/// Open (or create) `path` read-write in WAL mode with the given `synchronous` level.
/// Checkpoints run in the background (`spawn_checkpointer`), never inside a commit.
pub(crate) fn open_wal(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Db {
    /// Open (or create) the state database and load the in-memory state.
    pub async fn open(path: &Path) -> Result<(Db, State), DbError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            // synchronous=NORMAL: the Raft log is what is fsynced.
            let mut writer = open_wal(&path, "NORMAL")?;
            writer.execute_batch(SCHEMA)?;
            if has_table(&writer, "kv")? {
                let tx = writer.transaction()?;
                migrate_layout(&tx)?;
                tx.commit()?;
                tracing::info!(path = %path.display(), "converted the store to the append-only history layout");
            }
            let st = load_state(&writer)?;
            let checkpointer = spawn_checkpointer(&path)?;
            let inner = DbInner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                _checkpointer: checkpointer,
            };
            Ok((Db { inner: Arc::new(inner) }, st))
        })
        .await
        .map_err(other_err)?
    }

    /// Close the idle readers (the writer closes with the last clone).
    pub async fn close(&self) {
        self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    #[cfg(test)]
    pub async fn load(&self) -> Result<State, DbError> {
        self.with_writer(|c| load_state(c))
    }

    fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let mut conn = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn)
    }

    /// Run `f` in one write transaction, committed if `f` succeeds. Blocking: call it from
    /// a blocking task (the state machine applies a batch this way).
    pub fn write<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        self.with_writer(|conn| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Run `f` on a reader inside one read transaction (a consistent snapshot).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let idle = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match idle {
            Some(c) => c,
            None => open_reader(&self.inner.path)?,
        };
        let out = (|| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.finish()?;
            Ok(out)
        })();
        let mut idle = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// `read` on the blocking pool, for scans that may take a while.
    async fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read(f)).await.map_err(other_err)?
    }

    /// A Range at the request's revision, with the revision it was read at.
    pub async fn range(&self, req: &pb::RangeRequest) -> Result<(pb::RangeResponse, i64), EtcdError> {
        self.read(|conn| {
            let (revision, compact_revision) = read_revs(conn)?;
            let st = State { revision, compact_revision, ..Default::default() };
            Ok(match st.check_read_revision(req.revision) {
                Ok(at) => Ok((range_on(conn, req, at)?, revision)),
                Err(e) => Err(e),
            })
        })
        .map_err(db_err)?
    }

    /// Keys attached to a lease, sorted.
    pub async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        self.read(|conn| lease_keys_on(conn, id)).map_err(db_err)
    }

    /// Events with revision >= `start` for keys in `range`, in revision order, at most
    /// about `max_events` (never splitting a revision), and the revision read at.
    /// `Ok((events, current, complete))`; `Err(Ok(compact_revision))` if that history was
    /// compacted away.
    pub async fn events_since(
        &self,
        range: &KeyRange,
        start: i64,
        max_events: usize,
    ) -> Result<(Vec<RevisionEvents>, i64, bool), Result<i64, EtcdError>> {
        let range = range.clone();
        let r = self.read_blocking(move |conn| Ok(events_since_on(conn, &range, start, max_events))).await;
        match r {
            Ok(Ok(Ok(page))) => Ok(page),
            Ok(Ok(Err(compact))) => Err(Ok(compact)),
            Ok(Err(e)) | Err(e) => Err(Err(db_err(e))),
        }
    }

    /// etcd's HashKV: a CRC-32C over every key change with a revision up to `revision`
    /// (0 = the current one) still in history. Replicas that applied the same log agree.
    /// Returns (hash, compact revision, hashed revision, current revision).
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64, i64), EtcdError> {
        self.read_blocking(move |conn| {
            let (current, compact) = read_revs(conn)?;
            let rev = if revision <= 0 { current } else { revision };
            if rev > current {
                return Ok(Err(EtcdError::FutureRev));
            }
            if rev < compact {
                return Ok(Err(EtcdError::Compacted));
            }
            let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            let mut stmt = conn.prepare(&format!(
                "SELECT key, id >> {SUB_BITS}, id & {MAX_SUB}, create_rev, version, lease, value, deleted FROM hist \
                 WHERE id <= ? ORDER BY key, id"
            ))?;
            let mut rows = stmt.query([rev_bound(rev)])?;
            while let Some(r) = rows.next()? {
                let key: Vec<u8> = r.get(0)?;
                d.update(&(key.len() as u64).to_be_bytes());
                d.update(&key);
                for i in 1..6 {
                    d.update(&r.get::<_, i64>(i)?.to_be_bytes());
                }
                let value: Vec<u8> = r.get(6)?;
                d.update(&(value.len() as u64).to_be_bytes());
                d.update(&value);
                d.update(&[u8::from(r.get::<_, i64>(7)? != 0)]);
            }
            Ok(Ok((d.finalize() as u32, compact, rev, current)))
        })
        .await
        .map_err(db_err)?
    }

    /// (bytes in the file, bytes in use) of the state database.
    pub async fn sizes(&self) -> (i64, i64) {
        let r = self.read(|conn| {
            let get = |p: &str| conn.query_row(p, [], |r| r.get::<_, i64>(0));
            Ok((get("PRAGMA page_count")?, get("PRAGMA freelist_count")?, get("PRAGMA page_size")?))
        });
        let (pages, free, size) = r.unwrap_or((0, 0, 0));
        (pages * size, (pages - free) * size)
    }

    /// A consistent copy of the database at `dest` (SQLite's `VACUUM INTO`), fsynced.
    pub async fn copy_to(&self, dest: &Path) -> Result<(), DbError> {
        let _ = tokio::fs::remove_file(dest).await;
        let target = dest.to_string_lossy().into_owned();
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            // On a reader outside a transaction: VACUUM cannot run inside one.
            let conn = open_reader(&db.inner.path)?;
            conn.execute("VACUUM INTO ?", [target])?;
            Ok::<_, DbError>(())
        })
        .await
        .map_err(other_err)??;
        tokio::fs::File::open(dest).await.map_err(other_err)?.sync_all().await.map_err(other_err)?;
        Ok(())
    }

    /// The Raft position a copy made by `copy_to` holds.
    pub async fn read_position(
        path: &Path,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>, i64), DbError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let conn = open_reader(&path)?;
            let st = load_state(&conn)?;
            Ok((st.last_applied, st.membership, st.revision))
        })
        .await
        .map_err(other_err)?
    }

    /// Replace every table's contents with those of the database file at `src` (a
    /// snapshot), in one transaction, and return the new state.
    pub async fn import(&self, src: &Path) -> Result<State, DbError> {
        let src = src.to_string_lossy().into_owned();
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            db.with_writer(|conn| {
                conn.execute("ATTACH DATABASE ? AS snap", [src])?;
                let copied = (|| {
                    let tx = conn.transaction()?;
                    for t in ["hist", "tomb", "cur", "leases", "meta"] {
                        tx.execute(&format!("DELETE FROM main.{t}"), [])?;
                    }
                    // A snapshot from a member still on the first layout has `kv` (and a
                    // `cur` with values): its `kv` goes through the conversion done at open.
                    let legacy: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM snap.sqlite_master WHERE type = 'table' AND name = 'kv')",
                        [],
                        |r| r.get(0),
                    )?;
                    let tables: &[&str] = if legacy {
                        tx.execute_batch(LEGACY_KV_SCHEMA)?;
                        tx.execute("INSERT INTO main.kv SELECT * FROM snap.kv", [])?;
                        &["leases", "meta"]
                    } else {
                        &["hist", "tomb", "cur", "leases", "meta"]
                    };
                    for t in tables {
                        tx.execute(&format!("INSERT INTO main.{t} SELECT * FROM snap.{t}"), [])?;
                    }
                    migrate_layout(&tx)?;
                    tx.commit()
                })();
                let detached = conn.execute("DETACH DATABASE snap", []);
                copied?;
                detached?;
                load_state(conn)
            })
        })
        .await
        .map_err(other_err)?
    }
}

/// `Db::events_since` on one read transaction; `Err(compact)` if compacted away.
#[allow(clippy::type_complexity)]
fn events_since_on(
    conn: &Connection,
    range: &KeyRange,
    start: i64,
    max_events: usize,
) -> rusqlite::Result<Result<(Vec<RevisionEvents>, i64, bool), i64>> {
    let (current, compact) = read_revs(conn)?;
    if compact > 0 && start <= compact {
        return Ok(Err(compact));
    }
    let Some((w, mut params)) = range_sql(range, "key") else { return Ok(Ok((Vec::new(), current, true))) };
    params.push(P::I(hist_id(start, 0)));
    let cols = format!("key, id >> {SUB_BITS}, create_rev, version, lease, value, deleted, prev_id");
    // (key, rev, create_rev, version, lease, value, deleted, prev_id)
    type Rec = (Vec<u8>, i64, i64, i64, i64, Vec<u8>, i64, i64);
    let rec = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Rec> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
    };
    let sql = format!("SELECT {cols} FROM hist WHERE {w} AND id >= ? ORDER BY id LIMIT {}", max_events + 1);
    let mut rows: Vec<Rec> =
        conn.prepare_cached(&sql)?.query_map(params_from_iter(params.iter()), rec)?.collect::<Result<_, _>>()?;
    let complete = rows.len() <= max_events;
    if !complete {
        let last = rows[rows.len() - 1].1;
        let first = rows[0].1;
        if first == last {
            // One revision larger than a page: take all of it.
            let (w2, mut p2) = range_sql(range, "key").unwrap_or_default();
            p2.push(P::I(hist_id(last, 0)));
            p2.push(P::I(rev_bound(last)));
            let sql = format!("SELECT {cols} FROM hist WHERE {w2} AND id >= ? AND id <= ? ORDER BY id");
            rows = conn.prepare(&sql)?.query_map(params_from_iter(p2.iter()), rec)?.collect::<Result<_, _>>()?;
        } else {
            let mut keep = rows.len();
            while keep > 0 && rows[keep - 1].1 == last {
                keep -= 1;
            }
            rows.truncate(keep);
        }
    }
    let mut prev_stmt = conn.prepare_cached(&format!(
        "SELECT key, id >> {SUB_BITS}, create_rev, version, lease, value, deleted FROM hist WHERE id = ?"
    ))?;
    let mut out: Vec<RevisionEvents> = Vec::new();
    for (key, rev, create_rev, version, lease, value, deleted, prev_id) in rows {
        let prev = prev_stmt.query_row([prev_id], |r| Ok((row_kv(r)?, r.get::<_, i64>(6)?))).optional()?;
        let prev_kv = prev.filter(|(_, deleted)| *deleted == 0).map(|(kv, _)| kv);
        let event = if deleted == 0 {
            let kv = kv_of(key, rev, create_rev, version, lease, value);
            mvccpb::Event { r#type: mvccpb::event::EventType::Put as i32, kv: Some(kv), prev_kv }
        } else {
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue { key, mod_revision: rev, ..Default::default() }),
                prev_kv,
            }
        };
        match out.last_mut() {
            Some(last) if last.revision == rev => last.events.push(event),
            _ => out.push(RevisionEvents { revision: rev, events: vec![event] }),
        }
    }
    Ok(Ok((out, current, complete)))
}

/// The store image the first, in-memory metad wrote into `snapshot.bin` (JSON).
#[derive(Deserialize)]
struct LegacyImage {
    revision: i64,
    compact_revision: i64,
    keys: Vec<LegacyKey>,
    leases: Vec<(i64, i64)>,
}

#[derive(Deserialize)]
struct LegacyKey {
    #[serde(with = "crate::b64")]
    key: Vec<u8>,
    recs: Vec<LegacyRec>,
}

#[derive(Deserialize)]
struct LegacyRec {
    rev: i64,
    sub: i64,
    val: Option<LegacyValue>,
}

#[derive(Deserialize)]
struct LegacyValue {
    create_revision: i64,
    version: i64,
    #[serde(with = "crate::b64")]
    value: Vec<u8>,
    lease: i64,
}

impl Db {
    /// Load a store image written by the in-memory first cut into this (empty) database.
    pub async fn import_legacy(
        &self,
        image: &[u8],
        last_applied: Option<LogId<NodeId>>,
        membership: StoredMembership<NodeId, Member>,
    ) -> Result<State, EtcdError> {
        let image: LegacyImage = serde_json::from_slice(image).map_err(|e| EtcdError::Internal(e.to_string()))?;
        let st = State {
            revision: image.revision,
            compact_revision: image.compact_revision,
            leases: Arc::new(image.leases.iter().copied().collect()),
            last_applied,
            membership,
        };
        self.write(|tx| {
            tx.execute_batch(LEGACY_KV_SCHEMA)?;
            let mut kv = tx.prepare("INSERT INTO kv VALUES (?, ?, ?, ?, ?, ?, ?, ?)")?;
            for k in &image.keys {
                for r in &k.recs {
                    let empty = LegacyValue { create_revision: 0, version: 0, value: Vec::new(), lease: 0 };
                    let v = r.val.as_ref().unwrap_or(&empty);
                    kv.execute(params![
                        k.key,
                        r.rev,
                        r.sub,
                        v.create_revision,
                        v.version,
                        v.lease,
                        v.value,
                        i64::from(r.val.is_none())
                    ])?;
                }
            }
            for (id, ttl) in &image.leases {
                tx.execute("INSERT INTO leases VALUES (?, ?)", [id, ttl])?;
            }
            drop(kv);
            migrate_layout(tx)?;
            save_state(tx, &st)
        })
        .map_err(db_err)?;
        Ok(st)
    }
}

fn int_of(u: &Option<pb::compare::TargetUnion>) -> i64 {
    use pb::compare::TargetUnion;
    match u {
        Some(TargetUnion::Version(v))
        | Some(TargetUnion::CreateRevision(v))
        | Some(TargetUnion::ModRevision(v))
        | Some(TargetUnion::Lease(v)) => *v,
        _ => 0,
    }
}

enum Planned<'a> {
    Op(&'a pb::request_op::Request),
    TxnStart(bool),
    TxnEnd,
    Empty,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, val: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: val.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(ops: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest { compare: vec![], success: ops, failure: vec![] }
    }

    struct T {
        db: Db,
        st: State,
        _dir: tempfile::TempDir,
    }

    impl T {
        async fn new() -> T {
            let dir = tempfile::tempdir().unwrap();
            let (db, st) = Db::open(&dir.path().join("state.db")).await.unwrap();
            T { db, st, _dir: dir }
        }

        async fn txn(&mut self, req: &pb::TxnRequest) -> Result<WriteOutcome, EtcdError> {
            let st = &mut self.st;
            self.db
                .write(|tx| {
                    let out = Applier { conn: tx, st: &mut *st }.txn(req)?;
                    save_state(tx, st)?;
                    Ok(out)
                })
                .unwrap()
        }

        async fn run(&mut self, cmd: &str, arg: i64, ttl: i64) -> Result<WriteOutcome, EtcdError> {
            let st = &mut self.st;
            self.db
                .write(|tx| {
                    let mut a = Applier { conn: tx, st: &mut *st };
                    let out = match cmd {
                        "compact" => a.compact_cmd(arg),
                        "grant" => a.lease_grant(arg, ttl),
                        _ => a.lease_revoke(arg),
                    }?;
                    save_state(tx, st)?;
                    Ok(out)
                })
                .unwrap()
        }

        async fn get(&self, key: &str, rev: i64) -> Vec<mvccpb::KeyValue> {
            self.db
                .range(&pb::RangeRequest { key: key.into(), revision: rev, ..Default::default() })
                .await
                .unwrap()
                .0
                .kvs
        }
    }

    fn del(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    /// Every key at `rev` as "key=value@mod/create/version".
    async fn all_at(db: &Db, rev: i64) -> Vec<String> {
        let req = pb::RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        let kvs = db.range(&req).await.unwrap().0.kvs;
        kvs.iter()
            .map(|kv| {
                let (k, v) = (String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
                format!("{k}={v}@{}/{}/{}", kv.mod_revision, kv.create_revision, kv.version)
            })
            .collect()
    }

    fn hist_rows(db: &Db) -> i64 {
        db.read(|c| c.query_row("SELECT COUNT(*) FROM hist", [], |r| r.get(0))).unwrap()
    }

    /// Reads at old revisions across a delete, a re-creation and compactions; the same
    /// store written in the first layout (`kv` + id-less `cur`) converts to identical answers.
    #[tokio::test]
    async fn old_revisions_deletes_recreation_compaction_and_the_first_layout() {
        let mut s = T::new().await;
        s.txn(&txn(vec![put("a", "1"), put("b", "1")])).await.unwrap(); // 2
        s.txn(&txn(vec![put("a", "2")])).await.unwrap(); // 3
        s.txn(&txn(vec![del("a")])).await.unwrap(); // 4
        s.txn(&txn(vec![put("a", "3")])).await.unwrap(); // 5
        s.txn(&txn(vec![del("b")])).await.unwrap(); // 6
        s.txn(&txn(vec![put("c", "1")])).await.unwrap(); // 7
        s.txn(&txn(vec![put("a", "4")])).await.unwrap(); // 8
        let want: Vec<(i64, Vec<&str>)> = vec![
            (2, vec!["a=1@2/2/1", "b=1@2/2/1"]),
            (3, vec!["a=2@3/2/2", "b=1@2/2/1"]),
            (4, vec!["b=1@2/2/1"]),
            (5, vec!["a=3@5/5/1", "b=1@2/2/1"]),
            (6, vec!["a=3@5/5/1"]),
            (7, vec!["a=3@5/5/1", "c=1@7/7/1"]),
            (8, vec!["a=4@8/5/2", "c=1@7/7/1"]),
        ];
        for (rev, kvs) in &want {
            assert_eq!(all_at(&s.db, *rev).await, *kvs, "at {rev}");
        }
        assert_eq!(all_at(&s.db, 0).await, want[6].1);

        // The same store in the first layout, converted when opened.
        let copy = s._dir.path().join("first-layout.db");
        s.db.copy_to(&copy).await.unwrap();
        {
            let c = Connection::open(&copy).unwrap();
            c.execute_batch(LEGACY_KV_SCHEMA).unwrap();
            c.execute_batch(&format!(
                "INSERT INTO kv SELECT key, id >> {SUB_BITS}, id & {MAX_SUB}, create_rev, version, lease, value, deleted
                  FROM hist;
                 CREATE TABLE old_cur (key BLOB PRIMARY KEY, mod_rev INTEGER NOT NULL, create_rev INTEGER NOT NULL,
                  version INTEGER NOT NULL, lease INTEGER NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
                 INSERT INTO old_cur SELECT c.key, c.mod_rev, c.create_rev, c.version, c.lease, h.value
                  FROM cur AS c JOIN hist AS h ON h.id = c.id;
                 DROP TABLE cur; ALTER TABLE old_cur RENAME TO cur;
                 CREATE INDEX cur_by_lease ON cur (lease) WHERE lease != 0;
                 DROP TABLE hist; DROP TABLE tomb;"
            ))
            .unwrap();
        }
        // Installed as a snapshot (from a member still on the first layout)...
        let mut fresh = T::new().await;
        fresh.txn(&txn(vec![put("zzz", "9")])).await.unwrap();
        assert_eq!(fresh.db.import(&copy).await.unwrap().revision, 8);
        for (rev, kvs) in &want {
            assert_eq!(all_at(&fresh.db, *rev).await, *kvs, "imported, at {rev}");
        }
        assert_eq!(fresh.db.hash_kv(0).await.unwrap().0, s.db.hash_kv(0).await.unwrap().0);
        // ...and opened in place.
        let (old, st) = Db::open(&copy).await.unwrap();
        assert_eq!(st.revision, 8);
        for (rev, kvs) in &want {
            assert_eq!(all_at(&old, *rev).await, *kvs, "converted, at {rev}");
        }
        assert_eq!(old.hash_kv(0).await.unwrap().0, s.db.hash_kv(0).await.unwrap().0);
        let everything = KeyRange::new(&[0], &[0]);
        let (a, _, _) = s.db.events_since(&everything, 2, 100).await.unwrap();
        let (b, _, _) = old.events_since(&everything, 2, 100).await.unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        // The converted store takes writes that continue each key's chain.
        let mut t = T { db: old, st, _dir: tempfile::tempdir().unwrap() };
        t.txn(&txn(vec![del("a")])).await.unwrap(); // 9
        t.txn(&txn(vec![put("a", "5")])).await.unwrap(); // 10
        assert_eq!(all_at(&t.db, 9).await, vec!["c=1@7/7/1"]);
        assert_eq!(all_at(&t.db, 8).await, want[6].1);
        assert_eq!(all_at(&t.db, 10).await, vec!["a=5@10/10/1", "c=1@7/7/1"]);

        // Compaction keeps each key's record visible at the compacted revision (a's put at
        // 5, b's put at 2) and everything newer; then b's delete and what it hid go too.
        assert_eq!(hist_rows(&s.db), 8);
        s.run("compact", 5, 0).await.unwrap();
        assert_eq!(hist_rows(&s.db), 5);
        for (rev, kvs) in &want[3..] {
            assert_eq!(all_at(&s.db, *rev).await, *kvs, "compacted at 5, read at {rev}");
        }
        s.run("compact", 7, 0).await.unwrap();
        assert_eq!(hist_rows(&s.db), 3);
        for (rev, kvs) in &want[5..] {
            assert_eq!(all_at(&s.db, *rev).await, *kvs, "compacted at 7, read at {rev}");
        }
        let (evs, _, _) = s.db.events_since(&everything, 8, 100).await.unwrap();
        assert_eq!(evs[0].events[0].prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"3".to_vec()));
    }

    #[tokio::test]
    async fn revisions_versions_and_history() {
        let mut s = T::new().await;
        assert_eq!(s.st.revision, 1);
        s.txn(&txn(vec![put("a", "1")])).await.unwrap();
        s.txn(&txn(vec![put("a", "2"), put("b", "x")])).await.unwrap();
        assert_eq!(s.st.revision, 3);
        let a = &s.get("a", 0).await[0];
        assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (2, 3, 2, &b"2"[..]));
        assert_eq!(s.get("a", 2).await[0].value, b"1");
        assert!(s.get("b", 2).await.is_empty());
        let del = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
        };
        let out = s.txn(&txn(vec![del.clone()])).await.unwrap();
        assert_eq!(out.revision, 4);
        assert!(s.get("a", 0).await.is_empty());
        assert_eq!(s.get("a", 3).await[0].value, b"2");
        // Deleting nothing does not bump the revision.
        assert_eq!(s.txn(&txn(vec![del])).await.unwrap().revision, 4);
        s.txn(&txn(vec![put("a", "3")])).await.unwrap();
        let a = &s.get("a", 0).await[0];
        assert_eq!((a.create_revision, a.version), (5, 1));
        let (evs, current, complete) = s.db.events_since(&KeyRange::new(b"a", b""), 2, 100).await.unwrap();
        assert_eq!(evs.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        assert_eq!((current, complete), (5, true));
        // The delete's prev_kv is the value it deleted; the put after it has none.
        assert_eq!(evs[2].events[0].prev_kv.as_ref().unwrap().value, b"2");
        assert!(evs[3].events[0].prev_kv.is_none());
        // Paging never splits a revision.
        let (page, _, complete) = s.db.events_since(&KeyRange::new(b"a", b"\0"), 2, 2).await.unwrap();
        assert!(!complete);
        assert_eq!(page.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![2]);
        s.run("compact", 4, 0).await.unwrap();
        let range_at = |rev: i64| pb::RangeRequest { key: "a".into(), revision: rev, ..Default::default() };
        assert_eq!(s.db.range(&range_at(3)).await.unwrap_err(), EtcdError::Compacted);
        assert_eq!(s.db.range(&range_at(9)).await.unwrap_err(), EtcdError::FutureRev);
        assert_eq!(s.db.events_since(&KeyRange::new(b"a", b""), 4, 10).await.unwrap_err(), Ok(4));
        assert_eq!(s.get("b", 4).await[0].value, b"x");
        // The state survives a reopen.
        let st = s.db.load().await.unwrap();
        assert_eq!((st.revision, st.compact_revision), (5, 4));
    }

    #[tokio::test]
    async fn txn_validation_and_compare() {
        assert_eq!(validate_txn(&txn(vec![put("a", "1"), put("a", "2")])), Err(EtcdError::DuplicateKey));
        let mut s = T::new().await;
        let cmp = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: "k".into(),
            range_end: vec![],
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        };
        let t = pb::TxnRequest { compare: vec![cmp], success: vec![put("k", "v")], failure: vec![] };
        assert!(s.txn(&t).await.unwrap().txn.unwrap().succeeded);
        assert!(!s.txn(&t).await.unwrap().txn.unwrap().succeeded);
        assert_eq!(s.st.revision, 2);
        let bad = pb::PutRequest { key: "z".into(), lease: 7, ..Default::default() };
        let t = txn(vec![put("y", "1"), pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(bad)) }]);
        assert_eq!(s.txn(&t).await.unwrap_err(), EtcdError::LeaseNotFound);
        assert!(s.get("y", 0).await.is_empty());
    }

    #[tokio::test]
    async fn sorted_limited_and_filtered_ranges() {
        use pb::range_request::{SortOrder, SortTarget};
        let mut s = T::new().await;
        for (k, v) in [("r/a", "3"), ("r/b", "1"), ("r/c", "2"), ("r/d", "2")] {
            s.txn(&txn(vec![put(k, v)])).await.unwrap();
        }
        let req = |order: SortOrder, target: SortTarget, limit: i64| pb::RangeRequest {
            key: "r/".into(),
            range_end: "r0".into(),
            sort_order: order as i32,
            sort_target: target as i32,
            limit,
            ..Default::default()
        };
        let keys =
            |r: pb::RangeResponse| r.kvs.into_iter().map(|kv| String::from_utf8(kv.key).unwrap()).collect::<Vec<_>>();
        let (r, _) = s.db.range(&req(SortOrder::Descend, SortTarget::Value, 0)).await.unwrap();
        assert_eq!(keys(r), ["r/a", "r/d", "r/c", "r/b"]);
        let (r, _) = s.db.range(&req(SortOrder::None, SortTarget::Key, 2)).await.unwrap();
        assert!(r.more);
        assert_eq!(r.count, 4);
        assert_eq!(keys(r), ["r/a", "r/b"]);
        let mut f = req(SortOrder::Ascend, SortTarget::Mod, 0);
        f.min_mod_revision = 3;
        f.max_mod_revision = 4;
        let (r, _) = s.db.range(&f).await.unwrap();
        assert_eq!(r.count, 4, "etcd counts the range before the revision filters");
        assert_eq!(keys(r), ["r/b", "r/c"]);
    }

    #[tokio::test]
    async fn lease_revoke_deletes_keys() {
        let mut s = T::new().await;
        s.run("grant", 7, 10).await.unwrap();
        let p = pb::PutRequest { key: "l".into(), value: "v".into(), lease: 7, ..Default::default() };
        s.txn(&txn(vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(p)) }])).await.unwrap();
        assert_eq!(s.db.lease_keys(7).await.unwrap(), vec![b"l".to_vec()]);
        assert_eq!(s.db.load().await.unwrap().leases.get(&7), Some(&10));
        let out = s.run("revoke", 7, 0).await.unwrap();
        assert_eq!(out.revision, 3);
        assert!(s.get("l", 0).await.is_empty());
        assert_eq!(s.run("revoke", 7, 0).await.unwrap_err(), EtcdError::LeaseNotFound);
    }

    #[tokio::test]
    async fn snapshot_copy_and_import() {
        let mut s = T::new().await;
        s.txn(&txn(vec![put("a", "1"), put("b", "2")])).await.unwrap();
        let copy = s._dir.path().join("copy.db");
        s.db.copy_to(&copy).await.unwrap();
        let (_, _, rev) = Db::read_position(&copy).await.unwrap();
        assert_eq!(rev, 2);
        let mut other = T::new().await;
        other.txn(&txn(vec![put("zzz", "9")])).await.unwrap();
        let st = other.db.import(&copy).await.unwrap();
        assert_eq!(st.revision, 2);
        assert!(other.get("zzz", 0).await.is_empty());
        assert_eq!(other.get("b", 0).await[0].value, b"2");
        assert_eq!(other.db.hash_kv(0).await.unwrap().0, s.db.hash_kv(0).await.unwrap().0);
    }

    #[tokio::test]
    async fn a_first_cut_store_image_is_imported() {
        // What the in-memory first cut wrote: "a" put at 2 and 3, "b" put at 2 then deleted at 4.
        let image = br#"{"revision":4,"compact_revision":0,"keys":[
            {"key":"YQ==","recs":[{"rev":2,"sub":0,"val":{"create_revision":2,"version":1,"value":"MQ==","lease":0}},
                                 {"rev":3,"sub":0,"val":{"create_revision":2,"version":2,"value":"Mg==","lease":9}}]},
            {"key":"Yg==","recs":[{"rev":2,"sub":1,"val":{"create_revision":2,"version":1,"value":"eA==","lease":0}},
                                 {"rev":4,"sub":0,"val":null}]}],
            "leases":[[9,60]]}"#;
        let s = T::new().await;
        let st = s.db.import_legacy(image, None, StoredMembership::default()).await.unwrap();
        assert_eq!((st.revision, st.leases.get(&9)), (4, Some(&60)));
        let a = &s.get("a", 0).await[0];
        assert_eq!((a.value.as_slice(), a.version, a.mod_revision, a.lease), (&b"2"[..], 2, 3, 9));
        assert!(s.get("b", 0).await.is_empty());
        assert_eq!(s.get("b", 3).await[0].value, b"x");
        assert_eq!(s.db.lease_keys(9).await.unwrap(), vec![b"a".to_vec()]);
        assert_eq!(s.db.load().await.unwrap().revision, 4);
    }
}
