//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: proxied to the
//! kubelet of the pod's node, as
//! kube-apiserver does. The pod and container are checked here first (upstream's
//! `LogLocation`/`ExecLocation`, with their messages); the kubelet is reached at the
//! node's address (InternalIP, then ExternalIP, then Hostname: kubeadm's
//! `--kubelet-preferred-address-types`) and `daemonEndpoints.kubeletEndpoint.Port`, over
//! TLS with the apiserver's kubelet client certificate. A log streams through as the
//! kubelet writes it; an exec, attach or port-forward upgrade (SPDY or WebSocket) is
//! relayed byte for byte in both directions once the kubelet switched protocols.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use capstan_client::tls::any_server_cert_client;

use crate::error::ApiError;
use crate::registry::Registry;
use crate::resources;

/// How long connecting to a kubelet may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The apiserver's client to kubelets (`--kubelet-client-certificate`/`-key`).
pub struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
}

impl KubeletClient {
    /// A client presenting the certificate and key in these PEM files.
    pub fn new(cert: &Path, key: &Path) -> Result<KubeletClient, ApiError> {
        let bad = |p: &Path, e: &dyn std::fmt::Display| {
            ApiError::Setup(format!("kubelet client certificate {}: {e}", p.display()))
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, &e))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        let cfg = any_server_cert_client()
            .map_err(|e| bad(cert, &e))?
            .with_client_auth_cert(certs, key_der)
            .map_err(|e| bad(cert, &e))?;
        Ok(KubeletClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// Sends `req` to the kubelet at `host:port` on a connection of its own, which
    /// may be upgraded.
    async fn send(
        &self,
        host: &str,
        port: u16,
        req: Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
        let unreachable =
            |e: &dyn std::fmt::Display| ApiError::Internal(format!("error dialing backend: {e}"));
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{host}:{port}"),
        };
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| unreachable(&format!("dial tcp {addr}: i/o timeout")))?
            .map_err(|e| unreachable(&format!("dial tcp {addr}: {e}")))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| unreachable(&format!("{host}: {e}")))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&format!("remote error: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn.with_upgrades());
        sender.send_request(req).await.map_err(|e| unreachable(&e))
    }
}

/// Where a node's kubelet listens.
async fn kubelet_location(reg: &Registry, node_name: &str) -> Result<(String, u16), ApiError> {
    let rt = resources::find("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let node = reg.get(rt, None, node_name).await?;
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| {
            addresses
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
                .and_then(|a| a.get("address").and_then(Value::as_str))
                .filter(|a| !a.is_empty())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "node {node_name:?} has no address to reach its kubelet at"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(10250);
    Ok((host.to_string(), port))
}

fn names(pod: &Value, key: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{key}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The container a request is for, checked against the pod as upstream does.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            let ephemeral = names(pod, "ephemeralContainers");
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}"
            ))),
            several => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    several.join(" ")
                );
                if !init.is_empty() {
                    msg += &format!(" or one of the init containers: [{}]", init.join(" "));
                }
                Err(ApiError::BadRequest(msg))
            }
        },
    }
}

/// A kubelet's error answer, as upstream's generic response checker turns it into a
/// `Status`: the kubelet's code, its body as the message.
async fn kubelet_error(resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    use http_body_util::BodyExt;
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_string();
    // The kubelet's streaming errors are `Status` objects already.
    if let Ok(s) = serde_json::from_slice::<Value>(&body) {
        if let Some(m) = s.get("message").and_then(Value::as_str) {
            message = m.to_string();
        }
    }
    ApiError::Kubelet {
        code: code.as_u16(),
        message,
    }
}

fn pod_rt() -> Result<&'static resources::ResourceType, ApiError> {
    resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)
}

/// `GET pods/{name}/log`.
pub async fn pod_log(
    reg: &Registry,
    kubelets: &KubeletClient,
    ns: &str,
    name: &str,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let q: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let pod = reg.get(pod_rt()?, Some(ns), name).await?;
    let container = pick_container(&pod, name, get("container"))?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if node.is_empty() {
        // Upstream answers an unscheduled pod's log with nothing at all.
        return Ok(Response::new(Body::empty()));
    }
    // Built in a block: the serializer is not Send, so it must not live across an await.
    let params = {
        let mut params = form_urlencoded::Serializer::new(String::new());
        for flag in ["follow", "previous", "timestamps"] {
            if get(flag).is_some_and(|v| v == "true" || v == "1") {
                params.append_pair(flag, "true");
            }
        }
        for p in ["sinceSeconds", "sinceTime", "tailLines", "limitBytes"] {
            if let Some(v) = get(p) {
                params.append_pair(p, v);
            }
        }
        params.finish()
    };
    let (host, port) = kubelet_location(reg, node).await?;
    let path = format!(
        "/containerLogs/{}/{}/{}?{}",
        enc(ns),
        enc(name),
        enc(&container),
        params
    );
    let req = Request::builder()
        .method(Method::GET)
        .uri(&path)
        .header(header::HOST, format!("{host}:{port}"))
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = kubelets.send(&host, port, req).await?;
    if !resp.status().is_success() {
        return Err(kubelet_error(resp).await);
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(out)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Headers of the client's upgrade request that the kubelet must see.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// What a stream upgrade on a pod reaches on its kubelet (upstream's
/// `ExecLocation`, `AttachLocation` and `PortForwardLocation`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PodStream {
    Exec,
    Attach,
    PortForward,
}

/// `GET|POST pods/{name}/exec`, `/attach` and `/portforward`: an upgrade relayed to the
/// kubelet.
#[allow(clippy::too_many_arguments)]
pub async fn pod_stream(
    app: &crate::http::App,
    kind: PodStream,
    ns: &str,
    name: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    let (reg, kubelets) = (&*app.registry, &app.kubelets);
    let q: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let pod = reg.get(pod_rt()?, Some(ns), name).await?;
    let container = match kind {
        PodStream::PortForward => String::new(),
        PodStream::Exec | PodStream::Attach => pick_container(&pod, name, get("container"))?,
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let Some(upgrade) = upgrade else {
        return Err(ApiError::BadRequest("Upgrade request required".to_string()));
    };
    // The kubelet's query: the command in order, the streams as upstream's
    // `streamParams` writes them, the ports of a port-forward.
    // Built in a block: the serializer is not Send, so it must not live across an await.
    let params = {
        let mut params = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &q {
            if k == "command" && kind == PodStream::Exec || k == "ports" {
                params.append_pair(if k == "ports" { "port" } else { k }, v);
            }
        }
        for (flag, kubelet_name) in [
            ("stdin", "input"),
            ("stdout", "output"),
            ("stderr", "error"),
            ("tty", "tty"),
        ] {
            if get(flag).is_some_and(|v| v == "true" || v == "1") {
                params.append_pair(kubelet_name, "1");
            }
        }
        params.finish()
    };
    let (host, port) = kubelet_location(reg, node).await?;
    let path = match kind {
        PodStream::Exec | PodStream::Attach => format!(
            "/{}/{}/{}/{}?{params}",
            if kind == PodStream::Exec {
                "exec"
            } else {
                "attach"
            },
            enc(ns),
            enc(name),
            enc(&container),
        ),
        PodStream::PortForward => format!("/portForward/{}/{}?{params}", enc(ns), enc(name)),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(&path)
        .header(header::HOST, format!("{host}:{port}"));
    for (k, v) in headers {
        if UPGRADE_HEADERS.contains(&k.as_str()) {
            req = req.header(k, v);
        }
    }
    let req = req
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut resp = kubelets.send(&host, port, req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(kubelet_error(resp).await);
    }
    let kubelet_upgrade = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in resp.headers() {
        if k != header::CONTENT_LENGTH && k != header::DATE {
            out.headers_mut().append(k, v.clone());
        }
    }
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        match tokio::join!(upgrade, kubelet_upgrade) {
            (Ok(a), Ok(b)) => {
                let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            }
            (a, b) => tracing::debug!(namespace = %ns, pod = %name,
                client = a.is_ok(), kubelet = b.is_ok(), "stream upgrade failed"),
        }
    });
    Ok(out)
}
