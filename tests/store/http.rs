//! The plain-HTTP endpoints on the client URL: `/health`, `/version` and Prometheus
//! `/metrics` under etcd's metric names, as monitoring set up for etcd expects them.

use std::io::{Read, Write};

use crate::support::Server;

/// GETs `path` over HTTP/1.1 and returns (status code, body).
fn get(s: &Server, path: &str) -> (u16, String) {
    let addr = s.endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    conn.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    // Chunked bodies: keep only the chunk data (good enough for these small bodies).
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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
}
