//! Micro-benchmarks of the watch hub: one put event fanned out to 1,000 and 10,000
//! watchers of one prefix, ten watchers per stream (as `capstan-bench watch-latency`
//! spreads them).
//!
//! Two measurements per size: `notify` alone (the applier thread's share: matching the
//! event and queueing one delivery per watcher; the streams are drained outside the
//! timing), and `notify` plus draining every stream through `WatchStream::recv` (the
//! whole in-process fan-out, short of encoding the gRPC responses).
//!
//! `cargo bench -p capstan-store --bench watch`. With `CAPSTAN_BENCH_FIXED=<events>`
//! the binary instead fans that many events out to 10,000 watchers and exits (fixed
//! work for `valgrind --tool=callgrind`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_proto::mvccpb::{event::EventType, Event, KeyValue};
use capstan_store::apply::StateMachine;
use capstan_store::engine::memory::MemEngine;
use capstan_store::mvcc::KvRead;
use capstan_store::watch::{Notice, WatchSpec, WatchStream};
use criterion::{BenchmarkId, Criterion, Throughput};

const WATCHERS_PER_STREAM: usize = 10;
const PREFIX: &[u8] = b"/watch/";

/// A hub with `watchers` synced watchers of [`PREFIX`], and the runtime to drain them.
struct Fixture {
    sm: Arc<StateMachine>,
    streams: Vec<WatchStream>,
    rt: tokio::runtime::Runtime,
    rev: i64,
}

impl Fixture {
    fn new(watchers: usize) -> Self {
        let sm = Arc::new(StateMachine::open(Arc::new(MemEngine::new()), 1).expect("open"));
        let mut end = PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let spec = WatchSpec {
            key: PREFIX.to_vec(),
            range_end: end,
            ..Default::default()
        };
        let streams = (0..watchers.div_ceil(WATCHERS_PER_STREAM))
            .map(|_| {
                let mut s = WatchStream::new(sm.clone(), capstan_store::watch::STREAM_CAPACITY);
                for _ in 0..WATCHERS_PER_STREAM {
                    s.watch(0, &spec).expect("watch");
                }
                s
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let rev = sm.mvcc.current_rev();
        Self {
            sm,
            streams,
            rt,
            rev,
        }
    }

    /// The next revision's event: a put of a 256-byte value under the prefix.
    fn event(&mut self) -> Event {
        self.rev += 1;
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: b"/watch/key-0001".to_vec(),
                create_revision: 2,
                mod_revision: self.rev,
                version: self.rev - 1,
                value: vec![b'v'; 256],
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn notify(&self, ev: &Event) {
        let rev = ev.kv.as_ref().map_or(self.rev, |kv| kv.mod_revision);
        self.sm
            .watch
            .notify(rev, std::slice::from_ref(ev), &[], &self.sm.mvcc);
    }

    /// Receives the one notice each watcher was sent.
    fn drain(&mut self) {
        let streams = &mut self.streams;
        self.rt.block_on(async {
            for s in streams.iter_mut() {
                for _ in 0..WATCHERS_PER_STREAM {
                    match s.recv().await {
                        Some(n @ Notice::Events { .. }) => {
                            black_box(n);
                        }
                        other => panic!("expected events, got {other:?}"),
                    }
                }
            }
        });
    }
}

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch_fanout");
    for watchers in [1_000usize, 10_000] {
        g.throughput(Throughput::Elements(watchers as u64));
        let mut f = Fixture::new(watchers);
        g.bench_function(BenchmarkId::new("notify", watchers), |b| {
            // Timed one notify at a time, so draining stays outside the measurement.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ev = f.event();
                    let started = Instant::now();
                    f.notify(&ev);
                    total += started.elapsed();
                    f.drain();
                }
                total
            });
        });
        g.bench_function(BenchmarkId::new("notify_and_recv", watchers), |b| {
            b.iter(|| {
                let ev = f.event();
                f.notify(&ev);
                f.drain();
            })
        });
    }
    g.finish();
}

/// The fixed-work mode's loop, a symbol of its own for callgrind's
/// `--toggle-collect=*measured*`, so creating the watchers is left out of the count.
#[inline(never)]
fn measured(f: &mut Fixture, events: usize) {
    for _ in 0..events {
        let ev = f.event();
        f.notify(&ev);
        f.drain();
    }
}

fn main() {
    if let Some(n) = std::env::var("CAPSTAN_BENCH_FIXED")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut f = Fixture::new(10_000);
        measured(&mut f, n);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_fanout(&mut c);
    c.final_summary();
}
