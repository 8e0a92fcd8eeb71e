//! Namespace deletion: everything inside goes, then the namespace.

use crate::support::eventually;
use crate::{pods, Stack, NODE, SETTLE};

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_inside() {
    let stack = Stack::start().await;
    let ns = "doomed";
    stack.namespace(ns);
    let client = stack.client().await;
    stack.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeName: {NODE}
      containers: [{{name: c, image: nginx:1.27}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{a: b}}
"
    ));
    eventually("2 pods", SETTLE, || async {
        (pods(&client, ns, "app=web").await.len() == 2).then_some(())
    })
    .await;

    // kubectl waits until the namespace is gone.
    stack
        .api
        .kubectl(&["delete", "namespace", ns, "--timeout=60s"])
        .out();
    let err = stack
        .api
        .kubectl(&["get", "namespace", ns])
        .err()
        .to_string();
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    for kind in ["deployments", "replicasets", "pods", "configmaps"] {
        let out = stack.api.kubectl(&["-n", ns, "get", kind, "-o", "name"]);
        assert_eq!(out.out().trim(), "", "{kind} left in the deleted namespace");
    }
}
