//! What every node agent does for its Node object, simulated or real: register it
//! (or take over an existing one after a restart), keep its Lease in
//! `kube-node-lease` renewed every quarter of its duration (the kubelet's
//! `renewInterval`), and re-post the node status every `nodeStatusReportFrequency`.
//! The modes differ only in what the Node says (capacity, addresses, node info), which
//! they hand in as a [`NodeSource`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use crate::NodeError;

/// The namespace the kubelet keeps its node Leases in.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What a mode says about one of its nodes.
pub trait NodeSource: Send + Sync + 'static {
    /// The whole Node object to register (metadata, spec and status).
    fn node_object(&self, name: &str) -> Value;
    /// The node status to re-post on every status report.
    fn node_status(&self, name: &str) -> Value;
}

/// How often a node's Lease is renewed and its status posted.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat {
    /// The Lease's `leaseDurationSeconds` (the kubelet's `nodeLeaseDurationSeconds`).
    pub lease_duration_seconds: i32,
    /// How often the node status is posted when nothing changed (the kubelet's
    /// `nodeStatusReportFrequency`).
    pub status_report_frequency: Duration,
}

/// RFC 3339 with seconds, as the API's `Time` fields are written.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with microseconds, as `MicroTime` fields (a Lease's `renewTime`) are.
pub fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The labels the kubelet puts on its Node, plus `--node-labels`.
pub fn node_labels(name: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(extra.clone());
    labels
}

/// The four node conditions of a healthy kubelet, with the kubelet's reasons.
pub fn healthy_conditions() -> Value {
    let t = now();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    json!([
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// Parses `--register-with-taints` (`key=value:Effect,key:Effect`).
/// What a node reports about itself, beyond its name and address.
pub struct Facts<'a> {
    pub cpu: String,
    pub memory: String,
    pub ephemeral_storage: String,
    pub max_pods: u32,
    pub runtime_version: &'a str,
    pub kernel_version: String,
    pub os_image: String,
    pub boot_id: String,
    pub machine_id: String,
    pub system_uuid: String,
    /// The port of the kubelet's HTTPS server (`daemonEndpoints.kubeletEndpoint`), where
    /// the apiserver reaches it for logs and exec.
    pub kubelet_port: u16,
}

/// A Node's status as the kubelet posts it: capacity (all allocatable), healthy
/// conditions, addresses and node info.
pub fn node_status(name: &str, ip: &str, f: Facts<'_>) -> Value {
    let resources = json!({
        "cpu": f.cpu,
        "memory": f.memory,
        "pods": f.max_pods.to_string(),
        "ephemeral-storage": f.ephemeral_storage,
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": healthy_conditions(),
        "addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": f.kubelet_port}},
        "nodeInfo": {
            "architecture": "amd64",
            "bootID": f.boot_id,
            "containerRuntimeVersion": f.runtime_version,
            "kernelVersion": f.kernel_version,
            "kubeProxyVersion": "",
            "kubeletVersion": "v1.32.0",
            "machineID": f.machine_id,
            "operatingSystem": "linux",
            "osImage": f.os_image,
            "systemUUID": f.system_uuid,
        },
    })
}

/// The kubelet's last word on a pod whose containers are stopped: the delete for good
/// (grace 0), guarded by the pod's uid so a new pod of the same name survives.
pub async fn final_delete(client: &kube::Client, ns: &str, name: &str, uid: &str) {
    use kube::api::{Api, DeleteParams, Preconditions};
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => tracing::info!(namespace = %ns, pod = %name, "pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => tracing::warn!(namespace = %ns, pod = %name, error = %e, "deleting pod"),
    }
}

pub fn parse_taints(s: &str) -> Result<Vec<Value>, NodeError> {
    let mut out = Vec::new();
    for t in s.split(',').filter(|t| !t.is_empty()) {
        let (kv, effect) = t
            .rsplit_once(':')
            .ok_or_else(|| NodeError::Flag(format!("invalid taint spec: {t}")))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(NodeError::Flag(format!(
                "invalid taint effect: {effect}, unsupported taint effect"
            )));
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(NodeError::Flag(format!("invalid taint spec: {t}")));
        }
        let mut taint = json!({"key": key, "effect": effect});
        if !value.is_empty() {
            taint["value"] = json!(value);
        }
        out.push(taint);
    }
    Ok(out)
}

/// Parses `--node-labels` (`key=value,...`).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, NodeError> {
    s.split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| NodeError::Flag(format!("invalid label: {l}")))
        })
        .collect()
}

/// Creates the Node, or takes over an existing one (a restarted agent), and returns
/// its uid. Retries until the apiserver answers.
pub async fn register(client: &kube::Client, source: &dyn NodeSource, name: &str) -> String {
    let api: Api<Node> = Api::all(client.clone());
    let mut backoff = Duration::from_millis(200);
    loop {
        let obj = source.node_object(name);
        let attempt = async {
            let node: Node =
                serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams::default(), &node).await {
                Ok(n) => Ok(n),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Re-registration: labels, taints and status are the agent's to
                    // set; whatever else users put on the node stays.
                    let meta = json!({"metadata": {"labels": obj["metadata"]["labels"]},
                                      "spec": obj["spec"]});
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&meta))
                        .await?;
                    api.patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": obj["status"]})),
                    )
                    .await
                }
                Err(e) => Err(e),
            }
        };
        match attempt.await {
            Ok(n) => {
                tracing::info!(node = name, "node registered");
                return n.metadata.uid.unwrap_or_default();
            }
            Err(e) => {
                tracing::warn!(node = name, error = %e, "registering node; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(7));
            }
        }
    }
}

/// Renews the node's Lease every quarter of its duration and re-posts the node
/// status every `status_report_frequency`, forever.
pub async fn heartbeat(
    client: kube::Client,
    source: Arc<dyn NodeSource>,
    hb: Heartbeat,
    name: String,
    uid: String,
) {
    let renew = Duration::from_secs((hb.lease_duration_seconds.max(4) / 4) as u64);
    let mut tick = tokio::time::interval(renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now();
    let api: Api<Node> = Api::all(client.clone());
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&client, &name, &uid, hb.lease_duration_seconds).await {
            tracing::warn!(node = %name, error = %e, "renewing node lease");
        }
        if last_status.elapsed() >= hb.status_report_frequency {
            let status = source.node_status(&name);
            match api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                Ok(_) => last_status = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(node = %name, error = %e, "posting node status"),
            }
        }
    }
}

/// Renews the Lease, creating it (owned by the Node, so it goes with it) if absent.
async fn renew_lease(
    client: &kube::Client,
    name: &str,
    uid: &str,
    duration_seconds: i32,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let spec = json!({"holderIdentity": name,
                      "leaseDurationSeconds": duration_seconds,
                      "renewTime": now_micro()});
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}],
                },
                "spec": spec,
            });
            let lease: Lease = serde_json::from_value(lease).map_err(kube::Error::SerdeError)?;
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_and_labels_parse_like_the_kubelet() {
        let t = parse_taints("a=b:NoSchedule,c:NoExecute").expect("taints");
        assert_eq!(
            t[0],
            json!({"key": "a", "value": "b", "effect": "NoSchedule"})
        );
        assert_eq!(t[1], json!({"key": "c", "effect": "NoExecute"}));
        assert!(parse_taints("a=b:Sometimes").is_err());
        assert!(parse_taints("nokey").is_err());
        let l = parse_labels("zone=a,tier=web").expect("labels");
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels("novalue").is_err());
    }
}
