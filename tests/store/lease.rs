//! Leases through the real `etcdctl` and the etcd client: grant/revoke/time-to-live/list
//! output line for line as etcd prints it, keep-alives, client-chosen IDs, expiry
//! deleting attached keys (and watchers seeing the deletes), and leases surviving a
//! restart. Every expectation was observed on etcd 3.4.23.

use std::time::Duration;

use etcd_client::{EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};

use crate::support::Server;

/// The hex lease ID from etcdctl's "lease <id> granted with TTL(<n>s)".
#[track_caller]
fn granted(out: &str, ttl: i64) -> String {
    let id = out
        .strip_prefix("lease ")
        .and_then(|r| r.strip_suffix(&format!(" granted with TTL({ttl}s)\n")))
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"));
    assert_eq!(
        id.len(),
        16,
        "etcdctl prints the ID as 16 hex digits: {out:?}"
    );
    assert!(
        i64::from_str_radix(id, 16).is_ok_and(|v| v > 0),
        "positive ID: {out:?}"
    );
    id.to_string()
}

fn revision(s: &Server) -> i64 {
    s.etcdctl(&["get", "x", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .expect("revision")
}

#[tokio::test]
async fn grant_attach_inspect_revoke_like_etcd() {
    let s = Server::start().await;
    let short = granted(s.etcdctl(&["lease", "grant", "10"]).out(), 10);
    let long = granted(s.etcdctl(&["lease", "grant", "100"]).out(), 100);
    // TTLs below the minimum (1.5 × election timeout, rounded up) are raised to it.
    let tiny = granted(s.etcdctl(&["lease", "grant", "1"]).out(), 2);
    s.etcdctl(&["lease", "revoke", &tiny]).out();

    assert_eq!(
        s.etcdctl(&["put", "--lease", &long, "a", "1"]).out(),
        "OK\n"
    );
    assert_eq!(
        s.etcdctl(&["put", "--lease", &long, "b", "2"]).out(),
        "OK\n"
    );
    assert_eq!(s.etcdctl(&["put", "c", "3"]).out(), "OK\n");

    let ttl = s.etcdctl(&["lease", "timetolive", &long]).out().to_string();
    let keys = s
        .etcdctl(&["lease", "timetolive", "--keys", &long])
        .out()
        .to_string();
    // Remaining time is truncated to whole seconds: 99 right after a 100 s grant.
    let ok = |out: &str, suffix: &str| {
        (95..=100).any(|r| {
            out == format!("lease {long} granted with TTL(100s), remaining({r}s){suffix}\n")
        })
    };
    assert!(ok(&ttl, ""), "{ttl:?}");
    // etcd keeps a lease's keys in a Go map: any order.
    assert!(
        ok(&keys, ", attached keys([a b])") || ok(&keys, ", attached keys([b a])"),
        "{keys:?}"
    );
    let j = s
        .etcdctl(&["lease", "timetolive", "--keys", &long, "-w", "json"])
        .json();
    assert_eq!(j["granted-ttl"], 100);
    let mut keys: Vec<&str> = j["keys"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(keys, vec!["YQ==", "Yg=="]);

    // Soonest expiry first.
    assert_eq!(
        s.etcdctl(&["lease", "list"]).out(),
        format!("found 2 leases\n{short}\n{long}\n")
    );
    assert_eq!(
        s.etcdctl(&["lease", "keep-alive", "--once", &short]).out(),
        format!("lease {short} keepalived with TTL(10)\n")
    );

    let before = revision(&s);
    assert_eq!(
        s.etcdctl(&["lease", "revoke", &long]).out(),
        format!("lease {long} revoked\n")
    );
    assert_eq!(s.etcdctl(&["get", "", "--prefix"]).out(), "c\n3\n");
    assert_eq!(
        revision(&s),
        before + 1,
        "both attached keys go in one revision"
    );
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", &long]).out(),
        format!("lease {long} already expired\n")
    );
    assert_eq!(
        s.etcdctl(&["lease", "list"]).out(),
        format!("found 1 leases\n{short}\n")
    );

    assert!(s
        .etcdctl(&["lease", "revoke", &long])
        .err()
        .contains("etcdserver: requested lease not found"));
    assert!(s
        .etcdctl(&["lease", "keep-alive", "--once", &long])
        .err()
        .contains("etcdserver: requested lease not found"));
    assert!(s
        .etcdctl(&["put", "--lease", &long, "d", "4"])
        .err()
        .contains("etcdserver: requested lease not found"));
    assert!(s
        .etcdctl(&["lease", "grant", "9000000001"])
        .err()
        .contains("failed to grant lease (etcdserver: too large lease TTL)"));

    let j = s
        .etcdctl(&["lease", "timetolive", "1234", "-w", "json"])
        .json();
    assert_eq!(
        (
            j["id"].as_i64(),
            j["ttl"].as_i64(),
            j["granted-ttl"].as_i64()
        ),
        (Some(0x1234), Some(-1), Some(0))
    );
}

#[tokio::test]
async fn client_chosen_ids_and_keepalive_stream() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let g = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(42)))
        .await
        .expect("grant");
    assert_eq!((g.id(), g.ttl()), (42, 30));
    let e = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(42)))
        .await
        .expect_err("dup");
    assert!(
        e.to_string().contains("etcdserver: lease already exists"),
        "{e}"
    );
    let g = c.lease_grant(30, None).await.expect("grant");
    assert!(g.id() > 0, "the server picks a positive ID");

    // The client consumes the first reply itself (and fails on TTL 0).
    let (mut keeper, mut stream) = c.lease_keep_alive(42).await.expect("keepalive");
    keeper.keep_alive().await.expect("send");
    let r = stream.message().await.expect("reply").expect("open");
    assert_eq!((r.id(), r.ttl()), (42, 30));
    c.lease_revoke(42).await.expect("revoke");
    keeper.keep_alive().await.expect("send");
    let r = stream.message().await.expect("reply").expect("open");
    assert_eq!(
        (r.id(), r.ttl()),
        (42, 0),
        "a gone lease answers TTL 0, not an error"
    );

    let t = c
        .lease_time_to_live(42, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!((t.id(), t.ttl()), (42, -1));
    let ids: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(ids, vec![g.id()]);
}

#[tokio::test]
async fn expiry_deletes_attached_keys_and_watchers_see_it() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let l = c.lease_grant(2, None).await.expect("grant").id();
    c.put("eph/a", "1", Some(PutOptions::new().with_lease(l)))
        .await
        .expect("put");
    c.put("eph/b", "2", Some(PutOptions::new().with_lease(l)))
        .await
        .expect("put");
    c.put("keep", "3", None).await.expect("put");
    let mut w = c
        .watch("eph/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = w.message().await.expect("watch ok").expect("open");
    assert!(created.created());

    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(15), w.message())
            .await
            .expect("the lease expires within its TTL plus the revoke tick")
            .expect("watch ok")
            .expect("open");
        for e in r.events() {
            assert_eq!(e.event_type(), EventType::Delete);
            let kv = e.kv().expect("kv");
            deleted.push((kv.key_str().expect("utf8").to_string(), kv.mod_revision()));
        }
    }
    assert_eq!(
        deleted[0].1, deleted[1].1,
        "one revision deletes every attached key"
    );
    let keys: Vec<&str> = deleted.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["eph/a", "eph/b"]);
    assert_eq!(
        s.etcdctl(&["get", "", "--prefix", "--keys-only"]).out(),
        "keep\n\n"
    );
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", &format!("{l:x}")]).out(),
        format!("lease {l:016x} already expired\n")
    );
}

#[tokio::test]
async fn leases_and_attachments_survive_restart() {
    let mut s = Server::start().await;
    let l = granted(s.etcdctl(&["lease", "grant", "100"]).out(), 100);
    s.etcdctl(&["put", "--lease", &l, "k", "v"]).out();
    s.restart().await;
    let out = s
        .etcdctl(&["lease", "timetolive", "--keys", &l])
        .out()
        .to_string();
    assert!(
        out.starts_with(&format!("lease {l} granted with TTL(100s), remaining("))
            && out.ends_with(", attached keys([k])\n"),
        "{out:?}"
    );
    s.etcdctl(&["lease", "revoke", &l]).out();
    assert_eq!(s.etcdctl(&["get", "k"]).out(), "");
    // The revoke is durable too.
    s.restart().await;
    assert_eq!(s.etcdctl(&["lease", "list"]).out(), "found 0 leases\n");
}
