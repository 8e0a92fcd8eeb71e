//! The service proxy (kube-proxy's nftables mode, in the node agent): Services and
//! EndpointSlices from the apiserver ([`crate::services`]) become one nftables table
//! (`ip capstan` by default) that DNATs cluster IPs and node ports to ready endpoints
//! ([`rules`]).
//!
//! Every sync is one `nft -f -` transaction, so the kernel never sees half a ruleset.
//! Syncs are debounced as upstream's bounded-frequency runner does: at most one per
//! `min_sync_period` however fast the watch changes, and one every `sync_period` even
//! when nothing changed (to repair a table someone else touched). The table is deleted
//! at start (a clean slate after a crash) and when the proxy stops.

pub mod rules;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::services::Snapshot;

pub use rules::Settings;

/// The proxy's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub rules: Settings,
    /// Upstream's `--min-sync-period` (nftables mode default: 1 s).
    pub min_sync_period: Duration,
    /// Upstream's `--sync-period` (30 s).
    pub sync_period: Duration,
    /// What `/healthz` reports (see [`Health`]).
    pub health: Arc<Health>,
}

/// The proxy's health as kube-proxy's healthz server judges it: unhealthy once a
/// change has waited for a sync longer than twice the sync period (its
/// `healthTimeout`), answered as its JSON.
#[derive(Default, Debug)]
pub struct Health {
    state: std::sync::Mutex<HealthState>,
}

#[derive(Default, Debug)]
struct HealthState {
    last_updated: Option<chrono::DateTime<chrono::Utc>>,
    pending_since: Option<std::time::Instant>,
}

impl Health {
    /// A change is waiting for a sync (kept from the oldest one).
    pub fn queued(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.pending_since.get_or_insert_with(std::time::Instant::now);
        }
    }

    /// The rules were synced.
    pub fn synced(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.last_updated = Some(chrono::Utc::now());
            s.pending_since = None;
        }
    }

    /// Whether the proxy is healthy, with `timeout` as its health timeout, and the
    /// body of kube-proxy's `/healthz`.
    pub fn report(&self, timeout: Duration) -> (bool, String) {
        let (last, pending) = match self.state.lock() {
            Ok(s) => (s.last_updated, s.pending_since),
            Err(_) => (None, None),
        };
        let healthy = pending.is_none_or(|p| p.elapsed() <= timeout);
        let fmt = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        let body = serde_json::json!({
            "lastUpdated": last.map(fmt).unwrap_or_default(),
            "currentTime": fmt(chrono::Utc::now()),
            "nodeEligible": true,
        });
        (healthy, body.to_string())
    }
}

impl Config {
    /// The defaults for a node named `node_name` at `node_ip` (node ports are served
    /// on it if it is IPv4; the proxy is IPv4 only so far).
    pub fn new(node_name: &str, node_ip: IpAddr) -> Config {
        Config {
            rules: Settings {
                table: "capstan".into(),
                node_name: node_name.into(),
                node_ips: match node_ip {
                    IpAddr::V4(ip) => vec![ip],
                    IpAddr::V6(_) => Vec::new(),
                },
                cluster_cidr: None,
            },
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            health: Arc::new(Health::default()),
        }
    }
}

/// Why an `nft` run failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `nft` could not be started (nftables not installed?).
    #[error("running nft: {0}")]
    Spawn(#[from] std::io::Error),
    /// `nft` refused the transaction.
    #[error("nft: {0}")]
    Nft(String),
}

/// Runs `nft -f -` with `script` on its stdin.
async fn nft(script: &str) -> Result<(), ProxyError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// The script that removes the table, whether or not it exists (`add` first, since
/// `delete` of a missing table fails).
fn delete_script(table: &str) -> String {
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// Deletes the table when the proxy stops, however it stops (its future dropped at
/// shutdown included); synchronous, since no runtime may be left by then.
struct TableGuard(String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        use std::io::Write as _;
        let run = || -> std::io::Result<std::process::ExitStatus> {
            let mut child = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(delete_script(&self.0).as_bytes())?;
            }
            child.wait()
        };
        match run() {
            Ok(s) if s.success() => tracing::info!(table = %self.0, "nftables table removed"),
            Ok(s) => {
                tracing::warn!(table = %self.0, status = %s, "removing the nftables table failed")
            }
            Err(e) => {
                tracing::warn!(table = %self.0, error = %e, "removing the nftables table failed")
            }
        }
    }
}

/// Keeps the table in step with the Services until the snapshot channel closes (or
/// the future is dropped), then removes it.
pub async fn run(
    cfg: Config,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) -> Result<(), ProxyError> {
    let table = cfg.rules.table.clone();
    nft(&delete_script(&table)).await?;
    let _guard = TableGuard(table.clone());
    let mut applied = rules::Ruleset::default();
    let mut last_sync: Option<tokio::time::Instant> = None;
    cfg.health.queued();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        if snap.synced {
            let next = rules::build(&cfg.rules, &snap, &applied);
            let due = last_sync.is_none_or(|t| t.elapsed() >= cfg.sync_period);
            if next.script != applied.script || due {
                let started = std::time::Instant::now();
                let changed = next.script != applied.script;
                match nft(&next.script).await {
                    Ok(()) => {
                        let elapsed_ms = started.elapsed().as_millis() as u64;
                        crate::metrics::SYNC_DURATION.observe(started.elapsed().as_secs_f64());
                        crate::metrics::SYNC_LAST.set(chrono::Utc::now().timestamp());
                        cfg.health.synced();
                        // A periodic resync that changed nothing is not news.
                        if changed {
                            tracing::info!(table = %table, services = snap.services.len(),
                                           chains = next.chains.len(), elapsed_ms, "nftables rules synced");
                        } else {
                            tracing::debug!(table = %table, elapsed_ms, "nftables rules resynced");
                        }
                        applied = next;
                        last_sync = Some(tokio::time::Instant::now());
                    }
                    Err(e) => {
                        // Retried after the minimum period, from what is applied now.
                        tracing::warn!(table = %table, error = %e, "syncing nftables rules failed");
                        tokio::time::sleep(cfg.min_sync_period).await;
                        continue;
                    }
                }
            }
        }
        let resync = tokio::time::sleep(cfg.sync_period);
        tokio::select! {
            r = snapshots.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                cfg.health.queued();
            }
            () = resync => {}
        }
        // Debounce: changes arriving meanwhile are taken together by the next sync.
        if let Some(t) = last_sync {
            let since = t.elapsed();
            if since < cfg.min_sync_period {
                tokio::time::sleep(cfg.min_sync_period - since).await;
            }
        }
    }
}
