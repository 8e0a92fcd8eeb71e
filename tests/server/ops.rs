//! Operating a server as its administrator does: every component's health and metrics
//! endpoint read with curl, the apiserver going unready with its store, on-demand
//! snapshots and a restore with `--cluster-reset`, certificate rotation and renewal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::support::{self, eventually};
use super::ServerProcess;

/// `curl -sk` of `url`: the status code and body (None if it could not connect).
pub fn curl(url: &str, extra: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// `capstan <args>`, which must succeed; its stdout.
fn capstan(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .output()
        .expect("capstan runs");
    assert!(
        out.status.success(),
        "capstan {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl x509` fields of the certificate the apiserver at `port` serves.
fn served_cert(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial -startdate -enddate -issuer -fingerprint -sha1"
        ))
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("serial="), "no certificate read: {text}");
    text
}

/// The value of `name=` in openssl's output (`Fingerprint=` matches `sha1 Fingerprint=`,
/// which openssl versions capitalise differently).
fn field<'a>(cert: &'a str, name: &str) -> &'a str {
    cert.lines()
        .find_map(|l| l.split_once(name).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("{name} in {cert}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_component_serves_health_and_metrics_on_its_own_port() {
    let mut srv = ServerProcess::start(&[]);
    srv.wait_ready().await;

    // The apiserver: upstream's checks, verbose and not, one at a time, excluded.
    let ready = srv.kubectl(&["get", "--raw", "/readyz?verbose"]);
    let ready = ready.out();
    for line in [
        "[+]ping ok",
        "[+]log ok",
        "[+]etcd ok",
        "[+]etcd-readiness ok",
        "[+]informer-sync ok",
        "[+]shutdown ok",
        "readyz check passed",
    ] {
        assert!(ready.lines().any(|l| l == line), "{line:?} in {ready}");
    }
    let live = srv.kubectl(&["get", "--raw", "/livez?verbose"]);
    assert_eq!(
        live.out(),
        "[+]ping ok\n[+]log ok\n[+]etcd ok\nlivez check passed\n"
    );
    assert_eq!(srv.kubectl(&["get", "--raw", "/readyz"]).out(), "ok");
    assert_eq!(srv.kubectl(&["get", "--raw", "/livez/etcd"]).out(), "ok");
    let excluded = srv.kubectl(&["get", "--raw", "/readyz?verbose&exclude=etcd"]);
    assert!(
        excluded.out().contains("[+]etcd excluded: ok\n"),
        "{}",
        excluded.out()
    );

    // The controller-manager and scheduler on their secure ports (HTTPS): health for
    // anyone, and metrics under upstream's names once they lead.
    let api_host = format!("127.0.0.1:{}", srv.https_port);
    for (port, lease) in [
        (srv.ports.controller_manager, "kube-controller-manager"),
        (srv.ports.scheduler, "kube-scheduler"),
    ] {
        let base = format!("https://127.0.0.1:{port}");
        let (code, body) = eventually(
            &format!("{lease} /healthz"),
            Duration::from_secs(60),
            || {
                srv.check_running();
                let r = curl(&format!("{base}/healthz"), &[]);
                async move { r }
            },
        )
        .await;
        assert_eq!((code, body.as_str()), (200, "ok"), "{lease}");
        let (code, body) = curl(&format!("{base}/readyz?verbose"), &[]).expect("readyz");
        assert_eq!(code, 200, "{body}");
        assert!(body.ends_with("readyz check passed\n"), "{lease}: {body}");
        assert!(body.contains("[+]ping ok\n"), "{lease}: {body}");
        let leading = format!("leader_election_master_status{{name=\"{lease}\"}} 1");
        let metrics = eventually(
            &format!("{lease} leading in /metrics"),
            Duration::from_secs(60),
            || {
                let m = curl(&format!("{base}/metrics"), &[]).map(|(_, b)| b);
                let leading = &leading;
                async move { m.filter(|m| m.contains(leading.as_str())) }
            },
        )
        .await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("rest_client_requests_total{")
                    && l.contains("code=\"200\"")
                    && l.contains(&format!("host=\"{api_host}\""))
                    && l.contains("method=\"GET\"")),
            "{lease}: {metrics}"
        );
    }
    // A pod with no node to go to is one unschedulable attempt.
    let out = srv.kubectl(&["run", "nowhere", "--image", "busybox"]);
    assert!(out.ok, "{}", out.stderr);
    let sched = format!("https://127.0.0.1:{}/metrics", srv.ports.scheduler);
    eventually(
        "an unschedulable attempt in the scheduler's metrics",
        Duration::from_secs(60),
        || {
            let m = curl(&sched, &[]).map(|(_, b)| b).unwrap_or_default();
            let seen = m.lines().any(|l| {
                l.starts_with("scheduler_schedule_attempts_total{")
                    && l.contains("result=\"unschedulable\"")
            }) && m.contains("scheduler_scheduling_attempt_duration_seconds_bucket{");
            async move { seen.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_is_unready_while_its_store_is_down() {
    let mut store = support::Server::start().await;
    let api = support::Apiserver::start(&store.endpoint).await;
    // Anonymous, as upstream serves health to everyone.
    let readyz = format!("{}/readyz?verbose", api.url);
    let (code, body) = curl(&readyz, &[]).expect("readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("[+]etcd ok\n"), "{body}");

    store.kill9();
    let (code, body) = eventually("readyz to fail", Duration::from_secs(30), || {
        let r = curl(&readyz, &[]).filter(|(c, _)| *c != 200);
        async move { r }
    })
    .await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("[+]ping ok\n"), "{body}");
    assert!(body.contains("[-]etcd failed: reason withheld\n"), "{body}");
    assert!(body.ends_with("readyz check failed\n"), "{body}");
    let (code, body) = curl(&format!("{}/readyz/etcd", api.url), &[]).expect("readyz/etcd");
    assert_eq!(code, 500, "{body}");
    assert!(body.starts_with("internal server error: "), "{body}");

    store.restart().await;
    eventually("readyz to pass again", Duration::from_secs(30), || {
        let r = curl(&format!("{}/readyz", api.url), &[]).filter(|(c, b)| *c == 200 && b == "ok");
        async move { r }
    })
    .await;
}

/// The data of the three config maps a snapshot test plays with.
fn configmaps(srv: &ServerProcess) -> String {
    let out = srv.kubectl(&[
        "get",
        "configmaps",
        "-o",
        "jsonpath={range .items[?(@.metadata.name!=\"kube-root-ca.crt\")]}{.metadata.name}={.data.k} {end}",
    ]);
    out.out().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restores_the_cluster_as_it_was() {
    let mut srv = ServerProcess::start(&[]);
    srv.wait_ready().await;
    for (name, v) in [("kept", "before"), ("changed", "before")] {
        let out = srv.kubectl(&[
            "create",
            "configmap",
            name,
            &format!("--from-literal=k={v}"),
        ]);
        assert!(out.ok, "{}", out.stderr);
    }
    let data = srv.data_dir().display().to_string();
    let port = srv.store_client_port.to_string();
    let saved = capstan(&[
        "etcd-snapshot",
        "save",
        "--data-dir",
        &data,
        "--store-client-port",
        &port,
        "--node-name",
        "srv",
        "--name",
        "nightly",
    ]);
    let name = saved
        .trim()
        .strip_prefix("Snapshot ")
        .and_then(|s| s.strip_suffix(" saved."))
        .unwrap_or_else(|| panic!("{saved}"))
        .to_string();
    let ts = name
        .strip_prefix("nightly-srv-")
        .expect("<name>-<node>-<time>");
    assert!(ts.parse::<u64>().is_ok(), "{name}");
    let file = srv.data_dir().join("server/db/snapshots").join(&name);
    assert!(file.is_file(), "{}", file.display());

    // Afterwards: one deleted, one changed, one new.
    assert!(srv.kubectl(&["delete", "configmap", "kept"]).ok);
    let out = srv.kubectl(&[
        "patch",
        "configmap",
        "changed",
        "-p",
        r#"{"data":{"k":"after"}}"#,
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        srv.kubectl(&["create", "configmap", "new", "--from-literal=k=new"])
            .ok
    );
    assert_eq!(configmaps(&srv), "changed=after new=new");

    // A second snapshot, listed, then deleted.
    let other = capstan(&[
        "etcd-snapshot",
        "save",
        "--data-dir",
        &data,
        "--store-client-port",
        &port,
        "--node-name",
        "srv",
        "--name",
        "other",
    ]);
    let other = other
        .trim()
        .trim_start_matches("Snapshot ")
        .trim_end_matches(" saved.")
        .to_string();
    let ls = capstan(&["etcd-snapshot", "ls", "--data-dir", &data]);
    assert!(ls.starts_with("Name "), "{ls}");
    for n in [&name, &other] {
        let row = ls
            .lines()
            .find(|l| l.starts_with(n.as_str()))
            .unwrap_or_else(|| panic!("{n} in {ls}"));
        assert!(
            row.contains(&format!(
                "file://{}",
                srv.data_dir().join("server/db/snapshots").join(n).display()
            )),
            "{row}"
        );
    }
    let deleted = capstan(&["etcd-snapshot", "delete", "--data-dir", &data, &other]);
    assert_eq!(deleted.trim(), format!("Snapshot {other} deleted."));
    let ls = capstan(&["etcd-snapshot", "ls", "--data-dir", &data]);
    assert!(!ls.contains(&other) && ls.contains(&name), "{ls}");

    // Restored into a new server's fresh data dir.
    let restore = file.display().to_string();
    let mut fresh = ServerProcess::named(
        "fresh",
        &["--cluster-reset", "--cluster-reset-restore-path", &restore],
    );
    fresh.wait_ready().await;
    assert_eq!(configmaps(&fresh), "changed=before kept=before");
    // It starts normally from then on, and keeps what it is given.
    assert!(
        fresh
            .kubectl(&["create", "configmap", "later", "--from-literal=k=1"])
            .ok
    );
    fresh.kill9();
    fresh
        .args
        .retain(|a| !a.starts_with("--cluster-reset") && *a != restore);
    fresh.spawn();
    fresh.wait_ready().await;
    assert_eq!(configmaps(&fresh), "changed=before kept=before later=1");

    // And into the same server's data dir, the store it had kept aside.
    srv.kill9();
    srv.args.extend([
        "--cluster-reset".to_string(),
        "--cluster-reset-restore-path".to_string(),
        restore.clone(),
    ]);
    srv.spawn();
    srv.wait_ready().await;
    assert_eq!(configmaps(&srv), "changed=before kept=before");
    let db = std::fs::read_dir(srv.data_dir().join("server/db")).expect("db dir");
    assert!(
        db.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("store-old-")),
        "the old store kept aside"
    );
}

/// Replaces `<pki>/admin.crt` with one from the same CA expiring in 30 days.
fn expiring_admin_cert(pki: &Path) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(
            "set -e; cd \"$0\"; openssl ecparam -name prime256v1 -genkey -noout -out admin.key 2>/dev/null; \
             openssl req -new -key admin.key -subj '/O=system:masters/CN=admin' -out admin.csr; \
             openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -out admin.crt 2>/dev/null; \
             rm -f admin.csr",
        )
        .arg(pki)
        .status()
        .expect("sh runs");
    assert!(st.success(), "making an expiring certificate");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_rotate_from_the_same_ca_and_renew_before_expiry() {
    let mut srv = ServerProcess::start(&[]);
    srv.wait_ready().await;
    let before = served_cert(srv.https_port);
    let old_kubeconfig = srv.dir.path().join("old-kubeconfig");
    std::fs::copy(srv.kubeconfig(), &old_kubeconfig).expect("copy kubeconfig");
    let pki = srv.data_dir().join("pki");
    let ca = std::fs::read(pki.join("ca.crt")).expect("ca.crt");

    srv.kill9();
    let out = capstan(&[
        "certificate",
        "rotate",
        "--data-dir",
        &srv.data_dir().display().to_string(),
    ]);
    assert!(
        out.starts_with("Successfully backed up certificates to "),
        "{out}"
    );
    assert!(!pki.join("apiserver.crt").exists());
    srv.spawn();
    srv.wait_ready().await;
    let after = served_cert(srv.https_port);
    assert_ne!(
        field(&before, "serial="),
        field(&after, "serial="),
        "{before}\n{after}"
    );
    // A new key too; notBefore has second resolution, so a quick restart may keep it.
    assert_ne!(
        field(&before, "Fingerprint="),
        field(&after, "Fingerprint="),
        "{before}\n{after}"
    );
    assert_eq!(field(&before, "issuer="), field(&after, "issuer="));
    assert_eq!(
        std::fs::read(pki.join("ca.crt")).expect("ca.crt"),
        ca,
        "the CA stays"
    );
    // A kubeconfig from before trusts the new serving certificate, and its client
    // certificate (same CA) still gets in.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&old_kubeconfig)
        .args(["get", "namespace", "kube-system", "-o", "name"])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/kube-system"
    );

    // A certificate within 90 days of expiry is renewed at start.
    srv.kill9();
    expiring_admin_cert(&pki);
    let read_end = || {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-in"])
            .arg(pki.join("admin.crt"))
            .output()
            .expect("openssl runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let expiring = read_end();
    srv.spawn();
    srv.wait_ready().await;
    let renewed = read_end();
    assert_ne!(expiring, renewed);
    let check = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(300 * 86400).to_string(),
            "-in",
        ])
        .arg(pki.join("admin.crt"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(check.success(), "renewed for a year: {renewed}");
    assert!(srv.kubectl(&["get", "namespaces"]).ok);
}
