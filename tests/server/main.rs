//! Integration tests of `capstan server`: the whole control plane in one process, used
//! the way a user uses it, with the real `kubectl` and the kubeconfig it wrote.

#[path = "../support/mod.rs"]
mod support;

// The kubelet tests' private containerd, for the server's own agent.
#[allow(dead_code)]
#[path = "../kubelet/containerd.rs"]
mod containerd;

mod agent;
mod ha;
mod ops;
mod partition;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{eventually, free_port, Component};

/// A `capstan server` process with its own data dir; SIGKILLed on drop.
struct ServerProcess {
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    /// The apiserver's port on `host`.
    https_port: u16,
    /// The store member's client port on loopback (for `etcdctl`).
    store_client_port: u16,
    /// The store member's peer port on `host`.
    store_peer_port: u16,
    /// The address the server binds: 127.0.0.1, or its address in `netns`.
    host: String,
    /// The network namespace (of `ip netns add`) the server runs in, as on a machine
    /// of its own.
    netns: Option<String>,
    /// Where the components serve their health and metrics.
    ports: HealthPorts,
}

/// The components' health and metrics ports (on 127.0.0.1).
struct HealthPorts {
    controller_manager: u16,
    scheduler: u16,
    kubelet: u16,
    proxy_healthz: u16,
    proxy_metrics: u16,
}

impl ServerProcess {
    /// A server without its node agent (the tests bring simulated nodes).
    fn start(extra: &[&str]) -> ServerProcess {
        Self::named("srv", extra)
    }

    /// [`ServerProcess::start`] with its own node (and store member) name.
    fn named(name: &str, extra: &[&str]) -> ServerProcess {
        let mut args = vec!["--disable-agent"];
        args.extend(extra);
        Self::launch(name, &args)
    }

    fn start_with_agent(extra: &[&str]) -> ServerProcess {
        Self::launch("srv", extra)
    }

    fn launch(name: &str, extra: &[&str]) -> ServerProcess {
        Self::launch_at(name, None, extra)
    }

    /// A server without its node agent in the network namespace `netns`, bound to
    /// `ip` there, on the default ports (the namespace has them to itself).
    fn in_netns(name: &str, netns: &str, ip: &str, extra: &[&str]) -> ServerProcess {
        let mut args = vec!["--disable-agent"];
        args.extend(extra);
        Self::launch_at(name, Some((netns, ip)), &args)
    }

    fn launch_at(name: &str, place: Option<(&str, &str)>, extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let (host, netns, (https_port, store_client_port, store_peer_port)) = match place {
            Some((netns, ip)) => (ip.to_string(), Some(netns.to_string()), (6443, 2379, 2380)),
            None => (
                "127.0.0.1".to_string(),
                None,
                (free_port(), free_port(), free_port()),
            ),
        };
        let mut args: Vec<String> = ["server", "--node-name", name, "--bind-address", &host]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (flag, value) in [
            ("--data-dir", dir.path().join("data").display().to_string()),
            (
                "--write-kubeconfig",
                dir.path().join("kubeconfig").display().to_string(),
            ),
            ("--https-listen-port", https_port.to_string()),
            ("--store-client-port", store_client_port.to_string()),
            ("--store-peer-port", store_peer_port.to_string()),
        ] {
            args.push(flag.to_string());
            args.push(value);
        }
        // Upstream's fixed health ports would collide between servers run at once.
        let ports = HealthPorts {
            controller_manager: free_port(),
            scheduler: free_port(),
            kubelet: free_port(),
            proxy_healthz: free_port(),
            proxy_metrics: free_port(),
        };
        for (flag, value) in [
            (
                "--kube-controller-manager-arg",
                format!("secure-port={}", ports.controller_manager),
            ),
            (
                "--kube-scheduler-arg",
                format!("secure-port={}", ports.scheduler),
            ),
            ("--kubelet-arg", format!("healthz-port={}", ports.kubelet)),
            (
                "--kube-proxy-arg",
                format!("healthz-bind-address=127.0.0.1:{}", ports.proxy_healthz),
            ),
            (
                "--kube-proxy-arg",
                format!("metrics-bind-address=127.0.0.1:{}", ports.proxy_metrics),
            ),
        ] {
            args.push(flag.to_string());
            args.push(value);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = ServerProcess {
            ports,
            dir,
            args,
            child: None,
            https_port,
            store_client_port,
            store_peer_port,
            host,
            netns,
        };
        s.spawn();
        s
    }

    /// The apiserver's URL, which `--server` takes.
    fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.https_port)
    }

    /// `etcdctl` against this server's store member (its client port is on loopback:
    /// inside the server's namespace, if it has one). The store serves TLS only, to
    /// certificates of its own CA (`pki/etcd`): etcdctl shows the apiserver's client
    /// certificate.
    fn etcdctl(&self, args: &[&str]) -> support::Ctl {
        let endpoint = format!("https://127.0.0.1:{}", self.store_client_port);
        let etcd = self.data_dir().join("pki/etcd");
        let mut all: Vec<String> = ["ca.crt", "client.crt", "client.key"]
            .iter()
            .zip(["--cacert", "--cert", "--key"])
            .map(|(f, flag)| format!("{flag}={}", etcd.join(f).display()))
            .collect();
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let Some(netns) = &self.netns else {
            return support::etcdctl_at(&endpoint, &all, None);
        };
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args([
                "etcdctl",
                &format!("--endpoints={endpoint}"),
                "--command-timeout=10s",
            ])
            .args(&all)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl runs");
        support::Ctl {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Waits for the process to exit by itself (a refused join) and returns its status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        eventually("the server to exit", Duration::from_secs(60), || {
            let st = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"));
            async move { st }
        })
        .await
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .expect("log");
        // nsenter execs the server: the child is the server itself.
        let mut cmd = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{netns}"))
                    .arg(env!("CARGO_BIN_EXE_capstan"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_capstan")),
        };
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("capstan server starts");
        self.child = Some(child);
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn kubectl(&self, args: &[&str]) -> support::Ctl {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--request-timeout", "20s"])
            .args(args)
            .output()
            .expect("kubectl runs");
        support::Ctl {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn check_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            panic!("capstan server exited with {status}; log:\n{}", self.log());
        }
    }

    /// SIGTERM (a graceful stop), waiting for the process to exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("the server runs");
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(st.success(), "kill -TERM: {st}");
        c.wait().expect("wait")
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn wait_ready(&mut self) {
        eventually(
            "the server's apiserver to answer",
            Duration::from_secs(60),
            || {
                self.check_running();
                let ok =
                    self.kubeconfig().exists() && self.kubectl(&["get", "--raw", "/healthz"]).ok;
                async move { ok.then_some(()) }
            },
        )
        .await;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_process_serves_the_api_and_keeps_its_data_across_a_crash() {
    let mut srv = ServerProcess::start(&[]);
    srv.wait_ready().await;
    let ns = srv.kubectl(&["get", "namespaces", "--no-headers"]);
    assert!(
        ns.out().lines().any(|l| l.starts_with("kube-system ")),
        "{}",
        ns.out()
    );
    let created = srv.kubectl(&["create", "configmap", "keep", "--from-literal=k=v"]);
    assert!(created.ok, "{}\n{}", created.stderr, srv.log());

    // A crash loses nothing acknowledged: the store is the same data dir after restart.
    srv.kill9();
    srv.spawn();
    srv.wait_ready().await;
    let got = srv.kubectl(&["get", "configmap", "keep", "-o", "jsonpath={.data.k}"]);
    assert_eq!(got.out(), "v", "{}", srv.log());
}

/// The whole control plane in one process schedules and runs a Deployment: the
/// controller-manager makes the pods, the scheduler binds them to a (simulated) node,
/// and `kubectl rollout status` sees it complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_comes_up_on_a_single_server() {
    let mut srv = ServerProcess::start(&[]);
    srv.wait_ready().await;
    let mut node = Component::with_kubeconfig(
        &srv.kubeconfig(),
        "node",
        &["--simulated", "--hostname-override", "worker"],
    );
    let out = srv.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=3",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let status = srv.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    node.check_running();
    assert!(
        status.ok && status.out().contains("successfully rolled out"),
        "{}\n{}\nserver log:\n{}\nnode log:\n{}",
        status.stdout,
        status.stderr,
        srv.log(),
        node.log()
    );
    let nodes = srv.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(
        nodes.out().split_whitespace().collect::<Vec<_>>(),
        ["worker"; 3]
    );
}

/// Deletes an nftables table (the agent's, after its process was killed).
struct NftTable(&'static str);

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// `capstan server` with its own node agent on a (private) containerd: the one-command
/// cluster a user starts, a Deployment's pods really running.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_runs_a_deployment_in_containerd() {
    let ctrd = containerd::Containerd::start().await;
    let endpoint = format!("unix://{}", ctrd.socket.display());
    let archive = ctrd.image_archive.display().to_string();
    let logs = ctrd.pod_logs_dir.display().to_string();
    // The node's address is the test bridge's gateway: its DNS server and node ports
    // are the test's alone. The proxy's table is the default one; removed at the end.
    let node_ip = format!("{}1", ctrd.subnet_prefix);
    let _table = NftTable("capstan");
    let mut srv = ServerProcess::start_with_agent(&[
        "--container-runtime-endpoint",
        &endpoint,
        "--image-archive",
        &archive,
        "--pod-logs-dir",
        &logs,
        "--node-ip",
        &node_ip,
    ]);
    srv.wait_ready().await;
    eventually("node srv Ready", Duration::from_secs(60), || {
        srv.check_running();
        let row = srv.kubectl(&["get", "node", "srv", "--no-headers"]);
        let ready = row.stdout.split_whitespace().nth(1) == Some("Ready");
        async move { ready.then_some(()) }
    })
    .await;
    let out = srv.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image",
        containerd::BUSYBOX,
        "--replicas=2",
        "--",
        "sh",
        "-c",
        // httpd serves the pod's hostname in the background; the shell ends on
        // SIGTERM (as PID 1 it would otherwise sit out the grace period).
        "trap 'exit 0' TERM; mkdir -p /www; hostname > /www/index.html; httpd -p 8080 -h /www; \
         echo started; while true; do sleep 1; done",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let status = srv.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(
        status.ok,
        "{}\n{}\n{}",
        status.stderr,
        srv.log(),
        ctrd.log()
    );
    let ips = srv.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let ips: Vec<&str> = ips.out().split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(
        ips.iter().all(|ip| ip.starts_with(&ctrd.subnet_prefix)),
        "{ips:?} not in {}",
        ctrd.subnet_prefix
    );
    // The server's agent routes services and answers cluster DNS by default: a pod
    // reaches a replica by the service's short name.
    let out = srv.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    assert!(out.ok, "{}", out.stderr);
    eventually("the proxy's rules for web", Duration::from_secs(60), || {
        let table = Command::new("nft")
            .args(["list", "table", "ip", "capstan"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // Both replicas' endpoint chains (the `kubernetes` Service has its own).
        async move { (table.matches("chain endpoint-default/web/").count() >= 2).then_some(()) }
    })
    .await;
    let out = srv.kubectl(&[
        "run",
        "client",
        "--image",
        containerd::BUSYBOX,
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "until timeout 5 wget -qO- http://web/; do sleep 1; done",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let names = srv.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let names: Vec<String> = names.out().split_whitespace().map(str::to_string).collect();
    let answer = eventually(
        "the client pod to reach web",
        Duration::from_secs(90),
        || {
            srv.check_running();
            let phase = srv.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
            let uid = srv.kubectl(&["get", "pod", "client", "-o", "jsonpath={.metadata.uid}"]);
            let log = std::fs::read_to_string(
                ctrd.pod_logs_dir
                    .join(format!("default_client_{}/client/0.log", uid.out())),
            )
            .unwrap_or_default();
            let answer: Option<String> = log
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3))
                .map(str::to_string)
                .next_back();
            async move { (phase.out() == "Succeeded").then_some(answer).flatten() }
        },
    )
    .await;
    assert!(names.contains(&answer), "{answer} is not one of {names:?}");
    let del = srv.kubectl(&["delete", "pod", "client"]);
    assert!(del.ok, "{}", del.stderr);

    // Logs and exec through the server's own apiserver and kubelet.
    let logs = eventually("the deployment's log", Duration::from_secs(30), || {
        let out = srv.kubectl(&["logs", "deployment/web"]);
        async move { (out.ok && !out.stdout.is_empty()).then_some(out.stdout) }
    })
    .await;
    assert_eq!(logs, "started\n");
    let out = srv.kubectl(&["exec", "deployment/web", "--", "echo", "hi from exec"]);
    assert_eq!(out.stdout, "hi from exec\n", "{}", out.stderr);

    // The agent's health and metrics, as the kubelet and kube-proxy serve them: the
    // kubelet's healthz port, its metrics on the kubelet server (client certificate
    // of the cluster CA), the proxy's JSON healthz and its metrics port.
    let kubelet = format!("http://127.0.0.1:{}/healthz", srv.ports.kubelet);
    assert_eq!(ops::curl(&kubelet, &[]), Some((200, "ok".to_string())));
    let (_, verbose) = ops::curl(&format!("{kubelet}?verbose"), &[]).expect("kubelet healthz");
    assert!(verbose.contains("[+]syncloop ok\n"), "{verbose}");
    let pki = srv.data_dir().join("pki");
    let (cert, key) = (pki.join("admin.crt"), pki.join("admin.key"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (code, metrics) = ops::curl(
        "https://127.0.0.1:10250/metrics",
        &["--cert", &cert, "--key", &key],
    )
    .expect("kubelet metrics");
    assert_eq!(code, 200, "{metrics}");
    let running: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_running_pods "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("kubelet_running_pods in {metrics}"));
    assert!(running >= 2, "{metrics}");
    let started: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_pod_start_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("kubelet_pod_start_duration_seconds in {metrics}"));
    assert!(started >= 2, "{metrics}");
    let (code, health) = ops::curl(
        &format!("http://127.0.0.1:{}/healthz", srv.ports.proxy_healthz),
        &[],
    )
    .expect("proxy healthz");
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON");
    assert_eq!(health["nodeEligible"], true, "{health}");
    assert!(
        health["lastUpdated"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{health}"
    );
    let (_, metrics) = ops::curl(
        &format!("http://127.0.0.1:{}/metrics", srv.ports.proxy_metrics),
        &[],
    )
    .expect("proxy metrics");
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count "),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds "),
        "{metrics}"
    );
    // Gone again, containers and all, before the runtime is torn down.
    let del = srv.kubectl(&["delete", "deployment", "web"]);
    assert!(del.ok, "{}", del.stderr);
    eventually(
        "the pods and their containers gone",
        Duration::from_secs(90),
        || {
            let pods = srv.kubectl(&["get", "pods", "--no-headers"]).stdout;
            let containers = ctrd.ctr_containers();
            async move { (pods.trim().is_empty() && containers.is_empty()).then_some(()) }
        },
    )
    .await;
}
