//! `capstan node`: the worker-node side of the control plane.
//!
//! Like every component above the apiserver, the node agent reaches the cluster only
//! through the Kubernetes API (kube-rs); it knows nothing of the store, the
//! controllers or the scheduler.
//!
//! Two modes share the Node's registration and Lease renewal ([`registration`]):
//! - [`kubelet`], the real one: pods bound to the node run in containerd, driven over
//!   the CRI socket (runtime.v1), exactly as the upstream kubelet drives it;
//! - [`simulated`] (kwok's idea): nodes registered, Leases renewed and the kubelet's
//!   part played for pods bound to them (Running and Ready with a pod IP, Job pods
//!   completing, graceful deletions finished) without running containers, so one
//!   process can stand in for many nodes in tests and scale benchmarks.
//!
//! With the kubelet run the service proxy ([`proxy`], kube-proxy's nftables mode) and
//! the cluster DNS ([`dns`]), both fed by one watch of Services and EndpointSlices
//! ([`services`]).

pub mod dns;
pub mod kubelet;
pub mod metrics;
pub mod podstatus;
pub mod proxy;
pub mod registration;
pub mod services;
pub mod simulated;

/// What can stop the node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No client for the apiserver could be made from the kubeconfig.
    #[error(transparent)]
    Connect(#[from] capstan_client::ClientError),
    /// A request to the apiserver failed in a way retrying does not fix.
    #[error("apiserver: {0}")]
    Api(#[from] kube::Error),
    /// A flag value is unusable (bad quantity, label or taint syntax).
    #[error("invalid flag: {0}")]
    Flag(String),
    /// The container runtime endpoint cannot be used.
    #[error("container runtime endpoint {endpoint}: {message}")]
    Runtime {
        /// `--container-runtime-endpoint`.
        endpoint: String,
        /// Why not.
        message: String,
    },
    /// The kubelet's HTTPS server (logs, exec) could not be set up.
    #[error("kubelet server: {0}")]
    Serve(String),
    /// An `--image-archive` could not be imported into the runtime.
    #[error("importing image archive {0}")]
    ImageImport(String),
    /// The service proxy cannot program nftables.
    #[error("service proxy: {0}")]
    Proxy(#[from] proxy::ProxyError),
}
