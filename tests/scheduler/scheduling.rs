//! The core loop: binding, resource accounting without overcommit, FailedScheduling
//! and the PodScheduled condition, retries when a node appears or a pod goes, spreading
//! a workload's replicas, and pods of other schedulers left alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::{node, pod, support, Stack};

#[tokio::test]
async fn binds_without_overcommit_and_retries_when_a_node_appears() {
    let mut s = Stack::start().await;
    s.apply(&node("n1", "2", "4Gi").json());
    s.apply(&node("n2", "2", "4Gi").json());
    let mut other = pod("elsewhere", "100m");
    other["spec"]["schedulerName"] = json!("other-scheduler");
    s.apply(&other);
    for i in 0..4 {
        s.apply(&pod(&format!("p{i}"), "1"));
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..4 {
        *per_node.entry(s.bound(&format!("p{i}")).await).or_default() += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("n1".to_string(), 2), ("n2".to_string(), 2)]),
        "two 1-cpu pods on each 2-cpu node"
    );
    // A fifth fits nowhere: upstream's message, event and condition.
    s.apply(&pod("p4", "1"));
    let msg = s.failed_scheduling("p4").await;
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.."
    );
    let cond = support::eventually("the PodScheduled condition", Duration::from_secs(10), || async {
        let out = s.api.kubectl(&[
            "get",
            "pod",
            "p4",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}/{.status.conditions[?(@.type=="PodScheduled")].reason}/{.status.conditions[?(@.type=="PodScheduled")].message}"#,
        ]);
        Some(out.out().to_string()).filter(|c| !c.is_empty())
    })
    .await;
    assert_eq!(cond, format!("False/Unschedulable/{msg}"));
    let describe = s.api.kubectl(&["describe", "pod", "p4"]);
    let describe = describe.out();
    assert!(
        event_line(
            describe,
            &["Warning", "FailedScheduling", "default-scheduler", &msg]
        ),
        "kubectl describe shows the event:\n{describe}"
    );
    assert_eq!(s.node_of("p4"), "");
    // A node with room appears: the pending pod is bound to it.
    s.apply(&node("n3", "2", "4Gi").json());
    assert_eq!(s.bound("p4").await, "n3");
    let describe = s.api.kubectl(&["describe", "pod", "p0"]);
    let to = s.node_of("p0");
    assert!(
        event_line(
            describe.out(),
            &[
                "Normal",
                "Scheduled",
                "default-scheduler",
                &format!("Successfully assigned default/p0 to {to}")
            ]
        ),
        "{}",
        describe.out()
    );
    // The other scheduler's pod was never touched.
    assert_eq!(s.node_of("elsewhere"), "");
    let ev = s.api.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=elsewhere",
        "-o",
        "name",
    ]);
    assert_eq!(ev.out().trim(), "");
}

#[tokio::test]
async fn a_deleted_pod_makes_room() {
    let mut s = Stack::start().await;
    s.apply(&node("n1", "1", "1Gi").json());
    s.apply(&pod("first", "800m"));
    assert_eq!(s.bound("first").await, "n1");
    s.apply(&pod("second", "800m"));
    let msg = s.failed_scheduling("second").await;
    assert!(
        msg.starts_with("0/1 nodes are available: 1 Insufficient cpu."),
        "{msg}"
    );
    s.api
        .kubectl(&["delete", "pod", "first", "--grace-period=0", "--force"])
        .out();
    assert_eq!(s.bound("second").await, "n1");
}

#[tokio::test]
async fn spreads_a_workloads_replicas() {
    let mut s = Stack::start().await;
    for n in ["n1", "n2", "n3"] {
        s.apply(&node(n, "8", "16Gi").json());
    }
    // Replicas of one workload: same controller owner (no controller-manager here, so
    // the owner is a ReplicaSet that does not exist; the scheduler only reads the uid).
    for i in 0..6 {
        let mut p = pod(&format!("web-{i}"), "10m");
        p["metadata"]["labels"] = json!({"app": "web"});
        p["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
            "uid": "6a1f3a52-0000-4000-8000-000000000001", "controller": true,
        }]);
        s.apply(&p);
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(s.bound(&format!("web-{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );
}

#[tokio::test]
async fn waits_for_a_first_node() {
    let mut s = Stack::start().await;
    s.apply(&pod("early", "1"));
    let msg = s.failed_scheduling("early").await;
    assert_eq!(msg, "no nodes available to schedule pods");
    s.apply(&node("n1", "1", "4Gi").json());
    assert_eq!(s.bound("early").await, "n1");
}

/// Whether a line of `kubectl describe`'s Events table has these columns (type, reason,
/// from, message), whatever the column widths.
fn event_line(describe: &str, cols: &[&str]) -> bool {
    let [ty, reason, from, message] = cols else {
        return false;
    };
    describe.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(ty)
            && w.next() == Some(reason)
            && l.contains(&format!("{from}  {message}"))
    })
}

/// Many pods created at once through kube-rs onto little room: the scheduler decides
/// faster than its watch shows its own bindings, and must still never put more on a
/// node than it holds.
#[tokio::test]
async fn a_burst_never_overcommits() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, PostParams};

    let mut s = Stack::start().await;
    for n in ["n1", "n2", "n3"] {
        s.apply(&node(n, "2", "8Gi").json());
    }
    let kc = kube::config::Kubeconfig::read_from(&s.api.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("client config");
    let client = kube::Client::try_from(cfg).expect("client");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let creates = (0..30).map(|i| {
        let pods = pods.clone();
        async move {
            let p: Pod =
                serde_json::from_value(pod(&format!("burst-{i}"), "500m")).expect("a valid pod");
            pods.create(&PostParams::default(), &p).await
        }
    });
    for r in futures::stream::iter(creates)
        .buffer_unordered(30)
        .collect::<Vec<_>>()
        .await
    {
        r.expect("create");
    }
    // 4 fit per node; wait for 12 bound and 18 told why not.
    let (bound, pending) = s
        .poll("12 pods bound and 18 reported unschedulable", Duration::from_secs(30), |s| {
            let out = s.api.kubectl(&[
                "get",
                "pods",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name},{.spec.nodeName},{.status.conditions[?(@.type=="PodScheduled")].reason}{"\n"}{end}"#,
            ]);
            let mut bound: BTreeMap<String, usize> = BTreeMap::new();
            let mut pending = 0;
            for l in out.out().lines() {
                match l.split(',').collect::<Vec<_>>()[..] {
                    [_, "", "Unschedulable"] => pending += 1,
                    [_, node, _] if !node.is_empty() => {
                        *bound.entry(node.to_string()).or_default() += 1
                    }
                    _ => {}
                }
            }
            let total: usize = bound.values().sum();
            (total >= 12 && pending >= 18).then_some((bound, pending))
        })
        .await;
    assert_eq!(
        bound,
        BTreeMap::from([("n1".into(), 4), ("n2".into(), 4), ("n3".into(), 4)])
    );
    assert_eq!(pending, 18);
    // And the apiserver agrees: no node's pods ask for more than its 2 cpu.
    let list = pods.list(&ListParams::default()).await.expect("list");
    let on_nodes = list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count();
    assert_eq!(on_nodes, 12);
}

/// A restarted scheduler rebuilds its view from the apiserver: pods bound before the
/// restart still count against their node.
#[tokio::test]
async fn a_restarted_scheduler_counts_what_is_bound() {
    let mut s = Stack::start_with(1, &["--leader-elect=false"]).await;
    s.apply(&node("n1", "2", "4Gi").json());
    s.apply(&pod("before", "1"));
    assert_eq!(s.bound("before").await, "n1");
    s.sched[0].restart();
    s.apply(&pod("after", "1"));
    assert_eq!(s.bound("after").await, "n1");
    s.apply(&pod("too-many", "1"));
    assert_eq!(
        s.failed_scheduling("too-many").await,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.."
    );
}

/// `curl -k` of the scheduler's own HTTPS endpoint.
fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "10", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn serves_health_and_metrics() {
    let mut s = Stack::start().await;
    s.apply(&node("n1", "2", "4Gi").json());
    s.apply(&pod("one", "1"));
    s.bound("one").await;
    s.apply(&pod("too-big", "4"));
    s.failed_scheduling("too-big").await;
    let url = s.sched[0].url.clone();
    assert_eq!(curl(&format!("{url}/healthz")), "ok");
    let metrics = s
        .poll("the attempts in /metrics", Duration::from_secs(10), |_| {
            let m = curl(&format!("{url}/metrics"));
            m.contains(r#"scheduler_schedule_attempts_total{profile="default-scheduler",result="scheduled"} 1"#)
                .then_some(m)
        })
        .await;
    assert!(
        metrics.contains(r#"scheduler_schedule_attempts_total{profile="default-scheduler",result="unschedulable"}"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("process_resident_memory_bytes ")),
        "{metrics}"
    );
}
