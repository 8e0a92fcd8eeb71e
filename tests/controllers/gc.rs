//! The garbage collector: background, orphan and foreground propagation, as
//! `kubectl delete --cascade=...` asks for them.

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use crate::support::eventually;
use crate::{pods, Stack, NODE, SETTLE};

fn rs_yaml(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeName: {NODE}
      containers: [{{name: c, image: nginx:1.27}}]
"
    )
}

async fn wait_pods(client: &kube::Client, ns: &str, app: &str, n: usize) {
    eventually(&format!("{n} pods of {app}"), SETTLE, || async {
        let ps = pods(client, ns, &format!("app={app}")).await;
        (ps.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count()
            == n
            && ps.len() == n)
            .then_some(())
    })
    .await
}

#[tokio::test]
async fn garbage_collector_follows_propagation_policies() {
    let stack = Stack::start().await;
    let ns = "gc";
    stack.namespace(ns);
    let client = stack.client().await;

    // Background (kubectl's default): the ReplicaSet goes at once, its pods after.
    stack.apply(&rs_yaml(ns, "bg", 3));
    wait_pods(&client, ns, "bg", 3).await;
    stack.api.kubectl(&["-n", ns, "delete", "rs", "bg"]).out();
    wait_pods(&client, ns, "bg", 0).await;

    // Orphan: the ReplicaSet goes, its pods stay, owned by nothing.
    stack.apply(&rs_yaml(ns, "orph", 3));
    wait_pods(&client, ns, "orph", 3).await;
    stack
        .api
        .kubectl(&["-n", ns, "delete", "rs", "orph", "--cascade=orphan"])
        .out();
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    assert!(
        rs_api.get_opt("orph").await.expect("get").is_none(),
        "kubectl waited for the deletion"
    );
    let ps = pods(&client, ns, "app=orph").await;
    assert_eq!(ps.len(), 3, "orphaned pods stay");
    for p in &ps {
        assert!(
            p.owner_references().is_empty(),
            "{} still owned",
            p.name_any()
        );
        assert!(p.metadata.deletion_timestamp.is_none());
    }

    // Foreground: the Deployment is gone only after its ReplicaSet and pods are
    // (kubectl waits for the Deployment).
    stack.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: fg, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: fg}}}}
  template:
    metadata: {{labels: {{app: fg}}}}
    spec:
      nodeName: {NODE}
      containers: [{{name: c, image: nginx:1.27}}]
"
    ));
    wait_pods(&client, ns, "fg", 2).await;
    stack
        .api
        .kubectl(&[
            "-n",
            ns,
            "delete",
            "deployment",
            "fg",
            "--cascade=foreground",
            "--timeout=60s",
        ])
        .out();
    let left = rs_api
        .list(&ListParams::default().labels("app=fg"))
        .await
        .expect("list")
        .items;
    assert!(
        left.is_empty(),
        "replica sets left after foreground deletion: {left:?}"
    );
    assert!(
        pods(&client, ns, "app=fg").await.is_empty(),
        "pods left after foreground deletion"
    );
}
