//! The Node authorizer and the NodeRestriction admission check
//! (`--authorization-mode=Node,RBAC`, `--enable-admission-plugins=NodeRestriction`).
//!
//! A kubelet is the user `system:node:<name>` in the group `system:nodes`. The Node
//! authorizer lets it read a secret, configmap or PVC, or create a service account's
//! token, only when a pod bound to its node uses that object; its own Lease in
//! `kube-node-lease`; and everything else the `system:node` role's rules allow (upstream
//! hard-codes those rules in the authorizer, and so do we, from the bootstrap policy).
//! Upstream keeps a graph of pods, nodes and what they reference; we answer from the
//! pods watch cache instead (the pods of the request's namespace bound to the node),
//! which is the same relationship without a second index to keep in step.
//!
//! NodeRestriction then narrows what the rules allow by the object written: a node may
//! create, change and delete only its own Node, change the status of and delete only
//! pods bound to it, and create no pods (upstream allows mirror pods, which capstan's
//! kubelet does not make). Denials carry upstream's reasons word for word.

use std::sync::Arc;

use serde_json::Value;

use crate::auth::UserInfo;
use crate::cache::Cache;
use crate::error::ApiError;
use crate::rbac::{Decision, RequestInfo};
use crate::registry::ListOptions;

/// The group every kubelet's credentials are in.
pub const NODES_GROUP: &str = "system:nodes";
/// The user name prefix of a kubelet.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The namespace of node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is, as upstream's `NodeIdentity`: `Some("")` for a member of
/// `system:nodes` whose name does not say which node; `None` for anyone else.
pub fn node_identity(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    Some(user.name.strip_prefix(NODE_USER_PREFIX).unwrap_or(""))
}

/// The Node authorizer: the pods cache (who runs where and uses what) and the
/// `system:node` role's rules.
pub struct NodeAuthorizer {
    pods: Arc<Cache>,
    rules: Vec<Value>,
}

impl NodeAuthorizer {
    /// Over the pods watch cache, with the static node rules.
    pub fn new(pods: Arc<Cache>, rules: Vec<Value>) -> NodeAuthorizer {
        NodeAuthorizer { pods, rules }
    }

    /// Decides a request of a node; `None` when the user is no node (no opinion, and
    /// nothing to add to the reason).
    pub async fn authorize(&self, user: &UserInfo, info: &RequestInfo) -> Option<Decision> {
        let node = node_identity(user)?;
        let deny = |reason: String| Some(Decision::NoOpinion(reason));
        if node.is_empty() {
            return deny(format!("unknown node for user {:?}", user.name));
        }
        if info.resource_request {
            match (info.api_group.as_str(), info.resource.as_str()) {
                ("", "secrets") | ("", "configmaps") => {
                    if !matches!(info.verb.as_str(), "get" | "list" | "watch") {
                        return deny("can only read resources of this type".into());
                    }
                    if !info.subresource.is_empty() {
                        return deny("cannot read subresource".into());
                    }
                    if info.namespace.is_empty() {
                        return deny("can only read namespaced object of this type".into());
                    }
                    return Some(self.related(node, info).await);
                }
                ("", "persistentvolumeclaims") => {
                    if info.subresource == "status" {
                        if !matches!(info.verb.as_str(), "update" | "patch") {
                            return deny("can only get/update/patch this type".into());
                        }
                    } else {
                        if info.verb != "get" {
                            return deny("can only get individual resources of this type".into());
                        }
                        if !info.subresource.is_empty() {
                            return deny("cannot get subresource".into());
                        }
                    }
                    return Some(self.related(node, info).await);
                }
                ("", "serviceaccounts") => {
                    if info.verb != "create" || info.name.is_empty() {
                        return deny(
                            "can only create tokens for individual service accounts".into(),
                        );
                    }
                    if info.subresource != "token" {
                        return deny("can only create token subresource of serviceaccount".into());
                    }
                    return Some(self.related(node, info).await);
                }
                ("coordination.k8s.io", "leases") => {
                    if !matches!(
                        info.verb.as_str(),
                        "get" | "create" | "update" | "patch" | "delete"
                    ) {
                        return deny(
                            "can only get, create, update, patch, or delete a node lease".into(),
                        );
                    }
                    if info.namespace != NODE_LEASE_NAMESPACE {
                        return deny(format!(
                            "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
                        ));
                    }
                    // A create's name is in its body; NodeRestriction checks it.
                    if info.verb != "create" && info.name != node {
                        return deny(
                            "can only access node lease with the same name as the requesting node"
                                .into(),
                        );
                    }
                    return Some(Decision::Allow(String::new()));
                }
                _ => {}
            }
        }
        if self.rules.iter().any(|r| crate::rbac::rule_allows(info, r)) {
            return Some(Decision::Allow(String::new()));
        }
        Some(Decision::NoOpinion(String::new()))
    }

    /// Whether a pod bound to `node` in the request's namespace references the named
    /// object (upstream's graph path node <- pod <- object).
    async fn related(&self, node: &str, info: &RequestInfo) -> Decision {
        if info.name.is_empty() {
            return Decision::NoOpinion("No Object name found".into());
        }
        if self.pods.revision() == 0 {
            let _ = self.pods.wait_for(1).await;
        }
        let prefix = crate::resources::find("", "v1", "pods")
            .map(|rt| rt.list_prefix(Some(&info.namespace)))
            .unwrap_or_default();
        let (pods, _) = self.pods.list(&prefix, &ListOptions::default());
        let found = pods.iter().any(|p| {
            p.obj.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                && references(&p.obj, &info.resource, &info.name)
        });
        if found {
            Decision::Allow(String::new())
        } else {
            Decision::NoOpinion(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }

    /// NodeRestriction for a request whose target is known from its path (updates,
    /// patches, deletes, subresources): refuses a node's write to another node's Node
    /// or to a pod not bound to it. Anyone else passes.
    pub fn admit(&self, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
        let Some(node) = node_identity(user).filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        if !info.resource_request || !info.api_group.is_empty() || info.name.is_empty() {
            return Ok(());
        }
        let writes = matches!(info.verb.as_str(), "update" | "patch" | "delete");
        match info.resource.as_str() {
            "nodes" if writes && info.name != node => Err(forbidden(
                "nodes",
                &info.name,
                format!(
                    "node {node:?} is not allowed to modify node {:?}",
                    info.name
                ),
            )),
            "pods" if writes && matches!(info.subresource.as_str(), "" | "status") => {
                // Status writes and deletes are a kubelet's; a node changes no spec.
                let bound = self.pod_node(&info.namespace, &info.name);
                let mine = bound.as_deref() == Some(node);
                match (info.subresource.as_str(), info.verb.as_str()) {
                    ("status", _) if !mine => Err(forbidden(
                        "pods",
                        &info.name,
                        format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself"),
                    )),
                    ("", "delete") if !mine && bound.is_some() => Err(forbidden(
                        "pods",
                        &info.name,
                        format!("node {node:?} can only delete pods with spec.nodeName set to itself"),
                    )),
                    ("", "update" | "patch") => Err(forbidden(
                        "pods",
                        &info.name,
                        format!("unexpected operation \"UPDATE\", node {node:?} can only create and delete mirror pods"),
                    )),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// NodeRestriction for a create, which names its object in the body: a node creates
    /// only its own Node and Lease, and no pods.
    pub fn admit_create(
        &self,
        user: &UserInfo,
        group: &str,
        resource: &str,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let Some(node) = node_identity(user).filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match (group, resource) {
            ("", "nodes") if name != node => Err(forbidden(
                "nodes",
                name,
                format!("node {node:?} is not allowed to modify node {name:?}"),
            )),
            ("coordination.k8s.io", "leases") if name != node => Err(ApiError::Denied {
                group: "coordination.k8s.io".into(),
                resource: "leases".into(),
                name: name.into(),
                message: format!(
                    "leases.coordination.k8s.io {name:?} is forbidden: can only access node lease with the same name as the requesting node"
                ),
            }),
            ("", "pods") => Err(forbidden(
                "pods",
                name,
                format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"),
            )),
            _ => Ok(()),
        }
    }

    /// The node a cached pod is bound to (`Some("")` when unbound).
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let key = crate::resources::find("", "v1", "pods")?.key(Some(namespace), name);
        self.pods.peek(&key, |p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
    }
}

/// Upstream's admission `Forbidden` for a core resource: `<resource> "<name>" is
/// forbidden: <reason>`.
fn forbidden(resource: &str, name: &str, reason: String) -> ApiError {
    ApiError::Denied {
        group: String::new(),
        resource: resource.into(),
        name: name.into(),
        message: format!("{resource} {name:?} is forbidden: {reason}"),
    }
}

/// Whether `pod` uses the `resource` (secrets, configmaps, persistentvolumeclaims,
/// serviceaccounts) named `name`: volumes (projected sources too), env and envFrom of
/// every container kind, image pull secrets, its service account.
pub fn references(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_str) == Some(name);
    let items = |v: &Value, field: &str| -> Vec<Value> {
        v.get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let volumes = items(spec, "volumes");
    let containers: Vec<Value> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| items(spec, f))
        .collect();
    let projected = |kind: &str| {
        volumes.iter().any(|v| {
            items(&v["projected"], "sources")
                .iter()
                .any(|s| is(s, &format!("/{kind}/name")))
        })
    };
    let in_env = |key_ref: &str, from_ref: &str| {
        containers.iter().any(|c| {
            items(c, "env")
                .iter()
                .any(|e| is(e, &format!("/valueFrom/{key_ref}/name")))
                || items(c, "envFrom")
                    .iter()
                    .any(|e| is(e, &format!("/{from_ref}/name")))
        })
    };
    match resource {
        "secrets" => {
            volumes.iter().any(|v| {
                is(v, "/secret/secretName")
                    || [
                        "csi",
                        "cephfs",
                        "flexVolume",
                        "iscsi",
                        "rbd",
                        "scaleIO",
                        "storageos",
                    ]
                    .iter()
                    .any(|k| {
                        is(v, &format!("/{k}/secretRef/name"))
                            || is(v, &format!("/{k}/nodePublishSecretRef/name"))
                    })
                    || is(v, "/azureFile/secretName")
            }) || projected("secret")
                || in_env("secretKeyRef", "secretRef")
                || items(spec, "imagePullSecrets")
                    .iter()
                    .any(|s| is(s, "/name"))
        }
        "configmaps" => {
            volumes.iter().any(|v| is(v, "/configMap/name"))
                || projected("configMap")
                || in_env("configMapKeyRef", "configMapRef")
        }
        "persistentvolumeclaims" => volumes
            .iter()
            .any(|v| is(v, "/persistentVolumeClaim/claimName")),
        "serviceaccounts" => {
            let sa = spec
                .get("serviceAccountName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            sa == name
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_references_what_it_mounts_and_reads() {
        let pod = json!({"spec": {
            "nodeName": "a",
            "volumes": [
                {"name": "s", "secret": {"secretName": "mounted"}},
                {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj"}}]}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}}
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "keyed", "key": "k"}}}
            ]}],
            "imagePullSecrets": [{"name": "pull"}]
        }});
        for (res, name) in [
            ("secrets", "mounted"),
            ("secrets", "init-env"),
            ("secrets", "pull"),
            ("configmaps", "proj"),
            ("configmaps", "keyed"),
            ("persistentvolumeclaims", "data"),
            ("serviceaccounts", "default"),
        ] {
            assert!(references(&pod, res, name), "{res}/{name}");
        }
        for (res, name) in [
            ("secrets", "keyed"),
            ("configmaps", "mounted"),
            ("secrets", "other"),
            ("serviceaccounts", "builder"),
        ] {
            assert!(!references(&pod, res, name), "{res}/{name}");
        }
    }

    #[test]
    fn only_system_nodes_members_are_nodes() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(
            node_identity(&user("system:node:a", &[NODES_GROUP])),
            Some("a")
        );
        assert_eq!(node_identity(&user("kubelet", &[NODES_GROUP])), Some(""));
        assert_eq!(node_identity(&user("system:node:a", &[])), None);
    }
}
