//! Integration tests of a three-member `capstan store` cluster (Raft replication): real
//! processes started with etcd's clustering flags on free loopback ports. Every member
//! serves every request; a crashed leader is replaced and loses no acknowledged write;
//! a restarted member catches up. `CAPSTAN_TEST_SERVER=etcd` runs the same tests
//! against three real etcd members.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use support::{eventually, Cluster};

type R = anyhow::Result<()>;

const DEADLINE: Duration = Duration::from_secs(30);

/// The value of `key` on member `i`, read linearizably (`None`: the read failed, e.g.
/// no leader yet; `Some(None)`: no such key).
async fn get_on(c: &Cluster, i: usize, key: &str) -> Option<Option<String>> {
    let mut cl = Client::connect([c.members[i].endpoint.as_str()], None)
        .await
        .ok()?;
    let r = cl.get(key, None).await.ok()?;
    Some(
        r.kvs()
            .first()
            .map(|kv| kv.value_str().unwrap_or("").to_string()),
    )
}

/// Puts through member `i`, retrying until acknowledged (elections in progress answer
/// "no leader").
async fn put_on(c: &Cluster, i: usize, key: &str, value: &str) {
    eventually(
        &format!("put {key} through member {i}"),
        DEADLINE,
        || async {
            let mut cl = Client::connect([c.members[i].endpoint.as_str()], None)
                .await
                .ok()?;
            cl.put(key, value, None).await.ok().map(|_| ())
        },
    )
    .await
}

#[tokio::test]
async fn writes_through_any_member_are_linearizably_readable_on_every_member() -> R {
    let c = Cluster::start(3).await;
    for w in 0..3 {
        let key = format!("from/{w}");
        let mut cl = c.client(w).await;
        let resp = cl.put(key.as_str(), format!("v{w}"), None).await?;
        let h = resp.header().expect("header");
        assert_ne!(h.member_id(), 0);
        assert_ne!(h.cluster_id(), 0);
        assert_ne!(h.raft_term(), 0);
        // Linearizable: acknowledged before the read began, so every member sees it now.
        for r in 0..3 {
            let mut rc = c.client(r).await;
            let got = rc.get(key.as_str(), None).await?;
            let kv = got
                .kvs()
                .first()
                .expect("the write is visible on every member");
            assert_eq!(kv.value_str()?, format!("v{w}"), "member {r} reads {key}");
            assert_eq!(got.header().expect("header").cluster_id(), h.cluster_id());
        }
    }
    // A serializable read is local and, once replicated, sees the same data.
    for r in 0..3 {
        let v = eventually("serializable read to catch up", DEADLINE, || async {
            let mut rc = Client::connect([c.members[r].endpoint.as_str()], None)
                .await
                .ok()?;
            let got = rc
                .get("from/2", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            got.kvs().first().map(|kv| kv.value().to_vec())
        })
        .await;
        assert_eq!(v, b"v2");
    }
    Ok(())
}

#[tokio::test]
async fn endpoint_status_on_every_member_agrees_on_the_leader() -> R {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let eps = c.endpoints().join(",");
    let out = support::etcdctl_at(&eps, &["endpoint", "status", "-w", "json"], None);
    let json = out.json();
    let statuses = json.as_array().expect("an array of statuses");
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<u64> = statuses
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().expect("leader"))
        .collect();
    let ids: Vec<u64> = statuses
        .iter()
        .map(|s| {
            s["Status"]["header"]["member_id"]
                .as_u64()
                .expect("member id")
        })
        .collect();
    let terms: Vec<u64> = statuses
        .iter()
        .map(|s| s["Status"]["raftTerm"].as_u64().expect("term"))
        .collect();
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{leaders:?}");
    assert!(
        ids.contains(&leaders[0]),
        "the leader is a member: {ids:?} {leaders:?}"
    );
    assert!(terms.iter().all(|t| *t == terms[0] && *t > 0), "{terms:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3, "distinct member ids: {ids:?}");
    let (leader_id, _, _) = c.status(leader).await.expect("status");
    assert_eq!(leader_id, leaders[0]);
    Ok(())
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_without_losing_acknowledged_writes() -> R {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut acked = Vec::new();
    for i in 0..10 {
        // Through the leader and a follower alike.
        let through = if i % 2 == 0 { leader } else { follower };
        let (k, v) = (format!("acked/{i:02}"), format!("{i}"));
        put_on(&c, through, &k, &v).await;
        acked.push((k, v));
    }
    let (_, _, old_term) = c.status(leader).await.expect("status");

    c.kill9(leader);
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let (_, _, new_term) = c.status(new_leader).await.expect("status");
    assert!(new_term > old_term, "a new term: {old_term} -> {new_term}");
    for s in [0, 1, 2].into_iter().filter(|s| *s != leader) {
        let (k, v) = (format!("acked/after-{s}"), format!("s{s}"));
        put_on(&c, s, &k, &v).await;
        acked.push((k, v));
    }
    for s in [0, 1, 2].into_iter().filter(|s| *s != leader) {
        for (k, v) in &acked {
            let got = eventually("a read on a survivor", DEADLINE, || get_on(&c, s, k)).await;
            assert_eq!(got.as_deref(), Some(v.as_str()), "{k} on survivor {s}");
        }
    }

    // The crashed member comes back and catches up from the log.
    c.restart(leader).await;
    for (k, v) in &acked {
        let got = eventually("a read on the restarted member", DEADLINE, || {
            get_on(&c, leader, k)
        })
        .await;
        assert_eq!(
            got.as_deref(),
            Some(v.as_str()),
            "{k} on the restarted member"
        );
    }
    // And it still takes writes.
    put_on(&c, leader, "acked/restarted", "yes").await;
    for s in 0..3 {
        let got = eventually("the last write everywhere", DEADLINE, || {
            get_on(&c, s, "acked/restarted")
        })
        .await;
        assert_eq!(got.as_deref(), Some("yes"));
    }
    Ok(())
}

#[tokio::test]
async fn a_watch_on_a_follower_sees_writes_through_another_member_in_order() -> R {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let writer = (leader + 2) % 3; // the other follower
    let mut w = c.client(follower).await;
    let mut stream = w
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let created = tokio::time::timeout(DEADLINE, stream.message())
        .await?
        .expect("stream ok")
        .expect("stream open");
    assert!(created.created());
    let mut wc = c.client(writer).await;
    let mut revs = Vec::new();
    for i in 0..20 {
        let r = wc.put(format!("w/{i:02}"), format!("{i}"), None).await?;
        revs.push(r.header().expect("header").revision());
    }
    wc.delete("w/00", None).await?;
    let mut got = Vec::new();
    while got.len() < 21 {
        let resp = tokio::time::timeout(DEADLINE, stream.message())
            .await?
            .expect("stream ok")
            .expect("stream open");
        for e in resp.events() {
            let kv = e.kv().expect("kv");
            got.push((
                e.event_type(),
                kv.key_str()?.to_string(),
                kv.value_str()?.to_string(),
                kv.mod_revision(),
            ));
        }
    }
    for (i, (t, k, v, rev)) in got.iter().take(20).enumerate() {
        assert_eq!(*t, EventType::Put);
        assert_eq!(k, &format!("w/{i:02}"));
        assert_eq!(v, &format!("{i}"));
        assert_eq!(*rev, revs[i], "the revision the writer was told");
    }
    assert_eq!(got[20].0, EventType::Delete);
    assert_eq!(got[20].1, "w/00");
    Ok(())
}

/// `endpoint hashkv` on member `i` at the newest revision, without the endpoint.
fn hashkv(c: &Cluster, i: usize) -> String {
    c.etcdctl(i, &["endpoint", "hashkv"])
        .out()
        .replace(&c.members[i].endpoint, "")
}

#[tokio::test]
async fn every_member_holds_the_same_data_and_a_follower_snapshot_restores() -> R {
    let c = Cluster::start(3).await;
    for i in 0..30 {
        put_on(&c, i % 3, &format!("h/{i:02}"), &format!("v{i}")).await;
    }
    c.etcdctl(0, &["del", "h/00"]).out();
    c.etcdctl(1, &["compaction", "10"]).out();
    // Every member applied the same log: the same revision and the same KV hash
    // (a linearizable read first, so each member has caught up).
    let expected = {
        c.etcdctl(0, &["get", "h/01"]).out();
        hashkv(&c, 0)
    };
    for i in 1..3 {
        c.etcdctl(i, &["get", "h/01"]).out();
        assert_eq!(hashkv(&c, i), expected, "member {i}");
    }
    if support::against_etcd() {
        return Ok(()); // restoring is capstan's own command
    }
    // A snapshot taken from a follower restores into a fresh single member holding the
    // same data, which then takes writes at the next revision.
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("snap.db");
    let file_s = file.to_str().expect("utf8 path");
    c.etcdctl(follower, &["snapshot", "save", file_s]).out();
    let mut r = support::Server::start().await;
    r.kill9();
    std::fs::remove_dir_all(r.data_dir())?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["snapshot", "restore", file_s, "--data-dir"])
        .arg(r.data_dir())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.restart().await;
    assert_eq!(
        r.etcdctl(&["endpoint", "hashkv"])
            .out()
            .replace(&r.endpoint, ""),
        expected
    );
    let rev = |s: &support::Server| -> i64 {
        s.etcdctl(&["get", "x", "-w", "json"]).json()["header"]["revision"]
            .as_i64()
            .unwrap_or_default()
    };
    let before = rev(&r);
    assert_eq!(r.etcdctl(&["put", "after", "restore"]).out(), "OK\n");
    assert_eq!(rev(&r), before + 1);
    assert_eq!(r.etcdctl(&["get", "h/01"]).out(), "h/01\nv1\n");
    Ok(())
}
