//! `capstan`: one binary, one subcommand per component.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod agent;
mod certificate;
mod etcd_snapshot;
mod join;
mod server;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "capstan",
    version,
    about = "Kubernetes-compatible control plane with an etcd-compatible store"
)]
struct Cli {
    /// Log level: error, warn, info, debug or trace (or a tracing filter directive).
    #[arg(long, global = true, default_value = "info", env = "CAPSTAN_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole control plane in one process (store, apiserver and the components
    /// above it), as k3s does.
    Server(server::ServerArgs),
    /// Run an etcd-compatible store member (accepts etcd's flags).
    Store(StoreArgs),
    /// Store snapshots (`etcdctl snapshot save` writes them).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// On-demand snapshots of a server's store, as k3s's: save, ls, delete (restore
    /// with `capstan server --cluster-reset --cluster-reset-restore-path`).
    EtcdSnapshot(etcd_snapshot::Args),
    /// The server's certificates, as k3s's: `rotate` re-issues them from the CA.
    #[command(subcommand)]
    Certificate(certificate::Command),
    /// Chaos and failover suite: a recorded workload under injected faults, checked for
    /// linearizability, watch guarantees and lost writes (see README "Chaos suite").
    Chaos(capstan_chaos::cli::Args),
    /// Run the Kubernetes API server over an etcd v3 store (kube-apiserver's flags).
    Apiserver(ApiserverArgs),
    /// Run a node agent (the kubelet's flags): pods in containerd over the CRI, or
    /// `--simulated` nodes.
    Node(NodeArgs),
    /// Run the controllers (ReplicaSet, Deployment, garbage collector) against an
    /// apiserver (kube-controller-manager's flags).
    ControllerManager(ControllerManagerArgs),
    /// Run the scheduler against an apiserver (kube-scheduler's flags).
    Scheduler(SchedulerArgs),
    /// Join a worker to a cluster (k3s's `agent`): fetch the CA and a kubelet
    /// certificate with the join token, then run the node agent.
    Agent(agent::AgentArgs),
    /// Print a kubeconfig with a new client certificate from the cluster CA (kubeadm's
    /// `kubeconfig user`): `--client-name system:node:a --org system:nodes` is node a's
    /// kubelet.
    Kubeconfig(KubeconfigArgs),
}

/// `capstan kubeconfig`'s flags (kubeadm's `kubeconfig user` names).
#[derive(clap::Args)]
struct KubeconfigArgs {
    /// The directory of the cluster CA (`ca.crt`, `ca.key`).
    #[arg(long, default_value = "/var/lib/capstan/pki")]
    cert_dir: PathBuf,
    /// The apiserver URL the kubeconfig points at.
    #[arg(long)]
    server: String,
    /// The user: the certificate's common name.
    #[arg(long)]
    client_name: String,
    /// The group: the certificate's organization.
    #[arg(long)]
    org: Option<String>,
}

/// The kubelet's flags where they apply, plus the simulated mode's own.
#[derive(clap::Args)]
struct NodeArgs {
    /// kubeconfig of the apiserver to register with.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The node's name (default: this machine's hostname).
    #[arg(long)]
    hostname_override: Option<String>,
    #[command(flatten)]
    kubelet: agent::KubeletArgs,
}

/// `host:port`, where an empty value or port 0 means "not served".
pub fn parse_optional_addr(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = s.parse().map_err(|e| format!("{s}: {e}"))?;
    Ok((addr.port() != 0).then_some(addr))
}

/// An IPv4 CIDR (`10.88.0.0/16`).
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, bits) = s
        .split_once('/')
        .ok_or_else(|| format!("{s}: not a CIDR (address/bits)"))?;
    let ip = ip
        .parse::<std::net::Ipv4Addr>()
        .map_err(|e| format!("{s}: {e}"))?;
    let bits = bits
        .parse::<u8>()
        .ok()
        .filter(|b| *b <= 32)
        .ok_or_else(|| format!("{s}: bad prefix length"))?;
    Ok((ip, bits))
}

/// The `--leader-elect-*` flags kube-controller-manager and kube-scheduler share.
#[derive(clap::Args)]
struct LeaderElectArgs {
    /// Start a leader election client and gain leadership before acting.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// How long a non-leader waits after the last observed renewal before taking over.
    #[arg(long, default_value = "15s", value_parser = capstan_chaos::cli::parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps retrying to renew before it gives up leadership.
    #[arg(long, default_value = "10s", value_parser = capstan_chaos::cli::parse_duration)]
    leader_elect_renew_deadline: std::time::Duration,
    /// How long candidates wait between tries to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = capstan_chaos::cli::parse_duration)]
    leader_elect_retry_period: std::time::Duration,
    /// Namespace of the lease object used for locking.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// Name of the lease object used for locking (default: the component's own name).
    #[arg(long)]
    leader_elect_resource_name: Option<String>,
}

impl LeaderElectArgs {
    fn config(self, component: &str) -> Option<capstan_client::leader::LeaderConfig> {
        self.leader_elect
            .then(|| capstan_client::leader::LeaderConfig {
                namespace: self.leader_elect_resource_namespace,
                name: self
                    .leader_elect_resource_name
                    .unwrap_or_else(|| component.to_string()),
                identity: capstan_client::identity(),
                lease_duration: self.leader_elect_lease_duration,
                renew_deadline: self.leader_elect_renew_deadline,
                retry_period: self.leader_elect_retry_period,
            })
    }
}

/// kube-controller-manager's flags, with its names and defaults where they apply.
#[derive(clap::Args)]
struct ControllerManagerArgs {
    /// Path to a kubeconfig file for the apiserver (default: $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    leader: LeaderElectArgs,
    /// Controllers to enable: '*' for all, 'foo' enables foo, '-foo' disables foo.
    #[arg(long, default_value = "*", value_delimiter = ',')]
    controllers: Vec<String>,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = capstan_chaos::cli::parse_duration)]
    node_monitor_period: std::time::Duration,
    /// How long a node's kubelet may stay silent before the node is marked unhealthy.
    #[arg(long, default_value = "50s", value_parser = capstan_chaos::cli::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// The key service-account tokens are signed with (the apiserver's `sa.key`).
    #[arg(long)]
    service_account_private_key_file: Option<PathBuf>,
    /// The cluster CA put into service-account token Secrets.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// Addresses for LoadBalancer Services (CIDRs or `first-last` ranges,
    /// comma-separated): with it, the service-lb-controller gives each one an address
    /// from here, the role a cloud provider's service controller plays (as k3s's
    /// ServiceLB and MetalLB's address pools do on bare metal).
    #[arg(long, value_parser = capstan_controllers::servicelb::Pool::parse)]
    service_lb_pool: Option<capstan_controllers::servicelb::Pool>,
    /// The address to serve /healthz, /livez, /readyz and /metrics on (HTTPS).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// The port to serve HTTPS on (0 disables it).
    #[arg(long, default_value_t = 10257)]
    secure_port: u16,
}

impl ControllerManagerArgs {
    fn into_config(self) -> capstan_controllers::Config {
        capstan_controllers::Config {
            kubeconfig: self.kubeconfig,
            election: self.leader.config("kube-controller-manager"),
            controllers: self.controllers,
            node_monitor: capstan_controllers::nodelifecycle::Settings {
                monitor_period: self.node_monitor_period,
                grace_period: self.node_monitor_grace_period,
            },
            service_account_key: self.service_account_private_key_file,
            root_ca: self.root_ca_file,
            service_lb_pool: self.service_lb_pool,
            serve: (self.secure_port != 0)
                .then(|| std::net::SocketAddr::new(self.bind_address, self.secure_port)),
        }
    }
}

/// kube-scheduler's flags, with its names and defaults where they apply.
#[derive(clap::Args)]
struct SchedulerArgs {
    /// Path to a kubeconfig to reach the apiserver with (else the default one).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    leader: LeaderElectArgs,
    /// The address to serve /healthz and /metrics on (HTTPS).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// The port to serve HTTPS on (0 disables it).
    #[arg(long, default_value_t = 10259)]
    secure_port: u16,
}

/// kube-apiserver's flags, with its names and defaults where they apply.
#[derive(clap::Args)]
struct ApiserverArgs {
    /// etcd servers to connect to, comma-separated (a `capstan store` or etcd cluster).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// The address to listen on for HTTPS.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// The port to serve HTTPS on.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Directory of the cluster CA and the serving and admin certificates (generated
    /// when missing).
    #[arg(long, default_value = "/var/lib/capstan/pki")]
    cert_dir: PathBuf,
    /// Write an admin kubeconfig here (client certificate of the `system:masters` group).
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Static bearer tokens: CSV lines `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Address this server is reached at (serving certificate, kubeconfig, discovery).
    #[arg(long)]
    advertise_address: Option<String>,
    /// How often to compact the store's history, e.g. 5m (0 disables).
    #[arg(long, default_value = "5m", value_parser = capstan_chaos::cli::parse_duration)]
    etcd_compaction_interval: std::time::Duration,
    /// Client certificate (PEM) shown to kubelets for logs and exec (default: the
    /// cert dir's generated `apiserver-kubelet-client.crt`).
    #[arg(long)]
    kubelet_client_certificate: Option<PathBuf>,
    /// Its key (default: `apiserver-kubelet-client.key` in the cert dir).
    #[arg(long)]
    kubelet_client_key: Option<PathBuf>,
    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// SSL certification file used to secure etcd communication.
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// SSL key file used to secure etcd communication.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Restore a member's data dir from a snapshot file.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// Data dir to create (must not exist; default: ${name}.etcd, like etcdctl).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Name of the member the data dir is for.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

/// etcd's member flags, with etcd's names and defaults.
#[derive(clap::Args)]
struct StoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory (default: ${name}.etcd).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic, comma-separated.
    #[arg(long, default_value = "http://localhost:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,
    /// Client URLs to advertise to the rest of the cluster, comma-separated.
    #[arg(long, default_value = "http://localhost:2379", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic, comma-separated.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping (name=peerURL,...).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Initial cluster state: new or existing.
    #[arg(long, default_value = "new")]
    initial_cluster_state: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,
    /// Number of entries for a slow follower to catch up after compacting the raft
    /// storage entries.
    #[arg(long, default_value_t = 5000)]
    experimental_snapshot_catchup_entries: u64,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, default_value_t = 0)]
    quota_backend_bytes: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1536 * 1024)]
    max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// Path to the client server TLS cert file (served on https:// client URLs).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication: clients without a certificate signed by
    /// --trusted-ca-file are refused in the TLS handshake.
    #[arg(long)]
    client_cert_auth: bool,
    /// Path to the peer server TLS cert file (served on https:// peer URLs and shown
    /// to the other members).
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long)]
    peer_client_cert_auth: bool,
}

impl StoreArgs {
    fn into_config(self) -> capstan_store::Config {
        let d = capstan_store::Config::default();
        let initial_cluster = self.initial_cluster.unwrap_or_else(|| {
            format!(
                "{}={}",
                self.name,
                self.initial_advertise_peer_urls.join(",")
            )
        });
        capstan_store::Config {
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name))),
            name: self.name,
            listen_client_urls: self.listen_client_urls,
            advertise_client_urls: self.advertise_client_urls,
            listen_peer_urls: self.listen_peer_urls,
            initial_advertise_peer_urls: self.initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_token: self.initial_cluster_token,
            initial_cluster_state: self.initial_cluster_state,
            heartbeat_interval_ms: self.heartbeat_interval,
            election_timeout_ms: self.election_timeout,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.experimental_snapshot_catchup_entries,
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                d.quota_backend_bytes
            } else {
                self.quota_backend_bytes
            },
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            client_tls: capstan_store::tls::TlsInfo {
                cert_file: self.cert_file,
                key_file: self.key_file,
                trusted_ca_file: self.trusted_ca_file,
                client_cert_auth: self.client_cert_auth,
            },
            peer_tls: capstan_store::tls::TlsInfo {
                cert_file: self.peer_cert_file,
                key_file: self.peer_key_file,
                trusted_ca_file: self.peer_trusted_ca_file,
                client_cert_auth: self.peer_client_cert_auth,
            },
            ..d
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level).context("--log-level")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    let result = run(cli.command, &rt);
    // The runtime's tasks hold the store's engines; once they are dropped, the store's
    // own threads close them, which must end before the process exits (see
    // `wait_all_closed`).
    drop(rt);
    if !capstan_store::engine::rocks::wait_all_closed(std::time::Duration::from_secs(10)) {
        tracing::warn!("the store did not close within 10 s; exiting anyway");
    }
    result
}

fn run(command: Command, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        Command::Server(a) => rt.block_on(server::run(a, shutdown_signal())),
        Command::Store(args) => rt.block_on(run_store(args.into_config())),
        Command::Apiserver(a) => rt.block_on(async move {
            let cfg = capstan_apiserver::Config {
                etcd_servers: a.etcd_servers,
                listen: std::net::SocketAddr::new(a.bind_address, a.secure_port),
                cert_dir: a.cert_dir,
                kubeconfig_out: a.kubeconfig_out,
                token_auth_file: a.token_auth_file,
                advertise_address: a.advertise_address,
                compaction_interval: a.etcd_compaction_interval,
                kubelet_client_certificate: a.kubelet_client_certificate,
                kubelet_client_key: a.kubelet_client_key,
                etcd_tls: capstan_apiserver::storage::EtcdTls {
                    ca_file: a.etcd_cafile,
                    cert_file: a.etcd_certfile,
                    key_file: a.etcd_keyfile,
                },
                extra_routes: None,
            };
            capstan_apiserver::run(cfg, shutdown_signal())
                .await
                .context("apiserver")
        }),
        Command::Node(args) => {
            let node_name = match args.hostname_override {
                Some(n) => n,
                None => server::hostname().context("pass --hostname-override")?,
            };
            let cfg = args.kubelet.into_config(args.kubeconfig, node_name)?;
            rt.block_on(async move {
                tokio::select! {
                    r = cfg.run() => r.context("node"),
                    _ = shutdown_signal() => Ok(()),
                }
            })
        }
        Command::Agent(a) => rt.block_on(async move {
            tokio::select! {
                r = agent::run(a) => r,
                _ = shutdown_signal() => Ok(()),
            }
        }),
        Command::Kubeconfig(a) => {
            let (cert, key) = capstan_apiserver::tls::issue_client_cert(
                &a.cert_dir,
                &a.client_name,
                a.org.as_deref(),
            )?;
            let ca = std::fs::read_to_string(a.cert_dir.join("ca.crt"))
                .with_context(|| format!("reading {}", a.cert_dir.join("ca.crt").display()))?;
            print!(
                "{}",
                capstan_apiserver::tls::client_kubeconfig(
                    &ca,
                    &a.server,
                    &a.client_name,
                    &cert,
                    &key
                )
            );
            Ok(())
        }
        Command::ControllerManager(a) => rt.block_on(async move {
            tokio::select! {
                r = capstan_controllers::run(a.into_config()) => r.context("controller-manager"),
                _ = shutdown_signal() => Ok(()),
            }
        }),
        Command::Scheduler(a) => rt.block_on(async move {
            let cfg = capstan_scheduler::Config {
                kubeconfig: a.kubeconfig,
                election: a.leader.config("kube-scheduler"),
                serve: (a.secure_port != 0)
                    .then(|| std::net::SocketAddr::new(a.bind_address, a.secure_port)),
            };
            capstan_scheduler::run(cfg, shutdown_signal())
                .await
                .context("scheduler")
        }),
        Command::Snapshot(SnapshotCommand::Restore {
            file,
            data_dir,
            name,
        }) => {
            let dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
            capstan_store::server::maintenance::restore_snapshot(&file, &dir)
                .with_context(|| format!("restoring {}", file.display()))?;
            println!("Snapshot restored to {}", dir.display());
            Ok(())
        }
        Command::EtcdSnapshot(a) => rt.block_on(etcd_snapshot::run(a)),
        Command::Certificate(c) => certificate::run(c),
        Command::Chaos(args) => {
            // `--spawn` starts members of this very binary unless told otherwise.
            let report =
                rt.block_on(capstan_chaos::cli::run(args, std::env::current_exe().ok()))?;
            anyhow::ensure!(
                report.ok(),
                "chaos run found {} violations",
                report.violations().len()
            );
            Ok(())
        }
    }
}

async fn run_store(cfg: capstan_store::Config) -> anyhow::Result<()> {
    tracing::info!(name = %cfg.name, data_dir = %cfg.data_dir.display(), "starting store member");
    let srv = capstan_store::EtcdServer::start(cfg)
        .await
        .context("opening the store")?;
    // Graceful shutdown waits for open streams to end, which a client that stops reading
    // can stall forever; every acknowledged write is already fsynced, so after a grace
    // period the member simply exits.
    let grace = async {
        shutdown_signal().await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    };
    // A member removed from its cluster stops, as etcd's exits.
    let removed = {
        let srv = srv.clone();
        async move { srv.removed().await }
    };
    // A leader hands leadership over before it stops serving.
    let stop = {
        let srv = srv.clone();
        async move {
            shutdown_signal().await;
            server::hand_off_leadership(&srv).await;
        }
    };
    tokio::select! {
        _ = removed => {
            anyhow::bail!("{}", capstan_store::StoreError::MemberRemoved);
        }
        r = capstan_store::server::serve(srv, stop) => {
            r.map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!("stopped");
        }
        _ = grace => tracing::warn!("clients still connected after 5 s; exiting anyway"),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
