//! Service updates through the real kubectl: a Service that becomes a NodePort gets
//! node ports, a new port gets one, an update that leaves them out keeps them, and a
//! Service that stops needing them gives them up for another Service to take. And the
//! `default/kubernetes` Service every apiserver keeps, with endpoints listing exactly
//! the apiservers that are alive.

use serde_json::{json, Value};

use std::time::Duration;

use crate::support::{eventually, Apiserver};
use crate::Stack;

fn node_ports(svc: &Value) -> Vec<i64> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_i64())
        .collect()
}

/// The node ports the store holds claims on.
fn claimed(s: &Stack) -> Vec<String> {
    let out = s.store.etcdctl(&[
        "get",
        "--prefix",
        "/registry/capstan/servicenodeports/",
        "--keys-only",
    ]);
    out.out()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn other_asking_for(port: i64) -> String {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other"},
        "spec": {"type": "NodePort", "selector": {"app": "other"},
            "ports": [{"port": 80, "nodePort": port}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_updates_claim_and_release_node_ports() {
    let s = Stack::start().await;
    let api = &s.api;
    api.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"])
        .out();
    let svc = api.kubectl(&["get", "svc", "web", "-o", "json"]).json();
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    assert!(!ip.is_empty(), "{svc}");
    assert!(node_ports(&svc).is_empty());

    // Becoming a NodePort Service allocates a node port, as a create would.
    api.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ])
    .out();
    let svc = api.kubectl(&["get", "svc", "web", "-o", "json"]).json();
    let first = node_ports(&svc);
    assert_eq!(first.len(), 1, "{svc}");
    assert!((30000..=32767).contains(&first[0]), "{first:?}");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(svc["spec"]["clusterIP"], ip.as_str());
    assert_eq!(claimed(&s), [first[0].to_string()]);

    // Nobody else can have it now.
    let taken = api.kubectl_stdin(&["create", "-f", "-"], Some(&other_asking_for(first[0])));
    assert!(
        taken.err().contains(&format!(
            "spec.ports[0].nodePort: Invalid value: {}: provided port is already allocated",
            first[0]
        )),
        "{}",
        taken.stderr
    );

    // A new port gets its own.
    api.kubectl(&[
        "patch",
        "svc",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/ports/-","value":{"name":"https","port":443,"targetPort":8443}}]"#,
    ])
    .out();
    let svc = api.kubectl(&["get", "svc", "web", "-o", "json"]).json();
    let both = node_ports(&svc);
    assert_eq!(both.len(), 2, "{svc}");
    assert_eq!(both[0], first[0]);
    assert_ne!(both[1], both[0]);

    // A replace that leaves the allocations out keeps them (node ports by port name).
    let mut bare = svc.clone();
    bare["spec"]
        .as_object_mut()
        .expect("spec")
        .retain(|k, _| k == "type" || k == "selector" || k == "ports");
    for p in bare["spec"]["ports"].as_array_mut().expect("ports") {
        p.as_object_mut().expect("port").remove("nodePort");
    }
    bare["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("resourceVersion");
    api.kubectl_stdin(&["replace", "-f", "-"], Some(&bare.to_string()))
        .out();
    let svc = api.kubectl(&["get", "svc", "web", "-o", "json"]).json();
    assert_eq!(node_ports(&svc), both);
    assert_eq!(svc["spec"]["clusterIP"], ip.as_str());

    // Back to ClusterIP: the node ports go, and another Service may take one.
    api.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .out();
    let svc = api.kubectl(&["get", "svc", "web", "-o", "json"]).json();
    assert!(node_ports(&svc).is_empty(), "{svc}");
    assert!(svc["spec"].get("externalTrafficPolicy").is_none(), "{svc}");
    assert!(claimed(&s).is_empty(), "{:?}", claimed(&s));
    api.kubectl_stdin(&["create", "-f", "-"], Some(&other_asking_for(first[0])))
        .out();
    let other = api.kubectl(&["get", "svc", "other", "-o", "json"]).json();
    assert_eq!(node_ports(&other), [first[0]]);
}

/// The addresses of the `kubernetes` Endpoints and of its EndpointSlice, as kubectl
/// shows them (None until both exist).
fn kubernetes_endpoints(api: &Apiserver) -> Option<(Vec<String>, Vec<String>)> {
    let ep = api.kubectl(&["get", "endpoints", "kubernetes", "-o", "json"]);
    let slice = api.kubectl(&["get", "endpointslice", "kubernetes", "-o", "json"]);
    if !ep.ok || !slice.ok {
        return None;
    }
    let (ep, slice) = (ep.json(), slice.json());
    let ips = |v: &Value, ptr: &str, field: &str| -> Vec<String> {
        v.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| match &a[field] {
                Value::String(s) => Some(s.clone()),
                Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
                _ => None,
            })
            .collect()
    };
    Some((
        ips(&ep, "/subsets/0/addresses", "ip"),
        ips(&slice, "/endpoints", "addresses"),
    ))
}

/// Waits until the `kubernetes` Endpoints and EndpointSlice both list exactly `ips`.
async fn endpoints_become(api: &Apiserver, what: &str, ips: &[String], within: Duration) {
    eventually(what, within, || {
        let got = kubernetes_endpoints(api);
        let want = Some((ips.to_vec(), ips.to_vec()));
        async move { (got == want).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_service_lists_every_live_apiserver() {
    let s = Stack::start().await;
    // A second apiserver of the same store on another address and the same port, as
    // a second server would run.
    let port: u16 = s
        .api
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the first apiserver's port");
    let svc = eventually("the kubernetes service", Duration::from_secs(30), || {
        let out = s.api.kubectl(&["get", "svc", "kubernetes", "-o", "json"]);
        async move { out.ok.then(|| out.json()) }
    })
    .await;
    assert_eq!(svc["metadata"]["namespace"], "default");
    assert_eq!(
        svc["metadata"]["labels"],
        json!({"component": "apiserver", "provider": "kubernetes"})
    );
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}])
    );
    assert!(svc["spec"].get("selector").is_none(), "{svc}");
    let one = vec!["127.0.0.1".to_string()];
    endpoints_become(
        &s.api,
        "the endpoints of one apiserver",
        &one,
        Duration::from_secs(30),
    )
    .await;
    let ep = s
        .api
        .kubectl(&["get", "endpoints", "kubernetes", "-o", "json"])
        .json();
    assert_eq!(
        ep["subsets"][0]["ports"],
        json!([{"name": "https", "port": port, "protocol": "TCP"}])
    );
    assert_eq!(
        ep["metadata"]["labels"],
        json!({"endpointslice.kubernetes.io/skip-mirror": "true"})
    );
    let slice = s
        .api
        .kubectl(&["get", "endpointslice", "kubernetes", "-o", "json"])
        .json();
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"],
        json!({"kubernetes.io/service-name": "kubernetes"})
    );
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    // What `kubectl get` prints.
    let row = s
        .api
        .kubectl(&["get", "svc", "kubernetes", "--no-headers"])
        .out()
        .to_string();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"],
        "{row}"
    );

    // Three apiservers: all listed.
    let mut second = Apiserver::start_at(&s.store.endpoint, "127.0.0.2", port).await;
    let mut third = Apiserver::start_at(&s.store.endpoint, "127.0.0.3", port).await;
    let three: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}")).collect();
    endpoints_become(
        &s.api,
        "the endpoints of three apiservers",
        &three,
        Duration::from_secs(30),
    )
    .await;
    // One stops cleanly: its key is gone by the time it has exited (not 15 s later,
    // as after a crash), and the endpoints drop it.
    let key = "/registry/masterleases/127.0.0.3";
    let lease = s.store.etcdctl(&["get", key, "--keys-only"]);
    assert_eq!(lease.out().trim(), key, "the live apiserver's key");
    third.terminate();
    let lease = s.store.etcdctl(&["get", key, "--keys-only"]);
    assert_eq!(lease.out().trim(), "", "the stopped apiserver's key");
    assert!(
        third
            .log()
            .contains("removed this apiserver from the kubernetes service's endpoints"),
        "{}",
        third.log()
    );
    let both = vec!["127.0.0.1".to_string(), "127.0.0.2".to_string()];
    endpoints_become(
        &s.api,
        "the endpoints of the two apiservers left",
        &both,
        Duration::from_secs(30),
    )
    .await;
    // One dies: its lease runs out (15 s) and the survivor drops it.
    second.kill9();
    endpoints_become(
        &s.api,
        "the dead apiserver dropped",
        &one,
        Duration::from_secs(60),
    )
    .await;

    // Deleted, it comes back.
    s.api.kubectl(&["delete", "svc", "kubernetes"]).out();
    eventually(
        "the kubernetes service back",
        Duration::from_secs(30),
        || {
            let out = s.api.kubectl(&[
                "get",
                "svc",
                "kubernetes",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ]);
            async move { (out.ok && out.stdout == "10.96.0.1").then_some(()) }
        },
    )
    .await;
}
