//! A node lost in the two-namespace setup of `multinode.rs`: its agent is SIGKILLed
//! (its containers keep running, but to the control plane the node is unreachable).
//! The node lifecycle controller marks it NotReady (Ready Unknown, NodeStatusUnknown)
//! with the unreachable taints and its pods not Ready; once their toleration of the
//! NoExecute taint runs out they are evicted, and the Deployment's replacements run
//! on the other node.

use std::time::Duration;

use k8s_openapi::chrono::{DateTime, Utc};

use crate::containerd::BUSYBOX;
use crate::multinode::start_nodes;
use crate::support::{eventually, Apiserver, Component, Server};

const WAIT: Duration = Duration::from_secs(90);

/// The Deployment's pods (not the deleted ones) on `node`, Running and Ready.
fn ready_on(api: &Apiserver, node: &str) -> Vec<String> {
    let out = api.kubectl(&[
        "get",
        "pods",
        "-n",
        "nl",
        "-l",
        "app=web",
        "--field-selector",
        &format!("spec.nodeName={node}"),
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}/{.status.phase}/{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
    ]);
    out.stdout
        .lines()
        .filter_map(|l| {
            let (name, state) = l.split_once(' ')?;
            (state == "/Running/True").then(|| name.to_string())
        })
        .collect()
}

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not a time: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_nodes_pods_are_evicted_and_run_on_the_other_node() {
    let store = Server::start().await;
    let api = Apiserver::start(&store.endpoint).await;
    // A node silent for 5 s is unreachable (the agents renew their Leases every second).
    let mut cm = Component::start(
        &api,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--node-monitor-period",
            "500ms",
            "--node-monitor-grace-period",
            "5s",
        ],
    );
    let mut sched = Component::start(
        &api,
        "scheduler",
        &["--leader-elect=false", "--secure-port", "0"],
    );
    let names = ["nl-a", "nl-b"];
    let mut nodes = start_nodes(&api, &names).await;
    api.kubectl(&["create", "namespace", "nl"]).out();
    // Spread softly (a hard constraint would, as upstream, keep the replacements off
    // the healthy node while the lost one still counts as a domain); the pods tolerate
    // an unreachable node for 2 s instead of the 300 s the apiserver adds by default.
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: nl}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: c
        image: {BUSYBOX}
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
"#
    );
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(applied.ok, "{}", applied.stderr);
    eventually("four replicas Ready, on both nodes", WAIT, || {
        cm.check_running();
        sched.check_running();
        for a in &mut nodes.agents {
            a.check_running();
        }
        let (a, b) = (ready_on(&api, "nl-a"), ready_on(&api, "nl-b"));
        let ok = a.len() + b.len() == 4 && !a.is_empty() && !b.is_empty();
        async move { ok.then_some(()) }
    })
    .await;
    let victims = ready_on(&api, "nl-a");

    nodes.agents[0].kill9();
    // NotReady: the kubelet's conditions Unknown, with upstream's reason and message.
    eventually("nl-a NotReady", WAIT, || {
        cm.check_running();
        let row = api.kubectl(&["get", "node", "nl-a", "--no-headers"]);
        let ok = row.out().split_whitespace().nth(1) == Some("NotReady");
        async move { ok.then_some(()) }
    })
    .await;
    let ready = api.kubectl(&[
        "get",
        "node",
        "nl-a",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}/{.status.conditions[?(@.type=="Ready")].message}"#,
    ]);
    assert_eq!(
        ready.out(),
        "Unknown/NodeStatusUnknown/Kubelet stopped posting node status."
    );
    // The taints, and when the NoExecute one came.
    let taints = eventually("the unreachable taints on nl-a", WAIT, || {
        let out = api.kubectl(&[
            "get",
            "node",
            "nl-a",
            "-o",
            r#"jsonpath={range .spec.taints[*]}{.key}:{.effect}:{.timeAdded}{"\n"}{end}"#,
        ]);
        let lines: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        let ok = lines
            .iter()
            .any(|l| l == "node.kubernetes.io/unreachable:NoSchedule:")
            && lines
                .iter()
                .any(|l| l.starts_with("node.kubernetes.io/unreachable:NoExecute:2"));
        async move { ok.then_some(lines) }
    })
    .await;
    let tainted_at = taints
        .iter()
        .find_map(|l| l.strip_prefix("node.kubernetes.io/unreachable:NoExecute:"))
        .map(time)
        .expect("NoExecute taint");
    // The node's event, as `kubectl describe node` shows it.
    eventually("the NodeNotReady event", WAIT, || {
        let ev = api.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nl-a,reason=NodeNotReady",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        let ok = ev.out().contains("Node nl-a status is now: NodeNotReady");
        async move { ok.then_some(()) }
    })
    .await;

    // The replacements run on the healthy node: four Ready replicas there, and the
    // Deployment counts four available.
    eventually("four replicas Ready on nl-b", WAIT, || {
        cm.check_running();
        sched.check_running();
        nodes.agents[1].check_running();
        let ok = ready_on(&api, "nl-b").len() == 4;
        async move { ok.then_some(()) }
    })
    .await;
    eventually("deployment web available again", WAIT, || {
        let out = api.kubectl(&[
            "get",
            "deployment",
            "web",
            "-n",
            "nl",
            "-o",
            "jsonpath={.status.availableReplicas}/{.status.replicas}",
        ]);
        let ok = out.out() == "4/4";
        async move { ok.then_some(()) }
    })
    .await;

    // The lost node's pods: not Ready, marked as disrupted by the taint, deleted (they
    // stay Terminating: no kubelet confirms their end), and not before their
    // toleration ran out.
    for pod in &victims {
        let out = api.kubectl(&[
            "get",
            "pod",
            pod,
            "-n",
            "nl",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="DisruptionTarget")].reason} {.metadata.deletionTimestamp}"#,
        ]);
        let f: Vec<&str> = out.out().split(' ').collect();
        assert_eq!(f.len(), 3, "{pod}: {}", out.out());
        assert_eq!(f[0], "False", "{pod} still Ready");
        assert_eq!(f[1], "DeletionByTaintManager", "{pod}");
        let deleted = time(f[2]);
        assert!(
            deleted >= tainted_at + k8s_openapi::chrono::Duration::seconds(2),
            "{pod} deleted at {deleted}, its 2 s toleration of the taint added at {tainted_at} not over"
        );
        let ev = api.kubectl(&[
            "get",
            "events",
            "-n",
            "nl",
            "--field-selector",
            &format!("involvedObject.name={pod}"),
            "-o",
            r#"jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}"#,
        ]);
        let ev = ev.out();
        assert!(
            ev.contains(&format!(
                "TaintManagerEviction: Marking for deletion Pod nl/{pod}"
            )),
            "{pod}: {ev}"
        );
        assert!(
            ev.contains("NodeNotReady: Node is not ready"),
            "{pod}: {ev}"
        );
    }
}
