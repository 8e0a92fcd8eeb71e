//! Integration tests of `capstan scheduler`: a real store, a real apiserver and real
//! scheduler processes, driven by the real `kubectl` (nodes are plain Node objects with
//! capacity, labels, taints and a Ready condition, as kwok makes them: the scheduler
//! only reads them). Every assertion is on what a user sees: `spec.nodeName`, the
//! FailedScheduling event and the PodScheduled condition, the lease holder.

#[path = "../support/mod.rs"]
mod support;

mod filters;
mod leader;
mod scheduling;

use std::time::Duration;

use serde_json::{json, Value};
use support::{Apiserver, Scheduler, Server};

/// A store, an apiserver on it, and a scheduler.
pub struct Stack {
    pub sched: Vec<Scheduler>,
    pub api: Apiserver,
    pub store: Server,
}

impl Stack {
    /// One scheduler with default flags (leader election on).
    pub async fn start() -> Stack {
        Self::start_with(1, &[]).await
    }

    /// `n` schedulers, each with `extra` flags.
    pub async fn start_with(n: usize, extra: &[&str]) -> Stack {
        let store = Server::start().await;
        let api = Apiserver::start(&store.endpoint).await;
        let sched = (0..n)
            .map(|_| {
                Scheduler::start(
                    &api.identity_kubeconfig("system:kube-scheduler", None),
                    extra,
                )
            })
            .collect();
        Stack { sched, api, store }
    }

    /// `kubectl apply -f -` of a JSON manifest.
    #[track_caller]
    pub fn apply(&self, manifest: &Value) {
        let out = self
            .api
            .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest.to_string()));
        out.out();
    }

    /// The pod's `spec.nodeName` as `kubectl get` prints it ("" while unscheduled).
    pub fn node_of(&self, pod: &str) -> String {
        let out = self
            .api
            .kubectl(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
        out.out().to_string()
    }

    /// Polls `f` until it returns `Some` (panicking after `timeout`, or with its log
    /// as soon as a scheduler process has exited).
    pub async fn poll<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Stack) -> Option<T>,
    ) -> T {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            for s in &mut self.sched {
                s.check_running();
            }
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the pod is bound; returns its node.
    pub async fn bound(&mut self, pod: &str) -> String {
        let what = format!("pod {pod} to be bound");
        self.poll(&what, Duration::from_secs(20), |s| {
            Some(s.node_of(pod)).filter(|n| !n.is_empty())
        })
        .await
    }

    /// Waits for a FailedScheduling event on the pod and returns its message, as
    /// `kubectl get events` shows it.
    pub async fn failed_scheduling(&self, pod: &str) -> String {
        let what = format!("a FailedScheduling event for {pod}");
        support::eventually(&what, Duration::from_secs(20), || async {
            let out = self.api.kubectl(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason=FailedScheduling"),
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            Some(out.out().to_string()).filter(|m| !m.is_empty())
        })
        .await
    }
}

/// A fake node: capacity = allocatable, Ready, with `kubernetes.io/hostname`.
pub struct NodeBuilder {
    name: String,
    cpu: String,
    memory: String,
    pods: u32,
    labels: Vec<(String, String)>,
    taints: Vec<Value>,
    unschedulable: bool,
}

pub fn node(name: &str, cpu: &str, memory: &str) -> NodeBuilder {
    NodeBuilder {
        name: name.into(),
        cpu: cpu.into(),
        memory: memory.into(),
        pods: 110,
        labels: vec![("kubernetes.io/hostname".into(), name.into())],
        taints: Vec::new(),
        unschedulable: false,
    }
}

impl NodeBuilder {
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        let mut t = json!({"key": key, "effect": effect});
        if !value.is_empty() {
            t["value"] = json!(value);
        }
        self.taints.push(t);
        self
    }

    pub fn pods(mut self, n: u32) -> Self {
        self.pods = n;
        self
    }

    pub fn unschedulable(mut self) -> Self {
        self.unschedulable = true;
        self
    }

    pub fn json(&self) -> Value {
        let res = json!({"cpu": self.cpu, "memory": self.memory, "pods": self.pods.to_string()});
        let labels: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"unschedulable": self.unschedulable, "taints": self.taints},
            "status": {
                "capacity": res,
                "allocatable": res,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kwok-style fake node"}],
            },
        })
    }
}

/// A one-container pod asking for `cpu` (and 64Mi of memory).
pub fn pod(name: &str, cpu: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{
            "name": "c",
            "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
        }]},
    })
}
