//! One systematic pass over every etcd v3 RPC metad serves, through `etcd-client`, mostly
//! table-driven: the same suite runs against one member and through a follower of three (so
//! writes, read-index, keep-alives, membership and maintenance calls take the forwarding
//! paths). Expected codes and messages are etcd's (checked against a real etcd).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use sha2::Digest as _;
use tonic::Code;

use crate::harness::{DEADLINE, Server, status};
use crate::multi::{MultiCluster, base_config, eventually};
use crate::watch::next;

/// A value no other call of the suite (in this process) gets.
fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed) << 20)
        & 0x3fff_ffff_ffff_ffff
}

/// How a response's revision relates to the writes the suite has seen acknowledged.
#[derive(Clone, Copy, Debug)]
enum Rev {
    /// Linearizable: at least the last acknowledged write.
    Read,
    /// A write that changed the store: above the last acknowledged write (becomes the new one).
    Write,
    /// A write that changed nothing: no new revision.
    NoChange,
    /// Served from the member's own state (may trail a write acknowledged by the leader).
    Local,
    /// Cluster RPCs: etcd leaves the revision out (0); metad may fill it in.
    Cluster,
}

/// An RPC of the bad-input table, run for its error only.
type Row = Pin<Box<dyn Future<Output = Result<(), etcd_client::Error>> + Send>>;

/// Leaked, so table rows can capture it by copy.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// What a Range must count.
#[derive(Clone, Copy, Debug)]
enum Count {
    /// With min/max revision filters, etcd counts the whole range, before the filters.
    Exact(i64),
    /// Ranges reaching past the suite's prefix may see other runs' keys.
    AtLeast(i64),
}

/// (name, key, options, expected (key suffix, value), count, more) of one Range.
type RangeRow = (String, String, GetOptions, Vec<(&'static str, &'static str)>, Count, Option<bool>);

/// One key's state in the local model.
#[derive(Clone, Debug)]
struct Model {
    value: &'static str,
    version: i64,
    create: i64,
    modr: i64,
}

struct Suite {
    c: Client,
    p: String,
    /// The revision of the last acknowledged write.
    floor: i64,
    /// (cluster_id, member_id) every header must repeat.
    ids: Option<(u64, u64)>,
}

impl Suite {
    fn k(&self, s: &str) -> String {
        format!("{}{s}", self.p)
    }

    fn kb(&self, s: &str) -> Vec<u8> {
        self.k(s).into_bytes()
    }

    /// The one header check every response goes through.
    #[track_caller]
    fn hdr(&mut self, h: Option<&ResponseHeader>, rev: Rev, what: &str) -> i64 {
        let h = h.unwrap_or_else(|| panic!("{what}: no header"));
        assert_ne!(h.cluster_id(), 0, "{what}: cluster_id");
        assert_ne!(h.member_id(), 0, "{what}: member_id");
        assert!(h.raft_term() >= 1, "{what}: raft_term {}", h.raft_term());
        let ids = (h.cluster_id(), h.member_id());
        assert_eq!(*self.ids.get_or_insert(ids), ids, "{what}: cluster/member id changed");
        let r = h.revision();
        assert!(r >= 1 || matches!(rev, Rev::Cluster) && r == 0, "{what}: revision {r}");
        match rev {
            Rev::Read => assert!(r >= self.floor, "{what}: revision {r} below the last write {}", self.floor),
            Rev::Write => {
                assert!(r > self.floor, "{what}: write revision {r} not above {}", self.floor);
                self.floor = r;
            }
            Rev::NoChange => assert_eq!(r, self.floor, "{what}: a write that changed nothing moved the revision"),
            Rev::Local | Rev::Cluster => {}
        }
        r
    }

    /// etcd sends no header on Defragment and Snapshot responses; metad's, if any, must be sane.
    #[track_caller]
    fn hdr_if_any(&mut self, h: Option<&ResponseHeader>, what: &str) {
        if h.is_some() {
            self.hdr(h, Rev::Local, what);
        }
    }

    async fn put(&mut self, key: &str, value: &str, opts: Option<PutOptions>) -> i64 {
        let r = self.c.put(self.k(key), value, opts).await.unwrap();
        self.hdr(r.header(), Rev::Write, &format!("put {key}"))
    }

    /// The current revision through a linearizable read.
    async fn current(&mut self) -> i64 {
        let r = self.c.get(self.k("\u{1}none"), None).await.unwrap();
        self.hdr(r.header(), Rev::Read, "current revision")
    }

    async fn value(&mut self, key: &str) -> Option<(String, i64, i64)> {
        let r = self.c.get(self.k(key), None).await.unwrap();
        self.hdr(r.header(), Rev::Read, &format!("get {key}"));
        r.kvs().first().map(|kv| (kv.value_str().unwrap().to_string(), kv.version(), kv.lease()))
    }

    /// The next watch response, header-checked.
    async fn watch_next(&mut self, s: &mut WatchStream) -> WatchResponse {
        let r = next(s).await;
        self.hdr(r.header(), Rev::Local, "watch response");
        r
    }
}

type Ev = (EventType, String, String, i64, Option<String>);

fn events_of(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            )
        })
        .collect()
}

fn holds<T: Ord>(actual: T, op: CompareOp, operand: T) -> bool {
    match op {
        CompareOp::Equal => actual == operand,
        CompareOp::Greater => actual > operand,
        CompareOp::Less => actual < operand,
        CompareOp::NotEqual => actual != operand,
    }
}

pub async fn rpc_suite(client: Client, label: &str) {
    let mut s = Suite { c: client, p: format!("table/{label}/{:x}/", unique()), floor: 0, ids: None };
    s.floor = s.current().await;
    // Lease ids this run asks for (unique across runs); `absent` is never granted.
    let lease_base = (unique() >> 8) as i64 + 1;
    let absent_lease = lease_base + 1_000_000;

    // ---------------------------------------------------------------- Range
    // Every target orders the four keys differently; no two keys tie on any target.
    let writes: [(&str, &'static str); 10] = [
        ("r/b", "b1"),
        ("r/d/x", "x1"),
        ("r/c", "c1"),
        ("r/a", "m"),
        ("r/d/x", "x2"),
        ("r/b", "b2"),
        ("r/d/x", "x3"),
        ("r/c", "a"),
        ("r/d/x", "q"),
        ("r/b", "z"),
    ];
    let mut model: BTreeMap<&str, Model> = BTreeMap::new();
    let mut revs = Vec::new();
    for (key, value) in writes {
        let rev = s.put(key, value, None).await;
        revs.push(rev);
        let m = model.entry(key).or_insert(Model { value, version: 0, create: rev, modr: rev });
        m.value = value;
        m.version += 1;
        m.modr = rev;
    }
    let keys = |ks: &[&'static str]| ks.iter().map(|k| (*k, model[k].value)).collect::<Vec<_>>();
    let all = keys(&["r/a", "r/b", "r/c", "r/d/x"]);
    let kvs_only: Vec<(&str, &str)> = all.iter().map(|(k, _)| (*k, "")).collect();
    let k = |s: &Suite, x: &str| s.k(x);
    let mut table: Vec<RangeRow> = vec![
        ("single key".into(), k(&s, "r/a"), GetOptions::new(), keys(&["r/a"]), Count::Exact(1), Some(false)),
        ("missing key".into(), k(&s, "r/zz"), GetOptions::new(), vec![], Count::Exact(0), Some(false)),
        ("prefix".into(), k(&s, "r/"), GetOptions::new().with_prefix(), all.clone(), Count::Exact(4), Some(false)),
        (
            "nested prefix".into(),
            k(&s, "r/d/"),
            GetOptions::new().with_prefix(),
            keys(&["r/d/x"]),
            Count::Exact(1),
            Some(false),
        ),
        (
            "prefix of a key".into(),
            k(&s, "r/d"),
            GetOptions::new().with_prefix(),
            keys(&["r/d/x"]),
            Count::Exact(1),
            Some(false),
        ),
        (
            "range_end".into(),
            k(&s, "r/a"),
            GetOptions::new().with_range(k(&s, "r/c")),
            keys(&["r/a", "r/b"]),
            Count::Exact(2),
            Some(false),
        ),
        (
            "range_end is exclusive".into(),
            k(&s, "r/b"),
            GetOptions::new().with_range(k(&s, "r/d/x")),
            keys(&["r/b", "r/c"]),
            Count::Exact(2),
            Some(false),
        ),
        (
            "range_end below key".into(),
            k(&s, "r/c"),
            GetOptions::new().with_range(k(&s, "r/a")),
            vec![],
            Count::Exact(0),
            Some(false),
        ),
        (
            "limit 1 + more".into(),
            k(&s, "r/a"),
            GetOptions::new().with_range(k(&s, "r/c")).with_limit(1),
            keys(&["r/a"]),
            Count::Exact(2),
            Some(true),
        ),
        (
            "limit 3 of 4".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_limit(3),
            keys(&["r/a", "r/b", "r/c"]),
            Count::Exact(4),
            Some(true),
        ),
        (
            "limit = count".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_limit(4),
            all.clone(),
            Count::Exact(4),
            Some(false),
        ),
        (
            "limit above count".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_limit(100),
            all.clone(),
            Count::Exact(4),
            Some(false),
        ),
        (
            "count_only".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_count_only(),
            vec![],
            Count::Exact(4),
            Some(false),
        ),
        (
            "keys_only".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_keys_only(),
            kvs_only.clone(),
            Count::Exact(4),
            Some(false),
        ),
        (
            "keys_only + limit".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_keys_only().with_limit(2),
            kvs_only[..2].to_vec(),
            Count::Exact(4),
            Some(true),
        ),
        (
            "serializable".into(),
            k(&s, "r/a"),
            GetOptions::new().with_serializable(),
            keys(&["r/a"]),
            Count::Exact(1),
            Some(false),
        ),
        (
            "from key".into(),
            k(&s, "r/c"),
            GetOptions::new().with_from_key().with_limit(2),
            keys(&["r/c", "r/d/x"]),
            Count::AtLeast(2),
            None,
        ),
        (
            "from key \\0 (all keys)".into(),
            "\0".into(),
            GetOptions::new().with_from_key().with_count_only(),
            vec![],
            Count::AtLeast(4),
            None,
        ),
        (
            "all keys".into(),
            "\0".into(),
            GetOptions::new().with_all_keys().with_keys_only(),
            vec![],
            Count::AtLeast(4),
            None,
        ),
        // Point-in-time reads.
        (
            "revision: before create".into(),
            k(&s, "r/a"),
            GetOptions::new().with_revision(revs[2]),
            vec![],
            Count::Exact(0),
            Some(false),
        ),
        (
            "revision: old value".into(),
            k(&s, "r/d/x"),
            GetOptions::new().with_revision(revs[4]),
            vec![("r/d/x", "x2")],
            Count::Exact(1),
            Some(false),
        ),
        (
            "revision: prefix".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_revision(revs[1]),
            vec![("r/b", "b1"), ("r/d/x", "x1")],
            Count::Exact(2),
            Some(false),
        ),
        (
            "revision: prefix + limit".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_revision(revs[3]).with_limit(3),
            vec![("r/a", "m"), ("r/b", "b1"), ("r/c", "c1")],
            Count::Exact(4),
            Some(true),
        ),
        // Filters prune kvs; count is the whole range's.
        (
            "min_mod_revision".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_min_mod_revision(revs[7]),
            keys(&["r/b", "r/c", "r/d/x"]),
            Count::Exact(4),
            Some(false),
        ),
        (
            "max_mod_revision".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_max_mod_revision(revs[7]),
            keys(&["r/a", "r/c"]),
            Count::Exact(4),
            Some(false),
        ),
        (
            "min_create_revision".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_min_create_revision(revs[2]),
            keys(&["r/a", "r/c"]),
            Count::Exact(4),
            Some(false),
        ),
        (
            "max_create_revision".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_max_create_revision(revs[1]),
            keys(&["r/b", "r/d/x"]),
            Count::Exact(4),
            Some(false),
        ),
        (
            "min + max mod_revision".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_min_mod_revision(revs[3]).with_max_mod_revision(revs[8]),
            keys(&["r/a", "r/c", "r/d/x"]),
            Count::Exact(4),
            Some(false),
        ),
        (
            "sort + limit".into(),
            k(&s, "r/"),
            GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(2),
            keys(&["r/b", "r/d/x"]),
            Count::Exact(4),
            Some(true),
        ),
    ];
    // Every sort order × target. Order NONE sorts by key for KEY and ascending otherwise
    // (etcd defaults a non-KEY target to ASCEND).
    let targets = [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value];
    for target in targets {
        for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
            let mut want: Vec<(&str, &Model)> = model.iter().map(|(k, m)| (*k, m)).collect();
            want.sort_by(|(ka, a), (kb, b)| match target {
                SortTarget::Key => ka.cmp(kb),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create.cmp(&b.create),
                SortTarget::Mod => a.modr.cmp(&b.modr),
                SortTarget::Value => a.value.cmp(b.value),
            });
            if order == SortOrder::Descend {
                want.reverse();
            }
            let want = want.iter().map(|(k, m)| (*k, m.value)).collect();
            table.push((
                format!("sort {target:?} {order:?}"),
                k(&s, "r/"),
                GetOptions::new().with_prefix().with_sort(target, order),
                want,
                Count::Exact(4),
                Some(false),
            ));
        }
    }
    for (name, key, opts, want, count, more) in table {
        let keys_only = name.contains("keys_only");
        let r = s.c.get(key, Some(opts)).await.unwrap_or_else(|e| panic!("range {name}: {e}"));
        s.hdr(r.header(), Rev::Read, &format!("range {name}"));
        let got: Vec<(String, String)> =
            r.kvs().iter().map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string())).collect();
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (s.k(k), v.to_string())).collect();
        match count {
            Count::Exact(n) => {
                assert_eq!(got, want, "range {name}: kvs");
                assert_eq!(r.count(), n, "range {name}: count");
            }
            Count::AtLeast(n) => {
                assert!(got.len() >= want.len() && got[..want.len()] == want[..], "range {name}: kvs {got:?}");
                assert!(r.count() >= n, "range {name}: count {}", r.count());
            }
        }
        if let Some(more) = more {
            assert_eq!(r.more(), more, "range {name}: more");
        }
        if keys_only {
            assert!(r.kvs().iter().all(|kv| kv.value().is_empty()), "range {name}: keys_only returned values");
        }
    }
    // Every field of every key, as the model has it.
    let r = s.c.get(s.k("r/"), Some(GetOptions::new().with_prefix())).await.unwrap();
    s.hdr(r.header(), Rev::Read, "range fields");
    for kv in r.kvs() {
        let key = kv.key_str().unwrap().strip_prefix(&s.p).unwrap();
        let m = &model[key];
        assert_eq!(
            (kv.value_str().unwrap(), kv.version(), kv.create_revision(), kv.mod_revision(), kv.lease()),
            (m.value, m.version, m.create, m.modr, 0),
            "fields of {key}"
        );
    }

    // ---------------------------------------------------------------- Put
    let lease = s.c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(lease_base))).await.unwrap();
    s.hdr(lease.header(), Rev::Read, "lease grant");
    assert_eq!((lease.id(), lease.ttl()), (lease_base, 600));
    let lease2 = s.c.lease_grant(600, None).await.unwrap();
    s.hdr(lease2.header(), Rev::Read, "lease grant (server-chosen id)");
    assert!(lease2.id() > 0 && lease2.id() != lease_base);
    let (l1, l2) = (lease.id(), lease2.id());

    // (name, key, value, options, then (value, version, lease), prev kv (value, version))
    type PutRow =
        (&'static str, &'static str, &'static str, PutOptions, (&'static str, i64, i64), Option<(&'static str, i64)>);
    let put_table: Vec<PutRow> = vec![
        ("create", "p/k", "v1", PutOptions::new(), ("v1", 1, 0), None),
        ("create with prev_kv", "p/j", "j1", PutOptions::new().with_prev_key(), ("j1", 1, 0), None),
        ("update with prev_kv", "p/k", "v2", PutOptions::new().with_prev_key(), ("v2", 2, 0), Some(("v1", 1))),
        ("attach lease", "p/k", "v3", PutOptions::new().with_lease(l1), ("v3", 3, l1), None),
        (
            "ignore_value keeps the value",
            "p/k",
            "",
            PutOptions::new().with_ignore_value().with_lease(l2),
            ("v3", 4, l2),
            None,
        ),
        (
            "ignore_lease keeps the lease",
            "p/k",
            "v5",
            PutOptions::new().with_ignore_lease().with_prev_key(),
            ("v5", 5, l2),
            Some(("v3", 4)),
        ),
        ("ignore both", "p/k", "", PutOptions::new().with_ignore_value().with_ignore_lease(), ("v5", 6, l2), None),
        ("plain put drops the lease", "p/k", "v7", PutOptions::new(), ("v7", 7, 0), None),
        ("empty value", "p/e", "", PutOptions::new(), ("", 1, 0), None),
    ];
    for (name, key, value, opts, (want_v, want_ver, want_lease), prev) in put_table {
        let r = s.c.put(s.k(key), value, Some(opts)).await.unwrap_or_else(|e| panic!("put {name}: {e}"));
        let rev = s.hdr(r.header(), Rev::Write, &format!("put {name}"));
        let got_prev = r.prev_key().map(|kv| (kv.value_str().unwrap().to_string(), kv.version()));
        assert_eq!(got_prev, prev.map(|(v, n)| (v.to_string(), n)), "put {name}: prev_kv");
        let got = s.c.get(s.k(key), None).await.unwrap();
        s.hdr(got.header(), Rev::Read, &format!("put {name}: get"));
        let kv = &got.kvs()[0];
        assert_eq!(
            (kv.value_str().unwrap(), kv.version(), kv.lease(), kv.mod_revision()),
            (want_v, want_ver, want_lease, rev),
            "put {name}"
        );
    }

    // ---------------------------------------------------------------- DeleteRange
    for key in ["d/1", "d/2", "d/3", "d/4", "d/5", "d/x/1", "d/x/2", "d/y"] {
        s.put(key, &format!("val-{key}"), None).await;
    }
    // (name, key, options, deleted, prev kvs returned)
    let del_table: Vec<(&str, String, DeleteOptions, i64, Vec<&str>)> = vec![
        ("missing key", s.k("d/0"), DeleteOptions::new().with_prev_key(), 0, vec![]),
        ("one key with prev_kv", s.k("d/1"), DeleteOptions::new().with_prev_key(), 1, vec!["d/1"]),
        ("one key, no prev_kv", s.k("d/2"), DeleteOptions::new(), 1, vec![]),
        ("again", s.k("d/2"), DeleteOptions::new(), 0, vec![]),
        (
            "range [d/3, d/5) with prev_kv",
            s.k("d/3"),
            DeleteOptions::new().with_range(s.k("d/5")).with_prev_key(),
            2,
            vec!["d/3", "d/4"],
        ),
        (
            "prefix with prev_kv",
            s.k("d/x/"),
            DeleteOptions::new().with_prefix().with_prev_key(),
            2,
            vec!["d/x/1", "d/x/2"],
        ),
        ("empty range", s.k("d/3"), DeleteOptions::new().with_range(s.k("d/5")), 0, vec![]),
        ("the rest by prefix", s.k("d/"), DeleteOptions::new().with_prefix(), 2, vec![]),
    ];
    for (name, key, opts, deleted, prev) in del_table {
        let r = s.c.delete(key, Some(opts)).await.unwrap_or_else(|e| panic!("delete {name}: {e}"));
        let rev = if deleted > 0 { Rev::Write } else { Rev::NoChange };
        s.hdr(r.header(), rev, &format!("delete {name}"));
        assert_eq!(r.deleted(), deleted, "delete {name}: deleted");
        let got: Vec<(String, String)> =
            r.prev_kvs().iter().map(|kv| (kv.key_str().unwrap().into(), kv.value_str().unwrap().into())).collect();
        let want: Vec<(String, String)> = prev.iter().map(|k| (s.k(k), format!("val-{k}"))).collect();
        assert_eq!(got, want, "delete {name}: prev_kvs");
    }
    let r = s.c.get(s.k("d/"), Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    s.hdr(r.header(), Rev::Read, "after deletes");
    assert_eq!(r.count(), 0);

    // ---------------------------------------------------------------- Txn
    let tl = s.c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(lease_base + 1))).await.unwrap().id();
    let t_create = s.put("t/k", "v1", None).await;
    let t_mod = s.put("t/k", "v2", Some(PutOptions::new().with_lease(tl))).await;
    let r1 = s.put("t/r/1", "a", None).await;
    s.put("t/r/2", "b", None).await;
    type Cmp = fn(String, CompareOp, i64) -> Compare;
    let int_targets: [(&str, Cmp, i64); 4] = [
        ("version", |k, op, v| Compare::version(k, op, v), 2),
        ("create", |k, op, v| Compare::create_revision(k, op, v), t_create),
        ("mod", |k, op, v| Compare::mod_revision(k, op, v), t_mod),
        ("lease", |k, op, v| Compare::lease(k, op, v), tl),
    ];
    let ops = [CompareOp::Equal, CompareOp::Greater, CompareOp::Less, CompareOp::NotEqual];
    // (name, compares, expected succeeded)
    let mut txn_table: Vec<(String, Vec<Compare>, bool)> = Vec::new();
    for (name, cmp, actual) in int_targets {
        for op in ops {
            for operand in [actual - 1, actual, actual + 1] {
                txn_table.push((
                    format!("{name} {op:?} {operand} (is {actual})"),
                    vec![cmp(s.k("t/k"), op, operand)],
                    holds(actual, op, operand),
                ));
            }
        }
    }
    for op in ops {
        for operand in ["v1", "v2", "v3", ""] {
            txn_table.push((
                format!("value {op:?} {operand:?} (is \"v2\")"),
                vec![Compare::value(s.k("t/k"), op, operand)],
                holds("v2", op, operand),
            ));
        }
    }
    // A missing key has version, revisions and lease 0; every VALUE compare on it fails.
    let missing = s.k("t/missing");
    let more_rows: Vec<(&str, Vec<Compare>, bool)> = vec![
        ("missing: version = 0", vec![Compare::version(missing.clone(), CompareOp::Equal, 0)], true),
        ("missing: version > 0", vec![Compare::version(missing.clone(), CompareOp::Greater, 0)], false),
        ("missing: create = 0", vec![Compare::create_revision(missing.clone(), CompareOp::Equal, 0)], true),
        ("missing: mod < 1", vec![Compare::mod_revision(missing.clone(), CompareOp::Less, 1)], true),
        ("missing: lease = 0", vec![Compare::lease(missing.clone(), CompareOp::Equal, 0)], true),
        ("missing: value = \"\"", vec![Compare::value(missing.clone(), CompareOp::Equal, "")], false),
        ("missing: value != \"x\"", vec![Compare::value(missing.clone(), CompareOp::NotEqual, "x")], false),
        // Range compares hold only if every key in the range satisfies them.
        ("prefix: version = 1", vec![Compare::version(s.k("t/r/"), CompareOp::Equal, 1).with_prefix()], true),
        ("prefix: version > 1", vec![Compare::version(s.k("t/r/"), CompareOp::Greater, 1).with_prefix()], false),
        ("prefix: value = \"a\"", vec![Compare::value(s.k("t/r/"), CompareOp::Equal, "a").with_prefix()], false),
        ("prefix: value > \"\"", vec![Compare::value(s.k("t/r/"), CompareOp::Greater, "").with_prefix()], true),
        ("prefix: value < \"b\"", vec![Compare::value(s.k("t/r/"), CompareOp::Less, "b").with_prefix()], false),
        (
            "prefix: mod > create(r/1) - 1",
            vec![Compare::mod_revision(s.k("t/r/"), CompareOp::Greater, r1 - 1).with_prefix()],
            true,
        ),
        (
            "range [r/1, r/2): create = r/1's",
            vec![Compare::create_revision(s.k("t/r/1"), CompareOp::Equal, r1).with_range(s.k("t/r/2"))],
            true,
        ),
        ("empty prefix: version = 0", vec![Compare::version(s.k("t/none/"), CompareOp::Equal, 0).with_prefix()], true),
        ("empty prefix: value = \"\"", vec![Compare::value(s.k("t/none/"), CompareOp::Equal, "").with_prefix()], false),
        // Compares are ANDed.
        (
            "all hold",
            vec![Compare::version(s.k("t/k"), CompareOp::Equal, 2), Compare::value(s.k("t/k"), CompareOp::Equal, "v2")],
            true,
        ),
        (
            "one fails",
            vec![Compare::version(s.k("t/k"), CompareOp::Equal, 2), Compare::value(s.k("t/k"), CompareOp::Equal, "v1")],
            false,
        ),
        ("no compares", vec![], true),
    ];
    txn_table.extend(more_rows.into_iter().map(|(n, c, w)| (n.to_string(), c, w)));
    for (name, compares, want) in txn_table {
        let t = Txn::new()
            .when(compares)
            .and_then([TxnOp::get(s.k("t/k"), None)])
            .or_else([TxnOp::get(s.k("t/r/"), Some(GetOptions::new().with_prefix().with_count_only()))]);
        let r = s.c.txn(t).await.unwrap_or_else(|e| panic!("txn {name}: {e}"));
        s.hdr(r.header(), Rev::NoChange, &format!("txn {name}"));
        assert_eq!(r.succeeded(), want, "txn {name}");
        match (&r.op_responses()[..], want) {
            ([TxnOpResponse::Get(g)], true) => assert_eq!(g.kvs()[0].value(), b"v2", "txn {name}"),
            ([TxnOpResponse::Get(g)], false) => assert_eq!((g.count(), g.kvs().len()), (2, 0), "txn {name}"),
            (other, _) => panic!("txn {name}: {other:?}"),
        }
    }

    // Ops run in order and see the txn's own writes; a nested txn's compares (like all of
    // a txn's compares) are evaluated before any op of the outer txn runs.
    let t = Txn::new()
        .when([Compare::version(s.k("t/k"), CompareOp::Equal, 2)])
        .and_then([
            TxnOp::put(s.k("t/n1"), "1", Some(PutOptions::new().with_prev_key())),
            TxnOp::get(s.k("t/n1"), None),
            TxnOp::delete(s.k("t/r/1"), Some(DeleteOptions::new().with_prev_key())),
            TxnOp::get(s.k("t/r/"), Some(GetOptions::new().with_prefix())),
            TxnOp::txn(
                Txn::new()
                    .when([Compare::version(s.k("t/n1"), CompareOp::Equal, 1)])
                    .and_then([TxnOp::put(s.k("t/n2"), "then", None)])
                    .or_else([TxnOp::put(s.k("t/n2"), "else", None), TxnOp::get(s.k("t/k"), None)]),
            ),
        ])
        .or_else([TxnOp::put(s.k("t/failed"), "x", None)]);
    let r = s.c.txn(t).await.unwrap();
    let rev = s.hdr(r.header(), Rev::Write, "nested txn");
    assert!(r.succeeded());
    match &r.op_responses()[..] {
        [
            TxnOpResponse::Put(p),
            TxnOpResponse::Get(g1),
            TxnOpResponse::Delete(d),
            TxnOpResponse::Get(g2),
            TxnOpResponse::Txn(inner),
        ] => {
            assert!(p.prev_key().is_none());
            assert_eq!(
                g1.kvs().iter().map(|kv| (kv.value(), kv.mod_revision())).collect::<Vec<_>>(),
                [(&b"1"[..], rev)]
            );
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value(), b"a");
            assert_eq!(g2.kvs().iter().map(|kv| kv.key().to_vec()).collect::<Vec<_>>(), [s.kb("t/r/2")]);
            assert!(!inner.succeeded(), "the nested compare saw t/n1 before the outer put");
            match &inner.op_responses()[..] {
                [TxnOpResponse::Put(_), TxnOpResponse::Get(g)] => assert_eq!(g.kvs()[0].value(), b"v2"),
                other => panic!("nested txn: {other:?}"),
            }
        }
        other => panic!("nested txn: {other:?}"),
    }
    for (key, want) in [("t/n1", Some("1")), ("t/n2", Some("else")), ("t/r/1", None), ("t/failed", None)] {
        let got = s.value(key).await;
        assert_eq!(got.as_ref().map(|(v, _, _)| v.as_str()), want, "after nested txn: {key}");
    }
    // The failure branch, and a txn that writes nothing.
    let t = Txn::new()
        .when([Compare::value(s.k("t/k"), CompareOp::Equal, "nope")])
        .and_then([TxnOp::put(s.k("t/never"), "x", None)])
        .or_else([TxnOp::put(s.k("t/else"), "y", None), TxnOp::delete(s.k("t/n2"), None)]);
    let r = s.c.txn(t).await.unwrap();
    s.hdr(r.header(), Rev::Write, "failure branch");
    assert!(!r.succeeded());
    assert!(matches!(&r.op_responses()[..], [TxnOpResponse::Put(_), TxnOpResponse::Delete(d)] if d.deleted() == 1));
    let r = s.c.txn(Txn::new()).await.unwrap();
    s.hdr(r.header(), Rev::NoChange, "empty txn");
    assert!(r.succeeded() && r.op_responses().is_empty());
    // Puts of one key in the two branches of a nested txn do not clash.
    let t = Txn::new().and_then([TxnOp::txn(
        Txn::new()
            .when([Compare::version(s.k("t/k"), CompareOp::Equal, 2)])
            .and_then([TxnOp::put(s.k("t/b"), "then", None)])
            .or_else([TxnOp::put(s.k("t/b"), "else", None)]),
    )]);
    let r = s.c.txn(t).await.unwrap();
    s.hdr(r.header(), Rev::Write, "same key in both nested branches");
    assert_eq!(s.value("t/b").await.unwrap().0, "then");
    // A nested txn may delete a key in one branch and put it in the other (etcd checks a
    // child's puts only against deletes of enclosing levels).
    let t = Txn::new().and_then([TxnOp::txn(
        Txn::new()
            .when([Compare::version(s.k("t/k"), CompareOp::Equal, 2)])
            .and_then([TxnOp::delete(s.k("t/b"), None)])
            .or_else([TxnOp::put(s.k("t/b"), "else2", None)]),
    )]);
    let r = s.c.txn(t).await.unwrap();
    s.hdr(r.header(), Rev::Write, "delete and put of one key in the two nested branches");
    assert!(s.value("t/b").await.is_none());

    // ---------------------------------------------------------------- Lease
    let id = lease_base + 2;
    let g = s.c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(id))).await.unwrap();
    s.hdr(g.header(), Rev::Read, "lease grant with id");
    assert_eq!((g.id(), g.ttl()), (id, 60));
    s.put("l/1", "a", Some(PutOptions::new().with_lease(id))).await;
    s.put("l/2", "b", Some(PutOptions::new().with_lease(id))).await;
    s.put("l/3", "c", None).await;
    // The client reads the first answer itself; two more on the same stream.
    let (mut keeper, mut acks) = s.c.lease_keep_alive(id).await.unwrap();
    for _ in 0..2 {
        keeper.keep_alive().await.unwrap();
        let ack = tokio::time::timeout(DEADLINE, acks.message()).await.expect("keep-alive ack").unwrap().unwrap();
        s.hdr(ack.header(), Rev::Local, "keep-alive");
        assert_eq!((ack.id(), ack.ttl()), (id, 60));
    }
    // An unknown lease is answered with TTL 0 (the client turns that into an error).
    match s.c.lease_keep_alive(absent_lease).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!("keep-alive of an unknown lease: {other:?}"),
    }
    let ttl = s.c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    s.hdr(ttl.header(), Rev::Read, "time to live");
    let mut got_keys = ttl.keys().to_vec();
    got_keys.sort();
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60, "ttl {}", ttl.ttl());
    assert_eq!(got_keys, [s.kb("l/1"), s.kb("l/2")]);
    let ttl = s.c.lease_time_to_live(id, None).await.unwrap();
    s.hdr(ttl.header(), Rev::Read, "time to live without keys");
    assert!(ttl.keys().is_empty());
    let ttl = s.c.lease_time_to_live(absent_lease, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    s.hdr(ttl.header(), Rev::Read, "time to live of an unknown lease");
    assert_eq!((ttl.id(), ttl.ttl(), ttl.granted_ttl(), ttl.keys().len()), (absent_lease, -1, 0, 0));
    let leases = s.c.leases().await.unwrap();
    s.hdr(leases.header(), Rev::Local, "leases");
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    for want in [l1, l2, tl, id] {
        assert!(ids.contains(&want), "lease {want} missing from {ids:?}");
    }
    assert!(!ids.contains(&absent_lease));
    let r = s.c.lease_revoke(id).await.unwrap();
    s.hdr(r.header(), Rev::Write, "lease revoke");
    let r = s.c.get(s.k("l/"), Some(GetOptions::new().with_prefix())).await.unwrap();
    s.hdr(r.header(), Rev::Read, "after revoke");
    assert_eq!(r.kvs().iter().map(|kv| kv.key().to_vec()).collect::<Vec<_>>(), [s.kb("l/3")]);
    let ttl = s.c.lease_time_to_live(id, None).await.unwrap();
    s.hdr(ttl.header(), Rev::Read, "time to live after revoke");
    assert_eq!(ttl.ttl(), -1);
    keeper.keep_alive().await.unwrap();
    let ack = tokio::time::timeout(DEADLINE, acks.message()).await.expect("keep-alive ack").unwrap().unwrap();
    s.hdr(ack.header(), Rev::Local, "keep-alive of a revoked lease");
    assert_eq!((ack.id(), ack.ttl()), (id, 0));
    drop((keeper, acks));

    // ---------------------------------------------------------------- Watch
    let w1 = s.put("w/a", "1", None).await;
    let w2 = s.put("w/b", "2", None).await;
    let w3 = s.c.delete(s.k("w/a"), None).await.unwrap();
    let w3 = s.hdr(w3.header(), Rev::Write, "delete w/a");
    let w4 = s.put("w/a", "3", None).await;
    let prefix = || WatchOptions::new().with_prefix().with_start_revision(w1);
    // (watch id, key, options)
    let watches: Vec<(i64, String, WatchOptions)> = vec![
        (1, s.k("w/"), prefix().with_prev_key()),
        (2, s.k("w/"), prefix().with_filters([WatchFilterType::NoPut])),
        (3, s.k("w/"), prefix().with_filters([WatchFilterType::NoDelete])),
        (4, s.k("w/b"), WatchOptions::new().with_start_revision(w1)),
        (5, s.k("w/a"), WatchOptions::new().with_start_revision(w1).with_range(s.k("w/c"))),
        (6, s.k("w/"), prefix().with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete])),
    ];
    let (a, b) = (s.k("w/a"), s.k("w/b"));
    let put = |k: &str, v: &str, rev: i64, prev: Option<&str>| {
        (EventType::Put, k.to_string(), v.to_string(), rev, prev.map(str::to_string))
    };
    let del = |k: &str, rev: i64, prev: Option<&str>| {
        (EventType::Delete, k.to_string(), String::new(), rev, prev.map(str::to_string))
    };
    let mut want: HashMap<i64, Vec<Ev>> = HashMap::from([
        (1, vec![put(&a, "1", w1, None), put(&b, "2", w2, None), del(&a, w3, Some("1")), put(&a, "3", w4, None)]),
        (2, vec![del(&a, w3, None)]),
        (3, vec![put(&a, "1", w1, None), put(&b, "2", w2, None), put(&a, "3", w4, None)]),
        (4, vec![put(&b, "2", w2, None)]),
        (5, vec![put(&a, "1", w1, None), put(&b, "2", w2, None), del(&a, w3, None), put(&a, "3", w4, None)]),
        (6, vec![]),
    ]);
    let mut stream: Option<WatchStream> = None;
    for (wid, key, opts) in watches {
        let opts = opts.with_watch_id(wid);
        match stream.as_mut() {
            None => stream = Some(s.c.watch(key, Some(opts)).await.unwrap()),
            Some(st) => st.watch(key, Some(opts)).await.unwrap(),
        }
    }
    let mut stream = stream.unwrap();
    let mut created = Vec::new();
    let mut got: HashMap<i64, Vec<Ev>> = HashMap::new();
    let total: usize = want.values().map(Vec::len).sum();
    while created.len() < want.len() || got.values().map(Vec::len).sum::<usize>() < total {
        let r = s.watch_next(&mut stream).await;
        assert!(!r.canceled(), "watch {} canceled: {}", r.watch_id(), r.cancel_reason());
        if r.created() {
            assert!(r.events().is_empty());
            created.push(r.watch_id());
        } else {
            assert!(created.contains(&r.watch_id()), "events before created for {}", r.watch_id());
        }
        got.entry(r.watch_id()).or_default().extend(events_of(&r));
    }
    created.sort_unstable();
    assert_eq!(created, [1, 2, 3, 4, 5, 6]);
    got.retain(|_, v| !v.is_empty());
    want.retain(|_, v| !v.is_empty());
    assert_eq!(got, want, "replayed events by watch id");
    // A progress request is answered at once (nothing else is pending on the stream).
    stream.request_progress().await.unwrap();
    let r = s.watch_next(&mut stream).await;
    assert_eq!((r.watch_id(), r.created(), r.canceled(), r.events().len()), (-1, false, false, 0), "{r:?}");
    assert!(r.header().unwrap().revision() >= w4);
    // Cancel one watch; the others go on with live events.
    stream.cancel(2).await.unwrap();
    let r = s.watch_next(&mut stream).await;
    assert!(r.canceled() && r.events().is_empty(), "{r:?}");
    assert_eq!(r.watch_id(), 2);
    let w5 = s.put("w/c", "4", None).await;
    let w6 = s.c.delete(s.k("w/b"), None).await.unwrap();
    let w6 = s.hdr(w6.header(), Rev::Write, "delete w/b");
    let c = s.k("w/c");
    let want: HashMap<i64, Vec<Ev>> = HashMap::from([
        (1, vec![put(&c, "4", w5, None), del(&b, w6, Some("2"))]),
        (3, vec![put(&c, "4", w5, None)]),
        (4, vec![del(&b, w6, None)]),
        (5, vec![del(&b, w6, None)]),
    ]);
    let total: usize = want.values().map(Vec::len).sum();
    let mut got: HashMap<i64, Vec<Ev>> = HashMap::new();
    while got.values().map(Vec::len).sum::<usize>() < total {
        let r = s.watch_next(&mut stream).await;
        assert!(!r.canceled() && !r.created(), "{r:?}");
        got.entry(r.watch_id()).or_default().extend(events_of(&r));
    }
    assert_eq!(got, want, "live events by watch id");
    stream.request_progress().await.unwrap();
    let r = s.watch_next(&mut stream).await;
    assert_eq!((r.watch_id(), r.events().len()), (-1, 0), "nothing but the progress response: {r:?}");
    assert!(r.header().unwrap().revision() >= w6);
    // A create with a watch id already in use on the stream: etcd answers watch_id -1,
    // created and canceled, "mvcc: duplicate watch ID provided on the WatchStream".
    stream.watch(s.k("w/"), Some(WatchOptions::new().with_watch_id(1))).await.unwrap();
    let r = s.watch_next(&mut stream).await;
    assert_eq!((r.watch_id(), r.created(), r.canceled()), (-1, true, true), "{r:?}");
    assert_eq!(r.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
    drop(stream);

    // ---------------------------------------------------------------- Cluster
    let st = s.c.status().await.unwrap();
    s.hdr(st.header(), Rev::Local, "status");
    let me = st.header().unwrap().member_id();
    let members = eventually("every member published its client URLs", || {
        let mut c = s.c.clone();
        async move {
            let m = c.member_list().await.ok()?;
            m.members().iter().all(|m| !m.client_urls().is_empty() && !m.name().is_empty()).then_some(m)
        }
    })
    .await;
    s.hdr(members.header(), Rev::Cluster, "member list");
    let ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    assert!(ids.contains(&me) && ids.contains(&st.leader()), "{ids:?}");
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), ids.len());
    for m in members.members() {
        assert!(!m.peer_urls().is_empty() && !m.is_learner(), "{m:?}");
    }
    let peer_url = members.members()[0].peer_urls()[0].clone();
    let absent_member = (1..).map(|i| i * 7919).find(|id| !ids.contains(id)).unwrap();

    // ---------------------------------------------------------------- Maintenance
    assert!(st.version().starts_with("3."), "version {}", st.version());
    assert!(st.leader() != 0 && st.raft_index() > 0 && st.raft_term() >= 1 && st.db_size() > 0, "{st:?}");
    assert!(st.errors().is_empty() && !st.is_learner(), "{st:?}");
    let al = s.c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await.unwrap();
    s.hdr(al.header(), Rev::Local, "alarm list");
    assert!(al.alarms().is_empty());
    let d = s.c.defragment().await.unwrap();
    s.hdr_if_any(d.header(), "defragment");
    let h = s.c.hash().await.unwrap();
    s.hdr(h.header(), Rev::Local, "hash");
    let at = s.current().await;
    let h1 = s.c.hash_kv(at).await.unwrap();
    s.hdr(h1.header(), Rev::Local, "hash kv");
    let h2 = s.c.hash_kv(at).await.unwrap();
    s.hdr(h2.header(), Rev::Local, "hash kv again");
    assert_eq!(h1.hash(), h2.hash(), "HashKV at one revision is stable");
    let h0 = s.c.hash_kv(0).await.unwrap();
    s.hdr(h0.header(), Rev::Local, "hash kv at 0");
    let mut snap = s.c.snapshot().await.unwrap();
    let mut blob = Vec::new();
    let mut remaining = Vec::new();
    for _ in 0..100_000 {
        let Some(m) = tokio::time::timeout(DEADLINE, snap.message()).await.expect("snapshot stalled").unwrap() else {
            break;
        };
        s.hdr_if_any(m.header(), "snapshot");
        remaining.push(m.remaining_bytes());
        blob.extend_from_slice(m.blob());
    }
    assert!(blob.len() > 32, "snapshot of {} bytes", blob.len());
    assert_eq!(remaining.last(), Some(&0));
    assert!(remaining.windows(2).all(|w| w[0] >= w[1]), "remaining_bytes goes down: {remaining:?}");
    let (body, sum) = blob.split_at(blob.len() - 32);
    assert_eq!(sha2::Sha256::digest(body).as_slice(), sum, "the snapshot ends with the SHA-256 of the rest");

    // ---------------------------------------------------------------- Compact
    let compact_at = w4;
    let r = s.c.compact(compact_at, Some(CompactionOptions::new().with_physical())).await.unwrap();
    s.hdr(r.header(), Rev::Read, "compact");
    let r = s.c.get(s.k("w/a"), Some(GetOptions::new().with_revision(compact_at))).await.unwrap();
    s.hdr(r.header(), Rev::Read, "range at the compaction revision");
    assert_eq!(r.kvs()[0].value(), b"3");
    let hk = s.c.hash_kv(0).await.unwrap();
    s.hdr(hk.header(), Rev::Local, "hash kv after compaction");
    assert!(hk.compact_version() >= compact_at, "compact_revision {}", hk.compact_version());

    // ---------------------------------------------------------------- Bad inputs
    let now = s.current().await;
    let future = now + 1000;
    let key = leak(s.k("p/k"));
    let (key_dir, key_x, none) = (leak(s.k("p/k/")), leak(s.k("p/k/x")), leak(s.k("p/none")));
    let too_many =
        Txn::new().and_then((0..129).map(|i| TxnOp::put(format!("{key_dir}{i}"), "x", None)).collect::<Vec<_>>());
    let invalid = (Code::InvalidArgument, "etcdserver: key is not provided");
    let dup = (Code::InvalidArgument, "etcdserver: duplicate key given in txn request");
    let future_rev = (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision");
    let compacted = (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
    let no_lease = (Code::NotFound, "etcdserver: requested lease not found");
    let no_member = (Code::NotFound, "etcdserver: member not found");
    let key_not_found = (Code::InvalidArgument, "etcdserver: key not found");
    // Each row runs on its own clone of the client.
    macro_rules! call {
        (|$c:ident| $e:expr) => {{
            let mut $c = s.c.clone();
            let row: Row = Box::pin(async move { $e.await.map(|_| ()) });
            row
        }};
    }
    let errors: Vec<(&str, Row, (Code, &str))> = vec![
        ("range: empty key", call!(|c| c.get("", None)), invalid),
        ("put: empty key", call!(|c| c.put("", "x", None)), invalid),
        ("delete: empty key", call!(|c| c.delete("", None)), invalid),
        (
            "txn: compare on empty key",
            call!(|c| c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))),
            invalid,
        ),
        ("txn: put of empty key", call!(|c| c.txn(Txn::new().and_then([TxnOp::put("", "x", None)]))), invalid),
        ("txn: range of empty key", call!(|c| c.txn(Txn::new().and_then([TxnOp::get("", None)]))), invalid),
        // Both branches are checked before anything is evaluated (etcd's checkTxnRequest).
        (
            "txn: range of empty key in the branch not taken",
            call!(|c| c.txn(Txn::new().or_else([TxnOp::get("", None)]))),
            invalid,
        ),
        (
            "txn: two puts of a key",
            call!(|c| c.txn(Txn::new().and_then([TxnOp::put(key, "1", None), TxnOp::put(key, "2", None)]))),
            dup,
        ),
        (
            "txn: put inside a deleted range",
            call!(|c| c.txn(Txn::new().or_else([
                TxnOp::delete(key_dir, Some(DeleteOptions::new().with_prefix())),
                TxnOp::put(key_x, "2", None),
            ]))),
            dup,
        ),
        (
            "txn: put in txn and nested txn",
            call!(|c| c.txn(
                Txn::new().and_then([
                    TxnOp::put(key, "1", None),
                    TxnOp::txn(Txn::new().or_else([TxnOp::put(key, "2", None)])),
                ])
            )),
            dup,
        ),
        (
            "txn: nested put under an outer delete",
            call!(|c| c.txn(
                Txn::new().and_then([
                    TxnOp::delete(key, None),
                    TxnOp::txn(Txn::new().and_then([TxnOp::put(key, "2", None)])),
                ])
            )),
            dup,
        ),
        (
            "txn: too many ops",
            call!(|c| c.txn(too_many)),
            (Code::InvalidArgument, "etcdserver: too many operations in txn request"),
        ),
        (
            "put: ignore_value with a value",
            call!(|c| c.put(key, "x", Some(PutOptions::new().with_ignore_value()))),
            (Code::InvalidArgument, "etcdserver: value is provided"),
        ),
        (
            "put: ignore_lease with a lease",
            call!(|c| c.put(key, "", Some(PutOptions::new().with_ignore_lease().with_lease(l1)))),
            (Code::InvalidArgument, "etcdserver: lease is provided"),
        ),
        (
            "put: ignore_value, no key",
            call!(|c| c.put(none, "", Some(PutOptions::new().with_ignore_value()))),
            key_not_found,
        ),
        (
            "put: ignore_lease, no key",
            call!(|c| c.put(none, "x", Some(PutOptions::new().with_ignore_lease()))),
            key_not_found,
        ),
        (
            "txn: ignore_value, no key",
            call!(|c| c.txn(Txn::new().and_then([TxnOp::put(none, "", Some(PutOptions::new().with_ignore_value()))]))),
            key_not_found,
        ),
        ("put: unknown lease", call!(|c| c.put(key, "x", Some(PutOptions::new().with_lease(absent_lease)))), no_lease),
        (
            "txn: put with unknown lease",
            call!(|c| c.txn(Txn::new().and_then([TxnOp::put(
                key,
                "x",
                Some(PutOptions::new().with_lease(absent_lease))
            )]))),
            no_lease,
        ),
        ("range: future revision", call!(|c| c.get(key, Some(GetOptions::new().with_revision(future)))), future_rev),
        (
            "range: compacted revision",
            call!(|c| c.get(key, Some(GetOptions::new().with_revision(compact_at - 1)))),
            compacted,
        ),
        (
            "txn: range at a future revision",
            call!(|c| c.txn(Txn::new().and_then([TxnOp::get(key, Some(GetOptions::new().with_revision(future)))]))),
            future_rev,
        ),
        (
            "txn: range at a compacted revision",
            call!(|c| c.txn(Txn::new().and_then([TxnOp::get(key, Some(GetOptions::new().with_revision(1)))]))),
            compacted,
        ),
        ("compact: same revision", call!(|c| c.compact(compact_at, None)), compacted),
        ("compact: older revision", call!(|c| c.compact(compact_at - 1, None)), compacted),
        ("compact: future revision", call!(|c| c.compact(future, None)), future_rev),
        ("hash kv: future revision", call!(|c| c.hash_kv(future)), future_rev),
        ("hash kv: compacted revision", call!(|c| c.hash_kv(compact_at - 1)), compacted),
        (
            "lease grant: too large TTL",
            call!(|c| c.lease_grant(9_000_000_001, None)),
            (Code::OutOfRange, "etcdserver: too large lease TTL"),
        ),
        (
            "lease grant: id in use",
            call!(|c| c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(l1)))),
            (Code::FailedPrecondition, "etcdserver: lease already exists"),
        ),
        ("lease revoke: unknown lease", call!(|c| c.lease_revoke(absent_lease)), no_lease),
        ("lease revoke: revoked lease", call!(|c| c.lease_revoke(id)), no_lease),
        ("member remove: unknown id", call!(|c| c.member_remove(absent_member)), no_member),
        (
            "member update: unknown id",
            call!(|c| c.member_update(absent_member, vec!["http://127.0.0.1:1".to_string()])),
            no_member,
        ),
        ("member promote: unknown id", call!(|c| c.member_promote(absent_member)), no_member),
        (
            "member add: peer URL in use",
            call!(|c| c.member_add([peer_url], None)),
            (Code::FailedPrecondition, "etcdserver: Peer URLs already exists"),
        ),
        (
            "member add: invalid URL",
            call!(|c| c.member_add(["http://no-port"], None)),
            (Code::InvalidArgument, "etcdserver: given member URLs are invalid"),
        ),
    ];
    for (name, call, (code, msg)) in errors {
        let e = call.await.expect_err(name);
        assert_eq!(status(e), (code, msg.to_string()), "{name}");
    }
    // None of them wrote anything.
    assert_eq!(s.current().await, now, "a refused request moved the revision");
    let r = s.c.get(s.k("p/"), Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    s.hdr(r.header(), Rev::Read, "after refused requests");
    assert_eq!(r.kvs().iter().map(|kv| kv.key().to_vec()).collect::<Vec<_>>(), [s.kb("p/e"), s.kb("p/j"), s.kb("p/k")]);

    // A watch from a compacted revision is created, then cancelled with the compact revision.
    let mut w = s.c.watch(s.k("w/"), Some(WatchOptions::new().with_prefix().with_start_revision(w1))).await.unwrap();
    let r = s.watch_next(&mut w).await;
    assert!(r.created() && !r.canceled(), "{r:?}");
    // etcd's header on this one carries revision 0, so it is checked apart from `hdr`.
    let r = next(&mut w).await;
    let h = r.header().expect("header");
    assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() >= 1, "{h:?}");
    assert!(r.canceled() && r.events().is_empty(), "{r:?}");
    assert_eq!(r.compact_revision(), compact_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_suite_on_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    Box::pin(rpc_suite(server.client().await, "one")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_suite_on_a_follower_of_three() {
    let c = MultiCluster::start(3, base_config()).await;
    let leader = c.wait_leader(&[]).await;
    let follower = (leader + 1) % 3;
    Box::pin(rpc_suite(c.members[follower].client().await, "follower")).await;
    assert_eq!(c.wait_leader(&[]).await, leader, "the leader changed during the suite");
}
