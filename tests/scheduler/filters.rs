//! Filters as a user meets them: upstream's reasons in the FailedScheduling message,
//! and pods that schedule once the node changes (uncordon, taint removed).

use serde_json::json;

use crate::{node, pod, Stack};

#[tokio::test]
async fn unschedulable_taints_selector_and_not_ready() {
    let mut s = Stack::start().await;
    s.apply(
        &node("a", "4", "8Gi")
            .label("disk", "ssd")
            .unschedulable()
            .json(),
    );
    s.apply(
        &node("b", "4", "8Gi")
            .label("disk", "ssd")
            .taint("dedicated", "gpu", "NoSchedule")
            .json(),
    );
    s.apply(&node("c", "4", "8Gi").json());
    // A node the node lifecycle controller marked not ready.
    s.apply(
        &node("d", "4", "8Gi")
            .label("disk", "ssd")
            .taint("node.kubernetes.io/not-ready", "", "NoSchedule")
            .json(),
    );
    let mut p = pod("picky", "100m");
    p["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    s.apply(&p);
    let msg = s.failed_scheduling("picky").await;
    assert_eq!(
        msg,
        "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: gpu}, \
         1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
         1 node(s) were unschedulable. \
         preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.."
    );
    // A pod that tolerates the taint goes to b.
    let mut t = pod("tolerant", "100m");
    t["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    t["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    s.apply(&t);
    assert_eq!(s.bound("tolerant").await, "b");
    // Uncordoning a makes room for the picky one.
    s.api.kubectl(&["uncordon", "a"]).out();
    assert_eq!(s.bound("picky").await, "a");
}

#[tokio::test]
async fn node_affinity_and_host_ports() {
    let mut s = Stack::start().await;
    s.apply(
        &node("z1", "4", "8Gi")
            .label("topology.kubernetes.io/zone", "z1")
            .json(),
    );
    s.apply(
        &node("z2", "4", "8Gi")
            .label("topology.kubernetes.io/zone", "z2")
            .json(),
    );
    let mut a = pod("affine", "100m");
    a["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z2"]}]}
        ]},
    }});
    s.apply(&a);
    assert_eq!(s.bound("affine").await, "z2");
    // Preferred affinity steers without forcing.
    let mut pref = pod("prefers-z1", "100m");
    pref["spec"]["affinity"] = json!({"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference":
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}]}}],
    }});
    s.apply(&pref);
    assert_eq!(s.bound("prefers-z1").await, "z1");
    // Two pods per node ask for host port 8080: the third fits nowhere.
    for i in 0..3 {
        let mut p = pod(&format!("port-{i}"), "100m");
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        s.apply(&p);
    }
    let mut bound = Vec::new();
    let mut pending = Vec::new();
    for i in 0..3 {
        let name = format!("port-{i}");
        let msg = loop {
            let n = s.node_of(&name);
            if !n.is_empty() {
                bound.push(n);
                break None;
            }
            let ev = s.api.kubectl(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={name},reason=FailedScheduling"),
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            if !ev.out().is_empty() {
                break Some(ev.out().to_string());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        if let Some(m) = msg {
            pending.push(m);
        }
    }
    bound.sort();
    assert_eq!(bound, vec!["z1", "z2"]);
    assert_eq!(
        pending,
        vec!["0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports. \
              preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.."]
    );
}

#[tokio::test]
async fn pod_affinity_and_anti_affinity() {
    let mut s = Stack::start().await;
    for n in ["n1", "n2", "n3"] {
        s.apply(&node(n, "4", "8Gi").json());
    }
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}
    ]}});
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut p = pod(&format!("db-{i}"), "100m");
        p["metadata"]["labels"] = json!({"app": "db", "member": format!("m{i}")});
        p["spec"]["affinity"] = anti.clone();
        s.apply(&p);
        // One at a time, so the test also shows each sees the ones before it.
        nodes.push(s.bound(&format!("db-{i}")).await);
    }
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2", "n3"], "one db per node");
    let mut extra = pod("db-3", "100m");
    extra["metadata"]["labels"] = json!({"app": "db"});
    extra["spec"]["affinity"] = anti.clone();
    s.apply(&extra);
    assert_eq!(
        s.failed_scheduling("db-3").await,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.."
    );
    // A pod that must sit beside db member m1 lands on its node.
    let m1_node = s.node_of("db-1");
    let mut near = pod("near-m1", "100m");
    near["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"member": "m1"}}, "topologyKey": "kubernetes.io/hostname"}
    ]}});
    s.apply(&near);
    assert_eq!(s.bound("near-m1").await, m1_node);
    // One that needs a pod nobody runs cannot be placed.
    let mut lonely = pod("lonely", "100m");
    lonely["spec"]["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "nothing"}}, "topologyKey": "kubernetes.io/hostname"}
    ]}});
    s.apply(&lonely);
    assert_eq!(
        s.failed_scheduling("lonely").await,
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.."
    );
    // Deleting a db pod frees its node for the waiting one.
    let freed = s.node_of("db-0");
    s.api
        .kubectl(&["delete", "pod", "db-0", "--grace-period=0", "--force"])
        .out();
    assert_eq!(s.bound("db-3").await, freed);
}
