//! capstan's controller-manager: upstream's controllers (ReplicaSet, Deployment, garbage
//! collector) on kube-rs runtime watchers, reflectors and `Controller`s, behind leader
//! election. It is a client of the apiserver only and knows nothing of the store.

pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod serviceaccount;
pub mod servicelb;
pub mod util;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};

/// Errors of the controller-manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the apiserver failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// No client for the apiserver could be made from the kubeconfig.
    #[error(transparent)]
    Connect(#[from] capstan_client::ClientError),
    /// `--controllers` named a controller that does not exist.
    #[error("unknown controller {0:?} in --controllers")]
    UnknownController(String),
    /// This process was the leader and lost the lease; it must stop acting.
    #[error("leaderelection lost: {0}")]
    LeaderLost(capstan_client::leader::Lost),
    /// A setting (a key or CA file) is unusable.
    #[error("{0}")]
    Config(String),
    /// A sync did not reach its goal (it is retried).
    #[error("{0}")]
    Sync(String),
    /// The health and metrics endpoint could not be served.
    #[error(transparent)]
    Serve(#[from] capstan_client::serve::ServeError),
}

/// The controllers this manager runs (upstream's names for `--controllers`).
pub const CONTROLLERS: &[&str] = &[
    "replicaset",
    "deployment",
    "job",
    "garbagecollector",
    "namespace",
    "endpoint",
    "endpointslice",
    "nodelifecycle",
    "serviceaccount",
    "serviceaccount-token",
    "service-lb-controller",
];

/// kube-controller-manager's settings that apply here.
#[derive(Clone, Debug)]
pub struct Config {
    /// Kubeconfig file (None: the environment's, as kubectl finds it).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Leader election, or None to act at once.
    pub election: Option<capstan_client::leader::LeaderConfig>,
    /// `--controllers`: `*`, names, `-name` to disable.
    pub controllers: Vec<String>,
    /// `--node-monitor-period` and `--node-monitor-grace-period`.
    pub node_monitor: nodelifecycle::Settings,
    /// `--service-account-private-key-file` and `--root-ca-file`: without both, the
    /// token controller does not run.
    pub service_account_key: Option<std::path::PathBuf>,
    pub root_ca: Option<std::path::PathBuf>,
    /// `--service-lb-pool`: the addresses LoadBalancer Services get; without it the
    /// service load-balancer controller does not run.
    pub service_lb_pool: Option<servicelb::Pool>,
    /// `--bind-address` and `--secure-port` (10257): `/healthz`, `/livez`, `/readyz`
    /// and `/metrics` over HTTPS; `None`: not served.
    pub serve: Option<std::net::SocketAddr>,
}

impl Config {
    /// Whether `--controllers` enables `name` (upstream's rules: a `-name` disables it,
    /// a `name` enables it, `*` enables the defaults).
    pub fn enabled(&self, name: &str) -> bool {
        let mut star = false;
        for c in &self.controllers {
            if c == name {
                return true;
            }
            if c.strip_prefix('-') == Some(name) {
                return false;
            }
            star |= c == "*";
        }
        star
    }
}

/// Runs the controller-manager until it fails or loses leadership.
pub async fn run(cfg: Config) -> Result<(), Error> {
    for c in &cfg.controllers {
        let name = c.trim_start_matches('-');
        if name != "*" && !CONTROLLERS.contains(&name) {
            return Err(Error::UnknownController(c.clone()));
        }
    }
    let client =
        capstan_client::client_as(cfg.kubeconfig.as_deref(), "kube-controller-manager").await?;
    // Health and metrics answer whether or not this instance leads, as upstream's.
    let serving = match cfg.serve {
        Some(addr) => {
            let ep = capstan_client::serve::Endpoint::new(addr, true)
                .with_metrics(|| capstan_client::metrics::render(&[]));
            Some(AbortOnDrop(tokio::spawn(ep.bind().await?)))
        }
        None => None,
    };
    let _serving = serving;
    let mut elector = cfg
        .election
        .clone()
        .map(|e| capstan_client::leader::Elector::new(client.clone(), e));
    if let Some(e) = elector.as_mut() {
        e.acquire().await;
    }
    let controllers = start(client, &cfg);
    match elector.as_mut() {
        Some(e) => {
            let lost = e.hold().await;
            controllers.abort();
            Err(Error::LeaderLost(lost))
        }
        None => {
            let _ = controllers.await;
            Ok(())
        }
    }
}

/// Stops the endpoint's task when the controller-manager stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Objects a shared cache changed (applied or deleted), delivered after the change.
pub type Events<K> = tokio::sync::mpsc::UnboundedReceiver<Arc<K>>;

/// A receiver as a stream.
pub fn stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// How often every object is reconciled again regardless of events: deletions that
/// happened while a watch was reconnecting are only noticed by a relist, and the
/// relist replaces a cache without telling which objects went away.
pub const RESYNC: Duration = Duration::from_secs(30);

/// A tick every [`RESYNC`], for `reconcile_all_on`.
pub fn resync() -> impl futures::Stream<Item = ()> + Send + Sync {
    futures::stream::unfold((), |()| async {
        tokio::time::sleep(RESYNC).await;
        Some(((), ()))
    })
}

/// A shared cache of `K` (one watch), and a task that keeps it and tells each of
/// `subscribers` about every object it applies or deletes.
fn cache<K>(
    tasks: &mut tokio::task::JoinSet<()>,
    api: Api<K>,
    subscribers: usize,
) -> (reflector::Store<K>, Vec<Events<K>>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..subscribers)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    tasks.spawn(
        reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .for_each(move |o| {
                if let Ok(o) = o {
                    let o = Arc::new(o);
                    for tx in &txs {
                        let _ = tx.send(o.clone());
                    }
                }
                futures::future::ready(())
            }),
    );
    (store, rxs)
}

/// Starts the enabled controllers on shared caches of pods and ReplicaSets.
fn start(client: Client, cfg: &Config) -> tokio::task::JoinHandle<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let (pods, mut pod_events) = cache(&mut tasks, Api::<Pod>::all(client.clone()), 4);
    let (rss, mut rs_events) = cache(&mut tasks, Api::<ReplicaSet>::all(client.clone()), 1);
    let enabled: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| cfg.enabled(c))
        .collect();
    tracing::info!(controllers = ?enabled, "starting controllers");
    {
        let (pods, rss) = (pods.clone(), rss.clone());
        let client = client.clone();
        let enabled = enabled.clone();
        let node_monitor = cfg.node_monitor.clone();
        let (sa_key, root_ca) = (cfg.service_account_key.clone(), cfg.root_ca.clone());
        let lb_pool = cfg.service_lb_pool.clone();
        tasks.spawn(async move {
            // Nothing acts on a partial picture of the cluster.
            let _ = pods.wait_until_ready().await;
            let _ = rss.wait_until_ready().await;
            let mut inner = tokio::task::JoinSet::new();
            if enabled.contains(&"replicaset") {
                if let Some(ev) = pod_events.pop() {
                    inner.spawn(replicaset::run(client.clone(), pods.clone(), ev));
                }
            }
            if enabled.contains(&"deployment") {
                if let (Some(ev), Some(pev)) = (rs_events.pop(), pod_events.pop()) {
                    inner.spawn(deployment::run(
                        client.clone(),
                        rss.clone(),
                        pods.clone(),
                        ev,
                        pev,
                    ));
                }
            }
            if enabled.contains(&"job") {
                if let Some(ev) = pod_events.pop() {
                    inner.spawn(job::run(client.clone(), pods.clone(), ev));
                }
            }
            // One reconcile writes both the Endpoints and the EndpointSlice.
            if enabled.contains(&"endpoint") || enabled.contains(&"endpointslice") {
                if let Some(ev) = pod_events.pop() {
                    inner.spawn(endpoints::run(client.clone(), pods.clone(), ev));
                }
            }
            if enabled.contains(&"namespace") {
                inner.spawn(namespace::run(client.clone()));
            }
            if enabled.contains(&"garbagecollector") {
                inner.spawn(gc::run(client.clone()));
            }
            if enabled.contains(&"serviceaccount-token") {
                match (&sa_key, &root_ca) {
                    (Some(k), Some(ca)) => match serviceaccount::tokens::Signer::load(k, ca) {
                        Ok(signer) => {
                            inner.spawn(serviceaccount::tokens::run(client.clone(), signer));
                        }
                        Err(e) => tracing::error!(error = %e, "token controller not started"),
                    },
                    _ => tracing::warn!("no --service-account-private-key-file and --root-ca-file; the token controller does not run"),
                }
            }
            if enabled.contains(&"serviceaccount") {
                inner.spawn(serviceaccount::run(client.clone()));
            }
            if enabled.contains(&"service-lb-controller") {
                match &lb_pool {
                    Some(pool) => {
                        inner.spawn(servicelb::run(client.clone(), pool.clone()));
                    }
                    None => tracing::info!("no --service-lb-pool; LoadBalancer Services get no address"),
                }
            }
            if enabled.contains(&"nodelifecycle") {
                inner.spawn(nodelifecycle::run(client.clone(), node_monitor));
            }
            while inner.join_next().await.is_some() {}
        });
    }
    tokio::spawn(async move {
        while tasks.join_next().await.is_some() {}
        // Keep the function's shape obvious to readers: everything above runs until
        // the process stops or leadership is lost.
        tokio::time::sleep(Duration::ZERO).await;
    })
}
