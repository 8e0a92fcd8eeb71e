//! What every component above the apiserver (controller-manager, scheduler, node
//! agent) shares, and nothing more: a kube-rs client from a kubeconfig, and leader
//! election on a Lease. It is a library of kube-rs helpers, not a component: depending
//! on it does not make one component depend on another.

pub mod leader;
pub mod metrics;
pub mod serve;
pub mod tls;

use std::path::Path;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or parsed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What was wrong with it.
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and none could be found (`$KUBECONFIG`, `~/.kube/config`,
    /// in-cluster).
    #[error("no kubeconfig: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The kubeconfig does not describe a usable connection.
    #[error("client: {0}")]
    Kube(#[from] kube::Error),
}

/// A client for the apiserver `kubeconfig` names, or, without one, the one the
/// environment names (as kubectl finds it), sending kube-rs's own User-Agent.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    counted(config(kubeconfig).await?)
}

/// A client whose every request is counted in [`metrics::REQUESTS`], as client-go's.
fn counted(cfg: kube::Config) -> Result<kube::Client, ClientError> {
    let host = cfg
        .cluster_url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    Ok(kube::client::ClientBuilder::try_from(cfg)?
        .with_layer(&metrics::CountLayer { host })
        .build())
}

/// [`client`] for the component `name` (`kube-controller-manager`, `kube-scheduler`,
/// `kubelet`): its requests carry upstream's User-Agent shape, `<name>/v1.32.0
/// (linux/amd64) capstan`, which the apiserver records (up to the `/`) as the field
/// manager of every write without an explicit one, as kube-apiserver does.
pub async fn client_as(kubeconfig: Option<&Path>, name: &str) -> Result<kube::Client, ClientError> {
    let mut cfg = config(kubeconfig).await?;
    let agent = format!("{name}/v1.32.0 (linux/amd64) capstan");
    if let Ok(v) = http::HeaderValue::from_str(&agent) {
        cfg.headers.push((http::header::USER_AGENT, v));
    }
    counted(cfg)
}

async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    let cfg = match kubeconfig {
        Some(path) => {
            let bad = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(cfg)
}

/// A leader-election identity: `<hostname>_<random>`, as upstream's
/// `hostname + "_" + uuid`.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}_{:016x}", rand::random::<u64>())
}
