//! Leader election: two schedulers, one lease; only the holder binds, and when it is
//! killed the other takes the lease and schedules within a few seconds.

use std::time::{Duration, Instant};

use crate::{node, pod, support, Stack};

fn holder(s: &Stack) -> String {
    s.api
        .kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-scheduler",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .stdout
}

/// The reportingInstance of every Scheduled event, deduplicated.
fn binders(s: &Stack) -> Vec<String> {
    let out = s.api.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=Scheduled",
        "-o",
        "jsonpath={.items[*].reportingInstance}",
    ]);
    let mut v: Vec<String> = out.out().split_whitespace().map(str::to_string).collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test]
async fn one_leader_binds_and_a_standby_takes_over() {
    let mut s = Stack::start_with(
        2,
        &[
            "--leader-elect-lease-duration=2s",
            "--leader-elect-renew-deadline=1500ms",
            "--leader-elect-retry-period=250ms",
        ],
    )
    .await;
    s.apply(&node("n1", "8", "16Gi").json());
    let leader = support::eventually("a lease holder", Duration::from_secs(20), || async {
        Some(holder(&s)).filter(|h| !h.is_empty())
    })
    .await;
    for i in 0..4 {
        s.apply(&pod(&format!("before-{i}"), "100m"));
    }
    for i in 0..4 {
        s.bound(&format!("before-{i}")).await;
    }
    let who = support::eventually("Scheduled events", Duration::from_secs(10), || async {
        Some(binders(&s)).filter(|b| b.len() == 1 && b[0] == leader)
    })
    .await;
    assert_eq!(who, vec![leader.clone()], "only the lease holder binds");
    // Which process holds it: the one that logged acquiring.
    let active = (0..2)
        .find(|i| s.sched[*i].log().contains("successfully acquired lease"))
        .expect("one scheduler logged taking the lease");
    assert!(
        !s.sched[1 - active]
            .log()
            .contains("successfully acquired lease"),
        "both schedulers claim the lease"
    );
    s.sched[active].kill9();
    let killed = Instant::now();
    s.apply(&pod("after", "100m"));
    let standby = 1 - active;
    let node = s.bound("after").await;
    assert_eq!(node, "n1");
    let took = killed.elapsed();
    let new_holder = holder(&s);
    assert_ne!(new_holder, leader, "the lease changed hands");
    assert!(
        s.sched[standby]
            .log()
            .contains("successfully acquired lease"),
        "{}",
        s.sched[standby].log()
    );
    eprintln!("hand-over to a bound pod took {took:?}");
    assert!(took < Duration::from_secs(10), "hand-over took {took:?}");
}

/// A leader stopped with SIGTERM gives the lease up, so the standby takes over without
/// waiting out the 15 s lease duration.
#[tokio::test]
async fn a_stopped_leader_releases_the_lease() {
    let mut s = Stack::start_with(2, &["--leader-elect-retry-period=250ms"]).await;
    s.apply(&node("n1", "8", "16Gi").json());
    let leader = s
        .poll("a lease holder", Duration::from_secs(20), |s| {
            Some(holder(s)).filter(|h| !h.is_empty())
        })
        .await;
    let active = s
        .poll("the holder's log", Duration::from_secs(10), |s| {
            (0..2).find(|i| s.sched[*i].log().contains("successfully acquired lease"))
        })
        .await;
    s.sched[active].terminate();
    let stopped = Instant::now();
    s.apply(&pod("after-stop", "100m"));
    assert_eq!(s.bound("after-stop").await, "n1");
    let took = stopped.elapsed();
    assert_ne!(holder(&s), leader);
    assert!(
        took < Duration::from_secs(8),
        "took {took:?}, as if the lease had expired"
    );
}
