use super::*;
use std::time::{Duration, Instant};

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn ob(s: Option<&str>) -> Option<Vec<u8>> {
    s.map(b)
}

fn op(client: usize, input: Input, output: Output, call: u64, ret: u64) -> Operation {
    Operation { client, key: b("k"), input, output, call, ret: Some(ret) }
}

fn get(client: usize, seen: Option<&str>, call: u64, ret: u64) -> Operation {
    op(client, Input::Get, Output::Value(ob(seen)), call, ret)
}

fn put(client: usize, v: &str, call: u64, ret: u64) -> Operation {
    op(client, Input::Put(b(v)), Output::Ok, call, ret)
}

fn del(client: usize, call: u64, ret: u64) -> Operation {
    op(client, Input::Delete, Output::Ok, call, ret)
}

fn cas(client: usize, expect: Option<&str>, new: Option<&str>, won: bool, call: u64, ret: u64) -> Operation {
    op(client, Input::Cas { expect: ob(expect), new: ob(new) }, Output::Cas(won), call, ret)
}

/// An operation whose client timed out: no return, unknown output.
fn timed_out(mut o: Operation) -> Operation {
    o.ret = None;
    o.output = Output::Unknown;
    o
}

fn on(key: &str, mut o: Operation) -> Operation {
    o.key = b(key);
    o
}

#[track_caller]
fn assert_ok(h: &[Operation]) {
    let r = check(h);
    assert!(r.is_ok(), "expected linearizable, got:\n{}", r.describe(h));
}

#[track_caller]
fn assert_illegal(h: &[Operation]) -> CheckResult {
    let r = check(h);
    assert!(matches!(r, CheckResult::Illegal { .. }), "expected a violation, got {r:?}");
    r
}

// ---- linearizable histories ----

#[test]
fn empty_history_is_linearizable() {
    assert_ok(&[]);
}

#[test]
fn sequential_history() {
    assert_ok(&[
        get(0, None, 0, 1),
        put(0, "a", 2, 3),
        get(1, Some("a"), 4, 5),
        put(1, "b", 6, 7),
        get(0, Some("b"), 8, 9),
        del(0, 10, 11),
        get(1, None, 12, 13),
        cas(0, None, Some("c"), true, 14, 15),
        cas(1, Some("x"), Some("d"), false, 16, 17),
        cas(1, Some("c"), None, true, 18, 19),
        get(0, None, 20, 21),
    ]);
}

#[test]
fn overlapping_puts_either_order() {
    // put a and put b overlap: the later read may see either, but then must be stable.
    for last in ["a", "b"] {
        assert_ok(&[put(0, "a", 0, 10), put(1, "b", 5, 15), get(2, Some(last), 20, 30), get(0, Some(last), 31, 40)]);
    }
}

#[test]
fn read_concurrent_with_put_sees_old_or_new() {
    for seen in [None, Some("a")] {
        assert_ok(&[put(0, "a", 0, 100), get(1, seen, 10, 20)]);
    }
    // Two concurrent reads that disagree are fine as long as they overlap the write.
    assert_ok(&[put(0, "a", 0, 100), get(1, Some("a"), 10, 20), get(2, None, 15, 30)]);
    // ... even when the read of the new value completes first, provided they overlap.
    assert_ok(&[put(0, "a", 0, 100), get(1, Some("a"), 10, 20), get(2, None, 5, 30)]);
}

#[test]
fn cas_race_exactly_one_wins() {
    for (w0, w1, winner) in [(true, false, "x"), (false, true, "y")] {
        assert_ok(&[
            cas(0, None, Some("x"), w0, 0, 10),
            cas(1, None, Some("y"), w1, 2, 12),
            get(2, Some(winner), 20, 30),
        ]);
    }
}

#[test]
fn unknown_put_that_later_appears() {
    assert_ok(&[timed_out(put(0, "a", 0, 10)), get(1, None, 20, 30), get(1, Some("a"), 1_000, 1_010)]);
}

#[test]
fn unknown_put_that_never_appears() {
    assert_ok(&[timed_out(put(0, "a", 0, 10)), get(1, None, 20, 30), put(1, "b", 40, 50), get(1, Some("b"), 60, 70)]);
}

#[test]
fn unknown_cas_and_delete() {
    assert_ok(&[
        put(0, "a", 0, 1),
        timed_out(cas(0, Some("a"), Some("b"), true, 2, 3)),
        get(1, Some("a"), 10, 11),
        timed_out(del(1, 12, 13)),
        get(2, Some("b"), 20, 21),
        get(2, None, 22, 23),
    ]);
}

#[test]
fn unknown_output_with_a_return_time_is_still_pending() {
    // The client gave up at 10 but the put may land later.
    let mut late = put(0, "a", 0, 10);
    late.output = Output::Unknown;
    assert_ok(&[late, get(1, None, 20, 30), get(1, Some("a"), 40, 50)]);
}

#[test]
fn equal_timestamps_count_as_concurrent() {
    // put returns at 10, get calls at 10: treated as concurrent, so the old value is allowed.
    assert_ok(&[put(0, "a", 0, 10), get(1, None, 10, 20)]);
    // One tick later they are ordered.
    assert_illegal(&[put(0, "a", 0, 10), get(1, None, 11, 20)]);
}

#[test]
fn keys_are_independent() {
    assert_ok(&[
        on("x", put(0, "1", 0, 10)),
        on("y", put(1, "1", 0, 10)),
        on("x", get(2, Some("1"), 20, 30)),
        on("y", get(2, Some("1"), 40, 50)),
        on("z", get(3, None, 60, 70)),
    ]);
    // The same value under another key does not make a read legal.
    let r = assert_illegal(&[on("x", put(0, "1", 0, 10)), on("y", get(1, Some("1"), 20, 30))]);
    assert!(matches!(r, CheckResult::Illegal { key, .. } if key == b("y")));
}

// ---- non-linearizable histories ----

#[test]
fn stale_read_after_completed_put() {
    let h = [put(0, "a", 0, 10), put(0, "b", 20, 30), get(1, Some("a"), 40, 50)];
    let r = assert_illegal(&h);
    let CheckResult::Illegal { key, longest_prefix, state_after_prefix, stuck } = &r else { unreachable!() };
    assert_eq!(key, &b("k"));
    assert_eq!(longest_prefix, &[0, 1]);
    assert_eq!(state_after_prefix, &Some(b("b")));
    assert_eq!(stuck, &[2]);
    let text = r.describe(&h);
    assert!(text.contains("NOT linearizable") && text.contains("#2 client 1"), "{text}");
}

#[test]
fn two_cas_winners_on_same_expected_value() {
    assert_illegal(&[
        put(0, "a", 0, 1),
        cas(1, Some("a"), Some("x"), true, 10, 20),
        cas(2, Some("a"), Some("y"), true, 12, 22),
    ]);
    assert_illegal(&[cas(1, None, Some("x"), true, 10, 20), cas(2, None, Some("y"), true, 12, 22)]);
}

#[test]
fn cas_loser_when_it_should_have_won() {
    assert_illegal(&[put(0, "a", 0, 1), cas(1, Some("a"), Some("x"), false, 10, 20)]);
}

#[test]
fn read_of_a_value_never_written() {
    let h = [put(0, "a", 0, 10), get(1, Some("zzz"), 5, 15)];
    let r = assert_illegal(&h);
    assert!(matches!(&r, CheckResult::Illegal { stuck, .. } if stuck.contains(&1)), "{r:?}");
}

#[test]
fn lost_acknowledged_put() {
    assert_illegal(&[put(0, "a", 0, 10), get(1, None, 20, 30)]);
    assert_illegal(&[put(0, "a", 0, 10), get(1, Some("a"), 20, 30), get(1, None, 40, 50)]);
}

#[test]
fn read_goes_backwards_between_sequential_reads() {
    assert_illegal(&[put(0, "a", 0, 10), put(1, "b", 5, 15), get(2, Some("b"), 20, 30), get(2, Some("a"), 40, 50)]);
    // Even while the second put is still in flight.
    assert_illegal(&[put(0, "a", 0, 10), put(1, "b", 12, 100), get(2, Some("b"), 20, 30), get(3, Some("a"), 40, 50)]);
}

#[test]
fn unknown_put_that_appears_then_disappears() {
    assert_illegal(&[timed_out(put(0, "a", 0, 10)), get(1, Some("a"), 20, 30), get(1, None, 40, 50)]);
}

#[test]
fn read_before_the_put_was_called() {
    assert_illegal(&[get(1, Some("a"), 0, 10), timed_out(put(0, "a", 20, 30))]);
}

#[test]
fn malformed_histories_are_reported() {
    let mut backwards = put(0, "a", 10, 5);
    assert!(matches!(check(&[backwards.clone()]), CheckResult::Malformed { index: 0, .. }));
    backwards.output = Output::Unknown; // pending: the return time is ignored
    assert_ok(&[backwards]);
    let mismatched = op(0, Input::Get, Output::Ok, 0, 1);
    assert!(matches!(check(&[put(0, "a", 0, 1), mismatched]), CheckResult::Malformed { index: 1, .. }));
    let mut no_ret = put(0, "a", 0, 1);
    no_ret.ret = None;
    assert!(matches!(check(&[no_ret]), CheckResult::Malformed { index: 0, .. }));
}

// ---- generated histories ----

/// splitmix64: tiny, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A linearizable history: each client issues operations back to back with random gaps and
/// durations; each operation takes effect at a random point inside its interval, and outputs
/// come from executing the operations in that order against a real map. A few operations time
/// out (unknown outcome); half of those never take effect.
fn generate(seed: u64, n_ops: usize, n_keys: u64, n_clients: usize) -> Vec<Operation> {
    let mut rng = Rng(seed);
    let mut clock = vec![0u64; n_clients];
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n_keys as usize];
    // (operation, linearization point, takes effect)
    let mut planned = Vec::with_capacity(n_ops);
    for i in 0..n_ops {
        let client = rng.below(n_clients as u64) as usize;
        let call = clock[client] + rng.below(20);
        let ret = call + 1 + rng.below(100);
        clock[client] = ret;
        let point = call + rng.below(ret - call + 1);
        let k = rng.below(n_keys) as usize;
        let input = match rng.below(100) {
            0..40 => Input::Get,
            40..65 => Input::Put(format!("v{i}").into_bytes()),
            65..75 => Input::Delete,
            _ => {
                let recent = &written[k][written[k].len().saturating_sub(3)..];
                let expect = (!recent.is_empty() && rng.chance(70))
                    .then(|| recent[rng.below(recent.len() as u64) as usize].clone());
                let new = (!rng.chance(20)).then(|| format!("c{i}").into_bytes());
                Input::Cas { expect, new }
            }
        };
        if let Input::Put(v) | Input::Cas { new: Some(v), .. } = &input {
            written[k].push(v.clone());
        }
        let pending = rng.chance(2);
        let takes_effect = !pending || rng.chance(50);
        let o = Operation {
            client,
            key: format!("key{k}").into_bytes(),
            input,
            output: Output::Unknown,
            call,
            ret: (!pending).then_some(ret),
        };
        planned.push((o, point, takes_effect));
    }
    let mut order: Vec<usize> = (0..n_ops).collect();
    order.sort_by_key(|&i| (planned[i].1, i));
    let mut store: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for i in order {
        let (o, _, takes_effect) = &mut planned[i];
        if !*takes_effect {
            continue;
        }
        let output = match &o.input {
            Input::Get => Output::Value(store.get(&o.key).cloned()),
            Input::Put(v) => {
                store.insert(o.key.clone(), v.clone());
                Output::Ok
            }
            Input::Delete => {
                store.remove(&o.key);
                Output::Ok
            }
            Input::Cas { expect, new } => {
                let won = store.get(&o.key) == expect.as_ref();
                if won {
                    match new {
                        Some(v) => store.insert(o.key.clone(), v.clone()),
                        None => store.remove(&o.key),
                    };
                }
                Output::Cas(won)
            }
        };
        if o.ret.is_some() {
            o.output = output;
        }
    }
    planned.into_iter().map(|(o, _, _)| o).collect()
}

#[test]
fn generated_history_of_2000_ops_checks_fast() {
    for seed in 1..=3 {
        let h = generate(seed, 2_000, 5, 8);
        let pending = h.iter().filter(|o| o.is_pending()).count();
        let cas_wins = h.iter().filter(|o| o.output == Output::Cas(true)).count();
        let cas_losses = h.iter().filter(|o| o.output == Output::Cas(false)).count();
        assert!(pending > 10 && cas_wins > 20 && cas_losses > 20, "{pending} {cas_wins} {cas_losses}");
        let start = Instant::now();
        let r = check(&h);
        let took = start.elapsed();
        assert!(r.is_ok(), "seed {seed}:\n{}", r.describe(&h));
        assert!(took < Duration::from_millis(500), "seed {seed}: check took {took:?}");
    }
}

#[test]
fn corrupted_generated_history_is_illegal() {
    let mut h = generate(7, 2_000, 5, 8);
    // A read, in the middle, of a value never written.
    let i = (1_000..h.len()).find(|&i| h[i].input == Input::Get && !h[i].is_pending()).expect("a get");
    h[i].output = Output::Value(Some(b("never-written")));
    let start = Instant::now();
    let r = check_with_limit(&h, 5_000_000);
    let took = start.elapsed();
    let CheckResult::Illegal { key, stuck, .. } = &r else { panic!("expected a violation, got {r:?}") };
    assert_eq!(key, &h[i].key);
    assert!(stuck.contains(&i), "{}", r.describe(&h));
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn step_budget_gives_unknown() {
    let h = generate(3, 500, 2, 8);
    assert!(matches!(check_with_limit(&h, 10), CheckResult::Unknown { steps: 10, .. }));
    assert!(check_with_limit(&h, u64::MAX).is_ok());
}
