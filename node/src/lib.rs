//! `capstan node`: the worker-node side of the control plane.
//!
//! Like every component above the apiserver, the node agent reaches the cluster only
//! through the Kubernetes API (kube-rs); it knows nothing of the store, the
//! controllers or the scheduler.
//!
//! Today it has one mode, `--simulated` (kwok's idea): it registers nodes, keeps their
//! Leases renewed and plays the kubelet's part for pods bound to them (Running and
//! Ready with a pod IP, Job pods completing, graceful deletions finished) without
//! running containers, so one process can stand in for many nodes in tests and scale
//! benchmarks. The container-runtime mode (CRI to containerd) is issue #8.

pub mod kubelet;
pub mod registration;
pub mod simulated;

use std::path::PathBuf;

/// What can stop the node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The kubeconfig could not be read or does not describe a usable cluster.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Where it was read from.
        path: PathBuf,
        /// Why it was refused.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request to the apiserver failed in a way retrying does not fix.
    #[error("apiserver: {0}")]
    Api(#[from] kube::Error),
    /// A flag value is unusable (bad quantity, label or taint syntax).
    #[error("invalid flag: {0}")]
    Flag(String),
}

/// A kube-rs client for the cluster a kubeconfig describes.
pub async fn client(path: &std::path::Path) -> Result<kube::Client, NodeError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| NodeError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(Box::new(e)))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(Box::new(e)))?;
    kube::Client::try_from(cfg).map_err(|e| bad(Box::new(e)))
}
