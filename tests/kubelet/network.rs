//! Services really route, and cluster DNS names them: the node agent's service proxy
//! (nftables) and DNS server, with a Deployment of real `busybox httpd` pods in
//! containerd, reached from another pod by name and from the host by node port and by
//! a LoadBalancer address from the controller-manager's pool; and the apiserver
//! reached from a pod through the `kubernetes` Service (10.96.0.1:443: its TLS
//! listener answers).
//!
//! The stack's node address is its own CNI bridge's gateway, so parallel stacks (and
//! the machine's own services) never share an address, a node port or a DNS
//! listener; its nftables table has a name of its own and is removed at the end.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::containerd::{Containerd, BUSYBOX};
use crate::support::{eventually, Apiserver, Component, Server};
use crate::{jsonpath, NODE};

/// Deletes the stack's nftables table, whatever became of the node agent.
struct Table(String);

impl Table {
    /// `nft list table ip <name>`, or None when there is no such table.
    fn list(&self) -> Option<String> {
        let out = Command::new("nft")
            .args(["list", "table", "ip", &self.0])
            .output()
            .expect("nft runs");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Fields drop in order: the node agent first, containerd last.
struct NetStack {
    node: Component,
    _controllers: Component,
    api: Apiserver,
    _store: Server,
    containerd: Containerd,
    table: Table,
    /// The node's address: the bridge gateway, where node ports and DNS are served.
    node_ip: String,
    /// The one address of the load-balancer pool (random, so parallel stacks, whose
    /// tables all see the host's traffic, never route the same one).
    lb_ip: String,
    _resolv: tempfile::NamedTempFile,
    _upstream: FakeUpstream,
}

/// The address every name outside the cluster gets from [`FakeUpstream`] (TEST-NET-1,
/// never contacted).
const UPSTREAM_ANSWER: [u8; 4] = [192, 0, 2, 99];

/// The host's resolver, as far as the node agent can tell: on a loopback address of
/// its own, port 53, it answers every query with one A record, [`UPSTREAM_ANSWER`].
struct FakeUpstream {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        let ip = format!(
            "127.53.{}.{}",
            rand::random::<u8>(),
            1 + rand::random::<u8>() % 250
        );
        let sock = std::net::UdpSocket::bind(format!("{ip}:53")).expect("fake upstream binds");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let addr = sock.local_addr().expect("address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                // The question ends after its name's zero label, then type and class.
                let Some(end) = buf[12..n].iter().position(|b| *b == 0).map(|i| 12 + i + 5) else {
                    continue;
                };
                if end > n {
                    continue;
                }
                let mut resp = buf[..end].to_vec();
                // QR, RD and RA set; one question, one answer, nothing else.
                resp[2] = 0x81;
                resp[3] = 0x80;
                resp[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
                // The answer names the question (a compression pointer to offset 12).
                resp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                resp.extend_from_slice(&UPSTREAM_ANSWER);
                let _ = sock.send_to(&resp, peer);
            }
        });
        FakeUpstream { addr, stop }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn net_stack() -> NetStack {
    let containerd = Containerd::start().await;
    let store = Server::start().await;
    // On every address, so pods reach it through the `kubernetes` Service (whose
    // endpoint is then the default route's address); kubectl still uses loopback.
    let api = Apiserver::start_at(&store.endpoint, "0.0.0.0", crate::support::free_port()).await;
    let node_ip = format!("{}1", containerd.subnet_prefix);
    let lb_ip = format!(
        "10.{}.{}.{}",
        200 + rand::random::<u8>() % 50,
        rand::random::<u8>(),
        1 + rand::random::<u8>() % 250
    );
    let table = Table(format!("capstan-test-{}", rand::random::<u32>()));
    // Names outside the cluster domain are relayed to the host's resolvers; here
    // that is the test's own on a loopback address, so no query leaves the machine.
    let upstream = FakeUpstream::start();
    let mut resolv = tempfile::NamedTempFile::new().expect("resolv.conf");
    writeln!(resolv, "nameserver {}", upstream.addr.ip()).expect("resolv.conf written");
    let cidr = format!("{}0/24", containerd.subnet_prefix);
    let mut args = containerd.agent_args(NODE);
    args.extend(
        [
            "--node-ip",
            &node_ip,
            "--cluster-dns",
            &node_ip,
            "--cluster-dns-bind-address",
            &node_ip,
            "--resolv-conf",
            &resolv.path().display().to_string(),
            "--proxy-nftables-table",
            &table.0,
            "--cluster-cidr",
            &cidr,
            "--log-level",
            "info,capstan_node=debug",
        ]
        .map(str::to_string),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Component::start(&api, "node", &args);
    let controllers = Component::start(
        &api,
        "controller-manager",
        &["--leader-elect=false", "--service-lb-pool", &lb_ip],
    );
    NetStack {
        node,
        _controllers: controllers,
        api,
        _store: store,
        containerd,
        table,
        node_ip,
        lb_ip,
        _resolv: resolv,
        _upstream: upstream,
    }
}

/// The container log of a pod's container (CRI format: `<time> <stream> <tag> <line>`),
/// as its lines.
fn log_lines(s: &NetStack, pod: &str, container: &str) -> Vec<String> {
    let Some(uid) = jsonpath(&s.api, &["get", "pod", pod], "{.metadata.uid}") else {
        return Vec::new();
    };
    let path = s
        .containerd
        .pod_logs_dir
        .join(format!("default_{pod}_{uid}/{container}/0.log"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect()
}

/// One HTTP GET of `/` from the test process; the body.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default())
}

fn manifest() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeName: {NODE}
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {BUSYBOX}
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 600}}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: selfie}}
spec:
  selector: {{app: selfie}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: selfie, labels: {{app: selfie}}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'trap "exit 0" TERM; mkdir -p /www; hostname > /www/index.html; httpd -p 8080 -h /www; while true; do echo hairpin:$(timeout 5 wget -qO- http://selfie/); sleep 0.5; done']
---
apiVersion: v1
kind: Service
metadata: {{name: down}}
spec:
  type: NodePort
  selector: {{app: nothing-runs-this}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    )
}

/// A pod that repeats `script` every half second, each round's output after a
/// `round` line.
fn looping_pod(name: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'trap "exit 0" TERM; while true; do echo round; {script} sleep 0.5; done']
"#
    )
}

/// The values of `<key>:<value>` lines in a log.
fn tagged(lines: &[String], key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_route_to_ready_endpoints_and_cluster_dns_names_them() {
    let mut s = net_stack().await;
    let applied = s
        .api
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest()));
    assert!(applied.ok, "{}", applied.stderr);
    // Every replica Ready, and the proxy's table DNATs to all three.
    let pods: BTreeSet<String> = eventually("three ready web pods", Duration::from_secs(90), || {
        s.node.check_running();
        let names = jsonpath(
            &s.api,
            &["get", "pods", "-l", "app=web"],
            r#"{range .items[?(@.status.containerStatuses[0].ready==true)]}{.metadata.name}{"\n"}{end}"#,
        )
        .unwrap_or_default();
        let set: BTreeSet<String> = names.lines().map(str::to_string).collect();
        async move { (set.len() == 3).then_some(set) }
    })
    .await;
    let cluster_ip = jsonpath(&s.api, &["get", "service", "web"], "{.spec.clusterIP}")
        .expect("web's cluster IP");
    let node_port: u16 = jsonpath(
        &s.api,
        &["get", "service", "web-np"],
        "{.spec.ports[0].nodePort}",
    )
    .and_then(|p| p.parse().ok())
    .expect("web-np's node port");
    let down_port: u16 = jsonpath(
        &s.api,
        &["get", "service", "down"],
        "{.spec.ports[0].nodePort}",
    )
    .and_then(|p| p.parse().ok())
    .expect("down's node port");
    // No traffic to a cluster IP before the proxy routes it (it would follow the
    // default route off the machine).
    eventually("the proxy's rules for web", Duration::from_secs(30), || {
        let table = s.table.list().unwrap_or_default();
        let routed = table.contains(&format!("{cluster_ip} . tcp . 80"))
            && table.matches("chain endpoint-default/sticky/").count() == 3
            && table.matches("chain endpoint-default/web/").count() == 3
            && table.matches("chain endpoint-default/web-np/").count() == 3
            && table.contains(&format!(". tcp . {down_port} : goto reject-chain"))
            && table.contains(&format!(
                "{} . tcp . 80 : goto external-default/web-lb/",
                s.lb_ip
            ))
            && table.contains("10.96.0.1 . tcp . 443 : goto service-default/kubernetes/");
        async move { routed.then_some(()) }
    })
    .await;

    // From another pod, by the full name and by the short one (the search path).
    let client = looping_pod(
        "client",
        "echo fqdn:$(timeout 5 wget -qO- http://web.default.svc.cluster.local/); \
         echo short:$(timeout 5 wget -qO- http://web/); \
         echo sticky:$(timeout 5 wget -qO- http://sticky/); \
         echo down:$(timeout 5 wget -qO- http://down/ 2>&1); \
         echo badport:$(timeout 5 wget -qO- http://web:81/ 2>&1); \
         echo apiserver:$(timeout 5 wget -qO- --no-check-certificate https://10.96.0.1/version 2>&1);",
    );
    let applied = s.api.kubectl_stdin(&["apply", "-f", "-"], Some(&client));
    assert!(applied.ok, "{}", applied.stderr);
    let deadline = std::time::Instant::now() + Duration::from_secs(85);
    eventually(
        "every replica answering through the service, by both names, and the apiserver",
        Duration::from_secs(90),
        || {
            s.node.check_running();
            let lines = log_lines(&s, "client", "c");
            assert!(
                std::time::Instant::now() < deadline,
                "client log:\n{}\ntable:\n{}\nnode log:\n{}",
                lines.join("\n"),
                s.table.list().unwrap_or_default(),
                s.node.log()
            );
            let fqdn: BTreeSet<String> = tagged(&lines, "fqdn")
                .into_iter()
                .filter(|h| !h.is_empty())
                .collect();
            let short: BTreeSet<String> = tagged(&lines, "short")
                .into_iter()
                .filter(|h| !h.is_empty())
                .collect();
            // The apiserver through the `kubernetes` Service: its TLS listener answers.
            // busybox's TLS offers no cipher suite rustls accepts, so the answer is
            // the server's handshake-failure alert, which only a TLS server sends (a
            // route to nowhere would time out or be refused).
            let apiserver = tagged(&lines, "apiserver")
                .iter()
                .any(|l| l.contains("TLS error from peer (alert code 40)"));
            let done = fqdn == pods && short == pods && apiserver;
            async move { done.then_some(()) }
        },
    )
    .await;
    let lines = log_lines(&s, "client", "c");
    // ClientIP affinity: one client, one replica, every time.
    let sticky: Vec<String> = tagged(&lines, "sticky");
    assert!(sticky.len() >= 3, "{sticky:?}");
    let sticky: BTreeSet<String> = sticky.into_iter().collect();
    assert_eq!(sticky.len(), 1, "sticky answered by {sticky:?}");
    assert!(
        sticky.iter().all(|h| pods.contains(h)),
        "{sticky:?} not in {pods:?}"
    );
    // No ready endpoint: refused at once, not a timeout.
    let down = tagged(&lines, "down");
    assert!(
        !down.is_empty() && down.iter().all(|l| l.contains("Connection refused")),
        "down answered {down:?}"
    );
    // A port the Service does not have: refused too, not sent down the default route.
    let bad = tagged(&lines, "badport");
    assert!(
        !bad.is_empty() && bad.iter().all(|l| l.contains("Connection refused")),
        "port 81 of web answered {bad:?}"
    );

    // Hairpin: a pod reaches itself through its own service.
    eventually(
        "selfie reaching itself through its service",
        Duration::from_secs(60),
        || {
            let lines = log_lines(&s, "selfie", "c");
            let ok = tagged(&lines, "hairpin").iter().any(|h| h == "selfie");
            async move { ok.then_some(()) }
        },
    )
    .await;

    // From the host, by node port: every replica.
    let np: SocketAddr = format!("{}:{node_port}", s.node_ip)
        .parse()
        .expect("address");
    let mut seen = BTreeSet::new();
    eventually(
        "every replica answering on the node port",
        Duration::from_secs(30),
        || {
            if let Ok(body) = http_get(np) {
                seen.insert(body);
            }
            let done = seen == pods;
            async move { done.then_some(()) }
        },
    )
    .await;

    // From the host, by the load-balancer address the pool gave web-lb: every replica.
    let external = eventually("web-lb's EXTERNAL-IP", Duration::from_secs(30), || {
        let out = s.api.kubectl(&["get", "svc", "web-lb", "--no-headers"]);
        let ip = out
            .stdout
            .split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .to_string();
        async move { (ip != "<pending>" && !ip.is_empty()).then_some(ip) }
    })
    .await;
    assert_eq!(external, s.lb_ip);
    let lb: SocketAddr = format!("{}:80", s.lb_ip).parse().expect("address");
    let mut seen = BTreeSet::new();
    eventually(
        "every replica answering on the load-balancer address",
        Duration::from_secs(30),
        || {
            if let Ok(body) = http_get(lb) {
                seen.insert(body);
            }
            let done = seen == pods;
            async move { done.then_some(()) }
        },
    )
    .await;

    // Cluster DNS, with busybox's nslookup.
    let dns = looping_pod(
        "dns",
        "for n in web.default.svc.cluster.local web-headless.default.svc.cluster.local nosuch.default.svc.cluster.local; \
         do nslookup -type=a $n 2>&1 | sed \"s/^/$n /\"; done; \
         nslookup -type=srv _http._tcp.web.default.svc.cluster.local 2>&1 | sed \"s/^/srv /\"; \
         nslookup -type=a example.org. 2>&1 | sed \"s/^/upstream /\";",
    );
    let applied = s.api.kubectl_stdin(&["apply", "-f", "-"], Some(&dns));
    assert!(applied.ok, "{}", applied.stderr);
    let pod_ips: BTreeSet<String> = jsonpath(
        &s.api,
        &["get", "pods", "-l", "app=web"],
        "{.items[*].status.podIP}",
    )
    .unwrap_or_default()
    .split_whitespace()
    .map(str::to_string)
    .collect();
    let round: Vec<String> = eventually(
        "a full round of DNS answers",
        Duration::from_secs(60),
        || {
            let lines = log_lines(&s, "dns", "c");
            // The last complete round: between the last two `round` lines.
            let starts: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| *l == "round")
                .map(|(i, _)| i)
                .collect();
            let round = match starts.as_slice() {
                [.., a, b] => lines[a + 1..*b].to_vec(),
                _ => Vec::new(),
            };
            let answered = round.iter().any(|l| {
                l.starts_with("web.default.svc.cluster.local Address:") && l.contains(&cluster_ip)
            });
            async move { answered.then_some(round) }
        },
    )
    .await;
    let text = round.join("\n");
    let headless: BTreeSet<String> = round
        .iter()
        .filter_map(|l| l.strip_prefix("web-headless.default.svc.cluster.local Address:"))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.contains(':'))
        .collect();
    assert_eq!(headless, pod_ips, "{text}");
    assert!(text.contains("nosuch.default.svc.cluster.local ** server can't find nosuch.default.svc.cluster.local: NXDOMAIN"), "{text}");
    assert!(text.contains("srv _http._tcp.web.default.svc.cluster.local\tservice = 0 100 80 web.default.svc.cluster.local"), "{text}");
    // Other names go to the host's resolver, and its answer comes back.
    let relayed = format!(
        "upstream Address: {}",
        std::net::Ipv4Addr::from(UPSTREAM_ANSWER)
    );
    assert!(text.lines().any(|l| l.trim() == relayed), "{text}");

    // A graceful stop takes the table with it.
    s.node.terminate();
    assert!(
        s.table.list().is_none(),
        "table {} left after the agent stopped",
        s.table.0
    );
}
