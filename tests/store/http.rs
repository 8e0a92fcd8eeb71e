//! The plain-HTTP endpoints on the client URL: `/health`, `/version` and Prometheus
//! `/metrics` under etcd's metric names, as monitoring set up for etcd expects them, and
//! the JSON gateway (`POST /v3/...`) as `curl` users of etcd call it.

use serde_json::Value;

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

/// `curl -X POST <endpoint>/v3/<method>` with a JSON body (and a token): the HTTP code
/// and the parsed answer.
fn gateway(s: &Server, method: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-d",
        body,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
        .arg(format!("{}/v3/{method}", s.endpoint))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("a status line");
    let code = code.trim().parse().expect("an HTTP code");
    (
        code,
        serde_json::from_str(json).unwrap_or(Value::String(json.to_string())),
    )
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn the_json_gateway_serves_the_v3_api_as_etcds_does() {
    let s = Server::start().await;
    // Writes and reads: etcd's JSON (64-bit integers as strings, bytes as base64).
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar"));
    let (code, r) = gateway(&s, "kv/put", &put, None);
    assert_eq!(code, 200, "{r}");
    let rev: i64 = r["header"]["revision"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the revision, as a string");
    let (_, r) = gateway(
        &s,
        "kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64("foo")),
        None,
    );
    assert_eq!(r["count"], "1", "{r}");
    assert_eq!(r["kvs"][0]["value"], b64("bar"), "{r}");
    assert_eq!(r["kvs"][0]["mod_revision"], rev.to_string(), "{r}");
    assert_eq!(
        s.etcdctl(&["get", "foo", "--print-value-only"]).out(),
        "bar\n"
    );
    let txn = format!(
        r#"{{"compare":[{{"key":"{k}","result":"EQUAL","target":"VALUE","value":"{v}"}}],
            "success":[{{"request_put":{{"key":"{k}","value":"{n}"}}}}]}}"#,
        k = b64("foo"),
        v = b64("bar"),
        n = b64("baz")
    );
    let (_, r) = gateway(&s, "kv/txn", &txn, None);
    assert_eq!(r["succeeded"], true, "{r}");
    assert_eq!(
        s.etcdctl(&["get", "foo", "--print-value-only"]).out(),
        "baz\n"
    );

    // Leases, and etcd's errors with grpc-gateway's codes.
    let (_, r) = gateway(&s, "lease/grant", r#"{"TTL":30}"#, None);
    let id = r["ID"].as_str().expect("a lease ID").to_string();
    assert_eq!(r["TTL"], "30", "{r}");
    let (_, r) = gateway(&s, "lease/timetolive", &format!(r#"{{"ID":{id}}}"#), None);
    assert_eq!(r["grantedTTL"], "30", "{r}");
    let (code, _) = gateway(&s, "kv/lease/revoke", &format!(r#"{{"ID":{id}}}"#), None);
    assert_eq!(code, 200);
    let (code, r) = gateway(&s, "lease/revoke", &format!(r#"{{"ID":{id}}}"#), None);
    assert_eq!(code, 404, "{r}");
    assert_eq!(r["error"], "etcdserver: requested lease not found", "{r}");
    assert_eq!(r["code"], 5, "{r}");
    let (code, r) = gateway(&s, "kv/compaction", r#"{"revision":1000}"#, None);
    assert_eq!(code, 400, "{r}");
    assert_eq!(
        r["message"],
        "etcdserver: mvcc: required revision is a future revision"
    );
    let (code, r) = gateway(&s, "kv/range", r#"{"key":5}"#, None);
    assert_eq!((code, &r["code"]), (400, &Value::from(3)), "{r}");
    let (code, _) = gateway(&s, "kv/nothing", "{}", None);
    assert_eq!(code, 404);
    let (_, r) = gateway(&s, "cluster/member/list", "{}", None);
    assert_eq!(r["members"].as_array().map(Vec::len), Some(1), "{r}");

    // A watch streams `{"result":...}` lines: created, then the events.
    let mut watch = std::process::Command::new("curl")
        .args(["-s", "-N", "-X", "POST", "-d"])
        .arg(format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64("w")))
        .arg(format!("{}/v3/watch", s.endpoint))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    let stdout = watch.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait = std::time::Duration::from_secs(20);
    let first: Value =
        serde_json::from_str(&rx.recv_timeout(wait).expect("created")).expect("JSON");
    assert_eq!(first["result"]["created"], true, "{first}");
    s.etcdctl(&["put", "w", "1"]).out();
    let event: Value =
        serde_json::from_str(&rx.recv_timeout(wait).expect("an event")).expect("JSON");
    assert_eq!(
        event["result"]["events"][0]["kv"]["value"],
        b64("1"),
        "{event}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // With auth on, the token from `auth/authenticate` goes in `Authorization`.
    s.etcdctl(&["user", "add", "root:pw"]).out();
    s.etcdctl(&["auth", "enable"]).out();
    let (_, r) = gateway(
        &s,
        "auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        None,
    );
    let token = r["token"].as_str().expect("a token").to_string();
    let range = format!(r#"{{"key":"{}"}}"#, b64("foo"));
    let (code, r) = gateway(&s, "kv/range", &range, Some(&token));
    assert_eq!(
        (code, &r["kvs"][0]["value"]),
        (200, &Value::from(b64("baz"))),
        "{r}"
    );
    let (code, r) = gateway(&s, "kv/range", &range, None);
    assert_ne!(code, 200, "{r}");
    assert_eq!(r["error"], "etcdserver: user name is empty", "{r}");
}
