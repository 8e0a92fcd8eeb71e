//! The HTTP surface: routing of Kubernetes REST paths to the registry, query and body
//! decoding, authentication, content negotiation (JSON, Table) and the watch stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::auth::{Tokens, UserInfo};
use crate::cache::{Cache, CacheWatch};
use crate::discovery;
use crate::error::ApiError;
use crate::patch::PatchType;
use crate::registry::{DeleteOptions, FieldValidation, ListOptions, Registry, WriteOptions};
use crate::resources::{self, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};

/// Request bodies over this are refused, as kube-apiserver does.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of every request.
pub struct App {
    pub registry: Arc<Registry>,
    /// Decides every authenticated request (RBAC over the watch caches).
    pub authorizer: crate::rbac::Authorizer,
    /// The watch cache of every served resource, by store prefix.
    pub caches: HashMap<&'static str, Arc<Cache>>,
    /// Verifies service-account tokens (see `auth::verify_service_account_token`).
    pub sa_public_key: Vec<u8>,
    pub metrics: crate::metrics::Metrics,
    pub tokens: Tokens,
    pub server_address: String,
    /// The client `pods/log` and `pods/exec` reach kubelets with.
    pub kubelets: crate::proxy::KubeletClient,
}

/// The connection upgrade of a request that asked for one (exec's SPDY or WebSocket),
/// taken before the body is.
pub struct Upgrade(Option<hyper::upgrade::OnUpgrade>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Upgrade(
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        ))
    }
}

/// The user a verified TLS client certificate named, set per connection.
#[derive(Clone)]
pub struct Peer(pub Option<UserInfo>);

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/version", get(|| async { Json(discovery::version()) }))
        .merge(crate::health::routes())
        .merge(crate::dashboard::routes())
        .fallback(dispatch)
        .with_state(app)
}

async fn authenticate(
    app: &App,
    peer: Option<&Peer>,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let user = authenticated_user(app, peer, headers).await?;
    Ok(user.authenticated())
}

async fn authenticated_user(
    app: &App,
    peer: Option<&Peer>,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = auth.strip_prefix("Bearer ") {
            let token = token.trim();
            if let Some(user) = app.tokens.user(token) {
                return Ok(user);
            }
            return service_account_user(app, token)
                .await
                .ok_or(ApiError::Unauthorized);
        }
    }
    peer.and_then(|p| p.0.clone()).ok_or(ApiError::Unauthorized)
}

/// A legacy service-account token is good while its signature verifies, its
/// ServiceAccount exists with the uid it names, and its Secret still holds it (so
/// deleting either revokes it), as kube-apiserver's legacy validator checks.
async fn service_account_user(app: &App, token: &str) -> Option<UserInfo> {
    use base64::Engine;
    let claims = crate::auth::verify_service_account_token(&app.sa_public_key, token)?;
    let ns = Some(claims.namespace.as_str());
    let sa_rt = crate::resources::find("", "v1", "serviceaccounts")?;
    let (sa, _) = app
        .registry
        .store
        .get(&sa_rt.key(ns, &claims.service_account))
        .await
        .ok()?;
    let sa = crate::registry::from_stored(&sa?).ok()?;
    if sa.pointer("/metadata/uid").and_then(Value::as_str)
        != Some(claims.service_account_uid.as_str())
    {
        return None;
    }
    let secret_rt = crate::resources::find("", "v1", "secrets")?;
    let (secret, _) = app
        .registry
        .store
        .get(&secret_rt.key(ns, &claims.secret_name))
        .await
        .ok()?;
    let secret = crate::registry::from_stored(&secret?).ok()?;
    let stored = secret.pointer("/data/token").and_then(Value::as_str)?;
    let stored = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .ok()?;
    (stored == token.as_bytes()).then(|| claims.user())
}

fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response();
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = text.parse() {
            resp.headers_mut().append(header::WARNING, h);
        }
    }
    resp
}

async fn dispatch(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    upgrade: Upgrade,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    // Parsed once: the handler serves it, the metrics are labelled by it.
    let routed = route(uri.path(), &app.server_address);
    let labels = match &routed {
        Ok(Route::Resource(t)) => request_labels(&method, &uri, t),
        _ => None,
    };
    let resp = match handle(
        &app,
        peer.as_ref().map(|e| &e.0),
        routed,
        method,
        &uri,
        &headers,
        body,
        upgrade.0,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            if e.code().is_server_error() {
                tracing::warn!(path = uri.path(), error = %e, "request failed");
            }
            e.into_response()
        }
    };
    if let Some([verb, group, version, resource, sub]) = labels {
        let code = resp.status().as_u16().to_string();
        app.metrics
            .requests
            .with_label_values(&[verb, group, version, resource, sub, code.as_str()])
            .inc();
        if verb != "WATCH" {
            app.metrics
                .duration
                .with_label_values(&[verb, group, version, resource, sub])
                .observe(started.elapsed().as_secs_f64());
        }
    }
    resp
}

/// The metric labels of a resource request (upstream's verbs are upper case there).
fn request_labels(method: &Method, uri: &Uri, t: &Target) -> Option<[&'static str; 5]> {
    let watch = t.watch_path
        || uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match (method.as_str(), t.name.is_some()) {
        ("GET", true) => "GET",
        ("GET", false) if watch => "WATCH",
        ("GET", false) => "LIST",
        ("POST", _) => "POST",
        ("PUT", _) => "PUT",
        ("PATCH", _) => "PATCH",
        ("DELETE", true) => "DELETE",
        ("DELETE", false) => "DELETECOLLECTION",
        _ => return None,
    };
    // A stream upgrade is upstream's CONNECT verb.
    let verb = if matches!(t.sub.as_deref(), Some("exec" | "attach" | "portforward")) {
        "CONNECT"
    } else {
        verb
    };
    let sub = match t.sub.as_deref() {
        Some("status") => "status",
        Some("scale") => "scale",
        Some("binding") => "binding",
        Some("finalize") => "finalize",
        Some("log") => "log",
        Some("exec") => "exec",
        Some("attach") => "attach",
        Some("portforward") => "portforward",
        Some(_) => "other",
        None => "",
    };
    Some([verb, t.rt.group, t.rt.version, t.rt.plural, sub])
}

/// A parsed resource path.
struct Target {
    rt: &'static ResourceType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_path: bool,
}

/// Splits `/api/v1/...` or `/apis/{group}/{version}/...` into the parts of a resource
/// request, or answers a discovery document.
enum Route {
    Discovery(Value),
    Resource(Target),
}

fn route(path: &str, server_address: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(Route::Discovery(discovery::api_versions(server_address))),
        ["apis"] => return Ok(Route::Discovery(discovery::api_group_list())),
        ["openapi", "v3"] => return Ok(Route::Discovery(discovery::openapi_v3_index())),
        ["openapi", "v3", rest @ ..] => {
            return discovery::openapi_v3_doc(&rest.join("/"))
                .map(Route::Discovery)
                .ok_or(ApiError::NoRoute)
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => {
            return discovery::api_group(g)
                .map(Route::Discovery)
                .ok_or(ApiError::NoRoute)
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::NoRoute),
    };
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(Route::Discovery)
            .ok_or(ApiError::NoRoute);
    }
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let find = |plural: &str| resources::find(group, version, plural).ok_or(ApiError::NoRoute);
    let s = |x: &&str| Some(x.to_string());
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let rt = find(plural)?;
            match tail {
                [] => Target {
                    rt,
                    ns: s(ns),
                    name: None,
                    sub: None,
                    watch_path,
                },
                [name] => Target {
                    rt,
                    ns: s(ns),
                    name: s(name),
                    sub: None,
                    watch_path,
                },
                [name, sub] => Target {
                    rt,
                    ns: s(ns),
                    name: s(name),
                    sub: s(sub),
                    watch_path,
                },
                _ => return Err(ApiError::NoRoute),
            }
        }
        [plural] => Target {
            rt: find(plural)?,
            ns: None,
            name: None,
            sub: None,
            watch_path,
        },
        [plural, name] => Target {
            rt: find(plural)?,
            ns: None,
            name: s(name),
            sub: None,
            watch_path,
        },
        [plural, name, sub] => Target {
            rt: find(plural)?,
            ns: None,
            name: s(name),
            sub: s(sub),
            watch_path,
        },
        _ => return Err(ApiError::NoRoute),
    };
    if target.rt.namespaced && target.name.is_some() && target.ns.is_none() {
        return Err(ApiError::NoRoute);
    }
    Ok(Route::Resource(target))
}

/// The aggregated discovery version (`v2`, `v2beta1`) the client prefers, if its Accept
/// header names one before plain JSON: kube-apiserver serves the first media type in
/// the client's list that it supports.
fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        if params.first().is_some_and(|t| *t != "application/json") {
            continue;
        }
        let group = params.contains(&"g=apidiscovery.k8s.io");
        let list = params.contains(&"as=APIGroupDiscoveryList");
        if !group && !list && params.len() == 1 {
            return None;
        }
        if group && list {
            if params.contains(&"v=v2") {
                return Some("v2");
            }
            if params.contains(&"v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::TooLarge)
}

/// The object in a request body, as JSON whatever the encoding (JSON, YAML or
/// Kubernetes protobuf); `kind` is the one the endpoint expects, for error messages.
fn parse_object(headers: &HeaderMap, raw: &[u8], kind: &str) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if crate::protobuf::is_protobuf(ct) {
        crate::protobuf::to_json(raw).map_err(|e| ApiError::undecodable(kind, &e, raw))
    } else if ct.contains("yaml") {
        serde_yaml::from_slice(raw)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
    } else if ct.contains("json") || ct.is_empty() {
        serde_json::from_slice(raw)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON: {e}")))
    } else {
        Err(ApiError::UnsupportedMediaType(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ))
    }
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn list_options(q: &HashMap<String, String>, rt: &ResourceType) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            rt.kind,
        )?,
        limit: q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q.get("resourceVersionMatch").cloned(),
    })
}

// One parameter per part of the request, as the extractors give them.
#[allow(clippy::too_many_arguments)]
async fn handle(
    app: &App,
    peer: Option<&Peer>,
    routed: Result<Route, ApiError>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let user = authenticate(app, peer, headers).await?;
    let user = crate::rbac::impersonate(&app.authorizer, user, headers).await?;
    let q: HashMap<String, String> = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(v)| v.into_iter().collect())
        .unwrap_or_default();
    let info = crate::rbac::request_info(&method, uri.path(), &q);
    app.authorizer.check(&user, &info).await?;
    app.authorizer.node_restriction().admit(&user, &info)?;
    if uri.path() == "/metrics" {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            app.metrics.render(),
        )
            .into_response());
    }
    if uri.path() == crate::dashboard::STORE_PATH {
        if method != Method::GET {
            return Err(ApiError::MethodNotAllowed);
        }
        return crate::dashboard::store_status(&app.registry.store).await;
    }
    if method == Method::GET && matches!(uri.path(), "/api" | "/apis") {
        if let Some(version) = wants_aggregated(headers) {
            let doc = discovery::aggregated(uri.path() == "/api", version);
            let mut resp = json_response(StatusCode::OK, &doc, &[]);
            if let Ok(ct) = discovery::aggregated_media_type(version).parse() {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp.headers_mut()
                .insert(header::VARY, header::HeaderValue::from_static("Accept"));
            return Ok(resp);
        }
    }
    let target = match routed? {
        Route::Discovery(v) if method == Method::GET => {
            return Ok(json_response(StatusCode::OK, &v, &[]))
        }
        Route::Discovery(_) => return Err(ApiError::MethodNotAllowed),
        Route::Resource(t) => t,
    };
    let reg = &app.registry;
    let rt = target.rt;
    let ns = target.ns.as_deref();
    let wopts = WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        field_manager: q.get("fieldManager").cloned(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        // Go's strconv.ParseBool, as upstream decodes query booleans.
        force: q
            .get("force")
            .map(|f| matches!(f.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")),
        track: true,
        subresource: None,
    };
    let table = wants_table(headers);
    if let Some(io) = q.get("includeObject") {
        if !crate::table::is_valid_include_object(io) {
            return Err(ApiError::BadRequest(format!(
                "unrecognized includeObject value: {io:?}"
            )));
        }
    }
    let render_one = |obj: Value| -> Response {
        if table {
            let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
            let t = crate::table::to_table(
                rt.kind,
                &[obj],
                q.get("includeObject")
                    .map(String::as_str)
                    .unwrap_or("Metadata"),
                meta,
                chrono::Utc::now(),
            );
            json_response(StatusCode::OK, &t, &[])
        } else {
            json_response(StatusCode::OK, &obj, &[])
        }
    };
    match (
        method.clone(),
        target.name.as_deref(),
        target.sub.as_deref(),
    ) {
        (Method::POST, None, None) if !rt.stored() => {
            let raw = read_body(body).await?;
            let obj = parse_object(headers, &raw, rt.kind)?;
            let out = crate::rbac::review(&app.authorizer, rt, &user, &obj).await?;
            Ok(json_response(StatusCode::CREATED, &out, &[]))
        }
        _ if !rt.stored() => Err(ApiError::MethodNotAllowed),
        (Method::GET, None, None) => {
            let lopts = list_options(&q, rt)?;
            let cache = app.caches.get(rt.prefix).ok_or(ApiError::NoRoute)?;
            if target.watch_path || flag(&q, "watch") {
                let resume = match lopts.resource_version.as_deref() {
                    None | Some("") | Some("0") => None,
                    Some(rv) => Some(rv.parse::<i64>().map_err(|_| {
                        ApiError::BadRequest(format!("invalid resource version: {rv}"))
                    })?),
                };
                let w = CacheWatch {
                    namespace: target.ns.clone(),
                    opts: lopts,
                    allow_bookmarks: flag(&q, "allowWatchBookmarks"),
                    send_initial_events: flag(&q, "sendInitialEvents"),
                    timeout: q
                        .get("timeoutSeconds")
                        .and_then(|t| t.parse().ok())
                        .map(Duration::from_secs),
                    table: table.then(|| {
                        q.get("includeObject")
                            .cloned()
                            .unwrap_or_else(|| "Metadata".into())
                    }),
                };
                let timeout = w.timeout;
                let rx = cache.watch(w, resume).await?;
                let watchers = app
                    .metrics
                    .watchers
                    .with_label_values(&[rt.group, rt.version, rt.kind]);
                watchers.inc();
                let guard = WatcherCount(watchers);
                // The response ends at timeoutSeconds; dropping the receiver then
                // unregisters the watcher.
                let end = async move {
                    match timeout {
                        Some(t) => tokio::time::sleep(t).await,
                        None => std::future::pending().await,
                    }
                };
                let stream = futures::StreamExt::take_until(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    end,
                );
                let body = Body::from_stream(futures::StreamExt::map(stream, move |b| {
                    let _counted = &guard;
                    Ok::<_, std::convert::Infallible>(b)
                }));
                return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
            }
            let (items, meta) = match list_cached(reg, cache, rt, ns, &lopts).await? {
                Listed::Cached(items, rev) if !table => {
                    return Ok(cached_list_response(rt, &items, rev));
                }
                Listed::Cached(items, rev) => (
                    items.iter().map(|c| c.obj.clone()).collect(),
                    json!({"resourceVersion": rev.to_string()}),
                ),
                Listed::Store(list) if !table => {
                    return Ok(json_response(StatusCode::OK, &list, &[]));
                }
                Listed::Store(mut list) => (
                    match list.get_mut("items").map(Value::take) {
                        Some(Value::Array(items)) => items,
                        _ => Vec::new(),
                    },
                    list.get("metadata").cloned().unwrap_or(json!({})),
                ),
            };
            let t = crate::table::to_table(
                rt.kind,
                &items,
                q.get("includeObject")
                    .map(String::as_str)
                    .unwrap_or("Metadata"),
                meta,
                chrono::Utc::now(),
            );
            Ok(json_response(StatusCode::OK, &t, &[]))
        }
        (Method::GET, Some(name), None) => Ok(render_one(reg.get(rt, ns, name).await?)),
        (Method::GET, Some(name), Some("status")) if rt.status => {
            Ok(render_one(reg.get(rt, ns, name).await?))
        }
        (Method::GET, Some(name), Some("scale")) if rt.scale => Ok(json_response(
            StatusCode::OK,
            &to_scale(rt, &reg.get(rt, ns, name).await?),
            &[],
        )),
        (Method::POST, None, None) => {
            let raw = read_body(body).await?;
            let obj = parse_object(headers, &raw, rt.kind)?;
            app.authorizer
                .node_restriction()
                .admit_create(&user, rt.group, rt.plural, &obj)?;
            app.authorizer
                .confirm_no_escalation(&user, rt, ns, &obj)
                .await?;
            let out = reg.create(rt, ns, &obj, wopts).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &out.object,
                &out.warnings,
            ))
        }
        (Method::POST, Some(name), Some("binding")) if rt.kind == "Pod" => {
            let raw = read_body(body).await?;
            let b = parse_object(headers, &raw, "Binding")?;
            let node = b
                .pointer("/target/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if node.is_empty() {
                return Err(ApiError::invalid(rt, name, "target.name", "Required value"));
            }
            let pod = reg.get(rt, ns, name).await?;
            if let Some(cur) = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    group: String::new(),
                    name: name.into(),
                    detail: format!("pod {name} is already assigned to node \"{cur}\""),
                });
            }
            let patch = json!({"spec": {"nodeName": node}}).to_string();
            // The binding is the apiserver's write, not the scheduler's: upstream records
            // no manager for it.
            let wopts = WriteOptions {
                track: false,
                ..wopts
            };
            reg.patch(
                rt,
                ns,
                name,
                None,
                PatchType::Merge,
                patch.as_bytes(),
                wopts,
            )
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                &[],
            ))
        }
        (Method::GET, Some(name), Some("log")) if rt.kind == "Pod" => {
            crate::proxy::pod_log(reg, &app.kubelets, ns.unwrap_or_default(), name, uri).await
        }
        (
            Method::GET | Method::POST,
            Some(name),
            Some(sub @ ("exec" | "attach" | "portforward")),
        ) if rt.kind == "Pod" => {
            let kind = match sub {
                "exec" => crate::proxy::PodStream::Exec,
                "attach" => crate::proxy::PodStream::Attach,
                _ => crate::proxy::PodStream::PortForward,
            };
            crate::proxy::pod_stream(
                app,
                kind,
                ns.unwrap_or_default(),
                name,
                method.clone(),
                uri,
                headers,
                upgrade,
            )
            .await
        }
        (Method::PUT, Some(name), sub @ (None | Some("status") | Some("finalize"))) => {
            if sub == Some("status") && !rt.status
                || sub == Some("finalize") && rt.kind != "Namespace"
            {
                return Err(ApiError::NoRoute);
            }
            let raw = read_body(body).await?;
            let obj = parse_object(headers, &raw, rt.kind)?;
            let obj = if sub == Some("finalize") {
                finalize_body(&obj)
            } else {
                obj
            };
            app.authorizer
                .confirm_no_escalation(&user, rt, ns, &obj)
                .await?;
            let out = reg
                .update(rt, ns, name, sub.filter(|s| *s == "status"), &obj, wopts)
                .await?;
            let code = if out.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &out.object, &out.warnings))
        }
        (Method::PUT | Method::PATCH, Some(name), Some("scale")) if rt.scale => {
            let raw = read_body(body).await?;
            let wopts = WriteOptions {
                subresource: Some("scale"),
                ..wopts
            };
            if method == Method::PATCH && patch_type(headers)? == PatchType::Apply {
                let out = reg.apply_scale(rt, ns, name, &raw, wopts).await?;
                return Ok(json_response(
                    StatusCode::OK,
                    &to_scale(rt, &out.object),
                    &[],
                ));
            }
            let cur = reg.get(rt, ns, name).await?;
            let scale = to_scale(rt, &cur);
            let wanted = if method == Method::PUT {
                parse_object(headers, &raw, "Scale")?
            } else {
                let ty = patch_type(headers)?;
                apply_patch_to(&scale, ty, &raw, "Scale")?
            };
            let replicas = wanted
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let mut p = json!({"spec": {"replicas": replicas}});
            if let Some(rv) = wanted
                .pointer("/metadata/resourceVersion")
                .filter(|_| method == Method::PUT)
            {
                p["metadata"] = json!({"resourceVersion": rv});
            }
            let out = reg
                .patch(
                    rt,
                    ns,
                    name,
                    None,
                    PatchType::Merge,
                    p.to_string().as_bytes(),
                    wopts,
                )
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &to_scale(rt, &out.object),
                &[],
            ))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            if sub == Some("status") && !rt.status {
                return Err(ApiError::NoRoute);
            }
            let ty = patch_type(headers)?;
            let raw = read_body(body).await?;
            if rt.group == crate::rbac::GROUP {
                // The escalation check needs the patched role or binding: a dry run.
                let dry = WriteOptions {
                    dry_run: true,
                    ..wopts.clone()
                };
                let preview = reg.patch(rt, ns, name, sub, ty, &raw, dry).await?;
                app.authorizer
                    .confirm_no_escalation(&user, rt, ns, &preview.object)
                    .await?;
            }
            let out = reg.patch(rt, ns, name, sub, ty, &raw, wopts).await?;
            let code = if out.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &out.object, &out.warnings))
        }
        (Method::DELETE, Some(name), None) => {
            let raw = read_body(body).await?;
            let opts = delete_options(&q, headers, &raw)?;
            let (obj, _gone) = reg.delete(rt, ns, name, &opts).await?;
            Ok(json_response(StatusCode::OK, &obj, &[]))
        }
        (Method::DELETE, None, None) => {
            let raw = read_body(body).await?;
            let opts = delete_options(&q, headers, &raw)?;
            let lopts = list_options(&q, rt)?;
            let list = reg.list(rt, ns, &lopts).await?;
            let mut deleted = Vec::new();
            for item in list
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ins = item.pointer("/metadata/namespace").and_then(Value::as_str);
                match reg.delete(rt, ins, name, &opts).await {
                    Ok((obj, _)) => deleted.push(obj),
                    Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let out = json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                "metadata": list.get("metadata").cloned().unwrap_or(json!({})), "items": deleted});
            Ok(json_response(StatusCode::OK, &out, &[]))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Counts a watch in `apiserver_registered_watchers` for as long as its response lives.
struct WatcherCount(prometheus::IntGauge);

impl Drop for WatcherCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A list as read: shared objects of the watch cache, or a list object from the store.
enum Listed {
    Cached(Vec<Arc<crate::cache::Cached>>, i64),
    Store(Value),
}

/// A list from the watch cache when it can serve it (no paging, no exact revision):
/// "0" as it is, unset after the cache caught up to the store's current revision (a
/// consistent read), N after it caught up to N. Paged and exact lists read the store.
async fn list_cached(
    reg: &Registry,
    cache: &Cache,
    rt: &ResourceType,
    ns: Option<&str>,
    lopts: &ListOptions,
) -> Result<Listed, ApiError> {
    let paged = lopts.limit > 0 || lopts.continue_token.is_some();
    let exact = lopts.resource_version_match.as_deref() == Some("Exact");
    if paged || exact {
        return Ok(Listed::Store(reg.list(rt, ns, lopts).await?));
    }
    match lopts.resource_version.as_deref() {
        Some("0") => {}
        None | Some("") => cache.wait_for(reg.store.revision().await?).await?,
        Some(rv) => {
            cache
                .wait_for(
                    rv.parse::<i64>().map_err(|_| {
                        ApiError::BadRequest(format!("invalid resource version: {rv}"))
                    })?,
                )
                .await?
        }
    }
    let (items, rev) = cache.list(&rt.list_prefix(ns), lopts);
    Ok(Listed::Cached(items, rev))
}

/// A list body put together from the cached objects' JSON, each serialised once when
/// it entered the cache, rather than copied and serialised again per list.
fn cached_list_response(
    rt: &ResourceType,
    items: &[Arc<crate::cache::Cached>],
    rev: i64,
) -> Response {
    let head = format!(
        r#"{{"kind":"{}List","apiVersion":"{}","metadata":{{"resourceVersion":"{rev}"}},"items":["#,
        rt.kind,
        rt.api_version()
    );
    let size = head.len() + 2 + items.iter().map(|c| c.json.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    for (i, c) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&c.json);
    }
    body.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(PatchType::from_content_type)
        .ok_or(ApiError::UnsupportedMediaType(
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
        ))
}

fn apply_patch_to(doc: &Value, ty: PatchType, raw: &[u8], kind: &str) -> Result<Value, ApiError> {
    let bad = |e: String| ApiError::BadRequest(e);
    let parsed = |raw: &[u8]| -> Result<Value, ApiError> {
        serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))
    };
    let out = match ty {
        PatchType::Json => crate::patch::json_patch(doc, raw),
        PatchType::Merge => crate::patch::merge_patch(doc, &parsed(raw)?),
        PatchType::StrategicMerge => crate::patch::strategic_merge_patch(doc, &parsed(raw)?, kind),
        // The scale route hands apply patches to the field manager before this.
        PatchType::Apply => {
            return Err(bad(format!(
                "apply patches of a {kind} are applied to the object"
            )))
        }
    };
    Ok(out?)
}

/// The `finalize` subresource changes only `spec.finalizers` of a namespace.
fn finalize_body(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    o
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
fn to_scale(rt: &ResourceType, obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let _ = rt;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn delete_options(
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<DeleteOptions, ApiError> {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::protobuf::is_protobuf);
    let body: Value = if raw.is_empty() {
        json!({})
    } else if protobuf {
        parse_object(headers, raw, "DeleteOptions")?
    } else {
        serde_json::from_slice(raw)
            .map_err(|e| ApiError::BadRequest(format!("error decoding DeleteOptions: {e}")))?
    };
    let grace = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| body.get("gracePeriodSeconds").and_then(Value::as_i64));
    let propagation = q
        .get("propagationPolicy")
        .cloned()
        .or_else(|| {
            body.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(
            || match body.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            },
        );
    if let Some(p) = &propagation {
        if !matches!(p.as_str(), "Foreground" | "Background" | "Orphan") {
            return Err(ApiError::BadRequest(format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    let dry = q.get("dryRun").is_some_and(|d| d == "All")
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|d| d == "All"));
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy: propagation,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: dry,
    })
}
