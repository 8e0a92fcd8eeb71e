//! The KV API through the real `etcdctl`, checked line for line against what etcd
//! prints: put/get/del with their options, txn, compaction, the errors a user sees, and
//! durability across a SIGKILL.

use std::collections::BTreeMap;

use rand::Rng;

use crate::support::Server;

fn rev(s: &Server) -> i64 {
    s.etcdctl(&["get", "x", "-w", "json"]).json()["header"]["revision"]
        .as_i64()
        .expect("revision")
}

#[tokio::test]
async fn put_get_delete_like_etcd() {
    let s = Server::start().await;
    assert_eq!(s.etcdctl(&["put", "foo", "bar"]).out(), "OK\n");
    assert_eq!(s.etcdctl(&["get", "foo"]).out(), "foo\nbar\n");
    assert_eq!(s.etcdctl(&["get", "missing"]).out(), "");
    assert_eq!(
        s.etcdctl(&["put", "foo", "baz", "--prev-kv"]).out(),
        "OK\nfoo\nbar\n"
    );

    let j = s.etcdctl(&["get", "foo", "-w", "json"]).json();
    let kv = &j["kvs"][0];
    // etcdctl's JSON prints bytes as base64: "foo" and "baz".
    assert_eq!(kv["key"], "Zm9v");
    assert_eq!(kv["value"], "YmF6");
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 3);
    assert_eq!(kv["version"], 2);
    assert_eq!(j["count"], 1);
    assert_eq!(j["header"]["revision"], 3);

    assert_eq!(s.etcdctl(&["del", "foo"]).out(), "1\n");
    assert_eq!(s.etcdctl(&["del", "foo"]).out(), "0\n");
    assert_eq!(s.etcdctl(&["get", "foo"]).out(), "");
    // History stays readable: the value before the delete, at its revision.
    assert_eq!(s.etcdctl(&["get", "foo", "--rev", "3"]).out(), "foo\nbaz\n");
    assert_eq!(s.etcdctl(&["get", "foo", "--rev", "2"]).out(), "foo\nbar\n");
    assert_eq!(s.etcdctl(&["get", "foo", "--rev", "1"]).out(), "");
    assert_eq!(rev(&s), 4);
}

#[tokio::test]
async fn range_options() {
    let s = Server::start().await;
    for (k, v) in [("a1", "z"), ("a2", "y"), ("a3", "x"), ("b1", "w")] {
        s.etcdctl(&["put", k, v]).out();
    }
    s.etcdctl(&["put", "a1", "v"]).out();
    assert_eq!(
        s.etcdctl(&["get", "a", "--prefix", "--keys-only"]).out(),
        "a1\n\na2\n\na3\n\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "a", "--prefix", "--limit", "2"]).out(),
        "a1\nv\na2\ny\n"
    );
    assert_eq!(s.etcdctl(&["get", "a1", "a3"]).out(), "a1\nv\na2\ny\n");
    assert_eq!(
        s.etcdctl(&["get", "a3", "--from-key"]).out(),
        "a3\nx\nb1\nw\n"
    );
    assert_eq!(
        s.etcdctl(&[
            "get",
            "a",
            "--prefix",
            "--sort-by",
            "VALUE",
            "--order",
            "ASCEND"
        ])
        .out(),
        "a1\nv\na3\nx\na2\ny\n"
    );
    assert_eq!(
        s.etcdctl(&[
            "get",
            "a",
            "--prefix",
            "--sort-by",
            "MODIFY",
            "--order",
            "DESCEND",
            "--limit",
            "1"
        ])
        .out(),
        "a1\nv\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "", "--prefix", "--order", "DESCEND", "--keys-only"])
            .out(),
        "b1\n\na3\n\na2\n\na1\n\n"
    );
    let j = s
        .etcdctl(&["get", "a", "--prefix", "--limit", "1", "-w", "json"])
        .json();
    assert_eq!(j["more"], true);
    assert_eq!(j["count"], 3);
    assert_eq!(s.etcdctl(&["get", "a2", "--print-value-only"]).out(), "y\n");
    assert_eq!(
        s.etcdctl(&["get", "a2", "--hex"]).out(),
        "\\x61\\x32\n\\x79\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "a", "--prefix", "--consistency", "s", "--keys-only"])
            .out(),
        "a1\n\na2\n\na3\n\n"
    );
    // etcdctl has no flags for the mod/create revision bounds; the client library does.
    let mut c = s.client().await;
    let keys = |r: etcd_client::GetResponse| -> Vec<String> {
        r.kvs()
            .iter()
            .map(|kv| kv.key_str().expect("utf8").to_string())
            .collect()
    };
    let r = c
        .get(
            "a",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("get");
    assert_eq!(r.count(), 3);
    assert!(r.kvs().is_empty(), "count_only returns no kvs");
    let o = etcd_client::GetOptions::new()
        .with_prefix()
        .with_min_mod_revision(5);
    assert_eq!(keys(c.get("a", Some(o)).await.expect("get")), ["a1"]);
    let o = etcd_client::GetOptions::new()
        .with_prefix()
        .with_max_create_revision(3);
    assert_eq!(keys(c.get("a", Some(o)).await.expect("get")), ["a1", "a2"]);
    let o = etcd_client::GetOptions::new()
        .with_prefix()
        .with_min_create_revision(3)
        .with_max_mod_revision(4);
    assert_eq!(keys(c.get("a", Some(o)).await.expect("get")), ["a2", "a3"]);
}

#[tokio::test]
async fn delete_ranges_with_prev_kv() {
    let s = Server::start().await;
    for k in ["p/1", "p/2", "p/3", "q"] {
        s.etcdctl(&["put", k, "v"]).out();
    }
    assert_eq!(
        s.etcdctl(&["del", "p/", "--prefix", "--prev-kv"]).out(),
        "3\np/1\nv\np/2\nv\np/3\nv\n"
    );
    assert_eq!(
        s.etcdctl(&["get", "", "--prefix", "--keys-only"]).out(),
        "q\n\n"
    );
    // A delete of three keys is one revision; a delete of nothing does not bump it.
    assert_eq!(rev(&s), 6);
    s.etcdctl(&["del", "nothing"]).out();
    assert_eq!(rev(&s), 6);
}

#[tokio::test]
async fn txn_compare_and_swap() {
    let s = Server::start().await;
    s.etcdctl(&["put", "k", "1"]).out();
    let script = "value(\"k\") = \"1\"\n\nput k 2\nget k\n\nput k failed\n\n";
    assert_eq!(
        s.etcdctl_stdin(&["txn"], script).out(),
        "SUCCESS\n\nOK\n\nk\n2\n"
    );
    assert_eq!(s.etcdctl_stdin(&["txn"], script).out(), "FAILURE\n\nOK\n");
    assert_eq!(s.etcdctl(&["get", "k"]).out(), "k\nfailed\n");
    let script = "mod(\"k\") > \"0\"\nversion(\"k\") = \"3\"\ncreate(\"k\") = \"2\"\n\ndel k\n\n\n";
    assert_eq!(s.etcdctl_stdin(&["txn"], script).out(), "SUCCESS\n\n1\n");
    // A compare on a missing key: its version is 0.
    let script = "version(\"k\") = \"0\"\n\nput k again\n\n\n";
    assert_eq!(s.etcdctl_stdin(&["txn"], script).out(), "SUCCESS\n\nOK\n");
}

#[tokio::test]
async fn txn_errors() {
    let s = Server::start_with(&["--max-txn-ops", "3"]).await;
    let dup = "\n\nput a 1\nput a 2\n\n\n";
    assert!(s
        .etcdctl_stdin(&["txn"], dup)
        .err()
        .contains("etcdserver: duplicate key given in txn request"));
    let many = "\n\nput a 1\nput b 2\nput c 3\nput d 4\n\n\n";
    assert!(s
        .etcdctl_stdin(&["txn"], many)
        .err()
        .contains("etcdserver: too many operations in txn request"));
    // Neither changed anything.
    assert_eq!(s.etcdctl(&["get", "", "--prefix"]).out(), "");
    assert_eq!(rev(&s), 1);
}

#[tokio::test]
async fn compaction_and_its_errors() {
    let s = Server::start().await;
    for i in 0..5 {
        s.etcdctl(&["put", "c", &i.to_string()]).out();
    }
    assert_eq!(
        s.etcdctl(&["compaction", "4"]).out(),
        "compacted revision 4\n"
    );
    assert!(s
        .etcdctl(&["get", "c", "--rev", "3"])
        .err()
        .contains("etcdserver: mvcc: required revision has been compacted"));
    // The compaction revision itself stays readable.
    assert_eq!(s.etcdctl(&["get", "c", "--rev", "4"]).out(), "c\n2\n");
    assert!(s
        .etcdctl(&["compaction", "4"])
        .err()
        .contains("etcdserver: mvcc: required revision has been compacted"));
    assert!(s
        .etcdctl(&["compaction", "100"])
        .err()
        .contains("etcdserver: mvcc: required revision is a future revision"));
    assert!(s
        .etcdctl(&["get", "c", "--rev", "100"])
        .err()
        .contains("etcdserver: mvcc: required revision is a future revision"));
    assert_eq!(
        s.etcdctl(&["compaction", "6", "--physical"]).out(),
        "compacted revision 6\n"
    );
    assert_eq!(s.etcdctl(&["get", "c"]).out(), "c\n4\n");
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let s = Server::start_with(&["--max-request-bytes", "4096"]).await;
    let big = "x".repeat(8192);
    assert!(s
        .etcdctl(&["put", "big", &big])
        .err()
        .contains("etcdserver: request is too large"));
    assert!(s
        .etcdctl(&["put", "k", "v", "--lease", "1234"])
        .err()
        .contains("etcdserver: requested lease not found"));
    let mut c = s.client().await;
    let e = c.put("", "v", None).await.expect_err("empty key");
    assert!(
        e.to_string().contains("etcdserver: key is not provided"),
        "{e}"
    );
    assert_eq!(s.etcdctl(&["get", "", "--prefix"]).out(), "");
    assert_eq!(rev(&s), 1);
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut s = Server::start().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = s.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                c.put(format!("d/{t}/{i}"), format!("{t}-{i}"), None)
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    s.kill9();
    s.restart().await;
    let mut c = s.client().await;
    let r = c
        .get("d/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(r.kvs().len(), 400);
    assert_eq!(r.header().expect("header").revision(), 401);
    for kv in r.kvs() {
        let k = kv.key_str().expect("utf8");
        let parts: Vec<&str> = k.split('/').collect();
        assert_eq!(
            kv.value_str().expect("utf8"),
            format!("{}-{}", parts[1], parts[2])
        );
    }
}

/// Random puts, deletes and range reads at random past revisions, checked against a
/// model of etcd's MVCC kept by the test; the seed replays a failure.
#[tokio::test]
async fn random_ops_match_a_model() {
    let s = Server::start().await;
    let mut rng = crate::support::rng("random_ops_match_a_model");
    let mut c = s.client().await;
    // model[rev] = the whole keyspace at that revision: key -> (value, create, mod, version)
    type State = BTreeMap<String, (String, i64, i64, i64)>;
    let mut history: Vec<State> = vec![State::new(), State::new()];
    let mut cur = State::new();
    let mut rev = 1i64;
    for step in 0..300 {
        let key = format!("k{}", rng.random_range(0..20));
        match rng.random_range(0..10) {
            0..=4 => {
                let val = format!("v{step}");
                c.put(key.as_str(), val.as_str(), None).await.expect("put");
                rev += 1;
                let (create, version) = match cur.get(&key) {
                    Some(&(_, cr, _, ver)) => (cr, ver + 1),
                    None => (rev, 1),
                };
                cur.insert(key, (val, create, rev, version));
                history.push(cur.clone());
            }
            5..=6 => {
                let end = format!("k{}", rng.random_range(0..20));
                let (lo, hi) = if key <= end { (key, end) } else { (end, key) };
                let opts = etcd_client::DeleteOptions::new().with_range(hi.as_str());
                let r = c.delete(lo.as_str(), Some(opts)).await.expect("delete");
                let gone: Vec<String> = cur.range(lo..hi).map(|(k, _)| k.clone()).collect();
                assert_eq!(r.deleted(), gone.len() as i64, "step {step}");
                if !gone.is_empty() {
                    rev += 1;
                    for k in gone {
                        cur.remove(&k);
                    }
                    history.push(cur.clone());
                }
            }
            _ => {
                let at = rng.random_range(1..=rev);
                let opts = etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_revision(at);
                let r = c.get("k", Some(opts)).await.expect("get");
                let got: Vec<(String, String, i64, i64, i64)> = r
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            kv.key_str().expect("utf8").to_string(),
                            kv.value_str().expect("utf8").to_string(),
                            kv.create_revision(),
                            kv.mod_revision(),
                            kv.version(),
                        )
                    })
                    .collect();
                let want: Vec<(String, String, i64, i64, i64)> = history[at as usize]
                    .iter()
                    .map(|(k, (v, cr, m, ver))| (k.clone(), v.clone(), *cr, *m, *ver))
                    .collect();
                assert_eq!(got, want, "step {step}: range at revision {at}");
                assert_eq!(r.header().expect("header").revision(), rev);
            }
        }
    }
}

/// A long-running `etcdctl` (watch, lock, elect) whose stdout lines arrive on a channel.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(s: &Server, args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.endpoint))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("etcdctl runs");
        let out = child.stdout.take().expect("stdout pipe");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next `n` lines, or a panic after 15 s.
    fn take(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(std::time::Duration::from_secs(15))
                    .unwrap_or_else(|e| panic!("line {i} of {n}: {e}"))
            })
            .collect()
    }

    /// Interrupts it as a user's Ctrl-C would (etcdctl then closes its session).
    fn interrupt(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Waits for exit and returns (success, stderr).
    fn finish(mut self) -> (bool, String) {
        use std::io::Read;
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.success(), err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn watch_live_replay_and_compacted() {
    let s = Server::start().await;
    for i in 1..=5 {
        s.etcdctl(&["put", "foo", &format!("v{i}")]).out();
    }
    // Replay from history, then live events, with previous values.
    let w = Running::start(&s, &["watch", "foo", "--rev", "5", "--prev-kv"]);
    assert_eq!(w.take(5), ["PUT", "foo", "v3", "foo", "v4"]);
    assert_eq!(w.take(5), ["PUT", "foo", "v4", "foo", "v5"]);
    s.etcdctl(&["del", "foo"]).out();
    assert_eq!(w.take(5), ["DELETE", "foo", "v5", "foo", ""]);
    drop(w);
    // A prefix watch started at the next revision sees exactly what follows.
    let w = Running::start(&s, &["watch", "p", "--prefix", "--rev", "8"]);
    s.etcdctl(&["put", "p1", "a"]).out();
    s.etcdctl(&["put", "q", "ignored"]).out();
    s.etcdctl(&["put", "p2", "b"]).out();
    assert_eq!(w.take(6), ["PUT", "p1", "a", "PUT", "p2", "b"]);
    drop(w);
    // Watching from a compacted revision is refused by the server.
    s.etcdctl(&["compaction", "4"]).out();
    let w = Running::start(&s, &["watch", "foo", "--rev", "2"]);
    let (ok, err) = w.finish();
    assert!(!ok);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
}

#[tokio::test]
async fn lock_and_elect() {
    let s = Server::start().await;
    assert_eq!(
        s.etcdctl(&["lock", "mylock", "echo", "locked"]).out(),
        "locked\n"
    );
    // A held lock: a second locker queues behind it and gets it once the first lets go.
    let mut first = Running::start(&s, &["lock", "L"]);
    let key1 = first.take(1).remove(0);
    assert!(key1.starts_with("L/"), "{key1}");
    let second = Running::start(&s, &["lock", "L"]);
    crate::support::eventually(
        "the second locker queues",
        std::time::Duration::from_secs(15),
        || async {
            let keys = s
                .etcdctl(&["get", "L/", "--prefix", "--keys-only"])
                .out()
                .to_string();
            (keys.lines().filter(|l| !l.is_empty()).count() == 2).then_some(())
        },
    )
    .await;
    assert!(
        second.lines.try_recv().is_err(),
        "second locker got a held lock"
    );
    first.interrupt();
    let key2 = second.take(1).remove(0);
    assert!(key2.starts_with("L/") && key2 != key1, "{key2}");

    // Elections: the first campaigner leads, an observer sees it.
    let alice = Running::start(&s, &["elect", "election", "alice"]);
    let lead = alice.take(2);
    assert!(lead[0].starts_with("election/"), "{lead:?}");
    assert_eq!(lead[1], "alice");
    let observer = Running::start(&s, &["elect", "-l", "election"]);
    assert_eq!(observer.take(2), lead);
}
