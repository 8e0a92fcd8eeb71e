//! The ReplicaSet controller: counts, ownership, adoption and release, scaling, status.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::ResourceExt;

use crate::support::eventually;
use crate::{pods, Stack, SETTLE};

fn rs_yaml(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, tier: web}}}}
    spec:
      containers: [{{name: c, image: nginx:1.27}}]
"
    )
}

/// Polls until exactly `n` active pods match `app=<name>` and are all controlled by the
/// ReplicaSet, and its status says so; returns the pods. Records the largest number of
/// matching pods seen on the way, which must never exceed `n`.
async fn settle(stack: &Stack, ns: &str, name: &str, n: usize, max_seen: &mut usize) -> Vec<Pod> {
    let client = stack.client().await;
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(*max_seen));
    let out = eventually(&format!("{name} to have {n} pods"), SETTLE, || {
        let client = client.clone();
        let rs_api = rs_api.clone();
        let seen = seen.clone();
        async move {
            let rs = rs_api.get(name).await.ok()?;
            let ps: Vec<Pod> = pods(&client, ns, &format!("app={name}"))
                .await
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            seen.fetch_max(ps.len(), std::sync::atomic::Ordering::Relaxed);
            let owned = ps.iter().all(|p| {
                p.owner_references().iter().any(|r| {
                    r.uid == rs.uid().unwrap_or_default()
                        && r.controller == Some(true)
                        && r.block_owner_deletion == Some(true)
                        && r.kind == "ReplicaSet"
                        && r.name == name
                })
            });
            let st = rs.status.clone()?;
            (ps.len() == n
                && owned
                && st.replicas == i32::try_from(n).ok()?
                && st.fully_labeled_replicas == Some(st.replicas)
                && st.observed_generation == rs.metadata.generation)
                .then_some(ps)
        }
    })
    .await;
    *max_seen = seen.load(std::sync::atomic::Ordering::Relaxed);
    out
}

#[tokio::test]
async fn replicaset_keeps_counts_adopts_and_releases() {
    let stack = Stack::start().await;
    let ns = "rs";
    stack.namespace(ns);
    let client = stack.client().await;
    let pod_api = Api::<Pod>::namespaced(client.clone(), ns);
    let mut max_seen = 0;

    stack.apply(&rs_yaml(ns, "web", 3));
    let ps = settle(&stack, ns, "web", 3, &mut max_seen).await;
    assert_eq!(max_seen, 3, "never more pods than replicas");
    for p in &ps {
        assert!(
            p.name_any().starts_with("web-"),
            "generateName web-: {}",
            p.name_any()
        );
        assert_eq!(p.labels().get("tier").map(String::as_str), Some("web"));
    }

    // Scale with kubectl's scale subresource, up then down.
    stack
        .api
        .kubectl(&["-n", ns, "scale", "rs", "web", "--replicas=7"])
        .out();
    max_seen = 0;
    settle(&stack, ns, "web", 7, &mut max_seen).await;
    assert_eq!(
        max_seen, 7,
        "never more pods than replicas while scaling up"
    );
    stack
        .api
        .kubectl(&["-n", ns, "scale", "rs", "web", "--replicas=2"])
        .out();
    settle(&stack, ns, "web", 2, &mut max_seen).await;

    // An orphan that matches is adopted, and the set is one over: one pod goes.
    stack.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: orphan, namespace: {ns}, labels: {{app: web}}}}
spec:
  containers: [{{name: c, image: nginx:1.27}}]
"
    ));
    settle(&stack, ns, "web", 2, &mut max_seen).await;

    // A pod relabelled out of the selector is released (no owner left) and replaced.
    let victim = pods(&client, ns, "app=web").await[0].name_any();
    stack
        .api
        .kubectl(&[
            "-n",
            ns,
            "label",
            "pod",
            &victim,
            "app=other",
            "--overwrite",
        ])
        .out();
    settle(&stack, ns, "web", 2, &mut max_seen).await;
    eventually("the relabelled pod to be released", SETTLE, || {
        let pod_api = pod_api.clone();
        let victim = victim.clone();
        async move {
            let p = pod_api.get(&victim).await.ok()?;
            p.owner_references().is_empty().then_some(())
        }
    })
    .await;

    // Ready pods count as available only after minReadySeconds.
    stack.apply(&format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: slow, namespace: {ns}}}
spec:
  replicas: 2
  minReadySeconds: 3
  selector: {{matchLabels: {{app: slow}}}}
  template:
    metadata: {{labels: {{app: slow}}}}
    spec:
      nodeName: {node}
      containers: [{{name: c, image: nginx:1.27}}]
",
        node = crate::NODE
    ));
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    let ready_at = eventually("slow: 2 ready replicas", SETTLE, || async {
        let st = rs_api.get("slow").await.ok()?.status?;
        (st.ready_replicas == Some(2)).then_some(st)
    })
    .await;
    eventually("slow: 2 available replicas", SETTLE, || async {
        let st = rs_api.get("slow").await.ok()?.status?;
        (st.available_replicas == Some(2)).then_some(())
    })
    .await;
    let pods_ready: Vec<_> = pods(&client, ns, "app=slow")
        .await
        .iter()
        .filter_map(|p| {
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready")?
                .last_transition_time
                .clone()
        })
        .collect();
    assert_eq!(pods_ready.len(), 2);
    // Available no sooner than minReadySeconds after the later pod became Ready
    // (whole seconds, as the API stores times).
    let latest = pods_ready.iter().map(|t| t.0).max().expect("two pods");
    let available_at = k8s_openapi::chrono::Utc::now();
    assert!(
        available_at - latest >= k8s_openapi::chrono::Duration::seconds(2),
        "available {}s after ready",
        (available_at - latest).num_seconds()
    );
    assert!(
        ready_at.available_replicas.unwrap_or(0) < 2,
        "available as soon as ready: {ready_at:?}"
    );

    // kubectl shows the upstream columns with the controller's status.
    let out = stack.api.kubectl(&["-n", ns, "get", "rs", "web"]);
    let line = out.out().lines().nth(1).unwrap_or_default().to_string();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.get(..3), Some(&["web", "2", "2"][..]), "{line}");
}
