//! `capstan scheduler`: kube-scheduler's job with its default profile, written on
//! kube-rs. It knows the cluster only through the apiserver: it watches pods and
//! nodes, keeps a cache of what is placed where, takes pending pods one at a time from
//! a priority queue, picks a node (filters, then scores), and binds through the
//! pods/binding subresource asynchronously. With leader election on (the default),
//! several can run and only the holder of the lease schedules.

pub mod cache;
pub mod events;
pub mod framework;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod queue;
mod scheduler;
mod serve;
pub mod types;

use std::path::PathBuf;
use std::time::Duration;

/// The `spec.schedulerName` this scheduler serves (pods naming another are left alone).
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Settings, from kube-scheduler's flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kubeconfig to reach the apiserver with (else the in-cluster/default one).
    pub kubeconfig: Option<PathBuf>,
    /// Take part in leader election before scheduling.
    pub leader_elect: bool,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub lease_namespace: String,
    pub lease_name: String,
    /// Where `/healthz` and `/metrics` are served over HTTPS (`None`: not served).
    pub serve: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            kubeconfig: None,
            leader_elect: true,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            lease_namespace: "kube-system".into(),
            lease_name: "kube-scheduler".into(),
            serve: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 10259))),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// No kubeconfig was given and none could be inferred.
    #[error("no kubeconfig: {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    /// The Kubernetes client could not be built.
    #[error("client: {0}")]
    Client(#[from] kube::Error),
    /// This instance held the lease and lost it; upstream exits so that a fresh start
    /// rebuilds its state from scratch, and so do we.
    #[error("leaderelection lost: {0}")]
    LeaderLost(String),
    /// The health and metrics endpoint could not be set up.
    #[error("serving: {0}")]
    Serve(String),
}

pub use scheduler::run;
