//! Endpoints and EndpointSlices follow the pods a Service selects.

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

use crate::support::eventually;
use crate::{Stack, NODE, SETTLE};

#[tokio::test]
async fn endpoints_follow_the_selected_pods() {
    let stack = Stack::start().await;
    let ns = "eps";
    stack.namespace(ns);
    let client = stack.client().await;
    stack.apply(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeName: {NODE}
      containers: [{{name: c, image: nginx:1.27, ports: [{{name: http, containerPort: 8080}}]}}]
"
    ));
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    for n in [3usize, 1] {
        if n == 1 {
            stack
                .api
                .kubectl(&["-n", ns, "scale", "deployment", "web", "--replicas=1"])
                .out();
        }
        eventually(
            &format!("{n} ready endpoints on port 8080"),
            SETTLE,
            || async {
                let ep = eps.get_opt("web").await.ok()??;
                let subsets = ep.subsets.unwrap_or_default();
                let ready: usize = subsets
                    .iter()
                    .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                    .sum();
                let not_ready: usize = subsets
                    .iter()
                    .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
                    .sum();
                let port = subsets.first()?.ports.as_ref()?.first()?.port;
                let slice = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .next()?;
                let slice_ready = slice
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count();
                let slice_port = slice.ports.as_ref()?.first()?.port;
                (ready == n
                    && not_ready == 0
                    && port == 8080
                    && slice_ready == n
                    && slice.endpoints.len() == n
                    && slice_port == Some(8080))
                .then_some(())
            },
        )
        .await;
    }
    // kubectl's view.
    let out = stack.api.kubectl(&["-n", ns, "get", "endpoints", "web"]);
    assert!(out.out().contains(":8080"), "{}", out.stdout);

    // The Service's deletion takes its Endpoints and EndpointSlice with it.
    stack
        .api
        .kubectl(&["-n", ns, "delete", "service", "web"])
        .out();
    eventually("the Endpoints and EndpointSlice gone", SETTLE, || async {
        let ep = eps.get_opt("web").await.ok()?;
        let left = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?
            .items
            .len();
        (ep.is_none() && left == 0).then_some(())
    })
    .await;
    let out = stack.api.kubectl(&["-n", ns, "get", "endpoints", "web"]);
    assert!(
        out.stderr.contains("endpoints \"web\" not found"),
        "{}",
        out.stderr
    );
}
