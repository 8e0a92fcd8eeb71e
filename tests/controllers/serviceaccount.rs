//! The service account controllers: every namespace gets a `default` ServiceAccount,
//! and token Secrets get tokens the apiserver accepts.

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

/// kubectl with a bearer token and nothing else (no client certificate).
fn kubectl_as(api: &crate::support::Apiserver, token: &str, args: &[&str]) -> crate::support::Ctl {
    let ca = api.pki_dir().join("ca.crt").display().to_string();
    let out = std::process::Command::new("kubectl")
        .args([
            "--server",
            &api.url,
            "--certificate-authority",
            &ca,
            "--token",
            token,
        ])
        .args(args)
        .output()
        .expect("kubectl runs");
    crate::support::Ctl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The token is refused as kube-apiserver refuses it: 401, kubectl's login message.
#[track_caller]
fn assert_unauthorized(api: &crate::support::Apiserver, token: &str) {
    let out = kubectl_as(api, token, &["get", "pods", "-n", "robots"]);
    assert!(
        !out.ok && out.stderr.contains("You must be logged in to the server"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_secrets_get_tokens_the_apiserver_accepts() {
    use base64::Engine;
    let stack = Stack::start().await;
    let api = &stack.api;
    stack.namespace("robots");
    stack.apply(
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: builder, namespace: robots}
---
apiVersion: v1
kind: Secret
metadata:
  name: builder-token
  namespace: robots
  annotations: {kubernetes.io/service-account.name: builder}
type: kubernetes.io/service-account-token
",
    );
    let token = eventually("the token filled in", SETTLE, || {
        let out = api.kubectl(&[
            "get",
            "secret",
            "builder-token",
            "-n",
            "robots",
            "-o",
            "jsonpath={.data.token}",
        ]);
        let t = base64::engine::general_purpose::STANDARD
            .decode(out.stdout.trim())
            .ok()
            .filter(|t| !t.is_empty())
            .and_then(|t| String::from_utf8(t).ok());
        async move { t }
    })
    .await;
    let ns = api.kubectl(&[
        "get",
        "secret",
        "builder-token",
        "-n",
        "robots",
        "-o",
        "jsonpath={.data.namespace}",
    ]);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(ns.out())
            .ok()
            .as_deref(),
        Some(&b"robots"[..])
    );
    // The token authenticates, with no client certificate: the account may read
    // discovery (every authenticated user may) but, bound to no role, not the pods:
    // 403 naming it, not 401.
    let ok = kubectl_as(api, &token, &["get", "--raw", "/api"]);
    assert!(ok.ok, "{}", ok.stderr);
    let denied = kubectl_as(api, &token, &["get", "pods", "-n", "robots"]);
    assert!(
        !denied.ok
            && denied.stderr.contains(
                "User \"system:serviceaccount:robots:builder\" cannot list resource \"pods\""
            ),
        "{}",
        denied.stderr
    );
    // A token signed with another key (one byte of the signature changed) does not.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert_unauthorized(api, &forged);
    // Deleting the Secret revokes the token.
    let del = api.kubectl(&["delete", "secret", "builder-token", "-n", "robots"]);
    assert!(del.ok, "{}", del.stderr);
    assert_unauthorized(api, &token);
}
