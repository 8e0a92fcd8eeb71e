//! Server-side apply and managedFields through the real kubectl and kube-rs: who owns
//! which field after creates, updates, scales and applies; apply conflicts (409, the
//! message and kubectl's exit status), forcing, co-ownership, and removal of fields an
//! applier stops applying.

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

use crate::support::Apiserver;
use crate::Stack;

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    tier: front
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
";

/// kubectl's advice after an apply conflict (apply.go), which it prints only for a 409
/// with reason Conflict on a server-side apply.
const ADVICE: &str = "Please review the fields above--they currently have other managers.";

/// Runs kubectl and returns its exit code, stdout and stderr.
fn kubectl_exit(
    api: &Apiserver,
    args: &[&str],
    stdin: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["--request-timeout", "30s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let (Some(input), Some(mut s)) = (stdin, child.stdin.take()) {
        s.write_all(input.as_bytes()).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl finishes");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn managed_fields(api: &Apiserver, what: &[&str]) -> Vec<Value> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    // kubectl leaves them out of every output unless asked.
    args.extend_from_slice(&["-o", "json", "--show-managed-fields"]);
    api.kubectl(&args).json()["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The entry of `manager` with `operation` (and `subresource`, "" for none).
fn entry(entries: &[Value], manager: &str, operation: &str, subresource: &str) -> Value {
    entries
        .iter()
        .find(|e| {
            e["manager"] == manager
                && e["operation"] == operation
                && e.get("subresource").and_then(Value::as_str).unwrap_or("") == subresource
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {manager} {operation} {subresource:?} entry in {entries:#?}"))
}

fn apply(api: &Apiserver, extra: &[&str], manifest: &str) -> (Option<i32>, String, String) {
    let mut args = vec!["apply", "--server-side", "-f", "-"];
    args.extend_from_slice(extra);
    kubectl_exit(api, &args, Some(manifest))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_server_side_apply_conflicts_force_and_prune() {
    let s = Stack::start().await;
    let api = &s.api;

    let (code, out, err) = apply(api, &[], WEB);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    let entries = managed_fields(api, &["deploy", "web"]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let applied = &entries[0];
    assert_eq!(applied["manager"], "kubectl");
    assert_eq!(applied["operation"], "Apply");
    assert_eq!(applied["apiVersion"], "apps/v1");
    assert_eq!(applied["fieldsType"], "FieldsV1");
    assert!(applied["time"].is_string(), "{applied}");
    // Exactly the applied fields: no defaults, no `.` on fields, keys with the port's
    // default protocol, and none of the system metadata.
    assert_eq!(
        applied["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                    ".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:containerPort": {}}}}}}}}
        })
    );
    // kubectl hides them unless asked.
    let yaml = api.kubectl(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(!yaml.out().contains("managedFields"), "{}", yaml.stdout);
    let shown = api.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(shown.out().contains("managedFields:"), "{}", shown.stdout);
    assert!(shown.out().contains("manager: kubectl"), "{}", shown.stdout);

    // `kubectl scale` (no fieldManager: the User-Agent's `kubectl`) takes the replicas
    // through the scale subresource; upstream's scale entries carry no time.
    api.kubectl(&["scale", "deploy", "web", "--replicas=5"])
        .out();
    let entries = managed_fields(api, &["deploy", "web"]);
    let scale = entry(&entries, "kubectl", "Update", "scale");
    assert_eq!(scale["apiVersion"], "apps/v1");
    assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(scale.get("time").is_none(), "{scale}");
    let applied = entry(&entries, "kubectl", "Apply", "");
    assert!(
        applied["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
        "{applied}"
    );

    // Re-applying the manifest would change what the scale set: a conflict.
    let (code, _, err) = apply(api, &[], WEB);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas\n"),
        "{err}"
    );
    assert!(err.contains(ADVICE), "{err}");
    assert_eq!(
        api.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .out(),
        "5"
    );

    // --force-conflicts takes the field back; the scale entry, left with nothing, goes.
    let (code, out, err) = apply(api, &["--force-conflicts"], WEB);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "deployment.apps/web serverside-applied");
    assert_eq!(
        api.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .out(),
        "2"
    );
    let entries = managed_fields(api, &["deploy", "web"]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert!(!entry(&entries, "kubectl", "Apply", "")["fieldsV1"]["f:spec"]["f:replicas"].is_null());

    // An update by another manager never conflicts: it takes the image.
    api.kubectl(&["set", "image", "deploy/web", "web=nginx:1.28"])
        .out();
    let entries = managed_fields(api, &["deploy", "web"]);
    let set = entry(&entries, "kubectl-set", "Update", "");
    assert_eq!(
        set["fieldsV1"],
        json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
            "k:{\"name\":\"web\"}": {"f:image": {}}}}}}})
    );
    let (code, _, err) = apply(api, &[], WEB);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-set\" using apps/v1: .spec.template.spec.containers[name=\"web\"].image"),
        "{err}"
    );

    // A changed manifest: the label, the port and the new image are dropped or
    // changed; what only this applier managed goes from the object.
    let changed = WEB
        .replace("    tier: front\n", "")
        .replace("        ports:\n        - containerPort: 80\n", "")
        .replace("nginx:1.27", "nginx:1.28");
    let (code, _, err) = apply(api, &[], &changed);
    assert_eq!(code, Some(0), "{err}");
    let d = api
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .json();
    assert_eq!(d["metadata"]["labels"], json!({"app": "web"}));
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert!(container.get("ports").is_none(), "{container}");
    assert_eq!(container["image"], "nginx:1.28");
    let entries = d["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let applied = entry(&entries, "kubectl", "Apply", "");
    assert!(applied["fieldsV1"]["f:metadata"]["f:labels"]
        .get("f:tier")
        .is_none());
    // Applying the image kubectl-set chose makes both its owners.
    assert!(!entry(&entries, "kubectl-set", "Update", "")["fieldsV1"].is_null());

    // Another applier with the same replicas: co-owners, no conflict.
    let replicas_only = |n: u32, manager_labels: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n{manager_labels}spec:\n  replicas: {n}\n"
        )
    };
    let (code, _, err) = apply(api, &["--field-manager=other"], &replicas_only(2, ""));
    assert_eq!(code, Some(0), "{err}");
    let entries = managed_fields(api, &["deploy", "web"]);
    for m in ["kubectl", "other"] {
        let e = entry(&entries, m, "Apply", "");
        assert!(!e["fieldsV1"]["f:spec"]["f:replicas"].is_null(), "{m}: {e}");
    }
    // ...but a different value conflicts with the other applier (an applier is named
    // without an API version).
    let (code, _, err) = apply(api, &["--field-manager=other"], &replicas_only(3, ""));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with(
            "error: Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas\n"
        ),
        "{err}"
    );

    // kubectl stops applying replicas: `other` still does, so the value stays.
    let no_replicas = changed.replace("  replicas: 2\n", "");
    let (code, _, err) = apply(api, &[], &no_replicas);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        api.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .out(),
        "2"
    );
    // Now `other` stops too: nobody applies replicas, so they go back to the default.
    let labels_only = "  labels:\n    owner: other\n";
    let manifest = replicas_only(0, labels_only).replace("spec:\n  replicas: 0\n", "");
    let (code, _, err) = apply(api, &["--field-manager=other"], &manifest);
    assert_eq!(code, Some(0), "{err}");
    let d = api.kubectl(&["get", "deploy", "web", "-o", "json"]).json();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["metadata"]["labels"],
        json!({"app": "web", "owner": "other"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_fields_of_creates_and_updates() {
    let s = Stack::start().await;
    let api = &s.api;
    api.kubectl_stdin(&["create", "-f", "-"], Some(WEB)).out();
    let entries = managed_fields(api, &["deploy", "web"]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let created = &entries[0];
    assert_eq!(created["manager"], "kubectl-create");
    assert_eq!(created["operation"], "Update");
    assert_eq!(created["apiVersion"], "apps/v1");
    assert!(created.get("subresource").is_none());
    // What kube-apiserver records for this create: the defaulted object against the Go
    // zero value, so `.` marks only what the zero value lacks (labels, the rolling
    // update, each container and port), never `spec`, `strategy` or `template`.
    assert_eq!(
        created["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}},
            "f:spec": {
                "f:progressDeadlineSeconds": {}, "f:replicas": {}, "f:revisionHistoryLimit": {},
                "f:selector": {},
                "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}},
                    "f:type": {}},
                "f:template": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {
                        "f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                            "f:ports": {".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}, "f:protocol": {}}},
                            "f:resources": {}, "f:terminationMessagePath": {},
                            "f:terminationMessagePolicy": {}}},
                        "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                        "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}
                    }
                }
            }
        })
    );

    // Each update records its manager with exactly what it changed, taken from the
    // creator; entries are sorted by operation, then time.
    api.kubectl(&["label", "deploy", "web", "env=prod"]).out();
    api.kubectl(&["annotate", "deploy", "web", "note=hi"]).out();
    let entries = managed_fields(api, &["deploy", "web"]);
    assert_eq!(
        entry(&entries, "kubectl-label", "Update", "")["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:env": {}}}})
    );
    assert_eq!(
        entry(&entries, "kubectl-annotate", "Update", "")["fieldsV1"],
        json!({"f:metadata": {"f:annotations": {".": {}, "f:note": {}}}})
    );
    // Sorted as upstream: by time, then by manager (these may share a second).
    let order: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["time"].as_str().unwrap_or("").to_string(),
                e["manager"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    // Removing a label removes it from its owner; an owner left with nothing goes.
    api.kubectl(&["label", "deploy", "web", "env-"]).out();
    let entries = managed_fields(api, &["deploy", "web"]);
    assert!(
        !entries.iter().any(|e| e["manager"] == "kubectl-label"),
        "{entries:#?}"
    );

    // A PUT that sends `managedFields: []` clears them; only its own change is recorded.
    let mut d = api
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .json();
    d["metadata"]["managedFields"] = json!([]);
    d["spec"]["replicas"] = json!(4);
    api.kubectl_stdin(&["replace", "-f", "-"], Some(&d.to_string()))
        .out();
    let entries = managed_fields(api, &["deploy", "web"]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["manager"], "kubectl-replace");
    assert_eq!(
        entries[0]["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );

    // Client-side apply records under kubectl's own name for it, the annotation included.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf\ndata:\n  a: \"1\"\n";
    api.kubectl_stdin(&["apply", "-f", "-"], Some(cm)).out();
    let entries = managed_fields(api, &["cm", "conf"]);
    let csa = entry(&entries, "kubectl-client-side-apply", "Update", "");
    assert_eq!(
        csa["fieldsV1"],
        json!({"f:data": {".": {}, "f:a": {}}, "f:metadata": {"f:annotations": {
            ".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}}})
    );

    // Moving it to server-side apply with a changed value is no conflict: the value
    // client-side apply set is still the one it last applied. The annotation follows.
    let changed = cm.replace("a: \"1\"", "a: \"2\"");
    let (code, out, err) = apply(api, &[], &changed);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "configmap/conf serverside-applied");
    let c = api.kubectl(&["get", "cm", "conf", "-o", "json"]).json();
    assert_eq!(c["data"], json!({"a": "2"}));
    let last: Value = serde_json::from_str(
        c["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap_or(""),
    )
    .expect("annotation JSON");
    assert_eq!(last["data"], json!({"a": "2"}));
    // Another manager has no such pass.
    let (code, _, err) = apply(
        api,
        &["--field-manager=other"],
        &cm.replace("a: \"1\"", "a: \"3\""),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.a"),
        "{err}"
    );
}

async fn client(s: &Stack) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&s.api.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn config_map(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": data})
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_apply_conflicts_and_force() {
    let s = Stack::start().await;
    let client = client(&s).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = api
        .patch(
            "shared",
            &PatchParams::apply("x"),
            &Patch::Apply(config_map(json!({"a": "1", "b": "2"}))),
        )
        .await
        .expect("apply creates");
    let mf = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("x"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        mf[0].fields_v1.as_ref().map(|f| f.0.clone()),
        Some(json!({"f:data": {"f:a": {}, "f:b": {}}}))
    );

    // `y` changing `a` conflicts: 409, reason Conflict, upstream's message.
    let err = api
        .patch(
            "shared",
            &PatchParams::apply("y"),
            &Patch::Apply(config_map(json!({"a": "9"}))),
        )
        .await
        .expect_err("conflict");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err}");
    };
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"x\": .data.a"
    );

    // The raw Status carries the conflict as a FieldManagerConflict cause.
    let req = kube::core::Request::new("/api/v1/namespaces/default/configmaps")
        .patch(
            "shared",
            &PatchParams::apply("y"),
            &Patch::Apply(config_map(json!({"a": "9", "b": "8"}))),
        )
        .expect("request");
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 409);
    let body = resp.into_body().collect_bytes().await.expect("body");
    let status: Value = serde_json::from_slice(&body).expect("Status");
    assert_eq!(
        status,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Apply failed with 2 conflicts: conflicts with \"x\":\n- .data.a\n- .data.b",
            "reason": "Conflict",
            "details": {"causes": [
                {"reason": "FieldManagerConflict", "message": "conflict with \"x\"", "field": ".data.a"},
                {"reason": "FieldManagerConflict", "message": "conflict with \"x\"", "field": ".data.b"}
            ]},
            "code": 409
        })
    );

    // Forced, `y` takes `a`; `x` keeps `b`.
    let forced = api
        .patch(
            "shared",
            &PatchParams::apply("y").force(),
            &Patch::Apply(config_map(json!({"a": "9"}))),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        forced
            .data
            .clone()
            .unwrap_or_default()
            .get("a")
            .map(String::as_str),
        Some("9")
    );
    let mf = forced.metadata.managed_fields.clone().unwrap_or_default();
    let fields = |m: &str| {
        mf.iter()
            .find(|e| e.manager.as_deref() == Some(m))
            .and_then(|e| e.fields_v1.as_ref())
            .map(|f| f.0.clone())
    };
    assert_eq!(fields("x"), Some(json!({"f:data": {"f:b": {}}})));
    assert_eq!(fields("y"), Some(json!({"f:data": {"f:a": {}}})));

    // `x` drops `b` and keeps applying nothing else: `b` goes, and with it `x`'s entry.
    let pruned = api
        .patch(
            "shared",
            &PatchParams::apply("x"),
            &Patch::Apply(config_map(json!({}))),
        )
        .await
        .expect("re-apply");
    assert_eq!(
        pruned
            .data
            .clone()
            .unwrap_or_default()
            .into_keys()
            .collect::<Vec<_>>(),
        ["a"]
    );

    // Apply needs a field manager; force is only for apply.
    let err = api
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Apply(config_map(json!({"a": "1"}))),
        )
        .await
        .expect_err("no manager");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err}");
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    // kube-rs refuses that itself, so the raw request.
    let req = http::Request::patch(
        "/api/v1/namespaces/default/configmaps/shared?fieldManager=z&force=true",
    )
    .header("content-type", "application/merge-patch+json")
    .body(kube::client::Body::from(br#"{"data":{"c":"3"}}"#.to_vec()))
    .expect("request");
    let resp = client.send(req).await.expect("answer");
    assert_eq!(resp.status().as_u16(), 422);
    let body = resp.into_body().collect_bytes().await.expect("body");
    let status: Value = serde_json::from_slice(&body).expect("Status");
    assert_eq!(
        status["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
    );
    assert_eq!(
        status["details"],
        json!({"name": "", "group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{
            "reason": "FieldValueForbidden", "field": "force",
            "message": "Forbidden: may not be specified for non-apply patch"}]})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_status_and_scale_managers() {
    let s = Stack::start().await;
    let api: Api<Deployment> = Api::namespaced(client(&s).await, "default");
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
    });
    api.patch("web", &PatchParams::apply("ci"), &Patch::Apply(&manifest))
        .await
        .expect("apply");

    // A status write is the status subresource's, and owns only status.
    let pp = PatchParams {
        field_manager: Some("deployment-controller".into()),
        ..Default::default()
    };
    api.patch_status(
        "web",
        &pp,
        &Patch::Merge(json!({"status": {"replicas": 2, "observedGeneration": 1}})),
    )
    .await
    .expect("status");
    let d = api.get("web").await.expect("get");
    let mf = d.metadata.managed_fields.clone().unwrap_or_default();
    let status = mf
        .iter()
        .find(|e| e.manager.as_deref() == Some("deployment-controller"))
        .expect("status entry");
    assert_eq!(status.subresource.as_deref(), Some("status"));
    assert_eq!(status.operation.as_deref(), Some("Update"));
    assert_eq!(
        status.fields_v1.as_ref().map(|f| f.0.clone()),
        Some(json!({"f:status": {"f:observedGeneration": {}, "f:replicas": {}}}))
    );

    // An apply through the scale subresource conflicts with the object's applier...
    let scale = |n: i64| {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": n}})
    };
    let err = api
        .patch_scale("web", &PatchParams::apply("hpa"), &Patch::Apply(scale(7)))
        .await
        .expect_err("conflict");
    let kube::Error::Api(e) = err else {
        panic!("not an API error: {err}");
    };
    assert_eq!(e.code, 409);
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"ci\": .spec.replicas"
    );
    // ...and forced, it is recorded as an apply of the scale subresource.
    let out = api
        .patch_scale(
            "web",
            &PatchParams::apply("hpa").force(),
            &Patch::Apply(scale(7)),
        )
        .await
        .expect("forced");
    assert_eq!(out.spec.and_then(|s| s.replicas), Some(7));
    let d = api.get("web").await.expect("get");
    let mf = d.metadata.managed_fields.clone().unwrap_or_default();
    let hpa = mf
        .iter()
        .find(|e| e.manager.as_deref() == Some("hpa"))
        .expect("scale entry");
    assert_eq!(hpa.subresource.as_deref(), Some("scale"));
    assert_eq!(hpa.operation.as_deref(), Some("Apply"));
    assert_eq!(
        hpa.fields_v1.as_ref().map(|f| f.0.clone()),
        Some(json!({"f:spec": {"f:replicas": {}}}))
    );
    let ci = mf
        .iter()
        .find(|e| e.manager.as_deref() == Some("ci"))
        .and_then(|e| e.fields_v1.as_ref())
        .map(|f| f.0.clone())
        .unwrap_or_default();
    assert!(ci["f:spec"].get("f:replicas").is_none(), "{ci}");
}
