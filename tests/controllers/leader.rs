//! Leader election: two controller-managers, exactly one acts; killing it hands over
//! to the standby within a few seconds.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::support::{eventually, Component};
use crate::{pods, Stack, QUICK_ELECTION, SETTLE};

fn rs_yaml(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: nginx:1.27}}]
"
    )
}

/// Whether a controller-manager's log says it acquired the lease.
fn leads(c: &Component) -> bool {
    c.log().contains("successfully acquired lease")
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() {
    let mut stack = Stack::start().await;
    let mut standby = Component::start(&stack.api, "controller-manager", QUICK_ELECTION);
    let ns = "le";
    stack.namespace(ns);
    let client = stack.client().await;
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-system");

    // One of the two holds the lease and acts.
    let holder = eventually("a lease holder", SETTLE, || async {
        leases
            .get_opt("kube-controller-manager")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    stack.apply(&rs_yaml(ns, "a"));
    eventually("the leader to create pods", SETTLE, || async {
        (pods(&client, ns, "app=a").await.len() == 2).then_some(())
    })
    .await;
    let first_leads = leads(&stack.cm);
    assert_ne!(
        first_leads,
        leads(&standby),
        "exactly one acquired the lease"
    );

    // Kill the leader; the other takes the lease and acts.
    let killed_at = Instant::now();
    if first_leads {
        stack.cm.kill9();
    } else {
        standby.kill9();
    }
    let (survivor, name) = if first_leads {
        (&mut standby, "standby")
    } else {
        (&mut stack.cm, "first")
    };
    let new_holder = eventually("another lease holder", SETTLE, || async {
        let h = leases
            .get_opt("kube-controller-manager")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        (h != holder).then_some(h)
    })
    .await;
    let handover = killed_at.elapsed();
    survivor.check_running();
    assert!(
        leads(survivor),
        "the {name} controller-manager took the lease ({new_holder})"
    );
    // Lease 3 s, retry 250 ms: a few seconds, with room for a busy machine.
    assert!(
        handover < Duration::from_secs(10),
        "handover took {handover:?}"
    );
    stack.apply(&rs_yaml(ns, "b"));
    eventually("the new leader to create pods", SETTLE, || async {
        (pods(&client, ns, "app=b").await.len() == 2).then_some(())
    })
    .await;
}
