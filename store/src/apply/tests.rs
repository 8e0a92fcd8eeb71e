//! A seeded model test of the apply path: random batches of puts (with leases,
//! `ignore_value`, `ignore_lease`, `prev_kv`), deletes, one-put txns, lease grants and
//! revokes and compactions, with restarts in between, checked against a plain map.
//!
//! A put takes its create revision, version and old lease from the in-memory index
//! instead of reading the previous record; this checks that every record written, every
//! response's `prev_kv` and every watch event (with the `prev_kv` the hub reads only
//! for watchers that ask for it) is exactly what the previous record implies, also
//! after compactions and after the index is rebuilt from history.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_proto::mvccpb::{event::EventType, Event, KeyValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::engine::memory::MemEngine;
use crate::watch::{Notice, WatchSpec, WatchStream, AUTO_WATCH_ID, STREAM_CAPACITY};

const KEYS: usize = 12;
const LEASES: [i64; 3] = [101, 102, 103];

/// What the store must hold: live records by key, granted leases, revisions.
#[derive(Default)]
struct Model {
    live: BTreeMap<Vec<u8>, KeyValue>,
    leases: BTreeSet<i64>,
    rev: i64,
    compacted: i64,
}

/// What one request must answer, and the events it must produce.
struct Expected {
    result: std::result::Result<Option<KeyValue>, StoreError>,
    events: Vec<Event>,
}

impl Model {
    fn put(&mut self, p: &pb::PutRequest, main: i64) -> std::result::Result<Event, StoreError> {
        if p.lease != 0 && !self.leases.contains(&p.lease) {
            return Err(StoreError::LeaseNotFound);
        }
        let prev = self.live.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(StoreError::KeyNotFound);
        }
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(main, |k| k.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: match (&prev, p.ignore_value) {
                (Some(k), true) => k.value.clone(),
                _ => p.value.clone(),
            },
            lease: match (&prev, p.ignore_lease) {
                (Some(k), true) => k.lease,
                _ => p.lease,
            },
        };
        self.live.insert(p.key.clone(), kv.clone());
        Ok(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev,
        })
    }

    fn delete(&mut self, key: &[u8], main: i64) -> Option<Event> {
        let prev = self.live.remove(key)?;
        Some(Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.to_vec(),
                mod_revision: main,
                ..Default::default()
            }),
            prev_kv: Some(prev),
        })
    }

    /// Applies `op` to the model; what the store must answer.
    fn apply(&mut self, op: &Op) -> Expected {
        let main = self.rev + 1;
        let mut events = Vec::new();
        let result = match op {
            Op::Put(p) => self.put(p, main).map(|e| {
                let prev = e.prev_kv.clone();
                events.push(e);
                prev.filter(|_| p.prev_kv)
            }),
            Op::Txn(t) => match t.success.first().and_then(|o| o.request.as_ref()) {
                Some(request_op::Request::RequestPut(p)) => self.put(p, main).map(|e| {
                    events.push(e);
                    None
                }),
                _ => Ok(None),
            },
            Op::DeleteRange(d) => {
                events.extend(self.delete(&d.key, main));
                Ok(None)
            }
            Op::LeaseGrant(g) => {
                if self.leases.insert(g.id) {
                    Ok(None)
                } else {
                    Err(StoreError::LeaseExist)
                }
            }
            Op::LeaseRevoke(r) => {
                if self.leases.remove(&r.id) {
                    let doomed: Vec<Vec<u8>> = self
                        .live
                        .iter()
                        .filter(|(_, kv)| kv.lease == r.id)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        events.extend(self.delete(&k, main));
                    }
                    Ok(None)
                } else {
                    Err(StoreError::LeaseNotFound)
                }
            }
            Op::Compaction(c) => {
                if c.revision <= self.compacted {
                    Err(StoreError::Compacted)
                } else {
                    self.compacted = c.revision;
                    Ok(None)
                }
            }
            _ => Ok(None),
        };
        if !events.is_empty() {
            self.rev = main;
        }
        Expected { result, events }
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn random_put(rng: &mut StdRng) -> pb::PutRequest {
    pb::PutRequest {
        key: key(rng.random_range(0..KEYS)),
        value: format!("v{}", rng.random_range(0..1000)).into_bytes(),
        lease: if rng.random_bool(0.3) {
            LEASES[rng.random_range(0..LEASES.len())]
        } else {
            0
        },
        prev_kv: rng.random_bool(0.3),
        ignore_value: rng.random_bool(0.1),
        ignore_lease: rng.random_bool(0.1),
    }
}

fn random_op(rng: &mut StdRng, model: &Model) -> Op {
    match rng.random_range(0..100) {
        0..=54 => {
            let mut p = random_put(rng);
            if p.ignore_lease {
                p.lease = 0;
            }
            if p.ignore_value {
                p.value.clear();
            }
            Op::Put(p)
        }
        55..=69 => {
            let mut p = random_put(rng);
            p.prev_kv = false;
            p.ignore_value = false;
            p.ignore_lease = false;
            Op::Txn(pb::TxnRequest {
                success: vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(p)),
                }],
                ..Default::default()
            })
        }
        70..=84 => Op::DeleteRange(pb::DeleteRangeRequest {
            key: key(rng.random_range(0..KEYS)),
            ..Default::default()
        }),
        85..=89 => Op::LeaseRevoke(pb::LeaseRevokeRequest {
            id: LEASES[rng.random_range(0..LEASES.len())],
        }),
        90..=94 => Op::LeaseGrant(pb::LeaseGrantRequest {
            id: LEASES[rng.random_range(0..LEASES.len())],
            ttl: 1000,
        }),
        _ => Op::Compaction(pb::CompactionRequest {
            revision: rng.random_range(1..=model.rev.max(1)),
            physical: false,
        }),
    }
}

/// Every event a `prev_kv` watcher of every key receives up to revision `to`.
async fn receive(ws: &mut WatchStream, to: i64, got: &mut Vec<Event>) {
    while got
        .last()
        .and_then(|e| e.kv.as_ref())
        .is_none_or(|kv| kv.mod_revision < to)
    {
        let notice = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("events in time")
            .expect("stream open");
        match notice {
            Notice::Events { events, .. } => got.extend(events),
            other => panic!("unexpected notice {other:?}"),
        }
    }
}

fn watch_all(sm: &Arc<StateMachine>) -> WatchStream {
    let mut ws = WatchStream::new(sm.clone(), STREAM_CAPACITY);
    let spec = WatchSpec {
        key: vec![0],
        range_end: vec![0],
        prev_kv: true,
        ..Default::default()
    };
    ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
    ws
}

fn check_store(sm: &StateMachine, model: &Model, context: &str) {
    let all = pb::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let got = mvcc::range(&sm.mvcc, &all).expect("range").kvs;
    let want: Vec<KeyValue> = model.live.values().cloned().collect();
    assert_eq!(got, want, "{context}: store and model disagree");
    assert_eq!(
        sm.mvcc.current_rev(),
        model.rev.max(1),
        "{context}: revision"
    );
}

#[tokio::test]
async fn random_batches_match_the_model() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut sm = Arc::new(StateMachine::open(engine.clone(), 1).expect("open"));
        let mut ws = watch_all(&sm);
        let mut model = Model {
            rev: 1,
            ..Default::default()
        };
        let mut index = 0u64;
        for batch_no in 0..150 {
            let context = format!("seed {seed}, batch {batch_no}");
            if batch_no % 40 == 39 {
                // A restart: the index, with the live state puts rely on, is rebuilt
                // from the history alone.
                drop(ws);
                drop(sm);
                sm = Arc::new(StateMachine::open(engine.clone(), 1).expect("reopen"));
                ws = watch_all(&sm);
                check_store(&sm, &model, &format!("{context}, after restart"));
            }
            let ops: Vec<ApplyRequest> = (0..rng.random_range(1..8))
                .map(|_| ApplyRequest {
                    op: Some(random_op(&mut rng, &model)),
                })
                .collect();
            let mut want_events = Vec::new();
            let mut want = Vec::new();
            for r in &ops {
                let e = model.apply(r.op.as_ref().expect("op"));
                want_events.extend(e.events);
                want.push(e.result);
            }
            let entries: Vec<(u64, &ApplyRequest)> = ops
                .iter()
                .map(|r| {
                    index += 1;
                    (index, r)
                })
                .collect();
            let results = sm.apply_batch(&entries, false).expect("apply");
            for ((r, w), op) in results.into_iter().zip(want).zip(&ops) {
                let r = r.expect("not a replay");
                match (r, w) {
                    (Ok(ApplyResponse::Put(p)), Ok(prev)) => {
                        assert_eq!(p.prev_kv, prev, "{context}: prev_kv of {op:?}")
                    }
                    (Ok(_), Ok(_)) => {}
                    (Err(e), Err(w)) => assert_eq!(e, w, "{context}: error of {op:?}"),
                    (r, w) => panic!("{context}: {op:?} gave {r:?}, the model {w:?}"),
                }
            }
            check_store(&sm, &model, &context);
            let mut got = Vec::new();
            if let Some(last) = want_events.last().and_then(|e| e.kv.as_ref()) {
                receive(&mut ws, last.mod_revision, &mut got).await;
            }
            assert_eq!(got, want_events, "{context}: watch events");
        }
    }
}

#[test]
fn point_writes_are_puts_and_txns_of_single_keys() {
    let put = |k: &str| pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: k.into(),
            ..Default::default()
        })),
    };
    let get = |k: &str, end: &str| pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    };
    let txn = |compare_end: &str, success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>| {
        ApplyRequest {
            op: Some(Op::Txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    key: b"k".to_vec(),
                    range_end: compare_end.into(),
                    ..Default::default()
                }],
                success,
                failure,
            })),
        }
    };
    let op = |o: Op| ApplyRequest { op: Some(o) };
    // What the apiserver writes with: compare one key's revision, put, else get it.
    assert!(txn("", vec![put("k")], vec![get("k", "")]).is_point_write());
    assert!(op(Op::Put(pb::PutRequest::default())).is_point_write());
    // Anything that can touch any number of keys is not.
    assert!(!txn("l", vec![put("k")], vec![]).is_point_write());
    assert!(!txn("", vec![put("k")], vec![get("a", "z")]).is_point_write());
    assert!(!txn(
        "",
        vec![pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest::default()
            )),
        }],
        vec![]
    )
    .is_point_write());
    assert!(!op(Op::DeleteRange(pb::DeleteRangeRequest::default())).is_point_write());
    assert!(!op(Op::Compaction(pb::CompactionRequest::default())).is_point_write());
    assert!(!op(Op::LeaseRevoke(pb::LeaseRevokeRequest::default())).is_point_write());
}
