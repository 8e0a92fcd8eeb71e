//! The Deployment controller, observed as a user does: `kubectl rollout status`,
//! `history`, `undo`, `pause`/`resume`, and a pod watch checking maxSurge and
//! maxUnavailable at every observed moment of a rolling update.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::support::eventually;
use crate::{pods, Stack, NODE, SETTLE};

fn deployment_yaml(ns: &str, name: &str, replicas: i32, image: &str, node: &str) -> String {
    deployment_yaml_with(
        ns,
        name,
        replicas,
        image,
        node,
        "{type: RollingUpdate, rollingUpdate: {maxSurge: 3, maxUnavailable: 2}}",
    )
}

fn deployment_yaml_with(
    ns: &str,
    name: &str,
    replicas: i32,
    image: &str,
    node: &str,
    strategy: &str,
) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  progressDeadlineSeconds: 5
  selector: {{matchLabels: {{app: {name}}}}}
  strategy: {strategy}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeName: {node}
      containers: [{{name: c, image: \"{image}\"}}]
"
    )
}

/// A check of one observed moment: every object watched (terminating ones included);
/// a violation's description.
type Check<K> = Box<dyn Fn(&[&K]) -> Option<String> + Send>;

/// At least `min_ready` Ready pods not being deleted: maxUnavailable, at the pods.
fn min_ready(min_ready: usize) -> Check<Pod> {
    Box::new(move |pods| {
        let ready = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .count();
        (ready < min_ready).then(|| format!("{ready} ready pods (want >= {min_ready})"))
    })
}

/// At most `max_total` replicas across the deployment's ReplicaSets: maxSurge, which
/// upstream bounds on the sets' sizes (each set's own controller then creates or
/// deletes its pods, and two sets' syncs are not ordered, so the pods of a shrinking
/// set may outlive the growth of the other by a moment).
fn max_replicas(max_total: i32) -> Check<ReplicaSet> {
    Box::new(move |rss| {
        let total: i32 = rss.iter().filter_map(|rs| rs.spec.as_ref()?.replicas).sum();
        (total > max_total).then(|| format!("{total} replicas (want <= {max_total})"))
    })
}

/// Never pods of two templates at once, terminating ones included: Recreate.
fn one_image_at_a_time() -> Check<Pod> {
    Box::new(|pods| {
        let images: std::collections::BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
            .collect();
        (images.len() > 1).then(|| format!("pods of {images:?} at once"))
    })
}

/// Watches the pods of `app=<name>` and records every observed moment that fails a
/// check.
struct RolloutWatch {
    violations: Arc<Mutex<Vec<String>>>,
    events: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RolloutWatch {
    /// Starts watching the `K`s labelled `app=<name>` and returns once the watch has
    /// listed them.
    async fn start<K>(client: kube::Client, ns: &str, name: &str, check: Check<K>) -> RolloutWatch
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + k8s_openapi::serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let api = Api::<K>::namespaced(client, ns);
        let violations = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(0));
        let (v, e) = (violations.clone(), events.clone());
        let cfg = watcher::Config::default().labels(&format!("app={name}"));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            let mut pods: BTreeMap<String, K> = BTreeMap::new();
            let mut stream = watcher(api, cfg).boxed();
            let mut initialised = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => {
                        pods.insert(p.name_any(), p);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        pods.remove(&p.name_any());
                    }
                    Ok(watcher::Event::Init) => pods.clear(),
                    Ok(watcher::Event::InitDone) => {
                        initialised = true;
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Err(_) => continue,
                }
                if !initialised {
                    continue;
                }
                *e.lock().expect("lock") += 1;
                let all: Vec<&K> = pods.values().collect();
                if let Some(violation) = check(&all) {
                    v.lock().expect("lock").push(violation);
                }
            }
        });
        tokio::time::timeout(SETTLE, ready_rx)
            .await
            .expect("the pod watch lists in time")
            .expect("the pod watch runs");
        RolloutWatch {
            violations,
            events,
            task,
        }
    }

    /// Stops watching; returns the violations and how many events were checked.
    fn finish(self) -> (Vec<String>, usize) {
        self.task.abort();
        let v = self.violations.lock().expect("lock").clone();
        let e = *self.events.lock().expect("lock");
        (v, e)
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The images of the deployment's live pods, once they all agree and there are
/// `n` of them, all Ready.
async fn settled_image(stack: &Stack, ns: &str, name: &str, n: usize) -> String {
    let client = stack.client().await;
    eventually(
        &format!("{name}: {n} ready pods of one image"),
        SETTLE,
        || {
            let client = client.clone();
            async move {
                let ps: Vec<Pod> = pods(&client, ns, &format!("app={name}"))
                    .await
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                let images: std::collections::BTreeSet<String> = ps
                    .iter()
                    .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
                    .collect();
                (ps.len() == n && images.len() == 1 && ps.iter().all(is_ready))
                    .then(|| images.into_iter().next().unwrap_or_default())
            }
        },
    )
    .await
}

/// `kubectl rollout status`, asserting it reports success.
fn rollout_status(stack: &Stack, ns: &str, name: &str) {
    let out = stack.api.kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=90s",
    ]);
    assert!(
        out.out()
            .contains(&format!("deployment \"{name}\" successfully rolled out")),
        "{}",
        out.stdout
    );
}

/// The revisions `kubectl rollout history` lists.
fn history(stack: &Stack, ns: &str, name: &str) -> Vec<String> {
    let out = stack.api.kubectl(&[
        "-n",
        ns,
        "rollout",
        "history",
        &format!("deployment/{name}"),
    ]);
    out.out()
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn deployment_rolls_out_scales_undoes_and_pauses() {
    let stack = Stack::start().await;
    let ns = "dep";
    stack.namespace(ns);
    let client = stack.client().await;
    let d_api = Api::<Deployment>::namespaced(client.clone(), ns);
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), ns);

    // Ten replicas come up, and `kubectl rollout status` says so.
    stack.apply(&deployment_yaml(ns, "web", 10, "nginx:1.26", NODE));
    rollout_status(&stack, ns, "web");
    assert_eq!(settled_image(&stack, ns, "web", 10).await, "nginx:1.26");
    let d = d_api.get("web").await.expect("deployment");
    let st = d.status.clone().expect("status");
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (Some(10), Some(10), Some(10), Some(10))
    );
    assert_eq!(st.observed_generation, d.metadata.generation);
    let conds: BTreeMap<String, (String, Option<String>)> = st
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), (c.status.clone(), c.reason.clone())))
        .collect();
    assert_eq!(
        conds.get("Available"),
        Some(&(
            "True".to_string(),
            Some("MinimumReplicasAvailable".to_string())
        ))
    );
    assert_eq!(
        conds.get("Progressing"),
        Some(&(
            "True".to_string(),
            Some("NewReplicaSetAvailable".to_string())
        ))
    );
    assert_eq!(
        d.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let rss = rs_api
        .list(&ListParams::default())
        .await
        .expect("rs list")
        .items;
    assert_eq!(rss.len(), 1);
    let rs1 = &rss[0];
    let hash = rs1
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("hash label");
    assert_eq!(rs1.name_any(), format!("web-{hash}"));
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/desired-replicas")
            .map(String::as_str),
        Some("10")
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/max-replicas")
            .map(String::as_str),
        Some("13")
    );

    // `kubectl describe` shows the controller's event.
    let scaled = format!("Scaled up replica set web-{hash} from 0 to 10");
    eventually(
        "the ScalingReplicaSet event in kubectl describe",
        SETTLE,
        || async {
            let out = stack
                .api
                .kubectl(&["-n", ns, "describe", "deployment", "web"]);
            (out.ok && out.stdout.contains("ScalingReplicaSet") && out.stdout.contains(&scaled))
                .then_some(())
        },
    )
    .await;

    // Scale with kubectl.
    stack
        .api
        .kubectl(&["-n", ns, "scale", "deployment", "web", "--replicas=12"])
        .out();
    rollout_status(&stack, ns, "web");
    settled_image(&stack, ns, "web", 12).await;

    // Roll to a new image: never fewer than 12 - 2 ready pods, never more than 12 + 3
    // replicas.
    let watch = RolloutWatch::start(client.clone(), ns, "web", min_ready(10)).await;
    let sizes = RolloutWatch::start(client.clone(), ns, "web", max_replicas(15)).await;
    stack
        .api
        .kubectl(&["-n", ns, "set", "image", "deployment/web", "c=nginx:1.27"])
        .out();
    rollout_status(&stack, ns, "web");
    assert_eq!(settled_image(&stack, ns, "web", 12).await, "nginx:1.27");
    let (violations, events) = watch.finish();
    assert!(events > 12, "the watch saw the rollout ({events} events)");
    assert!(
        violations.is_empty(),
        "maxUnavailable violated: {violations:?}"
    );
    let (violations, events) = sizes.finish();
    assert!(events > 2, "the watch saw the rollout ({events} events)");
    assert!(violations.is_empty(), "maxSurge violated: {violations:?}");
    assert_eq!(history(&stack, ns, "web"), ["1", "2"]);

    // Undo brings back the first template, as revision 3.
    stack
        .api
        .kubectl(&["-n", ns, "rollout", "undo", "deployment/web"])
        .out();
    rollout_status(&stack, ns, "web");
    assert_eq!(settled_image(&stack, ns, "web", 12).await, "nginx:1.26");
    assert_eq!(history(&stack, ns, "web"), ["2", "3"]);
    let rs1 = rs_api
        .get(&rs1.name_any())
        .await
        .expect("the first replica set is reused");
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        rs1.annotations()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );

    // A paused deployment takes template changes without rolling; resume rolls.
    stack
        .api
        .kubectl(&["-n", ns, "rollout", "pause", "deployment/web"])
        .out();
    stack
        .api
        .kubectl(&["-n", ns, "set", "image", "deployment/web", "c=nginx:1.28"])
        .out();
    eventually("the paused deployment to be observed", SETTLE, || {
        let d_api = d_api.clone();
        async move {
            let d = d_api.get("web").await.ok()?;
            let st = d.status?;
            let paused = st.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused")
            });
            (paused && st.observed_generation == d.metadata.generation).then_some(())
        }
    })
    .await;
    assert_eq!(
        rs_api
            .list(&ListParams::default())
            .await
            .expect("rs list")
            .items
            .len(),
        2,
        "no new replica set while paused"
    );
    assert_eq!(settled_image(&stack, ns, "web", 12).await, "nginx:1.26");
    stack
        .api
        .kubectl(&["-n", ns, "rollout", "resume", "deployment/web"])
        .out();
    rollout_status(&stack, ns, "web");
    assert_eq!(settled_image(&stack, ns, "web", 12).await, "nginx:1.28");

    // Recreate: the old pods are all gone before a new one is created.
    let recreate = "{type: Recreate}";
    stack.apply(&deployment_yaml_with(
        ns,
        "rec",
        3,
        "nginx:1.26",
        NODE,
        recreate,
    ));
    rollout_status(&stack, ns, "rec");
    let watch = RolloutWatch::start(client.clone(), ns, "rec", one_image_at_a_time()).await;
    stack.apply(&deployment_yaml_with(
        ns,
        "rec",
        3,
        "nginx:1.27",
        NODE,
        recreate,
    ));
    rollout_status(&stack, ns, "rec");
    assert_eq!(settled_image(&stack, ns, "rec", 3).await, "nginx:1.27");
    let (violations, events) = watch.finish();
    assert!(events > 3, "the watch saw the rollout ({events} events)");
    assert!(violations.is_empty(), "Recreate overlapped: {violations:?}");

    // Pods that never become ready: the rollout exceeds its progress deadline, and
    // `kubectl rollout status` says so.
    stack.apply(&deployment_yaml(
        ns,
        "stuck",
        2,
        "nginx:1.26",
        "no-such-node",
    ));
    let out = stack.api.kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deployment/stuck",
        "--timeout=60s",
    ]);
    assert!(
        out.err()
            .contains("deployment \"stuck\" exceeded its progress deadline"),
        "{}",
        out.stderr
    );
}
