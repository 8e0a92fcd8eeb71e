//! `capstan server`: a whole control plane in one process, as k3s runs one: a store
//! member, the apiserver on it, and the components above the apiserver, each exactly
//! what its own subcommand runs, wired together over loopback. The components still
//! reach the cluster only through the apiserver (with the admin kubeconfig the
//! apiserver writes), so one process changes nothing of the architecture.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// k3s's flag names where they apply.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Where the store, certificates and component state live.
    #[arg(long, default_value = "/var/lib/capstan")]
    data_dir: PathBuf,
    /// Address the apiserver listens on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// The apiserver's HTTPS port.
    #[arg(long, default_value_t = 6443)]
    https_listen_port: u16,
    /// Address clients reach the apiserver at (certificate, kubeconfig).
    #[arg(long)]
    advertise_address: Option<String>,
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = "/etc/capstan/capstan.yaml")]
    write_kubeconfig: PathBuf,
    /// This server's name: its store member's and its node's (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The store's client port (loopback).
    #[arg(long, default_value_t = 2379)]
    store_client_port: u16,
    /// The store's peer port (loopback).
    #[arg(long, default_value_t = 2380)]
    store_peer_port: u16,
    /// Do not run the node agent: this server schedules no pods onto itself.
    #[arg(long)]
    disable_agent: bool,
    /// The agent's container runtime (containerd's CRI socket).
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    container_runtime_endpoint: String,
    /// The agent's node address (default: the source address of the default route).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Image archives the agent imports into the runtime at start; repeatable.
    #[arg(long)]
    image_archive: Vec<PathBuf>,
    /// Where the agent writes container logs (the kubelet's `podLogsDir`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// Do not run the agent's service proxy (kube-proxy's nftables mode).
    #[arg(long)]
    disable_kube_proxy: bool,
    /// The pods' address range: traffic to a cluster IP from outside it is masqueraded.
    #[arg(long, value_parser = crate::parse_cidr)]
    cluster_cidr: Option<(std::net::Ipv4Addr, u8)>,
    /// The cluster DNS server pods use. By default the agent serves cluster DNS itself
    /// on the node's address and points pods there; given this, it serves none.
    #[arg(long)]
    cluster_dns: Option<std::net::IpAddr>,
    /// Serve no cluster DNS (pods with `dnsPolicy: ClusterFirst` get the host's
    /// resolvers, unless `--cluster-dns` names one).
    #[arg(long)]
    disable_cluster_dns: bool,
}

/// The machine's hostname, the default node name (as the kubelet's).
pub fn hostname() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname")?
        .trim()
        .to_lowercase())
}

/// Runs every part until one fails or `shutdown` resolves.
pub async fn run(
    a: ServerArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let name = match a.node_name {
        Some(n) => n,
        None => hostname()?,
    };
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    if let Some(dir) = a.write_kubeconfig.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let client_url = format!("http://127.0.0.1:{}", a.store_client_port);
    let peer_url = format!("http://127.0.0.1:{}", a.store_peer_port);
    let store_cfg = capstan_store::Config {
        name: name.clone(),
        data_dir: a.data_dir.join("store"),
        listen_client_urls: vec![client_url.clone()],
        advertise_client_urls: vec![client_url.clone()],
        listen_peer_urls: vec![peer_url.clone()],
        initial_advertise_peer_urls: vec![peer_url.clone()],
        initial_cluster: format!("{name}={peer_url}"),
        ..capstan_store::Config::default()
    };
    tracing::info!(name = %name, data_dir = %a.data_dir.display(), "starting server");
    let srv = capstan_store::EtcdServer::start(store_cfg)
        .await
        .context("opening the store")?;
    let store = async {
        capstan_store::server::serve(srv, std::future::pending())
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("store")
    };
    // A kubeconfig from an earlier run would let the components start before this
    // apiserver has rewritten it; they wait for the fresh one.
    let _ = std::fs::remove_file(&a.write_kubeconfig);
    let api_cfg = capstan_apiserver::Config {
        etcd_servers: vec![client_url],
        listen: std::net::SocketAddr::new(a.bind_address, a.https_listen_port),
        cert_dir: a.data_dir.join("pki"),
        kubeconfig_out: Some(a.write_kubeconfig.clone()),
        token_auth_file: None,
        advertise_address: a.advertise_address,
        compaction_interval: Duration::from_secs(300),
        kubelet_client_certificate: None,
        kubelet_client_key: None,
    };
    let apiserver = async { capstan_apiserver::run(api_cfg).await.context("apiserver") };
    let kubeconfig = a.write_kubeconfig.clone();
    let pki = a.data_dir.join("pki");
    // The agent's DNS server listens on the node's address: pods reach it through
    // their default route, and it needs no Service of its own (see ARCHITECTURE.md).
    let node_ip = a
        .node_ip
        .unwrap_or_else(capstan_node::kubelet::machine::default_node_ip);
    let dns_listen = (a.cluster_dns.is_none() && !a.disable_cluster_dns).then_some(node_ip);
    let cluster_dns: Vec<String> = a
        .cluster_dns
        .or(dns_listen)
        .map(|ip| ip.to_string())
        .into_iter()
        .collect();
    let agent = (!a.disable_agent).then(|| capstan_node::kubelet::Config {
        kubeconfig: kubeconfig.clone(),
        node_name: name.clone(),
        runtime_endpoint: a.container_runtime_endpoint,
        node_ip: Some(node_ip),
        max_pods: 110,
        // As k3s labels its servers.
        labels: [(
            "node-role.kubernetes.io/control-plane".to_string(),
            "true".to_string(),
        )]
        .into_iter()
        .collect(),
        taints: Vec::new(),
        heartbeat: capstan_node::registration::Heartbeat {
            lease_duration_seconds: 40,
            status_report_frequency: Duration::from_secs(300),
        },
        dns: capstan_node::kubelet::cri::Dns {
            cluster_dns,
            cluster_domain: "cluster.local".into(),
            ..Default::default()
        }
        .with_host_file(std::path::Path::new("/etc/resolv.conf")),
        root_dir: a.data_dir.join("agent/kubelet"),
        pod_logs_dir: a.pod_logs_dir,
        image_archives: a.image_archive,
        proxy: (!a.disable_kube_proxy).then(|| capstan_node::kubelet::ProxyOptions {
            cluster_cidr: a.cluster_cidr,
            ..Default::default()
        }),
        dns_listen,
        // The kubelet's default: where the apiserver reaches it for logs and exec.
        serve: std::net::SocketAddr::from(([0, 0, 0, 0], 10250)),
    });
    let components = async move {
        wait_for_file(&kubeconfig).await;
        tracing::info!(kubeconfig = %kubeconfig.display(), "control plane components starting");
        let controllers = capstan_controllers::Config {
            kubeconfig: Some(kubeconfig.clone()),
            election: Some(capstan_client::leader::LeaderConfig {
                namespace: "kube-system".into(),
                name: "kube-controller-manager".into(),
                identity: capstan_client::identity(),
                lease_duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_secs(2),
            }),
            controllers: vec!["*".into()],
            node_monitor: Default::default(),
            service_account_key: Some(pki.join("sa.key")),
            root_ca: Some(pki.join("ca.crt")),
        };
        let scheduler = capstan_scheduler::Config {
            kubeconfig: Some(kubeconfig.clone()),
            // The apiserver's /healthz covers the process; no second HTTPS port.
            serve: None,
            ..capstan_scheduler::Config::default()
        };
        let agent = async move {
            match agent {
                Some(cfg) => capstan_node::kubelet::run(cfg).await.context("node agent"),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = capstan_controllers::run(controllers) => r.context("controller-manager"),
            r = capstan_scheduler::run(scheduler, std::future::pending()) => r.context("scheduler"),
            r = agent => r,
        }
    };
    tokio::select! {
        r = store => r,
        r = apiserver => r,
        r = components => r,
        () = shutdown => Ok(()),
    }
}

/// Resolves once `path` exists (the apiserver writes the kubeconfig as it starts).
async fn wait_for_file(path: &std::path::Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
