//! Three `capstan server`s as one HA cluster (`--cluster-init`, then `--server` and
//! `--token`), on one machine on distinct loopback ports: each server is SIGKILLed in
//! turn while `kubectl` against the others keeps working, then restarted, and it
//! rejoins from its data dir with everything written meanwhile; a `capstan agent` that
//! joined through the first server keeps its node working through its load balancer.
//! A wrong token is refused and changes nothing.

use std::path::PathBuf;
use std::time::Duration;

use super::ServerProcess;
use crate::support::{eventually, free_port, peer_client, plaintext_peer_members, Component};

/// `etcdctl member list` as (name, started, learner) rows, sorted.
fn members(srv: &ServerProcess) -> Option<Vec<(String, bool, bool)>> {
    let out = srv.etcdctl(&["member", "list"]);
    if !out.ok {
        return None;
    }
    let mut rows: Vec<(String, bool, bool)> = out
        .out()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (
                f.get(2).unwrap_or(&"").to_string(),
                f.get(1) == Some(&"started"),
                f.get(5) == Some(&"true"),
            )
        })
        .collect();
    rows.sort();
    Some(rows)
}

/// The store members' ids, sorted.
fn member_ids(srv: &ServerProcess) -> Vec<String> {
    let out = srv.etcdctl(&["member", "list"]);
    assert!(out.ok, "{}", out.stderr);
    let mut ids: Vec<String> = out
        .out()
        .lines()
        .filter_map(|l| l.split(", ").next().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// Waits until `srv`'s store member lists exactly s1, s2, s3, all started voters.
pub(super) async fn three_started_members(srv: &mut ServerProcess) {
    let want: Vec<(String, bool, bool)> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| (n.to_string(), true, false))
        .collect();
    eventually(
        "etcdctl member list to show three started voters",
        Duration::from_secs(60),
        || {
            srv.check_running();
            let ok = members(srv).is_some_and(|m| m == want);
            async move { ok.then_some(()) }
        },
    )
    .await;
}

/// Waits until the Deployment `web` has three available pods, none of them `gone`,
/// and returns their names.
pub(super) async fn web_available(srv: &ServerProcess, gone: Option<&str>) -> Vec<String> {
    eventually(
        "deployment web to have 3 available replicas",
        Duration::from_secs(120),
        || {
            let available = srv
                .kubectl(&[
                    "get",
                    "deployment",
                    "web",
                    "-o",
                    "jsonpath={.status.availableReplicas}",
                ])
                .stdout;
            let pods = srv.kubectl(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector",
                "status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            let names: Vec<String> = pods.stdout.split_whitespace().map(String::from).collect();
            let ok = pods.ok
                && available.trim() == "3"
                && names.len() == 3
                && gone.is_none_or(|g| !names.iter().any(|n| n == g));
            async move { ok.then_some(names) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_keep_serving_when_any_one_is_killed_and_rejoin() {
    let mut s1 = ServerProcess::named("s1", &["--cluster-init"]);
    s1.wait_ready().await;
    let token = std::fs::read_to_string(s1.data_dir().join("server/token")).expect("token file");
    let token = token.trim().to_string();
    assert!(
        token.starts_with("K10") && token.contains("::server:"),
        "{token}"
    );
    // The second joins through the first, the third through the second: any server
    // lets others join.
    let mut s2 = ServerProcess::named("s2", &["--server", &s1.url(), "--token", &token]);
    s2.wait_ready().await;
    let mut s3 = ServerProcess::named("s3", &["-s", &s2.url(), "-t", &token]);
    s3.wait_ready().await;
    three_started_members(&mut s1).await;
    let ids = member_ids(&s1);

    // A wrong secret with the right CA hash: refused with 401, the joiner gets no keys
    // and the store no member.
    let (hash, _) = token.split_once("::").expect("K10 token");
    let wrong = format!("{hash}::server:not-the-secret");
    let ids_before_intruders = member_ids(&s1);
    let mut intruder = ServerProcess::named("s4", &["--server", &s1.url(), "--token", &wrong]);
    let status = intruder.exited().await;
    assert!(!status.success(), "{}", intruder.log());
    assert!(
        intruder.log().contains("HTTP 401 Unauthorized"),
        "{}",
        intruder.log()
    );
    assert!(!intruder.data_dir().join("pki/ca.key").exists());
    assert_eq!(
        members(&s1).map(|m| m.len()),
        Some(3),
        "{}",
        s1.etcdctl(&["member", "list"]).out()
    );
    // The store's peer port, which other machines reach, speaks TLS only and serves
    // only certificates of the cluster's store CA: plaintext is refused, and so is a
    // member with certificates of another CA, before any request reaches Raft.
    let peer = format!("127.0.0.1:{}", s1.store_peer_port);
    plaintext_peer_members(&format!("http://{peer}"))
        .await
        .expect_err("a plaintext peer connection is refused");
    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let foreign = capstan_apiserver::tls::ensure_etcd_pki(foreign_dir.path(), &[])
        .expect("another CA's certificates");
    let ours = s1.data_dir().join("pki/etcd");
    let (peer_url, ca) = (format!("https://{peer}"), ours.join("ca.crt"));
    let tls_members = |cert: PathBuf, key: PathBuf| {
        let (peer_url, ca) = (peer_url.clone(), ca.clone());
        async move { peer_client(&peer_url, &ca, Some((&cert, &key))).await }
    };
    tls_members(foreign.peer_cert.clone(), foreign.peer_key.clone())
        .await
        .expect_err("a peer certificate of another CA is refused");
    // The same call with the cluster's own peer certificate passes the handshake (and
    // is then refused for want of the peer secret), so the refusal above is the CA's.
    let own = tls_members(ours.join("peer.crt"), ours.join("peer.key"))
        .await
        .expect_err("no peer secret");
    assert!(own.contains("peer secret"), "{own}");
    assert_eq!(
        members(&s1).map(|m| m.len()),
        Some(3),
        "{}",
        s1.etcdctl(&["member", "list"]).out()
    );
    // A token of another cluster (another CA hash): the joiner stops before sending it.
    let other = format!("K10{}::server:x", "0".repeat(64));
    let mut lost = ServerProcess::named("s5", &["--server", &s1.url(), "--token", &other]);
    assert!(!lost.exited().await.success());
    assert!(
        lost.log().contains("does not match the token's hash"),
        "{}",
        lost.log()
    );
    assert!(!lost.data_dir().join("pki/etcd/ca.key").exists());
    assert_eq!(
        member_ids(&s1),
        ids_before_intruders,
        "a server of another CA changed the membership"
    );

    // A worker joins through s1 alone; its agent's load balancer learns the others,
    // so the node keeps working (runs the replacement pods below) while s1 is down.
    let scratch = tempfile::tempdir().expect("tempdir");
    let (agent_dir, lb_port) = (
        scratch.path().display().to_string(),
        free_port().to_string(),
    );
    let mut node = Component::with_args(
        "agent",
        &[
            "agent",
            "--server",
            &s1.url(),
            "--token",
            &token,
            "--node-name",
            "worker",
            "--data-dir",
            &agent_dir,
            "--lb-server-port",
            &lb_port,
            "--simulated",
        ],
    );
    let out = s2.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=3",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let mut pods = web_available(&s3, None).await;

    // Each server's kubeconfig lists every server, one context each; the current one
    // stays on the server itself.
    let contexts = |s: &ServerProcess| {
        let mut c: Vec<String> = s
            .kubectl(&["config", "get-contexts", "-o", "name"])
            .out()
            .lines()
            .map(str::to_string)
            .collect();
        c.sort();
        c
    };
    let every = ["capstan", "capstan-s1", "capstan-s2", "capstan-s3"];
    eventually(
        "every kubeconfig to list every server",
        Duration::from_secs(30),
        || {
            let listed = [&s1, &s2, &s3].iter().all(|s| contexts(s) == every);
            async move { listed.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        s1.kubectl(&["config", "current-context"]).out().trim(),
        "capstan"
    );

    let mut servers = [s1, s2, s3];
    let mut written: Vec<String> = Vec::new();
    for down in 0..3 {
        let (a, b) = ((down + 1) % 3, (down + 2) % 3);
        servers[down].kill9();
        // Writes and reads through either survivor.
        let name = format!("written-while-s{}-down", down + 1);
        // If the killed server's store member led, writes fail for the second or so
        // the others take to elect a new leader (etcd's "no leader"); a user retries.
        eventually(
            "a survivor to take a write",
            Duration::from_secs(15),
            || {
                let c = servers[a].kubectl(&["create", "configmap", &name, "--from-literal=k=v"]);
                let ok = c.ok || c.stderr.contains("already exists");
                async move { ok.then_some(()) }
            },
        )
        .await;
        written.push(name.clone());
        let got = servers[b].kubectl(&["get", "configmap", &name, "-o", "jsonpath={.data.k}"]);
        assert_eq!(got.out(), "v", "{}", got.stderr);
        // The killed server's own kubeconfig reaches a survivor by its context.
        let survivor = format!("capstan-s{}", b + 1);
        let got = servers[down].kubectl(&[
            "--context",
            &survivor,
            "get",
            "configmap",
            &name,
            "-o",
            "jsonpath={.data.k}",
        ]);
        assert_eq!(got.out(), "v", "{survivor}: {}", got.stderr);
        // The controllers and scheduler still act (their leader may have been the
        // killed server's: a standby takes over): a deleted pod is replaced.
        let victim = pods[0].clone();
        let del = servers[b].kubectl(&["delete", "pod", &victim, "--wait=false"]);
        assert!(del.ok, "{}", del.stderr);
        pods = web_available(&servers[a], Some(&victim)).await;
        node.check_running();

        if down == 1 {
            // Restarted without the HA flags: the data dir says it is a member.
            let args = &mut servers[down].args;
            let at = args
                .iter()
                .position(|x| x == "--server")
                .expect("s2 joined with --server");
            args.drain(at..at + 4);
        }
        servers[down].spawn();
        servers[down].wait_ready().await;
        three_started_members(&mut servers[down]).await;
        for n in &written {
            let got = servers[down].kubectl(&["get", "configmap", n, "-o", "jsonpath={.data.k}"]);
            assert_eq!(got.out(), "v", "{n}: {}", got.stderr);
        }
    }
    // Every restart rejoined as the member it was: no second `member add`.
    assert_eq!(member_ids(&servers[0]), ids);
    // The whole cluster down at once, then back one server at a time: the first
    // waits for a quorum, and nothing acknowledged is lost.
    for s in &mut servers {
        s.kill9();
    }
    servers[0].spawn();
    eventually(
        "the first server back to wait for a quorum",
        Duration::from_secs(30),
        || {
            servers[0].check_running();
            let waiting = servers[0].log().contains("waiting for a store leader");
            async move { waiting.then_some(()) }
        },
    )
    .await;
    servers[1].spawn();
    servers[2].spawn();
    for s in &mut servers {
        s.wait_ready().await;
    }
    three_started_members(&mut servers[2]).await;
    // Nothing lost, seen the same from every server.
    for s in &servers {
        let names = s.kubectl(&[
            "get",
            "configmaps",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        for n in &written {
            assert!(
                names.out().split_whitespace().any(|x| x == n),
                "{n} missing: {}",
                names.out()
            );
        }
        web_available(s, None).await;
    }
}

/// A single server's store has no Raft log to grow from: `--cluster-init` on its data
/// dir is refused, and the server still starts as it was without the flag.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_init_refuses_a_single_servers_data_dir() {
    let mut srv = ServerProcess::start(&[]);
    srv.wait_ready().await;
    let created = srv.kubectl(&["create", "configmap", "keep", "--from-literal=k=v"]);
    assert!(created.ok, "{}", created.stderr);
    srv.kill9();
    srv.args.push("--cluster-init".into());
    srv.spawn();
    assert!(!srv.exited().await.success(), "{}", srv.log());
    assert!(
        srv.log().contains("cannot grow into a cluster"),
        "{}",
        srv.log()
    );
    srv.args.pop();
    srv.spawn();
    srv.wait_ready().await;
    let got = srv.kubectl(&["get", "configmap", "keep", "-o", "jsonpath={.data.k}"]);
    assert_eq!(got.out(), "v");
}

/// `etcdctl endpoint status` of `srv`'s member: its id and the leader it knows.
fn endpoint_status(srv: &ServerProcess) -> Option<(u64, u64)> {
    let out = srv.etcdctl(&["endpoint", "status", "-w", "json"]);
    if !out.ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let st = &v[0]["Status"];
    Some((st["header"]["member_id"].as_u64()?, st["leader"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leading_server_hands_store_leadership_over_on_sigterm() {
    let mut s1 = ServerProcess::named("s1", &["--cluster-init"]);
    s1.wait_ready().await;
    let token = std::fs::read_to_string(s1.data_dir().join("server/token")).expect("token file");
    let token = token.trim().to_string();
    let mut s2 = ServerProcess::named("s2", &["--server", &s1.url(), "--token", &token]);
    s2.wait_ready().await;
    let mut s3 = ServerProcess::named("s3", &["--server", &s1.url(), "--token", &token]);
    s3.wait_ready().await;
    three_started_members(&mut s1).await;
    let mut servers = [s1, s2, s3];
    let (leader, old_id) = eventually("a store leader", Duration::from_secs(30), || {
        let found = servers.iter().enumerate().find_map(|(i, s)| {
            endpoint_status(s).and_then(|(me, leader)| (me == leader).then_some((i, me)))
        });
        async move { found }
    })
    .await;

    let status = servers[leader].terminate();
    assert!(status.success(), "{status}\n{}", servers[leader].log());
    let log = servers[leader].log();
    assert!(
        log.contains("handed store leadership over before stopping"),
        "{log}"
    );
    // The survivors agree on a new leader among themselves, and take writes.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    eventually(
        "the survivors to follow a new leader",
        Duration::from_secs(10),
        || {
            let st: Vec<Option<(u64, u64)>> = survivors
                .iter()
                .map(|i| endpoint_status(&servers[*i]))
                .collect();
            let ids: Vec<u64> = st.iter().flatten().map(|(me, _)| *me).collect();
            let agreed = st
                .iter()
                .all(|s| s.is_some_and(|(_, l)| l != 0 && l != old_id && ids.contains(&l)))
                && st.first().copied().flatten().map(|s| s.1)
                    == st.get(1).copied().flatten().map(|s| s.1);
            async move { agreed.then_some(()) }
        },
    )
    .await;
    let out = servers[survivors[0]].kubectl(&["create", "configmap", "after-handoff"]);
    assert!(out.ok, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ha_server_restored_with_cluster_reset_lets_others_join_again() {
    let mut s1 = ServerProcess::named("s1", &["--cluster-init"]);
    s1.wait_ready().await;
    let token = std::fs::read_to_string(s1.data_dir().join("server/token")).expect("token file");
    let token = token.trim().to_string();
    assert!(s1.kubectl(&["create", "configmap", "at-snapshot"]).ok);
    let saved = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args([
            "etcd-snapshot",
            "save",
            "--name",
            "ha",
            "--node-name",
            "s1",
            "--data-dir",
        ])
        .arg(s1.data_dir())
        .args(["--store-client-port", &s1.store_client_port.to_string()])
        .output()
        .expect("capstan runs");
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let name = String::from_utf8_lossy(&saved.stdout)
        .trim()
        .trim_start_matches("Snapshot ")
        .trim_end_matches(" saved.")
        .to_string();
    let file = s1.data_dir().join("server/db/snapshots").join(name);
    assert!(s1.kubectl(&["create", "configmap", "after-snapshot"]).ok);

    s1.kill9();
    s1.args.extend([
        "--cluster-reset".to_string(),
        "--cluster-reset-restore-path".to_string(),
        file.display().to_string(),
    ]);
    s1.spawn();
    s1.wait_ready().await;
    let names = s1.kubectl(&["get", "configmaps", "-o", "name"]);
    assert!(
        names.out().contains("configmap/at-snapshot"),
        "{}",
        names.out()
    );
    assert!(!names.out().contains("after-snapshot"), "{}", names.out());
    assert_eq!(member_ids(&s1).len(), 1, "a single member");
    // Still a cluster others join, with the same token.
    let mut s2 = ServerProcess::named("s2", &["--server", &s1.url(), "--token", &token]);
    s2.wait_ready().await;
    eventually("two members", Duration::from_secs(60), || {
        let n = members(&s1).map(|m| m.len());
        async move { (n == Some(2)).then_some(()) }
    })
    .await;
    // The joined server serves the restored data (its member caught up from the log or
    // a snapshot).
    eventually("the restored data on s2", Duration::from_secs(30), || {
        let names = s2.kubectl(&["get", "configmaps", "-o", "name"]);
        async move { names.stdout.contains("configmap/at-snapshot").then_some(()) }
    })
    .await;
}
