//! The running scheduler: watches feeding the cache and queue, the scheduling loop,
//! asynchronous binding, and what happens when a pod fits nowhere (event, PodScheduled
//! condition, backoff).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use parking_lot::Mutex;
use rand::SeedableRng;
use tokio::sync::Notify;

use crate::cache::Cache;
use crate::events::{PodEvent, Recorder};
use crate::framework::{self, ScheduleError};
use crate::metrics;
use crate::queue::Queue;
use crate::types::{key, NodeSpec, PodInfo};
use crate::{Config, Error, SCHEDULER_NAME};
use capstan_client::leader::Elector;

#[derive(Default)]
struct State {
    cache: Cache,
    queue: Queue,
    nodes_synced: bool,
    pods_synced: bool,
    namespaces_synced: bool,
    /// Round-robin start of the feasible-node search.
    next_start: usize,
    /// Keys seen during a watch (re)list, to drop what the relist no longer has.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
    relist_namespaces: Option<HashSet<String>>,
}

/// Bindings in flight at most. Deciding never waits for them (the pod is assumed
/// first), but a burst of thousands must not open thousands of apiserver connections.
const MAX_BINDS_IN_FLIGHT: usize = 256;

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    bind_slots: tokio::sync::Semaphore,
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the scheduler until `shutdown` resolves (Ok) or leadership is lost (Err).
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let client = capstan_client::client_as(cfg.kubeconfig.as_deref(), "kube-scheduler").await?;
    let identity = cfg
        .election
        .as_ref()
        .map(|e| e.identity.clone())
        .unwrap_or_else(capstan_client::identity);
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        bind_slots: tokio::sync::Semaphore::new(MAX_BINDS_IN_FLIGHT),
        recorder: Recorder::start(client.clone(), identity.clone()),
        client: client.clone(),
    });
    // Caches fill before leadership is sought, so a standby that takes over schedules
    // at once (as upstream's informers start before its election).
    let watches = tokio::spawn(watch_nodes(shared.clone()));
    let pod_watch = tokio::spawn(watch_pods(shared.clone()));
    let ns_watch = tokio::spawn(watch_namespaces(shared.clone()));
    let serving = cfg.serve.map(crate::serve::serve);
    let result = async {
        match serving {
            // Health and metrics answer whether or not this instance leads.
            Some(serving) => tokio::select! {
                r = serving => r,
                r = run_elected(cfg, shared, shutdown) => r,
            },
            None => run_elected(cfg, shared, shutdown).await,
        }
    }
    .await;
    watches.abort();
    pod_watch.abort();
    ns_watch.abort();
    result
}

async fn run_elected(
    cfg: Config,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let Some(election) = cfg.election.clone() else {
        tokio::select! {
            _ = schedule_loop(shared) => {}
            _ = &mut shutdown => {}
        }
        return Ok(());
    };
    let mut elector = Elector::new(shared.client.clone(), election);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = &mut shutdown => return Ok(()),
    }
    let outcome = tokio::select! {
        _ = schedule_loop(shared) => Ok(()),
        lost = elector.hold() => Err(Error::LeaderLost(lost)),
        _ = &mut shutdown => Ok(()),
    };
    if outcome.is_ok() {
        elector.release().await;
    }
    outcome
}

async fn watch_nodes(shared: Arc<Shared>) {
    let mut events = watch_events(Api::<Node>::all(shared.client.clone()), "node");
    while let Some(ev) = events.next().await {
        let mut st = shared.state.lock();
        let now = Instant::now();
        match ev {
            Event::Init => st.relist_nodes = Some(HashSet::new()),
            Event::InitApply(n) | Event::Apply(n) => {
                let spec = NodeSpec::new(Arc::new(n));
                if let Some(seen) = st.relist_nodes.as_mut() {
                    seen.insert(spec.name.clone());
                }
                // Status heartbeats change nothing a filter reads; only a new node or
                // new labels, taints, room or cordon can make a waiting pod fit.
                let relevant = st
                    .cache
                    .nodes
                    .get(&spec.name)
                    .and_then(|n| n.spec.as_ref())
                    .is_none_or(|old| !old.same_for_scheduling(&spec));
                st.cache.set_node(spec);
                if relevant {
                    st.queue.cluster_changed(now);
                }
            }
            Event::Delete(n) => {
                st.cache
                    .remove_node(n.metadata.name.as_deref().unwrap_or(""));
            }
            Event::InitDone => {
                if let Some(seen) = st.relist_nodes.take() {
                    let gone: Vec<String> = st
                        .cache
                        .node_names()
                        .iter()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for n in gone {
                        st.cache.remove_node(&n);
                    }
                }
                st.nodes_synced = true;
                st.queue.cluster_changed(now);
            }
        }
        drop(st);
        shared.wake.notify_one();
    }
}

/// The events of a watch of `api`, for as long as the process runs: a failure is logged
/// and the watch resumes (kube's default backoff), as the scheduler's informers do.
fn watch_events<K>(api: Api<K>, what: &'static str) -> futures::stream::BoxStream<'static, Event<K>>
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |r| async move {
            r.map_err(|e| tracing::warn!(error = %e, "{what} watch failed; retrying"))
                .ok()
        })
        .boxed()
}

/// Namespace labels, which affinity terms with a namespaceSelector match against.
async fn watch_namespaces(shared: Arc<Shared>) {
    let mut events = watch_events(Api::<Namespace>::all(shared.client.clone()), "namespace");
    while let Some(ev) = events.next().await {
        let mut st = shared.state.lock();
        let now = Instant::now();
        match ev {
            Event::Init => st.relist_namespaces = Some(HashSet::new()),
            Event::InitApply(ns) | Event::Apply(ns) => {
                let name = ns.metadata.name.unwrap_or_default();
                let labels = ns.metadata.labels.unwrap_or_default();
                if let Some(seen) = st.relist_namespaces.as_mut() {
                    seen.insert(name.clone());
                }
                if st.cache.namespaces.get(&name) != Some(&labels) {
                    st.cache.namespaces.insert(name, labels);
                    st.queue.cluster_changed(now);
                }
            }
            Event::Delete(ns) => {
                st.cache
                    .namespaces
                    .remove(ns.metadata.name.as_deref().unwrap_or(""));
            }
            Event::InitDone => {
                if let Some(seen) = st.relist_namespaces.take() {
                    st.cache.namespaces.retain(|n, _| seen.contains(n));
                }
                st.namespaces_synced = true;
            }
        }
        drop(st);
        shared.wake.notify_one();
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    let mut events = watch_events(Api::<Pod>::all(shared.client.clone()), "pod");
    while let Some(ev) = events.next().await {
        let mut st = shared.state.lock();
        match ev {
            Event::Init => st.relist_pods = Some(HashSet::new()),
            Event::InitApply(p) | Event::Apply(p) => {
                let bound = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some_and(|n| !n.is_empty());
                let info = PodInfo::new(Arc::new(p));
                let info = Arc::new(if bound { info.slim() } else { info });
                if let Some(seen) = st.relist_pods.as_mut() {
                    seen.insert(info.key());
                }
                on_pod(&mut st, info);
            }
            Event::Delete(p) => {
                let k = key(
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or(""),
                );
                on_pod_gone(&mut st, &k);
            }
            Event::InitDone => {
                if let Some(seen) = st.relist_pods.take() {
                    let mut gone: Vec<String> = st
                        .cache
                        .placed_keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    gone.extend(st.queue.keys().filter(|k| !seen.contains(*k)).cloned());
                    for k in gone {
                        on_pod_gone(&mut st, &k);
                    }
                }
                st.pods_synced = true;
            }
        }
        drop(st);
        shared.wake.notify_one();
    }
}

fn on_pod(st: &mut State, info: Arc<PodInfo>) {
    let k = info.key();
    let now = Instant::now();
    if !info.node_name.is_empty() {
        st.queue.remove(&k);
        if info.terminal {
            if st.cache.remove_pod(&k).is_some() {
                st.queue.cluster_changed(now);
            }
            return;
        }
        // A pod placed by someone else (or moved, or relabelled) may change what fits
        // for pods waiting; our own confirmed bindings change nothing.
        let relevant = match st.cache.placed_pod(&k) {
            None => true,
            Some((_, old)) => {
                old.node_name != info.node_name && !st.cache.is_assumed(&k)
                    || old.labels != info.labels
            }
        };
        let node = info.node_name.clone();
        st.cache.place(info, &node, false);
        if relevant {
            st.queue.cluster_changed(now);
        }
        return;
    }
    if st.cache.is_assumed(&k) {
        let same = st
            .cache
            .placed_pod(&k)
            .is_some_and(|(_, p)| p.uid == info.uid);
        if same {
            // Our binding is in flight or the watch has not caught up with it.
            return;
        }
        // A new pod under the old one's name: the assumption was about the old one.
        st.cache.remove_pod(&k);
    }
    if info.scheduler_name != SCHEDULER_NAME || info.terminating || info.terminal || info.gated {
        st.queue.remove(&k);
        return;
    }
    st.queue.upsert(info, now);
}

fn on_pod_gone(st: &mut State, k: &str) {
    st.queue.remove(k);
    if st.cache.remove_pod(k).is_some() {
        st.queue.cluster_changed(Instant::now());
    }
}

/// Upstream flushes unschedulable pods that waited too long every 30 s.
const FLUSH_EVERY: Duration = Duration::from_secs(30);

async fn schedule_loop(shared: Arc<Shared>) {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut last_flush = Instant::now();
    let mut last_gauges = Instant::now();
    loop {
        let now = Instant::now();
        let (popped, next) = {
            let mut st = shared.state.lock();
            if now - last_flush >= FLUSH_EVERY {
                st.queue.flush_stale_unschedulable(now);
                last_flush = now;
            }
            let popped = if st.nodes_synced && st.pods_synced && st.namespaces_synced {
                st.queue.pop(now)
            } else {
                None
            };
            // Counting walks the whole queue: once a second, not per pod.
            if now - last_gauges >= Duration::from_secs(1) {
                last_gauges = now;
                let (a, b, u, _) = st.queue.counts();
                metrics::PENDING_PODS
                    .with_label_values(&["active"])
                    .set(a as i64);
                metrics::PENDING_PODS
                    .with_label_values(&["backoff"])
                    .set(b as i64);
                metrics::PENDING_PODS
                    .with_label_values(&["unschedulable"])
                    .set(u as i64);
            }
            (popped, st.queue.next_backoff())
        };
        match popped {
            Some(pod) => {
                schedule_one(&shared, pod, &mut rng);
                // Deciding never awaits: yield so that the lease renewal and shutdown
                // beside this loop run even while the queue stays full.
                tokio::task::yield_now().await;
            }
            None => {
                let until = next.unwrap_or(now + FLUSH_EVERY).min(now + FLUSH_EVERY);
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
        }
    }
}

fn schedule_one(shared: &Arc<Shared>, pod: Arc<PodInfo>, rng: &mut rand::rngs::StdRng) {
    let started = Instant::now();
    let k = pod.key();
    let mut st = shared.state.lock();
    let st = &mut *st;
    if !st.queue.contains(&k) {
        // Deleted, or bound by someone else, between the pop and now.
        return;
    }
    let result = framework::schedule(&mut st.cache, &pod, &mut st.next_start, rng);
    match result {
        Ok(node) => {
            st.cache.place(pod.clone(), &node, true);
            st.queue.done(&k);
            tracing::debug!(namespace = %pod.namespace, pod = %pod.name, node = %node, "assumed");
            tokio::spawn(bind(shared.clone(), pod, node, started));
        }
        Err(err) => {
            st.queue.unschedulable(&k, Instant::now());
            metrics::SCHEDULE_ATTEMPTS
                .with_label_values(&["unschedulable", SCHEDULER_NAME])
                .inc();
            metrics::ATTEMPT_DURATION
                .with_label_values(&["unschedulable", SCHEDULER_NAME])
                .observe(started.elapsed().as_secs_f64());
            let msg = err.to_string();
            tracing::info!(namespace = %pod.namespace, pod = %pod.name, reason = %msg, "unable to schedule pod");
            // Both are rejections (upstream's "no nodes" is UnschedulableAndUnresolvable).
            let reason = match err {
                ScheduleError::NoNodes | ScheduleError::Fit(_) => "Unschedulable",
            };
            tokio::spawn(report_failure(shared.clone(), pod, reason, msg));
        }
    }
}

async fn bind(shared: Arc<Shared>, pod: Arc<PodInfo>, node: String, started: Instant) {
    // Never closed, so acquiring only waits.
    let _slot = shared.bind_slots.acquire().await;
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let body = match serde_json::to_vec(&binding) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "encoding a binding");
            return;
        }
    };
    let res = api
        .create_subresource::<serde_json::Value>("binding", &pod.name, &PostParams::default(), body)
        .await;
    match res {
        Ok(_) => {
            metrics::SCHEDULE_ATTEMPTS
                .with_label_values(&["scheduled", SCHEDULER_NAME])
                .inc();
            metrics::ATTEMPT_DURATION
                .with_label_values(&["scheduled", SCHEDULER_NAME])
                .observe(started.elapsed().as_secs_f64());
            shared.recorder.record(PodEvent::about(
                &pod,
                false,
                "Scheduled",
                "Binding",
                format!(
                    "Successfully assigned {}/{} to {}",
                    pod.namespace, pod.name, node
                ),
            ));
        }
        Err(e) => {
            metrics::SCHEDULE_ATTEMPTS
                .with_label_values(&["error", SCHEDULER_NAME])
                .inc();
            let k = pod.key();
            let code = match &e {
                kube::Error::Api(ae) => ae.code,
                _ => 0,
            };
            tracing::warn!(namespace = %pod.namespace, pod = %pod.name, node = %node, error = %e, "binding failed");
            {
                let mut st = shared.state.lock();
                if st.cache.is_assumed(&k) {
                    st.cache.remove_pod(&k);
                }
                // 404: the pod is gone; 409: it is bound already (the watch will
                // place it). Anything else: try again after backoff.
                if code != 404 && code != 409 {
                    st.queue.error(pod.clone(), Instant::now());
                }
                st.queue.cluster_changed(Instant::now());
            }
            shared.wake.notify_one();
            if code != 404 && code != 409 {
                shared.recorder.record(PodEvent::about(
                    &pod,
                    true,
                    "FailedScheduling",
                    "Scheduling",
                    format!("Binding rejected: {e}"),
                ));
            }
        }
    }
}

/// The FailedScheduling event and the pod's PodScheduled=False condition (written only
/// when it changes, as upstream, so retries do not rewrite the pod every time).
async fn report_failure(shared: Arc<Shared>, pod: Arc<PodInfo>, reason: &'static str, msg: String) {
    shared.recorder.record(PodEvent::about(
        &pod,
        true,
        "FailedScheduling",
        "Scheduling",
        msg.clone(),
    ));
    let current = pod
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(msg.as_str())
    }) {
        return;
    }
    let patch = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": msg,
                "lastProbeTime": null,
                "lastTransitionTime": Time(Utc::now()),
            }]
        }
    });
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &pod.namespace);
    if let Err(e) = api
        .patch_status(
            &pod.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "failed to update the PodScheduled condition");
    }
}
