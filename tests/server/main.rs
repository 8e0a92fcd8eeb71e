//! Integration tests of `capstan server`: the whole control plane in one process, used
//! the way a user uses it, with the real `kubectl` and the kubeconfig it wrote.

#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{eventually, free_port, Component};

/// A `capstan server` process with its own data dir; SIGKILLed on drop.
struct ServerProcess {
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl ServerProcess {
    fn start(extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = [
            "server",
            "--node-name",
            "srv",
            "--bind-address",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, value) in [
            ("--data-dir", dir.path().join("data").display().to_string()),
            (
                "--write-kubeconfig",
                dir.path().join("kubeconfig").display().to_string(),
            ),
            ("--https-listen-port", free_port().to_string()),
            ("--store-client-port", free_port().to_string()),
            ("--store-peer-port", free_port().to_string()),
        ] {
            args.push(flag.to_string());
            args.push(value);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = ServerProcess {
            dir,
            args,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
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
