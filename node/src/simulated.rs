//! Simulated nodes: the kubelet's API-facing behaviour without containers.
//!
//! What a client sees is what a real kubelet would produce: a Node with capacity,
//! allocatable, conditions, addresses and node info; a Lease in `kube-node-lease`
//! renewed every quarter of its duration (the kubelet's `renewInterval`); pods bound to
//! the node turned Running and Ready with a pod IP from the node's pod CIDR; pods with a
//! deletion timestamp deleted for good (the kubelet's final `gracePeriodSeconds=0`
//! delete, with the pod's uid as precondition). Pods owned by a Job complete, as in
//! kwok's default stages; the annotations [`RUN_SECONDS`] and [`EXIT_CODE`] let a test
//! choose how long any pod runs and how it ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::{json, Value};

use crate::podstatus::{condition, qos_class, scheduled_condition};
use crate::registration::{self, now, Heartbeat, NodeSource};
use crate::NodeError;

/// Annotation: seconds a simulated pod runs before its containers exit.
pub const RUN_SECONDS: &str = "sim.capstan.io/run-seconds";
/// Annotation: the exit code its containers exit with (default 0).
pub const EXIT_CODE: &str = "sim.capstan.io/exit-code";
/// Label every simulated node carries, so tools can tell them from real ones.
pub const SIMULATED_LABEL: &str = "node.capstan.io/simulated";

/// How long a Job's pod runs when no annotation says otherwise.
const JOB_POD_RUN: Duration = Duration::from_secs(1);

/// One simulated node agent (any number of nodes in one process).
#[derive(Clone, Debug)]
pub struct Config {
    pub kubeconfig: PathBuf,
    /// The node's name; with `nodes > 1`, nodes are `<name>-0`, `<name>-1`, ...
    pub node_name: String,
    pub nodes: usize,
    /// Capacity (and allocatable) per node.
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    /// `--node-labels`, added to the well-known ones.
    pub labels: BTreeMap<String, String>,
    /// `--register-with-taints`.
    pub taints: Vec<Value>,
    /// The Lease's `leaseDurationSeconds` (the kubelet's `nodeLeaseDurationSeconds`).
    pub lease_duration_seconds: i32,
    /// How often the node status is posted when nothing changed (the kubelet's
    /// `nodeStatusReportFrequency`).
    pub status_report_frequency: Duration,
}

pub use crate::registration::{parse_labels, parse_taints};

/// What the agent remembers of one of its nodes.
struct NodeState {
    index: usize,
    /// Host numbers in the pod CIDR handed out, by pod uid.
    ips: HashMap<String, u32>,
    used: BTreeSet<u32>,
}

struct Sim {
    cfg: Config,
    client: kube::Client,
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Pods whose completion is scheduled, so repeated watch events do not schedule
    /// it twice.
    completing: Mutex<HashSet<String>>,
}

fn node_ip(index: usize) -> Ipv4Addr {
    // 172.16.0.10 upwards: one address per simulated node, none of them routable.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 10)).wrapping_add(index as u32))
}

fn pod_cidr_base(index: usize) -> u32 {
    // One /24 per node from 10.244.0.0/16 onwards, like the node-ipam controller's
    // default cluster CIDR.
    u32::from(Ipv4Addr::new(10, 244, 0, 0)).wrapping_add((index as u32) << 8)
}

/// Runs the simulated nodes until the process is stopped.
pub async fn run(cfg: Config) -> Result<(), NodeError> {
    let client = capstan_client::client_as(Some(&cfg.kubeconfig), "kubelet").await?;
    let names: Vec<String> = if cfg.nodes <= 1 {
        vec![cfg.node_name.clone()]
    } else {
        (0..cfg.nodes)
            .map(|i| format!("{}-{i}", cfg.node_name))
            .collect()
    };
    let sim = Arc::new(Sim {
        nodes: Mutex::new(
            names
                .iter()
                .enumerate()
                .map(|(index, n)| {
                    let st = NodeState {
                        index,
                        ips: HashMap::new(),
                        used: BTreeSet::new(),
                    };
                    (n.clone(), st)
                })
                .collect(),
        ),
        cfg,
        client,
        completing: Mutex::new(HashSet::new()),
    });
    // Register every node (as the kubelet does, retrying until the apiserver takes it),
    // then keep each one's Lease and status fresh in its own task.
    let hb = Heartbeat {
        lease_duration_seconds: sim.cfg.lease_duration_seconds,
        status_report_frequency: sim.cfg.status_report_frequency,
    };
    futures::stream::iter(names.iter().cloned())
        .for_each_concurrent(32, |name| {
            let sim = sim.clone();
            async move {
                let uid = registration::register(&sim.client, sim.as_ref(), &name).await;
                let source: Arc<dyn NodeSource> = sim.clone();
                tokio::spawn(registration::heartbeat(
                    sim.client.clone(),
                    source,
                    hb,
                    name,
                    uid,
                ));
            }
        })
        .await;
    tracing::info!(nodes = names.len(), "simulated nodes registered");
    sim.pods().await;
    Ok(())
}

impl Sim {
    fn index(&self, name: &str) -> usize {
        self.nodes
            .lock()
            .ok()
            .and_then(|n| n.get(name).map(|s| s.index))
            .unwrap_or(0)
    }
}

impl NodeSource for Sim {
    fn node_object(&self, name: &str) -> Value {
        let mut labels = registration::node_labels(name, &self.cfg.labels);
        labels.insert(SIMULATED_LABEL.to_string(), "true".to_string());
        let cidr = format!("{}/24", Ipv4Addr::from(pod_cidr_base(self.index(name))));
        let mut spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
        if !self.cfg.taints.is_empty() {
            spec["taints"] = json!(self.cfg.taints);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec,
            "status": self.node_status(name),
        })
    }

    fn node_status(&self, name: &str) -> Value {
        let facts = registration::Facts {
            cpu: self.cfg.cpu.clone(),
            memory: self.cfg.memory.clone(),
            ephemeral_storage: "100Gi".into(),
            max_pods: self.cfg.max_pods,
            runtime_version: "simulated://capstan",
            kernel_version: String::new(),
            os_image: "capstan simulated node".into(),
            boot_id: String::new(),
            machine_id: String::new(),
            system_uuid: String::new(),
            // Nothing listens there: simulated pods have no logs to serve.
            kubelet_port: 10250,
        };
        registration::node_status(name, &node_ip(self.index(name)).to_string(), facts)
    }
}

impl Sim {
    /// Watches the pods bound to this agent's nodes and plays the kubelet's part.
    async fn pods(self: &Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        // One node: the kubelet's own field selector. Many: one watch of all pods,
        // filtered here, rather than thousands of watches.
        let cfg = if self.cfg.nodes <= 1 {
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.node_name))
        } else {
            watcher::Config::default()
        };
        let events = watcher(api, cfg).default_backoff();
        events
            .for_each_concurrent(64, |ev| {
                let sim = self.clone();
                async move {
                    match ev {
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                            sim.on_pod(p).await
                        }
                        Ok(watcher::Event::Delete(p)) => sim.forget(&p),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "pod watch"),
                    }
                }
            })
            .await;
    }

    fn owns(&self, pod: &Pod) -> Option<String> {
        let node = pod.spec.as_ref()?.node_name.clone()?;
        let nodes = self.nodes.lock().ok()?;
        nodes.contains_key(&node).then_some(node)
    }

    fn forget(&self, pod: &Pod) {
        let (Some(node), Some(uid)) = (self.owns(pod), pod.metadata.uid.as_ref()) else {
            return;
        };
        if let Ok(mut nodes) = self.nodes.lock() {
            if let Some(st) = nodes.get_mut(&node) {
                if let Some(host) = st.ips.remove(uid) {
                    st.used.remove(&host);
                }
            }
        }
        if let Ok(mut c) = self.completing.lock() {
            c.remove(uid);
        }
    }

    /// The pod's IP: from the node's /24, the same one on every call for a pod.
    fn pod_ip(&self, node: &str, uid: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let mut nodes = self.nodes.lock().ok()?;
        let st = nodes.get_mut(node)?;
        let host = match st.ips.get(uid) {
            Some(h) => *h,
            None => {
                let h = (2..255u32).find(|h| !st.used.contains(h))?;
                st.used.insert(h);
                st.ips.insert(uid.to_string(), h);
                h
            }
        };
        Some((
            Ipv4Addr::from(pod_cidr_base(st.index) + host),
            node_ip(st.index),
        ))
    }

    async fn on_pod(self: &Arc<Self>, pod: Pod) {
        let Some(node) = self.owns(&pod) else { return };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // The containers are "stopped" at once.
            registration::final_delete(&self.client, &ns, &name, &uid).await;
            return;
        }
        let status = pod.status.clone().unwrap_or_default();
        match status.phase.as_deref() {
            Some("Succeeded" | "Failed") => return,
            Some("Running") if status.container_statuses.is_some() => {
                self.schedule_completion(&pod, &node);
                return;
            }
            _ => {}
        }
        let Some((ip, host_ip)) = self.pod_ip(&node, &uid) else {
            tracing::warn!(node = %node, namespace = %ns, pod = %name, "pod CIDR exhausted");
            return;
        };
        let patch = json!({"status": running_status(&pod, ip, host_ip)});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(p) => {
                tracing::debug!(namespace = %ns, pod = %name, ip = %ip, "pod running");
                self.schedule_completion(&p, &node);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(namespace = %ns, pod = %name, error = %e, "pod status"),
        }
    }

    /// Pods that are to end (a Job's, or annotated) end after their run time, counted
    /// from their start so a restarted agent keeps the schedule.
    fn schedule_completion(self: &Arc<Self>, pod: &Pod, node: &str) {
        let ann = pod.metadata.annotations.clone().unwrap_or_default();
        let job_owned = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Job");
        let run = match ann.get(RUN_SECONDS).and_then(|s| s.parse::<f64>().ok()) {
            Some(s) if s >= 0.0 => Duration::from_secs_f64(s),
            _ if job_owned || ann.contains_key(EXIT_CODE) => JOB_POD_RUN,
            _ => return,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let fresh = self
            .completing
            .lock()
            .map(|mut c| c.insert(uid.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(chrono::Utc::now);
        let left = (started + chrono::Duration::from_std(run).unwrap_or_default())
            .signed_duration_since(chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        let code = ann
            .get(EXIT_CODE)
            .and_then(|s| s.parse::<i32>().ok())
            .unwrap_or(0);
        let sim = self.clone();
        let pod = pod.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(sim.client.clone(), &ns);
            let patch = json!({"status": finished_status(&pod, code)});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(node = %node, namespace = %ns, pod = %name, error = %e, "pod completion");
            }
        });
    }
}

/// One container's status in `state` (`started` is left out for init containers).
fn container_status(
    pod: &Pod,
    c: &Container,
    ready: bool,
    started: Option<bool>,
    state: Value,
) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image,
        "containerID": container_id(pod, &c.name),
        "ready": ready,
        "restartCount": 0,
        "lastState": {},
        "state": state,
    });
    if let Some(st) = started {
        v["started"] = json!(st);
    }
    v
}

fn container_id(pod: &Pod, name: &str) -> String {
    format!(
        "simulated://{}-{name}",
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The status a kubelet posts once every container of the pod has started.
fn running_status(pod: &Pod, ip: Ipv4Addr, host_ip: Ipv4Addr) -> Value {
    let t = now();
    let spec = pod.spec.clone().unwrap_or_default();
    let ip = if spec.host_network == Some(true) {
        host_ip
    } else {
        ip
    };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                pod,
                c,
                true,
                Some(true),
                json!({"running": {"startedAt": t}}),
            )
        })
        .collect();
    let mut status = json!({
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers", true, &t, None),
            condition("Initialized", true, &t, None),
            condition("Ready", true, &t, None),
            condition("ContainersReady", true, &t, None),
            scheduled_condition(pod, &t),
        ],
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": t,
        "qosClass": qos_class(pod),
        "containerStatuses": containers,
    });
    if let Some(init) = &spec.init_containers {
        let done: Vec<Value> = init
            .iter()
            .map(|c| {
                let done = json!({"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": t, "finishedAt": t, "containerID": container_id(pod, &c.name)}});
                container_status(pod, c, true, None, done)
            })
            .collect();
        status["initContainerStatuses"] = json!(done);
    }
    status
}

/// The status after every container exited with `code`.
fn finished_status(pod: &Pod, code: i32) -> Value {
    let t = now();
    let ok = code == 0;
    let reason = if ok { "Completed" } else { "Error" };
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|s| s.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.clone());
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            let state = json!({"terminated": {"exitCode": code, "reason": reason,
                "startedAt": started, "finishedAt": t, "containerID": container_id(pod, &c.name)}});
            container_status(pod, c, false, Some(false), state)
        })
        .collect();
    json!({
        "phase": if ok { "Succeeded" } else { "Failed" },
        "conditions": [
            condition("PodReadyToStartContainers", false, &t, None),
            condition("Initialized", true, &t, Some("PodCompleted")),
            condition("Ready", false, &t, Some("PodCompleted")),
            condition("ContainersReady", false, &t, Some("PodCompleted")),
            scheduled_condition(pod, &t),
        ],
        "containerStatuses": containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_per_node() {
        assert_eq!(node_ip(0), Ipv4Addr::new(172, 16, 0, 10));
        assert_eq!(
            Ipv4Addr::from(pod_cidr_base(1)),
            Ipv4Addr::new(10, 244, 1, 0)
        );
        assert_eq!(
            Ipv4Addr::from(pod_cidr_base(300)),
            Ipv4Addr::new(10, 245, 44, 0)
        );
    }
}
