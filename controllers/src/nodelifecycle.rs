//! The node lifecycle controller, after upstream's: a node whose kubelet stopped
//! renewing its Lease (and posting status) for the grace period has its kubelet
//! conditions set to Unknown ("Kubelet stopped posting node status."), gets the
//! `node.kubernetes.io/unreachable` taints (`not-ready` for a node that reports Ready
//! False), and its pods are marked not Ready; the taints go again when the node is
//! healthy. Pods on a node with a NoExecute taint they do not tolerate are evicted
//! (deleted) at once, those tolerating it for `tolerationSeconds` after that long from
//! when the taint was added: the taint-eviction controller's rule, so the ReplicaSet
//! controller replaces them on healthy nodes; any other NoExecute taint (an admin's
//! `kubectl taint`) evicts by the same rule. As upstream, an evicted pod first gets
//! the `DisruptionTarget` condition (`DeletionByTaintManager`), and the node and its
//! pods get the events `kubectl describe` shows (`NodeNotReady`, `TaintManagerEviction`).
//!
//! "Stopped renewing" is judged on this process's own clock, from when it last saw the
//! Lease's renew time (or the Ready heartbeat) change, as upstream does, so the
//! kubelet's and this clock need not agree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::chrono::{self, DateTime, Utc};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;

use futures::StreamExt;

use crate::events;

/// The event sources, upstream's component names.
const NODE_CONTROLLER: &str = "node-controller";
const TAINT_EVICTION: &str = "taint-eviction-controller";

/// The taint keys this controller owns.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The conditions a kubelet posts, set to Unknown when it falls silent.
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// kube-controller-manager's `--node-monitor-period` and `--node-monitor-grace-period`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub monitor_period: Duration,
    pub grace_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(50),
        }
    }
}

/// When this process last saw a node's heartbeat change.
struct Seen {
    heartbeat: Option<DateTime<Utc>>,
    at: Instant,
    /// When this process first saw each of the node's NoExecute taints that carry no
    /// `timeAdded` (by key and value): their tolerations count from then.
    untimed: HashMap<(String, Option<String>), DateTime<Utc>>,
}

/// Runs the controller until the process stops.
pub async fn run(client: Client, settings: Settings) {
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (leases, leases_w) = reflector::store::<Lease>();
    let node_watch = reflector(
        nodes_w,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    let lease_watch = reflector(
        leases_w,
        watcher(
            Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    let monitor = async {
        let _ = nodes.wait_until_ready().await;
        let _ = leases.wait_until_ready().await;
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut tick = tokio::time::interval(settings.monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One pass over the Leases per tick, not one per node.
            let renewals: HashMap<String, DateTime<Utc>> = leases
                .state()
                .iter()
                .filter_map(|l| Some((l.name_any(), l.spec.as_ref()?.renew_time.as_ref()?.0)))
                .collect();
            let all = nodes.state();
            for node in &all {
                let name = node.name_any();
                let renewed = renewals.get(&name).copied();
                if let Err(e) = monitor_node(&client, &settings, renewed, &mut seen, node).await {
                    tracing::warn!(node = %name, error = %e, "node lifecycle");
                }
            }
            let names: std::collections::HashSet<String> =
                all.iter().map(|n| n.name_any()).collect();
            seen.retain(|n, _| names.contains(n));
        }
    };
    tokio::join!(node_watch, lease_watch, monitor);
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

async fn monitor_node(
    client: &Client,
    settings: &Settings,
    lease_renew: Option<DateTime<Utc>>,
    seen: &mut HashMap<String, Seen>,
    node: &Node,
) -> Result<(), kube::Error> {
    let name = node.name_any();
    let ready_heartbeat =
        ready_condition(node).and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    let heartbeat = lease_renew.max(ready_heartbeat);
    let entry = seen.entry(name.clone()).or_insert(Seen {
        heartbeat,
        at: Instant::now(),
        untimed: HashMap::new(),
    });
    if entry.heartbeat != heartbeat {
        entry.heartbeat = heartbeat;
        entry.at = Instant::now();
    }
    let silent = entry.at.elapsed() > settings.grace_period;
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = ready_condition(node).map(|c| c.status.as_str());
    if silent && ready != Some("Unknown") {
        tracing::info!(node = %name, "kubelet stopped posting node status; conditions set to Unknown");
        set_conditions_unknown(&nodes, node).await?;
        // Upstream's RecordNodeStatusChange.
        events::record(
            client,
            NODE_CONTROLLER,
            node,
            events::Type::Normal,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        mark_pods_not_ready(client, &pods_on(client, &name).await?).await?;
        // The taints follow on the next pass, from the condition as stored.
        return Ok(());
    }
    // What the kubelet would have reported, had it been there: pods bound to the node
    // since, or still Ready after a failed pass or this controller's restart, are not
    // Ready either (upstream does this as such pods change).
    let mut pods = None;
    if ready == Some("Unknown") {
        let on = pods_on(client, &name).await?;
        mark_pods_not_ready(client, &on).await?;
        pods = Some(on);
    }
    let want: Vec<Taint> = match ready {
        Some("Unknown") => owned_taints(UNREACHABLE),
        Some("False") => owned_taints(NOT_READY),
        _ => Vec::new(),
    };
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let others = current
        .iter()
        .filter(|t| t.key != UNREACHABLE && t.key != NOT_READY)
        .cloned();
    let ours: Vec<Taint> = want
        .into_iter()
        .map(|w| {
            // A taint already there keeps its timeAdded: eviction counts from it.
            current
                .iter()
                .find(|t| t.key == w.key && t.effect == w.effect)
                .cloned()
                .unwrap_or(w)
        })
        .collect();
    let next: Vec<Taint> = others.chain(ours.iter().cloned()).collect();
    if next != current {
        tracing::info!(node = %name, taints = ?ours.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints");
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"taints": next},
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    // Every NoExecute taint evicts, not only ours: the taint-eviction controller's
    // rule covers a taint an admin puts on a node too.
    let mut no_execute: Vec<Taint> = next
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .collect();
    if let Some(entry) = seen.get_mut(&name) {
        let now = Utc::now();
        entry.untimed.retain(|(k, v), _| {
            no_execute
                .iter()
                .any(|t| t.time_added.is_none() && &t.key == k && &t.value == v)
        });
        for t in no_execute.iter_mut().filter(|t| t.time_added.is_none()) {
            let since = *entry
                .untimed
                .entry((t.key.clone(), t.value.clone()))
                .or_insert(now);
            t.time_added = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
        }
    }
    if !no_execute.is_empty() {
        let refs: Vec<&Taint> = no_execute.iter().collect();
        let pods = match pods {
            Some(p) => p,
            None => pods_on(client, &name).await?,
        };
        evict(client, &name, &refs, pods).await?;
    }
    Ok(())
}

fn owned_taints(key: &str) -> Vec<Taint> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Utc::now());
    ["NoSchedule", "NoExecute"]
        .iter()
        .map(|effect| Taint {
            key: key.to_string(),
            effect: effect.to_string(),
            time_added: (*effect == "NoExecute").then(|| now.clone()),
            value: None,
        })
        .collect()
}

async fn set_conditions_unknown(nodes: &Api<Node>, node: &Node) -> Result<(), kube::Error> {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut conditions = Vec::new();
    for c in node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
    {
        let mut v = serde_json::to_value(&c).unwrap_or_default();
        if KUBELET_CONDITIONS.contains(&c.type_.as_str()) && c.status != "Unknown" {
            v["status"] = json!("Unknown");
            v["reason"] = json!("NodeStatusUnknown");
            v["message"] = json!("Kubelet stopped posting node status.");
            v["lastTransitionTime"] = json!(now);
        }
        conditions.push(v);
    }
    let patch = json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "status": {"conditions": conditions},
    });
    nodes
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn pods_on(client: &Client, node: &str) -> Result<Vec<Pod>, kube::Error> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    Ok(Api::<Pod>::all(client.clone()).list(&lp).await?.items)
}

/// Upstream's MarkPodsNotReady: the pods of a silent node are no longer Ready, so
/// Services and rollouts stop counting on them.
async fn mark_pods_not_ready(client: &Client, pods: &[Pod]) -> Result<(), kube::Error> {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for pod in pods {
        let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
            continue;
        };
        if !conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            continue;
        }
        let next: Vec<serde_json::Value> = conditions
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if c.type_ == "Ready" {
                    v["status"] = json!("False");
                    v["lastTransitionTime"] = json!(now);
                }
                v
            })
            .collect();
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"status": {"conditions": next}});
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => events::record(
                client,
                NODE_CONTROLLER,
                pod,
                events::Type::Warning,
                "NodeNotReady",
                "Node is not ready".to_string(),
            ),
            Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `t` tolerates `taint`, and for how long (None: forever).
fn toleration_for<'a>(tolerations: &'a [Toleration], taint: &Taint) -> Option<&'a Toleration> {
    tolerations.iter().find(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// The taint-eviction rule: a pod not tolerating a NoExecute taint goes at once, one
/// tolerating it for `tolerationSeconds` goes that long after the taint was added.
async fn evict(
    client: &Client,
    node: &str,
    taints: &[&Taint],
    pods: Vec<Pod>,
) -> Result<(), kube::Error> {
    let now = Utc::now();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let due = taints
            .iter()
            .any(|taint| match toleration_for(&tolerations, taint) {
                None => true,
                Some(t) => match (t.toleration_seconds, &taint.time_added) {
                    (Some(secs), Some(added)) => {
                        added.0 + chrono::Duration::seconds(secs.max(0)) <= now
                    }
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            });
        if !due {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        tracing::info!(node = %node, namespace = %ns, pod = %name, "evicting pod from tainted node");
        events::record(
            client,
            TAINT_EVICTION,
            &pod,
            events::Type::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {ns}/{name}"),
        );
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // Upstream's addConditionAndDeletePod: the pod says why it goes before it goes
        // (a Job's pod failure policy and PodDisruptionBudgets read it), written over
        // its status as it is now (this pass may have just marked it not Ready).
        let fresh = match api.get(&name).await {
            Ok(p) => p,
            Err(kube::Error::Api(_)) => continue,
            Err(e) => return Err(e),
        };
        if let Some(patch) = disruption_target(&fresh) {
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The status patch that adds the `DisruptionTarget` condition to `pod`, unless it is
/// already there.
fn disruption_target(pod: &Pod) -> Option<serde_json::Value> {
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    {
        return None;
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut next: Vec<serde_json::Value> = conditions
        .iter()
        .filter(|c| c.type_ != "DisruptionTarget")
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    next.push(json!({
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": now,
    }));
    Some(
        json!({"metadata": {"resourceVersion": pod.resource_version()}, "status": {"conditions": next}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).expect("toleration")
    }

    #[test]
    fn tolerations_match_like_upstream() {
        let taint = &owned_taints(UNREACHABLE)[1];
        assert_eq!(taint.effect, "NoExecute");
        let exact = tol(
            json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}),
        );
        let all = tol(json!({"operator": "Exists"}));
        let other = tol(json!({"key": NOT_READY, "operator": "Exists", "effect": "NoExecute"}));
        let wrong_effect =
            tol(json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}));
        assert_eq!(
            toleration_for(std::slice::from_ref(&exact), taint).and_then(|t| t.toleration_seconds),
            Some(5)
        );
        assert!(toleration_for(std::slice::from_ref(&all), taint).is_some());
        assert!(toleration_for(&[other, wrong_effect], taint).is_none());
    }
}
