//! From what the runtime reports to what the API shows: a pod's status (phase,
//! conditions, container statuses) computed from the CRI's view of its sandbox and
//! containers plus the kubelet's own verdicts (image errors, back-off), by upstream's
//! rules (`getPhase`, `GeneratePodReadyCondition` and friends in the kubelet). Pure
//! functions, so every rule is unit-tested without a runtime.

use std::collections::HashMap;

use capstan_proto::cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::podstatus;

/// What the relist saw of one container (by name) of a pod.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The newest attempt.
    pub latest: Option<cri::ContainerStatus>,
    /// The attempt before it, for `lastState`.
    pub previous: Option<cri::ContainerStatus>,
}

/// A waiting reason the kubelet decided on (image errors, CrashLoopBackOff).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// Everything a pod's status is computed from.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    /// The status last written for this pod (ours, or the API's), for transition
    /// times, `startTime` and the pod IP once the sandbox is gone.
    pub old: Option<&'a Value>,
    /// The newest sandbox is ready (its network set up).
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub host_ip: &'a str,
    /// `containerd`, from CRI Version: the scheme of container IDs.
    pub runtime_name: &'a str,
    pub containers: &'a HashMap<String, Observed>,
    pub waiting: &'a HashMap<String, Waiting>,
    /// Probe verdicts (ready, started) of running app containers, by name; a running
    /// container not listed is ready and started.
    pub probes: &'a HashMap<String, (bool, bool)>,
}

/// Nanoseconds since the epoch (the CRI's timestamps) as an API `Time`.
pub fn time(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn terminated(cs: &cri::ContainerStatus, runtime: &str) -> Value {
    let mut t = json!({
        "exitCode": cs.exit_code,
        "reason": cs.reason,
        "startedAt": time(cs.started_at),
        "finishedAt": time(cs.finished_at),
        "containerID": format!("{runtime}://{}", cs.id),
    });
    if !cs.message.is_empty() {
        t["message"] = json!(cs.message);
    }
    json!({ "terminated": t })
}

fn exited(cs: &cri::ContainerStatus) -> bool {
    cs.state == cri::ContainerState::ContainerExited as i32
}

fn waiting_state(reason: &str, message: &str) -> Value {
    let mut w = json!({ "reason": reason });
    if !message.is_empty() {
        w["message"] = json!(message);
    }
    json!({ "waiting": w })
}

/// One entry of `containerStatuses` or `initContainerStatuses`.
fn container_status(
    spec: &Container,
    obs: Option<&Observed>,
    waiting: Option<&Waiting>,
    default_waiting: &str,
    init: bool,
    runtime: &str,
    probes: Option<(bool, bool)>,
) -> Value {
    let image = spec.image.clone().unwrap_or_default();
    let Some(latest) = obs.and_then(|o| o.latest.as_ref()) else {
        let (r, m) = waiting
            .map(|w| (w.reason.as_str(), w.message.as_str()))
            .unwrap_or((default_waiting, ""));
        return json!({
            "name": spec.name, "image": image, "imageID": "", "ready": false,
            "started": false, "restartCount": 0, "lastState": {},
            "state": waiting_state(r, m),
        });
    };
    let previous = obs
        .and_then(|o| o.previous.as_ref())
        .filter(|p| exited(p))
        .map(|p| terminated(p, runtime))
        .unwrap_or_else(|| json!({}));
    let running = latest.state == cri::ContainerState::ContainerRunning as i32;
    let (state, last, ready) = if running {
        let st = json!({"running": {"startedAt": time(latest.started_at)}});
        // A running init container is not ready; a running app container is unless its
        // readiness probe says otherwise.
        (st, previous, !init && probes.is_none_or(|p| p.0))
    } else if exited(latest) {
        match waiting {
            // About to be restarted (back-off): waiting, the exit in lastState.
            Some(w) => (
                waiting_state(&w.reason, &w.message),
                terminated(latest, runtime),
                false,
            ),
            None => (
                terminated(latest, runtime),
                previous,
                init && latest.exit_code == 0,
            ),
        }
    } else {
        let (r, m) = waiting
            .map(|w| (w.reason.as_str(), w.message.as_str()))
            .unwrap_or(("ContainerCreating", ""));
        (waiting_state(r, m), previous, false)
    };
    let restart_count = latest.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
    let mut s = json!({
        "name": spec.name,
        "image": image,
        "imageID": latest.image_ref,
        "containerID": format!("{runtime}://{}", latest.id),
        "ready": ready,
        "restartCount": restart_count,
        "lastState": last,
        "state": state,
    });
    s["started"] = json!(running && probes.is_none_or(|p| p.1));
    s
}

fn is_terminated_ok(s: &Value) -> bool {
    s["state"]["terminated"]["exitCode"].as_i64() == Some(0)
}

fn failed_exit(s: &Value) -> bool {
    let t = &s["state"]["terminated"];
    let last = &s["lastState"]["terminated"];
    (t.is_object() && t["exitCode"].as_i64() != Some(0))
        || (s["state"]["waiting"].is_object()
            && last.is_object()
            && last["exitCode"].as_i64() != Some(0))
}

/// The pod phase, as the kubelet's `getPhase` defines it.
pub fn phase(restart_policy: &str, init: &[Value], containers: &[Value]) -> &'static str {
    let (mut pending_init, mut failed_init) = (0, 0);
    for s in init {
        if is_terminated_ok(s) {
            continue;
        }
        if failed_exit(s) {
            failed_init += 1;
        } else {
            pending_init += 1;
        }
    }
    if failed_init > 0 && restart_policy == "Never" {
        return "Failed";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let st = &s["state"];
        if st["running"].is_object() {
            running += 1;
        } else if st["terminated"].is_object() {
            stopped += 1;
            if st["terminated"]["exitCode"].as_i64() == Some(0) {
                succeeded += 1;
            }
        } else if s["lastState"]["terminated"].is_object() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if pending_init > 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

/// A condition, keeping its old transition time when its status did not change.
fn condition(
    old: Option<&Value>,
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let prev = old
        .and_then(|o| o["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let t = match prev.map(|p| (&p["status"], p["lastTransitionTime"].as_str())) {
        Some((s, Some(t))) if s == status => t.to_string(),
        _ => crate::registration::now(),
    };
    let mut c = podstatus::condition(ty, ok, &t, reason);
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// The whole pod status.
pub fn pod_status(v: &PodView) -> Value {
    let spec = v.pod.spec.clone().unwrap_or_default();
    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let init: Vec<Value> = init_specs
        .iter()
        .map(|c| {
            container_status(
                c,
                v.containers.get(&c.name),
                v.waiting.get(&c.name),
                "PodInitializing",
                true,
                v.runtime_name,
                None,
            )
        })
        .collect();
    let initialized = init.iter().all(is_terminated_ok);
    let app_default = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                c,
                v.containers.get(&c.name),
                // Until the init containers are done, the app containers only wait.
                v.waiting.get(&c.name).filter(|_| initialized),
                app_default,
                false,
                v.runtime_name,
                v.probes.get(&c.name).copied(),
            )
        })
        .collect();
    let phase = phase(policy, &init, &containers);
    let unready: Vec<&str> = containers
        .iter()
        .filter(|s| s["ready"] != true)
        .filter_map(|s| s["name"].as_str())
        .collect();
    let incomplete: Vec<&str> = init
        .iter()
        .filter(|s| !is_terminated_ok(s))
        .filter_map(|s| s["name"].as_str())
        .collect();
    let succeeded = phase == "Succeeded";
    let ready = unready.is_empty() && !succeeded;
    let not_ready = |ok: bool| -> (Option<&str>, Option<String>) {
        if ok {
            (None, None)
        } else if succeeded {
            (Some("PodCompleted"), None)
        } else {
            (
                Some("ContainersNotReady"),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        }
    };
    let (init_reason, init_message) = if succeeded {
        (Some("PodCompleted"), None)
    } else if initialized {
        (None, None)
    } else {
        (
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    };
    let (cr_reason, cr_message) = not_ready(ready);
    let t = crate::registration::now();
    let conditions = vec![
        condition(
            v.old,
            "PodReadyToStartContainers",
            v.sandbox_ready,
            None,
            None,
        ),
        condition(
            v.old,
            "Initialized",
            initialized || succeeded,
            init_reason,
            init_message,
        ),
        condition(v.old, "Ready", ready, cr_reason, cr_message.clone()),
        condition(v.old, "ContainersReady", ready, cr_reason, cr_message),
        podstatus::scheduled_condition(v.pod, &t),
    ];
    let start_time = v
        .old
        .and_then(|o| o["startTime"].as_str().map(str::to_string))
        .unwrap_or(t);
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "startTime": start_time,
        "qosClass": podstatus::qos_class(v.pod),
        "containerStatuses": containers,
    });
    let ip = if spec.host_network == Some(true) {
        Some(v.host_ip.to_string())
    } else {
        v.pod_ip
            .clone()
            .filter(|ip| !ip.is_empty())
            .or_else(|| v.old.and_then(|o| o["podIP"].as_str().map(str::to_string)))
    };
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{ "ip": ip }]);
    }
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: Value, last: Value) -> Value {
        json!({"state": state, "lastState": last})
    }
    fn running() -> Value {
        json!({"running": {}})
    }
    fn exit(code: i64) -> Value {
        json!({"terminated": {"exitCode": code}})
    }
    fn waiting() -> Value {
        json!({"waiting": {"reason": "ContainerCreating"}})
    }

    #[test]
    fn phases_follow_get_phase() {
        let none = json!({});
        assert_eq!(
            phase("Always", &[], &[st(waiting(), none.clone())]),
            "Pending"
        );
        assert_eq!(
            phase("Always", &[], &[st(running(), none.clone())]),
            "Running"
        );
        assert_eq!(
            phase("Never", &[], &[st(exit(0), none.clone())]),
            "Succeeded"
        );
        assert_eq!(phase("Never", &[], &[st(exit(3), none.clone())]), "Failed");
        assert_eq!(
            phase("OnFailure", &[], &[st(exit(0), none.clone())]),
            "Succeeded"
        );
        assert_eq!(
            phase("OnFailure", &[], &[st(exit(1), none.clone())]),
            "Running"
        );
        assert_eq!(
            phase("Always", &[], &[st(exit(0), none.clone())]),
            "Running"
        );
        // CrashLoopBackOff: waiting with a last termination counts as stopped.
        assert_eq!(phase("Always", &[], &[st(waiting(), exit(1))]), "Running");
        // One container still being created keeps the pod Pending.
        assert_eq!(
            phase(
                "Always",
                &[],
                &[st(running(), none.clone()), st(waiting(), none.clone())]
            ),
            "Pending"
        );
        // Init containers: pending, failed with Never, failed and retried.
        assert_eq!(
            phase(
                "Always",
                &[st(running(), none.clone())],
                &[st(waiting(), none.clone())]
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                "Never",
                &[st(exit(1), none.clone())],
                &[st(waiting(), none.clone())]
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                "OnFailure",
                &[st(waiting(), exit(1))],
                &[st(waiting(), none.clone())]
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                "Never",
                &[st(exit(0), none.clone())],
                &[st(running(), none)]
            ),
            "Running"
        );
    }

    #[test]
    fn a_pod_with_no_containers_yet_is_pending_and_not_ready() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }))
        .expect("pod");
        let (c, w, p) = (HashMap::new(), HashMap::new(), HashMap::new());
        let s = pod_status(&PodView {
            pod: &pod,
            old: None,
            sandbox_ready: false,
            pod_ip: None,
            host_ip: "10.0.0.1",
            runtime_name: "containerd",
            containers: &c,
            waiting: &w,
            probes: &p,
        });
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        let ready = s["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(ready["reason"], "ContainersNotReady");
        assert_eq!(ready["message"], "containers with unready status: [c]");
        assert_eq!(s["qosClass"], "BestEffort");
        assert!(s.get("podIP").is_none());
    }
}
