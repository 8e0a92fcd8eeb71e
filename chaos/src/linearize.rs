//! Linearizability of the KV history, per key (P-compositionality: a history of
//! independent registers is linearizable iff each key's sub-history is), by the
//! Wing & Gong search with Lowe's memoisation, as porcupine implements it.
//!
//! Written here rather than taken from a crate: the Rust ports of porcupine we know of
//! are unmaintained experiments, and the search is ~150 lines; owning it lets the
//! model follow etcd's exact semantics (a txn compare-and-swap whose failure branch
//! reads, a delete that reports how many keys it removed, a lease revoke that deletes
//! its key).
//!
//! Unknown outcomes (failed or timed-out writes) get a return time of infinity, so the
//! search may place them anywhere after their invocation, including after everything
//! (which is the same as never taking effect). To keep the search small, every unknown
//! write whose unique value never appears in the reference history (every revision
//! the cluster committed, read at the end) is dropped first: it certainly did not
//! take effect. Failed reads are dropped (a read has no effect).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::history::{Event, History, Input, Output};

/// One key's operation as the register model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Put(u32),
    Get(Option<u32>),
    /// `result`: `None` if unknown, else (succeeded, value the failure branch read).
    Cas {
        expect: Option<u32>,
        new: u32,
        result: Option<(bool, Option<u32>)>,
    },
    /// `deleted`: `None` if unknown (or a lease revoke, which does not say).
    Delete(Option<i64>),
}

/// The model: a register holding an (interned) value or nothing.
type State = Option<u32>;

fn step(state: State, s: &Step) -> Option<State> {
    match s {
        Step::Put(v) => Some(Some(*v)),
        Step::Get(v) => (*v == state).then_some(state),
        Step::Cas {
            expect,
            new,
            result,
        } => {
            let holds = state == *expect;
            match result {
                None => Some(if holds { Some(*new) } else { state }),
                Some((true, _)) => holds.then_some(Some(*new)),
                Some((false, cur)) => (!holds && *cur == state).then_some(state),
            }
        }
        Step::Delete(deleted) => match deleted {
            Some(n) if *n != i64::from(state.is_some()) => None,
            _ => Some(None),
        },
    }
}

/// A model operation with its real-time interval (`ret == u64::MAX`: unknown).
#[derive(Debug, Clone)]
struct RegOp {
    call: u64,
    ret: u64,
    step: Step,
    /// Index into `History::ops`.
    index: usize,
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KeyVerdict {
    Linearizable,
    /// No linearization exists; `stuck_at` is the history index of the operation whose
    /// completion the deepest attempt could not explain.
    Violation {
        stuck_at: usize,
    },
    /// The search exceeded its budget (treated as a failure: it proves nothing).
    Inconclusive,
}

/// The verdict for a whole history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinReport {
    pub keys: usize,
    pub ops_checked: usize,
    pub linearizable_keys: usize,
    /// Keys that are not linearizable or undecided, with their verdicts.
    pub failures: Vec<(String, KeyVerdict)>,
}

impl LinReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Search budget per key (steps); far above what a few thousand operations need.
pub const DEFAULT_BUDGET: u64 = 50_000_000;

/// Checks every key of `h` (its `reference` is used to drop unknown writes that never
/// took effect).
pub fn check(h: &History, budget: u64) -> LinReport {
    let written: HashSet<&str> = h
        .reference
        .iter()
        .filter_map(|e: &Event| e.value.as_deref())
        .collect();
    let mut interner: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &str| -> u32 {
        let n = interner.len() as u32;
        *interner.entry(v.to_string()).or_insert(n)
    };
    let mut per_key: HashMap<String, Vec<RegOp>> = HashMap::new();
    for (index, op) in h.ops.iter().enumerate() {
        let Some(key) = op.input.key() else { continue };
        let unknown = op.unknown();
        let s = match (&op.input, &op.output) {
            (Input::Get { .. }, Output::Get { value, .. }) => {
                Step::Get(value.as_deref().map(&mut intern))
            }
            (Input::Get { .. }, _) => continue,
            (Input::Put { value, .. }, _) => {
                if unknown && !written.contains(value.as_str()) {
                    continue;
                }
                Step::Put(intern(value))
            }
            (Input::Cas { expect, new, .. }, out) => {
                let result = match out {
                    Output::Cas { succeeded, current } => {
                        Some((*succeeded, current.as_deref().map(&mut intern)))
                    }
                    // Its put never committed, so at most its failure branch ran: a read.
                    _ if !written.contains(new.as_str()) => continue,
                    _ => None,
                };
                Step::Cas {
                    expect: expect.as_deref().map(&mut intern),
                    new: intern(new),
                    result,
                }
            }
            (Input::Delete { .. }, Output::Delete { deleted }) => Step::Delete(Some(*deleted)),
            (Input::Delete { .. } | Input::LeaseRevoke { .. }, _) => Step::Delete(None),
            (Input::LeaseGrant { .. }, _) => continue,
        };
        per_key.entry(key.to_string()).or_default().push(RegOp {
            call: op.invoke,
            ret: if unknown { u64::MAX } else { op.complete },
            step: s,
            index,
        });
    }
    let mut report = LinReport {
        keys: per_key.len(),
        ..Default::default()
    };
    let mut keys: Vec<_> = per_key.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, ops) in keys {
        report.ops_checked += ops.len();
        match check_key(&ops, budget) {
            KeyVerdict::Linearizable => report.linearizable_keys += 1,
            v => report.failures.push((key, v)),
        }
    }
    report
}

/// Wing & Gong / Lowe search over one key's operations.
fn check_key(ops: &[RegOp], budget: u64) -> KeyVerdict {
    let n = ops.len();
    if n == 0 {
        return KeyVerdict::Linearizable;
    }
    // Entries: calls and returns sorted by time; at equal times calls first, so two
    // operations touching at an instant count as concurrent (the permissive choice).
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        entries.push((o.call, false, i));
        entries.push((o.ret, true, i));
    }
    entries.sort_by_key(|e| (e.0, e.1, e.2));
    // Doubly linked list over node ids: 0 = head, 1..=2n = entries, 2n+1 = tail.
    let head = 0;
    let tail = 2 * n + 1;
    let mut next: Vec<usize> = (1..=tail + 1).collect();
    let mut prev: Vec<usize> = (0..=tail).map(|i| i.saturating_sub(1)).collect();
    let mut is_call = vec![false; tail + 1];
    let mut op_of = vec![0usize; tail + 1];
    let mut ret_node = vec![0usize; n];
    for (pos, (_, is_ret, i)) in entries.iter().enumerate() {
        let node = pos + 1;
        is_call[node] = !is_ret;
        op_of[node] = *i;
        if *is_ret {
            ret_node[*i] = node;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        for x in [node, ret_node[op_of[node]]] {
            let (p, q) = (prev[x], next[x]);
            next[p] = q;
            prev[q] = p;
        }
    };
    // Reinserts in the reverse order of removal, so each node's saved links are valid.
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        for x in [ret_node[op_of[node]], node] {
            let (p, q) = (prev[x], next[x]);
            next[p] = x;
            prev[q] = x;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut deepest = 0usize;
    let mut stuck_at = ops[0].index;
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != tail {
        steps += 1;
        if steps > budget {
            return KeyVerdict::Inconclusive;
        }
        if entry == tail {
            // Only unknown operations' returns remain unreached: impossible, since
            // every return is an entry; kept for safety.
            break;
        }
        let i = op_of[entry];
        if is_call[entry] {
            if let Some(ns) = step(state, &ops[i].step) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), ns)) {
                    calls.push((entry, state));
                    state = ns;
                    linearized = lin;
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A completed operation not yet linearized: undo the latest choice.
            if calls.len() >= deepest {
                deepest = calls.len();
                stuck_at = ops[i].index;
            }
            let Some((e, s)) = calls.pop() else {
                return KeyVerdict::Violation { stuck_at };
            };
            state = s;
            let j = op_of[e];
            linearized[j / 64] &= !(1 << (j % 64));
            unlift(&mut next, &mut prev, e);
            entry = next[e];
        }
    }
    KeyVerdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn op(client: usize, input: Input, output: Output, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            member: 0,
            input,
            output,
            invoke,
            complete,
            rev: 0,
        }
    }
    fn put(v: &str) -> Input {
        Input::Put {
            key: "k".into(),
            value: v.into(),
            lease: 0,
        }
    }
    fn get() -> Input {
        Input::Get { key: "k".into() }
    }
    fn got(v: Option<&str>) -> Output {
        Output::Get {
            value: v.map(String::from),
            mod_rev: 0,
        }
    }
    fn unknown() -> Output {
        Output::Unknown {
            error: "timeout".into(),
        }
    }
    fn history(ops: Vec<Op>, committed: &[&str]) -> History {
        History {
            ops,
            reference: committed
                .iter()
                .enumerate()
                .map(|(i, v)| Event {
                    rev: i as i64 + 2,
                    key: "k".into(),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = history(
            vec![
                op(0, put("a"), Output::Put, 0, 10),
                op(1, get(), got(Some("a")), 11, 20),
                // Concurrent with the put of "b": may see either.
                op(0, put("b"), Output::Put, 21, 40),
                op(1, get(), got(Some("a")), 22, 30),
                op(2, get(), got(Some("b")), 25, 35),
                op(1, get(), got(Some("b")), 41, 50),
            ],
            &["a", "b"],
        );
        let r = check(&h, DEFAULT_BUDGET);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.ops_checked, 6);
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        // "b" was acknowledged before the read began, yet the read returns "a".
        let h = history(
            vec![
                op(0, put("a"), Output::Put, 0, 10),
                op(0, put("b"), Output::Put, 11, 20),
                op(1, get(), got(Some("a")), 21, 30),
            ],
            &["a", "b"],
        );
        let r = check(&h, DEFAULT_BUDGET);
        assert_eq!(r.failures.len(), 1, "{r:?}");
        assert!(matches!(
            r.failures[0].1,
            KeyVerdict::Violation { stuck_at: 2 }
        ));
    }

    #[test]
    fn a_lost_write_is_a_violation() {
        // The acknowledged put of "b" vanished: a later read sees the older value.
        let h = history(
            vec![
                op(0, put("a"), Output::Put, 0, 10),
                op(1, put("b"), Output::Put, 5, 15),
                op(2, get(), got(Some("b")), 16, 20),
                op(2, get(), got(Some("a")), 21, 25),
            ],
            &["a", "b"],
        );
        assert!(!check(&h, DEFAULT_BUDGET).ok());
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect_later() {
        // The timed-out put of "b" committed (it is in the reference) long after it
        // failed; the first read misses it, the second sees it.
        let h = history(
            vec![
                op(0, put("a"), Output::Put, 0, 10),
                op(1, put("b"), unknown(), 11, 12),
                op(2, get(), got(Some("a")), 20, 30),
                op(2, get(), got(Some("b")), 40, 50),
                // Never committed: dropped.
                op(1, put("c"), unknown(), 60, 61),
                op(2, get(), got(Some("b")), 70, 80),
            ],
            &["a", "b"],
        );
        let r = check(&h, DEFAULT_BUDGET);
        assert!(r.ok(), "{r:?}");
        // A read of a value nobody wrote is never explained by unknowns.
        let mut bad = h.clone();
        bad.ops.push(op(2, get(), got(Some("zzz")), 90, 95));
        assert!(!check(&bad, DEFAULT_BUDGET).ok());
    }

    #[test]
    fn cas_and_delete_follow_etcd_semantics() {
        let cas = |expect: Option<&str>, new: &str| Input::Cas {
            key: "k".into(),
            expect: expect.map(String::from),
            new: new.into(),
        };
        let good = history(
            vec![
                op(
                    0,
                    cas(None, "a"),
                    Output::Cas {
                        succeeded: true,
                        current: None,
                    },
                    0,
                    10,
                ),
                op(
                    1,
                    cas(None, "x"),
                    Output::Cas {
                        succeeded: false,
                        current: Some("a".into()),
                    },
                    11,
                    20,
                ),
                op(
                    0,
                    Input::Delete { key: "k".into() },
                    Output::Delete { deleted: 1 },
                    21,
                    30,
                ),
                op(
                    1,
                    Input::Delete { key: "k".into() },
                    Output::Delete { deleted: 0 },
                    31,
                    40,
                ),
                op(0, get(), got(None), 41, 50),
            ],
            &["a"],
        );
        assert!(check(&good, DEFAULT_BUDGET).ok());
        // Two compare-and-swaps from the same expected value cannot both succeed.
        let bad = history(
            vec![
                op(0, put("a"), Output::Put, 0, 10),
                op(
                    1,
                    cas(Some("a"), "b"),
                    Output::Cas {
                        succeeded: true,
                        current: None,
                    },
                    11,
                    20,
                ),
                op(
                    2,
                    cas(Some("a"), "c"),
                    Output::Cas {
                        succeeded: true,
                        current: None,
                    },
                    21,
                    30,
                ),
            ],
            &["a", "b", "c"],
        );
        assert!(!check(&bad, DEFAULT_BUDGET).ok());
    }
}
