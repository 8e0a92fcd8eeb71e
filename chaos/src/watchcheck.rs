//! Watch guarantees, per watcher, against the reference history (every revision under
//! the watched prefix, read at the end): events ordered, no duplicates, no gaps (the
//! watcher, across its resumptions, delivers exactly the reference events from its
//! start revision to the end), each revision's events in one response (atomic),
//! resumption from the last delivered revision + 1, and no progress notification
//! ahead of a not-yet-delivered event.

use serde::Serialize;

use crate::history::{Event, WatchHistory, WatchRecord};

/// The first guarantee a watcher broke (checking stops there: later records would
/// only repeat the same divergence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchViolation {
    pub watcher: usize,
    pub what: String,
}

/// How strictly progress notifications are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A notification ahead of an undelivered event is a violation.
    Strict,
    /// It is noted, not failed: etcd before 3.4.25 / 3.5.8 answers a progress request
    /// with the store's revision even while the watcher is still catching up (etcd
    /// issue #15220, fixed by PR #15237), so the reference itself breaks this rule.
    Lenient,
}

/// Checks one watcher. `reference` must be sorted by revision (it is the history as
/// read at the end) and may cover more than `w.prefix`. Progress notifications that
/// [`Progress::Lenient`] excuses are described in `excused`.
pub fn check_watcher(
    w: &WatchHistory,
    reference: &[Event],
    mode: Progress,
    excused: &mut Vec<String>,
) -> Option<WatchViolation> {
    let want: Vec<&Event> = reference
        .iter()
        .filter(|e| e.key.starts_with(&w.prefix))
        .collect();
    let fail = |what: String| {
        Some(WatchViolation {
            watcher: w.watcher,
            what,
        })
    };
    let mut pos: Option<usize> = None;
    let mut last: Option<&Event> = None;
    let mut progress = 0i64;
    for r in &w.records {
        match r {
            WatchRecord::Created { start_rev, .. } => {
                if let Some(l) = last {
                    if *start_rev != l.rev + 1 {
                        return fail(format!(
                            "resumed from revision {start_rev}, not last delivered {} + 1",
                            l.rev
                        ));
                    }
                }
                if pos.is_none() || last.is_none() {
                    pos = Some(
                        want.iter()
                            .position(|e| e.rev >= *start_rev)
                            .unwrap_or(want.len()),
                    );
                }
            }
            WatchRecord::Events { events, .. } => {
                let Some(p) = pos.as_mut() else {
                    return fail("events before the watch was created".into());
                };
                for (n, e) in events.iter().enumerate() {
                    if e.rev <= progress {
                        return fail(format!(
                            "event at revision {} after a progress notification at {progress}",
                            e.rev
                        ));
                    }
                    if want.get(*p) == Some(&e) {
                        // The right event, but its revision began in an earlier response.
                        if n == 0 && last.is_some_and(|l| l.rev == e.rev) {
                            return fail(format!("revision {} split across responses", e.rev));
                        }
                        *p += 1;
                        last = Some(e);
                        continue;
                    }
                    let what = match last {
                        Some(l) if e.rev < l.rev => {
                            format!("reordered: revision {} after revision {}", e.rev, l.rev)
                        }
                        Some(l) if l == e || want[..*p].contains(&e) => {
                            format!("duplicate event {e:?}")
                        }
                        _ => match want.iter().position(|x| *x == e) {
                            Some(at) if at > *p => format!(
                                "gap: {e:?} delivered but {:?} (and {} more) never was",
                                want[*p],
                                at - *p - 1
                            ),
                            _ => format!(
                                "event {e:?} is not in the history (expected {:?})",
                                want.get(*p)
                            ),
                        },
                    };
                    return fail(what);
                }
            }
            WatchRecord::Progress { rev, .. } => {
                if let Some(next) = pos.and_then(|p| want.get(p)) {
                    if next.rev <= *rev {
                        let what = format!(
                            "progress notification at revision {rev} before the event at revision {} was delivered",
                            next.rev
                        );
                        if mode == Progress::Strict {
                            return fail(what);
                        }
                        excused.push(format!("watcher {}: {what}", w.watcher));
                        continue;
                    }
                }
                progress = progress.max(*rev);
            }
            WatchRecord::Canceled {
                reason,
                compact_rev,
                ..
            } => {
                return fail(format!(
                    "canceled by the server (compact revision {compact_rev}): {reason}"
                ))
            }
            WatchRecord::Broken { .. } => {}
        }
    }
    match pos {
        None => fail("never created".into()),
        Some(p) if p < want.len() => fail(format!(
            "gap: stopped before revision {} ({} events never delivered)",
            want[p].rev,
            want.len() - p
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, key: &str, v: &str) -> Event {
        Event {
            rev,
            key: key.into(),
            value: Some(v.into()),
        }
    }
    fn reference() -> Vec<Event> {
        vec![
            ev(2, "/p/a", "1"),
            ev(3, "/p/b", "2"),
            ev(3, "/p/c", "3"),
            ev(4, "/p/a", "4"),
        ]
    }
    fn watcher(records: Vec<WatchRecord>) -> WatchHistory {
        WatchHistory {
            watcher: 0,
            prefix: "/p/".into(),
            records,
        }
    }
    fn created(start_rev: i64) -> WatchRecord {
        WatchRecord::Created {
            member: 0,
            start_rev,
            at: 0,
        }
    }
    fn events(evs: &[Event]) -> WatchRecord {
        WatchRecord::Events {
            events: evs.to_vec(),
            at: 0,
        }
    }

    #[test]
    fn a_complete_resumed_watch_passes() {
        let r = reference();
        let w = watcher(vec![
            created(2),
            events(&r[0..1]),
            WatchRecord::Progress { rev: 2, at: 0 },
            WatchRecord::Broken {
                error: "killed".into(),
                at: 0,
            },
            created(3),
            events(&r[1..3]),
            events(&r[3..4]),
            WatchRecord::Progress { rev: 9, at: 0 },
        ]);
        assert_eq!(check_watcher(&w, &r, Progress::Strict, &mut vec![]), None);
    }

    #[test]
    fn a_reordered_event_fails() {
        let r = reference();
        let w = watcher(vec![
            created(2),
            events(&[r[0].clone(), r[3].clone(), r[1].clone(), r[2].clone()]),
        ]);
        let v = check_watcher(&w, &r, Progress::Strict, &mut vec![]).expect("violation");
        assert!(
            v.what.starts_with("gap") || v.what.starts_with("reordered"),
            "{v:?}"
        );
        // An older revision's event arriving after a newer revision's.
        let w = watcher(vec![
            created(2),
            events(&r[0..1]),
            events(&r[3..4]),
            events(&r[1..3]),
        ]);
        let v = check_watcher(&w, &r, Progress::Strict, &mut vec![]).expect("violation");
        assert!(v.what.starts_with("gap"), "{v:?}");
        let w = watcher(vec![created(2), events(&r[0..4]), events(&[r[1].clone()])]);
        let v = check_watcher(&w, &r, Progress::Strict, &mut vec![]).expect("violation");
        assert!(v.what.starts_with("reordered"), "{v:?}");
    }

    #[test]
    fn a_duplicated_event_fails() {
        let r = reference();
        let w = watcher(vec![created(2), events(&r[0..1]), events(&r[0..4])]);
        let v = check_watcher(&w, &r, Progress::Strict, &mut vec![]).expect("violation");
        assert!(v.what.starts_with("duplicate"), "{v:?}");
    }

    #[test]
    fn gaps_splits_bad_resumes_and_early_progress_fail() {
        let r = reference();
        let gap = watcher(vec![created(2), events(&r[0..1]), events(&r[3..4])]);
        assert!(check_watcher(&gap, &r, Progress::Strict, &mut vec![])
            .expect("gap")
            .what
            .starts_with("gap"));
        let short = watcher(vec![created(2), events(&r[0..3])]);
        assert!(check_watcher(&short, &r, Progress::Strict, &mut vec![])
            .expect("missing tail")
            .what
            .starts_with("gap"));
        let split = watcher(vec![created(2), events(&r[0..2]), events(&r[2..4])]);
        assert!(check_watcher(&split, &r, Progress::Strict, &mut vec![])
            .expect("split")
            .what
            .contains("split"));
        let resume = watcher(vec![
            created(2),
            events(&r[0..1]),
            created(4),
            events(&r[3..4]),
        ]);
        assert!(check_watcher(&resume, &r, Progress::Strict, &mut vec![])
            .expect("resume")
            .what
            .starts_with("resumed"));
        let early = watcher(vec![
            created(2),
            events(&r[0..1]),
            WatchRecord::Progress { rev: 3, at: 0 },
            events(&r[1..4]),
        ]);
        assert!(check_watcher(&early, &r, Progress::Strict, &mut vec![])
            .expect("progress")
            .what
            .starts_with("progress"));
        // Lenient (for etcd < 3.4.25): noted, and the rest is still checked.
        let mut excused = vec![];
        assert_eq!(
            check_watcher(&early, &r, Progress::Lenient, &mut excused),
            None
        );
        assert_eq!(excused.len(), 1);
        let foreign = watcher(vec![created(2), events(&[ev(2, "/p/a", "forged")])]);
        assert!(check_watcher(&foreign, &r, Progress::Strict, &mut vec![]).is_some());
    }
}
