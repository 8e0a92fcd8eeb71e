//! Integration tests of a three-member `capstan store` cluster (Raft replication): real
//! processes started with etcd's clustering flags on free loopback ports. Every member
//! serves every request; a crashed leader is replaced and loses no acknowledged write;
//! a restarted member catches up. `CAPSTAN_TEST_SERVER=etcd` runs the same tests
//! against three real etcd members.

#[path = "../support/mod.rs"]
mod support;

mod tls;

use std::time::{Duration, Instant};

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

/// A frozen leader (SIGSTOP) never answers what a follower forwarded to it. Once the
/// follower knows the new leader, a pending write fails at once with etcd's error for
/// an unknown outcome after a leader failure, and a pending linearizable read is served
/// through the new leader. etcd gives the write the same error only after about 6 s,
/// and fails the read with "leader changed", so only the timing and the read's success
/// are capstan's own.
#[tokio::test]
async fn a_follower_does_not_wait_out_a_paused_leader() -> R {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    put_on(&c, follower, "paused/before", "1").await;
    let mut cl = c.client(follower).await;
    let mut reader = c.client(follower).await;

    c.signal(leader, "-STOP");
    let began = Instant::now();
    let (put, get) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), cl.put("paused/during", "2", None)),
        tokio::time::timeout(Duration::from_secs(30), reader.get("paused/before", None)),
    );
    let took = began.elapsed();
    c.signal(leader, "-CONT");
    eprintln!(
        "paused leader: put {put:?}, get {:?} after {took:?}",
        get.as_ref().map(|g| g.as_ref().map(|_| ()))
    );

    let put = put.expect("the put is answered");
    if let Err(e) = &put {
        // Whatever the answer, it must not claim the write was not done.
        let msg = e.to_string();
        assert!(
            msg.contains("request timed out") || msg.contains("no leader"),
            "a write to a paused leader: {msg}"
        );
    }
    let get = get.expect("the read is answered");
    if !support::against_etcd() {
        let got = get.expect("the read is served through the new leader");
        assert_eq!(
            got.kvs().first().map(|kv| kv.value().to_vec()),
            Some(b"1".to_vec())
        );
        // Detection takes up to one election timeout (1 s) plus the election.
        assert!(
            took < Duration::from_secs(5),
            "the follower waited {took:?}"
        );
    }
    // The cluster goes on taking writes everywhere, the old leader included.
    for s in 0..3 {
        put_on(&c, s, &format!("paused/after-{s}"), "3").await;
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
    // Every member answered the ten puts it took once it had applied them itself, and
    // its metrics say how long that took past the leader's answer.
    for i in 0..3 {
        let n = metric_on(&c, i, "capstan_raft_proposal_apply_lag_seconds_count");
        assert!(n.unwrap_or_default() >= 10.0, "member {i}: {n:?}");
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

/// Member `i`'s ID as `member list` on member `on` reports it.
fn id_of(c: &Cluster, on: usize, i: usize) -> u64 {
    c.member_list(on)
        .iter()
        .find(|m| m["peerURLs"][0].as_str() == Some(c.members[i].peer.as_str()))
        .and_then(|m| m["ID"].as_u64())
        .expect("member listed")
}

/// Runs `etcdctl member add ...` on member `on` until it succeeds; returns its output.
/// etcd refuses membership changes until every member has been connected for five
/// seconds ("unhealthy cluster"), so a freshly started cluster needs a retry there.
async fn member_add(c: &Cluster, on: usize, args: &[&str]) -> String {
    eventually("member add to be accepted", DEADLINE, || async {
        let out = c.etcdctl(on, args);
        if out.ok {
            return Some(out.stdout);
        }
        assert!(
            out.stderr.contains("etcdserver: unhealthy cluster"),
            "{}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        None
    })
    .await
}

/// The `ETCD_INITIAL_CLUSTER` value `member add` printed.
fn printed_initial_cluster(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("ETCD_INITIAL_CLUSTER line")
        .to_string()
}

/// Waits until every running member lists `n` members, each with a name and client
/// URLs (published by the member once it runs), and returns the list.
async fn settled_member_list(c: &Cluster, n: usize) -> Vec<serde_json::Value> {
    eventually(
        "every member to list the same started members",
        DEADLINE,
        || async {
            let mut first: Option<Vec<serde_json::Value>> = None;
            for i in 0..c.members.len() {
                if !c.is_running(i) {
                    continue;
                }
                let out = c.etcdctl(i, &["member", "list", "-w", "json"]);
                if !out.ok {
                    return None;
                }
                let list = c.member_list(i);
                let started = list.iter().all(|m| {
                    m["name"].as_str().is_some_and(|s| !s.is_empty())
                        && m["clientURLs"].as_array().is_some_and(|u| !u.is_empty())
                });
                if list.len() != n || !started {
                    return None;
                }
                match &first {
                    None => first = Some(list),
                    Some(f) if *f == list => {}
                    Some(_) => return None,
                }
            }
            first
        },
    )
    .await
}

#[tokio::test]
async fn every_member_lists_the_same_members_and_cluster_commands_reach_all() -> R {
    let c = Cluster::start(3).await;
    let list = settled_member_list(&c, 3).await;
    for m in &list {
        let name = m["name"].as_str().expect("name");
        let i: usize = name[1..].parse()?;
        assert_eq!(m["peerURLs"], serde_json::json!([c.members[i].peer]), "{m}");
        assert_eq!(
            m["clientURLs"],
            serde_json::json!([c.members[i].endpoint]),
            "{m}"
        );
        assert!(m.get("isLearner").is_none_or(|l| l == false), "{m}");
    }
    // The IDs are the ones each member puts in its response headers.
    for i in 0..3 {
        let (id, _, _) = c.status(i).await.expect("status");
        assert_eq!(id_of(&c, i, i), id, "member {i}");
    }
    // etcdctl finds every member through the member list.
    let hashes = c
        .etcdctl(0, &["endpoint", "hashkv", "--cluster", "-w", "json"])
        .json();
    let hashes = hashes.as_array().expect("an array");
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    let h0 = &hashes[0]["HashKV"]["hash"];
    assert!(
        hashes.iter().all(|h| &h["HashKV"]["hash"] == h0),
        "{hashes:?}"
    );
    let statuses = c
        .etcdctl(1, &["endpoint", "status", "--cluster", "-w", "json"])
        .json();
    let mut eps: Vec<String> = statuses
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s["Endpoint"].as_str().unwrap_or_default().to_string())
        .collect();
    eps.sort();
    let mut want = c.endpoints();
    want.sort();
    assert_eq!(eps, want);
    Ok(())
}

#[tokio::test]
async fn a_learner_catches_up_is_promoted_and_serves_linearizable_reads() -> R {
    let mut c = Cluster::start(3).await;
    for i in 0..20 {
        put_on(&c, i % 3, &format!("l/{i:02}"), &format!("v{i}")).await;
    }
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let n = c.new_member();
    let name = c.members[n].name.clone();
    let peer = c.members[n].peer.clone();
    // Through a follower: the change is carried out by the leader.
    let peer_flag = format!("--peer-urls={peer}");
    let out = member_add(
        &c,
        follower,
        &["member", "add", &name, &peer_flag, "--learner"],
    )
    .await;
    assert!(out.starts_with("Member "), "{out}");
    assert!(out.contains(&format!("ETCD_NAME=\"{name}\"")), "{out}");
    assert!(
        out.contains(&format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"")),
        "{out}"
    );
    assert!(
        out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let initial = printed_initial_cluster(&out);
    let mut parts: Vec<&str> = initial.split(',').collect();
    parts.sort();
    let mut want: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer))
        .collect();
    want.sort();
    assert_eq!(parts, want, "{out}");
    // Until it starts, the new member has no name and no client URLs.
    let listed = c.member_list(leader);
    let new = listed
        .iter()
        .find(|m| m["peerURLs"][0].as_str() == Some(peer.as_str()))
        .expect("the learner is listed");
    assert_eq!(new["isLearner"], true, "{new}");
    assert!(new.get("name").is_none_or(|n| n == ""), "{new}");
    assert!(new.get("clientURLs").is_none(), "{new}");
    let id = new["ID"].as_u64().expect("id");
    // A peer URL another member has is refused.
    let taken = format!("--peer-urls={}", c.members[0].peer);
    let err = c.etcdctl(leader, &["member", "add", "x", &taken]);
    assert!(
        err.err().contains("etcdserver: Peer URLs already exists"),
        "{}",
        err.stderr
    );

    c.start_member(n, &initial).await;
    // A learner serves serializable reads and Status only.
    let err = c.etcdctl(n, &["get", "l/00"]);
    assert!(
        err.err()
            .contains("etcdserver: rpc not supported for learner"),
        "{}",
        err.stderr
    );
    let err = c.etcdctl(n, &["put", "l/x", "y"]);
    assert!(
        err.err()
            .contains("etcdserver: rpc not supported for learner"),
        "{}",
        err.stderr
    );
    // So does the JSON gateway.
    let out = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", "-d", r#"{"key":"bC94","value":"eQ=="}"#])
        .arg(format!("{}/v3/kv/put", c.members[n].endpoint))
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(r#""error":"etcdserver: rpc not supported for learner""#),
        "{body}"
    );
    let got = eventually("the learner to catch up", DEADLINE, || async {
        let out = c.etcdctl(n, &["get", "l/19", "--consistency=s"]);
        (out.ok && out.stdout == "l/19\nv19\n").then_some(())
    })
    .await;
    assert_eq!(got, ());
    c.etcdctl(n, &["endpoint", "status"]).out();

    // Promote once in sync (etcd refuses a learner that lags).
    eventually("the learner to be promoted", DEADLINE, || async {
        let out = c.etcdctl(leader, &["member", "promote", &format!("{id:x}")]);
        if out.ok {
            assert!(out.stdout.contains("promoted in cluster"), "{}", out.stdout);
            return Some(());
        }
        assert!(
            out.stderr
                .contains("can only promote a learner member which is in sync with leader"),
            "{}",
            out.stderr
        );
        None
    })
    .await;
    let err = c.etcdctl(leader, &["member", "promote", &format!("{id:x}")]);
    assert!(
        err.err()
            .contains("etcdserver: can only promote a learner member"),
        "{}",
        err.stderr
    );
    // Now a voter: linearizable reads of everything, and writes.
    for i in 0..20 {
        let k = format!("l/{i:02}");
        let got = eventually("a read on the promoted member", DEADLINE, || {
            get_on(&c, n, &k)
        })
        .await;
        assert_eq!(got, Some(format!("v{i}")));
    }
    put_on(&c, n, "l/from-new", "yes").await;
    assert_eq!(get_on(&c, 0, "l/from-new").await, Some(Some("yes".into())));
    let list = settled_member_list(&c, 4).await;
    assert!(
        list.iter()
            .all(|m| m.get("isLearner").is_none_or(|l| l == false)),
        "{list:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_voter_is_added_and_a_removed_member_stops() -> R {
    let mut c = Cluster::start(3).await;
    for i in 0..10 {
        put_on(&c, i % 3, &format!("r/{i:02}"), &format!("v{i}")).await;
    }
    let leader = c.leader().await;
    let n = c.new_member();
    let (name, peer) = (c.members[n].name.clone(), c.members[n].peer.clone());
    let peer_flag = format!("--peer-urls={peer}");
    let out = member_add(&c, leader, &["member", "add", &name, &peer_flag]).await;
    let initial = printed_initial_cluster(&out);
    c.start_member(n, &initial).await;
    for i in 0..10 {
        let k = format!("r/{i:02}");
        let got = eventually("a read on the new voter", DEADLINE, || get_on(&c, n, &k)).await;
        assert_eq!(got, Some(format!("v{i}")));
    }
    settled_member_list(&c, 4).await;

    // Remove a follower other than the new member.
    let gone = (0..3).find(|i| *i != leader).expect("a follower");
    let gone_id = id_of(&c, leader, gone);
    let out = c.etcdctl(leader, &["member", "remove", &format!("{gone_id:x}")]);
    assert!(out.out().contains("removed from cluster"), "{}", out.stdout);
    eventually("the removed member to exit", DEADLINE, || {
        let status = c.exit_status(gone);
        async move { status.map(|_| ()) }
    })
    .await;
    let err = c.etcdctl(leader, &["member", "remove", &format!("{gone_id:x}")]);
    assert!(
        err.err().contains("etcdserver: member not found"),
        "{}",
        err.stderr
    );
    // The rest list three members and keep taking writes through every one of them.
    let list = settled_member_list(&c, 3).await;
    assert!(
        list.iter().all(|m| m["ID"].as_u64() != Some(gone_id)),
        "{list:?}"
    );
    for i in (0..4).filter(|i| *i != gone) {
        put_on(&c, i, &format!("r/after-{i}"), "x").await;
        for j in (0..4).filter(|j| *j != gone) {
            let k = format!("r/after-{i}");
            let got = eventually("the write everywhere", DEADLINE, || get_on(&c, j, &k)).await;
            assert_eq!(got.as_deref(), Some("x"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn move_leader_hands_leadership_to_a_follower() -> R {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let target = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let target_id = id_of(&c, leader, target);
    let leader_id = id_of(&c, leader, leader);
    // etcdctl itself looks for the leader among its endpoints; a direct call to a
    // follower is refused.
    let err = c.etcdctl(other, &["move-leader", &format!("{target_id:x}")]);
    assert!(
        err.err().contains("no leader endpoint given"),
        "{}",
        err.stderr
    );
    let mut oc = c.client(other).await;
    match oc.move_leader(target_id).await {
        Err(etcd_client::Error::GRpcStatus(st)) => {
            assert_eq!(st.message(), "etcdserver: not leader");
            assert_eq!(format!("{:?}", st.code()), "FailedPrecondition");
        }
        other => panic!("move-leader on a follower: {other:?}"),
    }
    let err = c.etcdctl(leader, &["move-leader", "1234"]);
    assert!(
        err.err().contains("etcdserver: bad leader transferee"),
        "{}",
        err.stderr
    );
    let out = c.etcdctl(leader, &["move-leader", &format!("{target_id:x}")]);
    assert_eq!(
        out.out(),
        format!("Leadership transferred from {leader_id:x} to {target_id:x}\n")
    );
    assert_eq!(c.leader().await, target);
    put_on(&c, leader, "moved", "yes").await;
    assert_eq!(get_on(&c, target, "moved").await, Some(Some("yes".into())));
    Ok(())
}

/// `(ttl, granted_ttl)` of a lease as member `i` reports it.
async fn lease_ttl(c: &Cluster, i: usize, id: i64) -> Option<(i64, i64)> {
    let mut cl = Client::connect([c.members[i].endpoint.as_str()], None)
        .await
        .ok()?;
    let r = cl.lease_time_to_live(id, None).await.ok()?;
    Some((r.ttl(), r.granted_ttl()))
}

#[tokio::test]
async fn a_lease_kept_alive_through_a_follower_survives() -> R {
    let c = Cluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut cl = c.client(follower).await;
    let id = cl.lease_grant(3, None).await?.id();
    cl.put(
        "kept",
        "alive",
        Some(etcd_client::PutOptions::new().with_lease(id)),
    )
    .await?;
    let (mut keeper, mut responses) = cl.lease_keep_alive(id).await?;
    // Three times the TTL: only renewals by the leader's clock keep it. An election
    // (the test cluster's 500 ms election timeout can lapse on a starved machine) ends
    // the stream with "no leader", as etcd does; like etcd's clients, open it again.
    let mut reopened = 0;
    let mut renewed = 0;
    while renewed < 9 {
        let answer = match keeper.keep_alive().await {
            Ok(()) => tokio::time::timeout(DEADLINE, responses.message()).await?,
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(r)) => {
                assert_eq!(r.ttl(), 3);
                renewed += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(None) | Err(_) if reopened < 3 => {
                reopened += 1;
                (keeper, responses) = cl.lease_keep_alive(id).await?;
            }
            other => panic!("keep-alive stream failed {reopened} times: {other:?}"),
        }
    }
    assert_eq!(get_on(&c, leader, "kept").await, Some(Some("alive".into())));
    let (ttl, granted) = lease_ttl(&c, follower, id).await.expect("ttl");
    assert_eq!(granted, 3);
    assert!((1..=3).contains(&ttl), "ttl {ttl}");
    // Without renewals the leader expires it, and the key goes with it.
    drop(keeper);
    drop(responses);
    eventually("the lease to expire", DEADLINE, || async {
        get_on(&c, follower, "kept").await?.is_none().then_some(())
    })
    .await;
    assert_eq!(lease_ttl(&c, follower, id).await, Some((-1, 0)));
    Ok(())
}

#[tokio::test]
async fn a_lease_outlives_a_leader_crash() -> R {
    let mut c = Cluster::start(3).await;
    let leader = c.leader().await;
    let mut cl = c.client(leader).await;
    let id = cl.lease_grant(10, None).await?.id();
    cl.put(
        "leased",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(id)),
    )
    .await?;
    c.kill9(leader);
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    // The new leader restarted every deadline: the lease is still there.
    let (ttl, granted) = eventually("the lease's TTL on the new leader", DEADLINE, || {
        lease_ttl(&c, new_leader, id)
    })
    .await;
    assert_eq!(granted, 10);
    assert!(ttl > 0, "ttl {ttl}");
    assert_eq!(
        get_on(&c, new_leader, "leased").await,
        Some(Some("v".into()))
    );
    // And it can be kept alive through the survivors.
    let survivor = (0..3)
        .find(|i| *i != leader && *i != new_leader)
        .expect("survivor");
    let mut sc = c.client(survivor).await;
    let r = sc.lease_keep_alive(id).await;
    let (mut keeper, mut responses) = r?;
    keeper.keep_alive().await?;
    let r = tokio::time::timeout(DEADLINE, responses.message())
        .await?
        .expect("stream ok")
        .expect("a response");
    assert_eq!(r.ttl(), 10);
    Ok(())
}

/// Flags for a cluster that snapshots every 100 entries and keeps only 10 entries of
/// log behind a snapshot, so a member that misses a few hundred writes is behind the
/// purged log. etcd 3.4 has no `--experimental-snapshot-catchup-entries` (it always
/// keeps 5000), so against it the tests write past that instead.
fn snapshot_flags() -> &'static [&'static str] {
    if support::against_etcd() {
        &["--snapshot-count", "100"]
    } else {
        &[
            "--snapshot-count",
            "100",
            "--experimental-snapshot-catchup-entries",
            "10",
        ]
    }
}

/// Writes needed to put a stopped member behind the leader's purged log.
fn writes_past_the_purged_log() -> usize {
    if support::against_etcd() {
        6000
    } else {
        500
    }
}

/// Puts `{prefix}{i:05}` = `v{i}` (then `pad` bytes of padding) for every `i` in `range`
/// through member `through`, 16 at a time, each retried until acknowledged.
async fn put_many(
    c: &Cluster,
    through: usize,
    prefix: &str,
    range: std::ops::Range<usize>,
    pad: usize,
) {
    let client = c.client(through).await;
    let keys: Vec<usize> = range.collect();
    let mut tasks = Vec::new();
    for chunk in keys.chunks(keys.len().div_ceil(16).max(1)) {
        let (mut cl, chunk, prefix) = (client.clone(), chunk.to_vec(), prefix.to_string());
        let padding = "x".repeat(pad);
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let (k, v) = (format!("{prefix}{i:05}"), format!("v{i}{padding}"));
                let deadline = std::time::Instant::now() + DEADLINE;
                while cl.put(k.as_str(), v.as_str(), None).await.is_err() {
                    assert!(std::time::Instant::now() < deadline, "put {k} in time");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// How many keys under `prefix` member `i` holds (`serializable`: its local state,
/// otherwise a linearizable read); `None` if the read failed.
async fn count_on(c: &Cluster, i: usize, prefix: &str, serializable: bool) -> Option<i64> {
    let mut cl = Client::connect([c.members[i].endpoint.as_str()], None)
        .await
        .ok()?;
    let mut opts = GetOptions::new().with_prefix().with_count_only();
    if serializable {
        opts = opts.with_serializable();
    }
    Some(cl.get(prefix, Some(opts)).await.ok()?.count())
}

/// A metric's value on member `i`'s `/metrics` (on the client URL, as etcd serves it).
fn metric_on(c: &Cluster, i: usize, name: &str) -> Option<f64> {
    let (_, text) = support::http_get(&c.members[i].endpoint, "/metrics")?;
    support::metric(&text, name)
}

/// The revision member `i` reports (a linearizable read of nothing).
fn revision_on(c: &Cluster, i: usize) -> i64 {
    c.etcdctl(i, &["get", "no-such-key", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_member_behind_the_purged_log_catches_up_by_snapshot() -> R {
    let mut c = Cluster::start_with(3, snapshot_flags()).await;
    let leader = c.leader().await;
    let lagging = (leader + 1) % 3;
    put_many(&c, leader, "before/", 0..20, 0).await;
    c.kill9(lagging);

    // 4 KiB values make the snapshot several 1 MiB chunks.
    let n = writes_past_the_purged_log();
    put_many(&c, leader, "snap/", 0..n, 4096).await;
    let built = metric_on(
        &c,
        leader,
        "etcd_debugging_snap_save_total_duration_seconds_count",
    );
    assert!(
        built.unwrap_or_default() >= 1.0,
        "the leader built a snapshot: {built:?}"
    );

    c.restart(lagging).await;
    // Its own state, read locally, has every key: it caught up.
    let local = eventually("the restarted member's local state", DEADLINE, || async {
        let got = count_on(&c, lagging, "snap/", true).await?;
        (got == n as i64).then_some(got)
    })
    .await;
    assert_eq!(local, n as i64);
    assert_eq!(count_on(&c, lagging, "snap/", false).await, Some(n as i64));
    assert_eq!(count_on(&c, lagging, "before/", true).await, Some(20));
    let v = c.etcdctl(lagging, &["get", "snap/00007", "--print-value-only"]);
    assert_eq!(v.out(), format!("v7{}\n", "x".repeat(4096)));

    // By a snapshot, not the log: the entries it missed were purged on the leader.
    let installed = metric_on(
        &c,
        lagging,
        "etcd_snap_db_save_total_duration_seconds_count",
    );
    assert!(
        installed.unwrap_or_default() >= 1.0,
        "the restarted member installed a snapshot: {installed:?}"
    );
    if !support::against_etcd() {
        let log = c.log(lagging);
        assert!(log.contains("installed snapshot"), "{log}");
    }

    // It goes on from the snapshot with the log: writes through it reach everyone.
    put_many(&c, lagging, "after/", 0..20, 0).await;
    for i in 0..3 {
        assert_eq!(
            count_on(&c, i, "after/", false).await,
            Some(20),
            "member {i}"
        );
    }
    let expected = hashkv(&c, leader);
    for i in 0..3 {
        c.etcdctl(i, &["get", "after/00000"]).out();
        assert_eq!(hashkv(&c, i), expected, "member {i}");
    }
    Ok(())
}

#[tokio::test]
async fn a_whole_cluster_crash_loses_no_acknowledged_write() -> R {
    let mut c = Cluster::start_with(3, snapshot_flags()).await;
    // Through every member, past several snapshots and purges.
    for i in 0..3 {
        put_many(&c, i, &format!("crash/{i}/"), 0..120, 0).await;
    }
    c.etcdctl(0, &["del", "crash/0/00000"]).out();
    let rev = revision_on(&c, 1);
    let expected = hashkv(&c, 1);

    c.restart_all().await;
    for i in 0..3 {
        let got = eventually(
            "every acknowledged write after the crash",
            DEADLINE,
            || async {
                let got = count_on(&c, i, "crash/", false).await?;
                (got == 359).then_some(got)
            },
        )
        .await;
        assert_eq!(got, 359, "member {i}");
        assert_eq!(
            revision_on(&c, i),
            rev,
            "member {i} is at the same revision"
        );
        assert_eq!(hashkv(&c, i), expected, "member {i}");
    }
    // The revision continues where it was.
    let resp = c.client(2).await.put("crash/after", "yes", None).await?;
    assert_eq!(resp.header().expect("header").revision(), rev + 1);
    for i in 0..3 {
        let got = eventually("the write after the restart", DEADLINE, || {
            get_on(&c, i, "crash/after")
        })
        .await;
        assert_eq!(got.as_deref(), Some("yes"), "member {i}");
    }
    Ok(())
}

#[tokio::test]
async fn an_added_member_catches_up_by_snapshot() -> R {
    let mut c = Cluster::start_with(3, snapshot_flags()).await;
    let leader = c.leader().await;
    // Far past the purged log: the new member cannot be sent the entries themselves.
    let n = writes_past_the_purged_log();
    put_many(&c, leader, "pre/", 0..n, 1024).await;
    let m = c.new_member();
    let (name, peer) = (c.members[m].name.clone(), c.members[m].peer.clone());
    let peer_flag = format!("--peer-urls={peer}");
    let out = member_add(&c, leader, &["member", "add", &name, &peer_flag]).await;
    c.start_member(m, &printed_initial_cluster(&out)).await;

    let local = eventually("the new member's local state", DEADLINE, || async {
        let got = count_on(&c, m, "pre/", true).await?;
        (got == n as i64).then_some(got)
    })
    .await;
    assert_eq!(local, n as i64);
    assert_eq!(count_on(&c, m, "pre/", false).await, Some(n as i64));
    let installed = metric_on(&c, m, "etcd_snap_db_save_total_duration_seconds_count");
    assert!(
        installed.unwrap_or_default() >= 1.0,
        "the new member installed a snapshot: {installed:?}"
    );
    // It then follows the log like any member, and holds exactly the same data.
    put_many(&c, m, "post/", 0..10, 0).await;
    let expected = hashkv(&c, leader);
    for i in 0..4 {
        c.etcdctl(i, &["get", "post/00000"]).out();
        assert_eq!(hashkv(&c, i), expected, "member {i}");
    }
    Ok(())
}
