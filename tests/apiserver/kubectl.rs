//! The real kubectl against the apiserver: CRUD, apply, patch, scale, selectors,
//! pagination, watch and upstream's error messages.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{json, Value};

use crate::Stack;

const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  labels:
    app: web
data:
  color: blue
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
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
        image: busybox:1.36
        ports:
        - containerPort: 80
      - name: sidecar
        image: busybox:1.36
";

#[tokio::test(flavor = "multi_thread")]
async fn discovery_and_system_namespaces() {
    let s = Stack::start().await;
    let api = &s.api;
    let version = api.kubectl(&["version", "-o", "json"]).json();
    assert_eq!(version["serverVersion"]["major"], "1");
    assert_eq!(version["serverVersion"]["minor"], "32");
    let ns = api.kubectl(&["get", "namespaces"]);
    let out = ns.out();
    assert!(out.starts_with("NAME"), "{out}");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l.contains("Active")),
            "{out}"
        );
    }
    let apps: Value = serde_json::from_str(api.kubectl(&["get", "--raw", "/apis/apps/v1"]).out())
        .expect("APIResourceList");
    let names: Vec<&str> = apps["resources"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"deployments") && names.contains(&"deployments/scale"),
        "{names:?}"
    );
    // kubectl learns the whole API from aggregated discovery: /api and /apis, and no
    // per-group-version document (a fresh cache dir, so nothing comes from disk).
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().display().to_string();
    let resources = api.kubectl(&[
        "api-resources",
        "--no-headers",
        "-v=6",
        "--cache-dir",
        &cache_dir,
    ]);
    let row = resources
        .out()
        .lines()
        .find(|l| l.starts_with("deployments "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        row,
        Some(vec![
            "deployments",
            "deploy",
            "apps/v1",
            "true",
            "Deployment"
        ]),
        "{}",
        resources.out()
    );
    let gets: Vec<&str> = resources
        .stderr
        .lines()
        .filter(|l| l.contains(" GET https://"))
        .collect();
    assert!(
        gets.iter().any(|l| l.contains("/apis?"))
            && !gets.iter().any(|l| l.contains("/apis/apps/v1")),
        "{gets:#?}"
    );
    // Prometheus metrics under kube-apiserver's names, for authenticated clients.
    let metrics = api.kubectl(&["get", "--raw", "/metrics"]);
    let listed = metrics.out().lines().find(|l| {
        l.starts_with("apiserver_request_total{")
            && l.contains("resource=\"namespaces\"")
            && l.contains("verb=\"LIST\"")
            && l.contains("code=\"200\"")
    });
    assert!(listed.is_some(), "{}", metrics.stdout);
    assert!(metrics
        .out()
        .contains("apiserver_request_duration_seconds_bucket"));
    // And the process's own, as every upstream component exports them.
    assert!(
        metrics
            .out()
            .lines()
            .any(|l| l.starts_with("process_resident_memory_bytes ")),
        "{}",
        metrics.stdout
    );
    // Unknown resource types get kubectl's own error.
    let err = api.kubectl(&["get", "widgets"]);
    assert!(
        err.err()
            .contains("the server doesn't have a resource type \"widgets\""),
        "{}",
        err.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configmap_lifecycle_with_apply_label_and_errors() {
    let s = Stack::start().await;
    let api = &s.api;
    let created = api.kubectl_stdin(&["apply", "-f", "-"], Some(CM));
    assert_eq!(created.out().trim(), "configmap/app-config created");
    let cm = api
        .kubectl(&["get", "configmap", "app-config", "-o", "json"])
        .json();
    assert_eq!(cm["data"]["color"], "blue");
    assert!(cm["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    assert!(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    let rv1: i64 = cm["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("rv");

    // Apply again with a changed manifest: a patch, not a replace.
    let changed = CM.replace("color: blue", "color: green\n  size: large");
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert_eq!(applied.out().trim(), "configmap/app-config configured");
    let unchanged = api.kubectl_stdin(&["apply", "-f", "-"], Some(&changed));
    assert_eq!(unchanged.out().trim(), "configmap/app-config unchanged");
    let cm = api
        .kubectl(&["get", "cm", "app-config", "-o", "json"])
        .json();
    assert_eq!(cm["data"]["color"], "green");
    assert_eq!(cm["data"]["size"], "large");
    let rv2: i64 = cm["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("rv");
    assert!(rv2 > rv1);

    api.kubectl(&["label", "cm", "app-config", "tier=frontend"])
        .out();
    api.kubectl(&["annotate", "cm", "app-config", "owner=team-a"])
        .out();
    let got = api.kubectl(&[
        "get",
        "cm",
        "-l",
        "tier=frontend",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(got.out(), "app-config");
    let none = api.kubectl(&["get", "cm", "-l", "tier in (backend)", "-o", "name"]);
    assert_eq!(none.out().trim(), "");
    let header = api.table_header(&["get", "cm", "app-config"]);
    assert_eq!(header, ["NAME", "DATA", "AGE"]);

    // Upstream's errors, word for word.
    let dup = api.kubectl_stdin(&["create", "-f", "-"], Some(CM));
    assert!(
        dup.err().contains("Error from server (AlreadyExists)")
            && dup
                .stderr
                .contains("configmaps \"app-config\" already exists"),
        "{}",
        dup.stderr
    );
    let missing = api.kubectl(&["get", "cm", "nope"]);
    assert_eq!(
        missing.err().trim(),
        "Error from server (NotFound): configmaps \"nope\" not found"
    );
    let bad_name = api.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&CM.replace("name: app-config", "name: Bad_Name")),
    );
    assert!(bad_name.err().contains("is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{}", bad_name.stderr);
    let unknown = api.kubectl_stdin(
        &["create", "-f", "-"],
        Some(
            &CM.replace("name: app-config", "name: other")
                .replace("data:", "bogus: 1\ndata:"),
        ),
    );
    assert!(
        unknown
            .err()
            .contains("strict decoding error: unknown field \"bogus\""),
        "{}",
        unknown.stderr
    );
    let no_ns = api.kubectl_stdin(
        &["create", "-n", "ghost", "-f", "-"],
        Some(&CM.replace("name: app-config", "name: other")),
    );
    assert!(
        no_ns.err().contains("namespaces \"ghost\" not found"),
        "{}",
        no_ns.stderr
    );
    // None of the failed writes changed anything.
    let all = api.kubectl(&["get", "cm", "-A", "-o", "name"]);
    assert_eq!(all.out().trim(), "configmap/app-config");

    let del = api.kubectl(&["delete", "cm", "app-config", "--wait"]);
    assert_eq!(del.out().trim(), "configmap \"app-config\" deleted");
    let gone = api.kubectl(&["get", "cm", "app-config"]);
    assert!(gone.err().contains("NotFound"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_scale_patch_and_server_side_apply() {
    let s = Stack::start().await;
    let api = &s.api;
    api.kubectl_stdin(&["create", "-f", "-"], Some(DEPLOY))
        .out();
    let d = api.kubectl(&["get", "deploy", "web", "-o", "json"]).json();
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    let header = api.table_header(&["get", "deploy"]);
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);

    assert_eq!(
        api.kubectl(&["scale", "deploy", "web", "--replicas=5"])
            .out()
            .trim(),
        "deployment.apps/web scaled"
    );
    let d = api.kubectl(&["get", "deploy", "web", "-o", "json"]).json();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["metadata"]["generation"], 2);

    // Strategic merge patch: containers merge by name, the sidecar survives.
    api.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#,
    ])
    .out();
    let d = api.kubectl(&["get", "deploy", "web", "-o", "json"]).json();
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert!(containers
        .iter()
        .any(|c| c["name"] == "web" && c["image"] == "busybox:1.37"));
    assert!(containers.iter().any(|c| c["name"] == "sidecar"));
    assert_eq!(d["metadata"]["generation"], 3);
    // JSON patch and merge patch.
    api.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":1}]"#,
    ])
    .out();
    api.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"patched":"yes"}}}"#,
    ])
    .out();
    let d = api.kubectl(&["get", "deploy", "web", "-o", "json"]).json();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["metadata"]["labels"]["patched"], "yes");
    let failed = api.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":7}]"#,
    ]);
    assert!(
        failed.err().contains("testing value /spec/replicas failed"),
        "{}",
        failed.stderr
    );

    // A stale resourceVersion is a 409 Conflict and changes nothing.
    let mut stale = d.clone();
    stale["metadata"]["resourceVersion"] = Value::String("1".into());
    stale["spec"]["replicas"] = 9.into();
    let conflict = api.kubectl_stdin(&["replace", "-f", "-"], Some(&stale.to_string()));
    assert!(
        conflict.err().contains("Error from server (Conflict)")
            && conflict.stderr.contains("the object has been modified"),
        "{}",
        conflict.stderr
    );
    let now = api.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(now.out(), "1");

    // Server-side apply creates when absent.
    let ssa = DEPLOY.replace("name: web\n  labels", "name: api\n  labels");
    let out = api.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&ssa));
    assert_eq!(out.out().trim(), "deployment.apps/api serverside-applied");
    let d = api.kubectl(&["get", "deploy", "api", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(d.out(), "2");

    let del = api.kubectl(&["delete", "deploy", "web", "api"]);
    assert!(
        del.out().contains("deployment.apps \"web\" deleted"),
        "{}",
        del.stdout
    );
    assert_eq!(
        api.kubectl(&["get", "deploy", "-o", "name"]).out().trim(),
        ""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_lists_and_watch() {
    let s = Stack::start().await;
    let api = &s.api;
    let mut manifests = String::new();
    for i in 0..25 {
        manifests.push_str(&format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:02}\ndata:\n  i: \"{i}\"\n"));
    }
    api.kubectl_stdin(&["create", "-f", "-"], Some(&manifests))
        .out();
    // kubectl pages with limit/continue: every object comes back exactly once.
    let names = api.kubectl(&["get", "cm", "--chunk-size=7", "-o", "name"]);
    let got: Vec<&str> = names.out().lines().collect();
    assert_eq!(got.len(), 25, "{got:?}");
    let raw: Value = serde_json::from_str(
        api.kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps?limit=10",
        ])
        .out(),
    )
    .expect("list");
    assert_eq!(raw["items"].as_array().map(Vec::len), Some(10));
    assert!(raw["metadata"]["continue"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));

    // A watch sees the create, the update and the delete, in order.
    let mut w = api.kubectl_spawn(&[
        "get",
        "cm",
        "-w",
        "--output-watch-events",
        "-o",
        "custom-columns=EVENT:.type,NAME:.object.metadata.name,V:.object.data.v",
        "--no-headers",
    ]);
    let stdout = w.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let expect = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.split_whitespace().collect::<Vec<_>>().join(" ") == want => return,
                Ok(_) => continue,
                Err(_) => panic!("watch never printed {want:?}"),
            }
        }
    };
    // The initial state arrives first (synthetic ADDED events).
    expect("ADDED cm-24 <none>");
    // (`kubectl create cm --from-literal` would send protobuf, which is not served yet.)
    let watched =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata:\n  v: \"1\"\n";
    api.kubectl_stdin(&["apply", "-f", "-"], Some(watched))
        .out();
    expect("ADDED watched 1");
    api.kubectl(&["patch", "cm", "watched", "-p", r#"{"data":{"v":"2"}}"#])
        .out();
    expect("MODIFIED watched 2");
    api.kubectl(&["delete", "cm", "watched"]).out();
    expect("DELETED watched 2");
    let _ = w.kill();
    let _ = w.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_requests_are_unauthorized() {
    let s = Stack::start().await;
    let out = std::process::Command::new("kubectl")
        .args([
            "--server",
            &s.api.url,
            "--insecure-skip-tls-verify",
            "--token",
            "not-a-token",
            "get",
            "pods",
        ])
        .output()
        .expect("kubectl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // kubectl words the same 401 Status two ways, depending on whether its discovery
    // request (aggregated) or a plain one failed first; both are what it prints
    // against kube-apiserver.
    let last = err.trim().lines().last().unwrap_or("");
    assert!(
        [
            "error: You must be logged in to the server (Unauthorized)",
            "error: You must be logged in to the server (the server has asked for the client to provide credentials)",
        ]
        .contains(&last),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_version_semantics_of_lists_and_watches() {
    let s = Stack::start().await;
    let api = &s.api;
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n");
    let rv_of = |name: &str| -> i64 {
        api.kubectl(&[
            "get",
            "cm",
            name,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .out()
        .parse()
        .expect("resourceVersion")
    };
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&cm("first")))
        .out();
    let first = rv_of("first");
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&cm("second")))
        .out();

    // A watch from a resourceVersion replays what came after it, and only that.
    let replay = api.kubectl(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={first}&timeoutSeconds=1")]);
    let events: Vec<Value> = replay
        .out()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED".to_string(), "second".to_string())]);

    // Older than the server's history: a 410 "too old resource version" ERROR event.
    let expired = api.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1",
    ]);
    let ev: Value =
        serde_json::from_str(expired.out().lines().next().unwrap_or("")).expect("one event");
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(ev["object"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("too old resource version: 1 (")));

    // Newer than the store: upstream's 504 after a bounded wait.
    let future = api.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?resourceVersion=99999999",
    ]);
    assert!(
        future
            .err()
            .contains("Too large resource version: 99999999"),
        "{}",
        future.stderr
    );

    // A consistent list (no resourceVersion) sees a write made through the store
    // directly, even though nothing told the cache: it waits for the store's revision.
    let mut etcd = s.store.client().await;
    let direct = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "direct", "namespace": "default",
        "uid": "00000000-0000-0000-0000-000000000001", "creationTimestamp": "2026-01-01T00:00:00Z"}});
    etcd.put(
        "/registry/configmaps/default/direct",
        direct.to_string(),
        None,
    )
    .await
    .expect("put");
    let names = api.kubectl(&["get", "cm", "-o", "name"]);
    assert!(
        names.out().lines().any(|l| l == "configmap/direct"),
        "{}",
        names.stdout
    );
}
