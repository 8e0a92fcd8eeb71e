//! The service load-balancer controller (`--service-lb-pool`): LoadBalancer Services
//! get addresses from the pool, shown as EXTERNAL-IP, with upstream's events; a full
//! pool leaves a Service `<pending>` with a warning; addresses come back when a
//! Service is deleted or stops being a LoadBalancer; a restarted controller-manager
//! keeps every address already handed out.

use crate::support::{eventually, Apiserver, Component, Server};
use crate::SETTLE;

const NS: &str = "lb";
/// Two addresses, so the third Service finds the pool full.
const POOL: &str = "10.200.0.10-10.200.0.11";

fn controller_manager(api: &Apiserver) -> Component {
    Component::start(
        api,
        "controller-manager",
        &["--leader-elect=false", "--service-lb-pool", POOL],
    )
}

fn lb_service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  type: LoadBalancer\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    )
}

/// The EXTERNAL-IP column of `kubectl get svc <name>`.
fn external_ip(api: &Apiserver, name: &str) -> String {
    let out = api.kubectl(&["get", "svc", name, "-n", NS, "--no-headers"]);
    out.stdout
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string()
}

/// `reason: message` of the events about a Service, oldest first.
fn events(api: &Apiserver, name: &str) -> Vec<String> {
    let sel = format!("involvedObject.name={name}");
    let out = api.kubectl(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        &sel,
        "-o",
        r#"jsonpath={range .items[*]}{.type} {.reason}: {.message}{"\n"}{end}"#,
    ]);
    out.stdout.lines().map(str::to_string).collect()
}

async fn wait_ip(api: &Apiserver, name: &str, want: &str) {
    eventually(&format!("{name} at {want}"), SETTLE, || {
        let got = external_ip(api, name);
        let want = want.to_string();
        async move { (got == want).then_some(()) }
    })
    .await;
}

/// Waits for a warning that the pool is full, for `name`, beyond the first `seen`.
async fn wait_exhausted(api: &Apiserver, name: &str, seen: usize) -> usize {
    eventually(&format!("{name} told the pool is full"), SETTLE, || {
        let warnings: Vec<String> = events(api, name)
            .into_iter()
            .filter(|e| e.starts_with("Warning SyncLoadBalancerFailed: Error syncing load balancer: failed to ensure load balancer: no available IP address"))
            .collect();
        async move { (warnings.len() > seen).then_some(warnings.len()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn load_balancers_get_pool_addresses_until_it_runs_out_and_keep_them_across_restarts() {
    let store = Server::start().await;
    let api = Apiserver::start(&store.endpoint).await;
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
        )),
    )
    .out();
    let mut cm = controller_manager(&api);

    api.kubectl_stdin(&["apply", "-f", "-"], Some(&lb_service("a")))
        .out();
    wait_ip(&api, "a", "10.200.0.10").await;
    let json = api
        .kubectl(&["get", "svc", "a", "-n", NS, "-o", "json"])
        .json();
    assert_eq!(
        json["status"]["loadBalancer"]["ingress"],
        serde_json::json!([{"ip": "10.200.0.10", "ipMode": "VIP"}])
    );
    eventually("a's events", SETTLE, || {
        let ev = events(&api, "a");
        let ok = ev.contains(&"Normal EnsuringLoadBalancer: Ensuring load balancer".to_string())
            && ev.contains(&"Normal EnsuredLoadBalancer: Ensured load balancer".to_string());
        async move { ok.then_some(()) }
    })
    .await;
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&lb_service("b")))
        .out();
    wait_ip(&api, "b", "10.200.0.11").await;

    // The pool is full: c waits, and is told why.
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&lb_service("c")))
        .out();
    wait_exhausted(&api, "c", 0).await;
    assert_eq!(external_ip(&api, "c"), "<pending>");

    // A new controller-manager rebuilds who holds what from the statuses: d, new,
    // finds the pool full too (the new one has looked at d once it says so).
    cm.kill9();
    drop(cm);
    let cm = controller_manager(&api);
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&lb_service("d")))
        .out();
    wait_exhausted(&api, "d", 0).await;
    assert_eq!(external_ip(&api, "a"), "10.200.0.10");
    assert_eq!(external_ip(&api, "b"), "10.200.0.11");
    assert_eq!(external_ip(&api, "d"), "<pending>");

    // a deleted: its address goes to one of the waiting two.
    api.kubectl(&["delete", "svc", "a", "-n", NS]).out();
    let (winner, waiting) = eventually("a's address handed on", SETTLE, || {
        let (c, d) = (external_ip(&api, "c"), external_ip(&api, "d"));
        let r = match (c.as_str(), d.as_str()) {
            ("10.200.0.10", "<pending>") => Some(("c", "d")),
            ("<pending>", "10.200.0.10") => Some(("d", "c")),
            _ => None,
        };
        async move { r }
    })
    .await;

    // b stops being a LoadBalancer: its status is cleared and its address handed on.
    api.kubectl(&[
        "patch",
        "svc",
        "b",
        "-n",
        NS,
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])
    .out();
    wait_ip(&api, "b", "<none>").await;
    wait_ip(&api, waiting, "10.200.0.11").await;
    assert_eq!(external_ip(&api, winner), "10.200.0.10");
    drop(cm);
}
