//! The plain-HTTP endpoints on the client URL: `/health`, `/version` and Prometheus
//! `/metrics` under etcd's metric names, as monitoring set up for etcd expects them.

use crate::support::{metric, Server};

/// GETs `path` from the server's client URL: (status code, body).
fn get(s: &Server, path: &str) -> (u16, String) {
    crate::support::http_get(&s.endpoint, path).expect("an HTTP response")
}

#[tokio::test]
async fn health_version_and_metrics() {
    let s = Server::start().await;
    let (code, body) = get(&s, "/health");
    assert_eq!(code, 200);
    let j: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(j["health"], "true");

    let (code, body) = get(&s, "/version");
    assert_eq!(code, 200);
    let j: serde_json::Value = serde_json::from_str(&body).expect("version JSON");
    assert!(
        j["etcdserver"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{j}"
    );

    for i in 0..3 {
        s.etcdctl(&["put", &format!("m{i}"), "v"]).out();
    }
    let (code, text) = get(&s, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "etcd_server_has_leader"), Some(1.0));
    assert_eq!(metric(&text, "etcd_server_is_leader"), Some(1.0));
    assert_eq!(
        metric(&text, "etcd_debugging_mvcc_current_revision"),
        Some(4.0)
    );
    assert_eq!(metric(&text, "etcd_debugging_mvcc_keys_total"), Some(3.0));
    assert!(
        metric(&text, "etcd_disk_backend_commit_duration_seconds_count").is_some_and(|n| n >= 3.0)
    );
    assert!(metric(&text, "etcd_mvcc_db_total_size_in_bytes").is_some_and(|n| n > 0.0));
    // The process metrics etcd exports, which `etcdctl check datascale` reads before
    // and after its workload.
    assert!(metric(&text, "process_resident_memory_bytes").is_some_and(|n| n > 0.0));
    assert!(metric(&text, "process_open_fds").is_some_and(|n| n > 0.0));
    let out = s.etcdctl(&["check", "datascale", "--load=s"]);
    assert!(
        out.stdout.contains("PASS: Approximate system memory used"),
        "{} / {}",
        out.stdout,
        out.stderr
    );
}
