//! A three-member store on TLS, client and peer ports both requiring certificates
//! (etcd's `--client-cert-auth` and `--peer-client-cert-auth`): the real `etcdctl` and
//! `curl` with the CA's client certificate work and replicate across members; without
//! a certificate, with one of another CA, or in plaintext, clients and peers are
//! refused in the handshake and the cluster stays as it was. Certificates come from
//! the same generator `capstan server` uses (`ensure_etcd_pki`), one CA per test
//! cluster and one foreign CA for the negative cases. `CAPSTAN_TEST_SERVER=etcd` runs
//! the same members as real etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use capstan_apiserver::tls::{ensure_etcd_pki, EtcdPki};

use crate::support::{
    against_etcd, etcdctl_at, eventually, free_port, peer_client, plaintext_peer_members, Ctl,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// Three TLS members on loopback, killed on drop.
struct TlsCluster {
    dir: tempfile::TempDir,
    pki: EtcdPki,
    endpoints: Vec<String>,
    peers: Vec<String>,
    children: Vec<Child>,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process killed when the test ends, failed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn member_command() -> Command {
    if against_etcd() {
        Command::new("etcd")
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_capstan"));
        c.arg("store");
        c
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

impl TlsCluster {
    async fn start() -> TlsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = ensure_etcd_pki(&dir.path().join("pki"), &[]).expect("store certificates");
        let endpoints: Vec<String> = (0..3)
            .map(|_| format!("https://127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = (0..3)
            .map(|_| format!("https://127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, u)| format!("m{i}={u}"))
            .collect();
        let initial = initial.join(",");
        let mut children = Vec::new();
        for i in 0..3 {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
            let child = member_command()
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.path().join(format!("m{i}.data")))
                .args(["--listen-client-urls", &endpoints[i]])
                .args(["--advertise-client-urls", &endpoints[i]])
                .args(["--listen-peer-urls", &peers[i]])
                .args(["--initial-advertise-peer-urls", &peers[i]])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", "capstan-tls-test"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--cert-file", p(&pki.server_cert)])
                .args(["--key-file", p(&pki.server_key)])
                .args(["--trusted-ca-file", p(&pki.ca_cert)])
                .arg("--client-cert-auth")
                .args(["--peer-cert-file", p(&pki.peer_cert)])
                .args(["--peer-key-file", p(&pki.peer_key)])
                .args(["--peer-trusted-ca-file", p(&pki.ca_cert)])
                .arg("--peer-client-cert-auth")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("member starts");
            children.push(child);
        }
        let c = TlsCluster {
            dir,
            pki,
            endpoints,
            peers,
            children,
        };
        for i in 0..3 {
            eventually(
                &format!("member {i} to serve over TLS"),
                DEADLINE,
                || async { c.etcdctl(i, &["get", "ready"]).ok.then_some(()) },
            )
            .await;
        }
        c
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default()
    }

    /// `etcdctl` against member `i` with the CA and the client certificate.
    fn etcdctl(&self, i: usize, args: &[&str]) -> Ctl {
        self.etcdctl_as(i, Some((&self.pki.client_cert, &self.pki.client_key)), args)
    }

    fn etcdctl_as(&self, i: usize, cert: Option<(&PathBuf, &PathBuf)>, args: &[&str]) -> Ctl {
        let mut all = vec![
            format!("--cacert={}", p(&self.pki.ca_cert)),
            "--dial-timeout=3s".to_string(),
        ];
        if let Some((c, k)) = cert {
            all.push(format!("--cert={}", p(c)));
            all.push(format!("--key={}", p(k)));
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        etcdctl_at(&self.endpoints[i], &all, None)
    }

    /// `member list` as sorted `name peer-URL` rows, through member 0.
    fn members(&self) -> Vec<String> {
        let out = self.etcdctl(0, &["member", "list"]);
        let mut rows: Vec<String> = out
            .out()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(", ").collect();
                format!("{} {}", f.get(2).unwrap_or(&""), f.get(3).unwrap_or(&""))
            })
            .collect();
        rows.sort();
        rows
    }
}

#[tokio::test]
async fn a_tls_cluster_replicates_and_serves_only_certified_clients() -> anyhow::Result<()> {
    let c = TlsCluster::start().await;
    // Written through one member, read linearizably through each of the others.
    assert!(c.etcdctl(0, &["put", "tls-key", "v1"]).ok, "{}", c.log(0));
    for i in 1..3 {
        let out = c.etcdctl(i, &["get", "tls-key", "--print-value-only"]);
        assert_eq!(out.out().trim(), "v1", "member {i}: {}", c.log(i));
    }
    let members = c.members();
    assert_eq!(
        members,
        (0..3)
            .map(|i| format!("m{i} {}", c.peers[i]))
            .collect::<Vec<_>>()
    );
    for i in 0..3 {
        let health = c.etcdctl(i, &["endpoint", "health"]);
        assert!(health.ok, "{}{}", health.stdout, health.stderr);
        assert!(health.stderr.contains("is healthy") || health.stdout.contains("is healthy"));
    }
    // The HTTP endpoints share the TLS port, with the same certificate rule, for
    // HTTP/1.1-only clients too (ALPN offers it beside h2, as Go's server does).
    let curl = |cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--http1.1",
            "--max-time",
            "5",
            "--cacert",
            p(&c.pki.ca_cert),
        ]);
        if cert {
            cmd.args([
                "--cert",
                p(&c.pki.client_cert),
                "--key",
                p(&c.pki.client_key),
            ]);
        }
        cmd.arg(format!("{}/health", c.endpoints[1]))
            .output()
            .expect("curl runs")
    };
    let ok = curl(true);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains(r#""health":"true""#),
        "{ok:?}"
    );
    assert!(
        !curl(false).status.success(),
        "/health without a certificate"
    );

    // No client certificate: refused (the handshake fails, so every call does).
    let bare = c.etcdctl_as(0, None, &["get", "tls-key"]);
    assert!(
        !bare.ok,
        "a client without a certificate read: {}",
        bare.stdout
    );
    assert!(!bare.stdout.contains("v1"));
    let bare_put = c.etcdctl_as(0, None, &["put", "tls-key", "intruder"]);
    assert!(!bare_put.ok, "a client without a certificate wrote");
    // A certificate of another CA: refused as well.
    let other_dir = tempfile::tempdir()?;
    let other = ensure_etcd_pki(other_dir.path(), &[]).expect("foreign certificates");
    let foreign = c.etcdctl_as(
        0,
        Some((&other.client_cert, &other.client_key)),
        &["put", "tls-key", "intruder"],
    );
    assert!(!foreign.ok, "a client of another CA wrote");
    // Plaintext on the TLS client port.
    let plain = etcdctl_at(
        &c.endpoints[0].replace("https://", "http://"),
        &["--dial-timeout=3s", "get", "tls-key"],
        None,
    );
    assert!(!plain.ok, "a plaintext client read: {}", plain.stdout);
    assert_eq!(
        c.etcdctl(2, &["get", "tls-key", "--print-value-only"])
            .out()
            .trim(),
        "v1"
    );

    // The peer ports: capstan's members answer the peer service to a peer
    // certificate of the cluster's CA (so the refusals below are the certificate's
    // doing), and refuse plaintext, no certificate, and another CA's certificate.
    if !against_etcd() {
        let names = peer_client(
            &c.peers[1],
            &c.pki.ca_cert,
            Some((&c.pki.peer_cert, &c.pki.peer_key)),
        )
        .await
        .expect("a peer with the cluster's certificate is answered");
        assert_eq!(names.len(), 3, "{names:?}");
        peer_client(&c.peers[1], &c.pki.ca_cert, None)
            .await
            .expect_err("a peer without a certificate is refused");
        peer_client(
            &c.peers[1],
            &c.pki.ca_cert,
            Some((&other.peer_cert, &other.peer_key)),
        )
        .await
        .expect_err("a peer with another CA's certificate is refused");
        plaintext_peer_members(&c.peers[1].replace("https://", "http://"))
            .await
            .expect_err("a plaintext peer connection is refused");
    }
    // A plaintext member: a fourth member without TLS, announcing itself to the
    // cluster over http, cannot join and the membership stays as it was.
    let stray_dir = c.dir.path().join("m3.data");
    let stray_peer = format!("http://127.0.0.1:{}", free_port());
    let stray_client = format!("http://127.0.0.1:{}", free_port());
    let mut initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", c.peers[i])).collect();
    initial.push(format!("m3={stray_peer}"));
    let stray_log = std::fs::File::create(c.dir.path().join("m3.log"))?;
    let stray = member_command()
        .args(["--name", "m3", "--data-dir"])
        .arg(&stray_dir)
        .args(["--listen-client-urls", &stray_client])
        .args(["--advertise-client-urls", &stray_client])
        .args(["--listen-peer-urls", &stray_peer])
        .args(["--initial-advertise-peer-urls", &stray_peer])
        .args(["--initial-cluster", &initial.join(",")])
        .args(["--initial-cluster-state", "existing"])
        .args(["--initial-cluster-token", "capstan-tls-test"])
        .stdin(Stdio::null())
        .stdout(stray_log.try_clone()?)
        .stderr(stray_log)
        .spawn()?;
    let mut stray = Reaped(stray);
    // It never becomes part of the cluster (etcd and capstan both give up and exit
    // when no member lets them in; either way it serves no reads as a member).
    let joined = eventually(
        "the plaintext member to give up",
        Duration::from_secs(60),
        || {
            let st = stray.0.try_wait().expect("try_wait");
            async move { st }
        },
    )
    .await;
    assert!(!joined.success());
    assert_eq!(c.members(), members, "the membership changed");

    // With auth on, a request that carries no token acts as the user its verified
    // client certificate names (etcd's rule under --client-cert-auth: the CN is the
    // user name); a token still takes precedence.
    let cn = "kube-apiserver-etcd-client";
    let cn_user = format!("{cn}:cnpw");
    for args in [
        vec!["user", "add", "root", "--new-user-password=rootpw"],
        vec!["user", "add", &cn_user, "--interactive=false"],
        vec!["role", "add", "apps"],
        vec![
            "role",
            "grant-permission",
            "apps",
            "readwrite",
            "apps/",
            "--prefix",
        ],
        vec!["user", "grant-role", cn, "apps"],
        vec!["auth", "enable"],
    ] {
        c.etcdctl(0, &args).out();
    }
    for i in 0..3 {
        c.etcdctl(i, &["put", &format!("apps/{i}"), "by-certificate"])
            .out();
    }
    let got = c.etcdctl(1, &["get", "apps/0", "--print-value-only"]);
    assert_eq!(got.out().trim(), "by-certificate");
    let denied = c.etcdctl(2, &["put", "tls-key", "v2"]);
    assert!(
        denied.err().contains("etcdserver: permission denied"),
        "{}",
        denied.stderr
    );
    let as_root = c.etcdctl(
        2,
        &["--user=root:rootpw", "get", "tls-key", "--print-value-only"],
    );
    assert_eq!(as_root.out().trim(), "v1");
    Ok(())
}

/// An `https://` URL without a certificate stops the member at start with etcd's
/// message, client side and peer side.
#[tokio::test]
async fn an_https_url_without_a_certificate_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = |client: &str, peer: &str| {
        member_command()
            .args(["--data-dir", p(&dir.path().join("d"))])
            .args([
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .output()
            .expect("member runs")
    };
    let client = format!("https://127.0.0.1:{}", free_port());
    let out = run(&client, &format!("http://127.0.0.1:{}", free_port()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url {client} with HTTPS scheme"
        )),
        "{err}"
    );
    let port = free_port();
    let out = run(
        &format!("http://127.0.0.1:{}", free_port()),
        &format!("https://127.0.0.1:{port}"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot listen on TLS for 127.0.0.1:{port}: KeyFile and CertFile are not presented"
        )),
        "{err}"
    );
    Ok(())
}

/// `capstan apiserver` on a TLS store with kube-apiserver's `--etcd-cafile`,
/// `--etcd-certfile` and `--etcd-keyfile`: kubectl's writes land in the store, which
/// `etcdctl` (with the same client certificate) reads back.
#[tokio::test]
async fn the_apiserver_reaches_a_tls_store_with_its_client_certificate() -> anyhow::Result<()> {
    let c = TlsCluster::start().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let log = std::fs::File::create(dir.path().join("apiserver.log"))?;
    let port = free_port();
    let api = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["apiserver", "--etcd-servers", &c.endpoints.join(",")])
        .args(["--etcd-cafile", p(&c.pki.ca_cert)])
        .args(["--etcd-certfile", p(&c.pki.client_cert)])
        .args(["--etcd-keyfile", p(&c.pki.client_key)])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .args(["--cert-dir", p(&dir.path().join("pki"))])
        .args(["--kubeconfig-out", p(&kubeconfig)])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut api = Reaped(api);
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let apiserver_log =
        || std::fs::read_to_string(dir.path().join("apiserver.log")).unwrap_or_default();
    eventually("the apiserver to serve", Duration::from_secs(60), || {
        let st = api.0.try_wait().expect("try_wait");
        assert!(st.is_none(), "apiserver exited: {}", apiserver_log());
        let ok = kubeconfig.exists() && kubectl(&["get", "--raw", "/healthz"]).status.success();
        async move { ok.then_some(()) }
    })
    .await;
    let out = kubectl(&["create", "configmap", "over-tls", "--from-literal=k=v"]);
    assert!(out.status.success(), "{out:?}\n{}", apiserver_log());
    let stored = c.etcdctl(
        2,
        &[
            "get",
            "/registry/configmaps/default/over-tls",
            "--print-value-only",
        ],
    );
    assert!(stored.out().contains("over-tls"), "{}", stored.stdout);
    Ok(())
}
