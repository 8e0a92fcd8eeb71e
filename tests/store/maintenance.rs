//! Maintenance and Cluster through the real `etcdctl`: endpoint status/health/hashkv,
//! defragmentation, alarms and the backend quota, snapshots (save with etcdctl, restore
//! with `capstan snapshot restore`), member listing and the membership errors of a
//! one-member cluster, and leadership moves. Expectations were observed on etcd 3.4.23;
//! the HashKV values are etcd's own for the same history.

use std::process::Command;

use crate::support::{against_etcd, Server};

fn status(s: &Server) -> serde_json::Value {
    let j = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    j[0]["Status"].clone()
}

fn member_id(s: &Server) -> u64 {
    status(s)["header"]["member_id"]
        .as_u64()
        .expect("member id")
}

fn revision(s: &Server) -> i64 {
    s.etcdctl(&["get", "x", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .expect("revision")
}

#[tokio::test]
async fn endpoint_status_and_health() {
    let s = Server::start().await;
    s.etcdctl(&["put", "k", "v"]).out();
    let st = status(&s);
    let id = member_id(&s);
    assert_eq!(st["leader"].as_u64(), Some(id), "a single member leads");
    assert!(
        st["version"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{st}"
    );
    assert!(st["dbSize"].as_i64().is_some_and(|n| n > 0), "{st}");
    assert!(st["dbSizeInUse"].as_i64().is_some_and(|n| n > 0), "{st}");
    assert_eq!(st["raftIndex"], st["raftAppliedIndex"]);
    assert!(st["raftTerm"].as_u64().is_some_and(|t| t >= 1), "{st}");
    assert_eq!(st["header"]["revision"], 2);
    assert!(st.get("errors").is_none(), "no alarms: {st}");

    // Table form: endpoint, ID, version, size, is leader, is learner, term, index, applied.
    let out = s.etcdctl(&["endpoint", "status"]).out().to_string();
    let cols: Vec<&str> = out.trim_end().split(", ").collect();
    assert_eq!(cols[0], s.endpoint);
    assert_eq!(cols[1], format!("{id:x}"));
    assert_eq!((cols[4], cols[5]), ("true", "false"), "{out:?}");

    // etcdctl 3.4 prints the health line on stderr.
    let h = s.etcdctl(&["endpoint", "health"]);
    assert!(h.ok, "{h:?}");
    let health = h.stderr.clone();
    assert!(
        health.starts_with(&format!(
            "{} is healthy: successfully committed proposal: took = ",
            s.endpoint
        )),
        "{health:?}"
    );
}

#[tokio::test]
async fn hashkv_is_etcds_and_survives_restart() {
    let mut s = Server::start().await;
    let hashkv = |s: &Server| s.etcdctl(&["endpoint", "hashkv"]).out().to_string();
    let line = |s: &Server, h: u32| format!("{}, {h}\n", s.endpoint);
    // crc32c of the bucket name alone: etcd's hash of an empty store.
    assert_eq!(hashkv(&s), line(&s, 1_084_519_789));
    s.etcdctl(&["put", "foo", "bar"]).out();
    s.etcdctl(&["put", "foo", "baz"]).out();
    s.etcdctl(&["del", "foo"]).out();
    s.etcdctl(&["put", "a", "b"]).out();
    assert_eq!(hashkv(&s), line(&s, 926_277_997));
    assert_eq!(s.etcdctl(&["compact", "3"]).out(), "compacted revision 3\n");
    let j = s.etcdctl(&["endpoint", "hashkv", "-w", "json"]).json();
    assert_eq!(j[0]["HashKV"]["hash"], 4_188_313_933u32);
    assert_eq!(j[0]["HashKV"]["compact_revision"], 3);
    assert_eq!(j[0]["HashKV"]["header"]["revision"], 5);
    s.restart().await;
    assert_eq!(
        hashkv(&s),
        line(&s, 4_188_313_933),
        "the hash depends on the history alone"
    );

    // Older revisions, and the errors for compacted and future ones.
    let mut c = s.client().await;
    let at4 = c.hash_kv(4).await.expect("hashkv at 4");
    let again = c.hash_kv(4).await.expect("hashkv at 4");
    assert_eq!(at4.hash(), again.hash());
    assert_ne!(at4.hash(), 4_188_313_933);
    let e = c.hash_kv(3).await.expect_err("compacted");
    assert!(
        e.to_string()
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    let e = c.hash_kv(100).await.expect_err("future");
    assert!(
        e.to_string()
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{e}"
    );
}

#[tokio::test]
async fn member_list_and_one_member_errors() {
    let s = Server::start().await;
    let id = member_id(&s);
    let j = s.etcdctl(&["member", "list", "-w", "json"]).json();
    let m = &j["members"][0];
    assert_eq!(j["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(m["ID"].as_u64(), Some(id));
    assert_eq!(m["name"], "default");
    assert_eq!(m["clientURLs"], serde_json::json!([s.endpoint]));
    let peer = m["peerURLs"][0].as_str().expect("peer URL").to_string();
    assert_eq!(
        s.etcdctl(&["member", "list"]).out(),
        format!("{id:x}, started, default, {peer}, {}, false\n", s.endpoint)
    );

    let err = |args: &[&str]| s.etcdctl(args).err().to_string();
    let me = format!("{id:x}");
    assert!(err(&["member", "remove", "12"]).contains("Error: etcdserver: member not found"));
    assert!(err(&["member", "remove", &me])
        .contains("Error: etcdserver: re-configuration failed due to not enough started members"));
    assert!(err(&["member", "promote", &me])
        .contains("Error: etcdserver: can only promote a learner member"));
    assert!(err(&["member", "promote", "12"]).contains("Error: etcdserver: member not found"));
    assert!(
        err(&["member", "update", "12", &format!("--peer-urls={peer}")])
            .contains("Error: etcdserver: member not found")
    );
    assert!(
        err(&["member", "add", "other", &format!("--peer-urls={peer}")])
            .contains("Error: etcdserver: Peer URLs already exists")
    );
    // etcdctl prints both IDs here with "%16x": space-padded to 16 columns.
    let cluster = j["header"]["cluster_id"].as_u64().expect("cluster id");
    assert_eq!(
        s.etcdctl(&["member", "update", &me, &format!("--peer-urls={peer}")])
            .out(),
        format!("Member {id:16x} updated in cluster {cluster:16x}\n")
    );

    assert_eq!(
        s.etcdctl(&["move-leader", &me]).out(),
        format!("Leadership transferred from {me} to {me}\n")
    );
    assert!(err(&["move-leader", "12"]).contains("Error: etcdserver: bad leader transferee"));
}

#[tokio::test]
async fn quota_raises_nospace_until_compacted_defragmented_and_disarmed() {
    use rand::RngCore;
    let s = Server::start_with(&["--quota-backend-bytes", "3000000"]).await;
    let mut c = s.client().await;
    let mut rng = crate::support::rng("quota");
    let mut full = false;
    for i in 0..300 {
        // Random values: RocksDB compresses, so a repetitive value would never fill it.
        let mut v = vec![0u8; 100 * 1024];
        rng.fill_bytes(&mut v);
        match c.put(format!("big/{i:03}"), v, None).await {
            Ok(_) => {}
            Err(e) => {
                assert!(
                    e.to_string()
                        .contains("etcdserver: mvcc: database space exceeded"),
                    "{e}"
                );
                full = true;
                break;
            }
        }
    }
    assert!(full, "30 MB of writes exceed a 3 MB quota");
    let id = member_id(&s);
    let alarm = format!("memberID:{id} alarm:NOSPACE \n");
    assert_eq!(s.etcdctl(&["alarm", "list"]).out(), alarm);
    assert!(s
        .etcdctl(&["put", "x", "y"])
        .err()
        .contains("Error: etcdserver: mvcc: database space exceeded"));
    assert!(s
        .etcdctl(&["lease", "grant", "10"])
        .err()
        .contains("etcdserver: mvcc: database space exceeded"));
    assert_eq!(
        status(&s)["errors"],
        serde_json::json!([alarm.trim_end_matches('\n')])
    );

    // Deletes and compaction still work, and free the space.
    s.etcdctl(&["del", "big/", "--prefix"]).out();
    let rev = revision(&s).to_string();
    assert_eq!(
        s.etcdctl(&["compact", &rev]).out(),
        format!("compacted revision {rev}\n")
    );
    assert_eq!(
        s.etcdctl(&["defrag"]).out(),
        format!("Finished defragmenting etcd member[{}]\n", s.endpoint)
    );
    assert!(
        s.etcdctl(&["put", "x", "y"])
            .err()
            .contains("database space exceeded"),
        "the alarm holds until disarmed"
    );
    assert_eq!(s.etcdctl(&["alarm", "disarm"]).out(), alarm);
    assert_eq!(s.etcdctl(&["alarm", "list"]).out(), "");
    assert_eq!(s.etcdctl(&["put", "x", "y"]).out(), "OK\n");
}

#[tokio::test]
async fn snapshot_save_then_restore() {
    let s = Server::start().await;
    for i in 0..50 {
        s.etcdctl(&["put", &format!("k{i:02}"), &format!("v{i}")])
            .out();
    }
    s.etcdctl(&["del", "k00"]).out();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.db");
    let file_s = file.to_str().expect("utf8 path");
    let saved = s.etcdctl(&["snapshot", "save", file_s]);
    assert_eq!(saved.out(), format!("Snapshot saved at {file_s}\n"));
    assert!(file.metadata().expect("snapshot file").len() > 0);
    if against_etcd() {
        return; // restoring is capstan's own command
    }

    let hash = s
        .etcdctl(&["endpoint", "hashkv"])
        .out()
        .replace(&s.endpoint, "");
    let mut r = Server::start().await;
    r.kill9();
    std::fs::remove_dir_all(r.data_dir()).expect("clear the data dir");
    let restore = |target: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["snapshot", "restore", file_s, "--data-dir"])
            .arg(target)
            .output()
            .expect("capstan runs")
    };
    let out = restore(&r.data_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = restore(&r.data_dir());
    assert!(
        !again.status.success(),
        "restore refuses an existing data dir"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    r.restart().await;
    assert_eq!(r.etcdctl(&["get", "k01"]).out(), "k01\nv1\n");
    assert_eq!(r.etcdctl(&["get", "k00"]).out(), "");
    assert_eq!(
        r.etcdctl(&["get", "k", "--prefix", "-w", "json"]).json()["count"],
        49
    );
    assert_eq!(
        r.etcdctl(&["endpoint", "hashkv"])
            .out()
            .replace(&r.endpoint, ""),
        hash,
        "same history"
    );
    assert_eq!(
        r.etcdctl(&["put", "new", "1"]).out(),
        "OK\n",
        "the restored member takes writes"
    );

    // A damaged file is refused before anything is written.
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).expect("write");
    let target = dir.path().join("bad");
    let bad = restore(&target);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sha256 mismatch"));
    assert!(!target.join("member").exists());
}
