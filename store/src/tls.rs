//! TLS on the client and peer listeners, with etcd's flags and semantics: a listener
//! whose URL is `https://` serves TLS with `--cert-file`/`--key-file` (peers:
//! `--peer-cert-file`/`--peer-key-file`); with `--client-cert-auth`
//! (`--peer-client-cert-auth`) a connection without a certificate signed by
//! `--trusted-ca-file` (`--peer-trusted-ca-file`) fails in the handshake, before any
//! request is read. A member dials its peers with its peer certificate as the client
//! certificate and verifies theirs against the peer CA, as etcd's peer transport does.
//!
//! The handshake runs here (tokio-rustls), not in tonic, so the listener can offer
//! HTTP/1.1 beside h2 in ALPN: `/health`, `/version` and `/metrics` share the client
//! port, and HTTP/1.1-only clients (Prometheus by default) must reach them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::error::{Result, StoreError};

/// How long a connection gets to finish its handshake (Go's default, etcd's too).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One side's certificates (etcd's `transport.TLSInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The certificate this member presents (`--cert-file`, `--peer-cert-file`).
    pub cert_file: Option<PathBuf>,
    /// Its key (`--key-file`, `--peer-key-file`).
    pub key_file: Option<PathBuf>,
    /// The CA that signs the other side's certificates (`--trusted-ca-file`,
    /// `--peer-trusted-ca-file`).
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a certificate signed by the trusted CA
    /// (`--client-cert-auth`, `--peer-client-cert-auth`).
    pub client_cert_auth: bool,
}

fn tls_err(what: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidArgument(format!("{}: {e}", what.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| tls_err(path, e))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate"));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|e| tls_err(path, e))?;
    }
    Ok(roots)
}

impl TlsInfo {
    /// Whether a certificate is configured (etcd: `TLSInfo.Empty()` is false).
    pub fn is_set(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    fn cert_and_key(&self, flags: &str) -> Result<(&Path, &Path)> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok((c, k)),
            _ => Err(StoreError::InvalidArgument(format!(
                "TLS key/cert ({flags}) must both be provided"
            ))),
        }
    }

    /// The listener's TLS configuration.
    pub fn server_config(&self, flags: &str) -> Result<Arc<rustls::ServerConfig>> {
        let (cert, key) = self.cert_and_key(flags)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::InvalidArgument(format!("tls: {e}")))?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (Some(ca), true) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider,
                )
                .build()
                .map_err(|e| tls_err(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            // etcd would fall back to the system's roots; a member that trusts every
            // public CA for its clients is not what anyone means, so say so.
            (None, true) => {
                return Err(StoreError::InvalidArgument(
                    "client certificate authentication needs a trusted CA file".into(),
                ))
            }
            (_, false) => builder.with_no_client_auth(),
        };
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| tls_err(key, e))?;
        let mut cfg = builder
            .with_single_cert(certs(cert)?, key_der)
            .map_err(|e| tls_err(cert, e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// How this member dials its peers: its peer certificate as the client
    /// certificate, the peer CA to verify theirs.
    pub fn client_config(&self, flags: &str) -> Result<tonic::transport::ClientTlsConfig> {
        let (cert, key) = self.cert_and_key(flags)?;
        let ca = self.trusted_ca_file.as_ref().ok_or_else(|| {
            StoreError::InvalidArgument(
                "peer TLS needs --peer-trusted-ca-file to verify the other members".into(),
            )
        })?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
            .identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            )))
    }
}

/// Whether `url` is served over TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Checks every URL against the certificates, as etcd does at start: an https URL
/// without a certificate is an error; a certificate with only http URLs is ignored
/// with a warning.
pub fn check_urls(urls: &[String], info: &TlsInfo, kind: &str, flags: &str) -> Result<()> {
    for u in urls {
        if is_https(u) && !info.is_set() {
            // etcd's two messages, word for word.
            return Err(StoreError::InvalidArgument(if kind == "peer" {
                let hostport = u.trim_start_matches("https://").trim_end_matches('/');
                format!(
                    "cannot listen on TLS for {hostport}: KeyFile and CertFile are not presented"
                )
            } else {
                format!(
                    "TLS key/cert ({flags}) must be provided for {kind} url {u} with HTTPS scheme"
                )
            }));
        }
    }
    if info.is_set() && !urls.iter().any(|u| is_https(u)) {
        tracing::warn!(kind, urls = ?urls, "scheme is HTTP while key and cert files are present; ignoring key and cert files");
    }
    Ok(())
}

/// The TLS connections of `listener`: each accepted connection is handshaken on its
/// own task (a slow or hostile peer holds up no one else), and only the ones that
/// complete it come out. A refused handshake is logged (etcd logs "rejected
/// connection") and the connection closed.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    kind: &'static str,
) -> impl futures::Stream<Item = io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // The server's own nodelay setting does not reach a caller-supplied stream,
            // and Nagle delays a response queued behind a watch event.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        crate::metrics::METRICS.tls_handshake_failures.inc();
                        tracing::warn!(kind, %remote, error = %e, "rejected connection: TLS handshake failed");
                    }
                    Err(_) => {
                        crate::metrics::METRICS.tls_handshake_failures.inc();
                        tracing::warn!(kind, %remote, "rejected connection: TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The subject common name of a DER certificate, if it has one (the user a verified
/// client certificate names under `--client-cert-auth`).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    (!cn.is_empty()).then(|| cn.to_string())
}
