//! `capstan-bench scheduler-throughput`: the scheduler's scale benchmark, in the shape of
//! upstream's scheduler_perf "SchedulingBasic": create many fake Node objects (kwok
//! style: capacity and a Ready condition, no kubelet), then many plain pods as fast as
//! the apiserver takes them, and watch them get bound. Reports pods bound per second
//! (first create to last binding) and the create-to-bound latency percentiles, where
//! "create" is when the create request was sent and "bound" when the watch showed
//! `spec.nodeName`. Talks only to the apiserver, so any scheduler can be measured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use parking_lot::Mutex;
use serde_json::json;

/// What to run.
pub struct Opts {
    pub kubeconfig: std::path::PathBuf,
    pub nodes: usize,
    pub pods: usize,
    pub concurrency: usize,
    pub namespace: String,
    pub timeout: Duration,
}

/// The outcome.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub nodes: usize,
    pub pods: usize,
    pub bound: usize,
    pub create_seconds: f64,
    pub pods_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

async fn run_limited<F, Fut>(n: usize, concurrency: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter((0..n).map(f))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Creates namespace `name` unless it exists; the namespaces API, to delete it after.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> anyhow::Result<Api<Namespace>> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) | Err(kube::Error::Api(kube::core::ErrorResponse { code: 409, .. })) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(namespaces)
}

pub async fn run(o: Opts) -> anyhow::Result<Report> {
    let client = capstan_client::client(Some(&o.kubeconfig)).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let existing = nodes
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    eprintln!(
        "creating {} nodes ({existing} exist)",
        o.nodes.saturating_sub(existing)
    );
    run_limited(o.nodes, o.concurrency, |i| {
        let nodes = nodes.clone();
        async move {
            let name = format!("bench-node-{i}");
            let res = json!({"cpu": "32", "memory": "256Gi", "pods": "110"});
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                    "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
                "status": {"capacity": res, "allocatable": res,
                    "conditions": [{"type": "Ready", "status": "True"}]},
            }))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await?;
    let namespaces = ensure_namespace(&client, &o.namespace).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &o.namespace);
    // Creation instants by pod name, and binding instants as the watch sees them.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let bound = bound.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut s =
                watcher::watcher(pods, watcher::Config::default().labels("bench=sched")).boxed();
            while let Ok(Some(ev)) = s.try_next().await {
                let objs = match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                    _ => vec![],
                };
                let now = Instant::now();
                for p in objs {
                    let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    if let (true, Some(name)) = (on_node, p.metadata.name) {
                        bound.lock().entry(name).or_insert(now);
                    }
                }
            }
        })
    };
    let start = Instant::now();
    eprintln!("creating {} pods, {} at a time", o.pods, o.concurrency);
    run_limited(o.pods, o.concurrency, |i| {
        let pods = pods.clone();
        let created = created.clone();
        async move {
            let name = format!("pod-{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"bench": "sched"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
            }))?;
            created.lock().insert(name, Instant::now());
            pods.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    let create_seconds = start.elapsed().as_secs_f64();
    eprintln!("created in {create_seconds:.1} s; waiting for bindings");
    let deadline = Instant::now() + o.timeout;
    loop {
        let n = bound.lock().len();
        if n >= o.pods || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let created = created.lock().clone();
    let bound = bound.lock().clone();
    let mut hist = crate::apipods::histogram()?;
    let mut last = start;
    for (name, at) in &bound {
        if let Some(c) = created.get(name) {
            hist.record(at.saturating_duration_since(*c).as_micros().max(1) as u64)?;
            last = last.max(*at);
        }
    }
    let secs = last.duration_since(start).as_secs_f64().max(1e-9);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        nodes: o.nodes,
        pods: o.pods,
        bound: bound.len(),
        create_seconds,
        pods_per_second: bound.len() as f64 / secs,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    };
    // Leave the cluster as it was for the next run.
    let _ = namespaces
        .delete(&o.namespace, &DeleteParams::default())
        .await;
    Ok(report)
}
