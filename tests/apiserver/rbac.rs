//! RBAC: every request is authorized as kube-apiserver's `--authorization-mode=RBAC`
//! does. Users other than the admin (`system:masters`) are a service account with a
//! token from a token Secret (filled by a real controller-manager) and a user with a
//! client certificate the cluster CA signed (made with `openssl`), each driven by the
//! real `kubectl` through its own kubeconfig written with `kubectl config`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{eventually, Apiserver, Component, Ctl};
use crate::Stack;

/// How long a new binding may take to reach the authorizer's cache, or a token its
/// Secret.
const SETTLE: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Ctl {
    let out = cmd.output().expect("command runs");
    Ctl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A kubeconfig for the apiserver with the credentials `creds` (`kubectl config
/// set-credentials` flags), in `dir`.
fn kubeconfig(api: &Apiserver, dir: &Path, user: &str, creds: &[&str]) -> PathBuf {
    let path = dir.join(format!("{user}.kubeconfig"));
    let ca = api.pki_dir().join("ca.crt");
    let ctl = |args: &[&str]| {
        let out = run(Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&path)
            .arg("config")
            .args(args));
        assert!(out.ok, "kubectl config {args:?}: {}", out.stderr);
    };
    ctl(&[
        "set-cluster",
        "capstan",
        "--server",
        &api.url,
        "--certificate-authority",
        &ca.display().to_string(),
        "--embed-certs",
    ]);
    let mut set = vec!["set-credentials", user];
    set.extend_from_slice(creds);
    ctl(&set);
    ctl(&["set-context", user, "--cluster", "capstan", "--user", user]);
    ctl(&["use-context", user]);
    path
}

/// The real `kubectl` with another user's kubeconfig.
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Ctl {
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "30s"])
        .args(args))
}

/// The request fails with exactly upstream's 403 message, as kubectl shows it.
#[track_caller]
fn assert_forbidden(out: &Ctl, message: &str) {
    assert!(!out.ok, "allowed: {}", out.stdout);
    assert_eq!(
        out.stderr.trim(),
        format!("Error from server (Forbidden): {message}"),
        "stderr"
    );
}

/// Waits until `args` succeed as the user (a binding reached the authorizer's cache).
async fn eventually_allowed(kubeconfig: &Path, what: &str, args: &[&str]) -> Ctl {
    eventually(what, SETTLE, || {
        let out = kubectl_as(kubeconfig, args);
        async move { out.ok.then_some(out) }
    })
    .await
}

#[track_caller]
fn admin(api: &Apiserver, args: &[&str]) -> String {
    let out = api.kubectl(args);
    assert!(out.ok, "kubectl {args:?}: {}", out.stderr);
    out.stdout
}

/// A service account's token, from a token Secret the controller-manager fills.
async fn service_account_token(api: &Apiserver, ns: &str, sa: &str) -> String {
    admin(api, &["create", "serviceaccount", sa, "-n", ns]);
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {sa}-token\n  namespace: {ns}\n  annotations:\n    kubernetes.io/service-account.name: {sa}\ntype: kubernetes.io/service-account-token\n"
    );
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&secret));
    assert!(out.ok, "{}", out.stderr);
    let name = format!("{sa}-token");
    let b64 = eventually("the token filled in", SETTLE, || {
        let out = api.kubectl(&[
            "get",
            "secret",
            &name,
            "-n",
            ns,
            "-o",
            "jsonpath={.data.token}",
        ]);
        async move { (out.ok && !out.stdout.is_empty()).then_some(out.stdout) }
    })
    .await;
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("token is base64");
    String::from_utf8(raw).expect("token is text")
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_needs_a_binding() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let pki = api.pki_dir();
    let (key, ca) = (
        pki.join("sa.key").display().to_string(),
        pki.join("ca.crt").display().to_string(),
    );
    let _cm = Component::start(
        api,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--controllers",
            "serviceaccount-token",
            "--service-account-private-key-file",
            &key,
            "--root-ca-file",
            &ca,
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    admin(api, &["create", "namespace", "team"]);
    let token = service_account_token(api, "team", "robot").await;
    let robot = kubeconfig(api, dir.path(), "robot", &["--token", &token]);
    let who = "system:serviceaccount:team:robot";

    // Authenticated, but bound to nothing: discovery works (system:discovery), the
    // pods do not.
    let out = kubectl_as(&robot, &["get", "pods", "-n", "team"]);
    assert_forbidden(
        &out,
        &format!("pods is forbidden: User \"{who}\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""),
    );
    let can = kubectl_as(&robot, &["auth", "can-i", "list", "pods", "-n", "team"]);
    assert_eq!((can.ok, can.stdout.trim()), (false, "no"), "{}", can.stderr);
    // The admin asks the same question impersonating the account.
    let can = api.kubectl(&["auth", "can-i", "list", "pods", "-n", "team", "--as", who]);
    assert_eq!((can.ok, can.stdout.trim()), (false, "no"), "{}", can.stderr);

    // `view` in its namespace: it reads pods there, cannot create them, and cannot read
    // secrets (view leaves them out) nor other namespaces.
    admin(
        api,
        &[
            "create",
            "rolebinding",
            "robot-view",
            "--clusterrole=view",
            "--serviceaccount=team:robot",
            "-n",
            "team",
        ],
    );
    eventually_allowed(&robot, "robot lists pods", &["get", "pods", "-n", "team"]).await;
    let out = kubectl_as(&robot, &["run", "web", "--image=busybox", "-n", "team"]);
    assert_forbidden(
        &out,
        &format!("pods is forbidden: User \"{who}\" cannot create resource \"pods\" in API group \"\" in the namespace \"team\""),
    );
    let out = kubectl_as(&robot, &["get", "secrets", "-n", "team"]);
    assert_forbidden(
        &out,
        &format!("secrets is forbidden: User \"{who}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""),
    );
    let out = kubectl_as(&robot, &["get", "deployments", "-n", "default"]);
    assert_forbidden(
        &out,
        &format!("deployments.apps is forbidden: User \"{who}\" cannot list resource \"deployments\" in API group \"apps\" in the namespace \"default\""),
    );
    let can = kubectl_as(&robot, &["auth", "can-i", "list", "pods", "-n", "team"]);
    assert_eq!((can.ok, can.stdout.trim()), (true, "yes"), "{}", can.stderr);
    let can = kubectl_as(&robot, &["auth", "can-i", "create", "pods", "-n", "team"]);
    assert_eq!((can.ok, can.stdout.trim()), (false, "no"), "{}", can.stderr);
    let can = api.kubectl(&["auth", "can-i", "list", "pods", "-n", "team", "--as", who]);
    assert_eq!((can.ok, can.stdout.trim()), (true, "yes"), "{}", can.stderr);

    // `kubectl auth can-i --list` (SelfSubjectRulesReview) shows the rules view gave.
    let list = kubectl_as(&robot, &["auth", "can-i", "--list", "-n", "team"]);
    assert!(list.ok, "{}", list.stderr);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("pods ") && l.ends_with("[get list watch]")),
        "{}",
        list.stdout
    );

    // The binding as `kubectl get` shows it.
    let table = admin(api, &["get", "rolebindings", "-n", "team", "-o", "wide"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        (row.first(), row.get(1), row.last()),
        (
            Some(&"robot-view"),
            Some(&"ClusterRole/view"),
            Some(&"team/robot")
        ),
        "{table}"
    );

    // A ClusterRoleBinding grants in every namespace.
    admin(
        api,
        &[
            "create",
            "clusterrolebinding",
            "robot-view-all",
            "--clusterrole=view",
            "--serviceaccount=team:robot",
        ],
    );
    eventually_allowed(
        &robot,
        "robot lists deployments everywhere",
        &["get", "deployments", "-A"],
    )
    .await;

    // A ClusterRole labelled to aggregate into view extends what view grants.
    let out = kubectl_as(&robot, &["get", "leases", "-n", "team"]);
    assert_forbidden(
        &out,
        &format!("leases.coordination.k8s.io is forbidden: User \"{who}\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"team\""),
    );
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: lease-viewer\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [get, list, watch]\n";
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(role));
    assert!(out.ok, "{}", out.stderr);
    eventually_allowed(
        &robot,
        "robot lists leases through the aggregated view",
        &["get", "leases", "-n", "team"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_user_needs_a_binding() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = api.pki_dir();
    // A client certificate for CN=alice, no groups, signed by the cluster CA.
    let key = d.join("alice.key");
    let csr = d.join("alice.csr");
    let crt = d.join("alice.crt");
    let out = run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", "/CN=alice"])
        .arg("-out")
        .arg(&csr));
    assert!(out.ok, "openssl req: {}", out.stderr);
    // A v3 certificate for client auth (without extensions OpenSSL 3.0 writes a v1
    // certificate, which rustls refuses).
    let ext = d.join("client.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write the extensions");
    let out = run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1"])
        .arg("-extfile")
        .arg(&ext)
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(pki.join("ca.crt"))
        .arg("-CAkey")
        .arg(pki.join("ca.key"))
        .arg("-CAcreateserial")
        .arg("-CAserial")
        .arg(d.join("ca.srl"))
        .arg("-out")
        .arg(&crt));
    assert!(out.ok, "openssl x509: {}", out.stderr);
    let alice = kubeconfig(
        api,
        d,
        "alice",
        &[
            "--client-certificate",
            &crt.display().to_string(),
            "--client-key",
            &key.display().to_string(),
            "--embed-certs",
        ],
    );

    // Nothing bound: denied, with the message for each scope and for a named object.
    assert_forbidden(
        &kubectl_as(&alice, &["get", "configmaps", "-n", "default"]),
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\"",
    );
    assert_forbidden(
        &kubectl_as(&alice, &["get", "nodes"]),
        "nodes is forbidden: User \"alice\" cannot list resource \"nodes\" in API group \"\" at the cluster scope",
    );
    assert_forbidden(
        &kubectl_as(&alice, &["get", "configmap", "a", "-n", "default"]),
        "configmaps \"a\" is forbidden: User \"alice\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\"",
    );
    assert_forbidden(
        &kubectl_as(&alice, &["get", "--raw", "/metrics"]),
        "forbidden: User \"alice\" cannot get path \"/metrics\"",
    );
    // Impersonation needs the impersonate verb, which alice lacks.
    assert_forbidden(
        &kubectl_as(&alice, &["get", "pods", "--as", "bob"]),
        "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
    );
    // Discovery is every authenticated user's (system:discovery).
    let out = kubectl_as(
        &alice,
        &["api-resources", "--api-group=rbac.authorization.k8s.io"],
    );
    assert!(
        out.ok && out.stdout.contains("rolebindings"),
        "{}",
        out.stderr
    );
    // The whole Status of a denial, and of a request with no credentials at all, which
    // stays 401 (kubectl would prompt for a password there, so curl asks).
    let curl = |creds: &[&str], path: &str| {
        let out = run(Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(pki.join("ca.crt"))
            .args(creds)
            .arg(format!("{}{path}", api.url)));
        assert!(out.ok, "curl: {}", out.stderr);
        serde_json::from_str::<serde_json::Value>(&out.stdout).expect("a JSON Status")
    };
    let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
    assert_eq!(
        curl(
            &["--cert", &crt_s, "--key", &key_s],
            "/api/v1/namespaces/default/pods/x"
        ),
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"x\" is forbidden: User \"alice\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\"",
            "reason": "Forbidden", "details": {"name": "x", "kind": "pods"}, "code": 403})
    );
    assert_eq!(
        curl(&[], "/api/v1/pods"),
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );

    // A Role limited to one name, bound to User alice: that configmap only.
    for cm in ["a", "b"] {
        admin(
            api,
            &[
                "create",
                "configmap",
                cm,
                "-n",
                "default",
                "--from-literal=k=v",
            ],
        );
    }
    admin(
        api,
        &[
            "create",
            "role",
            "read-a",
            "--verb=get",
            "--resource=configmaps",
            "--resource-name=a",
            "-n",
            "default",
        ],
    );
    admin(
        api,
        &[
            "create",
            "rolebinding",
            "alice-read-a",
            "--role=read-a",
            "--user=alice",
            "-n",
            "default",
        ],
    );
    let out = eventually_allowed(
        &alice,
        "alice reads configmap a",
        &[
            "get",
            "configmap",
            "a",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.k}",
        ],
    )
    .await;
    assert_eq!(out.stdout, "v");
    assert_forbidden(
        &kubectl_as(&alice, &["get", "configmap", "b", "-n", "default"]),
        "configmaps \"b\" is forbidden: User \"alice\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\"",
    );
    assert_forbidden(
        &kubectl_as(&alice, &["get", "configmaps", "-n", "default"]),
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\"",
    );
    let can = kubectl_as(
        &alice,
        &["auth", "can-i", "get", "configmap/a", "-n", "default"],
    );
    assert_eq!(can.stdout.trim(), "yes", "{}", can.stderr);
    let can = kubectl_as(
        &alice,
        &["auth", "can-i", "get", "configmap/b", "-n", "default"],
    );
    assert_eq!(can.stdout.trim(), "no", "{}", can.stderr);

    // A binding to a role that does not exist is reported in the denial, as upstream.
    admin(
        api,
        &[
            "create",
            "rolebinding",
            "alice-ghost",
            "--clusterrole=ghost",
            "--user=alice",
            "-n",
            "default",
        ],
    );
    let msg = "configmaps \"b\" is forbidden: User \"alice\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\": RBAC: clusterrole.rbac.authorization.k8s.io \"ghost\" not found";
    eventually("the dangling binding in the denial", SETTLE, || {
        let out = kubectl_as(&alice, &["get", "configmap", "b", "-n", "default"]);
        let seen = out.stderr.trim() == format!("Error from server (Forbidden): {msg}");
        async move { seen.then_some(()) }
    })
    .await;
    // An admin of a namespace may hand out what it holds there, and no more: binding
    // cluster-admin, or a Role with rules beyond its own, is an escalation.
    admin(api, &["create", "namespace", "dev"]);
    admin(
        api,
        &[
            "create",
            "rolebinding",
            "alice-admin",
            "--clusterrole=admin",
            "--user=alice",
            "-n",
            "dev",
        ],
    );
    eventually_allowed(
        &alice,
        "alice binds view in dev",
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "dev",
        ],
    )
    .await;
    let out = kubectl_as(
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-root",
            "--clusterrole=cluster-admin",
            "--user=bob",
            "-n",
            "dev",
        ],
    );
    // `kubectl create rolebinding` words the failure its own way around the message.
    assert!(!out.ok);
    assert_eq!(
        out.stderr.trim(),
        "error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io \"bob-root\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}",
    );
    let out = kubectl_as(
        &alice,
        &[
            "create",
            "role",
            "pods",
            "--verb=create,get",
            "--resource=pods",
            "-n",
            "dev",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    let out = kubectl_as(
        &alice,
        &[
            "create",
            "role",
            "nodes",
            "--verb=get",
            "--resource=nodes",
            "-n",
            "dev",
        ],
    );
    assert_forbidden(
        &out,
        "roles.rbac.authorization.k8s.io \"nodes\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_policy_is_served_and_kept() {
    let mut stack = Stack::start().await;
    let table = admin(&stack.api, &["get", "clusterroles"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "CREATED", "AT"]);
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for role in [
        "admin",
        "cluster-admin",
        "edit",
        "view",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:aggregate-to-view",
    ] {
        assert!(names.contains(&role), "{role} missing from\n{table}");
    }
    let labelled = admin(
        &stack.api,
        &[
            "get",
            "clusterroles",
            "-l",
            "kubernetes.io/bootstrapping=rbac-defaults",
            "-o",
            "name",
        ],
    );
    assert!(labelled
        .lines()
        .any(|l| l == "clusterrole.rbac.authorization.k8s.io/view"));
    let annotation = admin(
        &stack.api,
        &[
            "get",
            "clusterrole",
            "cluster-admin",
            "-o",
            "jsonpath={.metadata.annotations.rbac\\.authorization\\.kubernetes\\.io/autoupdate}",
        ],
    );
    assert_eq!(annotation, "true");
    let binding = admin(
        &stack.api,
        &["get", "clusterrolebinding", "cluster-admin", "-o", "wide"],
    );
    let row: Vec<&str> = binding
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        (row.first(), row.get(1), row.last()),
        (
            Some(&"cluster-admin"),
            Some(&"ClusterRole/cluster-admin"),
            Some(&"system:masters")
        ),
        "{binding}"
    );

    // Typed generators send protobuf; a ClusterRole made that way is served as sent.
    admin(
        &stack.api,
        &[
            "create",
            "clusterrole",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
        ],
    );
    let rules = admin(
        &stack.api,
        &[
            "get",
            "clusterrole",
            "pod-reader",
            "-o",
            "jsonpath={.rules[0].verbs}",
        ],
    );
    assert_eq!(rules, r#"["get","list"]"#);

    // A restart leaves a user's change to a bootstrap role alone and puts back what was
    // deleted.
    admin(&stack.api, &["label", "clusterrole", "view", "team=ours"]);
    admin(
        &stack.api,
        &["delete", "clusterrolebinding", "system:basic-user"],
    );
    stack.api.restart().await;
    let label = admin(
        &stack.api,
        &[
            "get",
            "clusterrole",
            "view",
            "-o",
            "jsonpath={.metadata.labels.team}",
        ],
    );
    assert_eq!(label, "ours");
    admin(
        &stack.api,
        &["get", "clusterrolebinding", "system:basic-user"],
    );
}
