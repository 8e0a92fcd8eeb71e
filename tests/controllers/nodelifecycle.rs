//! The node lifecycle controller with the scheduler: a node whose agent dies becomes
//! NotReady and tainted, and its pods are evicted and come back on a healthy node; an
//! admin's NoExecute taint evicts by the pods' tolerations too.

use crate::support::{eventually, Component};
use crate::{Stack, SETTLE};

/// A controller-manager running only the node lifecycle controller, which watches
/// nodes closely (a 3 s grace period, checked every 500 ms) to keep the tests short.
fn watchful_node_lifecycle(api: &crate::support::Apiserver) -> Component {
    Component::start(
        api,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--controllers",
            "nodelifecycle",
            "--node-monitor-period",
            "500ms",
            "--node-monitor-grace-period",
            "3s",
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_nodes_pods_are_rescheduled_elsewhere() {
    let stack = Stack::start().await;
    let api = &stack.api;
    // A second controller-manager would only stand by; this one watches nodes closely.
    let mut cm = watchful_node_lifecycle(api);
    let mut sched = Component::start(
        api,
        "scheduler",
        &["--leader-elect=false", "--secure-port", "0"],
    );
    // Leases renewed every second.
    // (The stack's own node, sim-0, is kept out by the pool label.)
    let quick = [
        "--simulated",
        "--node-lease-duration-seconds",
        "4",
        "--node-labels",
        "pool=lc",
    ];
    let mut doomed = Component::start(
        api,
        "node",
        &[&quick[..], &["--hostname-override", "doomed"]].concat(),
    );
    let mut healthy = Component::start(
        api,
        "node",
        &[&quick[..], &["--hostname-override", "healthy"]].concat(),
    );
    stack.namespace("lc");
    // Spread over both nodes (softly: a hard constraint would, as upstream, keep the
    // replacements off the healthy node while the dead one counts as a domain);
    // tolerating an unreachable node for one second only (the
    // default, added by the apiserver, is 300 s).
    stack.apply(
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: lc}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {pool: lc}
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
      containers: [{name: c, image: nginx:1.27}]
",
    );
    let rollout = api.kubectl(&[
        "rollout",
        "status",
        "-n",
        "lc",
        "deployment/web",
        "--timeout=60s",
    ]);
    assert!(rollout.ok, "{}\n{}", rollout.stderr, sched.log());
    let on_doomed = |api: &crate::support::Apiserver| {
        api.kubectl(&[
            "get",
            "pods",
            "-n",
            "lc",
            "--field-selector",
            "spec.nodeName=doomed",
            "--no-headers",
        ])
        .out()
        .lines()
        .count()
    };
    assert!(on_doomed(api) >= 1, "replicas on both nodes");

    doomed.kill9();
    // The node turns NotReady (its kubelet conditions Unknown) and gets the taints.
    eventually("node doomed NotReady", SETTLE, || {
        cm.check_running();
        let row = api.kubectl(&["get", "node", "doomed", "--no-headers"]);
        let not_ready = row.out().split_whitespace().nth(1) == Some("NotReady");
        async move { not_ready.then_some(()) }
    })
    .await;
    let reason = api.kubectl(&[
        "get", "node", "doomed", "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].message}",
    ]);
    assert_eq!(reason.out(), "Unknown Kubelet stopped posting node status.");
    eventually("the unreachable taints", SETTLE, || {
        let taints = api.kubectl(&[
            "get",
            "node",
            "doomed",
            "-o",
            "jsonpath={.spec.taints[*].effect}",
        ]);
        let ok = taints.out().contains("NoSchedule") && taints.out().contains("NoExecute");
        async move { ok.then_some(()) }
    })
    .await;

    // Its pods are evicted and replaced on the healthy node: four Ready replicas again,
    // all of them there.
    eventually("four replicas on the healthy node", SETTLE, || {
        sched.check_running();
        healthy.check_running();
        let out = api.kubectl(&[
            "get",
            "pods",
            "-n",
            "lc",
            "-l",
            "app=web",
            "--field-selector",
            "spec.nodeName=healthy",
            "-o",
            "jsonpath={range .items[*]}{.metadata.deletionTimestamp}/{.status.phase}{\"\\n\"}{end}",
        ]);
        let running = out.out().lines().filter(|l| *l == "/Running").count();
        async move { (running == 4).then_some(()) }
    })
    .await;
    // The Deployment's status follows the pods a moment later.
    eventually("deployment web with 4 available replicas", SETTLE, || {
        let available = api.kubectl(&[
            "get",
            "deployment",
            "web",
            "-n",
            "lc",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ]);
        let ok = available.out() == "4";
        async move { ok.then_some(()) }
    })
    .await;
}

/// An admin's NoExecute taint (`kubectl taint`) evicts by the same rule as the
/// controller's own: at once the pods that do not tolerate it, after their
/// `tolerationSeconds` those that tolerate it for a while, never those that tolerate
/// it for good.
#[tokio::test(flavor = "multi_thread")]
async fn an_admins_no_execute_taint_evicts_by_the_pods_tolerations() {
    let mut stack = Stack::start().await;
    stack.namespace("tx");
    let pod = |name: &str, toleration: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: tx}}
spec:
  nodeName: sim-0
  tolerations: [{toleration}]
  containers: [{{name: c, image: nginx:1.27}}]
---
"
        )
    };
    stack.apply(
        &[
            pod("plain", ""),
            pod(
                "brief",
                "{key: dedicated, operator: Exists, effect: NoExecute, tolerationSeconds: 3}",
            ),
            pod(
                "forever",
                "{key: dedicated, operator: Exists, effect: NoExecute}",
            ),
        ]
        .concat(),
    );
    let api = &stack.api;
    let running = |names: &[&str]| {
        let out = api.kubectl(&[
            "get",
            "pods",
            "-n",
            "tx",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}/{.status.phase}{\"\\n\"}{end}",
        ]);
        let have: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_suffix(" /Running").map(str::to_string))
            .collect();
        have == names
    };
    eventually("three pods Running", SETTLE, || {
        let ok = running(&["brief", "forever", "plain"]);
        async move { ok.then_some(()) }
    })
    .await;
    let taint = api.kubectl(&["taint", "node", "sim-0", "dedicated=db:NoExecute"]);
    assert!(taint.ok, "{}", taint.stderr);
    let tainted = std::time::Instant::now();
    eventually("plain evicted", SETTLE, || {
        stack.cm.check_running();
        let ok = running(&["brief", "forever"]);
        async move { ok.then_some(()) }
    })
    .await;
    eventually("brief evicted", SETTLE, || {
        let ok = running(&["forever"]);
        async move { ok.then_some(()) }
    })
    .await;
    assert!(
        tainted.elapsed() >= std::time::Duration::from_secs(3),
        "brief went after {:?}, before its 3 s toleration ran out",
        tainted.elapsed()
    );
    // The pass that evicted brief looked at forever too, and left it.
    assert!(running(&["forever"]));
    eventually("the TaintManagerEviction events", SETTLE, || {
        let ev = api.kubectl(&[
            "get",
            "events",
            "-n",
            "tx",
            "--field-selector",
            "reason=TaintManagerEviction",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        let ok = ev.out().contains("Marking for deletion Pod tx/plain")
            && ev.out().contains("Marking for deletion Pod tx/brief");
        async move { ok.then_some(()) }
    })
    .await;
}

/// A pod on an unreachable node that tolerates it for good stays, and stays not Ready:
/// a Ready it claims later (a stale status write) is turned back, as upstream's
/// controller does for every pod change on such a node.
#[tokio::test(flavor = "multi_thread")]
async fn pods_on_an_unreachable_node_stay_not_ready() {
    let stack = Stack::start().await;
    let api = &stack.api;
    let mut cm = watchful_node_lifecycle(api);
    let mut lost = Component::start(
        api,
        "node",
        &[
            "--simulated",
            "--node-lease-duration-seconds",
            "4",
            "--hostname-override",
            "lost",
        ],
    );
    stack.namespace("nr");
    stack.apply(
        "apiVersion: v1
kind: Pod
metadata: {name: stays, namespace: nr}
spec:
  nodeName: lost
  tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}]
  containers: [{name: c, image: nginx:1.27}]
",
    );
    let ready = || {
        api.kubectl(&[
            "get",
            "pod",
            "stays",
            "-n",
            "nr",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ])
        .stdout
    };
    eventually("stays Ready", SETTLE, || {
        lost.check_running();
        let ok = ready() == "True";
        async move { ok.then_some(()) }
    })
    .await;
    lost.kill9();
    eventually("stays not Ready", SETTLE, || {
        cm.check_running();
        let ok = ready() == "False";
        async move { ok.then_some(()) }
    })
    .await;
    let conditions = api.kubectl(&["get", "pod", "stays", "-n", "nr", "-o", "json"]);
    let mut status = conditions.json()["status"].clone();
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        if c["type"] == "Ready" {
            c["status"] = "True".into();
        }
    }
    let patch = serde_json::json!({ "status": {"conditions": status["conditions"]} }).to_string();
    let claimed = api.kubectl(&[
        "patch",
        "pod",
        "stays",
        "-n",
        "nr",
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
    ]);
    assert_eq!(claimed.out(), "True", "the claim is stored");
    eventually("stays not Ready again", SETTLE, || {
        let ok = ready() == "False";
        async move { ok.then_some(()) }
    })
    .await;
    let phase = api.kubectl(&[
        "get",
        "pod",
        "stays",
        "-n",
        "nr",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert_eq!(
        phase.out(),
        "",
        "a pod tolerating the taint for good is not evicted"
    );
}
