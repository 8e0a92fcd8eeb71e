//! Prometheus metrics under the kubelet's and kube-proxy's names: the kubelet's on its
//! server's `/metrics` (port 10250), the proxy's on `--metrics-bind-address`
//! (127.0.0.1:10249), each beside client-go's (`capstan_client::metrics`).

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntGauge, IntGaugeVec, Opts, Registry};

/// The kubelet's registry.
pub static KUBELET: LazyLock<Registry> = LazyLock::new(Registry::new);
/// kube-proxy's registry.
pub static PROXY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registration fails only for a duplicate name, which the names below are not.
    let _ = r.register(Box::new(c.clone()));
    c
}

/// kubelet_running_pods: pods with a running sandbox.
pub static RUNNING_PODS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        &KUBELET,
        IntGauge::new(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
        )
        .expect("valid metric"),
    )
});

/// kubelet_running_containers{container_state}.
pub static RUNNING_CONTAINERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        &KUBELET,
        IntGaugeVec::new(
            Opts::new(
                "kubelet_running_containers",
                "Number of containers currently running",
            ),
            &["container_state"],
        )
        .expect("valid metric"),
    )
});

/// kubelet_pod_start_duration_seconds: from the kubelet first seeing a pod to its
/// running.
pub static POD_START_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        &KUBELET,
        Histogram::with_opts(
            HistogramOpts::new(
                "kubelet_pod_start_duration_seconds",
                "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            )
            .buckets(vec![
                0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0,
                180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
            ]),
        )
        .expect("valid metric"),
    )
});

/// kubelet_node_name{node}: 1, naming the node.
pub static NODE_NAME: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        &KUBELET,
        IntGaugeVec::new(
            Opts::new(
                "kubelet_node_name",
                "The node's name. The count is always 1.",
            ),
            &["node"],
        )
        .expect("valid metric"),
    )
});

/// kubeproxy_sync_proxy_rules_duration_seconds: one nftables sync.
pub static SYNC_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        &PROXY,
        Histogram::with_opts(
            HistogramOpts::new(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
        )
        .expect("valid metric"),
    )
});

/// kubeproxy_sync_proxy_rules_last_timestamp_seconds: when rules were last synced.
pub static SYNC_LAST: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        &PROXY,
        IntGauge::new(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        )
        .expect("valid metric"),
    )
});

/// The kubelet's `/metrics`.
pub fn render_kubelet() -> String {
    LazyLock::force(&RUNNING_PODS);
    LazyLock::force(&RUNNING_CONTAINERS);
    LazyLock::force(&POD_START_DURATION);
    LazyLock::force(&NODE_NAME);
    capstan_client::metrics::render(&[&KUBELET])
}

/// kube-proxy's `/metrics`.
pub fn render_proxy() -> String {
    LazyLock::force(&SYNC_DURATION);
    LazyLock::force(&SYNC_LAST);
    capstan_client::metrics::render(&[&PROXY])
}
