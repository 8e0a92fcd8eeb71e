//! Prometheus metrics under etcd's own metric names, so dashboards and alerts written
//! for etcd work unchanged against capstan. Served with `/health` and `/version` over
//! HTTP/1.1 on every client URL, as etcd does.
//!
//! Counters and histograms are updated where the work happens (the applier); gauges
//! that are cheap to read on demand (size, revision, watchers) are set at scrape time.

use std::sync::LazyLock;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::server::EtcdServer;

/// The version `/version` and `Status` report. Kubernetes checks only that it is a
/// 3.x it supports; 3.5 is what current Kubernetes releases are tested against.
pub const SERVER_VERSION: &str = "3.5.17";
/// The cluster version reported with [`SERVER_VERSION`].
pub const CLUSTER_VERSION: &str = "3.5.0";

/// The process-wide metric handles.
pub struct Metrics {
    registry: Registry,
    /// Proposals committed to the log (one per client write).
    pub proposals_committed: IntCounter,
    /// Connections refused in the TLS handshake (no or a wrong client certificate,
    /// plaintext on a TLS port).
    pub tls_handshake_failures: IntCounter,
    /// Time to apply one batch to the backend (a single member: and fsync it; with
    /// Raft the log is the durable copy, so the apply is unsynced).
    pub backend_commit: Histogram,
    /// Proposals per group-committed batch: how well group commit batches.
    pub apply_batch_size: Histogram,
    /// Time to write and fsync one group of Raft log appends (etcd: its WAL fsync).
    pub wal_fsync: Histogram,
    /// Proposals per batch this member submitted to the Raft log (one entry, or one
    /// forward to the leader, each).
    pub proposal_batch_size: Histogram,
    /// Time from submitting a batch until the leader has it committed and applied (on
    /// a follower this includes the forward to the leader).
    pub proposal_submit: Histogram,
    /// Time from the leader's answer that a batch is committed and applied there until
    /// this member has applied it too and answers its client: on the leader about
    /// zero, on a follower the wait for the commit to reach it.
    pub proposal_apply_lag: Histogram,
    /// Time to build a Raft snapshot (etcd: saving one to disk).
    pub snap_save: Histogram,
    /// Time to install a Raft snapshot received from the leader (etcd: saving the
    /// received v3 snapshot); its count is how many this member installed.
    pub snap_db_save: Histogram,
    has_leader: IntGauge,
    is_leader: IntGauge,
    applied: IntGauge,
    db_size: IntGauge,
    current_rev: IntGauge,
    keys: IntGauge,
    watchers: IntGauge,
    slow_watchers: IntGauge,
}

/// Registers `m`; names and options are constants, so failure is a programming error.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    m: prometheus::Result<M>,
) -> M {
    let m = m.unwrap_or_else(|e| panic!("invalid metric: {e}"));
    registry
        .register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("duplicate metric: {e}"));
    m
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
    )
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        // etcd's `process_*` metrics (resident memory, CPU, fds, start time): what
        // `etcdctl check datascale` reads to tell the memory a workload took.
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics not registered");
        }
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help));
        Self {
            proposals_committed: register(
                &r,
                IntCounter::new(
                    "etcd_server_proposals_committed_total",
                    "The total number of consensus proposals committed.",
                ),
            ),
            tls_handshake_failures: register(
                &r,
                IntCounter::new(
                    "capstan_store_tls_handshake_failures_total",
                    "Connections refused in the TLS handshake.",
                ),
            ),
            // etcd's buckets: 1 ms doubling to about 8 s.
            backend_commit: histogram(
                &r,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default(),
            ),
            apply_batch_size: histogram(
                &r,
                "capstan_store_apply_batch_size",
                "Proposals applied and fsynced together by one group commit.",
                prometheus::exponential_buckets(1.0, 2.0, 11).unwrap_or_default(),
            ),
            wal_fsync: histogram(
                &r,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default(),
            ),
            proposal_batch_size: histogram(
                &r,
                "capstan_raft_proposal_batch_size",
                "Proposals submitted to the Raft log together as one entry.",
                prometheus::exponential_buckets(1.0, 2.0, 11).unwrap_or_default(),
            ),
            proposal_submit: histogram(
                &r,
                "capstan_raft_proposal_submit_duration_seconds",
                "Time from submitting a batch of proposals until the leader applied it.",
                prometheus::exponential_buckets(0.0005, 2.0, 14).unwrap_or_default(),
            ),
            proposal_apply_lag: histogram(
                &r,
                "capstan_raft_proposal_apply_lag_seconds",
                "Time from the leader applying a proposal until this member applied it.",
                prometheus::exponential_buckets(0.0001, 2.0, 14).unwrap_or_default(),
            ),
            // etcd's buckets (snap/metrics.go).
            snap_save: histogram(
                &r,
                "etcd_debugging_snap_save_total_duration_seconds",
                "The total latency distributions of save called by snapshot.",
                prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default(),
            ),
            snap_db_save: histogram(
                &r,
                "etcd_snap_db_save_total_duration_seconds",
                "The total latency distributions of v3 snapshot save",
                prometheus::exponential_buckets(0.1, 2.0, 10).unwrap_or_default(),
            ),
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            db_size: gauge(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            current_rev: gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            keys: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            watchers: gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            slow_watchers: gauge(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
            ),
            registry: r,
        }
    }
}

/// The metrics of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Renders every metric in the Prometheus text format, reading the gauges off `srv`.
pub fn render(srv: &EtcdServer) -> String {
    use crate::mvcc::KvRead;
    let m = &*METRICS;
    m.has_leader.set(i64::from(srv.leader_id() != 0));
    m.is_leader.set(i64::from(srv.is_leader()));
    m.applied.set(srv.sm.applied_index() as i64);
    m.db_size.set(srv.sm.mvcc.engine().size_bytes() as i64);
    m.current_rev.set(srv.sm.mvcc.current_rev());
    m.keys.set(srv.sm.mvcc.index_len() as i64);
    let (synced, unsynced) = srv.sm.watch.counts();
    m.watchers.set((synced + unsynced) as i64);
    m.slow_watchers.set(unsynced as i64);
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}
