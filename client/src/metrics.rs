//! The metrics client-go gives every upstream component, under its names:
//! `rest_client_requests_total{code,host,method}` and
//! `rest_client_request_duration_seconds{host,verb}` (counted by a layer on every
//! client [`crate::client_as`] makes), and `leader_election_master_status{name}`.
//! [`render`] puts them beside a component's own registry on its `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The registry of the metrics every component shares (one per process).
/// It holds the `process_*` metrics (memory, CPU, fds, start time) every upstream
/// component exports.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    if let Err(e) = r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!(error = %e, "process metrics not registered");
    }
    r
});

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // Registration fails only for a duplicate name, which the names below are not.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// rest_client_requests_total{code,host,method}.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "rest_client_requests_total",
                "Number of HTTP requests, partitioned by status code, method, and host.",
            ),
            &["code", "host", "method"],
        )
        .expect("valid metric"),
    )
});

/// rest_client_request_duration_seconds{host,verb}.
pub static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "rest_client_request_duration_seconds",
                "Request latency in seconds. Broken down by verb, and host.",
            )
            .buckets(vec![
                0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
            ]),
            &["host", "verb"],
        )
        .expect("valid metric"),
    )
});

/// leader_election_master_status{name}: 1 while this process holds the lease.
pub static LEADER: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "leader_election_master_status",
                "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.",
            ),
            &["name"],
        )
        .expect("valid metric"),
    )
});

/// The text exposition of the shared registry and `others`.
pub fn render(others: &[&Registry]) -> String {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&DURATION);
    LazyLock::force(&LEADER);
    let mut families = REGISTRY.gather();
    for r in others {
        families.extend(r.gather());
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// A tower layer counting every request of a kube client into [`REQUESTS`] and
/// [`DURATION`].
#[derive(Clone)]
pub struct CountLayer {
    pub host: String,
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            host: self.host.clone(),
        }
    }
}

/// The service [`CountLayer`] wraps a client's in.
pub struct Count<S> {
    inner: S,
    host: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Count<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = req.method().as_str().to_string();
        let host = self.host.clone();
        let started = std::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(_) => "<error>".to_string(),
            };
            REQUESTS.with_label_values(&[&code, &host, &method]).inc();
            DURATION
                .with_label_values(&[&host, &method])
                .observe(started.elapsed().as_secs_f64());
            r
        })
    }
}
