//! Prometheus metrics under kube-scheduler's names, in one registry that
//! [`crate::metrics::gather`] renders for `/metrics`.

use std::sync::LazyLock;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // Registration fails only for a duplicate name, which the names below are not.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// scheduler_schedule_attempts_total{result="scheduled|unschedulable|error"}.
pub static SCHEDULE_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "scheduler_schedule_attempts_total",
                "Number of attempts to schedule pods, by the result.",
            ),
            &["result", "profile"],
        )
        .expect("valid metric"),
    )
});

/// scheduler_scheduling_attempt_duration_seconds{result}.
pub static ATTEMPT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "scheduler_scheduling_attempt_duration_seconds",
                "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &["result", "profile"],
        )
        .expect("valid metric"),
    )
});

/// scheduler_pending_pods{queue="active|backoff|unschedulable|gated"}.
pub static PENDING_PODS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "scheduler_pending_pods",
                "Number of pending pods, by the queue type.",
            ),
            &["queue"],
        )
        .expect("valid metric"),
    )
});

/// Events not written because the writer fell behind.
pub static EVENTS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "capstan_scheduler_events_dropped_total",
            "Events dropped because the event writer fell behind.",
        )
        .expect("valid metric"),
    )
});

/// The registry in Prometheus' text format, with client-go's metrics.
pub fn gather() -> String {
    capstan_client::metrics::render(&[&REGISTRY])
}
