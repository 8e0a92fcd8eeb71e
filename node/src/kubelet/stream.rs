//! `exec`, `attach` and `portForward` on the kubelet server: CRI `Exec`, `Attach` and
//! `PortForward` return a URL on the runtime's streaming server (containerd's, on
//! loopback).
//!
//! - A SPDY/3.1 upgrade (`v4.channel.k8s.io` and its predecessors, which the runtime
//!   speaks itself) is relayed to it byte for byte, as the upstream kubelet proxies
//!   container streams.
//! - A WebSocket asking for `v5.channel.k8s.io` (what kubectl 1.32 tries first) is
//!   served here and carried to the runtime on SPDY ([`super::spdy`]), as
//!   kube-apiserver's stream translator does: containerd 1.6 speaks WebSocket only up to
//!   v4, which has no way to say that stdin ended.

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

/// A runtime call that failed, answered as upstream's streaming server does.
fn runtime_error(e: &tonic::Status) -> Response<Body> {
    status_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &super::cri::grpc_message(e),
    )
}

impl Kubelet {
    /// `exec` (a command in the container: CRI `Exec`) or, with `attach`, `attach` (the
    /// container's own streams: CRI `Attach`); the same streams either way.
    pub(super) async fn remote_command(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        attach: bool,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let opts = ExecOptions::parse(req.uri().query().unwrap_or(""));
        let Some((_, status)) = self.find_pod(ns, name) else {
            return status_error(StatusCode::NOT_FOUND, "pod does not exist");
        };
        if !attach && opts.command.is_empty() {
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
        // A tty merges stderr into stdout: the runtime refuses both.
        let stderr = opts.stderr && !opts.tty;
        let url = if attach {
            rt.attach(api::AttachRequest {
                container_id: id,
                stdin: opts.stdin,
                tty: opts.tty,
                stdout: opts.stdout,
                stderr,
            })
            .await
            .map(|r| r.into_inner().url)
        } else {
            rt.exec(api::ExecRequest {
                container_id: id,
                cmd: opts.command.clone(),
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr,
            })
            .await
            .map(|r| r.into_inner().url)
        };
        let url = match url {
            Ok(u) => u,
            Err(e) => return runtime_error(&e),
        };
        tracing::debug!(namespace = %ns, pod = %name, container, attach, command = ?opts.command, "remote command");
        if wants_websocket_v5(&req) {
            return websocket_exec(&url, &opts, req).await;
        }
        proxy_upgrade(&url, req).await
    }

    /// `portForward`: CRI `PortForward` on the pod's ready sandbox, whose URL speaks
    /// upstream's SPDY `portforward.k8s.io` (each forwarded connection a data and an
    /// error stream), relayed as `exec`'s. A WebSocket upgrade is refused, so kubectl
    /// falls back to SPDY, as it does against a kube-apiserver without WebSocket
    /// port-forwarding.
    pub(super) async fn port_forward(
        &self,
        ns: &str,
        name: &str,
        uid: Option<&str>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let Some((pod, _)) = self.find_pod(ns, name) else {
            return status_error(StatusCode::NOT_FOUND, "pod does not exist");
        };
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        if uid.is_some_and(|u| !u.is_empty() && u != pod_uid) {
            return status_error(StatusCode::NOT_FOUND, "pod not found");
        }
        let websocket = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if websocket {
            return status_error(
                StatusCode::BAD_REQUEST,
                "port-forward over WebSocket is not supported; use SPDY",
            );
        }
        let mut rt = self.runtime.clone();
        let ready = rt
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: HashMap::from([(
                        super::cri::POD_UID.to_string(),
                        pod_uid.clone(),
                    )]),
                    state: Some(api::PodSandboxStateValue {
                        state: api::PodSandboxState::SandboxReady as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner().items);
        let sandbox = match ready {
            Ok(items) => match items.into_iter().max_by_key(|s| s.created_at) {
                Some(s) => s.id,
                None => {
                    return status_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("failed to find sandboxID for pod {name}_{ns}({pod_uid})"),
                    )
                }
            },
            Err(e) => return runtime_error(&e),
        };
        let url = match rt
            .port_forward(api::PortForwardRequest {
                pod_sandbox_id: sandbox,
                port: Vec::new(),
            })
            .await
        {
            Ok(r) => r.into_inner().url,
            Err(e) => return runtime_error(&e),
        };
        tracing::debug!(namespace = %ns, pod = %name, "port-forward");
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

/// The WebSocket protocol served here: kubectl 1.32's, with the close signal that
/// tells the command its stdin ended.
pub const V5: &str = "v5.channel.k8s.io";

/// Whether the caller asked for a WebSocket speaking [`V5`].
pub fn wants_websocket_v5(req: &Request<Incoming>) -> bool {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let v5 = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == V5);
    upgrade && v5
}

/// Opens a SPDY/3.1 remote-command connection (`v4.channel.k8s.io`) to the runtime's
/// streaming server at `url`.
async fn spdy_connect(url: &str) -> Result<hyper::upgrade::Upgraded, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("streaming URL without a host: {url}"))?;
    let tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("dialing the streaming server {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .body(empty())
        .map_err(|e| e.to_string())?;
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "the streaming server refused the upgrade ({code}): {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| e.to_string())
}

/// Serves exec over a WebSocket (`v5.channel.k8s.io`: one byte of channel, then the
/// data; 0 stdin, 1 stdout, 2 stderr, 3 the status, 4 resizes, and `[255, 0]` for
/// the end of stdin), carried to the runtime on SPDY streams.
pub async fn websocket_exec(
    url: &str,
    opts: &ExecOptions,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status_error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    // The runtime first, so its refusal is still an HTTP answer.
    let runtime = match spdy_connect(url).await {
        Ok(r) => r,
        Err(e) => return status_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let client = hyper::upgrade::on(&mut req);
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(V5));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    let opts = opts.clone();
    tokio::spawn(async move {
        match client.await {
            Ok(c) => bridge(c, runtime, opts).await,
            Err(e) => tracing::debug!(error = %e, "exec websocket upgrade failed"),
        }
    });
    r
}

/// SPDY stream ids, in the order client-go opens them (the server waits for exactly
/// the streams the request named).
struct Streams {
    error: u32,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

async fn bridge(
    client: hyper::upgrade::Upgraded,
    runtime: hyper::upgrade::Upgraded,
    opts: ExecOptions,
) {
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
    use tokio_tungstenite::tungstenite::Message;

    use super::spdy;

    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(client),
        Role::Server,
        None,
    )
    .await;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(runtime));
    let mut next = 1u32;
    let mut id = |want: bool| {
        want.then(|| {
            let i = next;
            next += 2;
            i
        })
    };
    let s = Streams {
        error: id(true).unwrap_or(1),
        stdin: id(opts.stdin),
        stdout: id(opts.stdout),
        stderr: id(opts.stderr && !opts.tty),
        resize: id(opts.tty),
    };
    let mut headers = spdy::Headers::default();
    let mut open = Vec::new();
    for (sid, kind) in [
        (Some(s.error), "error"),
        (s.stdin, "stdin"),
        (s.stdout, "stdout"),
        (s.stderr, "stderr"),
        (s.resize, "resize"),
    ] {
        if let Some(sid) = sid {
            open.extend(headers.syn_stream(sid, &[("streamType", kind)]));
        }
    }
    if wr.write_all(&open).await.is_err() {
        return;
    }
    // Frames to the runtime come from both directions (stdin, resizes; PING answers).
    let (frames, mut frames_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = frames_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut to_runtime = {
        let frames = frames.clone();
        let (stdin, resize) = (s.stdin, s.resize);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws_rx.next().await {
                let b = match msg {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let frame = match (b.first(), stdin, resize) {
                    (Some(0), Some(sid), _) => spdy::data(sid, false, &b[1..]),
                    (Some(4), _, Some(sid)) => spdy::data(sid, false, &b[1..]),
                    // The v5 close signal: stdin ended.
                    (Some(255), Some(sid), _) if b.get(1) == Some(&0) => spdy::data(sid, true, &[]),
                    _ => continue,
                };
                if frames.send(frame).await.is_err() {
                    break;
                }
            }
        })
    };
    // The runtime's output, in order, then the status; the status stream's end (or
    // the connection's) ends the exec.
    loop {
        // A caller gone (its WebSocket closed or broken) ends the exec too: dropping
        // the runtime's connection closes the command's streams, so nothing is left
        // running for nobody.
        let frame = tokio::select! {
            f = spdy::read_frame(&mut rd) => match f {
                Ok(Some(f)) => f,
                _ => break,
            },
            _ = &mut to_runtime => break,
        };
        match frame {
            spdy::Frame::Data { stream, fin, data } => {
                let channel = if stream == s.error {
                    3
                } else if Some(stream) == s.stdout {
                    1
                } else if Some(stream) == s.stderr {
                    2
                } else {
                    continue;
                };
                if !data.is_empty() {
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push(channel);
                    m.extend_from_slice(&data);
                    if ws_tx.send(Message::Binary(m.into())).await.is_err() {
                        break;
                    }
                }
                if fin && stream == s.error {
                    break;
                }
            }
            spdy::Frame::Control { kind, payload, .. } => match kind {
                spdy::PING => {
                    let _ = frames.send(spdy::ping(&payload)).await;
                }
                spdy::GOAWAY => break,
                spdy::RST_STREAM if spdy::Frame::control_stream(&payload) == Some(s.error) => break,
                _ => {}
            },
        }
    }
    let _ = ws_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = ws_tx.close().await;
    to_runtime.abort();
    drop(frames);
    let _ = writer.await;
}
