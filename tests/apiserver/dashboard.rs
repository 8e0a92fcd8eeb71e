//! The built-in dashboard (`/dashboard/`) as a user sees it: a real three-member store,
//! a real apiserver, controller-manager, scheduler and simulated node, and the page
//! rendered by headless Chromium, driven over the DevTools protocol (a WebSocket) so
//! the test reads the live DOM of one page load while the cluster changes under it.
//! The user signs in with a service-account token (what the README tells them to
//! make), passed in the URL fragment.
//!
//! Chromium comes from `scripts/setup` (Debian's `chromium`); without it the test says
//! so and passes, as it cannot run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{eventually, Apiserver, Cluster, Component, Scheduler};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page may take to show a change (it watches; this covers slow CI).
const SHOWN: Duration = Duration::from_secs(60);
/// How long components may take to act (a token filled, a pod Running).
const SETTLE: Duration = Duration::from_secs(60);

/// A headless Chromium with one page, and a DevTools session on that page.
struct Browser {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next_id: u64,
    // Fields drop in order: the process is killed before its profile dir is removed.
    _chromium: Chromium,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url`, trusting only the certificate whose public key hashes
    /// to `spki` (base64 SHA-256) besides the usual roots, and attaches to its page.
    async fn open(url: &str, spki: &str) -> Browser {
        let profile = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(profile.path().join("chromium.log")).expect("log file");
        let chromium = Chromium(
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--remote-debugging-address=127.0.0.1",
                    // Any free port; Chromium writes it to DevToolsActivePort.
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
                .arg(url)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("chromium starts"),
        );
        let active = profile.path().join("DevToolsActivePort");
        let port: u16 = eventually("Chromium's DevTools port", SETTLE, || {
            let text = std::fs::read_to_string(&active).unwrap_or_default();
            async move { text.lines().next()?.trim().parse().ok() }
        })
        .await;
        let endpoint = format!("127.0.0.1:{port}");
        let page_ws = eventually("Chromium's page target", SETTLE, || {
            // curl: Chromium's DevTools HTTP server keeps even HTTP/1.0 connections open.
            let list = Command::new("curl")
                .args(["-sS", "--max-time", "5"])
                .arg(format!("http://{endpoint}/json/list"))
                .output();
            async move {
                let out = list.ok().filter(|o| o.status.success())?;
                let targets: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
                targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string)
            }
        })
        .await;
        let tcp = tokio::net::TcpStream::connect(&endpoint)
            .await
            .expect("DevTools connects");
        let (ws, _) = tokio_tungstenite::client_async(page_ws.as_str(), tcp)
            .await
            .expect("DevTools WebSocket handshake");
        Browser {
            _chromium: chromium,
            ws,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Evaluates `expression` in the page and returns its value (events that arrive
    /// meanwhile are skipped).
    async fn eval(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true}});
        self.ws
            .send(Message::text(call.to_string()))
            .await
            .expect("DevTools send");
        loop {
            let msg = tokio::time::timeout(SETTLE, self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools session open")
                .expect("DevTools message");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if v["id"] != id {
                continue;
            }
            assert!(v.get("error").is_none(), "Runtime.evaluate: {v}");
            assert!(
                v["result"].get("exceptionDetails").is_none(),
                "{expression}: {}",
                v["result"]["exceptionDetails"]
            );
            return v["result"]["result"]["value"].clone();
        }
    }

    /// What the page shows, read from its DOM as rendered text (`None` while the
    /// dashboard is not loaded yet).
    async fn view(&mut self) -> Option<View> {
        let v = self.eval(VIEW_JS).await;
        let raw = v.as_str()?;
        Some(serde_json::from_str(raw).expect("the view parses"))
    }
}

/// The Chromium process, killed and reaped when dropped (also when attaching to it
/// fails).
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the dashboard as a user reads it: each table's rows as their cells' visible
/// text, the summaries and the status line.
const VIEW_JS: &str = r#"(() => {
  if (!document.getElementById('status')) return null;
  const rows = (id) => [...document.querySelectorAll('#' + id + ' tbody tr')]
    .map((tr) => [...tr.cells].map((c) => c.innerText.trim()));
  const text = (id) => document.getElementById(id).innerText.trim();
  return JSON.stringify({
    nodes: rows('nodes'), pods: rows('pods'), deployments: rows('deployments'), store: rows('store'),
    storeSummary: text('store-summary'), storeError: text('store-error'), nodesError: text('nodes-error'),
    status: text('status'), href: location.href, marker: window.dashboardTestMarker || null,
  });
})()"#;

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct View {
    nodes: Vec<Vec<String>>,
    pods: Vec<Vec<String>>,
    deployments: Vec<Vec<String>>,
    store: Vec<Vec<String>>,
    store_summary: String,
    store_error: String,
    nodes_error: String,
    status: String,
    href: String,
    marker: Option<String>,
}

impl View {
    /// The node's Status column.
    fn node_status(&self, name: &str) -> Option<&str> {
        let row = self
            .nodes
            .iter()
            .find(|r| r.first().map(String::as_str) == Some(name))?;
        row.get(1).map(String::as_str)
    }

    /// The pods-by-phase table, as (phase, count).
    fn phases(&self) -> Vec<(String, u64)> {
        self.pods
            .iter()
            .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.parse().ok()?)))
            .collect()
    }

    /// The deployment's row: namespace, name, ready, up-to-date, available, rollout.
    fn deployment(&self, ns: &str, name: &str) -> Option<&[String]> {
        self.deployments
            .iter()
            .find(|r| {
                r.first().map(String::as_str) == Some(ns)
                    && r.get(1).map(String::as_str) == Some(name)
            })
            .map(Vec::as_slice)
    }
}

fn phases(counts: [u64; 5]) -> Vec<(String, u64)> {
    ["Pending", "Running", "Succeeded", "Failed", "Unknown"]
        .iter()
        .zip(counts)
        .map(|(p, n)| (p.to_string(), n))
        .collect()
}

#[track_caller]
fn admin(api: &Apiserver, args: &[&str]) -> String {
    let out = api.kubectl(args);
    assert!(out.ok, "kubectl {args:?}: {}", out.stderr);
    out.stdout
}

#[track_caller]
fn admin_apply(api: &Apiserver, manifest: &str) {
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(out.ok, "kubectl apply: {}\n{manifest}", out.stderr);
}

/// The token of a new service account `ns/name` bound to `clusterrole`, from the token
/// Secret the controller-manager fills: how the README has a user get a token.
async fn token_for(api: &Apiserver, ns: &str, name: &str, clusterrole: &str) -> String {
    admin(api, &["create", "serviceaccount", name, "-n", ns]);
    admin(
        api,
        &[
            "create",
            "clusterrolebinding",
            &format!("{name}-{clusterrole}"),
            "--clusterrole",
            clusterrole,
            "--serviceaccount",
            &format!("{ns}:{name}"),
        ],
    );
    admin_apply(
        api,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-token\n  namespace: {ns}\n  annotations:\n    kubernetes.io/service-account.name: {name}\ntype: kubernetes.io/service-account-token\n"
        ),
    );
    let secret = format!("{name}-token");
    let b64 = eventually("the token Secret filled in", SETTLE, || {
        let out = api.kubectl(&[
            "get",
            "secret",
            &secret,
            "-n",
            ns,
            "-o",
            "jsonpath={.data.token}",
        ]);
        async move { (out.ok && !out.stdout.is_empty()).then_some(out.stdout) }
    })
    .await;
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("token is base64");
    String::from_utf8(raw).expect("token is text")
}

/// `curl` of `path` on the apiserver (its CA trusted) with an optional bearer token:
/// the status code and body.
fn curl(api: &Apiserver, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(api.pki_dir().join("ca.crt"));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("{}{path}", api.url))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The base64 SHA-256 of the certificate's public key (what Chromium's SPKI list takes),
/// computed by openssl.
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls the page until `ok` accepts what it shows; panics with the last view.
async fn shown(browser: &mut Browser, what: &str, ok: impl Fn(&View) -> bool) -> View {
    let deadline = std::time::Instant::now() + SHOWN;
    loop {
        let view = browser.view().await;
        if let Some(v) = view.as_ref().filter(|v| ok(v)) {
            return v.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not show {what} in {SHOWN:?}; it shows {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_the_cluster_live() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED dashboard_shows_the_cluster_live: {CHROMIUM} is not installed (scripts/setup installs Debian's chromium)");
        return;
    }
    let mut store = Cluster::start(3).await;
    let api = Apiserver::start(&store.endpoints().join(",")).await;
    let pki = api.pki_dir();
    let (key, ca) = (
        pki.join("sa.key").display().to_string(),
        pki.join("ca.crt").display().to_string(),
    );
    let _cm = Component::start(
        &api,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--service-account-private-key-file",
            &key,
            "--root-ca-file",
            &ca,
        ],
    );
    let _scheduler = Scheduler::start(&api.kubeconfig, &["--leader-elect=false"]);
    let _node = Component::start(
        &api,
        "node",
        &["--simulated", "--hostname-override", "dash-sim"],
    );

    // A node added through the API, with no kubelet behind it: not Ready, and tainted
    // so nothing is scheduled there.
    admin_apply(
        &api,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: dash-ghost\nspec:\n  taints:\n  - key: dash/ghost\n    effect: NoSchedule\n",
    );
    admin(
        &api,
        &[
            "patch",
            "node",
            "dash-ghost",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"no kubelet","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
        ],
    );

    // Pods in every phase but Unknown: a Deployment's two (Running on the simulated
    // node), one that exits 0, one that exits 1, one no node fits (Pending).
    admin(
        &api,
        &[
            "create",
            "deployment",
            "web",
            "--image=capstan.local/busybox:1",
            "--replicas=2",
        ],
    );
    let ended = |name: &str, code: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    sim.capstan.io/run-seconds: \"0\"\n    sim.capstan.io/exit-code: \"{code}\"\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: capstan.local/busybox:1\n"
        )
    };
    admin_apply(&api, &ended("done", "0"));
    admin_apply(&api, &ended("crashed", "1"));
    let unplaceable = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector:\n    dash/nowhere: \"true\"\n  containers:\n  - name: c\n    image: capstan.local/busybox:1\n"
        )
    };
    admin_apply(&api, &unplaceable("waiting"));
    for (pod, phase) in [
        ("done", "Succeeded"),
        ("crashed", "Failed"),
        ("waiting", "Pending"),
    ] {
        eventually(&format!("pod {pod} {phase}"), SETTLE, || {
            let out = api.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
            async move { (out.stdout == phase).then_some(()) }
        })
        .await;
    }
    let rollout = api.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(rollout.ok, "rollout status: {}", rollout.stderr);
    let rolled_out = rollout.stdout.lines().last().unwrap_or("").to_string();
    assert_eq!(rolled_out, "deployment \"web\" successfully rolled out");

    let admin_token = token_for(&api, "kube-system", "dashboard-admin", "cluster-admin").await;
    let viewer_token = token_for(&api, "default", "viewer", "view").await;

    // The page is public; its data is not. The store's status is for admins only.
    let (code, page) = curl(&api, "/dashboard/", None);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<title>capstan dashboard</title>"), "{page}");
    let (code, body) = curl(&api, "/dashboard/api/store", None);
    assert_eq!(code, 401, "{body}");
    let status: Value = serde_json::from_str(&body).expect("a Status");
    assert_eq!(status["reason"], "Unauthorized", "{body}");
    let (code, body) = curl(&api, "/dashboard/api/store", Some(&viewer_token));
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body).expect("a Status");
    let forbidden = "forbidden: User \"system:serviceaccount:default:viewer\" cannot get path \"/dashboard/api/store\"";
    assert_eq!(status["message"], forbidden, "{body}");
    let (code, body) = curl(&api, "/dashboard/api/store", Some(&admin_token));
    assert_eq!(code, 200, "{body}");

    // The browser, trusting exactly the apiserver's certificate.
    let spki = spki_hash(&pki.join("apiserver.crt"));
    let mut browser = Browser::open(
        &format!("{}/dashboard/#token={admin_token}", api.url),
        &spki,
    )
    .await;
    let leader = store.leader().await;
    let leader_name = store.members[leader].name.clone();
    let view = shown(&mut browser, "the cluster", |v| {
        v.node_status("dash-sim") == Some("Ready")
            && v.node_status("dash-ghost") == Some("NotReady")
            && v.phases() == phases([1, 2, 1, 1, 0])
            && v.deployment("default", "web")
                .is_some_and(|d| d[2] == "2/2" && d[5] == rolled_out)
            && v.store.len() == 3
            && v.status == "Live"
    })
    .await;
    assert!(
        !view.href.contains("token="),
        "the token left in the address bar: {}",
        view.href
    );
    let web = view.deployment("default", "web").expect("web's row");
    assert_eq!(
        web[3..5],
        ["2".to_string(), "2".to_string()],
        "up-to-date, available"
    );
    // The members, the leader marked (the one the members agree on), each with its term
    // and applied index.
    let leaders: Vec<&Vec<String>> = view.store.iter().filter(|r| r[2] == "leader").collect();
    assert_eq!(leaders.len(), 1, "one leader marked: {:#?}", view.store);
    assert_eq!(
        leaders[0][0], leader_name,
        "the marked leader: {:#?}",
        view.store
    );
    for row in &view.store {
        assert!(["leader", "follower"].contains(&row[2].as_str()), "{row:?}");
        let term: u64 = row[3].parse().expect("a term");
        let applied: u64 = row[5].parse().expect("an applied index");
        assert!(term >= 1 && applied >= 1, "{row:?}");
    }
    let mut names: Vec<&str> = view.store.iter().map(|r| r[0].as_str()).collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    assert!(
        view.store_summary
            .starts_with(&format!("3 members, leader {leader_name}, term ")),
        "{}",
        view.store_summary
    );
    let applied_before: u64 = leaders[0][5].parse().expect("an applied index");

    // Live: the cluster changes, the same page load shows it (the marker set now would
    // be gone after a reload).
    browser
        .eval("window.dashboardTestMarker = 'same page'")
        .await;
    admin(&api, &["scale", "deployment", "web", "--replicas=3"]);
    admin_apply(&api, &unplaceable("waiting-too"));
    let view = shown(&mut browser, "the scaled deployment and the new pod", |v| {
        v.deployment("default", "web")
            .is_some_and(|d| d[2] == "3/3" && d[5] == rolled_out)
            && v.phases() == phases([2, 3, 1, 1, 0])
    })
    .await;
    assert_eq!(
        view.marker.as_deref(),
        Some("same page"),
        "the page reloaded"
    );
    let view = shown(&mut browser, "the leader's applied index move on", |v| {
        v.store.iter().any(|r| {
            r[0] == leader_name
                && r[2] == "leader"
                && r[5].parse::<u64>().is_ok_and(|a| a > applied_before)
        })
    })
    .await;
    assert_eq!(
        view.marker.as_deref(),
        Some("same page"),
        "the page reloaded"
    );

    // Another user, through the fragment: what RBAC lets them see. `view` reads pods
    // and deployments, not nodes, and not the store.
    browser
        .eval(&format!("location.hash = 'token={viewer_token}'"))
        .await;
    let view = shown(&mut browser, "the viewer's view", |v| {
        v.store_error == forbidden
            && v.store.is_empty()
            && v.nodes_error
                .starts_with("nodes is forbidden: User \"system:serviceaccount:default:viewer\"")
            && v.phases() == phases([2, 3, 1, 1, 0])
    })
    .await;
    assert_eq!(
        view.marker.as_deref(),
        Some("same page"),
        "the page reloaded"
    );
    assert!(view.status.contains(forbidden), "{}", view.status);

    // Signed out, the page has nothing to show and says why; signed in again through
    // its form, the admin's view is back.
    browser
        .eval("document.getElementById('logout').click()")
        .await;
    let view = shown(&mut browser, "the signed-out page", |v| {
        v.status.starts_with("Not signed in")
            && v.nodes.is_empty()
            && v.deployments.is_empty()
            && v.store.is_empty()
            && v.phases() == phases([0, 0, 0, 0, 0])
    })
    .await;
    assert_eq!(
        view.store_error,
        "Unauthorized: sign in with a bearer token"
    );
    browser
        .eval(&format!(
            "document.getElementById('token').value = '{admin_token}'; \
             document.querySelector('#login button[type=submit]').click()"
        ))
        .await;
    let view = shown(&mut browser, "the admin's view after signing in", |v| {
        v.status == "Live" && v.store.len() == 3 && v.phases() == phases([2, 3, 1, 1, 0])
    })
    .await;
    assert_eq!(
        view.marker.as_deref(),
        Some("same page"),
        "the page reloaded"
    );

    // A follower dies: it is listed as unreachable, the others still answer.
    let follower = (leader + 1) % 3;
    let follower_name = store.members[follower].name.clone();
    store.kill9(follower);
    let view = shown(&mut browser, "the dead member unreachable", |v| {
        v.store
            .iter()
            .any(|r| r[0] == follower_name && r[2] == "unreachable")
            && v.store
                .iter()
                .any(|r| r[0] == leader_name && r[2] == "leader")
    })
    .await;
    assert_eq!(view.store.len(), 3, "{:#?}", view.store);
    assert_eq!(
        view.marker.as_deref(),
        Some("same page"),
        "the page reloaded"
    );
}
