//! Service updates through the real kubectl: a Service that becomes a NodePort gets
//! node ports, a new port gets one, an update that leaves them out keeps them, and a
//! Service that stops needing them gives them up for another Service to take.

use serde_json::{json, Value};

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
