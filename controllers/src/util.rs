//! Helpers shared by the controllers: label selectors, owner references, pod readiness
//! and availability, and the conditions upstream's controllers all write the same way.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use k8s_openapi::chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// Whether `labels` satisfy `sel` (matchLabels and matchExpressions). An empty selector
/// matches everything, as upstream's `LabelSelectorAsSelector`; a malformed expression
/// matches nothing.
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a selector selects nothing at all by upstream's rules (an empty selector on a
/// workload is refused by validation; treat it as selecting nothing to be safe).
pub fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

/// The controller owner reference of an object, if it has one.
pub fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs?.iter().find(|r| r.controller == Some(true))
}

/// An owner reference making `owner` the controller of a dependent.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the pod counts for its controller: not terminal and not being deleted.
pub fn pod_is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && p.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition last became True, if it is True.
pub fn pod_ready_since(p: &Pod) -> Option<Option<DateTime<Utc>>> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod is Ready.
pub fn pod_is_ready(p: &Pod) -> bool {
    pod_ready_since(p).is_some()
}

/// Whether the pod has been Ready for at least `min_ready` seconds at `now`; when not
/// yet, how long until it will be (upstream's `IsPodAvailable`).
pub fn pod_availability(p: &Pod, min_ready: i32, now: DateTime<Utc>) -> Availability {
    match pod_ready_since(p) {
        None => Availability::No,
        Some(_) if min_ready <= 0 => Availability::Yes,
        Some(None) => Availability::No,
        Some(Some(since)) => {
            let at = since + k8s_openapi::chrono::Duration::seconds(i64::from(min_ready));
            if at <= now {
                Availability::Yes
            } else {
                Availability::After((at - now).to_std().unwrap_or_default())
            }
        }
    }
}

/// See [`pod_availability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Ready for minReadySeconds.
    Yes,
    /// Not ready.
    No,
    /// Ready, and available after this long.
    After(std::time::Duration),
}

/// Now, as a Kubernetes `Time` (whole seconds, as it is serialised).
pub fn now() -> Time {
    use k8s_openapi::chrono::{SubsecRound, Utc};
    Time(Utc::now().trunc_subsecs(0))
}

/// The key a controller keeps per-object state under.
pub fn key(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", ns.unwrap_or(""))
}

/// A pod from `template` with `owner` as its controller, named `<owner>-<random>` by the
/// apiserver (generateName), as upstream's `GetPodFromTemplate` makes it.
pub fn pod_from_template<K: kube::Resource>(
    template: Option<PodTemplateSpec>,
    owner: &K,
    api_version: &str,
    kind: &str,
) -> Pod {
    let tmpl = template.unwrap_or_default();
    let tm = tmpl.metadata.unwrap_or_default();
    let name = owner.meta().name.clone().unwrap_or_default();
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: owner.meta().namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![controller_ref(
                api_version,
                kind,
                &name,
                owner.meta().uid.as_deref().unwrap_or_default(),
            )]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&sel, Some(&labels(&[("app", "web")]))));
        assert!(!selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "db")]))
        ));
        assert!(!selector_matches(&sel, Some(&labels(&[("app", "api")]))));
        assert!(!selector_matches(&sel, None));
    }
}
