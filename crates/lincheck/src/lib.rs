//! A linearizability checker for histories of an etcd-like key-value store, in the style of
//! [Porcupine](https://github.com/anishathalye/porcupine) and Knossos.
//!
//! The search is the Wing & Gong algorithm as improved by Lowe ("Testing for linearizability",
//! 2017): walk the time-ordered list of call/return events, tentatively linearize any operation
//! whose call is before the first pending return, backtrack when a return is reached with its
//! operation still unlinearized, and memoize every `(set of linearized operations, model state)`
//! pair already explored so each is explored at most once. Because every operation touches
//! exactly one key and keys are independent registers, the history is split per key and each key
//! is checked on its own (P-compositionality), which keeps the exponential search small.
//!
//! # Recording a history
//!
//! * `call` is read just before the request is sent, `ret` just after the response is received,
//!   from one monotonic clock shared by all clients (nanoseconds, e.g. from a common
//!   `Instant` origin).
//! * An operation whose outcome is unknown (timeout, connection reset, ...) is recorded with
//!   `ret: None` and [`Output::Unknown`]: it may have taken effect at any point after its call,
//!   or never. Its return is treated as +infinity.
//! * An operation that failed in a way that guarantees it did **not** take effect (e.g. the
//!   request was rejected before reaching the store) must simply **not be recorded**.
//! * Every key starts absent.
//!
//! # Equal timestamps
//!
//! When a return and a call carry the same timestamp, the call is ordered first, i.e. the two
//! operations are treated as concurrent (this is also what Porcupine does). This is the
//! conservative choice: it can only make more histories linearizable, so a reported violation
//! never depends on how two equal timestamps were broken.
//!
//! # Example
//!
//! ```
//! use aether_lincheck::{check, CheckResult, Input, Operation, Output};
//!
//! let put = Operation {
//!     client: 0,
//!     key: b"k".to_vec(),
//!     input: Input::Put(b"v".to_vec()),
//!     output: Output::Ok,
//!     call: 0,
//!     ret: Some(10),
//! };
//! let stale_get = Operation {
//!     client: 1,
//!     key: b"k".to_vec(),
//!     input: Input::Get,
//!     output: Output::Value(None),
//!     call: 20,
//!     ret: Some(30),
//! };
//! let history = vec![put, stale_get];
//! let result = check(&history);
//! assert!(matches!(result, CheckResult::Illegal { .. }));
//! println!("{}", result.describe(&history));
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// What a client asked for, on the operation's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Read the key. Output: [`Output::Value`].
    Get,
    /// Set the key to a value. Output: [`Output::Ok`].
    Put(Vec<u8>),
    /// Remove the key (a no-op when absent). Output: [`Output::Ok`].
    Delete,
    /// If the current value equals `expect` (`None` meaning "key absent"), set it to `new`
    /// (`None` meaning "delete the key") and answer `true`; otherwise change nothing and
    /// answer `false`. Output: [`Output::Cas`].
    Cas {
        /// The value the key must currently have; `None` means the key must be absent.
        expect: Option<Vec<u8>>,
        /// The value to store on success; `None` deletes the key.
        new: Option<Vec<u8>>,
    },
}

/// What the client observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Answer to [`Input::Get`]: the value read, `None` if the key was absent.
    Value(Option<Vec<u8>>),
    /// Answer to [`Input::Put`] and [`Input::Delete`].
    Ok,
    /// Answer to [`Input::Cas`]: whether the swap happened.
    Cas(bool),
    /// The client does not know whether the operation took effect (timeout, lost connection).
    /// The operation is then treated as pending forever: it may take effect at any point after
    /// its call, or never. Any `ret` it carries is ignored.
    Unknown,
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Who issued it. Used only in reports; the checker does not require per-client ordering.
    pub client: usize,
    /// The key the operation touched.
    pub key: Vec<u8>,
    /// The request.
    pub input: Input,
    /// The response, or [`Output::Unknown`].
    pub output: Output,
    /// Monotonic time (ns) just before the request was sent.
    pub call: u64,
    /// Monotonic time (ns) just after the response arrived; `None` when no response was seen
    /// (then `output` must be [`Output::Unknown`]).
    pub ret: Option<u64>,
}

impl Operation {
    /// Whether the operation's outcome is unknown (no return, or [`Output::Unknown`]).
    pub fn is_pending(&self) -> bool {
        self.ret.is_none() || self.output == Output::Unknown
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} ", self.client, Bytes(&self.key))?;
        match &self.input {
            Input::Get => write!(f, "get")?,
            Input::Put(v) => write!(f, "put {}", Bytes(v))?,
            Input::Delete => write!(f, "delete")?,
            Input::Cas { expect, new } => write!(f, "cas {} -> {}", OptBytes(expect), OptBytes(new))?,
        }
        match &self.output {
            Output::Value(v) => write!(f, " => {}", OptBytes(v))?,
            Output::Ok => write!(f, " => ok")?,
            Output::Cas(b) => write!(f, " => {b}")?,
            Output::Unknown => write!(f, " => unknown")?,
        }
        match self.ret {
            Some(ret) => write!(f, " [{}, {}]", self.call, ret),
            None => write!(f, " [{}, +inf)", self.call),
        }
    }
}

struct Bytes<'a>(&'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

struct OptBytes<'a>(&'a Option<Vec<u8>>);

impl fmt::Display for OptBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => Bytes(v).fmt(f),
            None => f.write_str("<absent>"),
        }
    }
}

/// The verdict of [`check`] / [`check_with_limit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The history is linearizable.
    Ok,
    /// The operations on `key` admit no linearization. (Only the first such key, in byte order,
    /// is reported.)
    Illegal {
        /// The key whose sub-history is not linearizable.
        key: Vec<u8>,
        /// The linearizable prefix found by the search that contains the most operations with a
        /// known outcome, as indices into the history, in linearization order.
        longest_prefix: Vec<usize>,
        /// The key's value after applying `longest_prefix` (`None`: absent).
        state_after_prefix: Option<Vec<u8>>,
        /// Indices of the operations with a known outcome that could have been linearized right
        /// after `longest_prefix` (already called, and not forced after another unlinearized
        /// operation); none of them is consistent with `state_after_prefix`. (Operations with an
        /// unknown outcome are never listed: they can always be placed last, i.e. never happen.)
        stuck: Vec<usize>,
    },
    /// The search on `key` exceeded its step budget without reaching a verdict (and no other
    /// key was found illegal).
    Unknown {
        /// The first key whose search was cut short.
        key: Vec<u8>,
        /// Steps spent on that key.
        steps: u64,
    },
    /// The history itself is not well formed (the operation at `index` is inconsistent).
    Malformed {
        /// Index into the history.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl CheckResult {
    /// `true` for [`CheckResult::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    /// A multi-line human-readable explanation; `history` must be the checked history.
    pub fn describe(&self, history: &[Operation]) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let op = |i: usize| history.get(i).map_or_else(|| "<index out of range>".to_owned(), |o| o.to_string());
        match self {
            CheckResult::Ok => out.push_str("history is linearizable"),
            CheckResult::Illegal { key, longest_prefix, state_after_prefix, stuck } => {
                let _ = writeln!(out, "history is NOT linearizable on key {}", Bytes(key));
                let _ = writeln!(out, "longest linearizable prefix ({} operations):", longest_prefix.len());
                for &i in longest_prefix {
                    let _ = writeln!(out, "  #{i} {}", op(i));
                }
                let _ = writeln!(out, "value after that prefix: {}", OptBytes(state_after_prefix));
                let _ = write!(out, "none of these can be linearized next:");
                for &i in stuck {
                    let _ = write!(out, "\n  #{i} {}", op(i));
                }
            }
            CheckResult::Unknown { key, steps } => {
                let _ = write!(out, "gave up on key {} after {steps} search steps", Bytes(key));
            }
            CheckResult::Malformed { index, reason } => {
                let _ = write!(out, "malformed history: operation #{index} ({}): {reason}", op(*index));
            }
        }
        out
    }
}

/// Checks `history` with no bound on the search (which is exponential in the worst case; prefer
/// [`check_with_limit`] for untrusted or very concurrent histories).
pub fn check(history: &[Operation]) -> CheckResult {
    check_with_limit(history, u64::MAX)
}

/// Checks `history`, giving up on a key after `max_steps_per_key` search steps (one step is one
/// attempt to linearize an operation or one backtrack). Keys are checked in byte order; an
/// illegal key is reported even when an earlier key ran out of budget.
pub fn check_with_limit(history: &[Operation], max_steps_per_key: u64) -> CheckResult {
    if let Some(malformed) = validate(history) {
        return malformed;
    }
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(i);
    }
    let mut unknown = None;
    for (key, indices) in by_key {
        let mut values = Interner::default();
        let ops: Vec<KeyOp> = indices.iter().filter_map(|&i| KeyOp::new(i, &history[i], &mut values)).collect();
        match search(&ops, max_steps_per_key) {
            Outcome::Ok => {}
            Outcome::Unknown { steps } => {
                unknown.get_or_insert(CheckResult::Unknown { key: key.to_vec(), steps });
            }
            Outcome::Illegal { prefix, state, stuck } => {
                return CheckResult::Illegal {
                    key: key.to_vec(),
                    longest_prefix: prefix.into_iter().map(|o| ops[o].index).collect(),
                    state_after_prefix: values.value(state),
                    stuck: stuck.into_iter().map(|o| ops[o].index).collect(),
                };
            }
        }
    }
    unknown.unwrap_or(CheckResult::Ok)
}

fn validate(history: &[Operation]) -> Option<CheckResult> {
    for (index, op) in history.iter().enumerate() {
        let reason = match (&op.input, &op.output) {
            (_, Output::Unknown) => None,
            _ if op.ret.is_none() => Some("no return time but a known output (use Output::Unknown)"),
            (Input::Get, Output::Value(_))
            | (Input::Put(_) | Input::Delete, Output::Ok)
            | (Input::Cas { .. }, Output::Cas(_)) => None,
            _ => Some("output does not match the input kind"),
        }
        .or_else(|| match op.ret {
            Some(ret) if op.output != Output::Unknown && ret < op.call => Some("returns before its call"),
            _ => None,
        });
        if let Some(reason) = reason {
            return Some(CheckResult::Malformed { index, reason: reason.to_owned() });
        }
    }
    None
}

/// Model state: 0 is "absent", `i > 0` is the `i`-th interned value of the key.
type State = u32;
const ABSENT: State = 0;

#[derive(Default)]
struct Interner {
    ids: HashMap<Vec<u8>, State>,
    values: Vec<Vec<u8>>,
}

impl Interner {
    fn id(&mut self, value: &Option<Vec<u8>>) -> State {
        let Some(value) = value else { return ABSENT };
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        self.values.push(value.clone());
        let id = State::try_from(self.values.len()).expect("fewer than 2^32 distinct values per key");
        self.ids.insert(value.clone(), id);
        id
    }

    fn value(&self, state: State) -> Option<Vec<u8>> {
        (state != ABSENT).then(|| self.values[state as usize - 1].clone())
    }
}

/// An operation of one key, compiled against that key's interned values.
#[derive(Clone, Copy)]
enum Step {
    /// A read that observed this state.
    Get(State),
    /// A blind write (put or delete), known or unknown outcome.
    Set(State),
    /// Compare-and-swap; `outcome` is `None` when unknown.
    Cas { expect: State, new: State, outcome: Option<bool> },
}

impl Step {
    /// The state after applying this step to `state`, or `None` if the observed output is
    /// inconsistent with `state`.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Get(seen) => (seen == state).then_some(state),
            Step::Set(new) => Some(new),
            Step::Cas { expect, new, outcome: Some(true) } => (state == expect).then_some(new),
            Step::Cas { expect, outcome: Some(false), .. } => (state != expect).then_some(state),
            Step::Cas { expect, new, outcome: None } => Some(if state == expect { new } else { state }),
        }
    }
}

struct KeyOp {
    /// Index in the full history.
    index: usize,
    step: Step,
    call: u64,
    /// `None`: pending (returns at +infinity).
    ret: Option<u64>,
}

impl KeyOp {
    /// `None` for operations that cannot matter (reads with an unknown outcome).
    fn new(index: usize, op: &Operation, values: &mut Interner) -> Option<KeyOp> {
        let known = !op.is_pending();
        let step = match (&op.input, &op.output) {
            (Input::Get, Output::Value(v)) if known => Step::Get(values.id(v)),
            (Input::Get, _) => return None,
            (Input::Put(v), _) => Step::Set(values.id(&Some(v.clone()))),
            (Input::Delete, _) => Step::Set(ABSENT),
            (Input::Cas { expect, new }, output) => Step::Cas {
                expect: values.id(expect),
                new: values.id(new),
                outcome: match output {
                    Output::Cas(b) if known => Some(*b),
                    _ => None,
                },
            },
        };
        Some(KeyOp { index, step, call: op.call, ret: if known { op.ret } else { None } })
    }
}

enum Outcome {
    Ok,
    Illegal { prefix: Vec<usize>, state: State, stuck: Vec<usize> },
    Unknown { steps: u64 },
}

const HEAD: usize = 0;
const TAIL: usize = 1;
const NO_ENTRY: usize = usize::MAX;

/// The doubly linked list of call/return events, with removal and LIFO re-insertion
/// ("dancing links").
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each entry (unused for HEAD/TAIL).
    op: Vec<usize>,
    is_call: Vec<bool>,
    call_entry: Vec<usize>,
    /// `NO_ENTRY` for pending operations.
    ret_entry: Vec<usize>,
}

impl Events {
    fn new(ops: &[KeyOp]) -> Events {
        // (time, 0 = call / 1 = return, op): calls sort before returns at equal times, so
        // operations that merely touch are treated as concurrent (the conservative choice).
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, i));
            if let Some(ret) = op.ret {
                events.push((ret, 1, i));
            }
        }
        events.sort_unstable();
        let n = events.len() + 2;
        let mut list = Events {
            next: vec![TAIL; n],
            prev: vec![HEAD; n],
            op: vec![NO_ENTRY; n],
            is_call: vec![false; n],
            call_entry: vec![NO_ENTRY; ops.len()],
            ret_entry: vec![NO_ENTRY; ops.len()],
        };
        let mut last = HEAD;
        for (k, &(_, kind, op)) in events.iter().enumerate() {
            let e = k + 2;
            list.op[e] = op;
            list.is_call[e] = kind == 0;
            if kind == 0 {
                list.call_entry[op] = e;
            } else {
                list.ret_entry[op] = e;
            }
            list.next[last] = e;
            list.prev[e] = last;
            last = e;
        }
        list.next[last] = TAIL;
        list.prev[TAIL] = last;
        list
    }

    fn remove(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn restore(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, op: usize) {
        self.remove(self.call_entry[op]);
        if self.ret_entry[op] != NO_ENTRY {
            self.remove(self.ret_entry[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret_entry[op] != NO_ENTRY {
            self.restore(self.ret_entry[op]);
        }
        self.restore(self.call_entry[op]);
    }

    /// The operations with a known return whose calls precede the first remaining return.
    fn candidates(&self, ops: &[KeyOp]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut e = self.next[HEAD];
        while e != TAIL && self.is_call[e] {
            if ops[self.op[e]].ret.is_some() {
                out.push(self.op[e]);
            }
            e = self.next[e];
        }
        out
    }
}

/// The WGL/Lowe search over one key's operations, starting from an absent key.
fn search(ops: &[KeyOp], max_steps: u64) -> Outcome {
    let mut list = Events::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Linearized operations, in order, with the state before each.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = ABSENT;
    // Operations with a known return that are not yet linearized; pending operations never need
    // to be linearized (they can always be placed after everything else, or never happen).
    let known = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut remaining = known;
    // The prefix with the most known operations linearized, the state after it, and its stuck
    // candidates: (known operations linearized, prefix, state, stuck).
    let mut best = (0, Vec::new(), ABSENT, list.candidates(ops));
    let mut entry = list.next[HEAD];
    let mut steps = 0u64;
    loop {
        if remaining == 0 {
            return Outcome::Ok;
        }
        if steps >= max_steps {
            return Outcome::Unknown { steps };
        }
        steps += 1;
        // While a known operation is unlinearized its return is still in the list, so the scan
        // meets a return before the tail; TAIL is handled as a return defensively.
        if entry != TAIL && list.is_call[entry] {
            let op = list.op[entry];
            if let Some(new_state) = ops[op].step.apply(state) {
                let (word, bit) = (op / 64, 1u64 << (op % 64));
                linearized[word] |= bit;
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((op, state));
                    state = new_state;
                    list.lift(op);
                    if ops[op].ret.is_some() {
                        remaining -= 1;
                    }
                    if known - remaining > best.0 {
                        best =
                            (known - remaining, stack.iter().map(|&(o, _)| o).collect(), state, list.candidates(ops));
                    }
                    entry = list.next[HEAD];
                    continue;
                }
                linearized[word] &= !bit;
            }
            entry = list.next[entry];
        } else {
            let Some((op, before)) = stack.pop() else {
                let (_, prefix, state, stuck) = best;
                return Outcome::Illegal { prefix, state, stuck };
            };
            state = before;
            linearized[op / 64] &= !(1u64 << (op % 64));
            list.unlift(op);
            if ops[op].ret.is_some() {
                remaining += 1;
            }
            entry = list.next[list.call_entry[op]];
        }
    }
}

#[cfg(test)]
mod tests;
