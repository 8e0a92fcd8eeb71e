//! The node agent's flags, shared by `capstan node`, `capstan server` and `capstan
//! agent`, and `capstan agent` itself: a worker joining a cluster the k3s way.
//!
//! `capstan agent --server https://<server>:6443 --token <token>` fetches `/cacerts`,
//! checks it against the token's CA hash, then asks the server's agent bootstrap
//! endpoint (`join.rs`) for a kubelet client certificate for `system:node:<name>` in
//! `system:nodes`, proving the token and this node's password (a random secret kept
//! in `<data-dir>/agent/node-password`; the server remembers the first password a node
//! name came with and refuses another, as k3s's node-password check). It writes the
//! kubelet's kubeconfig and runs exactly what `capstan node` runs, reaching the
//! apiserver through a loopback load balancer over every server, as k3s's agents do. The agent never
//! gets the CA key or the service-account key: its endpoint only issues node
//! certificates.

use std::path::PathBuf;

use anyhow::Context;

/// The flags every node agent has, whoever runs it (`node`, `server`, `agent`).
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// The CRI endpoint of the container runtime (containerd's socket).
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    pub container_runtime_endpoint: String,
    /// The node's address (default: the source address of the default route).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// An image archive (docker-archive or OCI tar) to import into the runtime's
    /// `k8s.io` namespace at start, with `ctr`; repeatable. No registry is needed for
    /// images that come this way.
    #[arg(long)]
    pub image_archive: Vec<PathBuf>,
    /// Where container logs are written (the kubelet's `podLogsDir`).
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// Do not run the service proxy (kube-proxy's nftables mode) in this agent.
    #[arg(long)]
    pub disable_kube_proxy: bool,
    /// The pods' address range (kube-proxy's flag): traffic to a cluster IP from
    /// outside it is masqueraded.
    #[arg(long, value_parser = crate::parse_cidr)]
    pub cluster_cidr: Option<(std::net::Ipv4Addr, u8)>,
}

/// The kubelet's flags where they apply, plus the simulated mode's own (`capstan node`
/// and `capstan agent`).
#[derive(clap::Args)]
pub struct KubeletArgs {
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
    #[command(flatten)]
    runtime: RuntimeArgs,
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
    /// How often a running pod's configMap, secret, downwardAPI and projected volumes
    /// are written again from the API.
    #[arg(long, default_value = "1m", value_parser = capstan_chaos::cli::parse_duration)]
    sync_frequency: std::time::Duration,
}

/// Which node agent runs.
pub enum NodeConfig {
    Kubelet(Box<capstan_node::kubelet::Config>),
    Simulated(capstan_node::simulated::Config),
}

impl NodeConfig {
    /// Runs the agent until it fails.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            NodeConfig::Kubelet(c) => Ok(capstan_node::kubelet::run(*c).await?),
            NodeConfig::Simulated(c) => Ok(capstan_node::simulated::run(c).await?),
        }
    }
}

impl KubeletArgs {
    /// The agent's configuration for `node_name`, reaching the apiserver with
    /// `kubeconfig`.
    pub fn into_config(self, kubeconfig: PathBuf, node_name: String) -> anyhow::Result<NodeConfig> {
        let labels = capstan_node::registration::parse_labels(&self.node_labels)?;
        let taints = capstan_node::registration::parse_taints(&self.register_with_taints)?;
        if self.simulated {
            return Ok(NodeConfig::Simulated(capstan_node::simulated::Config {
                kubeconfig,
                node_name,
                nodes: self.simulated_nodes,
                cpu: self.simulated_cpu,
                memory: self.simulated_memory,
                max_pods: self.max_pods,
                labels,
                taints,
                lease_duration_seconds: self.node_lease_duration_seconds,
                status_report_frequency: self.node_status_report_frequency,
            }));
        }
        let rt = self.runtime;
        Ok(NodeConfig::Kubelet(Box::new(
            capstan_node::kubelet::Config {
                kubeconfig,
                node_name,
                runtime_endpoint: rt.container_runtime_endpoint,
                node_ip: rt.node_ip,
                max_pods: self.max_pods,
                labels,
                taints,
                heartbeat: capstan_node::registration::Heartbeat {
                    lease_duration_seconds: self.node_lease_duration_seconds,
                    status_report_frequency: self.node_status_report_frequency,
                },
                image_archives: rt.image_archive,
                serve: std::net::SocketAddr::new(self.address, self.port),
                healthz: (self.healthz_port != 0).then(|| {
                    std::net::SocketAddr::new(self.healthz_bind_address, self.healthz_port)
                }),
                pod_logs_dir: rt.pod_logs_dir,
                root_dir: self.root_dir,
                dns: capstan_node::kubelet::cri::Dns {
                    cluster_dns: self.cluster_dns,
                    cluster_domain: self.cluster_domain,
                    ..Default::default()
                }
                .with_host_file(&self.resolv_conf),
                proxy: (!rt.disable_kube_proxy).then_some(capstan_node::kubelet::ProxyOptions {
                    table: self.proxy_nftables_table,
                    cluster_cidr: rt.cluster_cidr,
                    healthz: crate::parse_optional_addr(&self.proxy_healthz_bind_address)
                        .map_err(anyhow::Error::msg)
                        .context("--proxy-healthz-bind-address")?,
                    metrics: crate::parse_optional_addr(&self.proxy_metrics_bind_address)
                        .map_err(anyhow::Error::msg)
                        .context("--proxy-metrics-bind-address")?,
                }),
                dns_listen: self.cluster_dns_bind_address,
                sync_frequency: self.sync_frequency,
            },
        )))
    }
}

/// `capstan agent`: k3s's agent flags, then the node agent's.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The server to join (`https://host:6443`).
    #[arg(long, short = 's', value_name = "URL")]
    server: String,
    /// The join token (`K10<ca-hash>::node:<secret>`, a server's token, or the bare
    /// secret).
    #[arg(long, short = 't', env = "CAPSTAN_TOKEN", hide_env_values = true)]
    token: String,
    /// This node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Where the agent keeps its credentials (`<data-dir>/agent`).
    #[arg(long, default_value = "/var/lib/capstan")]
    data_dir: PathBuf,
    /// The loopback port of the agent's load balancer over every server (k3s's
    /// `--lb-server-port`): the node agent reaches the apiserver through it.
    #[arg(long, default_value_t = 6444)]
    lb_server_port: u16,
    #[command(flatten)]
    kubelet: KubeletArgs,
}

/// Joins the cluster and runs the node agent until it fails.
pub async fn run(a: AgentArgs) -> anyhow::Result<()> {
    let name = match a.node_name {
        Some(n) => n,
        None => crate::server::hostname()?,
    };
    let token = crate::join::Token::parse(&a.token)?;
    let dir = a.data_dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let password_file = dir.join("node-password");
    let password = match std::fs::read_to_string(&password_file) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let p: String = rand::random::<[u8; 16]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            crate::join::write_secret(&password_file, &p)?;
            p
        }
    };
    tracing::info!(server = %a.server, node = %name, "joining the cluster as an agent");
    let req = crate::join::AgentRequest {
        name: name.clone(),
        password,
    };
    let b = crate::join::fetch_agent_bootstrap(
        &a.server,
        &token,
        &req,
        std::time::Duration::from_secs(120),
    )
    .await?;
    let lb = std::sync::Arc::new(Balancer::default());
    lb.add(std::iter::once(&a.server).chain(&b.servers));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", a.lb_server_port))
        .await
        .with_context(|| format!("--lb-server-port {}", a.lb_server_port))?;
    // Every server's certificate names 127.0.0.1, so TLS through the balancer verifies.
    let lb_url = format!("https://127.0.0.1:{}", a.lb_server_port);
    let kubeconfig = dir.join("kubelet.kubeconfig");
    let user = format!("system:node:{name}");
    crate::join::write_secret(
        &kubeconfig,
        &capstan_apiserver::tls::client_kubeconfig(
            &b.ca_cert,
            &lb_url,
            &user,
            &b.client_cert,
            &b.client_key,
        ),
    )?;
    tracing::info!(node = %name, kubeconfig = %kubeconfig.display(), servers = ?b.servers, "kubelet certificate issued; starting the node agent");
    let node = a.kubelet.into_config(kubeconfig, name)?;
    tokio::select! {
        r = lb.clone().serve(listener) => r.context("load balancer"),
        () = lb.refresh(&lb_url, &token) => Ok(()),
        r = node.run() => r.context("node agent"),
    }
}

/// k3s's agent load balancer: a loopback TCP relay to the first server that accepts a
/// connection, starting with the one that last did, over every server the cluster
/// knows (refreshed from the servers endpoint), so the agent outlives the server it
/// joined through. TLS passes through untouched.
#[derive(Default)]
struct Balancer {
    /// `host:port` of each server.
    servers: std::sync::Mutex<Vec<String>>,
    preferred: std::sync::atomic::AtomicUsize,
}

impl Balancer {
    fn add<'a>(&self, urls: impl IntoIterator<Item = &'a String>) {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        for url in urls {
            match crate::join::Target::parse(url) {
                Ok(t) => {
                    let addr = if t.host.contains(':') {
                        format!("[{}]:{}", t.host, t.port)
                    } else {
                        format!("{}:{}", t.host, t.port)
                    };
                    if !servers.contains(&addr) {
                        tracing::info!(server = %addr, "load balancer: server added");
                        servers.push(addr);
                    }
                }
                Err(e) => tracing::warn!(%url, error = %e, "load balancer: unusable server URL"),
            }
        }
    }

    async fn serve(
        self: std::sync::Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<()> {
        loop {
            let (conn, _) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move { me.relay(conn).await });
        }
    }

    async fn relay(&self, mut conn: tokio::net::TcpStream) {
        use std::sync::atomic::Ordering;
        let servers = self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let start = self.preferred.load(Ordering::Relaxed);
        for i in 0..servers.len() {
            let at = (start + i) % servers.len();
            let dial = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                tokio::net::TcpStream::connect(&servers[at]),
            );
            if let Ok(Ok(mut upstream)) = dial.await {
                if at != start {
                    self.preferred.store(at, Ordering::Relaxed);
                    tracing::info!(server = %servers[at], "load balancer: now using this server");
                }
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                return;
            }
        }
        tracing::warn!(servers = ?servers, "load balancer: no server reachable");
    }

    /// Learns servers that joined since, every 15 s.
    async fn refresh(&self, lb_url: &str, token: &crate::join::Token) {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(15)).await;
            match crate::join::fetch_apiservers(lb_url, token).await {
                Ok(servers) => self.add(&servers),
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "refreshing the server list"),
            }
        }
    }
}
