//! `capstan-bench apiserver-pods`: the apiserver with many pods stored. Creates pods as
//! fast as the apiserver takes them (with a watch timing each one's ADDED event from
//! when its create was sent), patches every pod's status, then lists them all, paged
//! as kubectl pages (500 at a time) and in one unpaged list (served from the watch
//! cache). Reports throughput and latency percentiles of each; the apiserver's memory
//! is read by `benches/run-apiserver.sh`, which starts the processes. Talks only to the
//! apiserver, so any apiserver can be measured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use parking_lot::Mutex;
use serde_json::json;

/// What to run.
pub struct Opts {
    pub kubeconfig: std::path::PathBuf,
    pub pods: usize,
    pub concurrency: usize,
    pub namespace: String,
}

/// One phase's figures.
#[derive(Debug, serde::Serialize)]
pub struct Phase {
    pub ops: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The outcome.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub create: Phase,
    /// From a create being sent to its ADDED event on a watch.
    pub watch_p50_ms: f64,
    pub watch_p99_ms: f64,
    pub watch_seen: usize,
    pub status_update: Phase,
    /// Every pod in pages of 500 (what `kubectl get pods` does).
    pub list_paged_seconds: f64,
    /// Every pod in one unpaged list.
    pub list_all_seconds: f64,
    pub listed: usize,
}

/// A latency histogram in microseconds, up to an hour, at three significant digits:
/// what the Kubernetes-level benchmarks (apiserver, scheduler, pod startup) record.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// Runs `f(0..n)` with `concurrency` in flight; the phase's figures, from each call's
/// own latency.
async fn phase<F, Fut>(n: usize, concurrency: usize, f: F) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let hist = Arc::new(Mutex::new(histogram()?));
    let start = Instant::now();
    futures::stream::iter((0..n).map(|i| {
        let hist = hist.clone();
        let call = f(i);
        async move {
            let t = Instant::now();
            call.await?;
            let us = t.elapsed().as_micros().max(1) as u64;
            hist.lock().record(us)?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    let seconds = start.elapsed().as_secs_f64();
    let h = hist.lock();
    Ok(Phase {
        ops: n,
        seconds,
        per_second: n as f64 / seconds.max(1e-9),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

pub async fn run(o: Opts) -> anyhow::Result<Report> {
    let client = capstan_client::client(Some(&o.kubeconfig)).await?;
    let namespaces = crate::sched::ensure_namespace(&client, &o.namespace).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &o.namespace);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut s =
                watcher::watcher(pods, watcher::Config::default().labels("bench=api")).boxed();
            while let Ok(Some(ev)) = s.try_next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    if let Some(name) = p.metadata.name {
                        seen.lock().entry(name).or_insert_with(Instant::now);
                    }
                }
            }
        })
    };
    eprintln!("creating {} pods, {} at a time", o.pods, o.concurrency);
    let create = phase(o.pods, o.concurrency, |i| {
        let pods = pods.clone();
        let sent = sent.clone();
        async move {
            let name = format!("pod-{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"bench": "api", "shard": (i % 16).to_string()}},
                "spec": {"nodeName": format!("node-{}", i % 100),
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
            }))?;
            sent.lock().insert(name, Instant::now());
            pods.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    eprintln!("created in {:.1} s; waiting for the watch", create.seconds);
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().len() < o.pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let mut wh = histogram()?;
    let (sent, seen) = (sent.lock().clone(), seen.lock().clone());
    for (name, at) in &seen {
        if let Some(s) = sent.get(name) {
            wh.record(at.saturating_duration_since(*s).as_micros().max(1) as u64)?;
        }
    }
    eprintln!("patching every pod's status");
    let status_update = phase(o.pods, o.concurrency, |i| {
        let pods = pods.clone();
        async move {
            let patch = json!({"status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)}});
            pods.patch_status(&format!("pod-{i}"), &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        }
    })
    .await?;
    eprintln!("listing");
    let t = Instant::now();
    let mut listed = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(c) = &token {
            lp = lp.continue_token(c);
        }
        let page = pods.list(&lp).await?;
        listed += page.items.len();
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    let list_paged_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let all = pods.list(&ListParams::default()).await?;
    let list_all_seconds = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        listed == o.pods && all.items.len() == o.pods,
        "listed {listed} paged and {} unpaged of {}",
        all.items.len(),
        o.pods
    );
    let report = Report {
        create,
        watch_p50_ms: wh.value_at_quantile(0.5) as f64 / 1000.0,
        watch_p99_ms: wh.value_at_quantile(0.99) as f64 / 1000.0,
        watch_seen: seen.len(),
        status_update,
        list_paged_seconds,
        list_all_seconds,
        listed,
    };
    let _ = namespaces
        .delete(&o.namespace, &DeleteParams::default())
        .await;
    Ok(report)
}
