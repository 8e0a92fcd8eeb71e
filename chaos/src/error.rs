//! The library's error type (the binaries wrap it in `anyhow`).

use std::time::Duration;

/// Why the harness itself (not the system under test) could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("member {member} exited with {status}; log tail:\n{log}")]
    MemberExited {
        member: usize,
        status: String,
        log: String,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("rpc: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, ChaosError>;
