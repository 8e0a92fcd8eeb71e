//! The Deployment controller, after upstream's `pkg/controller/deployment`: one
//! ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`), rolling
//! updates bounded by maxSurge/maxUnavailable, Recreate, proportional scaling of a
//! rollout in progress, pause, the revision annotations `kubectl rollout history` and
//! `undo` read, revisionHistoryLimit, and the Progressing/Available conditions
//! `kubectl rollout status` waits on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::chrono::Utc;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::util;
use crate::Error;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// Upstream's cap on the revision-history annotation's length.
const MAX_REV_HISTORY_CHARS: usize = 2000;

/// What a reconcile needs.
pub struct Ctx {
    pub client: Client,
    pub rss: Store<ReplicaSet>,
    pub pods: Store<Pod>,
}

/// Runs the controller until the process ends. ReplicaSet events trigger their
/// Deployment (or, for an orphan, every Deployment selecting it); pod events trigger
/// the Deployment of their ReplicaSet (Recreate waits for old pods to go).
pub async fn run(
    client: Client,
    rss: Store<ReplicaSet>,
    pods: Store<Pod>,
    rs_events: crate::Events<ReplicaSet>,
    pod_events: crate::Events<Pod>,
) {
    let api = Api::<Deployment>::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let ds = controller.store();
    let ds2 = ds.clone();
    let rss2 = rss.clone();
    let rs_triggers =
        crate::stream(rs_events).flat_map(move |rs| futures::stream::iter(rs_owners(&ds, &rs)));
    let pod_triggers = crate::stream(pod_events).flat_map(move |pod| {
        let ns = pod.namespace().unwrap_or_default();
        let rs = util::controller_of(pod.metadata.owner_references.as_ref())
            .filter(|c| c.kind == "ReplicaSet")
            .and_then(|c| rss2.get(&ObjectRef::new(&c.name).within(&ns)));
        let refs = rs.map(|rs| rs_owners(&ds2, &rs)).unwrap_or_default();
        futures::stream::iter(refs)
    });
    let ctx = Arc::new(Ctx { client, rss, pods });
    controller
        .reconcile_on(futures::stream::select(rs_triggers, pod_triggers))
        .reconcile_all_on(crate::resync())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn rs_owners(ds: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    if let Some(c) = util::controller_of(rs.metadata.owner_references.as_ref()) {
        if c.kind == "Deployment" {
            return vec![ObjectRef::new(&c.name).within(&ns)];
        }
        return vec![];
    }
    ds.state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| {
            d.spec.as_ref().is_some_and(|s| {
                !util::selector_is_empty(&s.selector)
                    && util::selector_matches(&s.selector, rs.metadata.labels.as_ref())
            })
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

fn error_policy(d: Arc<Deployment>, err: &Error, _: Arc<Ctx>) -> Action {
    if is_conflict(err) {
        // Our cache was behind our own last write; the next sync reads it fresh.
        tracing::debug!(namespace = d.namespace().unwrap_or_default(), name = d.name_any(), error = %err, "deployment sync conflicted");
        return Action::requeue(Duration::from_millis(100));
    }
    tracing::warn!(namespace = d.namespace().unwrap_or_default(), name = d.name_any(), error = %err, "deployment sync failed");
    Action::requeue(Duration::from_millis(500))
}

fn is_conflict(err: &Error) -> bool {
    matches!(err, Error::Kube(kube::Error::Api(e)) if e.code == 409)
}

/// One sync: the Deployment as this reconcile changes it, its ReplicaSets, and the
/// APIs to write them.
struct Sync<'a> {
    ctx: &'a Ctx,
    d: Deployment,
    rs_api: Api<ReplicaSet>,
    d_api: Api<Deployment>,
    /// When to look again (progress deadline, minReadySeconds).
    requeue: Option<Duration>,
}

async fn reconcile(dep: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = dep.namespace().unwrap_or_default();
    let Some(spec) = dep.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if util::selector_is_empty(&spec.selector) {
        return Ok(Action::await_change());
    }
    let mut s = Sync {
        ctx: &ctx,
        d: (*dep).clone(),
        rs_api: Api::namespaced(ctx.client.clone(), &ns),
        d_api: Api::namespaced(ctx.client.clone(), &ns),
        requeue: None,
    };
    let rss = s.claim().await?;
    if s.d.metadata.deletion_timestamp.is_some() {
        let (new, old) = s.split(&rss);
        s.sync_status(new.as_ref(), &old).await?;
        return Ok(Action::await_change());
    }
    s.check_paused().await?;
    let paused = s.spec().paused.unwrap_or(false);
    if paused || s.is_scaling_event(&rss).await? {
        s.sync(rss).await?;
    } else if s.recreate() {
        s.rollout_recreate(rss).await?;
    } else {
        s.rollout_rolling(rss).await?;
    }
    Ok(match s.requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

impl Sync<'_> {
    fn spec(&self) -> k8s_openapi::api::apps::v1::DeploymentSpec {
        self.d.spec.clone().unwrap_or_default()
    }

    fn replicas(&self) -> i32 {
        self.spec().replicas.unwrap_or(1)
    }

    fn recreate(&self) -> bool {
        self.spec()
            .strategy
            .and_then(|s| s.type_)
            .is_some_and(|t| t == "Recreate")
    }

    fn status(&self) -> DeploymentStatus {
        self.d.status.clone().unwrap_or_default()
    }

    fn want_requeue(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    /// The ReplicaSets this Deployment controls, adopting orphans that match its
    /// selector and releasing owned ones that stopped matching.
    async fn claim(&mut self) -> Result<Vec<ReplicaSet>, Error> {
        let ns = self.d.namespace().unwrap_or_default();
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let sel = self.spec().selector;
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let mut out = Vec::new();
        for rs in self.ctx.rss.state() {
            if rs.namespace().as_deref() != Some(ns.as_str()) {
                continue;
            }
            let matches = util::selector_matches(&sel, rs.metadata.labels.as_ref());
            match util::controller_of(rs.metadata.owner_references.as_ref()) {
                Some(c) if c.uid == uid => {
                    if matches || deleting {
                        out.push((*rs).clone());
                    } else {
                        let refs: Vec<_> = rs
                            .owner_references()
                            .iter()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        self.patch_owner_refs(&rs, refs).await?;
                    }
                }
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = rs.owner_references().to_vec();
                    refs.push(util::controller_ref(
                        "apps/v1",
                        "Deployment",
                        &self.d.name_any(),
                        &uid,
                    ));
                    if let Some(adopted) = self.patch_owner_refs(&rs, refs).await? {
                        out.push(adopted);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn patch_owner_refs(
        &self,
        rs: &ReplicaSet,
        refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> Result<Option<ReplicaSet>, Error> {
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.resource_version()}});
        match self
            .rs_api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The new ReplicaSet (template equal to the Deployment's, ignoring the hash
    /// label; the oldest such if several) and the others.
    fn split(&self, rss: &[ReplicaSet]) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
        let mut sorted = rss.to_vec();
        sort_by_creation(&mut sorted);
        let tmpl = self.spec().template;
        let new_idx = sorted.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &tmpl))
        });
        let new = new_idx.map(|i| sorted.remove(i));
        (new, sorted)
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision`: the new ReplicaSet (its revision
    /// annotations brought up to date, or created when `create` and missing) and the
    /// old ones; the Deployment's revision annotation follows the new one.
    async fn new_and_old(
        &mut self,
        rss: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let (existing, old) = self.split(rss);
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_revision = (max_old + 1).to_string();
        if let Some(rs) = existing {
            let mut rs2 = rs.clone();
            let mut changed = self.set_new_rs_annotations(&mut rs2, &new_revision, true);
            let min_ready = self.spec().min_ready_seconds;
            let rs_spec = rs2.spec.get_or_insert_with(Default::default);
            if rs_spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0) {
                rs_spec.min_ready_seconds = min_ready;
                changed = true;
            }
            let rs2 = if changed {
                self.replace_rs(&rs2).await?
            } else {
                rs
            };
            let rev = rs2.annotations().get(REVISION).cloned().unwrap_or_default();
            self.set_revision(&rev).await?;
            if self.has_progress_deadline() && self.condition("Progressing").is_none() {
                let msg = format!("Found new replica set \"{}\"", rs2.name_any());
                let mut st = self.status();
                set_condition(
                    &mut st,
                    new_condition("Progressing", "True", "FoundNewReplicaSet", &msg),
                );
                self.write_status(st).await?;
            }
            return Ok((Some(rs2), old));
        }
        if !create {
            return Ok((None, old));
        }
        let spec = self.spec();
        let collision = self.status().collision_count;
        let hash = compute_hash(&spec.template, collision);
        let mut tmpl = spec.template.clone();
        tmpl.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", self.d.name_any());
        let mut new_rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                labels: tmpl.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![util::controller_ref(
                    "apps/v1",
                    "Deployment",
                    &self.d.name_any(),
                    self.d.metadata.uid.as_deref().unwrap_or_default(),
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(tmpl),
            }),
            status: None,
        };
        let mut all = old.clone();
        all.push(new_rs.clone());
        let count = self.new_rs_new_replicas(&all, &new_rs);
        if let Some(s) = new_rs.spec.as_mut() {
            s.replicas = Some(count);
        }
        self.set_new_rs_annotations(&mut new_rs, &new_revision, false);
        let created = match self.rs_api.create(&PostParams::default(), &new_rs).await {
            Ok(rs) => {
                tracing::info!(namespace = self.d.namespace().unwrap_or_default(), deployment = self.d.name_any(), replicaset = %name, replicas = count, "created new replica set");
                if count > 0 {
                    crate::events::record(
                        &self.ctx.client,
                        "deployment-controller",
                        &self.d,
                        crate::events::Type::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {count}"),
                    );
                }
                rs
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let have = self.rs_api.get(&name).await?;
                let ours = util::controller_of(have.metadata.owner_references.as_ref())
                    .is_some_and(|c| Some(&c.uid) == self.d.metadata.uid.as_ref());
                let same = have
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if ours && same {
                    have
                } else {
                    // A hash collision: another template has this name. Bump
                    // collisionCount so the next sync hashes to another name.
                    let mut st = self.status();
                    st.collision_count = Some(st.collision_count.unwrap_or(0) + 1);
                    self.write_status(st).await?;
                    return Err(Error::Sync(format!(
                        "hash collision on replica set {name}; collisionCount raised"
                    )));
                }
            }
            Err(e) => {
                if self.has_progress_deadline() {
                    let msg = format!("Failed to create new replica set \"{name}\": {e}");
                    let mut st = self.status();
                    set_condition(
                        &mut st,
                        new_condition("Progressing", "False", "ReplicaSetCreateError", &msg),
                    );
                    self.write_status(st).await?;
                }
                return Err(e.into());
            }
        };
        self.set_revision(&new_revision).await?;
        if self.has_progress_deadline() {
            let msg = format!("Created new replica set \"{}\"", created.name_any());
            let mut st = self.status();
            set_condition(
                &mut st,
                new_condition("Progressing", "True", "NewReplicaSetCreated", &msg),
            );
            self.write_status(st).await?;
        }
        Ok((Some(created), old))
    }

    /// Upstream's `SetNewReplicaSetAnnotations`: the Deployment's own annotations, the
    /// revision (keeping the one it replaces in revision-history) and, for a new set,
    /// desired/max replicas. Whether anything changed.
    fn set_new_rs_annotations(
        &self,
        rs: &mut ReplicaSet,
        new_revision: &str,
        exists: bool,
    ) -> bool {
        let mut changed = false;
        let d_ann = self.d.annotations().clone();
        let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in &d_ann {
            if NOT_COPIED.contains(&k.as_str()) {
                continue;
            }
            if ann.get(k) != Some(v) {
                ann.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        let old_rev = ann.get(REVISION).cloned();
        let old_int: i64 = old_rev.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
        let new_int: i64 = new_revision.parse().unwrap_or(0);
        if old_int < new_int {
            ann.insert(REVISION.into(), new_revision.into());
            changed = true;
            if let Some(old) = old_rev {
                let hist = ann.get(REVISION_HISTORY).cloned().unwrap_or_default();
                let joined = if hist.is_empty() {
                    old
                } else {
                    let mut parts: Vec<&str> = hist.split(',').collect();
                    parts.push(&old);
                    // Drop the oldest entries beyond upstream's length cap.
                    while parts.join(",").len() > MAX_REV_HISTORY_CHARS && parts.len() > 1 {
                        parts.remove(0);
                    }
                    parts.join(",")
                };
                ann.insert(REVISION_HISTORY.into(), joined);
            }
        }
        if !exists {
            let replicas = self.replicas();
            changed |= set_replicas_annotations(rs, replicas, replicas + self.max_surge());
        }
        changed
    }

    /// Sets the Deployment's revision annotation (a metadata patch) if it differs.
    async fn set_revision(&mut self, rev: &str) -> Result<(), Error> {
        if rev.is_empty() || self.d.annotations().get(REVISION).map(String::as_str) == Some(rev) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}, "resourceVersion": self.d.resource_version()}});
        self.d = self
            .d_api
            .patch(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    async fn write_status(&mut self, st: DeploymentStatus) -> Result<(), Error> {
        let mut d = self.d.clone();
        d.status = Some(st);
        let body = serde_json::to_vec(&d).map_err(|e| Error::Sync(e.to_string()))?;
        self.d = self
            .d_api
            .replace_status(&self.d.name_any(), &PostParams::default(), body)
            .await?;
        Ok(())
    }

    async fn replace_rs(&self, rs: &ReplicaSet) -> Result<ReplicaSet, Error> {
        Ok(self
            .rs_api
            .replace(&rs.name_any(), &PostParams::default(), rs)
            .await?)
    }

    fn condition(&self, type_: &str) -> Option<DeploymentCondition> {
        get_condition(&self.status(), type_)
    }

    fn has_progress_deadline(&self) -> bool {
        self.spec()
            .progress_deadline_seconds
            .is_some_and(|s| s != i32::MAX)
    }

    fn max_surge(&self) -> i32 {
        if self.recreate() {
            return 0;
        }
        resolve_fenceposts(&self.spec(), self.replicas()).0
    }

    fn max_unavailable(&self) -> i32 {
        let replicas = self.replicas();
        if self.recreate() || replicas == 0 {
            return 0;
        }
        resolve_fenceposts(&self.spec(), replicas).1.min(replicas)
    }

    /// Upstream's `NewRSNewReplicas`: how far the new set may grow now.
    fn new_rs_new_replicas(&self, all: &[ReplicaSet], new_rs: &ReplicaSet) -> i32 {
        let replicas = self.replicas();
        if self.recreate() {
            return replicas;
        }
        let current = spec_replicas_sum(all);
        let max_total = replicas + self.max_surge();
        let new_now = spec_replicas(new_rs);
        if current >= max_total {
            return new_now;
        }
        let up = (max_total - current).min(replicas - new_now);
        new_now + up.max(0)
    }

    /// Scales `rs` to `n` (and refreshes its desired/max annotations); returns it as
    /// written.
    async fn scale_rs(&self, rs: &ReplicaSet, n: i32) -> Result<ReplicaSet, Error> {
        let replicas = self.replicas();
        let max = replicas + self.max_surge();
        let size_changes = spec_replicas(rs) != n;
        let mut rs2 = rs.clone();
        let ann_changes = set_replicas_annotations(&mut rs2, replicas, max);
        if !size_changes && !ann_changes {
            return Ok(rs.clone());
        }
        if let Some(s) = rs2.spec.as_mut() {
            s.replicas = Some(n);
        }
        let out = self.replace_rs(&rs2).await?;
        if size_changes {
            let dir = if n > spec_replicas(rs) { "up" } else { "down" };
            crate::events::record(
                &self.ctx.client,
                "deployment-controller",
                &self.d,
                crate::events::Type::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {dir} replica set {} from {} to {n}",
                    rs.name_any(),
                    spec_replicas(rs)
                ),
            );
            tracing::info!(
                namespace = self.d.namespace().unwrap_or_default(),
                deployment = self.d.name_any(),
                replicaset = rs.name_any(),
                from = spec_replicas(rs),
                to = n,
                "scaled {dir} replica set"
            );
        }
        Ok(out)
    }

    /// Upstream's `checkPausedConditions`.
    async fn check_paused(&mut self) -> Result<(), Error> {
        if !self.has_progress_deadline() {
            return Ok(());
        }
        let cond = self.condition("Progressing");
        let paused = self.spec().paused.unwrap_or(false);
        let paused_cond = cond
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
        let mut st = self.status();
        if paused && !paused_cond {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                ),
            );
        } else {
            return Ok(());
        }
        self.write_status(st).await
    }

    /// Upstream's `isScalingEvent`: an active set's desired-replicas annotation
    /// disagrees with spec.replicas.
    async fn is_scaling_event(&mut self, rss: &[ReplicaSet]) -> Result<bool, Error> {
        let (new, old) = self.new_and_old(rss, false).await?;
        let replicas = self.replicas();
        Ok(old.iter().chain(new.iter()).any(|rs| {
            spec_replicas(rs) > 0
                && rs
                    .annotations()
                    .get(DESIRED_REPLICAS)
                    .and_then(|v| v.parse::<i32>().ok())
                    .is_some_and(|want| want != replicas)
        }))
    }

    /// Upstream's `sync`: scaling (also of a paused Deployment), then status.
    async fn sync(&mut self, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, old) = self.new_and_old(&rss, false).await?;
        let (new, old) = self.scale(new, old).await?;
        if self.spec().paused.unwrap_or(false) {
            self.cleanup(&old).await?;
        }
        self.sync_status(new.as_ref(), &old).await
    }

    /// Upstream's `scale`: a Deployment's replicas changed; give the difference to the
    /// one active set, or spread it proportionally over a rollout's sets.
    async fn scale(
        &mut self,
        new: Option<ReplicaSet>,
        mut old: Vec<ReplicaSet>,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), Error> {
        let replicas = self.replicas();
        let mut active: Vec<ReplicaSet> = old
            .iter()
            .chain(new.iter())
            .filter(|rs| spec_replicas(rs) > 0)
            .cloned()
            .collect();
        let target = match active.len() {
            0 => new.clone().or_else(|| {
                let mut o = old.clone();
                sort_by_creation(&mut o);
                o.pop()
            }),
            1 => active.pop(),
            _ => None,
        };
        if let Some(rs) = target {
            if spec_replicas(&rs) != replicas {
                let written = self.scale_rs(&rs, replicas).await?;
                return Ok(replace_in(new, old, written));
            }
            return Ok((new, old));
        }
        let saturated = new.as_ref().is_some_and(|n| {
            spec_replicas(n) == replicas
                && n.annotations()
                    .get(DESIRED_REPLICAS)
                    .and_then(|v| v.parse().ok())
                    == Some(replicas)
                && n.status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0)
                    == replicas
        });
        if saturated {
            for rs in old.iter_mut() {
                if spec_replicas(rs) > 0 {
                    *rs = self.scale_rs(rs, 0).await?;
                }
            }
            return Ok((new, old));
        }
        if self.recreate() {
            return Ok((new, old));
        }
        let mut all: Vec<ReplicaSet> = old
            .iter()
            .chain(new.iter())
            .filter(|rs| spec_replicas(rs) > 0)
            .cloned()
            .collect();
        let current = spec_replicas_sum(&all);
        let allowed = if replicas > 0 {
            replicas + self.max_surge()
        } else {
            0
        };
        let to_add = allowed - current;
        // Larger sets first (newer first on ties) when growing, older first when
        // shrinking: the leftover goes to the first.
        all.sort_by(|a, b| {
            spec_replicas(b).cmp(&spec_replicas(a)).then_with(|| {
                let o = created(b).cmp(&created(a));
                if to_add > 0 {
                    o
                } else {
                    o.reverse()
                }
            })
        });
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::new();
        for rs in &all {
            if to_add != 0 {
                let p = self.proportion(rs, to_add, added);
                sizes.push(spec_replicas(rs) + p);
                added += p;
            } else {
                sizes.push(spec_replicas(rs));
            }
        }
        let (mut new, mut old) = (new, old);
        for (i, rs) in all.iter().enumerate() {
            let mut size = sizes[i];
            if i == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            let written = self.scale_rs(rs, size).await?;
            (new, old) = replace_in(new, old, written);
        }
        Ok((new, old))
    }

    /// Upstream's `GetProportion`.
    fn proportion(&self, rs: &ReplicaSet, to_add: i32, added: i32) -> i32 {
        if spec_replicas(rs) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(rs);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Upstream's `getReplicaSetFraction`.
    fn fraction(&self, rs: &ReplicaSet) -> i32 {
        let replicas = self.replicas();
        if replicas == 0 {
            return -spec_replicas(rs);
        }
        let target = replicas + self.max_surge();
        let annotated = rs
            .annotations()
            .get(MAX_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or_else(|| self.status().replicas.unwrap_or(0));
        if annotated == 0 {
            return 0;
        }
        let size = f64::from(spec_replicas(rs)) * f64::from(target) / f64::from(annotated);
        (size.round() as i32) - spec_replicas(rs)
    }

    async fn rollout_rolling(&mut self, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, old) = self.new_and_old(&rss, true).await?;
        let Some(mut new) = new else {
            return Err(Error::Sync("no new replica set".into()));
        };
        let mut all: Vec<ReplicaSet> = old.clone();
        all.push(new.clone());
        // Grow the new set as far as maxSurge allows.
        let replicas = self.replicas();
        let want = if spec_replicas(&new) > replicas {
            replicas
        } else {
            self.new_rs_new_replicas(&all, &new)
        };
        if want != spec_replicas(&new) {
            new = self.scale_rs(&new, want).await?;
            return self.sync_rollout_status(Some(&new), &old).await;
        }
        // Shrink the old sets as far as maxUnavailable allows.
        let (old, scaled) = self.reconcile_old(old, &new).await?;
        if scaled {
            return self.sync_rollout_status(Some(&new), &old).await;
        }
        let st = self.calculate_status(Some(&new), &old);
        if self.complete(&st) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(Some(&new), &old).await
    }

    /// Upstream's `reconcileOldReplicaSets`: first drop unhealthy old pods, then
    /// scale old sets down while availability stays at replicas - maxUnavailable.
    async fn reconcile_old(
        &mut self,
        mut old: Vec<ReplicaSet>,
        new: &ReplicaSet,
    ) -> Result<(Vec<ReplicaSet>, bool), Error> {
        let old_count = spec_replicas_sum(&old);
        if old_count == 0 {
            return Ok((old, false));
        }
        let all_count = old_count + spec_replicas(new);
        let min_available = self.replicas() - self.max_unavailable();
        let new_unavailable = spec_replicas(new) - available(new);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok((old, false));
        }
        sort_by_creation(&mut old);
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let n = spec_replicas(rs);
            // A status that still counts pods of a larger spec (the set was just
            // scaled down) has no unhealthy pods to drop; upstream refuses the
            // resulting scale-up as an invalid request.
            if n == 0 || n <= available(rs) {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(n - available(rs));
            *rs = self.scale_rs(rs, n - down).await?;
            cleaned += down;
        }
        // Then healthy pods, while enough stay available.
        let available_now: i32 = old.iter().map(available).sum::<i32>() + available(new);
        let mut scaled = 0;
        if available_now > min_available {
            let total = available_now - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                let n = spec_replicas(rs);
                if n == 0 {
                    continue;
                }
                let down = n.min(total - scaled);
                *rs = self.scale_rs(rs, n - down).await?;
                scaled += down;
            }
        }
        Ok((old, cleaned + scaled > 0))
    }

    async fn rollout_recreate(&mut self, rss: Vec<ReplicaSet>) -> Result<(), Error> {
        let (new, mut old) = self.new_and_old(&rss, false).await?;
        let mut scaled = false;
        for rs in old.iter_mut() {
            if spec_replicas(rs) > 0 {
                *rs = self.scale_rs(rs, 0).await?;
                scaled = true;
            }
        }
        if scaled || self.old_pods_running(new.as_ref(), &old) {
            return self.sync_rollout_status(new.as_ref(), &old).await;
        }
        let (new, old) = match new {
            Some(n) => (n, old),
            None => {
                let (n, o) = self.new_and_old(&rss, true).await?;
                match n {
                    Some(n) => (n, o),
                    None => return Err(Error::Sync("no new replica set".into())),
                }
            }
        };
        let new = self.scale_rs(&new, self.replicas()).await?;
        let st = self.calculate_status(Some(&new), &old);
        if self.complete(&st) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(Some(&new), &old).await
    }

    /// Whether pods of the old sets still run (Recreate waits for them to go).
    fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        if old
            .iter()
            .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
        {
            return true;
        }
        let old_uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
        let new_uid = new.and_then(|n| n.uid());
        self.ctx.pods.state().iter().any(|p| {
            let Some(c) = util::controller_of(p.metadata.owner_references.as_ref()) else {
                return false;
            };
            Some(&c.uid) != new_uid.as_ref()
                && old_uids.contains(&c.uid)
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
    }

    /// Upstream's `cleanupDeployment`: old, idle sets beyond revisionHistoryLimit go,
    /// lowest revision first.
    async fn cleanup(&self, old: &[ReplicaSet]) -> Result<(), Error> {
        let Some(limit) = self.spec().revision_history_limit else {
            return Ok(());
        };
        let mut alive: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = i64::try_from(alive.len()).unwrap_or(0) - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        alive.sort_by(|a, b| {
            revision(a)
                .cmp(&revision(b))
                .then(created(a).cmp(&created(b)))
        });
        for rs in alive.iter().take(usize::try_from(diff).unwrap_or(0)) {
            let st = rs.status.clone().unwrap_or_default();
            if st.replicas != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation > st.observed_generation
            {
                continue;
            }
            tracing::info!(
                namespace = self.d.namespace().unwrap_or_default(),
                deployment = self.d.name_any(),
                replicaset = rs.name_any(),
                "deleting old replica set"
            );
            match self
                .rs_api
                .delete(&rs.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Upstream's `calculateStatus`.
    fn calculate_status(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> DeploymentStatus {
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let avail: i32 = all.iter().map(|r| available(r)).sum();
        let total: i32 = all.iter().map(|r| spec_replicas(r)).sum();
        let actual = |rs: &ReplicaSet| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0);
        let prev = self.status();
        let mut st = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|r| actual(r)).sum()),
            updated_replicas: Some(new.map(actual).unwrap_or(0)),
            ready_replicas: Some(
                all.iter()
                    .map(|r| {
                        r.status
                            .as_ref()
                            .and_then(|s| s.ready_replicas)
                            .unwrap_or(0)
                    })
                    .sum(),
            ),
            available_replicas: Some(avail),
            unavailable_replicas: Some((total - avail).max(0)),
            collision_count: prev.collision_count,
            conditions: prev.conditions.clone(),
        };
        if avail >= self.replicas() - self.max_unavailable() {
            set_condition(
                &mut st,
                new_condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                ),
            );
        } else {
            set_condition(
                &mut st,
                new_condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                ),
            );
        }
        st
    }

    /// Upstream's `DeploymentComplete`.
    fn complete(&self, st: &DeploymentStatus) -> bool {
        let r = self.replicas();
        st.updated_replicas == Some(r)
            && st.replicas == Some(r)
            && st.available_replicas == Some(r)
            && st.observed_generation >= self.d.metadata.generation
    }

    /// Upstream's `syncDeploymentStatus`.
    async fn sync_status(
        &mut self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let st = self.calculate_status(new, old);
        if !status_equal(&self.status(), &st) {
            self.write_status(st).await?;
        }
        Ok(())
    }

    /// Upstream's `syncRolloutStatus`: status plus the Progressing condition, and a
    /// requeue for when the progress deadline would pass.
    async fn sync_rollout_status(
        &mut self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), Error> {
        let mut st = self.calculate_status(new, old);
        if !self.has_progress_deadline() {
            remove_condition(&mut st, "Progressing");
        }
        let current = self.condition("Progressing");
        let complete_already = st.replicas == st.updated_replicas
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
        if self.has_progress_deadline() && !complete_already {
            let rs_name = new.map(|n| n.name_any());
            if self.complete(&st) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has successfully progressed."),
                    None => "Deployment has successfully progressed.".into(),
                };
                set_condition(
                    &mut st,
                    new_condition("Progressing", "True", "NewReplicaSetAvailable", &msg),
                );
            } else if self.progressing(&st) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" is progressing."),
                    None => "Deployment is progressing.".into(),
                };
                let mut cond = new_condition("Progressing", "True", "ReplicaSetUpdated", &msg);
                if let Some(c) = &current {
                    if c.status == "True" {
                        cond.last_transition_time = c.last_transition_time.clone();
                    }
                    remove_condition(&mut st, "Progressing");
                }
                set_condition(&mut st, cond);
            } else if self.timed_out(&st) {
                let msg = format!(
                    "ReplicaSet \"{}\" has timed out progressing.",
                    rs_name.unwrap_or_default()
                );
                set_condition(
                    &mut st,
                    new_condition("Progressing", "False", "ProgressDeadlineExceeded", &msg),
                );
            }
        }
        // A ReplicaSet's failure (pods it cannot create) is the Deployment's.
        let failure = old
            .iter()
            .chain(new)
            .filter_map(|rs| {
                rs.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "ReplicaFailure")
                    .cloned()
            })
            .next();
        match failure {
            Some(c) => set_condition(
                &mut st,
                DeploymentCondition {
                    type_: "ReplicaFailure".into(),
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    last_update_time: c.last_transition_time.clone(),
                    last_transition_time: c.last_transition_time,
                },
            ),
            None => remove_condition(&mut st, "ReplicaFailure"),
        }
        if status_equal(&self.status(), &st) {
            self.requeue_stuck(&st);
            return Ok(());
        }
        self.write_status(st.clone()).await?;
        self.requeue_stuck(&st);
        Ok(())
    }

    /// Upstream's `DeploymentProgressing`.
    fn progressing(&self, st: &DeploymentStatus) -> bool {
        let old = self.status();
        let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
        let new_old = st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0);
        st.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
            || new_old < old_old
            || st.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
            || st.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
    }

    /// Upstream's `DeploymentTimedOut`.
    fn timed_out(&self, st: &DeploymentStatus) -> bool {
        let Some(c) = get_condition(st, "Progressing") else {
            return false;
        };
        match c.reason.as_deref() {
            Some("NewReplicaSetAvailable") => return false,
            Some("ProgressDeadlineExceeded") => return true,
            _ => {}
        }
        let Some(from) = c.last_update_time else {
            return false;
        };
        let deadline = i64::from(self.spec().progress_deadline_seconds.unwrap_or(600));
        from.0 + k8s_openapi::chrono::Duration::seconds(deadline) < Utc::now()
    }

    /// Upstream's `requeueStuckDeployment`: look again when the deadline passes.
    fn requeue_stuck(&mut self, st: &DeploymentStatus) {
        let Some(c) = get_condition(st, "Progressing") else {
            return;
        };
        if !self.has_progress_deadline()
            || self.complete(st)
            || c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        {
            return;
        }
        let Some(from) = c.last_update_time else {
            return;
        };
        let deadline = i64::from(self.spec().progress_deadline_seconds.unwrap_or(600));
        let at = from.0 + k8s_openapi::chrono::Duration::seconds(deadline);
        let after = (at - Utc::now()).to_std().unwrap_or_default();
        self.want_requeue(after.max(Duration::from_secs(1)));
    }
}

/// Puts a written ReplicaSet back in place of its earlier version.
fn replace_in(
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
    written: ReplicaSet,
) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
    let uid = written.uid();
    if new.as_ref().is_some_and(|n| n.uid() == uid) {
        return (Some(written), old);
    }
    let old = old
        .into_iter()
        .map(|o| if o.uid() == uid { written.clone() } else { o })
        .collect();
    (new, old)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn spec_replicas_sum(rss: &[ReplicaSet]) -> i32 {
    rss.iter().map(spec_replicas).sum()
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (i64, String) {
    (
        rs.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.timestamp())
            .unwrap_or(0),
        rs.name_any(),
    )
}

fn sort_by_creation(rss: &mut [ReplicaSet]) {
    rss.sort_by_key(created);
}

/// A ReplicaSet's revision annotation (0 when missing or malformed).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Sets desired-replicas and max-replicas; whether either changed.
fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if ann.get(k) != Some(&v) {
            ann.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

/// maxSurge and maxUnavailable resolved against `replicas` (upstream's
/// `ResolveFenceposts`: surge rounds up, unavailable down, and both zero means one
/// unavailable).
pub fn resolve_fenceposts(
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
    replicas: i32,
) -> (i32, i32) {
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let pct25 = IntOrString::String("25%".into());
    let surge = scaled(ru.max_surge.as_ref().unwrap_or(&pct25), replicas, true);
    let unavailable = scaled(
        ru.max_unavailable.as_ref().unwrap_or(&pct25),
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// An int-or-percent against `total` (upstream's `GetScaledValueFromIntOrPercent`).
pub fn scaled(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return s.parse().unwrap_or(0);
            };
            let x = p * i64::from(total);
            let r = if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            };
            i32::try_from(r).unwrap_or(0)
        }
    }
}

/// The pod-template-hash of a template: FNV-1a (32 bit) over its canonical JSON and the
/// collision count, encoded with upstream's `SafeEncodeString` alphabet (no vowels, no
/// ambiguous characters), so it is stable across restarts and versions of this
/// controller.
pub fn compute_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(t).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// Whether two templates are equal but for the pod-template-hash label.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let norm = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        let m = t.metadata.get_or_insert_with(Default::default);
        if let Some(l) = m.labels.as_mut() {
            l.remove(HASH_LABEL);
            if l.is_empty() {
                m.labels = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    };
    norm(a) == norm(b)
}

fn get_condition(st: &DeploymentStatus, type_: &str) -> Option<DeploymentCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .cloned()
}

fn remove_condition(st: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = st.conditions.as_mut() {
        cs.retain(|c| c.type_ != type_);
    }
}

fn new_condition(type_: &str, status: &str, reason: &str, message: &str) -> DeploymentCondition {
    let now = util::now();
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Upstream's `SetDeploymentCondition`: no change when status and reason are the
/// same; the transition time kept when only the reason changes.
fn set_condition(st: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_condition(st, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time;
        }
    }
    remove_condition(st, &c.type_);
    st.conditions.get_or_insert_with(Vec::new).push(c);
}

fn status_equal(a: &DeploymentStatus, b: &DeploymentStatus) -> bool {
    let norm = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for f in [
            &mut s.replicas,
            &mut s.updated_replicas,
            &mut s.ready_replicas,
            &mut s.available_replicas,
            &mut s.unavailable_replicas,
        ] {
            f.get_or_insert(0);
        }
        if s.conditions.as_ref().is_some_and(|c| c.is_empty()) {
            s.conditions = None;
        }
        s
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    fn spec(surge: IntOrString, unavail: IntOrString) -> DeploymentSpec {
        DeploymentSpec {
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavail),
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fenceposts_round_like_upstream() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve_fenceposts(&spec(p("25%"), p("25%")), 10), (3, 2));
        assert_eq!(resolve_fenceposts(&spec(p("0%"), p("0%")), 10), (0, 1));
        assert_eq!(
            resolve_fenceposts(&spec(IntOrString::Int(2), IntOrString::Int(0)), 5),
            (2, 0)
        );
        assert_eq!(resolve_fenceposts(&spec(p("10%"), p("10%")), 3), (1, 0));
    }

    #[test]
    fn hash_is_stable_and_collision_sensitive() {
        let t = PodTemplateSpec::default();
        assert_eq!(compute_hash(&t, None), compute_hash(&t, None));
        assert_ne!(compute_hash(&t, None), compute_hash(&t, Some(1)));
        assert!(compute_hash(&t, None)
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
