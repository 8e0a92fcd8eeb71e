//! `capstan agent` joining a server, and what a node's identity may do: the Node
//! authorizer and NodeRestriction, seen through the real `kubectl` with the kubelet
//! kubeconfig the agent got.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{eventually, Component};
use crate::ServerProcess;

/// A `capstan agent` of simulated pods (no containerd needed), with its own data dir.
struct Agent {
    process: Component,
    dir: tempfile::TempDir,
}

impl Agent {
    fn join(srv: &ServerProcess, name: &str, token: &str) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().display().to_string();
        let url = srv.url();
        let lb_port = crate::support::free_port().to_string();
        let process = Component::with_args(
            "agent",
            &[
                "agent",
                "--server",
                &url,
                "--token",
                token,
                "--node-name",
                name,
                "--data-dir",
                &data,
                "--lb-server-port",
                &lb_port,
                "--simulated",
            ],
        );
        Agent { process, dir }
    }

    /// The kubelet kubeconfig the agent was issued.
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("agent").join("kubelet.kubeconfig")
    }
}

fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> crate::support::Ctl {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("kubectl runs");
    crate::support::Ctl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn token(srv: &ServerProcess, file: &str) -> String {
    std::fs::read_to_string(srv.data_dir().join("server").join(file))
        .expect("token file")
        .trim()
        .to_string()
}

async fn ready(srv: &ServerProcess, agent: &mut Agent, node: &str) {
    eventually(
        &format!("node {node} to be Ready"),
        Duration::from_secs(60),
        || {
            agent.process.check_running();
            let st = srv.kubectl(&[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            async move { (st.ok && st.stdout == "True").then_some(()) }
        },
    )
    .await;
}

fn pod(name: &str, node: &str, secret: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: c, image: busybox:1.36}}\n  volumes:\n  - name: s\n    secret: {{secretName: {secret}}}\n"
    )
}

/// Two agents join a server that runs no agent of its own, with the agent token; each
/// runs the pod bound to it; node a's kubelet may read the secret its pod mounts but
/// not the one only node b's pod uses, nor change node b; a wrong token is refused
/// and registers nothing; the agent token opens no server join.
#[tokio::test(flavor = "multi_thread")]
async fn agents_join_with_the_token_and_each_node_sees_only_its_own() {
    let mut srv = ServerProcess::start(&["--cluster-init", "--agent-token", "agent-secret"]);
    srv.wait_ready().await;
    let agent_token = token(&srv, "agent-token");
    assert!(
        agent_token.ends_with("::node:agent-secret"),
        "{agent_token}"
    );
    let mut a = Agent::join(&srv, "node-a", &agent_token);
    let mut b = Agent::join(&srv, "node-b", &agent_token);
    ready(&srv, &mut a, "node-a").await;
    ready(&srv, &mut b, "node-b").await;

    for (secret, pod_name, node) in [("sa", "pa", "node-a"), ("sb", "pb", "node-b")] {
        let out = srv.kubectl(&["create", "secret", "generic", secret, "--from-literal=k=v"]);
        assert!(out.ok, "{}", out.stderr);
        let file = a.dir.path().join(format!("{pod_name}.yaml"));
        std::fs::write(&file, pod(pod_name, node, secret)).expect("manifest");
        let out = srv.kubectl(&["apply", "-f", &file.display().to_string()]);
        assert!(out.ok, "{}", out.stderr);
    }
    for p in ["pa", "pb"] {
        eventually(&format!("pod {p} Running"), Duration::from_secs(60), || {
            let st = srv.kubectl(&["get", "pod", p, "-o", "jsonpath={.status.phase}"]);
            async move { (st.ok && st.stdout == "Running").then_some(()) }
        })
        .await;
    }

    let as_a = a.kubeconfig();
    let own = kubectl_as(&as_a, &["get", "secret", "sa", "-o", "jsonpath={.data.k}"]);
    assert!(own.ok, "node-a reads its pod's secret: {}", own.stderr);
    assert_eq!(own.out(), "dg==");
    let other = kubectl_as(&as_a, &["get", "secret", "sb"]);
    assert!(!other.ok);
    assert_eq!(
        other.err().trim(),
        "Error from server (Forbidden): secrets \"sb\" is forbidden: User \"system:node:node-a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'node-a' and this object"
    );
    let patch = kubectl_as(&as_a, &["label", "node", "node-b", "stolen=true"]);
    assert!(!patch.ok);
    assert_eq!(
        patch.err().trim(),
        "Error from server (Forbidden): nodes \"node-b\" is forbidden: node \"node-a\" is not allowed to modify node \"node-b\""
    );
    let own_node = kubectl_as(&as_a, &["label", "node", "node-a", "mine=true"]);
    assert!(own_node.ok, "{}", own_node.stderr);
    // A status write to a pod of another node (kubectl patch would first need to
    // read pods/status, which no node may, as upstream's rules: a raw PUT).
    let body = a.dir.path().join("status.json");
    std::fs::write(
        &body,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pb"},"status":{"phase":"Failed"}}"#,
    )
    .expect("body");
    let status = kubectl_as(
        &as_a,
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/pb/status",
            "-f",
            &body.display().to_string(),
        ],
    );
    assert!(!status.ok);
    assert!(
        status.err().contains("pods \"pb\" is forbidden: node \"node-a\" can only update pod status for pods with spec.nodeName set to itself"),
        "{}",
        status.err()
    );
    let phase = srv.kubectl(&["get", "pod", "pb", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase.out(), "Running");

    // A wrong token: refused with a clear error, and no node appears.
    let mut bad = Agent::join(&srv, "node-bad", "wrong-secret");
    let exited = eventually(
        "the agent with a wrong token to exit",
        Duration::from_secs(60),
        || {
            let st = bad.process.exited();
            async move { st }
        },
    )
    .await;
    assert!(!exited.success());
    assert!(
        bad.process
            .log()
            .contains("refused the token (HTTP 401 Unauthorized)"),
        "{}",
        bad.process.log()
    );
    let nodes = srv.kubectl(&["get", "nodes", "-o", "name"]);
    assert_eq!(
        nodes.out().split_whitespace().collect::<Vec<_>>(),
        ["node/node-a", "node/node-b"]
    );

    // Another agent cannot take over node-a's name: its node password differs.
    let mut thief = Agent::join(&srv, "node-a", &agent_token);
    eventually(
        "the second node-a agent to exit",
        Duration::from_secs(60),
        || {
            let st = thief.process.exited();
            async move { st }
        },
    )
    .await;
    assert!(
        thief.process.log().contains("Node password rejected"),
        "{}",
        thief.process.log()
    );

    // The agent token gets no server's keys.
    let mut joiner =
        ServerProcess::named("srv2", &["--server", &srv.url(), "--token", &agent_token]);
    let st = joiner.exited().await;
    assert!(!st.success());
    assert!(
        joiner
            .log()
            .contains("refused the token (HTTP 401 Unauthorized)"),
        "{}",
        joiner.log()
    );
}
