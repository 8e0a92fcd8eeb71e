//! Integration tests of `capstan node --simulated`: a real store (capstan, or the
//! reference etcd with `CAPSTAN_TEST_SERVER=etcd`), a real apiserver and the node agent
//! process, observed through the real `kubectl` as a user would.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use support::{eventually, Apiserver, Component, Server};

struct Stack {
    api: Apiserver,
    _store: Server,
}

async fn stack() -> Stack {
    let store = Server::start().await;
    let api = Apiserver::start(&store.endpoint).await;
    Stack { api, _store: store }
}

/// `kubectl get <args> -o jsonpath=<path>`, or None when kubectl fails.
fn jsonpath(api: &Apiserver, args: &[&str], path: &str) -> Option<String> {
    let jp = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &jp]);
    let out = api.kubectl(&all);
    out.ok.then(|| out.out().to_string())
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_simulated_node_registers_heartbeats_and_runs_its_pods() {
    let s = stack().await;
    let api = &s.api;
    let mut node = Component::start(
        api,
        "node",
        &[
            "--simulated",
            "--hostname-override",
            "sim-a",
            "--node-labels",
            "topology.kubernetes.io/zone=z1",
            "--simulated-cpu",
            "8",
            // Renewed every second, so the test sees renewals quickly.
            "--node-lease-duration-seconds",
            "4",
        ],
    );

    // The node shows up Ready, with the kubelet's columns and facts.
    let row = eventually("node sim-a Ready", WAIT, || {
        node.check_running();
        let out = api.kubectl(&["get", "nodes", "--no-headers"]);
        let row = out
            .out()
            .lines()
            .find(|l| l.starts_with("sim-a ") && l.contains(" Ready "))
            .map(str::to_string);
        async move { row }
    })
    .await;
    assert!(row.ends_with("v1.32.0"), "version column: {row}");
    assert_eq!(
        jsonpath(api, &["get", "node", "sim-a"], "{.status.allocatable.cpu}").as_deref(),
        Some("8")
    );
    assert_eq!(
        jsonpath(
            api,
            &["get", "node", "sim-a"],
            "{.metadata.labels.topology\\.kubernetes\\.io/zone}"
        )
        .as_deref(),
        Some("z1")
    );
    let uid = jsonpath(api, &["get", "node", "sim-a"], "{.metadata.uid}").expect("node uid");

    // Its Lease is held by the node and renewed.
    let lease = ["get", "lease", "sim-a", "-n", "kube-node-lease"];
    let first = eventually("node lease", WAIT, || async {
        jsonpath(api, &lease, "{.spec.renewTime}").filter(|t| !t.is_empty())
    })
    .await;
    assert_eq!(
        jsonpath(api, &lease, "{.spec.holderIdentity}").as_deref(),
        Some("sim-a")
    );
    eventually("lease renewed", WAIT, || async {
        jsonpath(api, &lease, "{.spec.renewTime}").filter(|t| *t != first)
    })
    .await;

    // A pod bound to it becomes Running and Ready, with an IP from the node's pod CIDR.
    let pod = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: sim-a
  initContainers:
  - {name: setup, image: busybox:1.36, resources: {limits: {cpu: 50m, memory: 8Mi}}}
  containers:
  - name: app
    image: nginx:1.27
    resources: {limits: {cpu: 100m, memory: 64Mi}}
";
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(pod));
    assert!(out.ok, "{}", out.err());
    let wait = api.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]);
    assert!(wait.ok, "{}\n{}", wait.err(), node.log());
    let row = api.kubectl(&["get", "pod", "web", "--no-headers"]);
    let cols: Vec<&str> = row.out().split_whitespace().collect();
    assert_eq!(
        cols.get(1..3),
        Some(&["1/1", "Running"][..]),
        "{}",
        row.out()
    );
    let ip = jsonpath(api, &["get", "pod", "web"], "{.status.podIP}").unwrap_or_default();
    assert!(ip.starts_with("10.244.0."), "pod IP {ip}");
    assert_eq!(
        jsonpath(api, &["get", "pod", "web"], "{.status.qosClass}").as_deref(),
        Some("Guaranteed")
    );
    assert_eq!(
        jsonpath(
            api,
            &["get", "pod", "web"],
            "{.status.initContainerStatuses[0].state.terminated.reason}"
        )
        .as_deref(),
        Some("Completed")
    );

    // A pod that exits with an error ends Failed, as `kubectl get` shows it.
    let failing = "apiVersion: v1
kind: Pod
metadata:
  name: oops
  annotations: {sim.capstan.io/exit-code: \"3\", sim.capstan.io/run-seconds: \"0.2\"}
spec:
  nodeName: sim-a
  restartPolicy: Never
  containers: [{name: app, image: busybox:1.36}]
";
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(failing));
    assert!(out.ok, "{}", out.err());
    let status = eventually("pod oops Failed", WAIT, || async {
        let row = api.kubectl(&["get", "pod", "oops", "--no-headers"]);
        let status = row.out().split_whitespace().nth(2)?.to_string();
        (status == "Error").then_some(status)
    })
    .await;
    assert_eq!(status, "Error");
    assert_eq!(
        jsonpath(
            api,
            &["get", "pod", "oops"],
            "{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode}"
        )
        .as_deref(),
        Some("Failed 3")
    );

    // kubectl delete waits for the pod to be gone; the node finishes the deletion.
    let del = api.kubectl(&["delete", "pod", "web", "--timeout=30s"]);
    assert!(del.ok, "{}\n{}", del.err(), node.log());
    let gone = api.kubectl(&["get", "pod", "web"]);
    assert!(
        gone.err().contains("pods \"web\" not found"),
        "{}",
        gone.err()
    );

    // A restarted agent takes its node back (same uid) and renews the lease again.
    node.restart();
    let before = jsonpath(api, &lease, "{.spec.renewTime}").unwrap_or_default();
    eventually("lease renewed after restart", WAIT, || {
        node.check_running();
        let t = jsonpath(api, &lease, "{.spec.renewTime}").filter(|t| *t != before);
        async move { t }
    })
    .await;
    assert_eq!(
        jsonpath(api, &["get", "node", "sim-a"], "{.metadata.uid}"),
        Some(uid)
    );
}

#[tokio::test]
async fn one_process_runs_many_simulated_nodes() {
    let s = stack().await;
    let api = &s.api;
    let mut node = Component::start(
        api,
        "node",
        &[
            "--simulated",
            "--hostname-override",
            "sim",
            "--simulated-nodes",
            "20",
            "--register-with-taints",
            "dedicated=sim:NoSchedule",
        ],
    );
    eventually("20 Ready nodes", WAIT, || {
        node.check_running();
        let out = api.kubectl(&["get", "nodes", "--no-headers"]);
        let ready = out.out().lines().filter(|l| l.contains(" Ready ")).count();
        async move { (ready == 20).then_some(()) }
    })
    .await;
    assert_eq!(
        jsonpath(
            api,
            &["get", "node", "sim-7"],
            "{.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}"
        )
        .as_deref(),
        Some("dedicated=sim:NoSchedule")
    );
    // Pods on different nodes get addresses from their own node's CIDR.
    for n in [3, 12] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}}}\nspec:\n  nodeName: sim-{n}\n  containers: [{{name: app, image: nginx:1.27}}]\n"
        );
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&pod));
        assert!(out.ok, "{}", out.err());
    }
    for n in [3, 12] {
        let name = format!("pod/p{n}");
        let wait = api.kubectl(&["wait", "--for=condition=Ready", &name, "--timeout=30s"]);
        assert!(wait.ok, "{}\n{}", wait.err(), node.log());
        let ip = jsonpath(api, &["get", &name], "{.status.podIP}").unwrap_or_default();
        assert!(ip.starts_with(&format!("10.244.{n}.")), "{name} IP {ip}");
    }
}
