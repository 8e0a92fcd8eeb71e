//! The kubelet's own HTTPS server (`--address`, `--port`, 10250), which the apiserver
//! proxies `pods/log`, `exec`, `attach` and `portforward` to, as upstream's kubelet server:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}`: the container's CRI log file
//!   (`<RFC3339Nano> <stream> <P|F> <message>` lines, written by containerd) turned back
//!   into the container's output, with `follow`, `previous`, `timestamps`, `tailLines`,
//!   `sinceSeconds`, `sinceTime` and `limitBytes`;
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=...`: CRI `Exec` gives a URL
//!   on the runtime's streaming server, and the caller's upgrade (SPDY/3.1) is relayed
//!   to it byte for byte, as the kubelet proxies streams; a WebSocket upgrade speaking
//!   `v5.channel.k8s.io` is served here ([`super::stream`]), on SPDY to the runtime;
//! - `GET|POST /attach/{namespace}/{pod}/{container}`: the same with CRI `Attach`;
//! - `GET|POST /portForward/{namespace}/{pod}[/{uid}]`: CRI `PortForward` on the pod's
//!   sandbox, its SPDY upgrade relayed the same way.
//!
//! Only callers with a client certificate signed by the cluster CA (the one in the
//! kubelet's kubeconfig) get in: the apiserver has one for talking to kubelets.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capstan_proto::cri as api;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Kubelet;
use crate::NodeError;

/// A response body: whole, or streamed (logs).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How often a followed log file is read again for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The TLS config: a self-signed serving certificate for the node's name and address
/// (the apiserver does not verify kubelet serving certificates unless told to, as
/// upstream's), and client certificates required and verified against `ca` (DER).
pub fn tls_config(
    ca: &[Vec<u8>],
    node_name: &str,
    node_ip: IpAddr,
) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| NodeError::Serve(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots
            .add(CertificateDer::from(c.clone()))
            .map_err(|e| bad("cluster CA", &e))?;
    }
    if roots.is_empty() {
        return Err(NodeError::Serve(
            "the kubeconfig names no certificate authority to verify clients with".into(),
        ));
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad("client verifier", &e))?;
    let cert = rcgen::generate_simple_self_signed(vec![node_name.to_string(), node_ip.to_string()])
        .map_err(|e| bad("serving certificate", &e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| bad("tls", &e))?;
    Ok(Arc::new(cfg))
}

/// Binds the server; an address in use is the caller's to report.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Serve(format!("listening on {addr}: {e}")))
}

/// Serves connections until the process stops.
pub(super) async fn serve(
    k: Arc<Kubelet>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet server: accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let k = k.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "kubelet server: TLS handshake refused");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let k = k.clone();
                async move { Ok::<_, Infallible>(k.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// The query's parameters, in order (`command` repeats).
fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn flag(q: &[(String, String)], name: &str) -> bool {
    q.iter()
        .any(|(k, v)| k == name && matches!(v.as_str(), "1" | "true" | "True" | "TRUE"))
}

fn value<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// What `containerLogs` was asked for (upstream's `PodLogOptions`).
#[derive(Debug, Default, Clone)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    fn parse(q: &[(String, String)]) -> Result<LogOptions, String> {
        let int = |name: &str| -> Result<Option<i64>, String> {
            value(q, name)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("invalid value for {name}: {v:?}"))
                })
                .transpose()
        };
        let mut o = LogOptions {
            follow: flag(q, "follow"),
            previous: flag(q, "previous"),
            timestamps: flag(q, "timestamps"),
            ..Default::default()
        };
        if let Some(n) = int("tailLines")? {
            o.tail_lines = Some(usize::try_from(n).map_err(|_| "tailLines must be >= 0")?);
        }
        if let Some(n) = int("limitBytes")? {
            o.limit_bytes = Some(
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("limitBytes must be > 0")?,
            );
        }
        if let Some(s) = int("sinceSeconds")? {
            if s <= 0 {
                return Err("sinceSeconds must be > 0".into());
            }
            o.since = Some(Utc::now() - chrono::Duration::seconds(s));
        }
        if let Some(t) = value(q, "sinceTime") {
            let t = DateTime::parse_from_rfc3339(t)
                .map_err(|e| format!("invalid sinceTime {t:?}: {e}"))?;
            o.since = Some(t.with_timezone(&Utc));
        }
        Ok(o)
    }
}

/// One line of a CRI log file: `<RFC3339Nano> <stdout|stderr> <P|F> <message>`.
#[derive(Debug, PartialEq)]
pub struct CriLine<'a> {
    pub time: DateTime<Utc>,
    pub stream: &'a str,
    /// `F`: the message ends a line; `P`: a part of a longer line continues.
    pub full: bool,
    pub message: &'a [u8],
}

pub fn parse_cri_line(line: &[u8]) -> Option<CriLine<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let message = parts.next().unwrap_or_default();
    let time = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
    Some(CriLine {
        time,
        stream,
        full: !tag.starts_with(b"P"),
        message,
    })
}

/// Turns CRI log lines into what the container wrote, per the options; counts the
/// bytes given out against `limitBytes`.
pub struct LogWriter {
    opts: LogOptions,
    written: u64,
}

impl LogWriter {
    pub fn new(opts: LogOptions) -> LogWriter {
        LogWriter { opts, written: 0 }
    }

    /// The output of one log line (without its trailing newline), or None for a
    /// line that is filtered out.
    pub fn line(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        let l = parse_cri_line(raw)?;
        if self.opts.since.is_some_and(|s| l.time < s) {
            return None;
        }
        let mut out = Vec::with_capacity(l.message.len() + 32);
        if self.opts.timestamps {
            // Upstream prints nine fraction digits, whatever the runtime wrote.
            out.extend_from_slice(
                l.time
                    .to_rfc3339_opts(SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            out.push(b' ');
        }
        out.extend_from_slice(l.message);
        if l.full {
            out.push(b'\n');
        }
        if let Some(limit) = self.opts.limit_bytes {
            let room = limit.saturating_sub(self.written);
            out.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        }
        self.written += out.len() as u64;
        Some(out)
    }

    /// Whether `limitBytes` has been given out.
    pub fn done(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }
}

/// The complete lines of `buf` (each without its newline), and how many bytes they
/// took; a last line without its newline is left for the next read.
fn complete_lines(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            lines.push(&buf[start..i]);
            start = i + 1;
        }
    }
    (lines, start)
}

impl Kubelet {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method().clone(), segs.as_slice()) {
            (Method::GET, ["containerLogs", ns, pod, container]) => {
                let q = query_pairs(&req);
                self.container_logs(ns, pod, container, &q).await
            }
            (Method::GET | Method::POST, [verb @ ("exec" | "attach"), ns, pod, container]) => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                self.remote_command(&ns, &pod, &container, *verb == "attach", req)
                    .await
            }
            (Method::GET | Method::POST, ["portForward", ns, pod, rest @ ..])
                if rest.len() <= 1 =>
            {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                let uid = rest.first().map(|u| u.to_string());
                self.port_forward(&ns, &pod, uid.as_deref(), req).await
            }
            (Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
            (Method::GET, ["metrics"]) => text(StatusCode::OK, crate::metrics::render_kubelet()),
            _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }

    /// The pod this node runs under that name, and the status the kubelet last wrote
    /// for it (else the API's).
    pub(super) fn find_pod(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<(k8s_openapi::api::core::v1::Pod, Value)> {
        let pod = self
            .pods
            .lock()
            .ok()?
            .values()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name)
            })?
            .clone();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let written = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.get(&uid).and_then(|p| p.written.clone()));
        let status = written
            .or_else(|| {
                pod.status
                    .as_ref()
                    .and_then(|s| serde_json::to_value(s).ok())
            })
            .unwrap_or(Value::Null);
        Some((pod, status))
    }

    async fn container_logs(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        q: &[(String, String)],
    ) -> Response<Body> {
        let opts = match LogOptions::parse(q) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let Some((pod, status)) = self.find_pod(ns, name) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod {name:?} does not exist"),
            );
        };
        if !has_container(&pod, container) {
            return text(
                StatusCode::NOT_FOUND,
                format!("container {container:?} not found in pod {name:?}"),
            );
        }
        let id = match log_container_id(&status, name, container, opts.previous) {
            Ok(id) => id,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let mut rt = self.runtime.clone();
        let log_path = match rt
            .container_status(api::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .status
                .map(|s| s.log_path)
                .unwrap_or_default(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "container {container:?} in pod {name:?} is not available: {}",
                        super::cri::grpc_message(&e)
                    ),
                )
            }
        };
        if log_path.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {name:?} has no log file"),
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let runtime = self.runtime.clone();
        tokio::spawn(stream_log(PathBuf::from(log_path), id, opts, runtime, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let body = StreamBody::new(futures::StreamExt::map(stream, |b| {
            Ok::<_, std::io::Error>(Frame::data(b))
        }));
        let mut r = Response::new(BodyExt::boxed(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}

fn has_container(pod: &k8s_openapi::api::core::v1::Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == name)
            || s.init_containers.iter().flatten().any(|c| c.name == name)
    })
}

/// The runtime's id of the container whose log is asked for, judged on the pod status
/// as upstream's `validateContainerLogStatus`, with its messages.
pub fn log_container_id(
    status: &Value,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<String, String> {
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| status.get(*k).and_then(Value::as_array))
        .flatten();
    let Some(cs) = statuses
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
    else {
        return Err(format!(
            "container {container:?} in pod {pod:?} is not available"
        ));
    };
    let id_of = |v: Option<&Value>| {
        v.and_then(|t| t.get("containerID"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| s.split_once("://").map_or(s, |(_, id)| id).to_string())
    };
    let last = cs.pointer("/lastState/terminated");
    let state = cs.get("state");
    let running = state.and_then(|s| s.get("running"));
    let terminated = state.and_then(|s| s.get("terminated"));
    let waiting = state.and_then(|s| s.get("waiting"));
    let terminated_msg = || format!("container {container:?} in pod {pod:?} is terminated");
    if previous {
        return id_of(last).ok_or_else(|| {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        });
    }
    if running.is_some() {
        return id_of(Some(cs)).ok_or_else(terminated_msg);
    }
    if terminated.is_some() {
        return id_of(terminated)
            .or_else(|| id_of(last))
            .ok_or_else(terminated_msg);
    }
    if last.is_some() {
        return id_of(last).ok_or_else(terminated_msg);
    }
    if let Some(w) = waiting {
        let reason = w.get("reason").and_then(Value::as_str).unwrap_or_default();
        return Err(match reason {
            "ErrImagePull" => format!(
                "container {container:?} in pod {pod:?} is waiting to start: image can't be pulled"
            ),
            "ImagePullBackOff" => format!(
                "container {container:?} in pod {pod:?} is waiting to start: trying and failing to pull image"
            ),
            r => format!("container {container:?} in pod {pod:?} is waiting to start: {r}"),
        });
    }
    Err(format!(
        "container {container:?} in pod {pod:?} is waiting to start - no logs yet"
    ))
}

/// Sends the log's output to `tx`; with `follow`, goes on reading what is appended
/// until the container stops (and its last lines are out) or the reader goes away.
async fn stream_log(
    path: PathBuf,
    container_id: String,
    opts: LogOptions,
    mut runtime: super::cri::Runtime,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let follow = opts.follow;
    let tail = opts.tail_lines;
    let mut w = LogWriter::new(opts);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "container log not readable");
            return;
        }
    };
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).await.is_err() {
        return;
    }
    let mut offset = buf.len() as u64;
    let (lines, used) = complete_lines(&buf);
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    if !send_lines(&mut w, &lines[skip..], &tx).await {
        return;
    }
    let mut pending = buf[used..].to_vec();
    if !follow {
        return;
    }
    let mut checked = tokio::time::Instant::now();
    loop {
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        let mut chunk = Vec::new();
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err()
            || file.read_to_end(&mut chunk).await.is_err()
        {
            return;
        }
        offset += chunk.len() as u64;
        if !chunk.is_empty() {
            pending.extend_from_slice(&chunk);
            let (lines, used) = complete_lines(&pending);
            if !send_lines(&mut w, &lines, &tx).await {
                return;
            }
            pending.drain(..used);
            continue;
        }
        // Nothing new: stop once the container is no longer running (everything it
        // wrote is in the file by then: the runtime closes the log after the exit).
        if checked.elapsed() >= Duration::from_millis(500) {
            checked = tokio::time::Instant::now();
            let running = runtime
                .container_status(api::ContainerStatusRequest {
                    container_id: container_id.clone(),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().status)
                .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32);
            if !running {
                return;
            }
        }
    }
}

/// Sends the output of `lines`; false when the reader is gone or the byte limit met.
async fn send_lines(
    w: &mut LogWriter,
    lines: &[&[u8]],
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> bool {
    let mut out = Vec::new();
    for l in lines {
        if w.done() {
            break;
        }
        if let Some(o) = w.line(l) {
            out.extend_from_slice(&o);
        }
    }
    if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
        return false;
    }
    !w.done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_parse() {
        let l =
            parse_cri_line(b"2026-11-26T17:00:00.5Z stderr F oops: it broke").expect("a CRI line");
        assert_eq!(l.stream, "stderr");
        assert!(l.full);
        assert_eq!(l.message, b"oops: it broke");
        let p = parse_cri_line(b"2026-11-26T17:00:00.5Z stdout P part").expect("partial");
        assert!(!p.full);
        assert_eq!(parse_cri_line(b"garbage"), None);
        let empty = parse_cri_line(b"2026-11-26T17:00:00Z stdout F ").expect("empty message");
        assert_eq!(empty.message, b"");
    }

    #[test]
    fn the_writer_applies_timestamps_since_and_limits() {
        let mut w = LogWriter::new(LogOptions {
            timestamps: true,
            ..Default::default()
        });
        assert_eq!(
            w.line(b"2026-11-26T17:00:00.5Z stdout F hi").expect("line"),
            b"2026-11-26T17:00:00.500000000Z hi\n"
        );
        let mut w = LogWriter::new(LogOptions {
            since: DateTime::parse_from_rfc3339("2026-11-26T17:00:01Z")
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            limit_bytes: Some(5),
            ..Default::default()
        });
        assert_eq!(w.line(b"2026-11-26T17:00:00Z stdout F old"), None);
        assert_eq!(
            w.line(b"2026-11-26T17:00:02Z stdout P ne").expect("part"),
            b"ne"
        );
        assert_eq!(
            w.line(b"2026-11-26T17:00:02Z stdout F wer").expect("rest"),
            b"wer"
        );
        assert!(w.done());
    }

    #[test]
    fn log_status_checks_say_what_upstream_says() {
        let waiting = serde_json::json!({"containerStatuses": [
            {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]});
        assert_eq!(
            log_container_id(&waiting, "p", "c", false),
            Err("container \"c\" in pod \"p\" is waiting to start: ContainerCreating".into())
        );
        assert_eq!(
            log_container_id(&waiting, "p", "c", true),
            Err("previous terminated container \"c\" in pod \"p\" not found".into())
        );
        let restarted = serde_json::json!({"containerStatuses": [
            {"name": "c", "containerID": "containerd://new", "state": {"running": {}},
             "lastState": {"terminated": {"containerID": "containerd://old", "exitCode": 1}}}]});
        assert_eq!(
            log_container_id(&restarted, "p", "c", false),
            Ok("new".into())
        );
        assert_eq!(
            log_container_id(&restarted, "p", "c", true),
            Ok("old".into())
        );
        assert_eq!(
            log_container_id(&restarted, "p", "x", false),
            Err("container \"x\" in pod \"p\" is not available".into())
        );
    }
}
