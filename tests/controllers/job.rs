//! The Job controller: completions with parallelism, and a failing Job hitting its
//! backoff limit; pods run on the simulated node, which ends a Job's pods after a
//! second (with the exit code the `sim.capstan.io/exit-code` annotation gives).

use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;

use crate::support::eventually;
use crate::{pods, Stack, NODE, SETTLE};

fn job_yaml(
    ns: &str,
    name: &str,
    completions: i32,
    parallelism: i32,
    exit: i32,
    backoff: i32,
) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: {ns}}}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff}
  template:
    metadata:
      annotations: {{sim.capstan.io/exit-code: \"{exit}\"}}
    spec:
      nodeName: {NODE}
      restartPolicy: Never
      containers: [{{name: c, image: busybox:1.36}}]
"
    )
}

#[tokio::test]
async fn jobs_complete_and_fail_as_specified() {
    let stack = Stack::start().await;
    let ns = "jobs";
    stack.namespace(ns);
    let client = stack.client().await;
    let jobs = Api::<Job>::namespaced(client.clone(), ns);

    // Three completions, two at a time: `kubectl wait` sees it complete.
    stack.apply(&job_yaml(ns, "ok", 3, 2, 0, 6));
    stack
        .api
        .kubectl(&[
            "-n",
            ns,
            "wait",
            "--for=condition=complete",
            "job/ok",
            "--timeout=60s",
        ])
        .out();
    let st = jobs.get("ok").await.expect("job").status.expect("status");
    assert_eq!(st.succeeded, Some(3));
    assert_eq!(st.active, None);
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    eventually("the Completed event", SETTLE, || async {
        let out = stack.api.kubectl(&["-n", ns, "get", "events"]);
        (out.ok && out.stdout.contains("Job completed")).then_some(())
    })
    .await;
    let ps = pods(&client, ns, "job-name=ok").await;
    assert_eq!(ps.len(), 3, "one pod per completion");

    // Every pod fails: after backoffLimit + 1 failures the Job is Failed.
    stack.apply(&job_yaml(ns, "bad", 1, 1, 1, 1));
    let st = eventually("job bad to fail", SETTLE, || async {
        let st = jobs.get("bad").await.ok()?.status?;
        st.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True")
            .then_some(st)
    })
    .await;
    let c = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed")
        .cloned()
        .expect("Failed condition");
    assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(st.failed, Some(2));
    assert_eq!(pods(&client, ns, "job-name=bad").await.len(), 2);
}
