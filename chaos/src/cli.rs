//! The command line (`capstan-chaos`, and `capstan chaos` which embeds it).

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::{ServerKind, Timing};
use crate::error::{ChaosError, Result};
use crate::runner::{Report, RunConfig, Target};
use crate::schedule::FaultKind;

/// Run the chaos suite: a recorded workload under injected faults, then every checker.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Start this many members of our own (faults are injected); the default when no
    /// `--endpoints` is given is 3.
    #[arg(long)]
    pub spawn: Option<usize>,
    /// Run against an existing cluster's client URLs (comma-separated): workload and
    /// checkers only, no faults (the harness does not own those processes).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// How long the workload runs (e.g. 60s, 30m, 2h).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed for the fault schedule and workload choices (default: random, printed).
    #[arg(long, env = "CAPSTAN_TEST_SEED")]
    pub seed: Option<u64>,
    /// Server the spawned members run: `capstan` or `etcd`.
    #[arg(long, default_value = "capstan")]
    pub server: String,
    /// The server binary (default: `capstan` next to this binary, or `etcd` on PATH).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Fault kinds to use (comma-separated; default all): kill-leader, kill-follower,
    /// pause-leader, isolate-leader, isolate-follower, one-way-loss-from-leader,
    /// delay-leader, split-leader-minority (the leader's side of a partition is as
    /// large as a minority can be: 2 of 5; with 3 members this is isolate-leader),
    /// bridge, lossy-links.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,
    /// Client sessions per member.
    #[arg(long, default_value_t = 2)]
    pub clients_per_member: usize,
    /// Keys the clients contend on (per 15 s epoch).
    #[arg(long, default_value_t = 6)]
    pub keys: usize,
    /// Members' --heartbeat-interval (ms).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Members' --election-timeout (ms).
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Quiet time after each healed fault.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub recover: Duration,
    /// Per-call client timeout (a timed-out call is an unknown outcome).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// Where a failing run's history is saved.
    #[arg(long, default_value = "chaos-histories")]
    pub out_dir: PathBuf,
    /// Also print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Note, instead of failing, progress notifications ahead of undelivered events:
    /// for etcd before 3.4.25 / 3.5.8, which has that bug (etcd issue #15220).
    #[arg(long)]
    pub lenient_progress: bool,
}

/// Parses `90s`, `30m`, `2h`, `1500ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

impl Args {
    /// The run this command line asks for; `default_capstan` is the capstan binary to
    /// use when `--server-bin` is not given.
    pub fn to_run(&self, default_capstan: Option<PathBuf>) -> Result<(RunConfig, Target)> {
        let seed = self.seed.unwrap_or_else(rand::random);
        let faults = if self.faults.is_empty() {
            FaultKind::ALL.to_vec()
        } else {
            self.faults
                .iter()
                .map(|f| {
                    FaultKind::parse(f)
                        .ok_or_else(|| ChaosError::Config(format!("unknown fault kind {f:?}")))
                })
                .collect::<Result<_>>()?
        };
        let target = if !self.endpoints.is_empty() && self.spawn.is_none() {
            Target::Endpoints(self.endpoints.clone())
        } else if !self.endpoints.is_empty() {
            return Err(ChaosError::Config(
                "--spawn and --endpoints are exclusive".into(),
            ));
        } else {
            let kind = match self.server.as_str() {
                "capstan" => ServerKind::Capstan(
                    self.server_bin
                        .clone()
                        .or(default_capstan)
                        .unwrap_or_else(|| PathBuf::from("capstan")),
                ),
                "etcd" => ServerKind::Etcd(
                    self.server_bin
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("etcd")),
                ),
                other => {
                    return Err(ChaosError::Config(format!(
                        "--server {other:?}: capstan or etcd"
                    )))
                }
            };
            Target::Spawn {
                kind,
                members: self.spawn.unwrap_or(3),
                timing: Timing {
                    heartbeat_ms: self.heartbeat_interval,
                    election_ms: self.election_timeout,
                },
            }
        };
        let cfg = RunConfig {
            seed,
            duration: self.duration,
            clients_per_member: self.clients_per_member.max(1),
            keys: self.keys.max(1),
            faults,
            recover: self.recover,
            op_timeout: self.op_timeout,
            out_dir: self.out_dir.clone(),
            verbose: true,
            progress: if self.lenient_progress {
                crate::watchcheck::Progress::Lenient
            } else {
                crate::watchcheck::Progress::Strict
            },
        };
        Ok((cfg, target))
    }
}

/// Runs the command; prints the summary (and JSON if asked). The caller turns a
/// report with violations into a failing exit status.
pub async fn run(args: Args, default_capstan: Option<PathBuf>) -> Result<Report> {
    let (cfg, target) = args.to_run(default_capstan)?;
    // On SIGINT/SIGTERM the run future is dropped, which drops the cluster it owns and
    // so kills every member it started (they would otherwise outlive the harness).
    let report = tokio::select! {
        r = crate::runner::run(cfg, target) => r?,
        _ = interrupted() => return Err(ChaosError::Config("interrupted".into())),
    };
    eprint!("{}", report.summary());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(report)
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3x").is_err());
    }
}
