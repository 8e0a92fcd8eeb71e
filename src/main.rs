//! `capstan`: one binary, one subcommand per component.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Run simulated nodes: registered, heartbeating, and marking their pods Running
    /// without containers (for tests and scale benchmarks, like kwok).
    #[arg(long)]
    simulated: bool,
    /// How many simulated nodes this process runs; with more than one they are
    /// named `<hostname>-0`, `<hostname>-1`, ...
    #[arg(long, default_value_t = 1)]
    simulated_nodes: usize,
    /// CPU capacity of each simulated node.
    #[arg(long, default_value = "4")]
    simulated_cpu: String,
    /// Memory capacity of each simulated node.
    #[arg(long, default_value = "16Gi")]
    simulated_memory: String,
    /// Maximum number of pods per node.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Labels to add when registering the node (key=value,...).
    #[arg(long, default_value = "")]
    node_labels: String,
    /// Taints to register the node with (key=value:Effect,...).
    #[arg(long, default_value = "")]
    register_with_taints: String,
    /// The CRI endpoint of the container runtime (containerd's socket).
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    container_runtime_endpoint: String,
    /// The node's address (default: the source address of the default route).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// An image archive (docker-archive or OCI tar) to import into the runtime's
    /// `k8s.io` namespace at start, with `ctr`; repeatable. No registry is needed for
    /// images that come this way.
    #[arg(long)]
    image_archive: Vec<PathBuf>,
    /// Cluster DNS server addresses for pods with `dnsPolicy: ClusterFirst`
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<String>,
    /// The cluster's DNS domain, searched by pods.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The host resolver file pods with `dnsPolicy: Default` inherit.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The kubelet's state directory (pod volumes live under `<root-dir>/pods`).
    #[arg(long, default_value = "/var/lib/kubelet")]
    root_dir: PathBuf,
    /// Where container logs are written (the kubelet's `podLogsDir`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// Do not run the service proxy (kube-proxy's nftables mode) in this agent.
    #[arg(long)]
    disable_kube_proxy: bool,
    /// The pods' address range (kube-proxy's flag): traffic to a cluster IP from
    /// outside it is masqueraded.
    #[arg(long, value_parser = parse_cidr)]
    cluster_cidr: Option<(std::net::Ipv4Addr, u8)>,
    /// The nftables table (family `ip`) the service proxy owns; distinct names let
    /// several agents share one machine.
    #[arg(long, default_value = "capstan")]
    proxy_nftables_table: String,
    /// Serve cluster DNS on this address (port 53), usually the node's address that
    /// pods reach, given to them with `--cluster-dns`.
    #[arg(long)]
    cluster_dns_bind_address: Option<std::net::IpAddr>,
    /// The address the kubelet server (logs, exec) listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// The kubelet server's port, advertised in the Node's `daemonEndpoints`.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The address of the kubelet's healthz server (plain HTTP).
    #[arg(long, default_value = "127.0.0.1")]
    healthz_bind_address: std::net::IpAddr,
    /// The port of the kubelet's healthz server (0 disables it).
    #[arg(long, default_value_t = 10248)]
    healthz_port: u16,
    /// kube-proxy's `--healthz-bind-address`: where the service proxy serves its
    /// `/healthz` (host:port; empty or port 0 disables it).
    #[arg(long, default_value = "0.0.0.0:10256")]
    proxy_healthz_bind_address: String,
    /// kube-proxy's `--metrics-bind-address`: where the service proxy serves
    /// `/metrics` (host:port; empty or port 0 disables it).
    #[arg(long, default_value = "127.0.0.1:10249")]
    proxy_metrics_bind_address: String,
    /// Duration of the node's Lease in seconds; it is renewed every quarter of it.
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: i32,
    /// How often the node status is posted when it has not changed.
    #[arg(long, default_value = "5m", value_parser = capstan_chaos::cli::parse_duration)]
    node_status_report_frequency: std::time::Duration,
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

/// Which node agent `capstan node` runs.
enum NodeConfig {
    Kubelet(Box<capstan_node::kubelet::Config>),
    Simulated(capstan_node::simulated::Config),
}

impl NodeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let node_name = match self.hostname_override {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("reading the hostname; pass --hostname-override")?
                .trim()
                .to_lowercase(),
        };
        let labels = capstan_node::registration::parse_labels(&self.node_labels)?;
        let taints = capstan_node::registration::parse_taints(&self.register_with_taints)?;
        if !self.simulated {
            return Ok(NodeConfig::Kubelet(Box::new(
                capstan_node::kubelet::Config {
                    kubeconfig: self.kubeconfig,
                    node_name,
                    runtime_endpoint: self.container_runtime_endpoint,
                    node_ip: self.node_ip,
                    max_pods: self.max_pods,
                    labels,
                    taints,
                    heartbeat: capstan_node::registration::Heartbeat {
                        lease_duration_seconds: self.node_lease_duration_seconds,
                        status_report_frequency: self.node_status_report_frequency,
                    },
                    image_archives: self.image_archive,
                    serve: std::net::SocketAddr::new(self.address, self.port),
                    healthz: (self.healthz_port != 0).then(|| {
                        std::net::SocketAddr::new(self.healthz_bind_address, self.healthz_port)
                    }),
                    pod_logs_dir: self.pod_logs_dir,
                    root_dir: self.root_dir,
                    dns: capstan_node::kubelet::cri::Dns {
                        cluster_dns: self.cluster_dns,
                        cluster_domain: self.cluster_domain,
                        ..Default::default()
                    }
                    .with_host_file(&self.resolv_conf),
                    proxy: (!self.disable_kube_proxy).then_some(
                        capstan_node::kubelet::ProxyOptions {
                            table: self.proxy_nftables_table,
                            cluster_cidr: self.cluster_cidr,
                            healthz: parse_optional_addr(&self.proxy_healthz_bind_address)
                                .map_err(anyhow::Error::msg)
                                .context("--proxy-healthz-bind-address")?,
                            metrics: parse_optional_addr(&self.proxy_metrics_bind_address)
                                .map_err(anyhow::Error::msg)
                                .context("--proxy-metrics-bind-address")?,
                        },
                    ),
                    dns_listen: self.cluster_dns_bind_address,
                },
            )));
        }
        Ok(NodeConfig::Simulated(capstan_node::simulated::Config {
            kubeconfig: self.kubeconfig,
            node_name,
            nodes: self.simulated_nodes,
            cpu: self.simulated_cpu,
            memory: self.simulated_memory,
            max_pods: self.max_pods,
            labels,
            taints,
            lease_duration_seconds: self.node_lease_duration_seconds,
            status_report_frequency: self.node_status_report_frequency,
        }))
    }
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
    match cli.command {
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
                extra_routes: None,
            };
            tokio::select! {
                r = capstan_apiserver::run(cfg) => r.context("apiserver"),
                _ = shutdown_signal() => Ok(()),
            }
        }),
        Command::Node(args) => {
            let cfg = args.into_config()?;
            rt.block_on(async move {
                let agent = async move {
                    match cfg {
                        NodeConfig::Kubelet(c) => capstan_node::kubelet::run(*c).await,
                        NodeConfig::Simulated(c) => capstan_node::simulated::run(c).await,
                    }
                };
                tokio::select! {
                    r = agent => r.context("node"),
                    _ = shutdown_signal() => Ok(()),
                }
            })
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
