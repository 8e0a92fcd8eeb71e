//! The service account controller: every namespace gets a `default` ServiceAccount.

use crate::support::eventually;
use crate::{Stack, SETTLE};

#[tokio::test(flavor = "multi_thread")]
async fn every_namespace_has_a_default_service_account() {
    let stack = Stack::start().await;
    let api = &stack.api;
    // The system namespaces that exist before the controller starts, and a new one.
    stack.namespace("team-a");
    for ns in ["default", "kube-system", "team-a"] {
        eventually(&format!("default service account in {ns}"), SETTLE, || {
            let ok = api
                .kubectl(&["get", "serviceaccount", "default", "-n", ns])
                .ok;
            async move { ok.then_some(()) }
        })
        .await;
    }
    // Deleted, it comes back (a new object: another uid).
    let uid = |api: &crate::support::Apiserver| {
        api.kubectl(&[
            "get",
            "sa",
            "default",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .stdout
    };
    let first = uid(api);
    let del = api.kubectl(&["delete", "sa", "default", "-n", "team-a"]);
    assert!(del.ok, "{}", del.stderr);
    eventually("the default service account recreated", SETTLE, || {
        let now = uid(api);
        let again = !now.is_empty() && now != first;
        async move { again.then_some(()) }
    })
    .await;
}
