//! The history checks that need no search: revisions per client session, every
//! acknowledged write at its revision in the reference history, and the end state
//! each member holds against the state the reference history implies.

use std::collections::{BTreeMap, HashMap};

use crate::history::{Event, History, Input, Output};

/// Per client session (one client's calls are sequential): no response's revision is
/// below one the session already saw, and every write that created a revision got one
/// above everything the session saw before. Returns one line per violation.
pub fn session_revisions(h: &History) -> Vec<String> {
    let mut seen: HashMap<usize, (i64, usize)> = HashMap::new();
    let mut out = Vec::new();
    let mut order: Vec<usize> = (0..h.ops.len()).collect();
    order.sort_by_key(|&i| (h.ops[i].client, h.ops[i].invoke));
    for i in order {
        let op = &h.ops[i];
        if op.unknown() || op.rev == 0 {
            continue;
        }
        let creates = matches!(
            (&op.input, &op.output),
            (Input::Put { .. }, Output::Put)
                | (
                    Input::Cas { .. },
                    Output::Cas {
                        succeeded: true,
                        ..
                    }
                )
        ) || matches!(op.output, Output::Delete { deleted } if deleted > 0);
        if let Some(&(max, at)) = seen.get(&op.client) {
            if op.rev < max || (creates && op.rev == max) {
                out.push(format!(
                    "client {}: op #{i} ({:?}) at revision {} after op #{at} saw {max}",
                    op.client, op.input, op.rev
                ));
            }
        }
        let e = seen.entry(op.client).or_insert((op.rev, i));
        if op.rev >= e.0 {
            *e = (op.rev, i);
        }
    }
    out
}

/// Every acknowledged write is in the reference history, at the revision its response
/// named. Returns (writes checked, one line per lost or misplaced write).
pub fn acknowledged_writes(h: &History) -> (usize, Vec<String>) {
    let mut at: HashMap<(i64, &str), &Event> = HashMap::new();
    let mut out = Vec::new();
    for e in &h.reference {
        if at.insert((e.rev, e.key.as_str()), e).is_some() {
            out.push(format!(
                "reference history has two events for {} at revision {}",
                e.key, e.rev
            ));
        }
    }
    let mut checked = 0;
    for (i, op) in h.ops.iter().enumerate() {
        let expect: (&str, Option<&str>) = match (&op.input, &op.output) {
            (Input::Put { key, value, .. }, Output::Put) => (key, Some(value)),
            (
                Input::Cas { key, new, .. },
                Output::Cas {
                    succeeded: true, ..
                },
            ) => (key, Some(new)),
            (Input::Delete { key }, Output::Delete { deleted }) if *deleted > 0 => (key, None),
            _ => continue,
        };
        checked += 1;
        match at.get(&(op.rev, expect.0)) {
            Some(e) if e.value.as_deref() == expect.1 => {}
            got => out.push(format!(
                "acknowledged write lost: op #{i} {:?} acknowledged at revision {}, history holds {:?}",
                op.input, op.rev, got
            )),
        }
    }
    (checked, out)
}

/// The key-value state the reference history leaves (events applied in order).
pub fn final_state(reference: &[Event]) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    for e in reference {
        match &e.value {
            Some(v) => s.insert(e.key.clone(), v.clone()),
            None => s.remove(&e.key),
        };
    }
    s
}

/// Differences between the expected state and what a member holds.
pub fn compare_state(
    member: usize,
    expected: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in expected {
        match got.get(k) {
            Some(g) if g == v => {}
            g => out.push(format!("member {member}: {k} should be {v:?}, holds {g:?}")),
        }
    }
    for (k, g) in got {
        if !expected.contains_key(k) {
            out.push(format!(
                "member {member}: {k} = {g:?} is not in the history"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn put(client: usize, v: &str, rev: i64, invoke: u64) -> Op {
        Op {
            client,
            member: 0,
            input: Input::Put {
                key: "k".into(),
                value: v.into(),
                lease: 0,
            },
            output: Output::Put,
            invoke,
            complete: invoke + 1,
            rev,
        }
    }
    fn ev(rev: i64, v: &str) -> Event {
        Event {
            rev,
            key: "k".into(),
            value: Some(v.into()),
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let mut h = History {
            ops: vec![put(0, "a", 2, 0), put(0, "b", 3, 10)],
            reference: vec![ev(2, "a"), ev(3, "b")],
            ..Default::default()
        };
        assert_eq!(acknowledged_writes(&h), (2, vec![]));
        h.reference.pop();
        let (n, lost) = acknowledged_writes(&h);
        assert_eq!((n, lost.len()), (2, 1), "{lost:?}");
        // And the end state no longer matches what a member would hold.
        let want = final_state(&h.reference);
        let got = BTreeMap::from([("k".to_string(), "b".to_string())]);
        assert_eq!(compare_state(0, &want, &got).len(), 1);
    }

    #[test]
    fn session_revisions_must_not_go_back() {
        let good = History {
            ops: vec![put(0, "a", 2, 0), put(1, "x", 3, 0), put(0, "b", 4, 10)],
            ..Default::default()
        };
        assert!(session_revisions(&good).is_empty());
        let bad = History {
            ops: vec![
                put(0, "a", 5, 0),
                put(0, "b", 4, 10),
                put(1, "c", 6, 0),
                put(1, "d", 6, 10),
            ],
            ..Default::default()
        };
        assert_eq!(
            session_revisions(&bad).len(),
            2,
            "{:?}",
            session_revisions(&bad)
        );
    }
}
