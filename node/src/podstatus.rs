//! Pod status pieces shared by the real kubelet and the simulated node: the QoS class
//! and the pod conditions, so both modes report a pod the same way upstream does.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

/// `Guaranteed`, `Burstable` or `BestEffort`, by upstream's rules over cpu and memory.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        let req = r.requests.unwrap_or_default();
        let lim = r.limits.unwrap_or_default();
        for res in ["cpu", "memory"] {
            let l = lim.get(res);
            // A request left out defaults to the limit.
            let q = req.get(res).or(l);
            if q.is_some_and(|q| q.0 != "0") || l.is_some_and(|l| l.0 != "0") {
                any = true;
            }
            if l.is_none() || q.map(|q| &q.0) != l.map(|l| &l.0) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A pod condition as the kubelet writes it (`lastProbeTime` null, as upstream).
pub fn condition(ty: &str, ok: bool, t: &str, reason: Option<&str>) -> Value {
    let status = if ok { "True" } else { "False" };
    let mut c =
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": t});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// PodScheduled as the scheduler set it, or set now for a pod bound by `nodeName`.
pub fn scheduled_condition(pod: &Pod, t: &str) -> Value {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        })
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_else(|| condition("PodScheduled", true, t, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]},
        }))
        .expect("pod")
    }

    #[test]
    fn qos_classes_follow_upstream() {
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"},
                                  "requests": {"cpu": "500m"}}))),
            "Burstable"
        );
    }
}
