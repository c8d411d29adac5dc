//! The MVCC key-value store behind the state machine: etcd's revision model (one
//! cluster-wide revision, per-key create/mod revision and version), history until
//! compaction, leases and their attached keys. Pure and deterministic: every replica that
//! applies the same commands reaches the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use aether_proto::etcd::etcdserverpb as pb;
use aether_proto::etcd::mvccpb;
use serde::{Deserialize, Serialize};

use crate::error::EtcdError;

/// History kept without an explicit Compact: once more than twice this many revisions
/// are held, history is compacted down to this many (deterministic, so replicas agree).
pub const HISTORY_REVISIONS: i64 = 10_000;
/// etcd's limit on operations in one txn.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's maximum lease TTL (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One value of a key (`None` in a `Rec` marks a delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub create_revision: i64,
    pub version: i64,
    #[serde(with = "crate::b64")]
    pub value: Vec<u8>,
    pub lease: i64,
}

/// One change of a key: at revision `rev`, the `sub`-th change of that revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rec {
    pub rev: i64,
    pub sub: u32,
    pub val: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl: i64,
    /// Keys currently attached (derived from the keys' values; not serialized).
    #[serde(skip)]
    pub keys: BTreeSet<Vec<u8>>,
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    revision: i64,
    compact_revision: i64,
    keys: BTreeMap<Vec<u8>, Vec<Rec>>,
    leases: BTreeMap<i64, Lease>,
}

impl Default for Store {
    fn default() -> Self {
        Self { revision: 1, compact_revision: 0, keys: BTreeMap::new(), leases: BTreeMap::new() }
    }
}

/// The serialized form of a `Store` (what snapshots hold).
#[derive(Serialize, Deserialize)]
struct StoreImage {
    revision: i64,
    compact_revision: i64,
    keys: Vec<KeyImage>,
    leases: Vec<(i64, i64)>,
}

#[derive(Serialize, Deserialize)]
struct KeyImage {
    #[serde(with = "crate::b64")]
    key: Vec<u8>,
    recs: Vec<Rec>,
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

fn to_kv(key: &[u8], mod_revision: i64, v: &Value) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: key.to_vec(),
        create_revision: v.create_revision,
        mod_revision,
        version: v.version,
        value: v.value.clone(),
        lease: v.lease,
    }
}

/// The record visible at `at` (None = latest).
fn visible(recs: &[Rec], at: Option<i64>) -> Option<&Rec> {
    match at {
        None => recs.last(),
        Some(at) => recs.iter().rev().find(|r| r.rev <= at),
    }
}

fn live_at(recs: &[Rec], at: Option<i64>) -> Option<(i64, &Value)> {
    visible(recs, at).and_then(|r| r.val.as_ref().map(|v| (r.rev, v)))
}

/// The state of one txn while it executes.
struct WriteCtx {
    rev: i64,
    sub: u32,
    events: Vec<mvccpb::Event>,
}

impl Store {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let image = StoreImage {
            revision: self.revision,
            compact_revision: self.compact_revision,
            keys: self.keys.iter().map(|(k, recs)| KeyImage { key: k.clone(), recs: recs.clone() }).collect(),
            leases: self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect(),
        };
        serde_json::to_vec(&image)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let image: StoreImage = serde_json::from_slice(bytes)?;
        let mut store = Store {
            revision: image.revision,
            compact_revision: image.compact_revision,
            keys: image.keys.into_iter().map(|k| (k.key, k.recs)).collect(),
            leases: image.leases.into_iter().map(|(id, ttl)| (id, Lease { ttl, keys: BTreeSet::new() })).collect(),
        };
        let attached: Vec<(i64, Vec<u8>)> = store
            .keys
            .iter()
            .filter_map(|(k, recs)| {
                live_at(recs, None).filter(|(_, v)| v.lease != 0).map(|(_, v)| (v.lease, k.clone()))
            })
            .collect();
        for (lease, key) in attached {
            if let Some(l) = store.leases.get_mut(&lease) {
                l.keys.insert(key);
            }
        }
        Ok(store)
    }

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

    fn iter_range<'a>(&'a self, range: &'a KeyRange) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<Rec>)> + 'a> {
        match range.bounds() {
            None => Box::new(std::iter::empty()),
            Some(b) => Box::new(self.keys.range::<[u8], _>(b)),
        }
    }

    /// A Range request (header left for the caller).
    pub fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        let at = self.check_read_revision(req.revision)?;
        Ok(self.range_at(req, at))
    }

    fn range_at(&self, req: &pb::RangeRequest, at: Option<i64>) -> pb::RangeResponse {
        use pb::range_request::{SortOrder, SortTarget};
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut kvs: Vec<mvccpb::KeyValue> = Vec::new();
        let mut count: i64 = 0;
        for (k, recs) in self.iter_range(&range) {
            let Some((mod_rev, v)) = live_at(recs, at) else { continue };
            if (req.min_mod_revision > 0 && mod_rev < req.min_mod_revision)
                || (req.max_mod_revision > 0 && mod_rev > req.max_mod_revision)
                || (req.min_create_revision > 0 && v.create_revision < req.min_create_revision)
                || (req.max_create_revision > 0 && v.create_revision > req.max_create_revision)
            {
                continue;
            }
            count += 1;
            if !req.count_only {
                kvs.push(to_kv(k, mod_rev, v));
            }
        }
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None && !(order == SortOrder::Ascend && target == SortTarget::Key) {
            match target {
                SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
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
        pb::RangeResponse { header: None, kvs, more, count }
    }

    /// Checks etcd makes before a txn reaches the log.
    pub fn validate_txn(req: &pb::TxnRequest) -> Result<(), EtcdError> {
        if req.compare.len() > MAX_TXN_OPS || req.success.len() > MAX_TXN_OPS || req.failure.len() > MAX_TXN_OPS {
            return Err(EtcdError::TooManyOps);
        }
        for c in &req.compare {
            if c.key.is_empty() {
                return Err(EtcdError::EmptyKey);
            }
        }
        for branch in [&req.success, &req.failure] {
            let mut puts = BTreeSet::new();
            let mut dels = Vec::new();
            collect_writes(branch, &mut puts, &mut dels)?;
            for d in &dels {
                if puts.iter().any(|k: &Vec<u8>| d.contains(k)) {
                    return Err(EtcdError::DuplicateKey);
                }
            }
        }
        Ok(())
    }

    fn compare(&self, c: &pb::Compare) -> bool {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
        let range = KeyRange::new(&c.key, &c.range_end);
        let zero = Value { create_revision: 0, version: 0, value: Vec::new(), lease: 0 };
        let mut checked: Vec<(i64, &Value)> =
            self.iter_range(&range).filter_map(|(_, recs)| live_at(recs, None)).collect();
        if checked.is_empty() {
            if target == CompareTarget::Value {
                return false;
            }
            checked.push((0, &zero));
        }
        let ord_of = |mod_rev: i64, v: &Value| -> std::cmp::Ordering {
            match (target, &c.target_union) {
                (CompareTarget::Value, Some(TargetUnion::Value(want))) => v.value.as_slice().cmp(want.as_slice()),
                (CompareTarget::Value, _) => v.value.as_slice().cmp(&[]),
                (CompareTarget::Version, u) => v.version.cmp(&int_of(u)),
                (CompareTarget::Create, u) => v.create_revision.cmp(&int_of(u)),
                (CompareTarget::Mod, u) => mod_rev.cmp(&int_of(u)),
                (CompareTarget::Lease, u) => v.lease.cmp(&int_of(u)),
            }
        };
        checked.iter().all(|(mod_rev, v)| {
            let ord = ord_of(*mod_rev, v);
            match result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        })
    }

    /// The ops a txn will run, nested txns resolved, compares evaluated before any write.
    fn plan<'a>(&self, req: &'a pb::TxnRequest, out: &mut Vec<Planned<'a>>) -> bool {
        let ok = req.compare.iter().all(|c| self.compare(c));
        let branch = if ok { &req.success } else { &req.failure };
        for op in branch {
            match &op.request {
                Some(pb::request_op::Request::RequestTxn(t)) => {
                    let start = out.len();
                    out.push(Planned::TxnStart(false));
                    let nested_ok = self.plan(t, out);
                    out[start] = Planned::TxnStart(nested_ok);
                    out.push(Planned::TxnEnd);
                }
                Some(other) => out.push(Planned::Op(other)),
                None => out.push(Planned::Empty),
            }
        }
        ok
    }

    fn check_planned(&self, plan: &[Planned<'_>]) -> Result<(), EtcdError> {
        for p in plan {
            match p {
                Planned::Op(pb::request_op::Request::RequestPut(put)) => {
                    if put.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
                    if put.ignore_value && !put.value.is_empty() {
                        return Err(EtcdError::ValueProvided);
                    }
                    if put.ignore_lease && put.lease != 0 {
                        return Err(EtcdError::LeaseProvided);
                    }
                    let prev = self.keys.get(&put.key).and_then(|recs| live_at(recs, None));
                    if (put.ignore_value || put.ignore_lease) && prev.is_none() {
                        return Err(EtcdError::KeyNotFound);
                    }
                    if put.lease != 0 && !self.leases.contains_key(&put.lease) {
                        return Err(EtcdError::LeaseNotFound);
                    }
                }
                Planned::Op(pb::request_op::Request::RequestRange(r)) => {
                    if r.key.is_empty() {
                        return Err(EtcdError::EmptyKey);
                    }
                    self.check_read_revision(r.revision)?;
                }
                Planned::Op(pb::request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                    return Err(EtcdError::EmptyKey);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Apply a txn (Put and DeleteRange arrive as one-op txns).
    pub fn apply_txn(&mut self, req: &pb::TxnRequest) -> Result<WriteOutcome, EtcdError> {
        let mut plan = Vec::new();
        let succeeded = self.plan(req, &mut plan);
        self.check_planned(&plan)?;
        let mut ctx = WriteCtx { rev: self.revision + 1, sub: 0, events: Vec::new() };
        // Execute; nested txns are rebuilt from the flat plan with a stack.
        let mut stack: Vec<pb::TxnResponse> = vec![pb::TxnResponse { header: None, succeeded, responses: Vec::new() }];
        for p in plan {
            match p {
                Planned::TxnStart(ok) => {
                    stack.push(pb::TxnResponse { header: None, succeeded: ok, responses: Vec::new() })
                }
                Planned::TxnEnd => {
                    let done = stack.pop().ok_or_else(|| EtcdError::Internal("txn plan unbalanced".into()))?;
                    let parent = stack.last_mut().ok_or_else(|| EtcdError::Internal("txn plan unbalanced".into()))?;
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
                            let at = self.check_read_revision(r.revision)?;
                            pb::response_op::Response::ResponseRange(self.range_at(r, at))
                        }
                        pb::request_op::Request::RequestPut(put) => {
                            pb::response_op::Response::ResponsePut(self.put(&mut ctx, put))
                        }
                        pb::request_op::Request::RequestDeleteRange(d) => {
                            pb::response_op::Response::ResponseDeleteRange(self.delete(&mut ctx, d))
                        }
                        pb::request_op::Request::RequestTxn(_) => {
                            return Err(EtcdError::Internal("nested txn not planned".into()));
                        }
                    };
                    if let Some(top) = stack.last_mut() {
                        top.responses.push(pb::ResponseOp { response: Some(resp) });
                    }
                }
            }
        }
        let txn = stack.pop().ok_or_else(|| EtcdError::Internal("txn plan unbalanced".into()))?;
        let events = self.finish(ctx);
        Ok(WriteOutcome { revision: self.revision, txn: Some(txn), events })
    }

    /// Bump the revision if anything changed, and auto-compact old history.
    fn finish(&mut self, ctx: WriteCtx) -> Option<RevisionEvents> {
        if ctx.events.is_empty() {
            return None;
        }
        self.revision = ctx.rev;
        if self.revision - self.compact_revision > 2 * HISTORY_REVISIONS {
            self.compact(self.revision - HISTORY_REVISIONS);
        }
        Some(RevisionEvents { revision: ctx.rev, events: ctx.events })
    }

    fn push_rec(&mut self, ctx: &mut WriteCtx, key: &[u8], val: Option<Value>) {
        let recs = self.keys.entry(key.to_vec()).or_default();
        let rec = Rec { rev: ctx.rev, sub: ctx.sub, val };
        ctx.sub += 1;
        match recs.last_mut() {
            // A key written twice in one txn (only through nested txns) keeps the last.
            Some(last) if last.rev == ctx.rev => *last = rec,
            _ => recs.push(rec),
        }
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.remove(key);
        }
    }

    fn put(&mut self, ctx: &mut WriteCtx, put: &pb::PutRequest) -> pb::PutResponse {
        let prev = self.keys.get(&put.key).and_then(|recs| live_at(recs, None)).map(|(m, v)| (m, v.clone()));
        let value = match (&prev, put.ignore_value) {
            (Some((_, p)), true) => p.value.clone(),
            _ => put.value.clone(),
        };
        let lease = match (&prev, put.ignore_lease) {
            (Some((_, p)), true) => p.lease,
            _ => put.lease,
        };
        let (create_revision, version) = match &prev {
            Some((_, p)) => (p.create_revision, p.version + 1),
            None => (ctx.rev, 1),
        };
        let val = Value { create_revision, version, value, lease };
        if let Some((_, p)) = &prev
            && p.lease != lease
        {
            self.detach(p.lease, &put.key);
        }
        if lease != 0
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(put.key.clone());
        }
        let prev_kv = prev.as_ref().map(|(m, p)| to_kv(&put.key, *m, p));
        ctx.events.push(mvccpb::Event {
            r#type: mvccpb::event::EventType::Put as i32,
            kv: Some(to_kv(&put.key, ctx.rev, &val)),
            prev_kv: prev_kv.clone(),
        });
        self.push_rec(ctx, &put.key, Some(val));
        pb::PutResponse { header: None, prev_kv: if put.prev_kv { prev_kv } else { None } }
    }

    fn delete(&mut self, ctx: &mut WriteCtx, d: &pb::DeleteRangeRequest) -> pb::DeleteRangeResponse {
        let range = KeyRange::new(&d.key, &d.range_end);
        let doomed: Vec<mvccpb::KeyValue> =
            self.iter_range(&range).filter_map(|(k, recs)| live_at(recs, None).map(|(m, v)| to_kv(k, m, v))).collect();
        for prev in &doomed {
            self.detach(prev.lease, &prev.key);
            ctx.events.push(mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue { key: prev.key.clone(), mod_revision: ctx.rev, ..Default::default() }),
                prev_kv: Some(prev.clone()),
            });
            self.push_rec(ctx, &prev.key, None);
        }
        let deleted = doomed.len() as i64;
        pb::DeleteRangeResponse { header: None, deleted, prev_kvs: if d.prev_kv { doomed } else { Vec::new() } }
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

    pub fn apply_compact(&mut self, revision: i64) -> Result<WriteOutcome, EtcdError> {
        self.check_compact(revision)?;
        self.compact(revision);
        Ok(WriteOutcome { revision: self.revision, ..Default::default() })
    }

    /// Drop history below `revision`: each key keeps its record visible at `revision`
    /// (unless that is a delete) and everything newer.
    fn compact(&mut self, revision: i64) {
        self.compact_revision = revision;
        self.keys.retain(|_, recs| {
            if let Some(idx) = recs.iter().rposition(|r| r.rev <= revision) {
                let keep_from = if recs[idx].val.is_some() { idx } else { idx + 1 };
                recs.drain(..keep_from);
            }
            !recs.is_empty()
        });
    }

    pub fn apply_lease_grant(&mut self, id: i64, ttl: i64) -> Result<WriteOutcome, EtcdError> {
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExists);
        }
        self.leases.insert(id, Lease { ttl, keys: BTreeSet::new() });
        Ok(WriteOutcome { revision: self.revision, ..Default::default() })
    }

    /// Revoke a lease and delete its keys (one revision for all of them).
    pub fn apply_lease_revoke(&mut self, id: i64) -> Result<WriteOutcome, EtcdError> {
        let lease = self.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        let mut ctx = WriteCtx { rev: self.revision + 1, sub: 0, events: Vec::new() };
        for key in lease.keys {
            let d = pb::DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: false };
            self.delete(&mut ctx, &d);
        }
        let events = self.finish(ctx);
        Ok(WriteOutcome { revision: self.revision, txn: None, events })
    }

    /// Events with revision >= `start` for keys in `range`, in revision order, from the
    /// history held. `Err(compact_revision)` if that history was compacted away.
    pub fn events_since(&self, range: &KeyRange, start: i64) -> Result<Vec<RevisionEvents>, i64> {
        if self.compact_revision > 0 && start <= self.compact_revision {
            return Err(self.compact_revision);
        }
        let mut found: Vec<(i64, u32, mvccpb::Event)> = Vec::new();
        for (k, recs) in self.iter_range(range) {
            for (i, rec) in recs.iter().enumerate() {
                if rec.rev < start {
                    continue;
                }
                let prev_kv =
                    i.checked_sub(1).and_then(|j| recs.get(j)).and_then(|p| p.val.as_ref().map(|v| to_kv(k, p.rev, v)));
                let event = match &rec.val {
                    Some(v) => mvccpb::Event {
                        r#type: mvccpb::event::EventType::Put as i32,
                        kv: Some(to_kv(k, rec.rev, v)),
                        prev_kv,
                    },
                    None => mvccpb::Event {
                        r#type: mvccpb::event::EventType::Delete as i32,
                        kv: Some(mvccpb::KeyValue { key: k.clone(), mod_revision: rec.rev, ..Default::default() }),
                        prev_kv,
                    },
                };
                found.push((rec.rev, rec.sub, event));
            }
        }
        found.sort_by_key(|(rev, sub, _)| (*rev, *sub));
        let mut out: Vec<RevisionEvents> = Vec::new();
        for (rev, _, ev) in found {
            match out.last_mut() {
                Some(last) if last.revision == rev => last.events.push(ev),
                _ => out.push(RevisionEvents { revision: rev, events: vec![ev] }),
            }
        }
        Ok(out)
    }

    /// Keys attached to a lease, sorted.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases.get(&id).map(|l| l.keys.iter().cloned().collect()).unwrap_or_default()
    }

    /// etcd's HashKV: a CRC-32C over every key change with a revision up to `revision`
    /// (0 = the current one) and after the compaction point. Replicas that applied the same
    /// log agree. Returns (hash, compact revision, hashed revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), EtcdError> {
        let rev = if revision <= 0 { self.revision } else { revision };
        if rev > self.revision {
            return Err(EtcdError::FutureRev);
        }
        if rev < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        for (k, recs) in &self.keys {
            for r in recs.iter().filter(|r| r.rev <= rev) {
                d.update(&(k.len() as u64).to_be_bytes());
                d.update(k);
                d.update(&r.rev.to_be_bytes());
                d.update(&r.sub.to_be_bytes());
                match &r.val {
                    Some(v) => {
                        d.update(&[1]);
                        d.update(&v.create_revision.to_be_bytes());
                        d.update(&v.version.to_be_bytes());
                        d.update(&v.lease.to_be_bytes());
                        d.update(&(v.value.len() as u64).to_be_bytes());
                        d.update(&v.value);
                    }
                    None => d.update(&[0]),
                }
            }
        }
        Ok((d.finalize() as u32, self.compact_revision, rev))
    }

    /// Approximate bytes held (for Maintenance.Status).
    pub fn approx_size(&self) -> i64 {
        let mut n: usize = 0;
        for (k, recs) in &self.keys {
            n += k.len() * recs.len();
            n += recs.iter().map(|r| 32 + r.val.as_ref().map_or(0, |v| v.value.len())).sum::<usize>();
        }
        i64::try_from(n).unwrap_or(i64::MAX)
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

/// Collect a branch's put keys and delete ranges (nested txns: both branches), failing on
/// a key put twice, as etcd does.
fn collect_writes(
    ops: &[pb::RequestOp],
    puts: &mut BTreeSet<Vec<u8>>,
    dels: &mut Vec<KeyRange>,
) -> Result<(), EtcdError> {
    for op in ops {
        match &op.request {
            Some(pb::request_op::Request::RequestPut(p)) if !puts.insert(p.key.clone()) => {
                return Err(EtcdError::DuplicateKey);
            }
            Some(pb::request_op::Request::RequestDeleteRange(d)) => dels.push(KeyRange::new(&d.key, &d.range_end)),
            Some(pb::request_op::Request::RequestTxn(t)) => {
                Store::validate_txn(t)?;
                let mut nested_puts = BTreeSet::new();
                for branch in [&t.success, &t.failure] {
                    let mut p = BTreeSet::new();
                    collect_writes(branch, &mut p, dels)?;
                    nested_puts.extend(p);
                }
                for k in nested_puts {
                    if !puts.insert(k) {
                        return Err(EtcdError::DuplicateKey);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
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

    fn get(s: &Store, key: &str, rev: i64) -> Vec<mvccpb::KeyValue> {
        s.range(&pb::RangeRequest { key: key.into(), revision: rev, ..Default::default() }).unwrap().kvs
    }

    #[test]
    fn revisions_versions_and_history() {
        let mut s = Store::default();
        assert_eq!(s.revision(), 1);
        s.apply_txn(&txn(vec![put("a", "1")])).unwrap();
        s.apply_txn(&txn(vec![put("a", "2"), put("b", "x")])).unwrap();
        assert_eq!(s.revision(), 3);
        let a = &get(&s, "a", 0)[0];
        assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (2, 3, 2, &b"2"[..]));
        assert_eq!(get(&s, "a", 2)[0].value, b"1");
        assert!(get(&s, "b", 2).is_empty());
        let del = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
        };
        let out = s.apply_txn(&txn(vec![del.clone()])).unwrap();
        assert_eq!(out.revision, 4);
        // Deleting nothing does not bump the revision.
        assert_eq!(s.apply_txn(&txn(vec![del])).unwrap().revision, 4);
        s.apply_txn(&txn(vec![put("a", "3")])).unwrap();
        let a = &get(&s, "a", 0)[0];
        assert_eq!((a.create_revision, a.version), (5, 1));
        let evs = s.events_since(&KeyRange::new(b"a", b""), 2).unwrap();
        assert_eq!(evs.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        s.apply_compact(4).unwrap();
        assert_eq!(
            s.range(&pb::RangeRequest { key: "a".into(), revision: 3, ..Default::default() }),
            Err(EtcdError::Compacted)
        );
        assert_eq!(
            s.range(&pb::RangeRequest { key: "a".into(), revision: 9, ..Default::default() }),
            Err(EtcdError::FutureRev)
        );
        assert_eq!(s.events_since(&KeyRange::new(b"a", b""), 4).unwrap_err(), 4);
        assert_eq!(get(&s, "b", 4)[0].value, b"x");
        let back = Store::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn txn_validation_and_compare() {
        assert_eq!(Store::validate_txn(&txn(vec![put("a", "1"), put("a", "2")])), Err(EtcdError::DuplicateKey));
        let mut s = Store::default();
        let cmp = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: "k".into(),
            range_end: vec![],
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
        };
        let t = pb::TxnRequest { compare: vec![cmp], success: vec![put("k", "v")], failure: vec![] };
        assert!(s.apply_txn(&t).unwrap().txn.unwrap().succeeded);
        assert!(!s.apply_txn(&t).unwrap().txn.unwrap().succeeded);
        assert_eq!(s.revision(), 2);
        let bad = pb::PutRequest { key: "z".into(), lease: 7, ..Default::default() };
        let t = txn(vec![put("y", "1"), pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(bad)) }]);
        assert_eq!(s.apply_txn(&t).unwrap_err(), EtcdError::LeaseNotFound);
        assert!(get(&s, "y", 0).is_empty());
    }

    #[test]
    fn lease_revoke_deletes_keys() {
        let mut s = Store::default();
        s.apply_lease_grant(7, 10).unwrap();
        let p = pb::PutRequest { key: "l".into(), value: "v".into(), lease: 7, ..Default::default() };
        s.apply_txn(&txn(vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(p)) }])).unwrap();
        assert_eq!(s.lease_keys(7), vec![b"l".to_vec()]);
        let back = Store::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(back.lease_keys(7), vec![b"l".to_vec()]);
        let out = s.apply_lease_revoke(7).unwrap();
        assert_eq!(out.revision, 3);
        assert!(get(&s, "l", 0).is_empty());
        assert_eq!(s.apply_lease_revoke(7).unwrap_err(), EtcdError::LeaseNotFound);
    }
}
