//! Two nodes on one machine, each in a network namespace of its own (its containerd,
//! CNI bridge, node agent, nftables and DNS inside it), joined to the host by a veth
//! pair; the host routes each node's pod subnet to its node. A pod on one node reaches
//! a pod on the other directly and through a Service, and the server sees the client's
//! own pod address: no NAT between pods.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::containerd::{Containerd, BUSYBOX};
use crate::jsonpath;
use crate::support::{eventually, Apiserver, Component, Server};

/// Runs `ip <args>`, panicking with its error when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the host by a veth pair (`<host_ip>/30` on the host
/// side, `<node_ip>/30` inside, the host its default route). Deleted on drop, which
/// takes the veth pair and the host's routes through it along.
pub(crate) struct Netns {
    pub(crate) name: String,
    host_if: String,
    host_ip: String,
    node_ip: String,
}

impl Netns {
    fn create(name: String, host_if: String, host_ip: String, node_ip: String) -> Netns {
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            host_if,
            host_ip,
            node_ip,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.node_ip),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "default",
            "via",
            &ns.host_ip,
        ]);
        // A node routes for its pods.
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .expect("sysctl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// A `capstan node` inside a namespace; SIGKILLed on drop.
pub(crate) struct NsNode {
    child: Option<Child>,
    log: PathBuf,
}

impl NsNode {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the agent (nsenter execs it: the child is the agent), leaving its
    /// containers running.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics with the agent's log if it exited.
    pub(crate) fn check_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            panic!("capstan node exited with {status}; log:\n{}", self.log());
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Forwards TCP connections from `listen` (a host address the namespaces reach) to
/// the apiserver on loopback, until the test's runtime ends.
async fn forward(listen: &str, to: String) -> u16 {
    let l = tokio::net::TcpListener::bind(format!("{listen}:0"))
        .await
        .expect("forwarder binds");
    let port = l.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

/// Field order is drop order: agents, then runtimes, then namespaces.
pub(crate) struct Nodes {
    pub(crate) agents: Vec<NsNode>,
    pub(crate) runtimes: Vec<Containerd>,
    pub(crate) namespaces: Vec<Netns>,
    _kubeconfigs: Vec<tempfile::NamedTempFile>,
}

/// Starts a node agent for each of `names` (at most 60), each in a network namespace
/// of its own with its own containerd, and waits until every node is Ready. The agents
/// renew their Leases every second.
pub(crate) async fn start_nodes(api: &Apiserver, names: &[&str]) -> Nodes {
    let api_port = api.url.rsplit(':').next().expect("port").to_string();
    let n: u8 = rand::random::<u8>() % 250;
    let tag: u32 = rand::random::<u32>() % 100_000;
    let mut nodes = Nodes {
        agents: Vec::new(),
        runtimes: Vec::new(),
        namespaces: Vec::new(),
        _kubeconfigs: Vec::new(),
    };
    for (i, node) in names.iter().enumerate() {
        let base = 4 * i as u8;
        let ns = Netns::create(
            format!("capt-{node}-{}-{tag}", std::process::id()),
            format!("cv{i}{tag}"),
            format!("10.251.{n}.{}", base + 1),
            format!("10.251.{n}.{}", base + 2),
        );
        let runtime = Containerd::start_in(Some(&ns.name)).await;
        // The host routes the node's pod subnet to the node (before any pod talks, so
        // nothing takes the default route off the machine).
        ip(&[
            "route",
            "add",
            &format!("{}0/24", runtime.subnet_prefix),
            "via",
            &ns.node_ip,
        ]);
        // The apiserver listens on loopback: a forwarder on the veth's host side, and a
        // kubeconfig that dials it while checking the certificate's `kubernetes` name.
        let port = forward(&ns.host_ip, format!("127.0.0.1:{api_port}")).await;
        let admin = std::fs::read_to_string(&api.kubeconfig).expect("kubeconfig");
        let mut kc = String::new();
        for line in admin.lines() {
            if let Some(indent) = line.find("server: ") {
                let pad = &line[..indent];
                kc.push_str(&format!("{pad}server: https://{}:{port}\n", ns.host_ip));
                kc.push_str(&format!("{pad}tls-server-name: kubernetes\n"));
            } else {
                kc.push_str(line);
                kc.push('\n');
            }
        }
        let mut kubeconfig = tempfile::NamedTempFile::new().expect("kubeconfig");
        kubeconfig
            .write_all(kc.as_bytes())
            .expect("kubeconfig written");
        let gateway = format!("{}1", runtime.subnet_prefix);
        let log = runtime.pod_logs_dir.with_file_name(format!("{node}.log"));
        let logf = std::fs::File::create(&log).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg(env!("CARGO_BIN_EXE_capstan"))
            .arg("node")
            .arg("--kubeconfig")
            .arg(kubeconfig.path())
            .args(["--hostname-override", node])
            .arg("--container-runtime-endpoint")
            .arg(format!("unix://{}", runtime.socket.display()))
            .arg("--image-archive")
            .arg(&runtime.image_archive)
            .arg("--pod-logs-dir")
            .arg(&runtime.pod_logs_dir)
            .arg("--root-dir")
            .arg(&runtime.root_dir)
            .args(["--node-ip", &ns.node_ip])
            .args([
                "--cluster-dns",
                &gateway,
                "--cluster-dns-bind-address",
                &gateway,
            ])
            .args(["--node-lease-duration-seconds", "4"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("capstan node starts");
        nodes.agents.push(NsNode {
            child: Some(child),
            log,
        });
        nodes.runtimes.push(runtime);
        nodes.namespaces.push(ns);
        nodes._kubeconfigs.push(kubeconfig);
    }
    eventually("every node Ready", Duration::from_secs(60), || {
        let ready = names.iter().all(|node| {
            jsonpath(
                api,
                &["get", "node", node],
                r#"{.status.conditions[?(@.type=="Ready")].status}"#,
            )
            .as_deref()
                == Some("True")
        });
        async move { ready.then_some(()) }
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_two_nodes_reach_each_other_without_nat() {
    let store = Server::start().await;
    let api = Apiserver::start(&store.endpoint).await;
    let _controllers = Component::start(&api, "controller-manager", &["--leader-elect=false"]);
    let names = ["mn-a", "mn-b"];
    let nodes = start_nodes(&api, &names).await;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: server-a, labels: {{app: server-a}}}}
spec:
  nodeName: mn-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -v -p 8080 -h /www']
---
apiVersion: v1
kind: Service
metadata: {{name: cross}}
spec:
  selector: {{app: server-a}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: cross-direct}}
spec:
  clusterIP: None
  selector: {{app: server-a}}
  ports: [{{name: http, port: 8080}}]
"#
    );
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(applied.ok, "{}", applied.stderr);
    // No pod talks to the service before node b's proxy routes it: unrouted, it
    // would take the host's default route off the machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(55);
    let server_ip = eventually("server-a running", Duration::from_secs(60), || {
        assert!(
            std::time::Instant::now() < deadline,
            "server-a:\n{}\nnode a:\n{}",
            api.kubectl(&["get", "pod", "server-a", "-o", "yaml"])
                .stdout,
            nodes.agents[0].log()
        );
        let ip = jsonpath(&api, &["get", "pod", "server-a"], "{.status.podIP}")
            .filter(|ip| !ip.is_empty());
        async move { ip }
    })
    .await;
    let ns_b = nodes.namespaces[1].name.clone();
    eventually(
        "node b's proxy routing cross to server-a",
        Duration::from_secs(60),
        || {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &ns_b, "nft", "list", "table", "ip", "capstan",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let routed = out.contains(&format!("dnat to {server_ip}:8080"));
            async move { routed.then_some(()) }
        },
    )
    .await;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client-b}}
spec:
  nodeName: mn-b
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'trap "exit 0" TERM; while true; do echo direct:$(timeout 5 wget -qO- http://cross-direct:8080/); echo service:$(timeout 5 wget -qO- http://cross/); sleep 0.5; done']
"#
    );
    let applied = api.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(applied.ok, "{}", applied.stderr);
    let lines = |pod: &str, runtime: &Containerd| -> Vec<String> {
        let Some(uid) = jsonpath(&api, &["get", "pod", pod], "{.metadata.uid}") else {
            return Vec::new();
        };
        std::fs::read_to_string(
            runtime
                .pod_logs_dir
                .join(format!("default_{pod}_{uid}/c/0.log")),
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(85);
    eventually(
        "client-b reaching server-a directly and through the service",
        Duration::from_secs(90),
        || {
            let client = lines("client-b", &nodes.runtimes[1]);
            assert!(
                std::time::Instant::now() < deadline,
                "client log:\n{}\nnode a:\n{}\nnode b:\n{}",
                client.join("\n"),
                nodes.agents[0].log(),
                nodes.agents[1].log()
            );
            let ok = client.iter().any(|l| l == "direct:server-a")
                && client.iter().any(|l| l == "service:server-a");
            async move { ok.then_some(()) }
        },
    )
    .await;
    // The server saw the client's own address both ways.
    let client_ip =
        jsonpath(&api, &["get", "pod", "client-b"], "{.status.podIP}").expect("client IP");
    assert!(
        client_ip.starts_with(&nodes.runtimes[1].subnet_prefix),
        "{client_ip}"
    );
    let server = lines("server-a", &nodes.runtimes[0]);
    let peers: std::collections::BTreeSet<String> = server
        .iter()
        // `[::ffff:10.x.y.z]:port: response:200` (httpd listens on IPv6 too).
        .filter_map(|l| {
            let peer = l.strip_prefix('[')?.split_once(']')?.0;
            Some(peer.trim_start_matches("::ffff:").to_string())
        })
        .collect();
    assert_eq!(
        peers,
        [client_ip].into_iter().collect(),
        "{}",
        server.join("\n")
    );
}
