//! The scheduler's own HTTPS endpoint, as kube-scheduler's `--secure-port` (10259):
//! `/healthz`, `/livez`, `/readyz` and Prometheus `/metrics`, on a self-signed
//! certificate made at start (kube-scheduler does the same without `--tls-cert-file`).
//! No authentication: the metrics say nothing secret, and health checks are anonymous
//! upstream too.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

fn tls_config() -> Result<Arc<rustls::ServerConfig>, Error> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let names = vec![host, "localhost".into(), "127.0.0.1".into()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| Error::Serve(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Serve(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .map_err(|e| Error::Serve(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn handle(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (code, body, ctype) = match req.uri().path() {
        "/healthz" | "/livez" | "/readyz" => (
            StatusCode::OK,
            "ok".to_string(),
            "text/plain; charset=utf-8",
        ),
        "/metrics" => (
            StatusCode::OK,
            crate::metrics::gather(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "404 page not found\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Binds `addr` and serves until the task is dropped.
pub async fn serve(addr: SocketAddr) -> Result<(), Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config()?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Serve(format!("listening on {addr}: {e}")))?;
    tracing::info!(address = %addr, "serving securely on /healthz and /metrics");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), hyper::service::service_fn(handle))
                .await;
        });
    }
}
