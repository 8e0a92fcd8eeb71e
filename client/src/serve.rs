//! The health and metrics endpoint every component serves on a port of its own, as
//! upstream's do (kube-controller-manager 10257 and kube-scheduler 10259 over HTTPS,
//! the kubelet's healthz on 10248 and kube-proxy's 10256 and 10249 over plain HTTP):
//! `/healthz`, `/livez` and `/readyz` with upstream's named checks (`?verbose` lists
//! them as `[+]ping ok`, a failing one makes the answer 500 with the list, a check
//! alone at `/readyz/<name>`, `?exclude=<name>`), and Prometheus `/metrics`.
//! No authentication: the metrics say nothing secret, and health checks are anonymous
//! upstream too.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why an endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound (taken, or not this machine's).
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The self-signed serving certificate could not be made.
    #[error("serving certificate: {0}")]
    Tls(String),
}

/// A named health check: `Ok` when healthy, else why not (logged, never shown: upstream
/// answers `reason withheld`).
pub type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One check and the endpoints it is part of.
#[derive(Clone)]
pub struct Check {
    pub name: String,
    /// Only `/readyz` runs it (upstream's readiness-only checks such as `shutdown`).
    pub ready_only: bool,
    pub run: CheckFn,
}

impl Check {
    /// A check on every health endpoint.
    pub fn new(name: &str, run: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Check {
        Check {
            name: name.into(),
            ready_only: false,
            run: Arc::new(run),
        }
    }

    /// A check on `/readyz` only.
    pub fn ready(
        name: &str,
        run: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Check {
        Check {
            ready_only: true,
            ..Check::new(name, run)
        }
    }

    /// Upstream's `ping`, which always passes: the server answers.
    pub fn ping() -> Check {
        Check::new("ping", || Ok(()))
    }

    /// Upstream's `log` check (its log writer is not blocked); tracing writes
    /// synchronously to stderr, so it passes while the process runs.
    pub fn log() -> Check {
        Check::new("log", || Ok(()))
    }
}

/// An answer a component makes itself (kube-proxy's JSON `/healthz`), in place of the
/// standard one.
pub struct Reply {
    pub code: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

/// A path handler consulted before the standard paths.
pub type Custom = Arc<dyn Fn(&str) -> Option<Reply> + Send + Sync>;

/// What one endpoint serves.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// HTTPS on a self-signed certificate (upstream's secure ports), else plain HTTP.
    pub tls: bool,
    pub checks: Vec<Check>,
    /// The Prometheus text for `/metrics`; `None`: no `/metrics` here.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    pub custom: Option<Custom>,
}

impl Endpoint {
    /// An endpoint with `ping` and `log` and nothing else.
    pub fn new(addr: SocketAddr, tls: bool) -> Endpoint {
        Endpoint {
            addr,
            tls,
            checks: vec![Check::ping(), Check::log()],
            metrics: None,
            custom: None,
        }
    }

    /// Serves `/metrics` from `render`.
    pub fn with_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Arc::new(render));
        self
    }

    pub fn with_check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Binds the address (so a taken port is an error at start, as upstream's) and
    /// returns the future that serves it until dropped.
    pub async fn bind(
        self,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, ServeError> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: self.addr,
                source,
            })?;
        let acceptor = if self.tls {
            Some(tokio_rustls::TlsAcceptor::from(self_signed()?))
        } else {
            None
        };
        let addr = self.addr;
        tracing::info!(address = %addr, tls = self.tls, "serving /healthz, /livez, /readyz and /metrics");
        let ep = Arc::new(self);
        Ok(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let ep = ep.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let ep = ep.clone();
                        async move { Ok::<_, std::convert::Infallible>(ep.handle(&req)) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        })
    }

    fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if let Some(custom) = &self.custom {
            if let Some(r) = custom(path) {
                return reply(r.code, r.content_type, r.body);
            }
        }
        let text = "text/plain; charset=utf-8";
        if path == "/metrics" {
            if let Some(m) = &self.metrics {
                return reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    m(),
                );
            }
        }
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter(|s| !s.is_empty())
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.to_string(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for kind in ["healthz", "livez", "readyz"] {
            let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(kind)) else {
                continue;
            };
            let checks: Vec<&Check> = self
                .checks
                .iter()
                .filter(|c| kind == "readyz" || !c.ready_only)
                .collect();
            if rest.is_empty() || rest == "/" {
                let (code, body) = report(kind, &checks, &query);
                return reply(code, text, body);
            }
            if let Some(c) = rest
                .strip_prefix('/')
                .and_then(|name| checks.iter().find(|c| c.name == name))
            {
                return match (c.run)() {
                    Ok(()) => reply(StatusCode::OK, text, "ok".into()),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        text,
                        format!("internal server error: {e}\n"),
                    ),
                };
            }
        }
        reply(StatusCode::NOT_FOUND, text, "404 page not found\n".into())
    }
}

/// Upstream's `handleRootHealth`: every check not excluded is run; the answer is `ok`,
/// or with `verbose` (or on any failure, then 500) one line per check and a verdict.
pub fn report(kind: &str, checks: &[&Check], query: &[(String, String)]) -> (StatusCode, String) {
    let mut excluded: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "exclude")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let verbose = query.iter().any(|(k, v)| k == "verbose" && v != "false");
    let mut lines = String::new();
    let mut failed = false;
    for c in checks {
        if let Some(i) = excluded.iter().position(|e| *e == c.name) {
            excluded.remove(i);
            lines.push_str(&format!("[+]{} excluded: ok\n", c.name));
            continue;
        }
        match (c.run)() {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", c.name)),
            Err(e) => {
                tracing::info!(check = %c.name, endpoint = kind, error = %e, "health check failed");
                failed = true;
                lines.push_str(&format!("[-]{} failed: reason withheld\n", c.name));
            }
        }
    }
    if !excluded.is_empty() {
        let quoted: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        lines.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            quoted.join(",")
        ));
    }
    if failed {
        lines.push_str(&format!("{kind} check failed\n"));
        return (StatusCode::INTERNAL_SERVER_ERROR, lines);
    }
    if !verbose {
        return (StatusCode::OK, "ok".into());
    }
    lines.push_str(&format!("{kind} check passed\n"));
    (StatusCode::OK, lines)
}

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A self-signed certificate for this host, as kube-scheduler and
/// kube-controller-manager make one without `--tls-cert-file`.
fn self_signed() -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let bad = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let names = vec![host, "localhost".into(), "127.0.0.1".into()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .map_err(|e| bad(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reports_read_as_upstream_s() {
        let ok = Check::ping();
        let bad = Check::new("etcd", || Err("down".into()));
        assert_eq!(report("livez", &[&ok], &[]), (StatusCode::OK, "ok".into()));
        assert_eq!(
            report("livez", &[&ok], &q(&[("verbose", "")])).1,
            "[+]ping ok\nlivez check passed\n"
        );
        let (code, body) = report("readyz", &[&ok, &bad], &[]);
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n"
        );
        let (code, body) = report(
            "readyz",
            &[&ok, &bad],
            &q(&[("exclude", "etcd"), ("exclude", "nope")]),
        );
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok");
        let (_, body) = report(
            "readyz",
            &[&ok, &bad],
            &q(&[("exclude", "etcd"), ("exclude", "nope"), ("verbose", "1")]),
        );
        assert_eq!(
            body,
            "[+]ping ok\n[+]etcd excluded: ok\nwarn: some health checks cannot be excluded: no matches for \"nope\"\nreadyz check passed\n"
        );
    }
}
