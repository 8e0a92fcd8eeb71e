//! `capstan-bench pod-startup`: pod startup latency on a real node, as upstream's
//! density test measures it for its SLO (p99 of create-to-running under 5 s, images
//! already on the node): creates pods of a local image, `concurrency` at a time, and
//! times each from its create being sent to a watch seeing it Running with every
//! container ready. Then deletes them and waits until they are gone, so the node is
//! left as it was. Talks only to the apiserver: any cluster can be measured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use parking_lot::Mutex;
use serde_json::json;

/// What to run.
pub struct Opts {
    pub kubeconfig: std::path::PathBuf,
    pub pods: usize,
    pub concurrency: usize,
    /// Creates per second at most (upstream's density test paces its creates too);
    /// `None`: as fast as `concurrency` allows, a burst.
    pub qps: Option<f64>,
    pub namespace: String,
    pub image: String,
    /// How long every pod may take to run before the run fails.
    pub timeout: Duration,
}

/// The outcome: create-to-running latencies.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub pods: usize,
    pub running: usize,
    /// From the first create sent to the last pod running.
    pub seconds: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

const LABEL: &str = "bench=startup";

/// Running, and every container ready: what upstream's startup latency waits for.
fn running(p: &Pod) -> bool {
    let Some(st) = &p.status else { return false };
    st.phase.as_deref() == Some("Running")
        && st
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

pub async fn run(o: Opts) -> anyhow::Result<Report> {
    let client = capstan_client::client(Some(&o.kubeconfig)).await?;
    crate::sched::ensure_namespace(&client, &o.namespace).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &o.namespace);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let up: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let up = up.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut s = watcher::watcher(pods, watcher::Config::default().labels(LABEL)).boxed();
            while let Ok(Some(ev)) = s.try_next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    if let (true, Some(name)) = (running(&p), p.metadata.name) {
                        up.lock().entry(name).or_insert_with(Instant::now);
                    }
                }
            }
        })
    };
    eprintln!(
        "creating {} pods of {}, {} at a time{}",
        o.pods,
        o.image,
        o.concurrency,
        o.qps
            .map(|q| format!(", {q} per second"))
            .unwrap_or_default()
    );
    let start = Instant::now();
    let qps = o.qps.filter(|q| *q > 0.0);
    futures::stream::iter((0..o.pods).map(|i| {
        let pods = pods.clone();
        let sent = sent.clone();
        let image = o.image.clone();
        async move {
            if let Some(q) = qps {
                tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / q)).into())
                    .await;
            }
            let name = format!("startup-{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"bench": "startup"}},
                "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "3600"]}]},
            }))?;
            sent.lock().insert(name, Instant::now());
            pods.create(&PostParams::default(), &pod).await?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(o.concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    eprintln!(
        "created in {:.1} s; waiting for them to run",
        start.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + o.timeout;
    while up.lock().len() < o.pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    watch.abort();
    let mut h = crate::apipods::histogram()?;
    let (sent, up) = (sent.lock().clone(), up.lock().clone());
    for (name, at) in &up {
        if let Some(t) = sent.get(name) {
            h.record(at.saturating_duration_since(*t).as_micros().max(1) as u64)?;
        }
    }
    eprintln!("deleting the pods");
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(LABEL),
    )
    .await?;
    let gone_by = Instant::now() + Duration::from_secs(120);
    while Instant::now() < gone_by {
        if pods
            .list(&ListParams::default().labels(LABEL))
            .await?
            .items
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        pods: o.pods,
        running: up.len(),
        seconds,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
    };
    anyhow::ensure!(
        report.running == o.pods,
        "only {} of {} pods ran within {:?}",
        report.running,
        o.pods,
        o.timeout
    );
    Ok(report)
}
