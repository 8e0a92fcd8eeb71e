//! The Job controller (NonIndexed completion mode), after upstream's: pods from the
//! template until `completions` have succeeded, at most `parallelism` at a time; failed
//! pods are replaced after upstream's exponential backoff (10 s doubling, at most
//! 6 min) until more than `backoffLimit` have failed; `activeDeadlineSeconds`;
//! `suspend`; the Complete and Failed conditions and the status counts `kubectl get
//! jobs` shows. Counts come from the pods that still exist and never go down (there is
//! no job-tracking finalizer yet, so a finished pod deleted by hand is not recounted).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::replicaset::{victims, Expectations};
use crate::util;
use crate::Error;

/// Upstream's first backoff after a failed pod, and its cap.
const BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
    pub expectations: Expectations,
}

/// Runs the controller until the process ends.
pub async fn run(client: Client, pods: Store<Pod>, pod_events: crate::Events<Pod>) {
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    let triggers = crate::stream(pod_events).flat_map(|pod| {
        let ns = pod.namespace().unwrap_or_default();
        let refs: Vec<ObjectRef<Job>> = util::controller_of(pod.metadata.owner_references.as_ref())
            .filter(|c| c.kind == "Job")
            .map(|c| ObjectRef::new(&c.name).within(&ns))
            .into_iter()
            .collect();
        futures::stream::iter(refs)
    });
    let ctx = Arc::new(Ctx {
        client,
        pods,
        expectations: Expectations::default(),
    });
    controller
        .reconcile_on(triggers)
        .reconcile_all_on(crate::resync())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(job: Arc<Job>, err: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = job.namespace().unwrap_or_default(), name = job.name_any(), error = %err, "job sync failed");
    Action::requeue(Duration::from_secs(1))
}

fn finished(st: &JobStatus) -> bool {
    st.conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let now = util::now();
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// When a failed pod's containers finished (its last transition otherwise).
fn finished_at(p: &Pod) -> Option<DateTime<Utc>> {
    let st = p.status.as_ref()?;
    st.container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| {
            st.conditions
                .iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let key = util::key(Some(&ns), &name);
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    if finished(&old) || job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| {
            util::controller_of(p.metadata.owner_references.as_ref()).is_some_and(|c| c.uid == uid)
        })
        .collect();
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| util::pod_is_active(p))
        .cloned()
        .collect();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count();
    let failed_pods: Vec<&Arc<Pod>> = owned.iter().filter(|p| phase(p) == "Failed").collect();
    let to_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let succeeded = to_i32(succeeded).max(old.succeeded.unwrap_or(0));
    let failed = to_i32(failed_pods.len()).max(old.failed.unwrap_or(0));
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend.unwrap_or(false);
    let now = Utc::now();

    let mut st = old.clone();
    if st.start_time.is_none() && !suspended {
        st.start_time = Some(util::now());
    }
    let deadline_exceeded = spec.active_deadline_seconds.is_some_and(|d| {
        st.start_time
            .as_ref()
            .is_some_and(|s| now - s.0 >= k8s_openapi::chrono::Duration::seconds(d))
    });
    let complete = match spec.completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let mut requeue: Option<Duration> = None;
    let (finish, want_active) = if failed > backoff_limit {
        let c = condition(
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        );
        (Some(c), 0)
    } else if deadline_exceeded {
        let c = condition(
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        );
        (Some(c), 0)
    } else if complete {
        let c = condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        (Some(c), 0)
    } else if suspended {
        (None, 0)
    } else {
        let want = match spec.completions {
            Some(c) => parallelism.min(c - succeeded).max(0),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        (None, want)
    };

    let mut failure: Option<String> = None;
    if ctx.expectations.satisfied(&key, &ns, &ctx.pods) {
        let have = to_i32(active.len());
        if have > want_active {
            let n = usize::try_from(have - want_active).unwrap_or(0);
            let mut deleted = Vec::new();
            for v in victims(&active, n) {
                match pods_api
                    .delete(&v.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => deleted.push(v.name_any()),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            ctx.expectations.expect(&key, vec![], deleted);
        } else if have < want_active {
            // Upstream's backoff after failures: 10 s doubling per failure.
            let last_fail = failed_pods.iter().filter_map(|p| finished_at(p)).max();
            let wait = if failed > 0 {
                let exp = u32::try_from(failed - 1).unwrap_or(0).min(16);
                let delay = (BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF);
                last_fail
                    .and_then(|t| {
                        (t + k8s_openapi::chrono::Duration::from_std(delay).ok()? - now)
                            .to_std()
                            .ok()
                    })
                    .filter(|d| !d.is_zero())
            } else {
                None
            };
            if let Some(w) = wait {
                requeue = Some(w);
            } else {
                let n = want_active - have;
                let pod = util::pod_from_template(
                    job.spec.as_ref().map(|s| s.template.clone()),
                    &*job,
                    "batch/v1",
                    "Job",
                );
                let mut created = Vec::new();
                for _ in 0..n {
                    match pods_api.create(&PostParams::default(), &pod).await {
                        Ok(p) => {
                            crate::events::record(
                                &ctx.client,
                                "job-controller",
                                job.as_ref(),
                                crate::events::Type::Normal,
                                "SuccessfulCreate",
                                format!("Created pod: {}", p.name_any()),
                            );
                            created.push(p.name_any())
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                if !created.is_empty() {
                    tracing::info!(namespace = %ns, job = %name, created = created.len(), "created job pods");
                }
                ctx.expectations.expect(&key, created, vec![]);
            }
        }
    } else {
        requeue = Some(Duration::from_millis(500));
    }

    st.active = Some(to_i32(active.len())).filter(|n| *n > 0);
    st.ready = Some(to_i32(
        active.iter().filter(|p| util::pod_is_ready(p)).count(),
    ));
    st.succeeded = Some(succeeded).filter(|n| *n > 0);
    st.failed = Some(failed).filter(|n| *n > 0);
    if let Some(c) = finish {
        if c.type_ == "Complete" {
            st.completion_time = Some(util::now());
        }
        tracing::info!(namespace = %ns, job = %name, condition = %c.type_, reason = c.reason.as_deref().unwrap_or(""), "job finished");
        let (t, reason, msg) = if c.type_ == "Complete" {
            (
                crate::events::Type::Normal,
                "Completed".to_string(),
                "Job completed".to_string(),
            )
        } else {
            (
                crate::events::Type::Warning,
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        };
        crate::events::record(&ctx.client, "job-controller", job.as_ref(), t, &reason, msg);
        st.conditions.get_or_insert_with(Vec::new).push(c);
        st.active = None;
    }
    if st != old {
        let api = Api::<Job>::namespaced(ctx.client.clone(), &ns);
        // Zero counts are omitted, as upstream's omitempty does; a merge patch removes
        // a field only with an explicit null.
        let mut body = serde_json::to_value(&st).map_err(|e| Error::Sync(e.to_string()))?;
        for f in ["active", "succeeded", "failed"] {
            if body.get(f).is_none() {
                body[f] = serde_json::Value::Null;
            }
        }
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": body})),
        )
        .await?;
    }
    if let Some(e) = failure {
        return Err(Error::Sync(e));
    }
    // Look again at the active deadline.
    if let (Some(d), Some(s)) = (spec.active_deadline_seconds, st.start_time.as_ref()) {
        if !finished(&st) {
            let at = s.0 + k8s_openapi::chrono::Duration::seconds(d);
            let left = (at - now).to_std().unwrap_or_default() + Duration::from_millis(100);
            requeue = Some(requeue.map_or(left, |r| r.min(left)));
        }
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}
