//! `capstan server`: a whole control plane in one process, as k3s runs one: a store
//! member, the apiserver on it, and the components above the apiserver, each exactly
//! what its own subcommand runs, wired together over loopback. The components still
//! reach the cluster only through the apiserver, each with its own identity (a
//! kubeconfig with a certificate from the cluster CA: `system:kube-controller-manager`,
//! `system:kube-scheduler`, `system:node:<name>`), so one process changes nothing of
//! the architecture, nor of who may do what.
//!
//! HA, as k3s does it: `--cluster-init` runs the store member on Raft from the start
//! (a one-member cluster that can grow) and writes a join token; `--server URL --token
//! T` on another machine joins through that server (`join.rs`), its store member added
//! as a learner and promoted once caught up, and then runs the same parts. Every server
//! runs every part; the controller-manager and scheduler elect one active instance
//! through their Leases. A restarted server finds its membership in its data dir.

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
    #[command(flatten)]
    runtime: crate::agent::RuntimeArgs,
    /// The cluster DNS server pods use. By default the agent serves cluster DNS itself
    /// on the node's address and points pods there; given this, it serves none.
    #[arg(long)]
    cluster_dns: Option<std::net::IpAddr>,
    /// Serve no cluster DNS (pods with `dnsPolicy: ClusterFirst` get the host's
    /// resolvers, unless `--cluster-dns` names one).
    #[arg(long)]
    disable_cluster_dns: bool,
    /// Start a cluster other servers can join: the store runs on Raft as a one-member
    /// cluster, and the join token is written to `<data-dir>/server/token`.
    #[arg(long, conflicts_with = "server")]
    cluster_init: bool,
    /// Join the cluster of the server at this URL (`https://host:6443`).
    #[arg(long, short = 's', alias = "join", value_name = "URL")]
    server: Option<String>,
    /// The join token (`K10<ca-hash>::server:<secret>`, or the bare secret); with
    /// `--cluster-init`, the secret to use instead of a random one.
    #[arg(long, short = 't', env = "CAPSTAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A secret for agents only (k3s's `--agent-token`): it gets a kubelet certificate
    /// from `capstan agent` but no server's keys. Without it, agents use the server
    /// token.
    #[arg(long, env = "CAPSTAN_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// More names and addresses for the apiserver's serving certificate; repeatable.
    #[arg(long)]
    tls_san: Vec<String>,
    /// Addresses for LoadBalancer Services (CIDRs or `first-last` ranges,
    /// comma-separated), handed out by the controller-manager's service-lb-controller
    /// and routed by every agent's service proxy, as k3s's ServiceLB or MetalLB do on
    /// bare metal; the pool must be routed to the nodes. Without it LoadBalancer
    /// Services stay `<pending>`.
    #[arg(long, value_parser = capstan_controllers::servicelb::Pool::parse)]
    service_lb_pool: Option<capstan_controllers::servicelb::Pool>,
    /// Rebuild the store as a single member that keeps its data (from
    /// `--cluster-reset-restore-path` if given), then start: a lost quorum's way back,
    /// or a restore. Other servers may join it afterwards.
    #[arg(long, conflicts_with = "server")]
    cluster_reset: bool,
    /// The snapshot (`capstan etcd-snapshot save`, `etcdctl snapshot save`) the reset
    /// store starts from.
    #[arg(long, requires = "cluster_reset", value_name = "FILE")]
    cluster_reset_restore_path: Option<PathBuf>,
    /// A flag for the controller-manager (`secure-port=N`, `bind-address=IP`), as
    /// k3s passes them; repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    kube_controller_manager_arg: Vec<String>,
    /// A flag for the scheduler (`secure-port=N`, `bind-address=IP`); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    kube_scheduler_arg: Vec<String>,
    /// A flag for the kubelet (`healthz-port=N`, `healthz-bind-address=IP`); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    kubelet_arg: Vec<String>,
    /// A flag for the service proxy (`healthz-bind-address=HOST:PORT`,
    /// `metrics-bind-address=HOST:PORT`); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    kube_proxy_arg: Vec<String>,
}

/// The `--<component>-arg key=value` flags (a leading `--` allowed, as k3s writes
/// them), refused for keys this server does not pass on.
fn component_args(
    flag: &str,
    args: &[String],
    known: &[&str],
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for a in args {
        let (k, v) = a
            .trim_start_matches("--")
            .split_once('=')
            .with_context(|| format!("--{flag} {a}: not key=value"))?;
        anyhow::ensure!(
            known.contains(&k),
            "--{flag} {a}: {k} is not supported (only {})",
            known.join(", ")
        );
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A component's `bind-address` and port keys, over k3s's defaults (loopback); port 0
/// turns the endpoint off.
fn secure_endpoint(
    args: &std::collections::HashMap<String, String>,
    address_key: &str,
    port_key: &str,
    default_port: u16,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let ip: std::net::IpAddr = match args.get(address_key) {
        Some(a) => a.parse().with_context(|| format!("{address_key}={a}"))?,
        None => std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let port: u16 = match args.get(port_key) {
        Some(p) => p.parse().with_context(|| format!("{port_key}={p}"))?,
        None => default_port,
    };
    Ok((port != 0).then(|| std::net::SocketAddr::new(ip, port)))
}

/// A `host:port` key (kube-proxy's form); empty or port 0 turns it off.
fn addr_arg(
    args: &std::collections::HashMap<String, String>,
    key: &str,
    default: std::net::SocketAddr,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    match args.get(key) {
        Some(v) => crate::parse_optional_addr(v)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{key}={v}")),
        None => Ok(Some(default)),
    }
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
    let name = match &a.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    // Each component serves its health and metrics on its own port, as upstream and
    // k3s (on loopback).
    let cm_args = component_args(
        "kube-controller-manager-arg",
        &a.kube_controller_manager_arg,
        &["secure-port", "bind-address"],
    )?;
    let cm_serve = secure_endpoint(&cm_args, "bind-address", "secure-port", 10257)?;
    let sched_args = component_args(
        "kube-scheduler-arg",
        &a.kube_scheduler_arg,
        &["secure-port", "bind-address"],
    )?;
    let sched_serve = secure_endpoint(&sched_args, "bind-address", "secure-port", 10259)?;
    let kubelet_args = component_args(
        "kubelet-arg",
        &a.kubelet_arg,
        &["healthz-port", "healthz-bind-address"],
    )?;
    let kubelet_healthz =
        secure_endpoint(&kubelet_args, "healthz-bind-address", "healthz-port", 10248)?;
    let proxy_args = component_args(
        "kube-proxy-arg",
        &a.kube_proxy_arg,
        &["healthz-bind-address", "metrics-bind-address"],
    )?;
    let proxy_healthz = addr_arg(
        &proxy_args,
        "healthz-bind-address",
        std::net::SocketAddr::from(([127, 0, 0, 1], 10256)),
    )?;
    let proxy_metrics = addr_arg(
        &proxy_args,
        "metrics-bind-address",
        std::net::SocketAddr::from(([127, 0, 0, 1], 10249)),
    )?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    if let Some(dir) = a.write_kubeconfig.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The store speaks TLS on both ports, certificates required (see ensure_etcd_pki).
    let client_url = format!("https://127.0.0.1:{}", a.store_client_port);
    let store_dir = a.data_dir.join("store");
    let cluster_file = a.data_dir.join("server").join("initial-cluster");
    let token_arg = a
        .token
        .as_deref()
        .map(crate::join::Token::parse)
        .transpose()?;
    // A server that ever ran on Raft stays on it, flags or not.
    let ha = a.cluster_init || a.server.is_some() || cluster_file.exists();
    let api_host = a
        .advertise_address
        .clone()
        .unwrap_or_else(|| a.bind_address.to_string().replace("0.0.0.0", "127.0.0.1"));
    // Peers on other machines reach the store member at this server's address; a
    // single server keeps it on loopback.
    let peer_host = if ha {
        a.advertise_address
            .clone()
            .or_else(|| a.runtime.node_ip.map(|ip| ip.to_string()))
            .unwrap_or_else(|| {
                if a.bind_address.is_unspecified() {
                    capstan_node::kubelet::machine::default_node_ip().to_string()
                } else {
                    a.bind_address.to_string()
                }
            })
    } else {
        "127.0.0.1".to_string()
    };
    let peer_listen_host = if ha {
        a.bind_address.to_string()
    } else {
        "127.0.0.1".to_string()
    };
    let peer_url = format!("https://{}:{}", url_host(&peer_host), a.store_peer_port);
    let peer_listen = format!(
        "https://{}:{}",
        url_host(&peer_listen_host),
        a.store_peer_port
    );
    if a.cluster_reset {
        cluster_reset(&a, &name, ha.then_some(peer_url.as_str()))?;
    }
    // A reset Raft store's data is in no log entry: it is snapshotted (and the log
    // purged) before anyone can join, so joiners start from the snapshot.
    let snapshot_first = a.cluster_reset && ha;
    let joined = store_dir.join("member").join("identity").exists();
    let pki = a.data_dir.join("pki");
    let cluster_state = if joined {
        "existing"
    } else if ha {
        first_start(&a, &name, &peer_url, token_arg.as_ref()).await?
    } else {
        "new"
    };
    let initial_cluster = if ha {
        std::fs::read_to_string(&cluster_file)
            .with_context(|| format!("reading {}", cluster_file.display()))?
            .trim()
            .to_string()
    } else {
        format!("{name}={peer_url}")
    };
    // The serving certificate names every address this server is reached at.
    let mut sans = vec![api_host.clone(), peer_host.clone(), name.clone()];
    sans.extend(a.runtime.node_ip.map(|ip| ip.to_string()));
    sans.extend(a.tls_san.iter().cloned());
    let pkis = capstan_apiserver::tls::ensure_pki(&pki, &sans).context("certificates")?;
    let etcd_pki =
        capstan_apiserver::tls::ensure_etcd_pki(&pki, &sans).context("store certificates")?;
    let member_tls = |cert: &std::path::Path, key: &std::path::Path| capstan_store::tls::TlsInfo {
        cert_file: Some(cert.to_path_buf()),
        key_file: Some(key.to_path_buf()),
        trusted_ca_file: Some(etcd_pki.ca_cert.clone()),
        client_cert_auth: true,
    };
    // The apiserver's (and the join endpoint's) client certificate for the store.
    let store_client_tls = capstan_apiserver::storage::EtcdTls {
        ca_file: Some(etcd_pki.ca_cert.clone()),
        cert_file: Some(etcd_pki.client_cert.clone()),
        key_file: Some(etcd_pki.client_key.clone()),
    };
    // Every server has a token: agents join single servers too.
    let token = crate::join::ensure_token(&a.data_dir, token_arg.as_ref(), &pkis.ca_pem)?;
    let agent_secret = a
        .agent_token
        .as_deref()
        .map(crate::join::Token::parse)
        .transpose()
        .context("--agent-token")?
        .map(|t| t.secret);
    if let Some(secret) = &agent_secret {
        crate::join::write_secret(
            &a.data_dir.join("server").join("agent-token"),
            &format!("K10{}::node:{secret}", crate::join::ca_hash(&pkis.ca_pem)),
        )?;
    }
    tracing::info!(
        token_file = %crate::join::token_path(&a.data_dir).display(),
        "{}agents join with capstan agent --server https://{}:{} --token <the token in that file>",
        if ha { "other servers and " } else { "" },
        url_host(&api_host),
        a.https_listen_port
    );
    let join_state = std::sync::Arc::new(crate::join::JoinState {
        token: token.clone(),
        agent_secret,
        servers_may_join: ha,
        ca_pem: pkis.ca_pem.clone(),
        pki_dir: pki.clone(),
        store_url: client_url.clone(),
        store_tls: store_client_tls.clone(),
        etcd_ca_dir: pki.join("etcd"),
    });
    let join_routes = Some(crate::join::routes(join_state.clone()));
    let token = ha.then_some(token);
    let store_cfg = capstan_store::Config {
        name: name.clone(),
        data_dir: store_dir,
        listen_client_urls: vec![client_url.clone()],
        advertise_client_urls: vec![client_url.clone()],
        listen_peer_urls: vec![peer_listen],
        initial_advertise_peer_urls: vec![peer_url.clone()],
        initial_cluster,
        initial_cluster_state: cluster_state.to_string(),
        raft: ha,
        // Only servers holding the token reach the store's Raft.
        peer_secret: token.map(|t| t.secret),
        client_tls: member_tls(&etcd_pki.server_cert, &etcd_pki.server_key),
        peer_tls: member_tls(&etcd_pki.peer_cert, &etcd_pki.peer_key),
        ..capstan_store::Config::default()
    };
    tracing::info!(name = %name, data_dir = %a.data_dir.display(), ha, "starting server");
    let srv = capstan_store::EtcdServer::start(store_cfg)
        .await
        .context("opening the store")?;
    let removed = {
        let srv = srv.clone();
        async move { srv.removed().await }
    };
    // On SIGTERM a leading store member first hands leadership to another, so the
    // cluster does not wait an election timeout for the one that is leaving.
    let shutdown = {
        let srv = srv.clone();
        async move {
            shutdown.await;
            hand_off_leadership(&srv).await;
        }
    };
    let voter = {
        let srv = srv.clone();
        async move { become_voter(&srv).await }
    };
    let reset_store = srv.clone();
    let store = async {
        capstan_store::server::serve(srv, std::future::pending())
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("store")
    };
    // A kubeconfig from an earlier run would let the components start before this
    // apiserver has rewritten it; they wait for the fresh one.
    let _ = std::fs::remove_file(&a.write_kubeconfig);
    // Agents' load balancers learn every server's URL from the store.
    let register = {
        let (store, tls, name) = (client_url.clone(), store_client_tls.clone(), name.clone());
        let api_url = format!("https://{}:{}", url_host(&api_host), a.https_listen_port);
        async move { crate::join::register_apiserver(&store, &tls, &name, &api_url).await }
    };
    let api_cfg = capstan_apiserver::Config {
        etcd_servers: vec![client_url],
        listen: std::net::SocketAddr::new(a.bind_address, a.https_listen_port),
        cert_dir: pki.clone(),
        kubeconfig_out: Some(a.write_kubeconfig.clone()),
        token_auth_file: None,
        advertise_address: a.advertise_address,
        compaction_interval: Duration::from_secs(300),
        kubelet_client_certificate: None,
        kubelet_client_key: None,
        etcd_tls: store_client_tls,
        extra_routes: join_routes,
    };
    // A learner's store refuses the apiserver's reads: it starts once this member votes.
    let apiserver = async {
        voter.await?;
        if let (true, Some(raft)) = (snapshot_first, reset_store.raft()) {
            raft.snapshot_and_purge()
                .await
                .context("snapshotting the reset store")?;
            tracing::info!("reset store snapshotted; other servers may join");
        }
        tokio::spawn(register);
        // The server's own shutdown (leadership hand-off, then exit) ends this
        // future; the apiserver's endpoint then expires with its key's TTL.
        capstan_apiserver::run(api_cfg, std::future::pending())
            .await
            .context("apiserver")
    };
    let kubeconfig = a.write_kubeconfig.clone();
    // Each component has its own identity, as upstream's (k3s keeps these under
    // `server/cred` and `agent/`): the authorizer sees who asks, and the bootstrap
    // policy grants each what it needs, not system:masters.
    let api_url = format!("https://{}:{}", url_host(&api_host), a.https_listen_port);
    let cred = a.data_dir.join("server").join("cred");
    let identity = |file: &str, user: &str, group: Option<&str>| {
        write_identity(&pki, &pkis.ca_pem, &api_url, &cred.join(file), user, group)
    };
    let controller_kubeconfig = identity(
        "controller.kubeconfig",
        "system:kube-controller-manager",
        None,
    )?;
    let scheduler_kubeconfig = identity("scheduler.kubeconfig", "system:kube-scheduler", None)?;
    let kubelet_kubeconfig = write_identity(
        &pki,
        &pkis.ca_pem,
        &api_url,
        &a.data_dir.join("agent").join("kubelet.kubeconfig"),
        &format!("system:node:{name}"),
        Some("system:nodes"),
    )?;
    // The agent's DNS server listens on the node's address: pods reach it through
    // their default route, and it needs no Service of its own (see ARCHITECTURE.md).
    let node_ip = a
        .runtime
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
        kubeconfig: kubelet_kubeconfig,
        node_name: name.clone(),
        runtime_endpoint: a.runtime.container_runtime_endpoint,
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
        pod_logs_dir: a.runtime.pod_logs_dir,
        image_archives: a.runtime.image_archive,
        proxy: (!a.runtime.disable_kube_proxy).then(|| capstan_node::kubelet::ProxyOptions {
            cluster_cidr: a.runtime.cluster_cidr,
            healthz: proxy_healthz,
            metrics: proxy_metrics,
            ..Default::default()
        }),
        dns_listen,
        // The kubelet's default: where the apiserver reaches it for logs and exec.
        serve: std::net::SocketAddr::from(([0, 0, 0, 0], 10250)),
        healthz: kubelet_healthz,
        // The kubelet's default `--sync-frequency`.
        sync_frequency: std::time::Duration::from_secs(60),
    });
    let lb_pool = a.service_lb_pool.clone();
    let components = async move {
        wait_for_file(&kubeconfig).await;
        tracing::info!(kubeconfig = %kubeconfig.display(), "control plane components starting");
        let controllers = capstan_controllers::Config {
            kubeconfig: Some(controller_kubeconfig),
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
            service_lb_pool: lb_pool,
            serve: cm_serve,
        };
        let scheduler = capstan_scheduler::Config {
            kubeconfig: Some(scheduler_kubeconfig),
            serve: sched_serve,
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
    // An HA server's kubeconfig lists every server (see `list_servers_in_kubeconfig`).
    let listing = {
        let (path, pkis, own) = (a.write_kubeconfig.clone(), pkis.clone(), api_url.clone());
        async move {
            if ha {
                list_servers_in_kubeconfig(&path, &pkis, &own, &join_state).await;
            }
            std::future::pending::<anyhow::Result<()>>().await
        }
    };
    tokio::select! {
        r = store => r,
        r = apiserver => r,
        r = components => r,
        r = listing => r,
        () = removed => Err(anyhow::anyhow!("{}", capstan_store::StoreError::MemberRemoved)),
        () = shutdown => Ok(()),
    }
}

/// Keeps an HA server's admin kubeconfig listing every server recorded in the store:
/// the current context `capstan` stays on this server, and each server also gets a
/// context `capstan-<name>`, so a user whose server is down switches with `kubectl
/// --context`. kubectl takes one server per cluster entry; a load balancer in front of
/// the servers is the other way (the agents have their own). Written to a temp file and
/// renamed, so a reader never sees half of it; rewritten only when the list changes.
async fn list_servers_in_kubeconfig(
    path: &std::path::Path,
    pki: &capstan_apiserver::tls::Pki,
    own: &str,
    join: &crate::join::JoinState,
) {
    wait_for_file(path).await;
    loop {
        match crate::join::named_apiservers(join).await {
            Ok(mut servers) if servers.len() > 1 => {
                servers.sort();
                let text = pki.admin_kubeconfig_listing(own, &servers);
                if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
                    let tmp = path.with_extension("tmp");
                    let written =
                        std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, path));
                    match written {
                        Ok(()) => tracing::info!(
                            kubeconfig = %path.display(),
                            servers = servers.len(),
                            "kubeconfig lists every server"
                        ),
                        Err(e) => tracing::warn!(error = %e, "rewriting the kubeconfig"),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "listing the servers for the kubeconfig")
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// The first start of an HA server: joins the cluster of `--server` (the keys and the
/// store membership from the bootstrap endpoint), or sets up a `--cluster-init` store.
/// Returns the store's `--initial-cluster-state`.
async fn first_start(
    a: &ServerArgs,
    name: &str,
    peer_url: &str,
    token_arg: Option<&crate::join::Token>,
) -> anyhow::Result<&'static str> {
    let store_dir = a.data_dir.join("store");
    let cluster_file = a.data_dir.join("server").join("initial-cluster");
    let pki = a.data_dir.join("pki");
    let has_store = store_dir.join("member").exists();
    if let Some(url) = &a.server {
        let token = token_arg.context("--server needs --token")?;
        if has_store && !cluster_file.exists() {
            anyhow::bail!(
                "{} holds the store of another cluster; a joining server needs a fresh data dir",
                store_dir.display()
            );
        }
        // What an interrupted earlier join left: the store starts over from the log.
        if has_store {
            std::fs::remove_dir_all(&store_dir)
                .with_context(|| format!("removing {}", store_dir.display()))?;
        }
        let req = crate::join::JoinRequest {
            name: name.to_string(),
            peer_urls: vec![peer_url.to_string()],
        };
        tracing::info!(server = %url, peer_url = %peer_url, "joining the cluster");
        let b = crate::join::fetch_bootstrap(url, token, &req, Duration::from_secs(120)).await?;
        // The cluster's CA and service-account key; this server's own certificates
        // are then issued by that CA.
        std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
        std::fs::write(pki.join("ca.crt"), &b.ca_cert).context("writing ca.crt")?;
        crate::join::write_secret(&pki.join("ca.key"), &b.ca_key)?;
        crate::join::write_secret(&pki.join("sa.key"), &b.sa_key)?;
        for f in ["apiserver.crt", "apiserver.key", "admin.crt", "admin.key"] {
            let _ = std::fs::remove_file(pki.join(f));
        }
        // The store's CA: this server's member and client certificates are issued
        // from it, so the other members' peer and client ports accept them.
        if b.etcd_ca_cert.is_empty() || b.etcd_ca_key.is_empty() {
            anyhow::bail!("{url} sent no store CA: it runs an older capstan without store TLS");
        }
        let etcd_dir = pki.join("etcd");
        std::fs::create_dir_all(&etcd_dir)
            .with_context(|| format!("creating {}", etcd_dir.display()))?;
        std::fs::write(etcd_dir.join("ca.crt"), &b.etcd_ca_cert).context("writing etcd/ca.crt")?;
        crate::join::write_secret(&etcd_dir.join("ca.key"), &b.etcd_ca_key)?;
        for f in ["server", "peer", "client"] {
            for ext in ["crt", "key"] {
                let _ = std::fs::remove_file(etcd_dir.join(format!("{f}.{ext}")));
            }
        }
        std::fs::create_dir_all(cluster_file.parent().unwrap_or(&a.data_dir))?;
        std::fs::write(&cluster_file, &b.initial_cluster)
            .with_context(|| format!("writing {}", cluster_file.display()))?;
        tracing::info!(member = %b.member_id, initial_cluster = %b.initial_cluster, "added to the store cluster");
        return Ok("existing");
    } else if !cluster_file.exists() {
        if has_store {
            anyhow::bail!(
                    "{} holds a single server's store, which cannot grow into a cluster; --cluster-init needs a fresh data dir",
                    store_dir.display()
                );
        }
        std::fs::create_dir_all(cluster_file.parent().unwrap_or(&a.data_dir))?;
        std::fs::write(&cluster_file, format!("{name}={peer_url}"))
            .with_context(|| format!("writing {}", cluster_file.display()))?;
    }
    Ok("new")
}

/// If this store member leads a Raft cluster, moves leadership to another voter (etcd's
/// `MoveLeader`, which waits until the transferee has caught up and leads), within a
/// few seconds; a member that cannot hand over simply leaves, and the others elect.
pub async fn hand_off_leadership(srv: &capstan_store::EtcdServer) {
    let Some(raft) = srv.raft() else {
        return;
    };
    if !srv.is_leader() {
        return;
    }
    // Within `capstan store`'s 5 s grace after the signal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    for m in raft.members() {
        if m.id == srv.member_id || m.is_learner {
            continue;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, raft.move_leader(m.id)).await {
            Ok(Ok(())) => {
                tracing::info!(from = %format!("{:x}", srv.member_id), to = %format!("{:x}", m.id),
                    name = %m.name, "handed store leadership over before stopping");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(to = %format!("{:x}", m.id), error = %e, "store leadership transfer failed")
            }
            Err(_) => {
                tracing::warn!(to = %format!("{:x}", m.id), "store leadership transfer timed out");
                return;
            }
        }
    }
}

/// `--cluster-reset`, as k3s's: the store is rebuilt from a snapshot (the given one,
/// else one taken of its own data dir), as a single member; the old store is kept
/// aside in `<data-dir>/server/db/store-old-<unix time>`. With `peer_url` (HA) the
/// membership file names this server alone, so the store starts as a new one-member
/// Raft cluster that others can join.
fn cluster_reset(a: &ServerArgs, name: &str, peer_url: Option<&str>) -> anyhow::Result<()> {
    let store_dir = a.data_dir.join("store");
    let db = a.data_dir.join("server").join("db");
    std::fs::create_dir_all(&db).with_context(|| format!("creating {}", db.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let snapshot = match &a.cluster_reset_restore_path {
        Some(p) => {
            anyhow::ensure!(
                p.is_file(),
                "--cluster-reset-restore-path {}: no such file",
                p.display()
            );
            p.clone()
        }
        None => {
            let p = db.join(format!("reset-{name}-{now}"));
            capstan_store::server::maintenance::export_snapshot(&store_dir, &p)
                .with_context(|| format!("snapshot of {}", store_dir.display()))?;
            p
        }
    };
    let old = db.join(format!("store-old-{now}"));
    if store_dir.exists() {
        std::fs::rename(&store_dir, &old)
            .with_context(|| format!("moving {} aside", store_dir.display()))?;
    }
    if let Err(e) = capstan_store::server::maintenance::restore_snapshot(&snapshot, &store_dir) {
        // Put the old store back: a failed reset changes nothing.
        let _ = std::fs::remove_dir_all(&store_dir);
        if old.exists() {
            let _ = std::fs::rename(&old, &store_dir);
        }
        return Err(e).with_context(|| format!("restoring {}", snapshot.display()));
    }
    let cluster_file = a.data_dir.join("server").join("initial-cluster");
    if let Some(peer_url) = peer_url {
        std::fs::write(&cluster_file, format!("{name}={peer_url}"))
            .with_context(|| format!("writing {}", cluster_file.display()))?;
    }
    tracing::warn!(snapshot = %snapshot.display(), old_store = %old.display(),
        "store reset to a single member from the snapshot; other servers must join again with fresh data dirs");
    Ok(())
}

/// A host as it goes into a URL (IPv6 addresses in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Waits until this server's store member is a voter, promoting it when it joined as
/// a learner (once it has caught up with the leader's log, which the leader checks),
/// and the store has a leader. A single member or a founding one is a voter from the
/// start.
async fn become_voter(srv: &capstan_store::EtcdServer) -> anyhow::Result<()> {
    use capstan_proto::raftpb::change_members_request::Kind;
    let Some(raft) = srv.raft() else {
        return Ok(());
    };
    let mut last_err = String::new();
    loop {
        // A new member learns the membership from the leader's log.
        match raft.members().into_iter().find(|m| m.id == srv.member_id) {
            Some(m) if !m.is_learner => break,
            Some(_) => {
                let req = capstan_proto::raftpb::ChangeMembersRequest {
                    kind: Kind::Promote as i32,
                    id: srv.member_id,
                    ..Default::default()
                };
                match raft.change_members(req).await {
                    Ok(_) => {
                        tracing::info!(member = %format!("{:x}", srv.member_id), "store member promoted to voter");
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if e != last_err {
                            tracing::info!(error = %e, "store member not promoted yet");
                            last_err = e;
                        }
                    }
                }
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // After a whole-cluster restart the servers come back one by one: the apiserver
    // (which gives up on a store it cannot read for a minute) waits for a quorum.
    let mut logged = false;
    // A linearizable read needs a leader that a quorum confirms.
    while let Err(e) = srv.linearizable_read().await {
        if !logged {
            tracing::info!(error = %e, "waiting for a store leader (a quorum of the servers)");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Writes a kubeconfig for `user` (in `group`) with a fresh certificate from the
/// cluster CA, returning its path.
fn write_identity(
    pki: &std::path::Path,
    ca_pem: &str,
    server: &str,
    path: &std::path::Path,
    user: &str,
    group: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let (cert, key) = capstan_apiserver::tls::issue_client_cert(pki, user, group)
        .with_context(|| format!("the certificate of {user}"))?;
    crate::join::write_secret(
        path,
        &capstan_apiserver::tls::client_kubeconfig(ca_pem, server, user, &cert, &key),
    )?;
    Ok(path.to_path_buf())
}

/// Resolves once `path` exists (the apiserver writes the kubeconfig as it starts).
async fn wait_for_file(path: &std::path::Path) {
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
