//! `exec` on the kubelet server: CRI `Exec` returns a URL on the runtime's streaming
//! server (containerd's, on loopback), and the caller's connection upgrade is relayed
//! to it byte for byte, as the upstream kubelet proxies container streams: SPDY/3.1
//! with the `v4.channel.k8s.io` protocol and its predecessors, which the runtime
//! speaks itself.

use std::collections::HashMap;

use capstan_proto::cri as api;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::server::{empty, Body};
use super::Kubelet;

/// What `exec` was asked to run (upstream's `PodExecOptions`).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    pub fn parse(query: &str) -> ExecOptions {
        let mut o = ExecOptions::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let on = matches!(v.as_ref(), "1" | "true" | "True" | "TRUE");
            match k.as_ref() {
                "command" => o.command.push(v.into_owned()),
                "input" | "stdin" => o.stdin = on,
                "output" | "stdout" => o.stdout = on,
                "error" | "stderr" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        o
    }
}

/// An error answered as upstream's streaming server does: a `Status` as JSON.
fn status_error(code: StatusCode, message: &str) -> Response<Body> {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::BAD_REQUEST => "BadRequest",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut r = Response::new(
        http_body_util::Full::new(bytes::Bytes::from(body.to_string()))
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The runtime id of the pod's running container of that name.
fn running_container_id(status: &Value, container: &str) -> Option<String> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| status.get(*k).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
        .filter(|c| c.pointer("/state/running").is_some())
        .and_then(|c| c.get("containerID").and_then(Value::as_str))
        .map(|id| id.split_once("://").map_or(id, |(_, id)| id).to_string())
}

/// Headers of the caller's upgrade request that the runtime must see.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

impl Kubelet {
    pub(super) async fn exec(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
        let Some((_, status)) = self.find_pod(ns, name) else {
            return status_error(StatusCode::NOT_FOUND, "pod does not exist");
        };
        if opts.command.is_empty() {
            return status_error(
                StatusCode::BAD_REQUEST,
                "you must specify at least 1 command",
            );
        }
        let Some(id) = running_container_id(&status, container) else {
            return status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("container not found ({container:?})"),
            );
        };
        let mut rt = self.runtime.clone();
        let url = match rt
            .exec(api::ExecRequest {
                container_id: id,
                cmd: opts.command.clone(),
                tty: opts.tty,
                stdin: opts.stdin,
                // A tty merges stderr into stdout: the runtime refuses both.
                stdout: opts.stdout,
                stderr: opts.stderr && !opts.tty,
            })
            .await
        {
            Ok(r) => r.into_inner().url,
            Err(e) => {
                return status_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &super::cri::grpc_message(&e),
                )
            }
        };
        tracing::debug!(namespace = %ns, pod = %name, container, command = ?opts.command, "exec");
        proxy_upgrade(&url, req).await
    }
}

/// Relays an upgrade request to `url` (the runtime's streaming server, plain HTTP on
/// loopback) and, once it switches protocols, the two connections to each other.
pub async fn proxy_upgrade(url: &str, mut req: Request<Incoming>) -> Response<Body> {
    let internal =
        |e: &dyn std::fmt::Display| status_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    let uri: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return internal(&e),
    };
    let Some(authority) = uri.authority().cloned() else {
        return internal(&format!("streaming URL without a host: {url}"));
    };
    let tcp = match tokio::net::TcpStream::connect(authority.as_str()).await {
        Ok(t) => t,
        Err(e) => return internal(&format!("dialing the streaming server {authority}: {e}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(c) => c,
        Err(e) => return internal(&e),
    };
    tokio::spawn(conn.with_upgrades());
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str());
    for (k, v) in req.headers() {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let out = match out.body(empty()) {
        Ok(r) => r,
        Err(e) => return internal(&e),
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return internal(&e),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut r = Response::new(
            http_body_util::Full::new(body)
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed(),
        );
        *r.status_mut() = code;
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        return r;
    }
    let runtime_upgrade = hyper::upgrade::on(&mut resp);
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let skip: HashMap<&str, ()> = [("content-length", ()), ("date", ())].into();
    for (k, v) in resp.headers() {
        if !skip.contains_key(k.as_str()) {
            r.headers_mut().append(k, v.clone());
        }
    }
    tokio::spawn(async move {
        let (a, b) = match tokio::join!(client_upgrade, runtime_upgrade) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                tracing::debug!(
                    caller = a.is_ok(),
                    runtime = b.is_ok(),
                    "stream upgrade failed"
                );
                return;
            }
        };
        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    r
}
