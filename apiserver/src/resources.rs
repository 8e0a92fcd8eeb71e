//! The resource types the server serves: names for discovery and URLs, where each lives
//! in the store, and how a body is decoded, validated and defaulted for it.
//!
//! Decoding goes through the `k8s-openapi` type of the kind: a body that does not fit
//! the type is rejected, fields the type does not know are dropped (or rejected, under
//! `fieldValidation=Strict`), exactly the choices kube-apiserver makes with its Go types.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord};
use k8s_openapi::api::{authorization::v1 as authz, rbac::v1 as rbac};
use k8s_openapi::api::{core::v1 as core, discovery::v1 as disc, networking::v1 as net};

/// One served resource.
pub struct ResourceType {
    /// API group ("" for core).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// URL path segment, e.g. "deployments".
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has the `status` subresource (then the main resource ignores status changes).
    pub status: bool,
    /// Has the `scale` subresource.
    pub scale: bool,
    /// Key prefix in the store, kube-apiserver's own (`/registry/minions` for nodes...),
    /// so `etcdctl get --prefix /registry` reads like upstream's.
    pub prefix: &'static str,
    /// Decodes a body through the typed struct: `(canonical body, unknown field paths)`.
    decode: fn(&Value) -> Result<Value, serde_json::Error>,
}

fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(serde_json::from_value::<T>(v.clone())?)
}

macro_rules! rt {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $ns:expr, $short:expr, $cat:expr, $status:expr, $scale:expr, $prefix:expr, $ty:ty) => {
        ResourceType {
            group: $g,
            version: $v,
            kind: $kind,
            plural: $plural,
            singular: const_lower($kind),
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            status: $status,
            scale: $scale,
            prefix: $prefix,
            decode: typed::<$ty>,
        }
    };
}

/// `singular` is the lower-cased kind; done by hand because it must be const.
const fn const_lower(kind: &'static str) -> &'static str {
    match kind.as_bytes() {
        b"Namespace" => "namespace",
        b"Pod" => "pod",
        b"Service" => "service",
        b"Endpoints" => "endpoints",
        b"Node" => "node",
        b"ConfigMap" => "configmap",
        b"Secret" => "secret",
        b"ServiceAccount" => "serviceaccount",
        b"Event" => "event",
        b"Deployment" => "deployment",
        b"ReplicaSet" => "replicaset",
        b"Job" => "job",
        b"Lease" => "lease",
        b"EndpointSlice" => "endpointslice",
        b"Ingress" => "ingress",
        b"Role" => "role",
        b"ClusterRole" => "clusterrole",
        b"RoleBinding" => "rolebinding",
        b"ClusterRoleBinding" => "clusterrolebinding",
        b"SelfSubjectAccessReview" => "selfsubjectaccessreview",
        b"SelfSubjectRulesReview" => "selfsubjectrulesreview",
        _ => "",
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

pub static RESOURCES: &[ResourceType] = &[
    rt!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        NONE,
        true,
        false,
        "/registry/namespaces",
        core::Namespace
    ),
    rt!(
        "",
        "v1",
        "Pod",
        "pods",
        true,
        &["po"],
        ALL,
        true,
        false,
        "/registry/pods",
        core::Pod
    ),
    rt!(
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        ALL,
        true,
        false,
        "/registry/services/specs",
        core::Service
    ),
    rt!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE,
        false,
        false,
        "/registry/services/endpoints",
        core::Endpoints
    ),
    rt!(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        NONE,
        true,
        false,
        "/registry/minions",
        core::Node
    ),
    rt!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        NONE,
        false,
        false,
        "/registry/configmaps",
        core::ConfigMap
    ),
    rt!(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        NONE,
        NONE,
        false,
        false,
        "/registry/secrets",
        core::Secret
    ),
    rt!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        NONE,
        false,
        false,
        "/registry/serviceaccounts",
        core::ServiceAccount
    ),
    rt!(
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        NONE,
        false,
        false,
        "/registry/events",
        core::Event
    ),
    rt!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        ALL,
        true,
        true,
        "/registry/deployments",
        apps::Deployment
    ),
    rt!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        ALL,
        true,
        true,
        "/registry/replicasets",
        apps::ReplicaSet
    ),
    rt!(
        "batch",
        "v1",
        "Job",
        "jobs",
        true,
        NONE,
        ALL,
        true,
        false,
        "/registry/jobs",
        batch::Job
    ),
    rt!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        NONE,
        NONE,
        false,
        false,
        "/registry/leases",
        coord::Lease
    ),
    rt!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        NONE,
        NONE,
        false,
        false,
        "/registry/endpointslices",
        disc::EndpointSlice
    ),
    rt!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        &["ing"],
        NONE,
        true,
        false,
        "/registry/ingress",
        net::Ingress
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        NONE,
        NONE,
        false,
        false,
        "/registry/clusterrolebindings",
        rbac::ClusterRoleBinding
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        NONE,
        NONE,
        false,
        false,
        "/registry/clusterroles",
        rbac::ClusterRole
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        NONE,
        NONE,
        false,
        false,
        "/registry/rolebindings",
        rbac::RoleBinding
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        NONE,
        NONE,
        false,
        false,
        "/registry/roles",
        rbac::Role
    ),
    // Reviews are not stored (no prefix): a create is answered by the authorizer.
    rt!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
        NONE,
        NONE,
        false,
        false,
        "",
        authz::SelfSubjectAccessReview
    ),
    rt!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false,
        NONE,
        NONE,
        false,
        false,
        "",
        authz::SelfSubjectRulesReview
    ),
];

/// The verbs of a review (created and answered, never stored).
pub const REVIEW_VERBS: &[&str] = &["create"];

/// The verbs every resource serves.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    /// Whether objects of this type are kept in the store (reviews are not: they are
    /// answered on create and forgotten).
    pub fn stored(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The verbs discovery lists for this type.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.stored() {
            VERBS
        } else {
            REVIEW_VERBS
        }
    }

    /// `apiVersion` of objects of this type.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// "deployments.apps", "pods": how upstream's messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/{}/{}", self.prefix, ns, name),
            _ => format!("{}/{}", self.prefix, name),
        }
    }

    /// The store prefix of a list: one namespace's objects, or all.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/{}/", self.prefix, ns),
            _ => format!("{}/", self.prefix),
        }
    }

    /// Decodes `body` through the kind's type. Returns the canonical object and the
    /// paths of the fields the type does not know (dropped from the canonical form).
    pub fn decode(&self, body: &Value) -> Result<(Value, Vec<String>), String> {
        let canonical = (self.decode)(body).map_err(|e| e.to_string())?;
        let mut unknown = Vec::new();
        unknown_fields(body, &canonical, "", &mut unknown);
        Ok((canonical, unknown))
    }

    /// What kube-apiserver's create strategy adds once the object has its uid: a Job's
    /// generated selector and the matching template labels (unless `manualSelector`).
    pub fn prepare_create(&self, obj: &mut Value) {
        if self.kind == "Pod" {
            default_toleration_seconds(obj);
            return;
        }
        if self.kind != "Job" {
            return;
        }
        let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(json!(""));
        let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if spec.get("manualSelector") == Some(&json!(true)) {
            return;
        }
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let template = spec.entry("template").or_insert(json!({}));
        if let Some(t) = template.as_object_mut() {
            let meta = t.entry("metadata").or_insert(json!({}));
            if let Some(m) = meta.as_object_mut() {
                let labels = m.entry("labels").or_insert(json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
                    l.insert("batch.kubernetes.io/job-name".into(), name.clone());
                    l.insert("controller-uid".into(), uid);
                    l.insert("job-name".into(), name);
                }
            }
        }
    }

    /// Fills in the defaults kube-apiserver fills in for this kind on create and update.
    pub fn apply_defaults(&self, obj: &mut Value) {
        match self.kind {
            "Pod" => {
                if let Some(spec) = obj.get_mut("spec") {
                    default_pod_spec(spec);
                    // Upstream defaults this on Pods only (SetDefaults_Pod), not in
                    // templates, so it is not in a workload's managedFields.
                    if let Some(s) = spec.as_object_mut() {
                        s.entry("enableServiceLinks").or_insert(json!(true));
                    }
                }
                ensure(obj, "status", json!({}));
                if obj["status"].get("phase").is_none() {
                    obj["status"]["phase"] = json!("Pending");
                }
            }
            "Deployment" => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("replicas").or_insert(json!(1));
                    spec.entry("revisionHistoryLimit").or_insert(json!(10));
                    spec.entry("progressDeadlineSeconds").or_insert(json!(600));
                    let strategy = spec.entry("strategy").or_insert(json!({}));
                    if let Some(s) = strategy.as_object_mut() {
                        let t = s.entry("type").or_insert(json!("RollingUpdate")).clone();
                        if t == "RollingUpdate" {
                            let ru = s.entry("rollingUpdate").or_insert(json!({}));
                            if let Some(ru) = ru.as_object_mut() {
                                ru.entry("maxUnavailable").or_insert(json!("25%"));
                                ru.entry("maxSurge").or_insert(json!("25%"));
                            }
                        }
                    }
                    default_template(spec);
                }
            }
            "ReplicaSet" => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("replicas").or_insert(json!(1));
                    default_template(spec);
                }
            }
            "Job" => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("parallelism").or_insert(json!(1));
                    spec.entry("backoffLimit").or_insert(json!(6));
                    spec.entry("completionMode").or_insert(json!("NonIndexed"));
                    spec.entry("suspend").or_insert(json!(false));
                    if !spec.contains_key("completions")
                        && spec.get("parallelism") == Some(&json!(1))
                    {
                        spec.insert("completions".into(), json!(1));
                    }
                    default_template(spec);
                }
            }
            "Service" => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("type").or_insert(json!("ClusterIP"));
                    spec.entry("sessionAffinity").or_insert(json!("None"));
                    spec.entry("internalTrafficPolicy")
                        .or_insert(json!("Cluster"));
                    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
                    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ports {
                            if let Some(p) = p.as_object_mut() {
                                p.entry("protocol").or_insert(json!("TCP"));
                                if let Some(port) = p.get("port").cloned() {
                                    p.entry("targetPort").or_insert(port);
                                }
                            }
                        }
                    }
                }
                ensure(obj, "status", json!({"loadBalancer": {}}));
            }
            "Namespace" => {
                // Upstream's SetDefaults_Namespace: the name as a label, so selectors
                // can pick namespaces by name; set on every write, like any default.
                let name = obj.pointer("/metadata/name").cloned();
                if let Some(name) = name.filter(|n| n.as_str().is_some_and(|n| !n.is_empty())) {
                    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                        let labels = meta.entry("labels").or_insert(json!({}));
                        if let Some(l) = labels.as_object_mut() {
                            l.insert("kubernetes.io/metadata.name".into(), name);
                        }
                    }
                }
                ensure(obj, "spec", json!({}));
                if obj["spec"].get("finalizers").is_none() {
                    obj["spec"]["finalizers"] = json!(["kubernetes"]);
                }
                ensure(obj, "status", json!({}));
                if obj["status"].get("phase").is_none() {
                    obj["status"]["phase"] = json!("Active");
                }
            }
            "Secret" => {
                if let Some(o) = obj.as_object_mut() {
                    o.entry("type").or_insert(json!("Opaque"));
                    // stringData is write-only: it is merged into data, base64-encoded,
                    // over any data key of the same name (upstream's conversion).
                    if let Some(Value::Object(sd)) = o.remove("stringData") {
                        use base64::Engine;
                        let data = o.entry("data").or_insert(json!({}));
                        if let Some(d) = data.as_object_mut() {
                            for (k, v) in sd {
                                let text = v.as_str().unwrap_or_default();
                                d.insert(
                                    k,
                                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                                );
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn ensure(obj: &mut Value, field: &str, default: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.entry(field).or_insert(default);
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(pod_spec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        default_pod_spec(pod_spec);
    }
}

fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    s.entry("restartPolicy").or_insert(json!("Always"));
    s.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    s.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    s.entry("securityContext").or_insert(json!({}));
    s.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    for list in ["initContainers", "containers"] {
        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let Some(c) = c.as_object_mut() else { continue };
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                c.entry("resources").or_insert(json!({}));
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                // Upstream: Always for `:latest` or no tag, IfNotPresent otherwise.
                let last = image.rsplit('/').next().unwrap_or(image);
                let policy =
                    if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
                        "IfNotPresent"
                    } else {
                        "Always"
                    };
                c.entry("imagePullPolicy").or_insert(json!(policy));
                for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if let Some(p) = c.get_mut(kind).and_then(Value::as_object_mut) {
                        default_probe(p);
                    }
                }
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if let Some(p) = p.as_object_mut() {
                            p.entry("protocol").or_insert(json!("TCP"));
                        }
                    }
                }
            }
        }
    }
}

/// Upstream's `SetDefaults_Probe`, `SetDefaults_HTTPGetAction` and
/// `SetDefaults_GRPCAction`: what `kubectl describe` prints as `timeout=1s period=10s
/// #success=1 #failure=3`.
fn default_probe(p: &mut Map<String, Value>) {
    p.entry("timeoutSeconds").or_insert(json!(1));
    p.entry("periodSeconds").or_insert(json!(10));
    p.entry("successThreshold").or_insert(json!(1));
    p.entry("failureThreshold").or_insert(json!(3));
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        h.entry("path").or_insert(json!("/"));
        h.entry("scheme").or_insert(json!("HTTP"));
    }
    if let Some(g) = p.get_mut("grpc").and_then(Value::as_object_mut) {
        g.entry("service").or_insert(json!(""));
    }
}

/// Collects the paths (`spec.foo`, `spec.containers[0].bar`) present in `orig` but not
/// in `canonical`: the fields the typed decode dropped. Nulls are not fields.
fn unknown_fields(orig: &Value, canonical: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, canonical) {
        (Value::Object(o), Value::Object(c)) => {
            for (k, v) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match c.get(k) {
                    Some(cv) => unknown_fields(v, cv, &p, out),
                    None if !v.is_null() && !is_empty_container(v) => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(o), Value::Array(c)) => {
            for (i, (ov, cv)) in o.iter().zip(c).enumerate() {
                unknown_fields(ov, cv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    matches!(v, Value::Object(o) if o.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

/// Looks a resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The DefaultTolerationSeconds admission plugin: a pod that does not tolerate the
/// `not-ready` and `unreachable` NoExecute taints already gets tolerations of them for
/// 300 s, so the node lifecycle controller evicts its pods five minutes after their
/// node goes away, not at once.
fn default_toleration_seconds(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert(json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let tkey = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute")
                && (tkey == key || (tkey.is_empty() && exists))
        });
        if !tolerated {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_decode_reports_unknown_fields() {
        let Some(rt) = find("", "v1", "configmaps") else {
            panic!("configmaps not served")
        };
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "bogus": 1, "creationTimestamp": null}, "data": {"k": "v"}, "extra": {"x": 1}});
        let (canon, unknown) = rt.decode(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            unknown,
            vec!["extra".to_string(), "metadata.bogus".to_string()]
        );
        assert_eq!(canon["data"]["k"], "v");
        assert!(canon.get("extra").is_none());
    }

    #[test]
    fn typed_decode_rejects_wrong_types() {
        let Some(rt) = find("apps", "v1", "deployments") else {
            panic!("deployments not served")
        };
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a"}, "spec": {"replicas": "three"}});
        assert!(rt.decode(&body).is_err());
    }
}
