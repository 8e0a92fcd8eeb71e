//! Prometheus metrics under kube-apiserver's own names, so its dashboards work:
//! `apiserver_request_total` and `apiserver_request_duration_seconds` per verb and
//! resource, and `apiserver_registered_watchers` per resource.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::error::ApiError;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub watchers: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, ApiError> {
        let bad = |e: prometheus::Error| ApiError::Setup(format!("metrics: {e}"));
        let registry = Registry::new();
        // kube-apiserver's `process_*` metrics (memory, CPU, fds, start time).
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(bad)?;
        let requests = IntCounterVec::new(
            Opts::new("apiserver_request_total", "Counter of apiserver requests broken out for each verb, group, version, resource, subresource and HTTP response code."),
            &["verb", "group", "version", "resource", "subresource", "code"],
        )
        .map_err(bad)?;
        let duration = HistogramVec::new(
            HistogramOpts::new("apiserver_request_duration_seconds", "Response latency distribution in seconds for each verb, group, version, resource and subresource.")
                .buckets(vec![0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0]),
            &["verb", "group", "version", "resource", "subresource"],
        )
        .map_err(bad)?;
        let watchers = IntGaugeVec::new(
            Opts::new(
                "apiserver_registered_watchers",
                "Number of currently registered watchers for a given resource.",
            ),
            &["group", "version", "kind"],
        )
        .map_err(bad)?;
        registry.register(Box::new(requests.clone())).map_err(bad)?;
        registry.register(Box::new(duration.clone())).map_err(bad)?;
        registry.register(Box::new(watchers.clone())).map_err(bad)?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            watchers,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
