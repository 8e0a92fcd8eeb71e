//! Authorization: kube-apiserver's RBAC authorizer (`--authorization-mode=RBAC`), with
//! the `system:masters` group allowed everything first, as upstream's privileged-group
//! authorizer does.
//!
//! Every authenticated request is described as upstream's `RequestInfoResolver` does
//! ([`request_info`]: verb from the method, the name and `watch`; group, namespace,
//! resource, subresource, name; or a non-resource path) and decided against the
//! ClusterRoleBindings and the request namespace's RoleBindings whose subjects match the
//! user, through the roles they reference. Roles and bindings are read from the watch
//! caches, never the store, so a decision costs no store round trip; like upstream's
//! informers, a change is seen once the cache has it.
//!
//! A denial is upstream's 403 `Status`, word for word (`forbidden`). The bootstrap policy
//! (`rbac-bootstrap.yaml`: cluster-admin, admin/edit/view and the discovery roles with
//! their bindings) is created at start when absent, and the SelfSubjectAccessReview and
//! SelfSubjectRulesReview APIs (`kubectl auth can-i`) answer from the same authorizer,
//! which also decides impersonation (`kubectl --as`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Method;
use serde_json::{json, Value};

use crate::auth::UserInfo;
use crate::cache::Cache;
use crate::error::ApiError;
use crate::registry::{ListOptions, Registry};
use crate::resources::{self, ResourceType};

/// The group whose members may do everything, whatever the bindings say.
pub const MASTERS: &str = "system:masters";
/// The API group of the RBAC kinds (also the apiGroup of User and Group subjects).
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// How deep aggregated ClusterRoles may select other aggregated ones (admin → edit →
/// view is two); a bound against selection cycles.
const MAX_AGGREGATION_DEPTH: usize = 8;

/// What a request asks to do, as upstream's `RequestInfo` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// A request on an API resource (`/api/v1/...`, `/apis/g/v/...` with a resource);
    /// otherwise a non-resource path (discovery, `/metrics`...).
    pub resource_request: bool,
    pub path: String,
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// Describes a request as kube-apiserver's `RequestInfoFactory` does: paths under `/api`
/// and `/apis` with a resource are resource requests (the verb from the method: `get`
/// becomes `list` or `watch` without a name, `delete` becomes `deletecollection`; the
/// `/watch/` prefix makes `watch`); a list or watch with a `metadata.name` field
/// selector names that object; a namespace's own name is its namespace. Everything else
/// is a non-resource request whose verb is the lower-cased method.
pub fn request_info(method: &Method, path: &str, query: &HashMap<String, String>) -> RequestInfo {
    let mut info = RequestInfo {
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
        ..Default::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return info;
    }
    let mut rest = &parts[1..];
    if parts[0] == "apis" {
        if rest.len() < 3 {
            return info;
        }
        info.api_group = rest[0].to_string();
        rest = &rest[1..];
    }
    info.api_version = rest[0].to_string();
    rest = &rest[1..];
    if matches!(rest.first(), Some(&"watch") | Some(&"proxy")) {
        if rest.len() < 2 {
            // Upstream refuses such a path; as a non-resource request it is denied to
            // all but the holders of `*` URLs, and then not found.
            return info;
        }
        info.verb = rest[0].to_string();
        rest = &rest[1..];
    } else {
        info.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
    }
    info.resource_request = true;
    if rest.first() == Some(&"namespaces") {
        if let Some(ns) = rest.get(1) {
            info.namespace = ns.to_string();
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
    }
    if let Some(r) = rest.first() {
        info.resource = r.to_string();
    }
    if let Some(n) = rest.get(1) {
        info.name = n.to_string();
    }
    if let Some(s) = rest.get(2).filter(|_| info.verb != "proxy") {
        info.subresource = s.to_string();
    }
    if info.name.is_empty() && info.verb == "get" {
        let watch = query
            .get("watch")
            .is_some_and(|w| !matches!(w.to_ascii_lowercase().as_str(), "false" | "0" | ""));
        info.verb = if watch { "watch" } else { "list" }.into();
        if let Some(name) = query
            .get("fieldSelector")
            .and_then(|f| exact_name(f))
            .filter(|n| !matches!(*n, "." | "..") && !n.contains(['/', '%']))
        {
            info.name = name.to_string();
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".into();
    }
    info
}

/// The name a field selector requires (`metadata.name=x` or `==x` among its terms).
fn exact_name(selector: &str) -> Option<&str> {
    selector.split(',').find_map(|term| {
        let term = term.trim();
        term.strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))
            .filter(|v| !v.starts_with('='))
    })
}

/// The outcome of an authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the reason names the binding that allowed it (empty for masters).
    Allow(String),
    /// Not allowed by anything; the reason reports bindings that could not be
    /// evaluated (a role they reference is missing), or is empty.
    NoOpinion(String),
}

/// The Node authorizer, then the RBAC authorizer over the watch caches of the four
/// RBAC kinds (`--authorization-mode=Node,RBAC`).
pub struct Authorizer {
    node: crate::node::NodeAuthorizer,
    cluster_roles: Arc<Cache>,
    roles: Arc<Cache>,
    cluster_role_bindings: Arc<Cache>,
    role_bindings: Arc<Cache>,
}

/// One rule as the authorizer visits it, with the binding it came through.
struct Visit<'a> {
    rule: Option<&'a Value>,
    source: &'a dyn Fn() -> String,
    error: Option<String>,
}

fn cache_of(
    caches: &HashMap<&'static str, Arc<Cache>>,
    plural: &str,
) -> Result<Arc<Cache>, ApiError> {
    resources::find(GROUP, "v1", plural)
        .and_then(|rt| caches.get(rt.prefix))
        .cloned()
        .ok_or_else(|| ApiError::Setup(format!("no watch cache of {plural}")))
}

fn rbac_rt(plural: &str) -> Option<&'static ResourceType> {
    resources::find(GROUP, "v1", plural)
}

fn strs<'a>(v: &'a Value, field: &str) -> impl Iterator<Item = &'a str> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_str)
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Authorizer {
    /// The authorizer over the apiserver's caches of roles and bindings.
    pub fn new(caches: &HashMap<&'static str, Arc<Cache>>) -> Result<Authorizer, ApiError> {
        let pods = resources::find("", "v1", "pods")
            .and_then(|rt| caches.get(rt.prefix))
            .cloned()
            .ok_or_else(|| ApiError::Setup("no watch cache of pods".into()))?;
        Ok(Authorizer {
            node: crate::node::NodeAuthorizer::new(pods, node_rules()?),
            cluster_roles: cache_of(caches, "clusterroles")?,
            roles: cache_of(caches, "roles")?,
            cluster_role_bindings: cache_of(caches, "clusterrolebindings")?,
            role_bindings: cache_of(caches, "rolebindings")?,
        })
    }

    /// Refuses the request with upstream's 403 unless the user may make it.
    pub async fn check(&self, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
        match self.authorize(user, info).await {
            Decision::Allow(_) => Ok(()),
            Decision::NoOpinion(reason) => Err(forbidden(user, info, &reason)),
        }
    }

    /// NodeRestriction (see `node.rs`): what a node may not write though its rules
    /// allow the verb.
    pub fn node_restriction(&self) -> &crate::node::NodeAuthorizer {
        &self.node
    }

    /// Decides a request: masters are allowed everything; a node what the Node
    /// authorizer allows it; anyone what a rule of a role bound to them allows. As
    /// upstream's union of authorizers, the reasons of those with no opinion are
    /// joined by newlines.
    pub async fn authorize(&self, user: &UserInfo, info: &RequestInfo) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(String::new());
        }
        let node_reason = match self.node.authorize(user, info).await {
            Some(Decision::Allow(r)) => return Decision::Allow(r),
            Some(Decision::NoOpinion(r)) => r,
            None => String::new(),
        };
        match self.authorize_rbac(user, info).await {
            Decision::NoOpinion(r) if !node_reason.is_empty() => {
                let both: Vec<String> = [node_reason, r]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect();
                Decision::NoOpinion(both.join("\n"))
            }
            d => d,
        }
    }

    async fn authorize_rbac(&self, user: &UserInfo, info: &RequestInfo) -> Decision {
        self.wait_synced().await;
        let mut allowed = None;
        let mut errors = Vec::new();
        self.visit_rules(user, &info.namespace, &mut |v: Visit| {
            if let Some(e) = v.error {
                errors.push(e);
                return true;
            }
            if v.rule.is_some_and(|r| rule_allows(info, r)) {
                allowed = Some(format!("RBAC: allowed by {}", (v.source)()));
                return false;
            }
            true
        });
        match allowed {
            Some(reason) => Decision::Allow(reason),
            None if errors.is_empty() => Decision::NoOpinion(String::new()),
            None => Decision::NoOpinion(format!("RBAC: {}", aggregate(&errors))),
        }
    }

    /// Waits for the first list of the RBAC caches (at start the caches are empty until
    /// then, and every request would be denied), bounded like any cache read.
    async fn wait_synced(&self) {
        for c in [
            &self.cluster_role_bindings,
            &self.role_bindings,
            &self.cluster_roles,
            &self.roles,
        ] {
            if c.revision() == 0 {
                let _ = c.wait_for(1).await;
            }
        }
    }

    /// Calls `visit` with every rule that applies to `user` in `namespace` (cluster
    /// bindings first, then the namespace's), or with the error of a binding whose role
    /// is missing, until `visit` returns false (upstream's `VisitRulesFor`).
    fn visit_rules(&self, user: &UserInfo, namespace: &str, visit: &mut dyn FnMut(Visit) -> bool) {
        let all = ListOptions::default();
        let Some(crb) = rbac_rt("clusterrolebindings") else {
            return;
        };
        let (bindings, _) = self
            .cluster_role_bindings
            .list(&crb.list_prefix(None), &all);
        for b in &bindings {
            let Some(subject) = applies_to(user, &b.obj, "") else {
                continue;
            };
            let source = || {
                format!(
                    "ClusterRoleBinding {:?} of {} {:?} to {}",
                    str_of(&b.obj, "/metadata/name"),
                    str_of(&b.obj, "/roleRef/kind"),
                    str_of(&b.obj, "/roleRef/name"),
                    describe_subject(subject, "")
                )
            };
            if !self.visit_role(&b.obj, "", &source, visit) {
                return;
            }
        }
        if namespace.is_empty() {
            return;
        }
        let Some(rb) = rbac_rt("rolebindings") else {
            return;
        };
        let (bindings, _) = self
            .role_bindings
            .list(&rb.list_prefix(Some(namespace)), &all);
        for b in &bindings {
            let Some(subject) = applies_to(user, &b.obj, namespace) else {
                continue;
            };
            let source = || {
                format!(
                    "RoleBinding {:?} of {} {:?} to {}",
                    format!("{}/{namespace}", str_of(&b.obj, "/metadata/name")),
                    str_of(&b.obj, "/roleRef/kind"),
                    str_of(&b.obj, "/roleRef/name"),
                    describe_subject(subject, namespace)
                )
            };
            if !self.visit_role(&b.obj, namespace, &source, visit) {
                return;
            }
        }
    }

    /// Visits the rules of the role a binding references; false once `visit` stops.
    fn visit_role(
        &self,
        binding: &Value,
        namespace: &str,
        source: &dyn Fn() -> String,
        visit: &mut dyn FnMut(Visit) -> bool,
    ) -> bool {
        match self.role_rules(binding, namespace) {
            Ok(rules) => {
                for r in &rules {
                    let go = visit(Visit {
                        rule: Some(r),
                        source,
                        error: None,
                    });
                    if !go {
                        return false;
                    }
                }
                true
            }
            Err(e) => visit(Visit {
                rule: None,
                source,
                error: Some(e),
            }),
        }
    }

    /// The rules of the role a binding references (a ClusterRole, or a Role of the
    /// binding's namespace), or upstream's error when it does not exist.
    fn role_rules(&self, binding: &Value, namespace: &str) -> Result<Vec<Value>, String> {
        let kind = str_of(binding, "/roleRef/kind");
        let name = str_of(binding, "/roleRef/name");
        match kind {
            "ClusterRole" => {
                let rt = rbac_rt("clusterroles").ok_or("clusterroles are not served")?;
                let role = self
                    .cluster_roles
                    .peek(&rt.key(None, name), Value::clone)
                    .ok_or_else(|| format!("clusterrole.{GROUP} {name:?} not found"))?;
                Ok(self.cluster_role_rules(&role))
            }
            "Role" if !namespace.is_empty() => {
                let rt = rbac_rt("roles").ok_or("roles are not served")?;
                self.roles
                    .peek(&rt.key(Some(namespace), name), |r| {
                        strs_values(r.get("rules")).to_vec()
                    })
                    .ok_or_else(|| format!("role.{GROUP} {name:?} not found"))
            }
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// A ClusterRole's rules; an aggregated one's are those of the ClusterRoles its
    /// selectors pick (what upstream's aggregation controller writes into it).
    fn cluster_role_rules(&self, role: &Value) -> Vec<Value> {
        let Some(rt) = rbac_rt("clusterroles") else {
            return Vec::new();
        };
        if role.get("aggregationRule").is_none_or(Value::is_null) {
            return strs_values(role.get("rules")).to_vec();
        }
        let (all, _) = self
            .cluster_roles
            .list(&rt.list_prefix(None), &ListOptions::default());
        let all: Vec<Value> = all.iter().map(|c| c.obj.clone()).collect();
        aggregated_rules(role, &all, 0)
    }

    /// The rules that apply to `user` in `namespace` and the errors met on the way, for
    /// SelfSubjectRulesReview.
    pub async fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Value>, Vec<String>) {
        self.wait_synced().await;
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        self.visit_rules(user, namespace, &mut |v: Visit| {
            match (v.rule, v.error) {
                (_, Some(e)) => errors.push(e),
                (Some(r), None) => rules.push(r.clone()),
                (None, None) => {}
            }
            true
        });
        (rules, errors)
    }
}

impl Authorizer {
    /// Refuses a write of a role or binding that would grant `user` more than it holds
    /// (upstream's escalation check on the RBAC kinds): masters may write anything; a
    /// Role or ClusterRole needs the `escalate` verb on it or rules the user holds
    /// itself, a binding the `bind` verb on its role or all of the role's rules. Other
    /// kinds pass.
    pub async fn confirm_no_escalation(
        &self,
        user: &UserInfo,
        rt: &ResourceType,
        namespace: Option<&str>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let binding = match rt.kind {
            "Role" | "ClusterRole" => false,
            "RoleBinding" | "ClusterRoleBinding" => true,
            _ => return Ok(()),
        };
        if user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        let ns = if rt.namespaced {
            namespace.unwrap_or_default()
        } else {
            ""
        };
        let name = str_of(obj, "/metadata/name");
        let (verb, resource, target) = if binding {
            let role_resource = match str_of(obj, "/roleRef/kind") {
                "Role" => "roles",
                _ => "clusterroles",
            };
            ("bind", role_resource, str_of(obj, "/roleRef/name"))
        } else {
            ("escalate", rt.plural, name)
        };
        let may = RequestInfo {
            resource_request: true,
            verb: verb.into(),
            api_group: GROUP.into(),
            api_version: "v1".into(),
            namespace: ns.into(),
            resource: resource.into(),
            name: target.into(),
            ..Default::default()
        };
        if matches!(self.authorize(user, &may).await, Decision::Allow(_)) {
            return Ok(());
        }
        let refuse = |detail: String| ApiError::Denied {
            group: rt.group.into(),
            resource: rt.plural.into(),
            name: name.into(),
            message: format!("{} {name:?} is forbidden: {detail}", rt.qualified()),
        };
        let wanted: Vec<Value> = if binding {
            // A missing role is upstream's NotFound from its role lister.
            self.role_rules(obj, ns)
                .map_err(|e| match e.strip_suffix(" not found") {
                    Some(_) => ApiError::NotFound {
                        resource: format!("{}.{GROUP}", &resource[..resource.len() - 1]),
                        group: GROUP.into(),
                        name: target.into(),
                    },
                    None => refuse(e),
                })?
        } else {
            if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                return Err(refuse(
                    "must have cluster-admin privileges to use the aggregationRule".into(),
                ));
            }
            strs_values(obj.get("rules")).to_vec()
        };
        let (held, errors) = self.rules_for(user, ns).await;
        let missing = uncovered(&held, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let mut lines: Vec<String> = compact(&missing).iter().map(compact_string).collect();
        lines.sort();
        lines.dedup();
        let mut msg = format!(
            "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            go_quoted(&user.groups),
            lines.join("\n")
        );
        if !errors.is_empty() {
            msg.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
        }
        Err(refuse(msg))
    }
}

/// The user a request acts as: the authenticated one, or the one its `Impersonate-User`
/// and `Impersonate-Group` headers name when the authenticated user may `impersonate`
/// that user (or service account) and each group (upstream's impersonation filter).
pub async fn impersonate(
    authz: &Authorizer,
    user: UserInfo,
    headers: &axum::http::HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let target = values("Impersonate-User").into_iter().next();
    let groups = values("Impersonate-Group");
    let Some(target) = target else {
        if !groups.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "requested {groups:?} without impersonating a user"
            )));
        }
        return Ok(user);
    };
    let sa = target
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'));
    let mut checks = vec![match sa {
        Some((ns, name)) => ("serviceaccounts", ns.to_string(), name.to_string()),
        None => ("users", String::new(), target.clone()),
    }];
    checks.extend(groups.iter().map(|g| ("groups", String::new(), g.clone())));
    for (resource, namespace, name) in checks {
        let acting_as = RequestInfo {
            resource_request: true,
            verb: "impersonate".into(),
            api_version: "v1".into(),
            resource: resource.into(),
            namespace,
            name,
            ..Default::default()
        };
        if let Decision::NoOpinion(reason) = authz.authorize(&user, &acting_as).await {
            return Err(forbidden(&user, &acting_as, &reason));
        }
    }
    let mut as_groups = groups;
    if as_groups.is_empty() {
        if let Some((ns, _)) = sa {
            as_groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
    }
    let impersonated = UserInfo {
        name: target,
        groups: as_groups,
    };
    // Upstream adds system:authenticated unless the caller named it or
    // system:unauthenticated itself.
    if impersonated
        .groups
        .iter()
        .any(|g| g == "system:unauthenticated")
    {
        return Ok(impersonated);
    }
    Ok(impersonated.authenticated())
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{:?}", s.as_ref())).collect();
    format!("[{}]", quoted.join(" "))
}

/// The parts of `wanted` that no rule of `held` covers, each broken down to one verb,
/// group, resource (or URL) and name (upstream's `Covers` with `BreakdownRule`).
fn uncovered(held: &[Value], wanted: &[Value]) -> Vec<Value> {
    let mut atoms = Vec::new();
    for rule in wanted {
        let names: Vec<&str> = strs(rule, "resourceNames").collect();
        for group in strs(rule, "apiGroups") {
            for resource in strs(rule, "resources") {
                for verb in strs(rule, "verbs") {
                    if names.is_empty() {
                        atoms.push(
                            json!({"apiGroups": [group], "resources": [resource], "verbs": [verb]}),
                        );
                    }
                    for n in &names {
                        atoms.push(json!({"apiGroups": [group], "resources": [resource], "verbs": [verb], "resourceNames": [n]}));
                    }
                }
            }
        }
        for url in strs(rule, "nonResourceURLs") {
            for verb in strs(rule, "verbs") {
                atoms.push(json!({"nonResourceURLs": [url], "verbs": [verb]}));
            }
        }
    }
    atoms
        .into_iter()
        .filter(|a| !held.iter().any(|h| rule_covers(h, a)))
        .collect()
}

/// Whether `owner` covers the broken-down rule `atom` (upstream's `ruleCovers`).
fn rule_covers(owner: &Value, atom: &Value) -> bool {
    let has = |field: &str, want: &str| strs(owner, field).any(|v| v == want);
    let all = |field: &str| strs(atom, field).all(|v| has(field, v));
    let verbs = has("verbs", "*") || all("verbs");
    let groups = has("apiGroups", "*") || all("apiGroups");
    let resources = has("resources", "*")
        || strs(atom, "resources").all(|r| {
            has("resources", r)
                || r.split_once('/')
                    .is_some_and(|(_, sub)| has("resources", &format!("*/{sub}")))
        });
    let urls = strs(atom, "nonResourceURLs").all(|u| {
        strs(owner, "nonResourceURLs")
            .any(|o| o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p)))
    });
    let owner_names = strs(owner, "resourceNames").next().is_some();
    let names = if strs(atom, "resourceNames").next().is_none() {
        !owner_names
    } else {
        !owner_names || all("resourceNames")
    };
    verbs && groups && resources && urls && names
}

/// Merges broken-down rules that differ only by verb (upstream's `CompactRules`).
fn compact(rules: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for r in rules {
        let simple = r.get("resourceNames").is_none() && r.get("nonResourceURLs").is_none();
        let same = |o: &Value| {
            o.get("resourceNames").is_none()
                && o.get("nonResourceURLs").is_none()
                && o.get("apiGroups") == r.get("apiGroups")
                && o.get("resources") == r.get("resources")
        };
        match out.iter_mut().find(|o| simple && same(o)) {
            Some(o) => {
                if let (Some(vs), Some(v)) = (
                    o.get_mut("verbs").and_then(Value::as_array_mut),
                    r.pointer("/verbs/0"),
                ) {
                    vs.push(v.clone());
                }
            }
            None => out.push(r.clone()),
        }
    }
    out
}

/// A rule as upstream's `CompactString` prints it: `{APIGroups:["apps"], ...}`.
fn compact_string(r: &Value) -> String {
    let mut parts = Vec::new();
    for (field, label) in [
        ("apiGroups", "APIGroups"),
        ("resources", "Resources"),
        ("nonResourceURLs", "NonResourceURLs"),
        ("resourceNames", "ResourceNames"),
        ("verbs", "Verbs"),
    ] {
        let items: Vec<&str> = strs(r, field).collect();
        if !items.is_empty() {
            parts.push(format!("{label}:{}", go_quoted(&items)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

fn strs_values(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The union of the rules of the ClusterRoles `role`'s aggregation rule selects (not
/// itself), following aggregated ones, each distinct rule once, in name order.
fn aggregated_rules(role: &Value, all: &[Value], depth: usize) -> Vec<Value> {
    let me = str_of(role, "/metadata/name");
    let selectors = strs_values(role.pointer("/aggregationRule/clusterRoleSelectors"));
    let mut picked: Vec<&Value> = all
        .iter()
        .filter(|r| str_of(r, "/metadata/name") != me)
        .filter(|r| {
            let labels = r.pointer("/metadata/labels").unwrap_or(&Value::Null);
            selectors.iter().any(|s| selector_matches(s, labels))
        })
        .collect();
    picked.sort_by_key(|r| str_of(r, "/metadata/name"));
    let mut out: Vec<Value> = Vec::new();
    for r in picked {
        let rules = if r.get("aggregationRule").is_some_and(|a| !a.is_null())
            && depth < MAX_AGGREGATION_DEPTH
        {
            aggregated_rules(r, all, depth + 1)
        } else {
            strs_values(r.get("rules")).to_vec()
        };
        for rule in rules {
            if !out.contains(&rule) {
                out.push(rule);
            }
        }
    }
    out
}

/// Whether a metav1 LabelSelector (matchLabels and matchExpressions) selects `labels`.
fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let exprs_ok = strs_values(selector.get("matchExpressions"))
        .iter()
        .all(|e| {
            let key = str_of(e, "/key");
            let values: Vec<&str> = strs(e, "values").collect();
            match str_of(e, "/operator") {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                _ => false,
            }
        });
    labels_ok && exprs_ok
}

/// The subject of `binding` that `user` is, if any (upstream's `appliesTo`). A
/// ServiceAccount subject without a namespace means the binding's.
fn applies_to<'a>(user: &UserInfo, binding: &'a Value, namespace: &str) -> Option<&'a Value> {
    strs_values(binding.get("subjects")).iter().find(|s| {
        let name = str_of(s, "/name");
        match str_of(s, "/kind") {
            "User" => user.name == name,
            "Group" => user.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = match str_of(s, "/namespace") {
                    "" => namespace,
                    ns => ns,
                };
                !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

/// How upstream names a subject in an "allowed by" reason.
fn describe_subject(s: &Value, binding_namespace: &str) -> String {
    let kind = str_of(s, "/kind");
    let name = str_of(s, "/name");
    if kind == "ServiceAccount" {
        let ns = match str_of(s, "/namespace") {
            "" => binding_namespace,
            ns => ns,
        };
        return format!("{kind} {:?}", format!("{name}/{ns}"));
    }
    format!("{kind} {name:?}")
}

/// Go's aggregate error text: one error as it is, several in brackets.
fn aggregate(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Whether `rule` allows the request (upstream's `RuleAllows`): verbs and API groups
/// with `*`, resources with `*`, `resource/subresource` and `*/subresource`, resource
/// names when the rule lists any; non-resource URLs exactly, by `prefix*`, or `*`.
pub fn rule_allows(info: &RequestInfo, rule: &Value) -> bool {
    let verb_ok = strs(rule, "verbs").any(|v| v == "*" || v == info.verb);
    if !verb_ok {
        return false;
    }
    if !info.resource_request {
        return strs(rule, "nonResourceURLs").any(|u| {
            u == "*"
                || u == info.path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| info.path.starts_with(prefix))
        });
    }
    let combined = if info.subresource.is_empty() {
        info.resource.clone()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    };
    let group_ok = strs(rule, "apiGroups").any(|g| g == "*" || g == info.api_group);
    let resource_ok = strs(rule, "resources").any(|r| {
        r == "*"
            || r == combined
            || (!info.subresource.is_empty()
                && r.strip_prefix("*/") == Some(info.subresource.as_str()))
    });
    let mut names = strs(rule, "resourceNames").peekable();
    let name_ok = names.peek().is_none() || names.any(|n| n == info.name);
    group_ok && resource_ok && name_ok
}

/// Upstream's 403 for a denied request (`responsewriters.Forbidden` and its
/// `forbiddenMessage`): who cannot do what, where; the authorizer's reason after a colon.
pub fn forbidden(user: &UserInfo, info: &RequestInfo, reason: &str) -> ApiError {
    let what = if !info.resource_request {
        format!(
            "User {:?} cannot {} path {:?}",
            user.name, info.verb, info.path
        )
    } else {
        let resource = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        let scope = if info.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", info.namespace)
        };
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            user.name, info.verb, resource, info.api_group
        )
    };
    // Upstream escapes HTML in the message (it may be shown in a browser).
    let what = what
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let err = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    let (group, resource, name) = if info.resource_request {
        (
            info.api_group.clone(),
            info.resource.clone(),
            info.name.clone(),
        )
    } else {
        Default::default()
    };
    let message = if resource.is_empty() {
        format!("forbidden: {err}")
    } else {
        let qualified = if group.is_empty() {
            resource.clone()
        } else {
            format!("{resource}.{group}")
        };
        if name.is_empty() {
            format!("{qualified} is forbidden: {err}")
        } else {
            format!("{qualified} {name:?} is forbidden: {err}")
        }
    };
    ApiError::Denied {
        group,
        resource,
        name,
        message,
    }
}

/// The bootstrap policy: ClusterRoles then ClusterRoleBindings, each with upstream's
/// label and annotation, aggregated roles with their rules filled in.
pub fn bootstrap_policy() -> Result<Vec<(&'static str, Value)>, ApiError> {
    let doc: Value = serde_yaml::from_str(include_str!("rbac-bootstrap.yaml"))
        .map_err(|e| ApiError::Setup(format!("the bootstrap RBAC policy does not parse: {e}")))?;
    let mark = |mut o: Value, kind: &str| {
        o["apiVersion"] = json!(format!("{GROUP}/v1"));
        o["kind"] = json!(kind);
        let meta = &mut o["metadata"];
        meta["labels"]["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
        meta["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] = json!("true");
        o
    };
    let roles: Vec<Value> = strs_values(doc.get("clusterRoles"))
        .iter()
        .map(|r| mark(r.clone(), "ClusterRole"))
        .collect();
    let mut out = Vec::new();
    for r in &roles {
        let mut r = r.clone();
        if r.get("aggregationRule").is_some() {
            r["rules"] = json!(aggregated_rules(&r, &roles, 0));
        }
        out.push(("clusterroles", r));
    }
    for b in strs_values(doc.get("clusterRoleBindings")) {
        out.push(("clusterrolebindings", mark(b.clone(), "ClusterRoleBinding")));
    }
    Ok(out)
}

/// The rules the Node authorizer grants every node: those of the bootstrap policy's
/// `system:node` ClusterRole (upstream's `NodeRules()`), fixed at start as upstream's.
fn node_rules() -> Result<Vec<Value>, ApiError> {
    Ok(bootstrap_policy()?
        .into_iter()
        .find(|(kind, r)| *kind == "clusterroles" && str_of(r, "/metadata/name") == "system:node")
        .map(|(_, r)| strs_values(r.get("rules")).to_vec())
        .unwrap_or_default())
}

/// Creates the bootstrap policy's objects that do not exist (an object a user changed
/// or deleted... is left as the user has it while it exists; upstream would reconcile
/// autoupdate ones, capstan only fills in what is missing).
pub async fn bootstrap(reg: &Registry) -> Result<(), ApiError> {
    // Recorded as kube-apiserver's, as upstream's bootstrap objects are.
    let opts = crate::registry::WriteOptions::internal(
        "kube-apiserver",
        crate::registry::FieldValidation::Strict,
    );
    for (plural, obj) in bootstrap_policy()? {
        let Some(rt) = rbac_rt(plural) else { continue };
        match reg.create(rt, None, &obj, opts.clone()).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Answers a SelfSubjectAccessReview or SelfSubjectRulesReview `body` for `user`: the
/// object as sent, with its `status` filled in.
pub async fn review(
    authz: &Authorizer,
    rt: &ResourceType,
    user: &UserInfo,
    body: &Value,
) -> Result<Value, ApiError> {
    let (mut obj, _) = rt
        .decode(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding {}: {e}", rt.kind)))?;
    if obj.get("metadata").is_none_or(Value::is_null) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    match rt.kind {
        "SelfSubjectAccessReview" => {
            let res = obj
                .pointer("/spec/resourceAttributes")
                .filter(|v| !v.is_null());
            let non = obj
                .pointer("/spec/nonResourceAttributes")
                .filter(|v| !v.is_null());
            let info = match (res, non) {
                (Some(r), None) => RequestInfo {
                    resource_request: true,
                    verb: str_of(r, "/verb").into(),
                    api_group: str_of(r, "/group").into(),
                    api_version: str_of(r, "/version").into(),
                    namespace: str_of(r, "/namespace").into(),
                    resource: str_of(r, "/resource").into(),
                    subresource: str_of(r, "/subresource").into(),
                    name: str_of(r, "/name").into(),
                    path: String::new(),
                },
                (None, Some(n)) => RequestInfo {
                    verb: str_of(n, "/verb").into(),
                    path: str_of(n, "/path").into(),
                    ..Default::default()
                },
                (res, _) => {
                    return Err(ApiError::Invalid {
                        kind: rt.kind.into(),
                        group: rt.group.into(),
                        name: String::new(),
                        causes: vec![(
                            "spec.resourceAttributes".into(),
                            format!(
                                "Invalid value: \"{}\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                                if res.is_some() { "{...}" } else { "null" }
                            ),
                        )],
                    })
                }
            };
            obj["status"] = match authz.authorize(user, &info).await {
                Decision::Allow(reason) => {
                    let mut s = json!({"allowed": true});
                    if !reason.is_empty() {
                        s["reason"] = json!(reason);
                    }
                    s
                }
                Decision::NoOpinion(reason) => {
                    let mut s = json!({"allowed": false});
                    if !reason.is_empty() {
                        s["reason"] = json!(reason);
                    }
                    s
                }
            };
        }
        "SelfSubjectRulesReview" => {
            let ns = str_of(&obj, "/spec/namespace").to_string();
            let (rules, errors) = if user.groups.iter().any(|g| g == MASTERS) {
                // Masters' powers come from their group, not a rule; upstream lists the
                // rules of their bindings (cluster-admin's), which say the same.
                let all = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
                let urls = json!({"nonResourceURLs": ["*"], "verbs": ["*"]});
                let (mut rules, errors) = authz.rules_for(user, &ns).await;
                for r in [all, urls] {
                    if !rules.contains(&r) {
                        rules.push(r);
                    }
                }
                (rules, errors)
            } else {
                authz.rules_for(user, &ns).await
            };
            let mut resource_rules = Vec::new();
            let mut non_resource_rules = Vec::new();
            for r in &rules {
                let list = |f: &str| strs(r, f).collect::<Vec<_>>();
                if strs(r, "resources").next().is_some() {
                    let mut rr = json!({"verbs": list("verbs"), "apiGroups": list("apiGroups"), "resources": list("resources")});
                    let names = list("resourceNames");
                    if !names.is_empty() {
                        rr["resourceNames"] = json!(names);
                    }
                    resource_rules.push(rr);
                }
                if strs(r, "nonResourceURLs").next().is_some() {
                    non_resource_rules.push(
                        json!({"verbs": list("verbs"), "nonResourceURLs": list("nonResourceURLs")}),
                    );
                }
            }
            let mut status = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": !errors.is_empty(),
            });
            if !errors.is_empty() {
                status["evaluationError"] = json!(aggregate(&errors));
            }
            obj["status"] = status;
        }
        _ => return Err(ApiError::MethodNotAllowed),
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_info_reads_paths_as_upstream() {
        let i = request_info(&Method::GET, "/api/v1/namespaces/default/pods", &q(&[]));
        assert_eq!(
            (i.verb.as_str(), i.namespace.as_str(), i.resource.as_str()),
            ("list", "default", "pods")
        );
        let i = request_info(
            &Method::GET,
            "/api/v1/namespaces/default/pods",
            &q(&[("watch", "true"), ("fieldSelector", "metadata.name=web")]),
        );
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("watch", "web"));
        let i = request_info(
            &Method::GET,
            "/api/v1/namespaces/default/pods/web/log",
            &q(&[]),
        );
        assert_eq!(
            (i.verb.as_str(), i.name.as_str(), i.subresource.as_str()),
            ("get", "web", "log")
        );
        let i = request_info(
            &Method::PUT,
            "/apis/apps/v1/namespaces/x/deployments/d/scale",
            &q(&[]),
        );
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group.as_str(),
                i.subresource.as_str()
            ),
            ("update", "apps", "scale")
        );
        let i = request_info(&Method::DELETE, "/api/v1/namespaces/x/pods", &q(&[]));
        assert_eq!(i.verb, "deletecollection");
        let i = request_info(&Method::GET, "/api/v1/namespaces/team", &q(&[]));
        assert_eq!(
            (i.resource.as_str(), i.name.as_str(), i.namespace.as_str()),
            ("namespaces", "team", "team")
        );
        let i = request_info(&Method::GET, "/api/v1/watch/namespaces/x/pods", &q(&[]));
        assert_eq!((i.verb.as_str(), i.namespace.as_str()), ("watch", "x"));
        for p in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/openapi/v3",
            "/metrics",
        ] {
            let i = request_info(&Method::GET, p, &q(&[]));
            assert!(!i.resource_request, "{p}");
            assert_eq!(i.verb, "get");
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let info = |verb: &str, resource: &str, sub: &str, name: &str| RequestInfo {
            resource_request: true,
            verb: verb.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get", "list"]});
        assert!(rule_allows(&info("list", "pods", "", ""), &rule));
        assert!(!rule_allows(&info("create", "pods", "", ""), &rule));
        assert!(!rule_allows(&info("get", "pods", "log", "p"), &rule));
        assert!(rule_allows(&info("get", "nodes", "status", "n"), &rule));
        let named = json!({"apiGroups": ["*"], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["*"]});
        assert!(rule_allows(&info("get", "configmaps", "", "a"), &named));
        assert!(!rule_allows(&info("get", "configmaps", "", "b"), &named));
        assert!(!rule_allows(&info("list", "configmaps", "", ""), &named));
        let urls = json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]});
        let path = |p: &str| RequestInfo {
            verb: "get".into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(rule_allows(&path("/apis/apps/v1"), &urls));
        assert!(rule_allows(&path("/version"), &urls));
        assert!(!rule_allows(&path("/metrics"), &urls));
    }

    #[test]
    fn forbidden_messages_are_upstreams() {
        let user = UserInfo {
            name: "system:serviceaccount:default:default".into(),
            groups: vec![],
        };
        let list = request_info(&Method::GET, "/api/v1/namespaces/default/pods", &q(&[]));
        let e = forbidden(&user, &list, "");
        assert_eq!(e.to_string(), "pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"");
        assert_eq!(e.status()["details"], json!({"kind": "pods"}));
        let node = request_info(&Method::GET, "/api/v1/nodes/n1", &q(&[]));
        let e = forbidden(&user, &node, "");
        assert_eq!(e.to_string(), "nodes \"n1\" is forbidden: User \"system:serviceaccount:default:default\" cannot get resource \"nodes\" in API group \"\" at the cluster scope");
        let scale = request_info(
            &Method::PATCH,
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            &q(&[]),
        );
        let e = forbidden(
            &user,
            &scale,
            "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found",
        );
        assert_eq!(e.to_string(), "deployments.apps \"d\" is forbidden: User \"system:serviceaccount:default:default\" cannot patch resource \"deployments/scale\" in API group \"apps\" in the namespace \"a\": RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found");
        assert_eq!(
            e.status()["details"],
            json!({"group": "apps", "kind": "deployments", "name": "d"})
        );
        let path = request_info(&Method::GET, "/metrics", &q(&[]));
        let e = forbidden(&user, &path, "");
        assert_eq!(
            e.to_string(),
            "forbidden: User \"system:serviceaccount:default:default\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn escalation_is_judged_by_rule_coverage() {
        let held = vec![
            json!({"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get", "list"]}),
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["*"]}),
        ];
        let ok = json!({"apiGroups": [""], "resources": ["pods", "deployments/status"], "verbs": ["get"]});
        assert!(uncovered(&held, &[ok]).is_empty());
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get", "delete"]});
        assert!(uncovered(&held, &[named]).is_empty());
        let all_cms = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]});
        assert_eq!(uncovered(&held, &[all_cms]).len(), 1);
        let more = json!({"apiGroups": ["", "apps"], "resources": ["pods"], "verbs": ["create", "delete", "get"]});
        let missing = uncovered(&held, &[more]);
        let lines: Vec<String> = compact(&missing).iter().map(compact_string).collect();
        assert_eq!(
            lines,
            vec![
                r#"{APIGroups:[""], Resources:["pods"], Verbs:["create" "delete"]}"#,
                r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["create" "delete" "get"]}"#,
            ]
        );
    }

    #[test]
    fn bootstrap_aggregates_view_into_edit_into_admin() {
        let policy = bootstrap_policy().unwrap_or_else(|e| panic!("{e}"));
        let role = |n: &str| {
            policy
                .iter()
                .find(|(p, o)| *p == "clusterroles" && str_of(o, "/metadata/name") == n)
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| panic!("no {n}"))
        };
        let can = |role: &Value, verb: &str, group: &str, resource: &str| {
            let info = RequestInfo {
                resource_request: true,
                verb: verb.into(),
                api_group: group.into(),
                resource: resource.into(),
                namespace: "x".into(),
                ..Default::default()
            };
            strs_values(role.get("rules"))
                .iter()
                .any(|r| rule_allows(&info, r))
        };
        let (view, edit, admin) = (role("view"), role("edit"), role("admin"));
        assert!(can(&view, "list", "", "pods") && !can(&view, "create", "", "pods"));
        assert!(!can(&view, "get", "", "secrets"));
        assert!(can(&edit, "create", "", "pods") && can(&edit, "list", "", "pods"));
        assert!(!can(&edit, "create", GROUP, "rolebindings"));
        assert!(
            can(&admin, "create", GROUP, "rolebindings")
                && can(&admin, "delete", "apps", "deployments")
        );
        assert_eq!(
            view["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        let public = role("system:public-info-viewer");
        let healthz = RequestInfo {
            verb: "get".into(),
            path: "/healthz".into(),
            ..Default::default()
        };
        assert!(strs_values(public.get("rules"))
            .iter()
            .any(|r| rule_allows(&healthz, r)));
    }
}
