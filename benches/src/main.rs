//! `capstan-bench`: a load generator for the etcd v3 gRPC API, modelled on etcd's
//! `benchmark` tool, so the same workload can be run against capstan and etcd and the
//! numbers compared. Prints throughput and latency percentiles (or one JSON line with
//! `--json`); `compare` turns two servers' JSON lines into a markdown table.

mod apipods;
mod compare;
mod conn;
mod failover;
mod kv;
mod lease;
mod sched;
mod startup;
mod stats;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "capstan-bench", version, about = "etcd v3 API load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every load subcommand takes (etcd benchmark's names and defaults).
#[derive(Args, Clone)]
struct Common {
    /// Server client URLs, comma-separated; connections are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Number of gRPC (HTTP/2) connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients, spread round-robin over the connections; each
    /// issues its requests back to back.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total number of requests (for watch-latency: puts).
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Number of distinct keys the workload touches.
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Walk the key space in order instead of picking keys at random.
    #[arg(long)]
    sequential_keys: bool,
    /// Prefix of every key (watch-latency uses its own per-run prefix).
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Print one JSON line instead of a human summary.
    #[arg(long)]
    json: bool,
    /// Row name for the report (defaults to the subcommand name).
    #[arg(long)]
    label: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Consistency {
    /// Linearizable: etcd confirms leadership (ReadIndex) before answering.
    L,
    /// Serializable: answered from the member's local state.
    S,
}

#[derive(Subcommand)]
enum Command {
    /// Put random-valued keys.
    Put {
        #[command(flatten)]
        common: Common,
    },
    /// Range (get) single keys from the key space.
    Range {
        #[command(flatten)]
        common: Common,
        /// l (linearizable) or s (serializable).
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Txns of unconditional puts.
    TxnPut {
        #[command(flatten)]
        common: Common,
        /// Puts per txn (on consecutive keys).
        #[arg(long, default_value_t = 1)]
        txn_ops: u64,
    },
    /// Put→event latency to N watchers of one prefix.
    WatchLatency {
        #[command(flatten)]
        common: Common,
        /// Number of watchers.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Number of Watch streams the watchers are spread over.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Puts per second.
        #[arg(long, default_value_t = 100.0)]
        put_rate: f64,
        /// Watch with prev_kv (each event carries the replaced record), as Kubernetes'
        /// apiserver does. Every key is put once before the watchers start, so each
        /// measured put replaces a record.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Keep-alive round trips, one lease and stream per client.
    LeaseKeepalive {
        #[command(flatten)]
        common: Common,
    },
    /// Leader SIGKILL under write load: the write gap, and acknowledged writes lost.
    Failover(FailoverArgs),
    /// Render two servers' --json lines as a markdown comparison table.
    Compare(CompareArgs),
    /// Scheduler scale run through an apiserver: fake nodes, pods created as fast as
    /// accepted; pods bound per second and create-to-bound latency.
    SchedulerThroughput(SchedArgs),
    /// The apiserver with many pods: create (and the watch's delivery), status update
    /// and list throughput and latency.
    ApiserverPods(ApiPodsArgs),
    /// Pod startup latency on a real node: create to running (every container ready)
    /// of pods of a local image.
    PodStartup(StartupArgs),
}

#[derive(Args)]
struct ApiPodsArgs {
    /// Admin kubeconfig of the apiserver (as `capstan apiserver --kubeconfig-out` writes).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Pods to create.
    #[arg(long, default_value_t = 100_000)]
    pods: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Namespace of the pods (created, and deleted afterwards).
    #[arg(long, default_value = "api-bench")]
    namespace: String,
    /// Print one JSON line instead of a human summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StartupArgs {
    /// Admin kubeconfig of the cluster (as `capstan server --write-kubeconfig` writes).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Pods to create.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Creates in flight.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Creates per second at most, as upstream's density test paces them; without it
    /// the pods are created in one burst.
    #[arg(long)]
    qps: Option<f64>,
    /// Namespace of the pods (created if missing; the pods are deleted afterwards).
    #[arg(long, default_value = "startup-bench")]
    namespace: String,
    /// Image of the pods; it must be on the node already (no registry is reachable).
    #[arg(long, default_value = "capstan.local/busybox:1")]
    image: String,
    /// How long every pod may take to run, in seconds, before the run fails.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print one JSON line instead of a human summary.
    #[arg(long)]
    json: bool,
}

fn run_startup(a: &StartupArgs) -> anyhow::Result<()> {
    let r = tokio::runtime::Runtime::new()?.block_on(startup::run(startup::Opts {
        kubeconfig: a.kubeconfig.clone(),
        pods: a.pods,
        concurrency: a.concurrency,
        qps: a.qps,
        namespace: a.namespace.clone(),
        image: a.image.clone(),
        timeout: std::time::Duration::from_secs(a.timeout),
    }))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} pods running in {:.1} s; create -> running p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            r.running, r.seconds, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
        );
    }
    Ok(())
}

fn run_apipods(a: &ApiPodsArgs) -> anyhow::Result<()> {
    let r = tokio::runtime::Runtime::new()?.block_on(apipods::run(apipods::Opts {
        kubeconfig: a.kubeconfig.clone(),
        pods: a.pods,
        concurrency: a.concurrency,
        namespace: a.namespace.clone(),
    }))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let p = |name: &str, ph: &apipods::Phase| {
            println!(
                "{name}: {} in {:.1} s, {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
                ph.ops, ph.seconds, ph.per_second, ph.p50_ms, ph.p99_ms
            )
        };
        p("create", &r.create);
        println!(
            "watch (create sent -> ADDED): {} seen, p50 {:.1} ms, p99 {:.1} ms",
            r.watch_seen, r.watch_p50_ms, r.watch_p99_ms
        );
        p("status update", &r.status_update);
        println!(
            "list {} pods: paged by 500 {:.2} s, unpaged {:.2} s",
            r.listed, r.list_paged_seconds, r.list_all_seconds
        );
    }
    Ok(())
}

#[derive(Args)]
struct SchedArgs {
    /// Admin kubeconfig of the apiserver (as `capstan apiserver --kubeconfig-out` writes).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Fake nodes to create (bench-node-0...; existing ones are kept).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods to create.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Create requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Namespace of the pods (created, and deleted afterwards).
    #[arg(long, default_value = "sched-bench")]
    namespace: String,
    /// Give up waiting for bindings after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print one JSON line instead of a human summary.
    #[arg(long)]
    json: bool,
}

fn run_sched(a: &SchedArgs) -> anyhow::Result<()> {
    let r = tokio::runtime::Runtime::new()?.block_on(sched::run(sched::Opts {
        kubeconfig: a.kubeconfig.clone(),
        nodes: a.nodes,
        pods: a.pods,
        concurrency: a.concurrency,
        namespace: a.namespace.clone(),
        timeout: std::time::Duration::from_secs(a.timeout),
    }))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} nodes, {} pods ({} bound): created in {:.1} s, {:.0} pods/s bound; \
             create->bound p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            r.nodes,
            r.pods,
            r.bound,
            r.create_seconds,
            r.pods_per_second,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms
        );
    }
    anyhow::ensure!(
        r.bound == r.pods,
        "only {} of {} pods were bound",
        r.bound,
        r.pods
    );
    Ok(())
}

#[derive(Args)]
struct FailoverArgs {
    /// The members' client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The members' process IDs, in --endpoints order (the leader's gets SIGKILL).
    #[arg(long, value_delimiter = ',', required = true)]
    pids: Vec<u32>,
    /// Writers per member.
    #[arg(long, default_value_t = 10)]
    clients_per_member: usize,
    /// Seconds of load before the leader is killed.
    #[arg(long, default_value_t = 3.0)]
    kill_after: f64,
    /// Seconds the whole run lasts.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Row name for the report.
    #[arg(long, default_value = "failover")]
    label: String,
    /// Print one JSON line instead of a human summary.
    #[arg(long)]
    json: bool,
}

fn run_failover(a: &FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.kill_after < a.duration,
        "--kill-after must be before the end"
    );
    let opts = failover::FailoverOpts {
        endpoints: a.endpoints.clone(),
        pids: a.pids.clone(),
        clients_per_member: a.clients_per_member,
        kill_after: std::time::Duration::from_secs_f64(a.kill_after),
        duration: std::time::Duration::from_secs_f64(a.duration),
        val_size: a.val_size,
        label: a.label.clone(),
    };
    let r = tokio::runtime::Runtime::new()?.block_on(failover::run(opts))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: write gap {:.0} ms after the leader's SIGKILL (longest silence {:.0} ms); \
             {} writes acknowledged, {} errors, {} lost",
            r.label, r.gap_ms, r.longest_silence_ms, r.acknowledged, r.errors, r.lost
        );
    }
    anyhow::ensure!(r.lost == 0, "{} acknowledged writes were lost", r.lost);
    Ok(())
}

#[derive(Args)]
struct CompareArgs {
    /// Baseline's name in the table header.
    #[arg(long, default_value = "etcd")]
    baseline_name: String,
    /// File of the baseline's --json lines.
    #[arg(long)]
    baseline: PathBuf,
    /// Baseline's VmRSS after the workloads, KiB.
    #[arg(long)]
    baseline_rss_kib: Option<u64>,
    /// Baseline's VmHWM after the workloads, KiB.
    #[arg(long)]
    baseline_peak_kib: Option<u64>,
    /// Candidate's name in the table header.
    #[arg(long, default_value = "capstan")]
    candidate_name: String,
    /// File of the candidate's --json lines.
    #[arg(long)]
    candidate: PathBuf,
    /// Candidate's VmRSS after the workloads, KiB.
    #[arg(long)]
    candidate_rss_kib: Option<u64>,
    /// Candidate's VmHWM after the workloads, KiB.
    #[arg(long)]
    candidate_peak_kib: Option<u64>,
}

impl Common {
    fn keys(&self) -> anyhow::Result<kv::KeySpec> {
        anyhow::ensure!(self.key_space_size > 0, "--key-space-size must be > 0");
        Ok(kv::KeySpec {
            prefix: self.key_prefix.clone(),
            size: self.key_size,
            space: self.key_space_size,
            sequential: self.sequential_keys,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (workload, common) = match &cli.command {
        Command::Compare(a) => return run_compare(a),
        Command::Failover(a) => return run_failover(a),
        Command::SchedulerThroughput(a) => return run_sched(a),
        Command::ApiserverPods(a) => return run_apipods(a),
        Command::PodStartup(a) => return run_startup(a),
        Command::Put { common } => ("put", common),
        Command::Range { common, .. } => ("range", common),
        Command::TxnPut { common, .. } => ("txn-put", common),
        Command::WatchLatency { common, .. } => ("watch-latency", common),
        Command::LeaseKeepalive { common } => ("lease-keepalive", common),
    };
    anyhow::ensure!(common.clients > 0, "--clients must be at least 1");
    let rt = tokio::runtime::Runtime::new()?;
    let (rec, elapsed) = rt.block_on(async {
        let channels = conn::connect(&common.endpoints, common.conns).await?;
        let c = common;
        match &cli.command {
            Command::Put { .. } => {
                kv::put(&channels, c.clients, c.total, &c.keys()?, c.val_size).await
            }
            Command::Range { consistency, .. } => {
                let serializable = matches!(consistency, Consistency::S);
                kv::range(&channels, c.clients, c.total, &c.keys()?, serializable).await
            }
            Command::TxnPut { txn_ops, .. } => {
                let keys = c.keys()?;
                kv::txn_put(&channels, c.clients, c.total, &keys, c.val_size, *txn_ops).await
            }
            Command::WatchLatency {
                watchers,
                streams,
                put_rate,
                prev_kv,
                ..
            } => {
                let opts = watch::WatchOpts {
                    watchers: *watchers,
                    streams: *streams,
                    puts: c.total,
                    put_rate: *put_rate,
                    val_size: c.val_size,
                    prev_kv: *prev_kv,
                };
                watch::latency(&channels, &opts).await
            }
            Command::LeaseKeepalive { .. } => lease::keepalive(&channels, c.clients, c.total).await,
            Command::Compare(_)
            | Command::Failover(_)
            | Command::SchedulerThroughput(_)
            | Command::ApiserverPods(_)
            | Command::PodStartup(_) => unreachable_compare(),
        }
    })?;
    let label = common.label.as_deref().unwrap_or(workload);
    let report = rec.report(workload, label, elapsed);
    report.print(common.json)?;
    // Nothing succeeded: fail, so a script notices; the report above says why.
    if report.ok == 0 {
        std::process::exit(2);
    }
    Ok(())
}

/// `compare` returns before the runtime starts; kept out of line so the match above
/// stays exhaustive without a panic.
fn unreachable_compare() -> anyhow::Result<(stats::Recorder, std::time::Duration)> {
    anyhow::bail!("compare is not a load subcommand")
}

fn run_compare(a: &CompareArgs) -> anyhow::Result<()> {
    let base = compare::Side {
        name: a.baseline_name.clone(),
        reports: compare::read_reports(&a.baseline)?,
        rss_kib: a.baseline_rss_kib,
        peak_kib: a.baseline_peak_kib,
    };
    let cand = compare::Side {
        name: a.candidate_name.clone(),
        reports: compare::read_reports(&a.candidate)?,
        rss_kib: a.candidate_rss_kib,
        peak_kib: a.candidate_peak_kib,
    };
    print!("{}", compare::table(&base, &cand));
    Ok(())
}
