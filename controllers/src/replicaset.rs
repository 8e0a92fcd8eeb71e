//! The ReplicaSet controller: exactly `spec.replicas` active pods matching the selector,
//! created from the template and owned by the ReplicaSet; orphans that match are
//! adopted and owned pods that stop matching are released; status as upstream reports
//! it. Expectations (the names of pods this controller created or deleted and has not
//! yet seen in its cache) keep a lagging watch from making it create or delete twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::Utc;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::util::{self, Availability};
use crate::Error;

/// Upstream's cap on pods created or deleted in one sync.
const BURST_REPLICAS: usize = 500;
/// How long unobserved creations and deletions hold a ReplicaSet back before the
/// controller stops waiting for them (upstream: 5 minutes; shorter here because a pod
/// created and deleted by someone else before our cache saw it is never observed).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(30);

/// Pods this controller created or deleted for one ReplicaSet and has not seen yet.
#[derive(Default)]
struct Expectation {
    creates: Vec<String>,
    deletes: Vec<String>,
    since: Option<Instant>,
}

/// Per-ReplicaSet expectations, keyed `namespace/name`.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Expectation>>);

impl Expectations {
    /// Whether every recorded creation is in the cache and every recorded deletion gone
    /// from it (or being deleted), or the record expired.
    pub fn satisfied(&self, key: &str, ns: &str, pods: &Store<Pod>) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = all.get_mut(key) else {
            return true;
        };
        e.creates
            .retain(|n| pods.get(&ObjectRef::new(n).within(ns)).is_none());
        e.deletes.retain(|n| {
            pods.get(&ObjectRef::new(n).within(ns))
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        });
        let done = e.creates.is_empty() && e.deletes.is_empty();
        let expired = e.since.is_some_and(|t| t.elapsed() > EXPECTATIONS_TTL);
        if done || expired {
            all.remove(key);
            return true;
        }
        false
    }

    /// Records pods created (by name) and deleted, to be seen in the cache.
    pub fn expect(&self, key: &str, creates: Vec<String>, deletes: Vec<String>) {
        if creates.is_empty() && deletes.is_empty() {
            return;
        }
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = all.entry(key.to_string()).or_default();
        e.creates.extend(creates);
        e.deletes.extend(deletes);
        e.since = Some(Instant::now());
    }
}

/// What a reconcile needs.
pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub expectations: Expectations,
}

/// Runs the controller until the process ends. `pod_events` are the pods the shared
/// pod cache changed (after it changed, so a reconcile they trigger sees them).
pub async fn run(client: Client, pods: Store<Pod>, pod_events: crate::Events<Pod>) {
    let rs_api = Api::<ReplicaSet>::all(client.clone());
    let controller = Controller::new(rs_api, watcher::Config::default());
    let rs_store = controller.store();
    let ctx = Arc::new(Ctx {
        client,
        pods,
        expectations: Expectations::default(),
    });
    let triggers = crate::stream(pod_events)
        .flat_map(move |pod| futures::stream::iter(pod_owners(&rs_store, &pod)));
    controller
        .reconcile_on(triggers)
        .reconcile_all_on(crate::resync())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The ReplicaSets a pod event concerns: its controller if it is a ReplicaSet, or, for
/// an orphan, every ReplicaSet in its namespace whose selector matches it.
fn pod_owners(rs_store: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(c) = util::controller_of(pod.metadata.owner_references.as_ref()) {
        if c.kind == "ReplicaSet" {
            return vec![ObjectRef::new(&c.name).within(&ns)];
        }
        return vec![];
    }
    rs_store
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            rs.spec.as_ref().is_some_and(|s| {
                !util::selector_is_empty(&s.selector)
                    && util::selector_matches(&s.selector, pod.metadata.labels.as_ref())
            })
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = rs.namespace().unwrap_or_default(), name = rs.name_any(), error = %err, "replicaset sync failed");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let key = util::key(Some(&ns), &name);
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if util::selector_is_empty(&spec.selector) {
        return Ok(Action::await_change());
    }
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let deleting = rs.metadata.deletion_timestamp.is_some();

    // Claim: adopt matching orphans, release owned pods that stopped matching.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str()) || !util::pod_is_active(&pod) {
            continue;
        }
        let matches = util::selector_matches(&spec.selector, pod.metadata.labels.as_ref());
        match util::controller_of(pod.metadata.owner_references.as_ref()) {
            Some(c) if c.uid == uid => {
                if matches || deleting {
                    owned.push(pod);
                } else {
                    release(&pods_api, &pod, &uid).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting => {
                if let Some(p) = adopt(&pods_api, &pod, &rs).await? {
                    owned.push(Arc::new(p));
                }
            }
            None => {}
        }
    }

    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let mut failure: Option<(&'static str, String)> = None;
    if !deleting && ctx.expectations.satisfied(&key, &ns, &ctx.pods) {
        if owned.len() < want {
            let n = (want - owned.len()).min(BURST_REPLICAS);
            let (created, err) = create_pods(&ctx.client, &pods_api, &rs, n).await;
            ctx.expectations.expect(&key, created, vec![]);
            if let Some(e) = err {
                failure = Some(("FailedCreate", e));
            }
        } else if owned.len() > want {
            let n = (owned.len() - want).min(BURST_REPLICAS);
            let victims = victims(&owned, n);
            let mut deleted = Vec::new();
            for v in victims {
                let pn = v.name_any();
                match pods_api.delete(&pn, &DeleteParams::default()).await {
                    Ok(_) => {
                        crate::events::record(
                            &ctx.client,
                            "replicaset-controller",
                            rs.as_ref(),
                            crate::events::Type::Normal,
                            "SuccessfulDelete",
                            format!("Deleted pod: {pn}"),
                        );
                        deleted.push(pn)
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        crate::events::record(
                            &ctx.client,
                            "replicaset-controller",
                            rs.as_ref(),
                            crate::events::Type::Warning,
                            "FailedDelete",
                            format!("Error deleting: {e}"),
                        );
                        failure = Some(("FailedDelete", e.to_string()));
                        break;
                    }
                }
            }
            tracing::info!(namespace = %ns, name = %name, deleted = deleted.len(), "scaled down");
            ctx.expectations.expect(&key, vec![], deleted);
        }
    }

    // Status from what the cache shows now.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Utc::now();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut next: Option<Duration> = None;
    let mut st = ReplicaSetStatus {
        replicas: i32::try_from(owned.len()).unwrap_or(i32::MAX),
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    let (mut full, mut ready, mut avail) = (0, 0, 0);
    for p in &owned {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            full += 1;
        }
        if util::pod_is_ready(p) {
            ready += 1;
        }
        match util::pod_availability(p, min_ready, now) {
            Availability::Yes => avail += 1,
            Availability::After(d) => next = Some(next.map_or(d, |n| n.min(d))),
            Availability::No => {}
        }
    }
    st.fully_labeled_replicas = Some(full);
    st.ready_replicas = Some(ready);
    st.available_replicas = Some(avail);
    let old = rs.status.clone().unwrap_or_default();
    let mut conds: Vec<ReplicaSetCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    let prev_failure = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure")
        .cloned();
    if let Some((reason, msg)) = &failure {
        conds.push(match prev_failure {
            Some(c) if c.reason.as_deref() == Some(reason) => c,
            _ => ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.to_string()),
                message: Some(msg.clone()),
                last_transition_time: Some(util::now()),
            },
        });
    }
    st.conditions = (!conds.is_empty()).then_some(conds);
    if !status_equal(&old, &st) {
        let rs_api = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": st});
        rs_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if let Some((_, msg)) = failure {
        return Err(Error::Sync(msg));
    }
    if !ctx.expectations.satisfied(&key, &ns, &ctx.pods) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

/// Merge-patching a whole status only replaces fields it names: compare and write every
/// field, with absent conditions written as an empty list.
fn status_equal(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    let norm = |s: &ReplicaSetStatus| {
        let mut s = s.clone();
        if s.conditions.as_ref().is_some_and(|c| c.is_empty()) {
            s.conditions = None;
        }
        s.fully_labeled_replicas.get_or_insert(0);
        s.ready_replicas.get_or_insert(0);
        s.available_replicas.get_or_insert(0);
        s
    };
    norm(a) == norm(b)
}

/// Creates `n` pods from the template in slow-start batches (1, 2, 4, ...), as upstream
/// does so a failing template costs one error, not hundreds. Returns the created pods'
/// names and the first error.
async fn create_pods(
    client: &Client,
    api: &Api<Pod>,
    rs: &ReplicaSet,
    n: usize,
) -> (Vec<String>, Option<String>) {
    let mut created = Vec::new();
    let mut batch = 1;
    let mut left = n;
    while left > 0 {
        let size = batch.min(left);
        let pod = util::pod_from_template(
            rs.spec.as_ref().and_then(|s| s.template.clone()),
            rs,
            "apps/v1",
            "ReplicaSet",
        );
        let pp = PostParams::default();
        let results = futures::future::join_all((0..size).map(|_| api.create(&pp, &pod))).await;
        let mut err = None;
        for r in results {
            match r {
                Ok(p) => {
                    crate::events::record(
                        client,
                        "replicaset-controller",
                        rs,
                        crate::events::Type::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                    created.push(p.name_any());
                }
                Err(e) => {
                    crate::events::record(
                        client,
                        "replicaset-controller",
                        rs,
                        crate::events::Type::Warning,
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    );
                    err = Some(e.to_string());
                }
            }
        }
        if let Some(e) = err {
            tracing::warn!(namespace = rs.namespace().unwrap_or_default(), name = rs.name_any(), error = %e, "pod creation failed");
            return (created, Some(e));
        }
        left -= size;
        batch *= 2;
    }
    tracing::info!(
        namespace = rs.namespace().unwrap_or_default(),
        name = rs.name_any(),
        created = created.len(),
        "created pods"
    );
    (created, None)
}

/// Adds `rs` as the controller of an orphan pod.
async fn adopt(api: &Api<Pod>, pod: &Pod, rs: &ReplicaSet) -> Result<Option<Pod>, Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(util::controller_ref(
        "apps/v1",
        "ReplicaSet",
        &rs.name_any(),
        rs.metadata.uid.as_deref().unwrap_or_default(),
    ));
    let adopted = set_owner_refs(api, pod, refs).await?;
    if adopted.is_some() {
        tracing::info!(
            namespace = pod.namespace().unwrap_or_default(),
            pod = pod.name_any(),
            owner = rs.name_any(),
            "adopted pod"
        );
    }
    Ok(adopted)
}

/// Removes the owner reference to `uid` from a pod that no longer matches.
async fn release(api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<(), Error> {
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect();
    if set_owner_refs(api, pod, refs).await?.is_some() {
        tracing::info!(
            namespace = pod.namespace().unwrap_or_default(),
            pod = pod.name_any(),
            "released pod"
        );
    }
    Ok(())
}

/// Replaces a pod's owner references: a merge patch carrying the pod's
/// resourceVersion, so a concurrent change makes it fail rather than be overwritten.
/// `None` when the pod is gone.
async fn set_owner_refs(
    api: &Api<Pod>,
    pod: &Pod,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<Option<Pod>, Error> {
    let patch =
        json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version()}});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(p) => Ok(Some(p)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The `n` pods to delete first, in upstream's order: unassigned before assigned,
/// Pending before Unknown before Running, not ready before ready, lower
/// pod-deletion-cost first, more pods of this set on the same node first, more recently
/// ready first, more restarts first, newer first.
pub fn victims(pods: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut per_node: HashMap<String, i32> = HashMap::new();
    for p in pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let mut ranked: Vec<(PodRank, Arc<Pod>)> = pods
        .iter()
        .map(|p| (PodRank::of(p, &per_node), p.clone()))
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0));
    ranked.into_iter().take(n).map(|(_, p)| p).collect()
}

/// A pod's deletion priority: smaller sorts first (deleted first).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PodRank {
    assigned: bool,
    phase: u8,
    ready: bool,
    cost: i32,
    /// Negated co-located count: more pods of the set on its node sorts first.
    colocated: i32,
    /// Negated ready time in seconds: more recently ready sorts first.
    ready_since: i64,
    /// Negated restarts.
    restarts: i32,
    /// Negated creation time.
    created: i64,
}

impl PodRank {
    fn of(p: &Pod, per_node: &HashMap<String, i32>) -> PodRank {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => 0,
            Some("Running") => 2,
            _ => 1,
        };
        let ready = util::pod_ready_since(p);
        let cost = p
            .annotations()
            .get("controller.kubernetes.io/pod-deletion-cost")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0);
        PodRank {
            assigned: node.is_some(),
            phase,
            ready: ready.is_some(),
            cost,
            colocated: -node.and_then(|n| per_node.get(&n).copied()).unwrap_or(0),
            ready_since: -ready.flatten().map(|t| t.timestamp()).unwrap_or(0),
            restarts: -restarts,
            created: -p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.timestamp())
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::chrono::TimeZone;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Utc.timestamp_opt(created, 0).single().map(Time),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn victims_in_upstream_order() {
        let pods = vec![
            pod("ready-old", Some("n"), "Running", true, 100),
            pod("ready-new", Some("n"), "Running", true, 200),
            pod("running-unready", Some("n"), "Running", false, 50),
            pod("pending", Some("n"), "Pending", false, 10),
            pod("unassigned", None, "Pending", false, 1),
        ];
        let order: Vec<String> = victims(&pods, 5).iter().map(|p| p.name_any()).collect();
        assert_eq!(
            order,
            [
                "unassigned",
                "pending",
                "running-unready",
                "ready-new",
                "ready-old"
            ]
        );
    }
}
