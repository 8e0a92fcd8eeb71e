//! etcd's gRPC gateway: every v3 RPC as `POST /v3/...` with a JSON body, on the client
//! URLs beside gRPC, as etcd serves it for clients without gRPC (`curl`, scripts).
//!
//! The JSON is the proto3 form etcd's gateway writes (grpc-gateway's `OrigName`):
//! field names as in the `.proto`, 64-bit integers as strings, bytes as base64, fields
//! at their default left out. A unary call answers its response; a streaming one (watch,
//! lease keep-alive, snapshot) answers `{"result":...}` objects, one per line, for as
//! long as the call runs. Errors are grpc-gateway's `{"error","code","message"}` with
//! the HTTP status of the gRPC code. `Authorization: <token>` carries an auth token.
//!
//! Each call goes through the same service implementation gRPC uses, so permissions,
//! errors and headers are the same; only the encoding differs. Hand-written because the
//! gateway etcd uses is Go code generated from the `.proto` files' HTTP annotations;
//! there is no Rust counterpart to reuse.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::auth_server::Auth;
use capstan_proto::etcdserverpb::cluster_server::Cluster;
use capstan_proto::etcdserverpb::kv_server::Kv;
use capstan_proto::etcdserverpb::lease_server::Lease;
use capstan_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Request, Status};

use super::{auth, cluster, kv, lease, maintenance, watch, EtcdServer};

/// The services a gateway call reaches.
#[derive(Clone)]
pub struct Gateway {
    pub srv: Arc<EtcdServer>,
    pub watch: watch::WatchService,
}

/// The HTTP status grpc-gateway gives a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// grpc-gateway's error body, its fields in grpc-gateway's order.
fn error_body(s: &Status) -> String {
    let message = quoted(s.message());
    format!(
        r#"{{"error":{message},"message":{message},"code":{}}}"#,
        s.code() as i32
    )
}

/// grpc-gateway's error in a stream: the gRPC and HTTP codes and the message.
fn stream_error(s: &Status) -> String {
    let status = http_status(s.code());
    format!(
        r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{},"http_status":{}}}}}"#,
        s.code() as i32,
        status.as_u16(),
        quoted(s.message()),
        quoted(status.canonical_reason().unwrap_or_default())
    )
}

fn error(s: &Status) -> Response {
    let body = error_body(s);
    (
        http_status(s.code()),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))
}

/// A request as the services take it: the parsed body, and the caller's token as the
/// gRPC metadata etcd reads it from.
fn request<T>(headers: &HeaderMap, body: T) -> Request<T> {
    let mut req = Request::new(body);
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        req.metadata_mut().insert("authorization", token);
    }
    req
}

/// The JSON body as a message; an empty body is the message with every field at its
/// default, as grpc-gateway reads it.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Every JSON object in a streaming call's body, in order.
fn parse_all<T: DeserializeOwned>(body: &[u8]) -> Vec<Result<T, Status>> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .map(|r| r.map_err(|e| Status::invalid_argument(e.to_string())))
        .collect()
}

/// etcd's CORS headers (`--cors`, by default `*`).
pub fn cors(h: &mut HeaderMap) {
    use axum::http::HeaderValue;
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// One unary call: parse, call, answer.
async fn unary<Req, Resp, F, Fut>(headers: &HeaderMap, body: &[u8], call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match parse::<Req>(body) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match call(request(headers, req))
        .await
        .and_then(|r| json(r.get_ref()))
    {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(s) => error(&s),
    }
}

/// A streaming answer: `{"result":...}` per message, one per line; an error ends it
/// with `{"error":...}`, as grpc-gateway's stream forwarding writes them.
fn streamed<S, T>(messages: S) -> Response
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Serialize,
{
    let lines = messages.map(|m| {
        let mut line = match m {
            Ok(v) => serde_json::to_vec(&serde_json::json!({ "result": v })).unwrap_or_default(),
            Err(s) => stream_error(&s).into_bytes(),
        };
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

impl Gateway {
    /// Serves `POST /v3/<method>`, with the CORS headers etcd's default `--cors=*`
    /// puts on every gateway answer.
    pub async fn call_owned(self, method: String, headers: HeaderMap, body: Bytes) -> Response {
        let mut r = self.call(&method, headers, body).await;
        cors(r.headers_mut());
        r
    }

    async fn call(self, path: &str, headers: HeaderMap, body: Bytes) -> Response {
        let srv = self.srv.clone();
        // The learner guard's rule (`learner.rs`), which sees only gRPC paths.
        if srv.is_learner() && !matches!(path, "maintenance/status" | "kv/range") {
            return error(&crate::error::StoreError::NotSupportedForLearner.to_status());
        }
        let kv = kv::KvService { srv: srv.clone() };
        let lease = lease::LeaseService { srv: srv.clone() };
        let cluster = cluster::ClusterService { srv: srv.clone() };
        let maint = maintenance::MaintenanceService { srv: srv.clone() };
        let auth = auth::AuthService { srv: srv.clone() };
        let h = &headers;
        let b = &body[..];
        match path {
            "kv/range" => unary(h, b, |r| kv.range(r)).await,
            "kv/put" => unary(h, b, |r| kv.put(r)).await,
            "kv/deleterange" => unary(h, b, |r| kv.delete_range(r)).await,
            "kv/txn" => unary(h, b, |r| kv.txn(r)).await,
            "kv/compaction" => unary(h, b, |r| kv.compact(r)).await,
            "watch" => {
                let requests = parse_all::<pb::WatchRequest>(b);
                let metadata = request(h, ()).metadata().clone();
                streamed(self.watch.open(metadata, futures::stream::iter(requests)))
            }
            "lease/grant" => unary(h, b, |r| lease.lease_grant(r)).await,
            "lease/revoke" | "kv/lease/revoke" => unary(h, b, |r| lease.lease_revoke(r)).await,
            "lease/timetolive" | "kv/lease/timetolive" => {
                unary(h, b, |r| lease.lease_time_to_live(r)).await
            }
            "lease/leases" | "kv/lease/leases" => unary(h, b, |r| lease.lease_leases(r)).await,
            "lease/keepalive" => {
                let requests = parse_all::<pb::LeaseKeepAliveRequest>(b);
                let answers = futures::stream::iter(requests).then(move |r| {
                    let lease = lease::LeaseService { srv: srv.clone() };
                    async move {
                        match r {
                            Ok(r) => lease.keep_alive_once(r.id).await.map_err(Status::from),
                            Err(s) => Err(s),
                        }
                    }
                });
                streamed(answers)
            }
            "cluster/member/add" => unary(h, b, |r| cluster.member_add(r)).await,
            "cluster/member/remove" => unary(h, b, |r| cluster.member_remove(r)).await,
            "cluster/member/update" => unary(h, b, |r| cluster.member_update(r)).await,
            "cluster/member/list" => unary(h, b, |r| cluster.member_list(r)).await,
            "cluster/member/promote" => unary(h, b, |r| cluster.member_promote(r)).await,
            "maintenance/alarm" => unary(h, b, |r| maint.alarm(r)).await,
            "maintenance/status" => unary(h, b, |r| maint.status(r)).await,
            "maintenance/defragment" => unary(h, b, |r| maint.defragment(r)).await,
            "maintenance/hash" => unary(h, b, |r| maint.hash(r)).await,
            "maintenance/hashkv" => unary(h, b, |r| maint.hash_kv(r)).await,
            "maintenance/transfer-leadership" => unary(h, b, |r| maint.move_leader(r)).await,
            "maintenance/downgrade" => unary(h, b, |r| maint.downgrade(r)).await,
            "maintenance/snapshot" => {
                let req = match parse::<pb::SnapshotRequest>(b) {
                    Ok(r) => r,
                    Err(s) => return error(&s),
                };
                match maint.snapshot(request(h, req)).await {
                    Ok(stream) => streamed(stream.into_inner()),
                    Err(s) => error(&s),
                }
            }
            "auth/enable" => unary(h, b, |r| auth.auth_enable(r)).await,
            "auth/disable" => unary(h, b, |r| auth.auth_disable(r)).await,
            "auth/status" => unary(h, b, |r| auth.auth_status(r)).await,
            "auth/authenticate" => unary(h, b, |r| auth.authenticate(r)).await,
            "auth/user/add" => unary(h, b, |r| auth.user_add(r)).await,
            "auth/user/get" => unary(h, b, |r| auth.user_get(r)).await,
            "auth/user/list" => unary(h, b, |r| auth.user_list(r)).await,
            "auth/user/delete" => unary(h, b, |r| auth.user_delete(r)).await,
            "auth/user/changepw" => unary(h, b, |r| auth.user_change_password(r)).await,
            "auth/user/grant" => unary(h, b, |r| auth.user_grant_role(r)).await,
            "auth/user/revoke" => unary(h, b, |r| auth.user_revoke_role(r)).await,
            "auth/role/add" => unary(h, b, |r| auth.role_add(r)).await,
            "auth/role/get" => unary(h, b, |r| auth.role_get(r)).await,
            "auth/role/list" => unary(h, b, |r| auth.role_list(r)).await,
            "auth/role/delete" => unary(h, b, |r| auth.role_delete(r)).await,
            "auth/role/grant" => unary(h, b, |r| auth.role_grant_permission(r)).await,
            "auth/role/revoke" => unary(h, b, |r| auth.role_revoke_permission(r)).await,
            // grpc-gateway's answer for a path no method binds.
            _ => (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "404 page not found\n",
            )
                .into_response(),
        }
    }
}
