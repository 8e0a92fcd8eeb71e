//! `capstan apiserver`: the Kubernetes REST API over an etcd v3 store.
//!
//! The apiserver reaches its data only through the etcd v3 API (`storage`), so it runs
//! the same on `capstan store` and on a real etcd. Requests flow `http` (routing,
//! authentication, negotiation) → `rbac` (authorization) → `registry` (object
//! lifecycle) → `storage`; watches flow from the store's watch through `watch`.

pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod discovery;
pub mod error;
pub mod health;
pub mod http;
pub mod kubernetes_service;
pub mod managed;
pub mod metrics;
pub mod node;
pub mod patch;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod selectors;
pub mod storage;
pub mod table;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tower::ServiceExt;

pub use error::ApiError;

/// What `capstan apiserver` is started with (kube-apiserver's flag names).
pub struct Config {
    /// `--etcd-servers`.
    pub etcd_servers: Vec<String>,
    /// `--bind-address` and `--secure-port`.
    pub listen: SocketAddr,
    /// `--cert-dir`: where the CA, serving and admin certificates live.
    pub cert_dir: PathBuf,
    /// Where to write the admin kubeconfig (`--kubeconfig-out`), if anywhere.
    pub kubeconfig_out: Option<PathBuf>,
    /// `--token-auth-file`.
    pub token_auth_file: Option<PathBuf>,
    /// `--advertise-address`: the host kubeconfigs and discovery name.
    pub advertise_address: Option<String>,
    /// `--etcd-compaction-interval` (0 disables).
    pub compaction_interval: Duration,
    /// `--kubelet-client-certificate` and `--kubelet-client-key`: what the apiserver
    /// shows kubelets for logs and exec (default: the ones generated in the cert dir).
    pub kubelet_client_certificate: Option<PathBuf>,
    pub kubelet_client_key: Option<PathBuf>,
    /// `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`.
    pub etcd_tls: storage::EtcdTls,
    /// Routes served beside the API on the same port, outside its authentication
    /// (they check their own credentials): `capstan server`'s `/cacerts` and join
    /// endpoint, as k3s serves them on its apiserver port.
    pub extra_routes: Option<axum::Router>,
}

/// Namespaces kube-apiserver creates at start.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How long a stopping apiserver tries to take itself out of the `kubernetes`
/// Service's endpoints before it exits anyway (the key's TTL then does it).
const REMOVE_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the apiserver until the listener fails or `shutdown` resolves; on shutdown it
/// first takes its address out of the `kubernetes` Service's endpoints.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ApiError> {
    let store = connect_store(&cfg.etcd_servers, &cfg.etcd_tls).await?;
    let host = cfg
        .advertise_address
        .clone()
        .unwrap_or_else(|| cfg.listen.ip().to_string().replace("0.0.0.0", "127.0.0.1"));
    let pki = tls::ensure_pki(&cfg.cert_dir, std::slice::from_ref(&host))?;
    let server_url = format!("https://{host}:{}", cfg.listen.port());
    if let Some(path) = &cfg.kubeconfig_out {
        std::fs::write(path, pki.admin_kubeconfig(&server_url))
            .map_err(|e| ApiError::Setup(format!("{}: {e}", path.display())))?;
    }
    let tokens = match &cfg.token_auth_file {
        Some(p) => auth::Tokens::load(p)?,
        None => auth::Tokens::default(),
    };
    let registry = Arc::new(registry::Registry {
        store: store.clone(),
        namespaces: std::sync::OnceLock::new(),
    });
    bootstrap(&registry).await?;
    rbac::bootstrap(&registry).await?;
    let endpoint_ip =
        kubernetes_service::endpoint_ip(cfg.advertise_address.as_deref(), cfg.listen.ip());
    let reconciler = tokio::spawn(kubernetes_service::run(
        registry.clone(),
        endpoint_ip,
        cfg.listen.port(),
    ));
    if !cfg.compaction_interval.is_zero() {
        tokio::spawn(compactor(store.clone(), cfg.compaction_interval));
    }
    let caches: std::collections::HashMap<_, _> = resources::RESOURCES
        .iter()
        .filter(|rt| rt.stored())
        .map(|rt| (rt.prefix, cache::Cache::start(store.clone(), rt)))
        .collect();
    if let Some(ns) = resources::find("", "v1", "namespaces").and_then(|rt| caches.get(rt.prefix)) {
        let _ = registry.namespaces.set(ns.clone());
    }
    let authorizer = rbac::Authorizer::new(&caches)?;
    let app = Arc::new(http::App {
        registry: registry.clone(),
        authorizer,
        caches,
        sa_public_key: pki.sa_public_key.clone(),
        metrics: metrics::Metrics::new()?,
        tokens,
        server_address: format!("{host}:{}", cfg.listen.port()),
        kubelets: proxy::KubeletClient::new(
            cfg.kubelet_client_certificate
                .as_deref()
                .unwrap_or(&pki.kubelet_client_cert),
            cfg.kubelet_client_key
                .as_deref()
                .unwrap_or(&pki.kubelet_client_key),
        )?,
    });
    let router = match cfg.extra_routes {
        Some(extra) => http::router(app).merge(extra),
        None => http::router(app),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ApiError::Setup(format!("listening on {}: {e}", cfg.listen)))?;
    tracing::info!(address = %cfg.listen, url = %server_url, "apiserver serving");
    // Where a person looks first; the README says how to get a token for it.
    tracing::info!(
        url = %format!("{server_url}{}", dashboard::PAGE_PATH),
        "dashboard: open it with #token=<a bearer token> appended"
    );
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (tcp, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| tls::user_from_cert(c));
            let peer = http::Peer(user);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    router.clone().oneshot(req)
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
    // Stopped renewing first, so the removal is not undone by a reconcile in flight.
    reconciler.abort();
    let _ = reconciler.await;
    if let Some(ip) = endpoint_ip {
        let removed = tokio::time::timeout(
            REMOVE_ENDPOINT_TIMEOUT,
            kubernetes_service::remove_endpoint(&registry, ip, cfg.listen.port()),
        )
        .await;
        match removed {
            Ok(Ok(())) => {
                tracing::info!(%ip, "removed this apiserver from the kubernetes service's endpoints")
            }
            Ok(Err(e)) => {
                tracing::warn!(%ip, error = %e, "removing this apiserver from the kubernetes service's endpoints")
            }
            Err(_) => {
                tracing::warn!(%ip, "removing this apiserver from the kubernetes service's endpoints timed out")
            }
        }
    }
    Ok(())
}

/// Connects to the store, waiting for it to come up (servers start in any order).
async fn connect_store(
    endpoints: &[String],
    tls: &storage::EtcdTls,
) -> Result<storage::Store, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match storage::Store::connect(endpoints, tls).await {
            Ok(s) => match s.revision().await {
                Ok(_) => return Ok(s),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => {}
            },
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the system namespaces if they are missing.
async fn bootstrap(reg: &registry::Registry) -> Result<(), ApiError> {
    let Some(ns) = resources::find("", "v1", "namespaces") else {
        return Ok(());
    };
    // kube-apiserver creates them under its own name too.
    let opts =
        registry::WriteOptions::internal("kube-apiserver", registry::FieldValidation::Strict);
    for name in SYSTEM_NAMESPACES {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match reg.create(ns, None, &body, opts.clone()).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Compacts the store's history every interval, up to the revision seen one interval
/// earlier (kube-apiserver's scheme), so watchers get that long to resume.
async fn compactor(store: storage::Store, every: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        match store.revision().await {
            Ok(rev) => {
                if let Some(p) = previous {
                    if let Err(e) = store.compact(p).await {
                        tracing::debug!(error = %e, revision = p, "compaction skipped");
                    }
                }
                previous = Some(rev);
            }
            Err(e) => tracing::warn!(error = %e, "reading the store revision for compaction"),
        }
    }
}
