//! Three `capstan server`s as one HA cluster, each in a network namespace of its own
//! (as on three machines: the default ports, its own address), joined by veth pairs to
//! a bridge on the host, which reaches them as a user's `kubectl` would. Each server is
//! SIGKILLed and restarted in turn while `kubectl` against a survivor keeps working;
//! then the store's leader is cut off the network: the other two keep taking writes,
//! the isolated one takes none, and once the link is back it serves everything written
//! meanwhile.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::ha::{three_started_members, web_available, Relay};
use super::ServerProcess;
use crate::support::{eventually, Component};

/// Runs `ip <args>`, panicking with its error when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge on the host (`10.252.<n>.1/24`) and one namespace per server, its `eth0`
/// at `10.252.<n>.<11+i>` on a veth pair whose other end is a port of the bridge.
/// Names carry the test's pid; everything is deleted on drop.
struct Lan {
    bridge: String,
    ports: Vec<String>,
    netns: Vec<String>,
    ips: Vec<String>,
}

impl Lan {
    fn create(members: usize) -> Lan {
        let pid = std::process::id();
        let n = pid % 250;
        let mut lan = Lan {
            bridge: format!("chb{pid}"),
            ports: Vec::new(),
            netns: Vec::new(),
            ips: Vec::new(),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.252.{n}.1/24"),
            "dev",
            &lan.bridge,
        ]);
        ip(&["link", "set", &lan.bridge, "up"]);
        for i in 0..members {
            let (netns, port, addr) = (
                format!("capt-ha{i}-{pid}"),
                format!("chv{i}{pid}"),
                format!("10.252.{n}.{}", 11 + i),
            );
            ip(&["netns", "add", &netns]);
            lan.netns.push(netns.clone());
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ]);
            lan.ports.push(port.clone());
            ip(&["link", "set", &port, "master", &lan.bridge]);
            ip(&["link", "set", &port, "up"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            lan.ips.push(addr);
        }
        lan
    }

    /// Takes member `i` off the network (its cable pulled) or puts it back.
    fn link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.ports[i],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        for ns in &self.netns {
            quiet(&["netns", "del", ns]);
        }
        for port in &self.ports {
            quiet(&["link", "del", port]);
        }
        quiet(&["link", "del", &self.bridge]);
    }
}

/// `kubectl get configmaps` against one server, again and again on a thread of its
/// own until finished: what a user polling a surviving server sees.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Prober {
    fn start(kubeconfig: PathBuf) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut attempts, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                let out = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["--request-timeout=20s", "get", "configmaps", "-o", "name"])
                    .output()
                    .expect("kubectl runs");
                attempts += 1;
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            (attempts, failures)
        });
        Prober { stop, thread }
    }

    /// Stops it, asserting that every request it made succeeded.
    fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (attempts, failures) = self.thread.join().expect("prober thread");
        assert!(attempts > 0, "{what}: no request made");
        assert!(
            failures.is_empty(),
            "{what}: {} of {attempts} kubectl requests failed: {failures:?}",
            failures.len()
        );
    }
}

/// Whether `srv`'s store member is the leader (`etcdctl endpoint status`).
fn leads(srv: &ServerProcess) -> bool {
    let out = srv.etcdctl(&["endpoint", "status"]);
    out.ok && out.stdout.split(", ").nth(4) == Some("true")
}

/// Creates the ConfigMap `name` through `srv`, retrying while the store elects a leader
/// (a write then fails with etcd's "no leader", which a user retries).
async fn write_through(srv: &ServerProcess, name: &str) {
    eventually(
        &format!("configmap {name} written through {}", srv.url()),
        Duration::from_secs(30),
        || {
            let c = srv.kubectl(&["create", "configmap", name, "--from-literal=k=v"]);
            let ok = c.ok || c.stderr.contains("already exists");
            async move { ok.then_some(()) }
        },
    )
    .await;
}

/// Waits until `srv`'s apiserver serves every ConfigMap in `names`.
async fn serves_all(srv: &ServerProcess, names: &[String]) {
    eventually(
        &format!("{} to serve {names:?}", srv.url()),
        Duration::from_secs(30),
        || {
            let got = srv.kubectl(&[
                "get",
                "configmaps",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            let have: Vec<&str> = got.stdout.split_whitespace().collect();
            let ok = got.ok && names.iter().all(|n| have.contains(&n.as_str()));
            async move { ok.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_on_a_network_survive_restarts_and_a_partition() {
    let lan = Lan::create(3);
    let mut s1 = ServerProcess::in_netns("s1", &lan.netns[0], &lan.ips[0], &["--cluster-init"]);
    s1.wait_ready().await;
    let token = std::fs::read_to_string(s1.data_dir().join("server/token")).expect("token file");
    let token = token.trim().to_string();
    let mut s2 = ServerProcess::in_netns(
        "s2",
        &lan.netns[1],
        &lan.ips[1],
        &["--server", &s1.url(), "--token", &token],
    );
    s2.wait_ready().await;
    let mut s3 = ServerProcess::in_netns(
        "s3",
        &lan.netns[2],
        &lan.ips[2],
        &["--server", &s2.url(), "--token", &token],
    );
    s3.wait_ready().await;
    three_started_members(&mut s1).await;
    // Each server's kubeconfig names its own address on the network.
    for (s, addr) in [&s1, &s2, &s3].iter().zip(&lan.ips) {
        let kc = std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig");
        assert!(kc.contains(&format!("server: https://{addr}:6443")), "{kc}");
    }

    // A simulated node reaches the servers through a relay, and runs a Deployment.
    let scratch = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(
        lan.ips
            .iter()
            .map(|a| format!("{a}:6443").parse().expect("address"))
            .collect(),
    )
    .await;
    let node_kubeconfig = relay.kubeconfig(&s1.kubeconfig(), &scratch.path().join("node"));
    let mut node = Component::with_kubeconfig(
        &node_kubeconfig,
        "node",
        &["--simulated", "--hostname-override", "worker"],
    );
    let out = s2.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=3",
    ]);
    assert!(out.ok, "{}", out.stderr);
    web_available(&s3, None).await;

    let mut servers = [s1, s2, s3];
    let mut written: Vec<String> = Vec::new();
    for down in 0..3 {
        let (a, b) = ((down + 1) % 3, (down + 2) % 3);
        let prober = Prober::start(servers[b].kubeconfig());
        servers[down].kill9();
        let name = format!("written-while-s{}-down", down + 1);
        write_through(&servers[a], &name).await;
        written.push(name);
        serves_all(&servers[b], &written).await;
        servers[down].spawn();
        servers[down].wait_ready().await;
        three_started_members(&mut servers[down]).await;
        serves_all(&servers[down], &written).await;
        prober.finish(&format!(
            "reads through s{} while s{} went and came back",
            b + 1,
            down + 1
        ));
        node.check_running();
    }

    // The partition: the store's leader loses its link.
    let cut = eventually("a store leader", Duration::from_secs(20), || {
        let l = (0..3).find(|i| leads(&servers[*i]));
        async move { l }
    })
    .await;
    let prober = Prober::start(servers[(cut + 1) % 3].kubeconfig());
    lan.link(cut, false);
    for i in (0..3).filter(|i| *i != cut) {
        let name = format!("written-through-s{}-during-partition", i + 1);
        write_through(&servers[i], &name).await;
        written.push(name);
    }
    for i in (0..3).filter(|i| *i != cut) {
        serves_all(&servers[i], &written).await;
    }
    // The two elected a leader among themselves.
    assert!(
        (0..3).any(|i| i != cut && leads(&servers[i])),
        "no leader among the majority"
    );
    // The isolated server, asked from its own side of the cut, commits nothing alone.
    let alone = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lan.netns[cut]))
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(servers[cut].kubeconfig())
        .args([
            "--request-timeout=30s",
            "create",
            "configmap",
            "written-through-the-minority",
            "--from-literal=k=v",
        ])
        .output()
        .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(
        !alone.status.success(),
        "a write through the isolated s{} succeeded",
        cut + 1
    );
    // Answered by the apiserver with the store's refusal (a leader without a quorum
    // times the write out), as kube-apiserver passes etcd's on.
    assert!(
        stderr.contains("failed to create configmap: etcdserver: "),
        "{stderr}"
    );
    servers[cut].check_running();

    // Healed: the isolated server catches up and serves what the others took.
    lan.link(cut, true);
    serves_all(&servers[cut], &written).await;
    for s in &mut servers {
        s.check_running();
        serves_all(s, &written).await;
    }
    three_started_members(&mut servers[cut]).await;
    prober.finish(&format!(
        "reads through s{} while s{} was cut off and came back",
        (cut + 1) % 3 + 1,
        cut + 1
    ));
    web_available(&servers[cut], None).await;
    node.check_running();
}
