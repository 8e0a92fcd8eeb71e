//! Micro-benchmarks of the apply path: one group-commit batch of puts (or one-put txns)
//! through `StateMachine::apply_batch`, on the in-memory engine and on RocksDB in a temp
//! dir, unsynced, so what is measured is the apply path's CPU (index, record encoding,
//! point reads, the engine write), not the disk's fsync.
//!
//! The key space is preloaded, so almost every put overwrites a live key, as in
//! `capstan-bench put` (10,000 keys of 32 bytes, 256-byte values).
//!
//! `cargo bench -p capstan-store --bench apply` runs it under Criterion. With
//! `CAPSTAN_BENCH_FIXED=<batches>` the binary instead applies that many batches (of
//! puts, or txn-puts with `CAPSTAN_BENCH_TXN=1`) to the memory engine (RocksDB with
//! `CAPSTAN_BENCH_ENGINE=rocksdb`) and exits, a fixed amount of work for `valgrind --tool=callgrind`,
//! whose instruction counts do not depend on the machine's load (see BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_store::apply::{ApplyRequest, Op, StateMachine};
use capstan_store::engine::memory::MemEngine;
use capstan_store::engine::rocks::RocksEngine;
use capstan_store::engine::Engine;
use criterion::{BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEY_SPACE: usize = 10_000;
const KEY_SIZE: usize = 32;
const VAL_SIZE: usize = 256;
/// Requests per batch: about what one fsync carries under `capstan-bench put`.
const BATCH: usize = 100;

/// A state machine with every key of the key space written once, and the next log index.
struct Fixture {
    sm: StateMachine,
    next: u64,
    /// Keeps the RocksDB directory alive for the fixture's lifetime.
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn new(engine: Arc<dyn Engine>, dir: Option<tempfile::TempDir>) -> Self {
        let sm = StateMachine::open(engine, 1).expect("open state machine");
        let mut f = Self {
            sm,
            next: 1,
            _dir: dir,
        };
        let keys: Vec<ApplyRequest> = (0..KEY_SPACE)
            .map(|i| put_req(key(i), vec![b'v'; VAL_SIZE]))
            .collect();
        for chunk in keys.chunks(1000) {
            f.apply(chunk);
        }
        f
    }

    fn memory() -> Self {
        Self::new(Arc::new(MemEngine::new()), None)
    }

    fn rocks() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = RocksEngine::open(dir.path()).expect("open RocksDB");
        Self::new(Arc::new(engine), Some(dir))
    }

    fn apply(&mut self, reqs: &[ApplyRequest]) {
        let entries: Vec<(u64, &ApplyRequest)> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| (self.next + i as u64, r))
            .collect();
        self.next += reqs.len() as u64;
        let results = self.sm.apply_batch(&entries, false).expect("apply");
        black_box(results);
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("/bench/{i:0width$}", width = KEY_SIZE - 7).into_bytes()
}

fn put_req(key: Vec<u8>, value: Vec<u8>) -> ApplyRequest {
    ApplyRequest {
        op: Some(Op::Put(pb::PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

fn txn_put_req(key: Vec<u8>, value: Vec<u8>) -> ApplyRequest {
    ApplyRequest {
        op: Some(Op::Txn(pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })),
    }
}

/// `count` batches of [`BATCH`] requests to random keys of the key space, seeded so
/// every run applies the same requests.
fn batches(count: usize, txn: bool) -> Vec<Vec<ApplyRequest>> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..count)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    let k = key(rng.random_range(0..KEY_SPACE));
                    let mut v = vec![0u8; VAL_SIZE];
                    rng.fill(&mut v[..]);
                    if txn {
                        txn_put_req(k, v)
                    } else {
                        put_req(k, v)
                    }
                })
                .collect()
        })
        .collect()
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    // Distinct batches cycled through, so values differ between applies.
    let puts = batches(64, false);
    let txns = batches(64, true);
    for (engine, make) in [
        ("memory", Fixture::memory as fn() -> Fixture),
        ("rocksdb", Fixture::rocks),
    ] {
        for (kind, reqs) in [("put", &puts), ("txn_put", &txns)] {
            let mut f = make();
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(kind, engine), |b| {
                b.iter(|| {
                    f.apply(&reqs[i % reqs.len()]);
                    i += 1;
                })
            });
        }
    }
    g.finish();
}

/// The fixed-work mode for callgrind: `batches` batches of puts (txn-puts with
/// `CAPSTAN_BENCH_TXN` set) on the memory engine (RocksDB with
/// `CAPSTAN_BENCH_ENGINE=rocksdb`), after the same preload.
fn fixed(batches_to_apply: usize) {
    let mut f = match std::env::var("CAPSTAN_BENCH_ENGINE").as_deref() {
        Ok("rocksdb") => Fixture::rocks(),
        _ => Fixture::memory(),
    };
    let reqs = batches(
        batches_to_apply,
        std::env::var("CAPSTAN_BENCH_TXN").is_ok_and(|v| v == "1"),
    );
    measured(&mut f, &reqs);
}

/// The measured part of [`fixed`], a symbol of its own for callgrind's
/// `--toggle-collect=*measured*`, so the preload is left out of the count.
#[inline(never)]
fn measured(f: &mut Fixture, batches: &[Vec<ApplyRequest>]) {
    for b in batches {
        f.apply(b);
    }
}

fn main() {
    if let Some(n) = std::env::var("CAPSTAN_BENCH_FIXED")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        fixed(n);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_apply(&mut c);
    c.final_summary();
}
