//! The real kubelet: pods bound to this node run in containerd, driven over the CRI.
//!
//! The shape is upstream's: the node registers and heartbeats (shared with the
//! simulated mode, [`crate::registration`]); a watch of the pods with
//! `spec.nodeName=<node>` keeps the desired state; a relist every second (the PLEG's
//! period) reads every sandbox and container from the runtime, and each pod is synced
//! against it: sandbox first, then init containers in order, then the containers, with
//! restarts per `restartPolicy` under exponential back-off. The pod status is computed
//! from what the runtime reports ([`status`]) and written only when it changed. Pods
//! with a deletion timestamp are stopped with their grace period and then deleted for
//! good; sandboxes of pods gone from the API are removed.
//!
//! The node knows only two things: the apiserver (kube-rs) and the CRI socket.

pub mod backoff;
pub mod cri;
pub mod env;
pub mod events;
pub mod machine;
pub mod prober;
pub mod server;
pub mod spdy;
pub mod status;
pub mod stream;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use capstan_proto::cri as api;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::{json, Value};

use self::backoff::Backoff;
use self::cri::{Images, Runtime};
use self::env::FieldRefs;
use self::status::{Observed, PodView, Waiting};
use crate::registration::{self, Heartbeat, NodeSource};
use crate::NodeError;

/// The relist period (the PLEG's).
const RELIST: Duration = Duration::from_secs(1);
/// How long an image pull may take before it counts as failed (the kubelet's
/// `--runtime-request-timeout` default).
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// A real node agent.
#[derive(Clone, Debug)]
pub struct Config {
    pub kubeconfig: PathBuf,
    pub node_name: String,
    /// `--container-runtime-endpoint`.
    pub runtime_endpoint: String,
    /// `--node-ip`; by default the source address of the default route.
    pub node_ip: Option<IpAddr>,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    pub heartbeat: Heartbeat,
    /// `--cluster-dns`, `--cluster-domain` and the host's resolver (`--resolv-conf`).
    pub dns: cri::Dns,
    /// The kubelet's own state (`--root-dir`, `/var/lib/kubelet`): pod volumes.
    pub root_dir: PathBuf,
    /// Where container logs go (`/var/log/pods`; the kubelet's `podLogsDir`).
    pub pod_logs_dir: PathBuf,
    /// Image archives imported into the runtime's `k8s.io` namespace at start, with
    /// `ctr` (no registry may be reachable).
    pub image_archives: Vec<PathBuf>,
    /// The service proxy; `None` with `--disable-kube-proxy`.
    pub proxy: Option<ProxyOptions>,
    /// The address this agent serves cluster DNS on (port 53); `None`: it does not.
    pub dns_listen: Option<IpAddr>,
    /// The kubelet server's address and port (`--address`, `--port`).
    pub serve: std::net::SocketAddr,
    /// `--healthz-bind-address` and `--healthz-port` (127.0.0.1:10248): `/healthz`
    /// over plain HTTP; `None` (port 0): not served.
    pub healthz: Option<std::net::SocketAddr>,
    /// `--sync-frequency` (1m): how often a running pod's configMap, secret,
    /// downwardAPI and projected volumes are written again from the API, so containers
    /// see changes without restarting.
    pub sync_frequency: Duration,
}

/// The service proxy's flags.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The nftables table (`ip` family) the proxy owns.
    pub table: String,
    /// kube-proxy's `--cluster-cidr`.
    pub cluster_cidr: Option<(std::net::Ipv4Addr, u8)>,
    /// kube-proxy's `--healthz-bind-address` (0.0.0.0:10256; `None`: not served).
    pub healthz: Option<std::net::SocketAddr>,
    /// kube-proxy's `--metrics-bind-address` (127.0.0.1:10249; `None`: not served).
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            table: "capstan".into(),
            cluster_cidr: None,
            healthz: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 10256))),
            metrics: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 10249))),
        }
    }
}

/// The kubelet's memory of one pod between syncs.
#[derive(Default)]
struct PodState {
    /// The status last written (so an unchanged one is not written again).
    written: Option<Value>,
    /// Waiting reasons decided on (image errors, back-off), by container name.
    waiting: HashMap<String, Waiting>,
    /// When the pod's configMap, secret, downwardAPI and projected volumes were last
    /// written (they are written again every `--sync-frequency`).
    volumes_written: Option<std::time::Instant>,
}

struct Kubelet {
    cfg: Config,
    client: kube::Client,
    runtime: Runtime,
    images: Images,
    runtime_name: String,
    host_ip: String,
    /// What a `resourceFieldRef` to an unset limit reads (the node's capacity).
    allocatable: env::Allocatable,
    /// The pods bound to this node, by uid, as last seen from the watch.
    pods: Mutex<HashMap<String, Pod>>,
    state: Mutex<HashMap<String, PodState>>,
    backoff: Mutex<Backoff>,
    /// Pods being stopped for deletion (in their own task).
    terminating: Mutex<HashSet<String>>,
    /// Pods whose sync task is running.
    syncing: Mutex<HashSet<String>>,
    prober: Arc<prober::Prober>,
    events: Arc<events::Recorder>,
    /// Woken by the pod watch so a new pod does not wait for the next relist.
    wake: tokio::sync::Notify,
    /// Set once the watch's first list is in: until then every sandbox would look
    /// like an orphan, and a restarted agent would kill the pods it should adopt.
    listed: tokio::sync::watch::Sender<bool>,
    /// When each pod not yet running was first seen, for `kubelet_pod_start_duration_seconds`.
    first_seen: Mutex<HashMap<String, std::time::Instant>>,
    /// When the last relist finished: the `syncloop` health check.
    last_relist: Mutex<std::time::Instant>,
}

/// What the relist read from the runtime, grouped by pod uid.
#[derive(Default)]
struct Relist {
    sandboxes: HashMap<String, Vec<api::PodSandbox>>,
    containers: HashMap<String, Vec<api::Container>>,
}

fn label<'a>(labels: &'a HashMap<String, String>, key: &str) -> &'a str {
    labels.get(key).map(String::as_str).unwrap_or_default()
}

/// Imports image archives into the runtime's `k8s.io` namespace with `ctr`.
fn import_images(endpoint: &str, archives: &[PathBuf]) -> Result<(), NodeError> {
    let address = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    for a in archives {
        let out = std::process::Command::new("ctr")
            .args(["--address", address, "-n", "k8s.io", "images", "import"])
            .arg(a)
            .output()
            .map_err(|e| NodeError::ImageImport(format!("{}: ctr: {e}", a.display())))?;
        if !out.status.success() {
            return Err(NodeError::ImageImport(format!(
                "{}: {}",
                a.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        tracing::info!(archive = %a.display(), "images imported");
    }
    Ok(())
}

/// Runs the kubelet until the process is stopped.
pub async fn run(cfg: Config) -> Result<(), NodeError> {
    let client = capstan_client::client_as(Some(&cfg.kubeconfig), "kubelet").await?;
    let (mut runtime, images) = cri::connect(&cfg.runtime_endpoint)?;
    // The runtime must answer before the node says it is Ready.
    let version = loop {
        match runtime.version(api::VersionRequest::default()).await {
            Ok(v) => break v.into_inner(),
            Err(e) => {
                tracing::warn!(endpoint = %cfg.runtime_endpoint, error = %e, "container runtime not ready");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(runtime = %version.runtime_name, version = %version.runtime_version,
                   api = %version.runtime_api_version, "container runtime");
    let archives = cfg.image_archives.clone();
    let endpoint = cfg.runtime_endpoint.clone();
    tokio::task::spawn_blocking(move || import_images(&endpoint, &archives))
        .await
        .map_err(|e| NodeError::ImageImport(e.to_string()))??;
    let node_ip = cfg.node_ip.unwrap_or_else(machine::default_node_ip);
    let machine: Arc<dyn NodeSource> = Arc::new(machine::Machine {
        labels: cfg.labels.clone(),
        taints: cfg.taints.clone(),
        max_pods: cfg.max_pods,
        node_ip,
        runtime_version: format!("{}://{}", version.runtime_name, version.runtime_version),
        kubelet_port: cfg.serve.port(),
    });
    // Bound before the node registers, so the port it advertises is served.
    let ca = kube::config::Kubeconfig::read_from(&cfg.kubeconfig)
        .map_err(|e| NodeError::Serve(format!("{}: {e}", cfg.kubeconfig.display())))?;
    let ca = kube::Config::from_custom_kubeconfig(ca, &Default::default())
        .await
        .map_err(|e| NodeError::Serve(format!("{}: {e}", cfg.kubeconfig.display())))?
        .root_cert
        .unwrap_or_default();
    let tls = server::tls_config(&ca, &cfg.node_name, node_ip)?;
    // A port already taken (another kubelet, or several `capstan server`s on one
    // machine) costs this node its logs and exec, not its pods.
    let listener = match server::bind(cfg.serve).await {
        Ok(l) => {
            tracing::info!(address = %cfg.serve, "kubelet server listening");
            Some(l)
        }
        Err(e) => {
            tracing::error!(error = %e, "kubelet server not started: logs and exec of this node's pods will fail");
            None
        }
    };
    let uid = registration::register(&client, machine.as_ref(), &cfg.node_name).await;
    tokio::spawn(registration::heartbeat(
        client.clone(),
        machine,
        cfg.heartbeat,
        cfg.node_name.clone(),
        uid,
    ));
    let recorder = Arc::new(events::Recorder::new(client.clone(), cfg.node_name.clone()));
    let k = Arc::new(Kubelet {
        runtime_name: version.runtime_name,
        host_ip: node_ip.to_string(),
        allocatable: env::Allocatable {
            cpu_millis: std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000,
            memory_bytes: machine::memory_kib().saturating_mul(1024) as i64,
        },
        client: client.clone(),
        runtime: runtime.clone(),
        images,
        pods: Mutex::new(HashMap::new()),
        state: Mutex::new(HashMap::new()),
        backoff: Mutex::new(Backoff::default()),
        terminating: Mutex::new(HashSet::new()),
        syncing: Mutex::new(HashSet::new()),
        prober: Arc::new(prober::Prober::new(runtime.clone(), recorder.clone())),
        events: recorder,
        wake: tokio::sync::Notify::new(),
        listed: tokio::sync::watch::Sender::new(false),
        first_seen: Mutex::new(HashMap::new()),
        last_relist: Mutex::new(std::time::Instant::now()),
        cfg,
    });
    // The kubelet's healthz port: up as long as the sync loop turns (upstream's
    // `syncloop` check allows it a few minutes).
    if let Some(addr) = k.cfg.healthz {
        let weak = Arc::downgrade(&k);
        let ep = capstan_client::serve::Endpoint::new(addr, false).with_check(
            capstan_client::serve::Check::new("syncloop", move || {
                let Some(k) = weak.upgrade() else {
                    return Err("the kubelet stopped".into());
                };
                let last = k
                    .last_relist
                    .lock()
                    .map(|t| *t)
                    .map_err(|e| e.to_string())?;
                if last.elapsed() > Duration::from_secs(180) {
                    return Err(format!("sync loop took too long: {:?}", last.elapsed()));
                }
                Ok(())
            }),
        );
        match ep.bind().await {
            Ok(serving) => {
                tokio::spawn(serving);
            }
            Err(e) => tracing::error!(error = %e, "kubelet healthz server not started"),
        }
    }
    crate::metrics::NODE_NAME
        .with_label_values(&[&k.cfg.node_name])
        .set(1);
    tokio::spawn(k.clone().watch_pods());
    if let Some(l) = listener {
        tokio::spawn(server::serve(k.clone(), l, tls));
    }
    // Services are watched once for the proxy and DNS together.
    let snapshots = (k.cfg.proxy.is_some() || k.cfg.dns_listen.is_some())
        .then(|| crate::services::spawn(client.clone()));
    if let (Some(listen), Some(rx)) = (k.cfg.dns_listen, &snapshots) {
        let listen = std::net::SocketAddr::new(listen, 53);
        let cfg = crate::dns::Config {
            listen,
            domain: k
                .cfg
                .dns
                .cluster_domain
                .trim_end_matches('.')
                .to_lowercase(),
            upstreams: crate::dns::Config::upstreams_from(&k.cfg.dns.host_servers, listen),
        };
        tokio::spawn(crate::dns::run(cfg, rx.clone()));
    }
    let proxy = async {
        match (&k.cfg.proxy, snapshots) {
            (Some(opts), Some(rx)) => {
                let mut cfg = crate::proxy::Config::new(&k.cfg.node_name, node_ip);
                cfg.rules.table = opts.table.clone();
                cfg.rules.cluster_cidr = opts.cluster_cidr;
                let _serving = proxy_endpoints(opts, &cfg).await;
                crate::proxy::run(cfg, rx).await
            }
            _ => std::future::pending().await,
        }
    };
    // The proxy runs inside the agent's future, so stopping the agent (dropping it)
    // removes the proxy's table.
    tokio::select! {
        () = k.sync_loop() => Ok(()),
        r = proxy => r.map_err(NodeError::Proxy),
    }
}

/// Stops a spawned endpoint when the agent stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// kube-proxy's two ports: `/healthz` and `/livez` (its JSON, 503 when rules are
/// overdue) on `--healthz-bind-address`, `/metrics` on `--metrics-bind-address`. A port
/// that cannot be bound is logged and costs only that endpoint.
async fn proxy_endpoints(opts: &ProxyOptions, cfg: &crate::proxy::Config) -> Vec<AbortOnDrop> {
    use capstan_client::serve::{Endpoint, Reply};
    let mut serving = Vec::new();
    let timeout = cfg.sync_period * 2;
    let health = cfg.health.clone();
    let custom: capstan_client::serve::Custom = Arc::new(move |path: &str| {
        if !matches!(path, "/healthz" | "/livez") {
            return None;
        }
        let (healthy, body) = health.report(timeout);
        Some(Reply {
            code: if healthy {
                hyper::StatusCode::OK
            } else {
                hyper::StatusCode::SERVICE_UNAVAILABLE
            },
            content_type: "application/json",
            body,
        })
    });
    let mut endpoints = Vec::new();
    if let Some(addr) = opts.healthz {
        let mut ep = Endpoint::new(addr, false);
        ep.custom = Some(custom);
        endpoints.push(ep);
    }
    if let Some(addr) = opts.metrics {
        endpoints.push(Endpoint::new(addr, false).with_metrics(crate::metrics::render_proxy));
    }
    for ep in endpoints {
        match ep.bind().await {
            Ok(f) => serving.push(AbortOnDrop(tokio::spawn(f))),
            Err(e) => tracing::error!(error = %e, "kube-proxy endpoint not started"),
        }
    }
    serving
}

impl Kubelet {
    /// Keeps `pods` in step with the API: the pods bound to this node.
    async fn watch_pods(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let wc =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.node_name));
        let mut events = std::pin::pin!(watcher(api, wc).default_backoff());
        let mut fresh: Option<HashMap<String, Pod>> = None;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Init) => fresh = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(p)) => {
                    self.saw(&p);
                    if let (Some(f), Some(uid)) = (fresh.as_mut(), p.metadata.uid.clone()) {
                        f.insert(uid, p);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let (Some(f), Ok(mut pods)) = (fresh.take(), self.pods.lock()) {
                        *pods = f;
                    }
                    self.listed.send_replace(true);
                }
                Ok(watcher::Event::Apply(p)) => {
                    self.saw(&p);
                    if let (Some(uid), Ok(mut pods)) = (p.metadata.uid.clone(), self.pods.lock()) {
                        pods.insert(uid, p);
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    if let (Some(uid), Ok(mut seen)) =
                        (p.metadata.uid.as_ref(), self.first_seen.lock())
                    {
                        seen.remove(uid);
                    }
                    if let (Some(uid), Ok(mut pods)) = (p.metadata.uid.as_ref(), self.pods.lock()) {
                        pods.remove(uid);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pod watch"),
            }
            self.wake.notify_one();
        }
    }

    /// Notes when a pod that has not run yet was first seen (a pod already running,
    /// adopted after a restart, has no start to time).
    fn saw(&self, p: &Pod) {
        let started = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph != "Pending");
        if let (Some(uid), false, Ok(mut seen)) =
            (p.metadata.uid.clone(), started, self.first_seen.lock())
        {
            seen.entry(uid).or_insert_with(std::time::Instant::now);
        }
    }

    async fn sync_loop(self: &Arc<Self>) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|l| *l).await;
        loop {
            match self.relist().await {
                Ok(r) => {
                    if let Ok(mut t) = self.last_relist.lock() {
                        *t = std::time::Instant::now();
                    }
                    self.sync_all(r).await
                }
                Err(e) => tracing::warn!(error = %e, "relisting the container runtime"),
            }
            let _ = tokio::time::timeout(RELIST, self.wake.notified()).await;
        }
    }

    async fn relist(&self) -> Result<Relist, tonic::Status> {
        let mut rt = self.runtime.clone();
        let sandboxes = rt
            .list_pod_sandbox(api::ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        let containers = rt
            .list_containers(api::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers;
        let mut r = Relist::default();
        for s in sandboxes {
            let uid = label(&s.labels, cri::POD_UID).to_string();
            r.sandboxes.entry(uid).or_default().push(s);
        }
        for c in containers {
            let uid = label(&c.labels, cri::POD_UID).to_string();
            r.containers.entry(uid).or_default().push(c);
        }
        Ok(r)
    }

    async fn sync_all(self: &Arc<Self>, mut r: Relist) {
        let running: HashSet<String> = r
            .containers
            .values()
            .flatten()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .map(|c| c.id.clone())
            .collect();
        self.prober.retain(&running);
        let sandboxes_running = r
            .sandboxes
            .values()
            .filter(|ss| {
                ss.iter()
                    .any(|s| s.state == api::PodSandboxState::SandboxReady as i32)
            })
            .count();
        crate::metrics::RUNNING_PODS.set(sandboxes_running as i64);
        crate::metrics::RUNNING_CONTAINERS
            .with_label_values(&["running"])
            .set(running.len() as i64);
        let pods: Vec<Pod> = match self.pods.lock() {
            Ok(p) => p.values().cloned().collect(),
            Err(_) => return,
        };
        let known: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let sandboxes = r.sandboxes.remove(&uid).unwrap_or_default();
            let containers = r.containers.remove(&uid).unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                self.start_termination(pod, sandboxes, containers);
                continue;
            }
            // Each pod syncs in a task of its own (one at a time per pod), so a slow
            // image pull holds up only its pod, as the kubelet's pod workers do.
            let fresh = self
                .syncing
                .lock()
                .map(|mut s| s.insert(uid.clone()))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let k = self.clone();
            tokio::spawn(async move {
                k.sync_pod(&pod, sandboxes, containers).await;
                if let Ok(mut s) = k.syncing.lock() {
                    s.remove(&uid);
                }
            });
        }
        // What is left belongs to pods gone from the API (or never ours).
        let orphans: Vec<api::PodSandbox> = r
            .sandboxes
            .into_iter()
            .filter(|(uid, _)| !uid.is_empty() && !known.contains(uid))
            .flat_map(|(_, s)| s)
            .collect();
        for s in orphans {
            tracing::info!(sandbox = %s.id, "removing the sandbox of a pod gone from the API");
            self.remove_sandbox(&s).await;
        }
        if let (Ok(mut st), Ok(mut b)) = (self.state.lock(), self.backoff.lock()) {
            let gone: Vec<String> = st.keys().filter(|u| !known.contains(*u)).cloned().collect();
            for uid in gone {
                st.remove(&uid);
                b.forget_pod(&uid);
            }
        }
    }

    /// Full CRI statuses of a pod's containers, newest two attempts per name.
    async fn observe(&self, containers: &[api::Container]) -> HashMap<String, Observed> {
        let mut by_name: HashMap<String, Vec<&api::Container>> = HashMap::new();
        for c in containers {
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            by_name.entry(name).or_default().push(c);
        }
        let mut out = HashMap::new();
        for (name, mut cs) in by_name {
            cs.sort_by_key(|c| {
                (
                    std::cmp::Reverse(c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)),
                    std::cmp::Reverse(c.created_at),
                )
            });
            let mut o = Observed::default();
            for (i, c) in cs.iter().take(2).enumerate() {
                let mut rt = self.runtime.clone();
                let st = rt
                    .container_status(api::ContainerStatusRequest {
                        container_id: c.id.clone(),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().status);
                if i == 0 {
                    o.latest = st;
                } else {
                    o.previous = st;
                }
            }
            out.insert(name, o);
        }
        out
    }

    /// One pass of the kubelet's `syncPod` for a live pod.
    async fn sync_pod(
        &self,
        pod: &Pod,
        mut sandboxes: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
    ) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let ready_sandbox = sandboxes
            .iter()
            .find(|s| s.state == api::PodSandboxState::SandboxReady as i32)
            .cloned();
        // A finished pod only has its sandbox stopped (its IP and processes freed).
        if matches!(api_phase.as_deref(), Some("Succeeded" | "Failed")) {
            if let Some(s) = ready_sandbox {
                let mut rt = self.runtime.clone();
                let _ = rt
                    .stop_pod_sandbox(api::StopPodSandboxRequest {
                        pod_sandbox_id: s.id,
                    })
                    .await;
            }
            return;
        }
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let newest_attempt = sandboxes
            .first()
            .and_then(|s| s.metadata.as_ref())
            .map(|m| m.attempt);
        let mut sandbox_attempt = newest_attempt.unwrap_or(0);
        let mut sandbox = ready_sandbox;
        // No sandbox yet, or the sandbox died (its pause process exited, the node
        // rebooted): as upstream, the pod is killed and gets a new sandbox, unless it
        // must not restart (Never, with containers already run).
        let recreate = newest_attempt.is_some()
            && sandbox.is_none()
            && (policy != "Never" || containers.is_empty());
        if recreate {
            tracing::info!(namespace = %ns, pod = %name, "pod sandbox changed; it will be killed and re-created");
            let mut rt = self.runtime.clone();
            for c in containers
                .iter()
                .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            {
                let _ = rt
                    .stop_container(api::StopContainerRequest {
                        container_id: c.id.clone(),
                        timeout: 0,
                    })
                    .await;
            }
            for s in &sandboxes {
                let _ = rt
                    .stop_pod_sandbox(api::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await;
            }
            sandbox_attempt += 1;
        }
        if sandbox.is_none() && (sandboxes.is_empty() || recreate) {
            let mut rt = self.runtime.clone();
            let config =
                cri::sandbox_config(pod, sandbox_attempt, &self.cfg.pod_logs_dir, &self.cfg.dns);
            if let Err(e) = std::fs::create_dir_all(&config.log_directory) {
                tracing::warn!(namespace = %ns, pod = %name, error = %e, "pod log directory");
            }
            match rt
                .run_pod_sandbox(api::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
            {
                Ok(r) => {
                    let id = r.into_inner().pod_sandbox_id;
                    tracing::info!(namespace = %ns, pod = %name, sandbox = %id, attempt = sandbox_attempt, "sandbox started");
                    sandbox = Some(api::PodSandbox {
                        id,
                        ..Default::default()
                    });
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, pod = %name, error = %e, "RunPodSandbox");
                }
            }
        }
        let mut pod_ip = None;
        if let Some(s) = &sandbox {
            let mut rt = self.runtime.clone();
            if let Ok(st) = rt
                .pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: s.id.clone(),
                    verbose: false,
                })
                .await
            {
                pod_ip = st
                    .into_inner()
                    .status
                    .and_then(|s| s.network)
                    .map(|n| n.ip)
                    .filter(|ip| !ip.is_empty());
            }
        }
        // A pod on the host's network has the node's address (its probes, its
        // `status.podIP` variable), as upstream's.
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            pod_ip = Some(self.host_ip.clone());
        }
        if sandbox.is_some() {
            self.refresh_volumes(pod).await;
        }
        let mut observed = self.observe(&containers).await;
        if let Some(s) = &sandbox {
            let started = self
                .start_next(pod, s, sandbox_attempt, pod_ip.as_deref(), &observed)
                .await;
            if started {
                // Show the new attempt in this round's status.
                let mut rt = self.runtime.clone();
                if let Ok(r) = rt
                    .list_containers(api::ListContainersRequest {
                        filter: Some(api::ContainerFilter {
                            label_selector: HashMap::from([(cri::POD_UID.into(), uid.clone())]),
                            ..Default::default()
                        }),
                    })
                    .await
                {
                    observed = self.observe(&r.into_inner().containers).await;
                }
            }
        }
        // Probe what runs; their verdicts go into the status.
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let mut probes = HashMap::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let Some(l) = observed.get(&c.name).and_then(|o| o.latest.as_ref()) else {
                continue;
            };
            if l.state != api::ContainerState::ContainerRunning as i32 {
                continue;
            }
            if c.liveness_probe.is_some()
                || c.readiness_probe.is_some()
                || c.startup_probe.is_some()
            {
                self.prober
                    .ensure(pod, c, &l.id, pod_ip.as_deref().unwrap_or_default(), grace);
                probes.insert(
                    c.name.clone(),
                    (self.prober.ready(c, &l.id), self.prober.started(c, &l.id)),
                );
            }
        }
        self.write_status(pod, sandbox.is_some(), pod_ip, &observed, &probes)
            .await;
    }

    /// Starts what is due: the first unfinished init container, else every container
    /// that is missing or due a restart (after its back-off). True if one started.
    async fn start_next(
        &self,
        pod: &Pod,
        sandbox: &api::PodSandbox,
        sandbox_attempt: u32,
        pod_ip: Option<&str>,
        observed: &HashMap<String, Observed>,
    ) -> bool {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut started = false;
        for c in spec.init_containers.iter().flatten() {
            let latest = observed.get(&c.name).and_then(|o| o.latest.as_ref());
            match latest {
                None => {
                    return self
                        .start_container(pod, c, sandbox, sandbox_attempt, 0, pod_ip)
                        .await;
                }
                Some(l) if l.state == api::ContainerState::ContainerExited as i32 => {
                    if l.exit_code == 0 {
                        continue;
                    }
                    // A failed init container: the pod fails with Never, else the
                    // init container is retried under back-off.
                    if policy == "Never" {
                        return false;
                    }
                    return self
                        .restart(pod, c, sandbox, sandbox_attempt, l, pod_ip)
                        .await;
                }
                Some(_) => return false,
            }
        }
        for c in &spec.containers {
            let latest = observed.get(&c.name).and_then(|o| o.latest.as_ref());
            match latest {
                None => {
                    started |= self
                        .start_container(pod, c, sandbox, sandbox_attempt, 0, pod_ip)
                        .await;
                }
                Some(l) if l.state == api::ContainerState::ContainerExited as i32 => {
                    let restart = match policy {
                        "Never" => false,
                        "OnFailure" => l.exit_code != 0,
                        _ => true,
                    };
                    if restart {
                        started |= self
                            .restart(pod, c, sandbox, sandbox_attempt, l, pod_ip)
                            .await;
                    } else {
                        self.set_waiting(&uid, &c.name, None);
                    }
                }
                Some(_) => {
                    self.set_waiting(&uid, &c.name, None);
                }
            }
        }
        started
    }

    /// Writes the pod's configMap, secret, downwardAPI and projected volumes again
    /// when `--sync-frequency` has passed since they were last written (the atomic
    /// writer swaps the files in under the running containers' mounts). A volume that
    /// cannot be written now keeps what it had, as upstream's.
    async fn refresh_volumes(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let due = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let e = st.entry(uid).or_default();
            let now = std::time::Instant::now();
            match e.volumes_written {
                Some(t) if now.duration_since(t) < self.cfg.sync_frequency => false,
                Some(_) => {
                    e.volumes_written = Some(now);
                    true
                }
                // A pod's first sync: its containers' starts write the volumes (every
                // start does), so the first rewrite is one period from now.
                None => {
                    e.volumes_written = Some(now);
                    false
                }
            }
        };
        if !due {
            return;
        }
        if let Err(e) =
            volumes::refresh(&self.client, pod, &self.cfg.root_dir, &self.allocatable).await
        {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            tracing::warn!(namespace = %ns, pod = %name, error = %e, "refreshing volumes");
        }
    }

    /// A container that cannot be created from its pod's spec as things stand (a volume
    /// or environment source missing): it waits in `CreateContainerConfigError` with
    /// `message`, with a `Failed` event when it starts waiting so, and the next sync
    /// tries again.
    fn config_error(&self, pod: &Pod, c: &Container, message: String) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let changed = self.set_waiting(
            &uid,
            &c.name,
            Some(Waiting {
                reason: "CreateContainerConfigError".into(),
                message: message.clone(),
            }),
        );
        if changed {
            self.events.record(
                pod,
                self.about(pod, &c.name),
                true,
                "Failed",
                format!("Error: {message}"),
            );
        }
    }

    /// Sets (or clears) a container's waiting reason; true if the reason changed, so
    /// events are recorded once per transition rather than on every sync.
    fn set_waiting(&self, uid: &str, container: &str, w: Option<Waiting>) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let e = st.entry(uid.to_string()).or_default();
        match w {
            Some(w) => {
                let reason = w.reason.clone();
                e.waiting
                    .insert(container.to_string(), w)
                    .is_none_or(|old| old.reason != reason)
            }
            None => e.waiting.remove(container).is_some(),
        }
    }

    /// Restarts an exited container unless it is in back-off (then it waits in
    /// CrashLoopBackOff).
    async fn restart(
        &self,
        pod: &Pod,
        c: &Container,
        sandbox: &api::PodSandbox,
        sandbox_attempt: u32,
        last: &api::ContainerStatus,
        pod_ip: Option<&str>,
    ) -> bool {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = format!("{uid}/{}", c.name);
        let finished = SystemTime::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(last.finished_at).unwrap_or(0));
        let verdict = self.backoff.lock().ok().map(|mut b| {
            match b.remaining(&key, finished, SystemTime::now()) {
                Some(_) => Err(b.current(&key).unwrap_or(backoff::INITIAL)),
                None => {
                    b.next(&key, finished);
                    Ok(())
                }
            }
        });
        if let Some(Err(d)) = verdict {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let changed = self.set_waiting(
                &uid,
                &c.name,
                Some(Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {} restarting failed container={} pod={name}_{ns}({uid})",
                        fmt_duration(d),
                        c.name
                    ),
                }),
            );
            if changed {
                self.events.record(
                    pod,
                    self.about(pod, &c.name),
                    true,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {name}_{ns}({uid})",
                        c.name
                    ),
                );
            }
            return false;
        }
        let attempt = last.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1);
        let ok = self
            .start_container(pod, c, sandbox, sandbox_attempt, attempt, pod_ip)
            .await;
        if ok && attempt >= 2 {
            // Keep the newest dead attempt (for lastState and `logs --previous`);
            // older ones are garbage, as the kubelet's container GC decides.
            self.remove_attempts_before(&uid, &c.name, attempt - 1)
                .await;
        }
        ok
    }

    async fn remove_attempts_before(&self, uid: &str, name: &str, keep_from: u32) {
        let mut rt = self.runtime.clone();
        let Ok(r) = rt
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    label_selector: HashMap::from([
                        (cri::POD_UID.into(), uid.to_string()),
                        (cri::CONTAINER_NAME.into(), name.to_string()),
                    ]),
                    ..Default::default()
                }),
            })
            .await
        else {
            return;
        };
        for c in r.into_inner().containers {
            if c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0) < keep_from {
                let _ = rt
                    .remove_container(api::RemoveContainerRequest { container_id: c.id })
                    .await;
            }
        }
    }

    /// Makes sure the image is there (pulling per the pull policy); on failure records
    /// the waiting reason and returns None.
    async fn ensure_image(&self, pod: &Pod, c: &Container) -> Option<String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let image = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            let tag = image.rsplit('/').next().unwrap_or_default();
            if !tag.contains(':') || tag.ends_with(":latest") {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let spec = api::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let mut images = self.images.clone();
        let present = images
            .image_status(api::ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().image)
            .map(|i| i.id);
        if policy != "Always" {
            if let Some(id) = present {
                self.events.record(
                    pod,
                    self.about(pod, &c.name),
                    false,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                return Some(id);
            }
        }
        if policy == "Never" {
            self.set_waiting(
                &uid,
                &c.name,
                Some(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    ),
                }),
            );
            return None;
        }
        let key = format!("pull/{uid}/{}", c.name);
        let now = SystemTime::now();
        let in_backoff = self
            .backoff
            .lock()
            .ok()
            .and_then(|b| b.remaining(&key, now, now).map(|_| ()));
        if in_backoff.is_some() {
            let changed = self.set_waiting(
                &uid,
                &c.name,
                Some(Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: format!("Back-off pulling image \"{image}\""),
                }),
            );
            if changed {
                self.events.record(
                    pod,
                    self.about(pod, &c.name),
                    false,
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                );
            }
            return None;
        }
        self.events.record(
            pod,
            self.about(pod, &c.name),
            false,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
        let pull_start = std::time::Instant::now();
        let pulled = tokio::time::timeout(
            PULL_TIMEOUT,
            images.pull_image(api::PullImageRequest {
                image: Some(spec),
                ..Default::default()
            }),
        )
        .await;
        match pulled {
            Ok(Ok(r)) => {
                self.events.record(
                    pod,
                    self.about(pod, &c.name),
                    false,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {:?}",
                        pull_start.elapsed()
                    ),
                );
                Some(r.into_inner().image_ref)
            }
            failed => {
                let message = match failed {
                    Ok(Err(s)) => cri::grpc_message(&s),
                    _ => format!("pulling image \"{image}\": timed out"),
                };
                tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), image = %image, error = %message, "image pull failed");
                if let Ok(mut b) = self.backoff.lock() {
                    b.next(&key, SystemTime::now());
                }
                self.events.record(
                    pod,
                    self.about(pod, &c.name),
                    true,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {message}"),
                );
                self.set_waiting(
                    &uid,
                    &c.name,
                    Some(Waiting {
                        reason: "ErrImagePull".into(),
                        message,
                    }),
                );
                None
            }
        }
    }

    async fn start_container(
        &self,
        pod: &Pod,
        c: &Container,
        sandbox: &api::PodSandbox,
        sandbox_attempt: u32,
        attempt: u32,
        pod_ip: Option<&str>,
    ) -> bool {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(image_id) = self.ensure_image(pod, c).await else {
            return false;
        };
        let services = self.services_for(pod).await;
        let service_env = env::service_env(&services);
        let refs = FieldRefs {
            pod_ip: pod_ip.unwrap_or_default(),
            host_ip: &self.host_ip,
            service_env: &service_env,
        };
        let mounts = match volumes::mounts(
            &self.client,
            pod,
            c,
            &self.cfg.root_dir,
            &self.allocatable,
        )
        .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %name, container = %c.name, error = %e, "volumes");
                self.config_error(pod, c, e.to_string());
                return false;
            }
        };
        let resolved = match env::Sources::read(&self.client, pod, c)
            .await
            .and_then(|sources| env::resolve(pod, c, &refs, &self.allocatable, &sources))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %name, container = %c.name, error = %e, "environment");
                self.config_error(pod, c, e.to_string());
                return false;
            }
        };
        let mut config = cri::container_config(pod, c, &image_id, attempt, resolved);
        config.mounts = mounts;
        let mut rt = self.runtime.clone();
        let created = rt
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(cri::sandbox_config(
                    pod,
                    sandbox_attempt,
                    &self.cfg.pod_logs_dir,
                    &self.cfg.dns,
                )),
            })
            .await;
        let id = match created {
            Ok(r) => r.into_inner().container_id,
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %name, container = %c.name, error = %e, "CreateContainer");
                self.set_waiting(
                    &uid,
                    &c.name,
                    Some(Waiting {
                        reason: "CreateContainerError".into(),
                        message: e.message().to_string(),
                    }),
                );
                return false;
            }
        };
        self.events.record(
            pod,
            self.about(pod, &c.name),
            false,
            "Created",
            format!("Created container: {}", c.name),
        );
        if let Err(e) = rt
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            tracing::warn!(namespace = %ns, pod = %name, container = %c.name, error = %e, "StartContainer");
            self.set_waiting(
                &uid,
                &c.name,
                Some(Waiting {
                    reason: "RunContainerError".into(),
                    message: e.message().to_string(),
                }),
            );
            return false;
        }
        tracing::info!(namespace = %ns, pod = %name, container = %c.name, id = %id, attempt, "container started");
        self.events.record(
            pod,
            self.about(pod, &c.name),
            false,
            "Started",
            format!("Started container {}", c.name),
        );
        self.set_waiting(&uid, &c.name, None);
        true
    }

    async fn write_status(
        &self,
        pod: &Pod,
        sandbox_ready: bool,
        pod_ip: Option<String>,
        observed: &HashMap<String, Observed>,
        probes: &HashMap<String, (bool, bool)>,
    ) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (written, waiting) = match self.state.lock() {
            Ok(st) => st
                .get(&uid)
                .map(|s| (s.written.clone(), s.waiting.clone()))
                .unwrap_or_default(),
            Err(_) => return,
        };
        let api_status = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok());
        let old = written.as_ref().or(api_status.as_ref());
        let status = status::pod_status(&PodView {
            pod,
            old,
            sandbox_ready,
            pod_ip,
            host_ip: &self.host_ip,
            runtime_name: &self.runtime_name,
            containers: observed,
            waiting: &waiting,
            probes,
        });
        if written.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(namespace = %ns, pod = %name, phase = %status["phase"], "pod status");
                if status["phase"] == "Running" {
                    let seen = self.first_seen.lock().ok().and_then(|mut s| s.remove(&uid));
                    if let Some(t) = seen {
                        crate::metrics::POD_START_DURATION.observe(t.elapsed().as_secs_f64());
                    }
                }
                if let Ok(mut st) = self.state.lock() {
                    st.entry(uid).or_default().written = Some(status);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(namespace = %ns, pod = %name, error = %e, "pod status"),
        }
    }

    /// The Services whose variables go into the pod's containers: those of its
    /// namespace (unless `enableServiceLinks` is false) and the apiserver's own
    /// `kubernetes` service, as of the container's start.
    async fn services_for(&self, pod: &Pod) -> Vec<Service> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let mut out: Vec<Service> = Vec::new();
        if links {
            let api: Api<Service> = Api::namespaced(self.client.clone(), &ns);
            match api.list(&Default::default()).await {
                Ok(l) => out.extend(l.items),
                Err(e) => tracing::warn!(namespace = %ns, error = %e, "listing services for env"),
            }
        }
        if !links || ns != "default" {
            let api: Api<Service> = Api::namespaced(self.client.clone(), "default");
            if let Ok(Some(k)) = api.get_opt("kubernetes").await {
                out.push(k);
            }
        }
        out
    }

    /// Which of the pod's containers a name is, for an event's `fieldPath`.
    fn about<'a>(&self, pod: &Pod, container: &'a str) -> events::About<'a> {
        let init = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == container);
        if init {
            events::About::InitContainer(container)
        } else {
            events::About::Container(container)
        }
    }

    /// Stops a deleted pod (once, in its own task): every container with the grace
    /// period, then the sandbox, which is removed; then the final delete.
    fn start_termination(
        self: &Arc<Self>,
        pod: Pod,
        sandboxes: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let fresh = self
            .terminating
            .lock()
            .map(|mut t| t.insert(uid.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let k = self.clone();
        tokio::spawn(async move {
            k.terminate(&pod, sandboxes, containers).await;
            if let Ok(mut t) = k.terminating.lock() {
                t.remove(&uid);
            }
        });
    }

    /// Stops and removes a sandbox (and with it its containers), then the pod's log
    /// directory and volumes. False if the runtime refused.
    async fn remove_sandbox(&self, s: &api::PodSandbox) -> bool {
        let mut rt = self.runtime.clone();
        let (ns, name, uid) = (
            label(&s.labels, cri::POD_NAMESPACE),
            label(&s.labels, cri::POD_NAME),
            label(&s.labels, cri::POD_UID),
        );
        if let Err(e) = rt
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await
        {
            tracing::warn!(namespace = %ns, pod = %name, error = %e, "StopPodSandbox");
            return false;
        }
        if let Err(e) = rt
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await
        {
            tracing::warn!(namespace = %ns, pod = %name, error = %e, "RemovePodSandbox");
            return false;
        }
        if !uid.is_empty() {
            let dir = cri::log_directory(&self.cfg.pod_logs_dir, ns, name, uid);
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_dir_all(volumes::pod_dir(&self.cfg.root_dir, uid));
        }
        true
    }

    async fn terminate(
        &self,
        pod: &Pod,
        sandboxes: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
    ) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        tracing::info!(namespace = %ns, pod = %name, grace, "stopping pod");
        let stops = containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .map(|c| {
                let cname = label(&c.labels, cri::CONTAINER_NAME);
                self.events.record(
                    pod,
                    self.about(pod, cname),
                    false,
                    "Killing",
                    format!("Stopping container {cname}"),
                );
                let mut rt = self.runtime.clone();
                let id = c.id.clone();
                async move {
                    if let Err(e) = rt
                        .stop_container(api::StopContainerRequest {
                            container_id: id,
                            timeout: grace,
                        })
                        .await
                    {
                        tracing::warn!(error = %e, "StopContainer");
                    }
                }
            });
        futures::future::join_all(stops).await;
        for s in &sandboxes {
            if !self.remove_sandbox(s).await {
                // Retried on the next relist (the pod is still terminating).
                return;
            }
        }
        registration::final_delete(&self.client, &ns, &name, &uid).await;
    }
}

/// A back-off as Go's `time.Duration` prints it (`10s`, `1m20s`, `5m0s`).
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_offs_print_like_go_durations() {
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m0s");
    }
}
