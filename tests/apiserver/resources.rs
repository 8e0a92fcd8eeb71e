//! Every served kind through kubectl: creation with upstream's defaults and
//! allocations, tables, field selectors, the binding and status subresources, graceful
//! deletion with finalizers, namespace termination.

use serde_json::{json, Value};

use crate::Stack;

const SHOP: &str = include_str!("shop.yaml");

fn json_of(s: &Stack, args: &[&str]) -> Value {
    s.api.kubectl(args).json()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_with_defaults_allocations_and_tables() {
    let s = Stack::start().await;
    let api = &s.api;
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(SHOP));
    let lines: Vec<&str> = out.out().lines().collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines.iter().all(|l| l.ends_with(" created")), "{lines:?}");

    // Services get a cluster IP from 10.96.0.0/12, NodePorts a port from 30000-32767.
    let web = json_of(&s, &["get", "svc", "web", "-n", "shop", "-o", "json"]);
    let ip = web["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    let octets: Vec<u8> = ip.split('.').filter_map(|o| o.parse().ok()).collect();
    assert!(
        octets.len() == 4 && octets[0] == 10 && (96..112).contains(&octets[1]),
        "{ip}"
    );
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(web["spec"]["sessionAffinity"], "None");
    let np = json_of(&s, &["get", "svc", "web-np", "-n", "shop", "-o", "json"]);
    let port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&port), "{port}");
    assert_ne!(np["spec"]["clusterIP"], web["spec"]["clusterIP"]);
    assert_eq!(np["spec"]["ports"][0]["targetPort"], 80);

    // Secrets: stringData becomes base64 data.
    let secret = json_of(&s, &["get", "secret", "creds", "-n", "shop", "-o", "json"]);
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    assert_eq!(secret["type"], "Opaque");
    assert!(secret.get("stringData").is_none());

    // Jobs: a generated selector and template labels, upstream's defaults.
    let job = json_of(&s, &["get", "job", "once", "-n", "shop", "-o", "json"]);
    let uid = job["metadata"]["uid"].clone();
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["job-name"],
        "once"
    );
    assert_eq!(job["spec"]["backoffLimit"], 6);
    assert_eq!(job["spec"]["completions"], 1);

    // Pods: defaults and status.
    let pod = json_of(&s, &["get", "pod", "web-0", "-n", "shop", "-o", "json"]);
    assert_eq!(pod["spec"]["restartPolicy"], "Always");
    assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(pod["status"]["phase"], "Pending");

    // kubectl's tables, with upstream's columns.
    let header = |args: &[&str]| api.table_header(args);
    assert_eq!(
        header(&["get", "pods", "-n", "shop"]),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert_eq!(
        header(&["get", "svc", "-n", "shop"]),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(
        header(&["get", "nodes"]),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    );
    assert_eq!(
        header(&["get", "secrets", "-n", "shop"]),
        ["NAME", "TYPE", "DATA", "AGE"]
    );
    assert_eq!(
        header(&["get", "jobs", "-n", "shop"]),
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    );
    let svc_row = api.kubectl(&["get", "svc", "web-np", "-n", "shop", "--no-headers"]);
    assert!(
        svc_row.out().contains(&format!("80:{port}/TCP")),
        "{}",
        svc_row.stdout
    );
    let node_row = api.kubectl(&["get", "node", "node-a", "--no-headers"]);
    assert!(
        node_row.out().split_whitespace().nth(2) == Some("worker"),
        "{}",
        node_row.stdout
    );
    // `get all` reaches every kind in the "all" category.
    let all = api.kubectl(&["get", "all", "-n", "shop", "-o", "name"]);
    let mut names: Vec<&str> = all.out().lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "job.batch/once",
            "pod/web-0",
            "service/web",
            "service/web-np"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_status_field_selectors_and_graceful_deletion() {
    let s = Stack::start().await;
    let api = &s.api;
    api.kubectl_stdin(&["apply", "-f", "-"], Some(SHOP)).out();
    let unscheduled = api.kubectl(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=",
        "-o",
        "name",
    ]);
    assert_eq!(unscheduled.out().trim(), "pod/web-0");

    // Bind the pod as a scheduler does; binding twice is a conflict.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web-0"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"}})
    .to_string();
    let path = "/api/v1/namespaces/shop/pods/web-0/binding";
    api.kubectl_stdin(&["create", "--raw", path, "-f", "-"], Some(&binding))
        .out();
    let again = api.kubectl_stdin(&["create", "--raw", path, "-f", "-"], Some(&binding));
    assert!(
        again
            .err()
            .contains("is already assigned to node \"node-a\""),
        "{}",
        again.stderr
    );
    let on_node = api.kubectl(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=node-a",
        "-o",
        "name",
    ]);
    assert_eq!(on_node.out().trim(), "pod/web-0");

    // Status changes only through the status subresource.
    api.kubectl(&[
        "patch",
        "pod",
        "web-0",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ])
    .out();
    api.kubectl(&[
        "patch",
        "pod",
        "web-0",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed"}}"#,
    ])
    .out();
    let phase = api.kubectl(&[
        "get",
        "pod",
        "web-0",
        "-n",
        "shop",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase.out(), "Running");
    let running = api.kubectl(&[
        "get",
        "pods",
        "-n",
        "shop",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "name",
    ]);
    assert_eq!(running.out().trim(), "pod/web-0");
    let bad = api.kubectl(&[
        "get",
        "pods",
        "-n",
        "shop",
        "--field-selector",
        "spec.bogus=x",
    ]);
    assert!(
        bad.err().contains("field label not supported: spec.bogus"),
        "{}",
        bad.stderr
    );

    // A bound pod is deleted gracefully: it stays, Terminating, until forced.
    api.kubectl(&["delete", "pod", "web-0", "-n", "shop", "--wait=false"])
        .out();
    let pod = json_of(&s, &["get", "pod", "web-0", "-n", "shop", "-o", "json"]);
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    let row = api.kubectl(&["get", "pod", "web-0", "-n", "shop", "--no-headers"]);
    assert!(row.out().contains("Terminating"), "{}", row.stdout);
    api.kubectl(&[
        "delete",
        "pod",
        "web-0",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ])
    .out();
    assert!(api
        .kubectl(&["get", "pod", "web-0", "-n", "shop"])
        .err()
        .contains("NotFound"));

    // Finalizers hold an object until they are removed.
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: shop\n  finalizers: [example.com/hold]\n";
    api.kubectl_stdin(&["apply", "-f", "-"], Some(held)).out();
    api.kubectl(&["delete", "cm", "held", "-n", "shop", "--wait=false"])
        .out();
    let cm = json_of(&s, &["get", "cm", "held", "-n", "shop", "-o", "json"]);
    assert!(cm["metadata"]["deletionTimestamp"].is_string());
    api.kubectl(&[
        "patch",
        "cm",
        "held",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .out();
    assert!(api
        .kubectl(&["get", "cm", "held", "-n", "shop"])
        .err()
        .contains("NotFound"));

    // A deleted namespace is Terminating and takes no new objects.
    api.kubectl(&["delete", "namespace", "shop", "--wait=false"])
        .out();
    let phase = api.kubectl(&["get", "ns", "shop", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase.out(), "Terminating");
    let late = api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: late\n  namespace: shop\n"),
    );
    assert!(
        late.err().contains(
            "unable to create new content in namespace shop because it is being terminated"
        ),
        "{}",
        late.stderr
    );
}
