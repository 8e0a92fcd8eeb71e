//! The object lifecycle kube-apiserver's generic registry implements, over the store:
//! create (names, uid, timestamps, defaults), update and patch under optimistic
//! concurrency, status subresources, graceful deletion with finalizers, lists with
//! selectors and pagination. Every create, update and patch records its manager in
//! `metadata.managedFields`, and server-side apply goes through the field manager
//! (`managed`).

use base64::Engine;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::managed;
use crate::patch::{self, PatchType};
use crate::resources::{self, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::storage::{Claimed, Reclaimed, Store, Stored, Written};

/// How unknown fields in a body are treated (`fieldValidation`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<FieldValidation, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}. Valid values are Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Query options of writes, and who is writing.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// `fieldManager`, as the request gave it.
    pub field_manager: Option<String>,
    /// The request's User-Agent, which names the manager when `fieldManager` does not.
    pub user_agent: Option<String>,
    /// `force` (apply patches only), when the request gave it.
    pub force: Option<bool>,
    /// Whether the write is recorded in managedFields: not for what the apiserver
    /// writes on its own account (a pod's binding, as upstream).
    pub track: bool,
    /// The subresource a write of the main object came through (`scale`), for its
    /// managedFields entry; `status` writes say so themselves.
    pub subresource: Option<&'static str>,
}

impl WriteOptions {
    /// Options of a write with no client behind it: `manager` owns what it writes.
    pub fn internal(manager: &str, validation: FieldValidation) -> WriteOptions {
        WriteOptions {
            dry_run: false,
            validation,
            field_manager: Some(manager.to_string()),
            user_agent: None,
            force: None,
            track: true,
            subresource: None,
        }
    }

    /// The manager this write is recorded under.
    fn manager(&self) -> String {
        managed::manager_or_user_agent(self.field_manager.as_deref(), self.user_agent.as_deref())
    }

    /// Upstream's validation of CreateOptions/UpdateOptions/PatchOptions: a
    /// `fieldManager` of printable characters and at most 128 bytes, required for an
    /// apply, and `force` only for an apply.
    fn validate(&self, kind: &str, apply: Option<bool>) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        match apply {
            Some(false) if self.force.is_some() => causes.push((
                "force".to_string(),
                "Forbidden: may not be specified for non-apply patch".to_string(),
            )),
            Some(true) if self.field_manager.as_deref().is_none_or(str::is_empty) => causes.push((
                "fieldManager".to_string(),
                "Required value: is required for apply patch".to_string(),
            )),
            _ => {}
        }
        causes.extend(managed::validate_field_manager(
            self.field_manager.as_deref().unwrap_or(""),
        ));
        if causes.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid {
            kind: kind.into(),
            group: "meta.k8s.io".into(),
            name: String::new(),
            causes,
        })
    }
}

/// The result of a write: the object, warnings for the `Warning` header, and whether it
/// was created (201) rather than updated (200).
pub struct Outcome {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// Query options of list and watch.
#[derive(Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// Options of a delete (`DeleteOptions` body and query).
#[derive(Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// Kinds whose spec changes bump metadata.generation (upstream's strategies that track it).
/// Store keys claiming a Service's cluster IP and node ports (see `Registry::allocate`).
const IP_CLAIMS: &str = "/registry/capstan/serviceips/";
const PORT_CLAIMS: &str = "/registry/capstan/servicenodeports/";

fn ip_claim(ip: &str) -> String {
    format!("{IP_CLAIMS}{ip}")
}

fn port_claim(port: i64) -> String {
    format!("{PORT_CLAIMS}{port}")
}

/// Whether the client's own Service (before allocation) named the claimed IP or port.
fn was_asked_for(obj: &Value, claim: &str) -> bool {
    if let Some(ip) = claim.strip_prefix(IP_CLAIMS) {
        return obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip);
    }
    let port = claim
        .strip_prefix(PORT_CLAIMS)
        .and_then(|p| p.parse::<i64>().ok());
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter()
                .any(|p| p.get("nodePort").and_then(Value::as_i64) == port)
        })
}

/// The claims a stored Service holds, released with it.
fn held_claims(obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if obj.get("kind").and_then(Value::as_str) != Some("Service") {
        return out;
    }
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if !ip.is_empty() && ip != "None" {
            out.push(ip_claim(ip));
        }
    }
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
            let c = port_claim(n);
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

fn tracks_generation(kind: &str) -> bool {
    matches!(kind, "Deployment" | "ReplicaSet" | "Job" | "Ingress")
}

pub struct Registry {
    pub store: Store,
    /// The namespaces' watch cache, once it runs: a create in a namespace the cache
    /// knows to be live needs no store read (upstream's NamespaceLifecycle admission
    /// reads its informer the same way, and the store only when the cache has no word).
    pub namespaces: std::sync::OnceLock<std::sync::Arc<crate::cache::Cache>>,
}

/// Decodes a stored value and stamps the revision that wrote it as its resourceVersion.
pub fn from_stored(s: &Stored) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&s.value)
        .map_err(|e| ApiError::Internal(format!("decoding {}: {e}", s.key)))?;
    set_rv(&mut v, s.mod_revision);
    Ok(v)
}

pub fn set_rv(v: &mut Value, rev: i64) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

fn to_stored(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str, first_alpha: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && (!first_alpha || b[0].is_ascii_lowercase())
}

/// Validates an object name as upstream does for the kind: DNS-1123 labels for
/// namespaces, DNS-1035 labels for services, DNS-1123 subdomains otherwise.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    // RBAC objects need only be path segments (upstream's ValidateRBACName), so names
    // like `system:discovery` are valid.
    let rbac = matches!(
        rt.kind,
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
    );
    let (ok, msg) = match rt.kind {
        _ if rbac => match name {
            "." => (false, "may not be '.'"),
            ".." => (false, "may not be '..'"),
            n if n.contains('/') => (false, "may not contain '/'"),
            n if n.contains('%') => (false, "may not contain '%'"),
            _ => (true, ""),
        },
        "Namespace" => (is_label(name, false), LABEL_MSG),
        "Service" => (is_label(name, true), DNS1035_MSG),
        _ => (
            name.len() <= 253 && name.split('.').all(|p| is_label(p, false)),
            SUBDOMAIN_MSG,
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            "metadata.name",
            format!("Invalid value: \"{name}\": {msg}"),
        ))
    }
}

/// The random suffix of generateName: upstream's alphabet (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A continue token, upstream's format: base64 of
/// `{"v":"meta.k8s.io/v1","rv":<rev>,"start":"<key after prefix>"}`.
fn encode_continue(rev: i64, start: &str) -> String {
    let body = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start});
    base64::engine::general_purpose::STANDARD.encode(body.to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::BadRequest("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into())
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(token))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if rev <= 0 || start.contains("..") {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

impl Registry {
    /// Reads one object.
    pub async fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (cur, _) = self.store.get(&rt.key(ns, name)).await?;
        match cur {
            Some(s) => from_stored(&s),
            None => Err(ApiError::not_found(rt, name)),
        }
    }

    /// Checks that the namespace of a namespaced create exists and is not terminating.
    async fn check_namespace(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let Some(nsrt) = resources::find("", "v1", "namespaces") else {
            return Ok(());
        };
        let key = nsrt.key(None, ns);
        let live = |v: &Value| v.pointer("/metadata/deletionTimestamp").is_none();
        if let Some(true) = self.namespaces.get().and_then(|c| c.peek(&key, live)) {
            return Ok(());
        }
        match self.store.get(&key).await?.0 {
            None => Err(ApiError::not_found(nsrt, ns)),
            Some(s) => {
                let v = from_stored(&s)?;
                if !live(&v) {
                    Err(ApiError::Forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Decodes a request body for `rt`: checks apiVersion/kind, decodes through the typed
    /// struct (unknown fields: dropped, warned or refused), and returns it.
    fn decode_body(
        &self,
        rt: &ResourceType,
        body: &Value,
        validation: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> Result<Value, ApiError> {
        let mut body = body.clone();
        let Some(obj) = body.as_object_mut() else {
            return Err(ApiError::BadRequest(
                "the body of the request must be a JSON object".into(),
            ));
        };
        let want_av = rt.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(av) if av != want_av => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want_av})"
                )))
            }
            _ => {
                obj.insert("apiVersion".into(), json!(want_av));
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            Some(k) if k != rt.kind => {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )))
            }
            _ => {
                obj.insert("kind".into(), json!(rt.kind));
            }
        }
        obj.entry("metadata").or_insert(json!({}));
        // Upstream's wording for a body its decoder refuses.
        let cannot = |detail: String| {
            ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {detail}",
                rt.kind, rt.version, rt.kind
            ))
        };
        let (canonical, unknown) = rt.decode(&body).map_err(cannot)?;
        if !unknown.is_empty() {
            match validation {
                FieldValidation::Strict => {
                    return Err(cannot(format!(
                        "strict decoding error: {}",
                        unknown
                            .iter()
                            .map(|f| format!("unknown field \"{f}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                FieldValidation::Warn => {
                    warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")))
                }
                FieldValidation::Ignore => {}
            }
        }
        Ok(canonical)
    }

    /// Creates an object.
    pub async fn create(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        body: &Value,
        opts: WriteOptions,
    ) -> Result<Outcome, ApiError> {
        opts.validate("CreateOptions", None)?;
        self.create_inner(rt, ns, body, &opts, true).await
    }

    /// The field manager for a write by `opts`'s manager to `rt` (`sub`: its subresource).
    fn writer<'a>(
        rt: &ResourceType,
        api_version: &'a str,
        manager: &'a str,
        sub: &'a str,
    ) -> managed::Writer<'a> {
        managed::Writer {
            kind: rt.kind,
            api_version,
            manager,
            subresource: sub,
            ignore_status: rt.status && sub.is_empty(),
            now: now_rfc3339(),
        }
    }

    /// Creates an object; `track` records the create as the manager's update (an
    /// applied object comes with its managedFields already set).
    async fn create_inner(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        body: &Value,
        opts: &WriteOptions,
        track: bool,
    ) -> Result<Outcome, ApiError> {
        let mut warnings = Vec::new();
        let mut obj = self.decode_body(rt, body, opts.validation, &mut warnings)?;
        let generate = meta_str(&obj, "generateName").map(str::to_string);
        let given = meta_str(&obj, "name")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if given.is_none() && generate.is_none() {
            return Err(ApiError::invalid(
                rt,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
        if rt.namespaced {
            let ns = ns.ok_or_else(|| {
                ApiError::BadRequest("the namespace of the object is required".into())
            })?;
            match meta_str(&obj, "namespace") {
                Some(b) if !b.is_empty() && b != ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ))
                }
                _ => {}
            }
            self.check_namespace(rt, ns, given.as_deref().unwrap_or(""))
                .await?;
        }
        for attempt in 0..8 {
            let name = match (&given, &generate) {
                (Some(n), _) => n.clone(),
                (None, Some(g)) => format!("{g}{}", random_suffix()),
                (None, None) => String::new(),
            };
            validate_name(rt, &name)?;
            let meta = obj
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
            meta.insert("name".into(), json!(name));
            if rt.namespaced {
                meta.insert("namespace".into(), json!(ns.unwrap_or("default")));
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                meta.remove(f);
            }
            if tracks_generation(rt.kind) {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
            if rt.status && rt.kind != "Node" {
                if let Some(o) = obj.as_object_mut() {
                    o.remove("status");
                }
            }
            rt.apply_defaults(&mut obj);
            if track && opts.track {
                // As upstream: after decoding and defaults, before the strategy's and
                // admission's own additions (default tolerations, a Job's selector, a
                // Service's cluster IP), which are nobody's.
                let (av, manager) = (rt.api_version(), opts.manager());
                Self::writer(rt, &av, &manager, opts.subresource.unwrap_or(""))
                    .track_update(None, &mut obj);
            }
            rt.prepare_create(&mut obj);
            // Allocation starts from what the client asked for on every attempt, so a
            // value it picked itself is never replaced, and a random pick that was
            // taken meanwhile is picked again.
            let mut out = obj.clone();
            let claims = Self::allocate(rt, &mut out)?;
            if opts.dry_run {
                return Ok(Outcome {
                    object: out,
                    warnings,
                    created: true,
                });
            }
            match self
                .store
                .create_claiming(&rt.key(ns, &name), to_stored(&out), &claims)
                .await?
            {
                Claimed::Ok(rev) => {
                    set_rv(&mut out, rev);
                    tracing::debug!(resource = rt.plural, namespace = ns, name, rev, "created");
                    return Ok(Outcome {
                        object: out,
                        warnings,
                        created: true,
                    });
                }
                Claimed::Exists(_) if given.is_none() && attempt < 7 => continue,
                Claimed::Exists(_) => return Err(ApiError::already_exists(rt, &name)),
                Claimed::Taken(taken) => {
                    if let Some(c) = taken.iter().find(|c| was_asked_for(&obj, c)) {
                        return Err(Self::claim_taken(&name, &out, c));
                    }
                    continue;
                }
            }
        }
        Err(ApiError::already_exists(rt, ""))
    }

    /// Kind-specific allocation at create: a Service's cluster IP and node ports.
    /// Gives a Service a cluster IP and node ports where it asked for none, and returns
    /// the store keys that claim every IP and port it holds: they are written in the
    /// same transaction as the Service, only if free, so no two Services ever share one
    /// (kube-apiserver keeps allocation bitmaps in etcd for the same reason).
    fn allocate(rt: &ResourceType, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        if rt.kind != "Service" {
            return Ok(Vec::new());
        }
        let ty = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if ty == "ExternalName" {
            return Ok(Vec::new());
        }
        let spec = obj
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::BadRequest("Service spec is required".into()))?;
        let want = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = if want.is_empty() {
            // 10.96.0.0/12 is kube-apiserver's default service CIDR; .1 is the
            // `kubernetes` service's.
            let r = uuid::Uuid::new_v4().as_u128() as u32 % ((1 << 20) - 2) + 2;
            let ip = format!("10.{}.{}.{}", 96 + (r >> 16), (r >> 8) & 0xff, r & 0xff);
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            Some(ip)
        } else {
            spec.entry("clusterIPs").or_insert(json!([want]));
            (want != "None").then_some(want)
        };
        let mut claims: Vec<String> = ip.iter().map(|ip| ip_claim(ip)).collect();
        if ty == "NodePort" || ty == "LoadBalancer" {
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    let port = match p.get("nodePort").and_then(Value::as_i64) {
                        Some(n) => n,
                        None => {
                            // Random, as upstream picks: concurrent creates rarely
                            // collide, and a collision is simply picked again.
                            let n = 30000 + (uuid::Uuid::new_v4().as_u128() % 2768) as i64;
                            p["nodePort"] = json!(n);
                            n
                        }
                    };
                    let claim = port_claim(port);
                    if !claims.contains(&claim) {
                        claims.push(claim);
                    }
                }
            }
            spec.entry("externalTrafficPolicy")
                .or_insert(json!("Cluster"));
        }
        Ok(claims)
    }

    /// A Service update's allocations, as upstream's service REST does them: values the
    /// update leaves out that the Service already had are kept (the cluster IP, and a
    /// port's node port by the port's name) while the type still needs them; values a
    /// new type no longer needs are dropped unless the update changed them; what is
    /// still missing is allocated as on create. Returns the claims to take and those to
    /// release.
    fn reallocate(
        rt: &ResourceType,
        cur: &Value,
        new: &mut Value,
    ) -> Result<(Vec<String>, Vec<String>), ApiError> {
        let ty = |v: &Value| {
            v.pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP")
                .to_string()
        };
        let (old_ty, new_ty) = (ty(cur), ty(new));
        let needs_ip = |t: &str| t != "ExternalName";
        let needs_node_ports = |t: &str| t == "NodePort" || t == "LoadBalancer";
        let node_ports = |v: &Value| -> Vec<(String, Option<i64>)> {
            v.pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        p.get("nodePort").and_then(Value::as_i64),
                    )
                })
                .collect()
        };
        let (old_ports, new_ports) = (node_ports(cur), node_ports(new));
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok((Vec::new(), held_claims(cur)));
        };
        let old_spec = cur.get("spec").cloned().unwrap_or_default();
        if needs_ip(&old_ty) && needs_ip(&new_ty) {
            let empty = |v: Option<&Value>| {
                v.is_none_or(|v| v.is_null() || v == "" || v.as_array().is_some_and(Vec::is_empty))
            };
            for f in ["clusterIP", "clusterIPs"] {
                if empty(spec.get(f)) {
                    if let Some(v) = old_spec.get(f) {
                        spec.insert(f.into(), v.clone());
                    }
                }
            }
        }
        if needs_ip(&old_ty)
            && !needs_ip(&new_ty)
            && spec.get("clusterIP") == old_spec.get("clusterIP")
        {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        let unchanged_node_ports = old_ports.iter().map(|p| p.1).collect::<Vec<_>>()
            == new_ports.iter().map(|p| p.1).collect::<Vec<_>>();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            if needs_node_ports(&old_ty) && needs_node_ports(&new_ty) {
                // A node port the update left out comes back, unless another port now
                // uses it.
                let used: Vec<i64> = new_ports.iter().filter_map(|p| p.1).collect();
                for p in ports.iter_mut() {
                    if p.get("nodePort").and_then(Value::as_i64).is_some() {
                        continue;
                    }
                    let name = p.get("name").and_then(Value::as_str).unwrap_or("");
                    let old = old_ports.iter().find(|(n, _)| n == name).and_then(|o| o.1);
                    if let Some(n) = old.filter(|n| !used.contains(n)) {
                        p["nodePort"] = json!(n);
                    }
                }
            } else if needs_node_ports(&old_ty)
                && !needs_node_ports(&new_ty)
                && unchanged_node_ports
            {
                for p in ports.iter_mut() {
                    if let Some(o) = p.as_object_mut() {
                        o.remove("nodePort");
                    }
                }
            }
        }
        if needs_node_ports(&old_ty)
            && !needs_node_ports(&new_ty)
            && spec.get("externalTrafficPolicy") == old_spec.get("externalTrafficPolicy")
        {
            spec.remove("externalTrafficPolicy");
        }
        let now = Self::allocate(rt, new)?;
        let before = held_claims(cur);
        let claims = now
            .iter()
            .filter(|c| !before.contains(c))
            .cloned()
            .collect();
        let releases = before.into_iter().filter(|c| !now.contains(c)).collect();
        Ok((claims, releases))
    }

    /// The upstream error for a claim the client asked for by value that another
    /// Service holds.
    fn claim_taken(name: &str, obj: &Value, claim: &str) -> ApiError {
        let cause = if let Some(ip) = claim.strip_prefix(IP_CLAIMS) {
            ("spec.clusterIPs".to_string(), format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"))
        } else {
            let port = claim.strip_prefix(PORT_CLAIMS).unwrap_or_default();
            let index = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter().position(|p| {
                        p.get("nodePort")
                            .and_then(Value::as_i64)
                            .map(|n| n.to_string())
                            .as_deref()
                            == Some(port)
                    })
                })
                .unwrap_or(0);
            (
                format!("spec.ports[{index}].nodePort"),
                format!("Invalid value: {port}: provided port is already allocated"),
            )
        };
        ApiError::Invalid {
            kind: "Service".into(),
            group: String::new(),
            name: name.into(),
            causes: vec![cause],
        }
    }

    /// Merges an update into the current object: immutable metadata kept, status kept
    /// (main resource) or taken alone (status subresource), generation bumped on spec
    /// changes.
    fn merge_update(rt: &ResourceType, cur: &Value, mut new: Value, sub: Option<&str>) -> Value {
        if sub == Some("status") {
            let mut out = cur.clone();
            out["status"] = new.get("status").cloned().unwrap_or(json!({}));
            return out;
        }
        if let (Some(nm), Some(cm)) = (
            new.get_mut("metadata").and_then(Value::as_object_mut),
            cur.get("metadata").and_then(Value::as_object),
        ) {
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match cm.get(f) {
                    Some(v) => {
                        nm.insert(f.into(), v.clone());
                    }
                    None => {
                        nm.remove(f);
                    }
                }
            }
        }
        if rt.status {
            if let Some(o) = new.as_object_mut() {
                match cur.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
        }
        rt.apply_defaults(&mut new);
        if tracks_generation(rt.kind) {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("metadata");
                    o.remove("status");
                }
                v
            };
            if strip(cur) != strip(&new) {
                let g = cur
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                new["metadata"]["generation"] = json!(g + 1);
            }
        }
        new
    }

    /// The read-modify-write loop behind update and patch. `f` turns the current object
    /// into the desired body and tells the resourceVersion the client required, if any.
    /// `track` records the write as an update of the manager's; without it the body
    /// comes with its managedFields set (an apply).
    #[allow(clippy::too_many_arguments)]
    async fn update_with<F>(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        opts: &WriteOptions,
        create_missing: bool,
        track: bool,
        f: F,
    ) -> Result<Outcome, ApiError>
    where
        F: Fn(Option<&Value>) -> Result<Value, ApiError>,
    {
        let key = rt.key(ns, name);
        loop {
            let mut warnings = Vec::new();
            let (cur, _) = self.store.get(&key).await?;
            let Some(cur) = cur else {
                if create_missing && sub.is_none() {
                    let body = f(None)?;
                    let given = meta_str(&body, "name").unwrap_or("");
                    if given != name {
                        return Err(ApiError::BadRequest(format!(
                            "the name of the object ({given}) does not match the name on the URL ({name})"
                        )));
                    }
                    return self.create_inner(rt, ns, &body, opts, track).await;
                }
                return Err(ApiError::not_found(rt, name));
            };
            let cur_rev = cur.mod_revision;
            let cur = from_stored(&cur)?;
            let desired = f(Some(&cur))?;
            let want_rv = meta_str(&desired, "resourceVersion")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            match meta_str(&desired, "name") {
                Some(n) if !n.is_empty() && n != name => {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )))
                }
                _ => {}
            }
            if let Some(rv) = &want_rv {
                if rv.parse::<i64>().ok() != Some(cur_rev) {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            let decoded = self.decode_body(rt, &desired, opts.validation, &mut warnings)?;
            let mut new = Self::merge_update(rt, &cur, decoded, sub);
            if track && opts.track {
                let (av, manager) = (rt.api_version(), opts.manager());
                let sub = sub.or(opts.subresource).unwrap_or("");
                Self::writer(rt, &av, &manager, sub).track_update(Some(&cur), &mut new);
            }
            // A Service keeps its cluster IP and node ports across updates that leave
            // them out, gets node ports when it starts needing them, and gives them up
            // when it stops (after the managedFields: allocations are nobody's).
            let (claims, releases) = if rt.kind == "Service" && sub.is_none() {
                let asked = new.clone();
                let (claims, releases) = Self::reallocate(rt, &cur, &mut new)?;
                (Some((asked, claims)), releases)
            } else {
                (None, Vec::new())
            };
            set_rv(&mut new, cur_rev);
            if new == cur {
                return Ok(Outcome {
                    object: cur,
                    warnings,
                    created: false,
                });
            }
            if opts.dry_run {
                return Ok(Outcome {
                    object: new,
                    warnings,
                    created: false,
                });
            }
            let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
            let no_finalizers = new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
            let ns_finalizers = rt.kind == "Namespace"
                && new
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
            let written = if deleting && no_finalizers && !ns_finalizers {
                // The last finalizer of an object being deleted is gone: it goes now.
                self.store
                    .delete_releasing(&key, cur_rev, &held_claims(&cur))
                    .await?
            } else if let Some((asked, claims)) = claims {
                match self
                    .store
                    .update_claiming(&key, to_stored(&new), cur_rev, &claims, &releases)
                    .await?
                {
                    Reclaimed::Ok(rev) => Written::Ok(rev),
                    Reclaimed::Conflict => Written::Conflict(None),
                    Reclaimed::Taken(taken) => {
                        if let Some(c) = taken.iter().find(|c| was_asked_for(&asked, c)) {
                            return Err(Self::claim_taken(name, &new, c));
                        }
                        // A random pick another Service took meanwhile: pick again.
                        continue;
                    }
                }
            } else {
                self.store.update(&key, to_stored(&new), cur_rev).await?
            };
            match written {
                Written::Ok(rev) => {
                    set_rv(&mut new, rev);
                    return Ok(Outcome {
                        object: new,
                        warnings,
                        created: false,
                    });
                }
                Written::Conflict(_) if want_rv.is_none() => continue,
                Written::Conflict(_) => return Err(ApiError::conflict(rt, name)),
            }
        }
    }

    /// Replaces an object (PUT), or its status.
    pub async fn update(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        body: &Value,
        opts: WriteOptions,
    ) -> Result<Outcome, ApiError> {
        opts.validate("UpdateOptions", None)?;
        // Upstream creates on PUT for the kinds whose clients use PUT as upsert.
        let upsert = matches!(rt.kind, "Event" | "Lease" | "Endpoints" | "EndpointSlice");
        self.update_with(rt, ns, name, sub, &opts, upsert, true, |_| Ok(body.clone()))
            .await
    }

    /// Patches an object (or its status) with any of the four patch types.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        ty: PatchType,
        body: &[u8],
        opts: WriteOptions,
    ) -> Result<Outcome, ApiError> {
        opts.validate("PatchOptions", Some(ty == PatchType::Apply))?;
        let bad = |e: String| ApiError::BadRequest(e);
        if ty == PatchType::Apply {
            let config: Value = serde_yaml::from_slice(body)
                .map_err(|e| bad(format!("error decoding YAML: {e}")))?;
            // Server-side apply of an absent object creates it.
            return self.apply(rt, ns, name, sub, config, &opts, true).await;
        }
        let parsed: Option<Value> = match ty {
            PatchType::Json => None,
            _ => Some(
                serde_json::from_slice(body)
                    .map_err(|e| bad(format!("error decoding patch: {e}")))?,
            ),
        };
        self.update_with(rt, ns, name, sub, &opts, false, true, |cur| {
            let Some(cur) = cur else {
                return Ok(Value::Null);
            };
            let mut base = cur.clone();
            // The patch's own resourceVersion, if it has one, is a precondition; the
            // current one is not (the loop retries on conflicts).
            if let Some(m) = base.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            let out = match (&ty, &parsed) {
                (PatchType::Json, _) => patch::json_patch(&base, body),
                (PatchType::Merge, Some(p)) => patch::merge_patch(&base, p),
                (PatchType::StrategicMerge, Some(p)) => {
                    patch::strategic_merge_patch(&base, p, rt.kind)
                }
                _ => Ok(base),
            };
            out.map_err(ApiError::from)
        })
        .await
    }

    /// Server-side apply of `config` by the request's manager (see `managed`): merged
    /// onto the object, fields the manager stopped applying pruned, conflicts with
    /// other managers refused unless forced.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        config: Value,
        opts: &WriteOptions,
        create_missing: bool,
    ) -> Result<Outcome, ApiError> {
        let (av, manager) = (rt.api_version(), opts.manager());
        let subresource = sub.or(opts.subresource).unwrap_or("");
        let force = opts.force.unwrap_or(false);
        self.update_with(rt, ns, name, sub, opts, create_missing, false, |cur| {
            let live = cur.map(|c| {
                let mut base = c.clone();
                if let Some(m) = base.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                base
            });
            let writer = Self::writer(rt, &av, &manager, subresource);
            Ok(writer.apply(live.as_ref(), &config, force)?)
        })
        .await
    }

    /// Server-side apply through the `scale` subresource: the Scale's `spec.replicas`
    /// is applied to the object's, and recorded as an apply of the `scale` subresource.
    pub async fn apply_scale(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        body: &[u8],
        opts: WriteOptions,
    ) -> Result<Outcome, ApiError> {
        opts.validate("PatchOptions", Some(true))?;
        let scale: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
        let av = scale
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = scale.get("kind").and_then(Value::as_str).unwrap_or("");
        if av != "autoscaling/v1" || kind != "Scale" {
            let (group, version) = av.split_once('/').unwrap_or(("", av));
            return Err(ApiError::BadRequest(format!(
                "invalid object type: {group}/{version}, Kind={kind}"
            )));
        }
        let mut config = json!({"apiVersion": rt.api_version(), "kind": rt.kind,
            "metadata": {"name": scale.pointer("/metadata/name").cloned().unwrap_or(json!(name))}});
        if let Some(r) = scale.pointer("/spec/replicas") {
            config["spec"] = json!({"replicas": r});
        }
        let opts = WriteOptions {
            subresource: Some("scale"),
            ..opts
        };
        self.apply(rt, ns, name, None, config, &opts, false).await
    }

    /// Deletes an object: at once, or gracefully (deletionTimestamp) while finalizers or
    /// a pod's grace period remain. Returns the object as last seen and whether it is
    /// gone.
    pub async fn delete(
        &self,
        rt: &'static ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let key = rt.key(ns, name);
        loop {
            let (cur, _) = self.store.get(&key).await?;
            let Some(cur) = cur else {
                return Err(ApiError::not_found(rt, name));
            };
            let cur_rev = cur.mod_revision;
            let obj = from_stored(&cur)?;
            if let Some(uid) = &opts.precondition_uid {
                let have = meta_str(&obj, "uid").unwrap_or("");
                if have != uid {
                    return Err(ApiError::Conflict {
                        resource: rt.qualified(),
                        group: rt.group.into(),
                        name: name.into(),
                        detail: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
                    });
                }
            }
            if let Some(rv) = &opts.precondition_rv {
                if rv.parse::<i64>().ok() != Some(cur_rev) {
                    return Err(ApiError::Conflict {
                        resource: rt.qualified(),
                        group: rt.group.into(),
                        name: name.into(),
                        detail: format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {cur_rev}"),
                    });
                }
            }
            let mut new = obj.clone();
            let mut finalizers: Vec<Value> = new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let extra = match opts.propagation_policy.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                _ => None,
            };
            if let Some(f) = extra {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(json!(f));
                }
            }
            let bound_pod = rt.kind == "Pod"
                && new
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                && !matches!(
                    new.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                );
            let grace = if bound_pod {
                opts.grace_period_seconds
                    .or_else(|| {
                        new.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
            } else {
                0
            };
            let graceful = !finalizers.is_empty() || grace > 0 || rt.kind == "Namespace";
            if graceful {
                if new.pointer("/metadata/deletionTimestamp").is_some() && extra.is_none() {
                    return Ok((obj, false));
                }
                let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
                let meta = new
                    .get_mut("metadata")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| ApiError::Internal("stored object without metadata".into()))?;
                meta.entry("deletionTimestamp").or_insert(json!(
                    when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if !finalizers.is_empty() {
                    meta.insert("finalizers".into(), json!(finalizers));
                }
                if rt.kind == "Namespace" {
                    new["status"]["phase"] = json!("Terminating");
                }
                if opts.dry_run {
                    return Ok((new, false));
                }
                match self.store.update(&key, to_stored(&new), cur_rev).await? {
                    Written::Ok(rev) => {
                        set_rv(&mut new, rev);
                        if rt.kind == "Namespace" {
                            // Creates consult the namespace cache: once this answer is
                            // out, it must already know the namespace is terminating.
                            if let Some(c) = self.namespaces.get() {
                                let _ = c.wait_for(rev).await;
                            }
                        }
                        return Ok((new, false));
                    }
                    Written::Conflict(_) => continue,
                }
            }
            if opts.dry_run {
                return Ok((obj, true));
            }
            match self
                .store
                .delete_releasing(&key, cur_rev, &held_claims(&obj))
                .await?
            {
                Written::Ok(_) => return Ok((obj, true)),
                Written::Conflict(_) => continue,
            }
        }
    }

    /// Lists objects, filtered by selectors, one page at a time when `limit` is set.
    pub async fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Value, ApiError> {
        let prefix = rt.list_prefix(ns);
        let (mut rev, mut start) = match &opts.continue_token {
            Some(t) => {
                let (rev, start) = decode_continue(t)?;
                (rev, Some(format!("{prefix}{start}")))
            }
            None => (self.list_revision(opts).await?, None),
        };
        let limit = opts.limit.max(0);
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let want = if limit > 0 {
                limit - items.len() as i64 + 1
            } else {
                0
            };
            // Filtered pages read more than they need: most keys may not match.
            let want = if filtered && want > 0 {
                want.max(64)
            } else {
                want
            };
            let page = match self.store.list(&prefix, start.as_deref(), rev, want).await {
                Ok(p) => p,
                Err(ApiError::Compacted) if opts.continue_token.is_some() => {
                    let fresh = self.store.revision().await?;
                    let tail = start
                        .as_deref()
                        .and_then(|s| s.strip_prefix(&prefix))
                        .unwrap_or("");
                    return Err(ApiError::ExpiredContinue(encode_continue(fresh, tail)));
                }
                Err(ApiError::Compacted) => {
                    return Err(ApiError::Expired(format!(
                        "too old resource version: {rev}"
                    )))
                }
                Err(e) => return Err(e),
            };
            if rev == 0 {
                rev = page.revision;
            }
            let page_len = page.items.len();
            let mut last_key = None;
            for s in &page.items {
                if limit > 0 && items.len() as i64 == limit {
                    // One more matching object exists past the page: continue from it.
                    next = Some(s.key.clone());
                    break;
                }
                last_key = Some(s.key.clone());
                let v = from_stored(s)?;
                if opts.labels.matches(&v) && opts.fields.matches(&v) {
                    items.push(v);
                }
            }
            if next.is_some() {
                break;
            }
            if !page.more || page_len == 0 {
                break;
            }
            start = last_key.map(|k| format!("{k}\0"));
        }
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if let Some(k) = next {
            let tail = k.strip_prefix(&prefix).unwrap_or(&k).to_string();
            meta["continue"] = json!(encode_continue(rev, &tail));
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }

    /// The revision a list without a continue token reads at: the current one (a
    /// consistent read) unless the client asked for an exact older one; a revision newer
    /// than the store's gets upstream's "too large resource version" after a wait.
    async fn list_revision(&self, opts: &ListOptions) -> Result<i64, ApiError> {
        let requested = match opts.resource_version.as_deref() {
            None | Some("") | Some("0") => return Ok(0),
            Some(rv) => rv
                .parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv}")))?,
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let current = self.store.revision().await?;
            if current >= requested {
                return Ok(if opts.resource_version_match.as_deref() == Some("Exact") {
                    requested
                } else {
                    0
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::TooLargeResourceVersion { requested, current });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_upstream_rules() {
        let rt = |p| resources::find("", "v1", p).unwrap_or_else(|| panic!("{p}"));
        assert!(validate_name(rt("configmaps"), "a.b-c").is_ok());
        assert!(validate_name(rt("configmaps"), "Bad_Name").is_err());
        assert!(validate_name(rt("namespaces"), "a.b").is_err());
        assert!(validate_name(rt("services"), "1abc").is_err());
        assert!(validate_name(rt("services"), "abc-1").is_ok());
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "ns/name\0");
        assert_eq!(
            decode_continue(&t).ok(),
            Some((42, "ns/name\0".to_string()))
        );
        assert!(decode_continue("!!").is_err());
    }

    #[test]
    fn generate_name_suffix_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
