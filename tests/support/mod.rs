//! Shared fixtures for the integration tests: a real server process (capstan, or the
//! reference etcd when `CAPSTAN_TEST_SERVER=etcd`) on free loopback ports in its own
//! temp dir, the real `etcdctl` pointed at it, and seeded randomness that prints its
//! seed so a failure replays with `CAPSTAN_TEST_SEED`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether the tests run against the reference etcd instead of capstan.
pub fn against_etcd() -> bool {
    std::env::var("CAPSTAN_TEST_SERVER").as_deref() == Ok("etcd")
}

/// A free loopback port for a server to listen on, never handed out twice in this
/// process. Taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`): a port from `bind(0)` is ephemeral, so
/// between its release and the server's bind, any outgoing connection of a parallel
/// test (etcdctl, a client) could take it as its source port and the server would fail
/// to start with "address in use".
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    let mut rng = rand::rng();
    for _ in 0..10_000 {
        let p = rng.random_range(low..ephemeral_low);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&p) || std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            continue;
        }
        given.push(p);
        return p;
    }
    panic!("no free port below {ephemeral_low}");
}

/// The server binary under test: `etcd`, or `capstan store`; both take etcd's flags.
fn server_command() -> Command {
    if against_etcd() {
        Command::new("etcd")
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_capstan"));
        c.arg("store");
        c
    }
}

/// A server's log file, opened for appending (a restart keeps the earlier output).
fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("server log {}: {e}", path.display()))
}

/// Starts `cmd` with no stdin and its stdout and stderr appended to the log at `log`.
fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> Child {
    let log = append_log(log);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"))
}

/// GETs `path` from a client URL (`http://host:port`) over plain HTTP, as monitoring
/// does; returns the status code and body. HTTP/1.0, so the body is never chunked.
pub fn http_get(endpoint: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of an unlabelled metric in Prometheus text output.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A running single-member server; killed on drop, its data dir removed.
/// SIGKILLs a child process, if there is one (no shutdown path runs, as in a crash), and
/// reaps it.
fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Sends SIGTERM (a graceful stop) with kill(1) and waits for the process to exit.
fn terminate_child(child: &mut Option<Child>, what: &str) {
    if let Some(mut c) = child.take() {
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(st.success(), "kill -TERM {what}: {st}");
        let _ = c.wait();
    }
}

/// Panics, with the process's log, if it has exited.
fn check_running(child: &mut Option<Child>, what: &str, log: impl Fn() -> String) {
    if let Some(c) = child.as_mut() {
        if let Ok(Some(status)) = c.try_wait() {
            panic!("{what} exited with {status}; log:\n{}", log());
        }
    }
}

pub struct Server {
    /// The client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    peer: String,
    extra: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with default flags and waits until it answers a read.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra etcd flags (`["--max-txn-ops", "3"]`).
    pub async fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            endpoint: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            dir,
        };
        s.spawn();
        s.wait_ready().await;
        s
    }

    /// The data dir the server was started with.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let mut cmd = server_command();
        cmd.args(["--name", "default", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("default={}", self.peer)])
            .args(&self.extra);
        let log = self.dir.path().join("server.log");
        self.child = Some(spawn_logged(&mut cmd, &log, "server"));
    }

    /// Polls until a linearizable read succeeds (deadline 30 s).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.dir.path().join("server.log");
            check_running(&mut self.child, "server", || {
                std::fs::read_to_string(&log).unwrap_or_default()
            });
            if let Ok(mut c) = etcd_client::Client::connect([self.endpoint.as_str()], None).await {
                match c.get("capstan-test-ready", None).await {
                    Ok(_) => return,
                    // With auth enabled the server answers, just not to an anonymous client.
                    Err(etcd_client::Error::GRpcStatus(st))
                        if st.message() == "etcdserver: user name is empty" =>
                    {
                        return
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "server at {} not ready in 30 s; log:\n{}",
            self.endpoint,
            self.log()
        );
    }

    /// The server's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILLs the server (no shutdown path runs), as a crash would.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts the server again on the same data dir and ports and waits until ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    /// A connected etcd-client.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("client connects")
    }

    /// Runs the real `etcdctl` (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Ctl {
        etcdctl_at(&self.endpoint, args, None)
    }

    /// Runs `etcdctl` feeding `stdin` (for `txn`).
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Ctl {
        etcdctl_at(&self.endpoint, args, Some(stdin))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What an `etcdctl` run printed and how it exited.
#[derive(Debug)]
pub struct Ctl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    /// Stdout, asserting the command succeeded.
    #[track_caller]
    pub fn out(&self) -> &str {
        assert!(self.ok, "command failed: {}{}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Stderr, asserting the command failed.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert!(!self.ok, "command unexpectedly succeeded: {}", self.stdout);
        &self.stderr
    }

    /// Stdout parsed as JSON (`-w json`).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.out()).expect("the command printed JSON")
    }
}

/// Runs `etcdctl` against `endpoint`.
pub fn etcdctl_at(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Ctl {
    use std::io::Write;
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("etcdctl runs (scripts/setup installs it)");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("etcdctl output");
    Ctl {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A seeded RNG for randomised tests; prints the seed so a failure can be replayed with
/// `CAPSTAN_TEST_SEED=<seed>`.
pub fn rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("CAPSTAN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with CAPSTAN_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Polls `f` until it returns `Some`, or panics after `timeout` saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Size of everything under `path`, in bytes.
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// One member of a [`Cluster`].
pub struct ClusterMember {
    /// The member's `--name`.
    pub name: String,
    /// The client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The peer URL.
    pub peer: String,
    child: Option<Child>,
    /// For a member added to a running cluster: the `--initial-cluster` it is started
    /// with (`--initial-cluster-state existing`).
    joined: Option<String>,
}

/// A running cluster of real server processes (capstan, or etcd with
/// `CAPSTAN_TEST_SERVER=etcd`) started with etcd's clustering flags on free loopback
/// ports; every member is killed on drop and the data dirs removed.
pub struct Cluster {
    pub members: Vec<ClusterMember>,
    initial_cluster: String,
    token: String,
    /// Extra flags every member is started with (see [`Cluster::start_with`]).
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members (`m0`, `m1`, ...) and waits until every one serves a
    /// linearizable read, which needs an elected leader.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// [`Cluster::start`] with extra flags for every member (`["--snapshot-count", "100"]`).
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<ClusterMember> = (0..n)
            .map(|i| ClusterMember {
                name: format!("m{i}"),
                endpoint: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                child: None,
                joined: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "capstan-test-{}",
            dir.path()
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("cluster")
        );
        let mut c = Cluster {
            members,
            initial_cluster,
            token,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// Member `i`'s combined stdout/stderr so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let mut cmd = server_command();
        let m = &self.members[i];
        let (initial_cluster, state) = match &m.joined {
            Some(ic) => (ic.as_str(), "existing"),
            None => (self.initial_cluster.as_str(), "new"),
        };
        cmd.args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.path().join(format!("{}.data", m.name)))
            .args(["--listen-client-urls", &m.endpoint])
            .args(["--advertise-client-urls", &m.endpoint])
            .args(["--listen-peer-urls", &m.peer])
            .args(["--initial-advertise-peer-urls", &m.peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Quick elections keep the failover tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra);
        let child = spawn_logged(&mut cmd, &self.log_path(i), "member");
        self.members[i].child = Some(child);
    }

    /// Polls until member `i` answers a linearizable read (deadline 30 s).
    pub async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let log = self.log_path(i);
            check_running(&mut self.members[i].child, &format!("member {i}"), || {
                std::fs::read_to_string(&log).unwrap_or_default()
            });
            let ep = self.members[i].endpoint.as_str();
            if let Ok(mut c) = etcd_client::Client::connect([ep], None).await {
                if c.get("capstan-test-ready", None).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "member {i} at {} not ready in 30 s; log:\n{}",
            self.members[i].endpoint,
            self.log(i)
        );
    }

    /// Whether member `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// SIGKILLs member `i`, as a crash would.
    pub fn kill9(&mut self, i: usize) {
        kill_child(&mut self.members[i].child);
    }

    /// Sends member `i` a signal (`"-STOP"`, `"-CONT"`) with kill(1): the workspace
    /// forbids the unsafe code a direct libc call would need.
    pub fn signal(&self, i: usize, sig: &str) {
        let Some(c) = &self.members[i].child else {
            return;
        };
        let st = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(st.success(), "kill {sig} member {i}: {st}");
    }

    /// Starts member `i` again on its data dir and ports and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// SIGKILLs every member, then starts them all again on their data dirs and waits
    /// until each is ready (one at a time would wait forever for a quorum).
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_ready(i).await;
        }
    }

    /// A client connected to member `i` only.
    pub async fn client(&self, i: usize) -> etcd_client::Client {
        etcd_client::Client::connect([self.members[i].endpoint.as_str()], None)
            .await
            .expect("client connects")
    }

    /// Runs `etcdctl` against member `i`.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Ctl {
        etcdctl_at(&self.members[i].endpoint, args, None)
    }

    /// `(member_id, leader_id, raft_term)` as member `i` reports them in `Status`.
    pub async fn status(&self, i: usize) -> Option<(u64, u64, u64)> {
        let mut c = etcd_client::Client::connect([self.members[i].endpoint.as_str()], None)
            .await
            .ok()?;
        let s = c.status().await.ok()?;
        let member = s.header()?.member_id();
        Some((member, s.leader(), s.raft_term()))
    }

    /// The index of the member every running member agrees is the leader (polls until
    /// they agree, deadline 30 s).
    pub async fn leader(&self) -> usize {
        eventually(
            "the running members to agree on a leader",
            Duration::from_secs(30),
            || async {
                let mut ids = Vec::new();
                let mut leaders = Vec::new();
                for i in 0..self.members.len() {
                    if !self.is_running(i) {
                        continue;
                    }
                    let (id, leader, _) = self.status(i).await?;
                    ids.push((i, id));
                    leaders.push(leader);
                }
                let first = *leaders.first()?;
                if first == 0 || leaders.iter().any(|l| *l != first) {
                    return None;
                }
                ids.iter().find(|(_, id)| *id == first).map(|(i, _)| *i)
            },
        )
        .await
    }
}

impl Cluster {
    /// Reserves ports and a name (`m<i>`) for a member to add with `member add`; it is
    /// not started. Returns its index.
    pub fn new_member(&mut self) -> usize {
        let i = self.members.len();
        self.members.push(ClusterMember {
            name: format!("m{i}"),
            endpoint: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            child: None,
            joined: None,
        });
        i
    }

    /// Starts added member `i` with `--initial-cluster-state existing` and the
    /// `--initial-cluster` that `member add` printed, and waits until it answers
    /// `Status` (a learner refuses linearizable reads).
    pub async fn start_member(&mut self, i: usize, initial_cluster: &str) {
        self.members[i].joined = Some(initial_cluster.to_string());
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status(i) {
                panic!("member {i} exited with {status}; log:\n{}", self.log(i));
            }
            if self.status(i).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("member {i} not up in 30 s; log:\n{}", self.log(i));
    }

    /// How member `i`'s process exited, if it did (it stays reaped: `is_running` is
    /// then false).
    pub fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.members[i].child.as_mut()?.try_wait().ok()??;
        self.members[i].child = None;
        Some(status)
    }

    /// `etcdctl member list -w json` on member `i`: the members, sorted by ID.
    pub fn member_list(&self, i: usize) -> Vec<serde_json::Value> {
        let json = self.etcdctl(i, &["member", "list", "-w", "json"]).json();
        let mut members = json["members"].as_array().cloned().unwrap_or_default();
        members.sort_by_key(|m| m["ID"].as_u64());
        members
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }
}

/// A real `capstan apiserver` process over a store, with its own cert dir and the
/// admin kubeconfig it wrote, for the real `kubectl`.
pub struct Apiserver {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    pub kubeconfig: PathBuf,
    etcd: String,
    bind: String,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Apiserver {
    /// Starts an apiserver on `etcd` (a store's client URL) and waits for `/healthz`.
    pub async fn start(etcd: &str) -> Apiserver {
        Self::start_at(etcd, "127.0.0.1", free_port()).await
    }

    /// Starts one listening on `bind:port` (several apiservers of one store, each on
    /// a loopback address of its own, as servers on machines of their own).
    pub async fn start_at(etcd: &str, bind: &str, port: u16) -> Apiserver {
        let dir = tempfile::tempdir().expect("tempdir");
        // Bound to every address, it is reached on loopback (as its kubeconfig says).
        let host = if bind == "0.0.0.0" { "127.0.0.1" } else { bind };
        let mut a = Apiserver {
            url: format!("https://{host}:{port}"),
            kubeconfig: dir.path().join("kubeconfig"),
            etcd: etcd.to_string(),
            bind: bind.to_string(),
            port,
            child: None,
            dir,
        };
        a.spawn();
        a.wait_ready().await;
        a
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
        cmd.args(["apiserver", "--etcd-servers", &self.etcd])
            .args([
                "--bind-address",
                &self.bind,
                "--secure-port",
                &self.port.to_string(),
            ])
            .arg("--cert-dir")
            .arg(self.dir.path().join("pki"))
            .arg("--kubeconfig-out")
            .arg(&self.kubeconfig);
        let log = self.dir.path().join("apiserver.log");
        self.child = Some(spawn_logged(&mut cmd, &log, "apiserver"));
    }

    /// Its `--cert-dir` (the cluster CA, its serving certificate `apiserver.crt` and
    /// key, the other certificates it made).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Polls `kubectl get --raw /healthz` until it answers (deadline 60 s).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let log = self.dir.path().join("apiserver.log");
            check_running(&mut self.child, "apiserver", || {
                std::fs::read_to_string(&log).unwrap_or_default()
            });
            if self.kubeconfig.exists() && self.kubectl(&["get", "--raw", "/healthz"]).ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("apiserver not ready in 60 s; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default()
    }

    /// A kubeconfig for `user` in `group` with a certificate from this apiserver's CA
    /// (`capstan kubeconfig`): a component's own identity.
    pub fn identity_kubeconfig(&self, user: &str, group: Option<&str>) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
        cmd.arg("kubeconfig")
            .arg("--cert-dir")
            .arg(self.pki_dir())
            .args(["--server", &self.url, "--client-name", user]);
        if let Some(g) = group {
            cmd.args(["--org", g]);
        }
        let out = cmd.output().expect("capstan kubeconfig runs");
        assert!(
            out.status.success(),
            "capstan kubeconfig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&path, &out.stdout).expect("writing the kubeconfig");
        path
    }

    /// The kubeconfig a component runs with: its upstream identity (the
    /// controller-manager's, the scheduler's, a single node's kubelet), or the admin's
    /// for simulated fleets (one process playing many nodes, as kwok).
    pub fn component_kubeconfig(&self, subcommand: &str, args: &[&str]) -> PathBuf {
        let flag = |name: &str| {
            args.iter()
                .position(|a| *a == name)
                .and_then(|i| args.get(i + 1))
                .map(|s| s.to_string())
        };
        match subcommand {
            "controller-manager" => {
                self.identity_kubeconfig("system:kube-controller-manager", None)
            }
            "scheduler" => self.identity_kubeconfig("system:kube-scheduler", None),
            "node" if flag("--simulated-nodes").is_none_or(|n| n == "1") => {
                match flag("--hostname-override") {
                    Some(name) => self
                        .identity_kubeconfig(&format!("system:node:{name}"), Some("system:nodes")),
                    None => self.kubeconfig.clone(),
                }
            }
            _ => self.kubeconfig.clone(),
        }
    }

    /// Its cert dir: the CA, and `sa.key`, which service-account tokens are signed with.
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Stops the apiserver with SIGKILL.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child);
    }

    /// Stops the apiserver with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) {
        terminate_child(&mut self.child, "apiserver");
    }

    /// The column headers of a `kubectl get` table.
    pub fn table_header(&self, args: &[&str]) -> Vec<String> {
        let out = self.kubectl(args);
        let first = out.out().lines().next().unwrap_or("");
        first.split_whitespace().map(str::to_string).collect()
    }

    /// Starts it again on the same port and cert dir.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    /// Runs the real `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Ctl {
        self.kubectl_stdin(args, None)
    }

    /// Runs `kubectl` feeding `stdin` (manifests for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Ctl {
        use std::io::Write;
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "30s"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            if let Some(mut s) = child.stdin.take() {
                s.write_all(input.as_bytes()).expect("kubectl stdin");
            }
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().expect("kubectl finishes");
        Ctl {
            ok: status.success(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// A `kubectl` process left running (for `get -w`), its stdout piped.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Child {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs")
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `capstan` component process above the apiserver (node agent, controller-manager,
/// scheduler), started as `capstan <subcommand> --kubeconfig <admin kubeconfig> <args>`
/// with its log in its own temp dir; SIGKILLed on drop.
pub struct Component {
    what: String,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Component {
    /// Starts `capstan <subcommand>` against `api`. Readiness is the test's to poll for,
    /// through what a user would see (a node Ready, a pod bound...).
    /// It runs with its own identity ([`Apiserver::component_kubeconfig`]).
    pub fn start(api: &Apiserver, subcommand: &str, args: &[&str]) -> Component {
        Self::with_kubeconfig(
            &api.component_kubeconfig(subcommand, args),
            subcommand,
            args,
        )
    }

    /// [`Component::start`] with any kubeconfig.
    pub fn with_kubeconfig(kubeconfig: &Path, subcommand: &str, args: &[&str]) -> Component {
        let mut all = vec![
            subcommand.to_string(),
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        // Upstream's fixed health ports would collide between tests run at once.
        if subcommand == "controller-manager" && !args.contains(&"--secure-port") {
            all.extend(["--secure-port".to_string(), free_port().to_string()]);
        }
        let mut c = Component {
            what: subcommand.to_string(),
            args: all,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        c.spawn();
        c
    }

    /// `capstan <args>` as given (a component that takes no `--kubeconfig`, such as
    /// `capstan agent`).
    pub fn with_args(what: &str, args: &[&str]) -> Component {
        let mut c = Component {
            what: what.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        c.spawn();
        c
    }

    /// Its exit status, once it has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
        cmd.args(&self.args);
        let log = self.dir.path().join("log");
        self.child = Some(spawn_logged(&mut cmd, &log, &self.what));
    }

    /// The process's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Panics, with its log, if the process has exited.
    pub fn check_running(&mut self) {
        let log = self.dir.path().join("log");
        check_running(&mut self.child, &self.what, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
    }

    /// Stops it with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child);
    }

    /// Sends SIGTERM (a graceful stop) with kill(1) and waits for the process to exit.
    pub fn terminate(&mut self) {
        terminate_child(&mut self.child, &self.what);
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real `capstan scheduler` process, its `/healthz` and `/metrics` on a free port.
pub struct Scheduler {
    /// `https://127.0.0.1:<port>`: /healthz and /metrics.
    pub url: String,
    process: Component,
}

impl Scheduler {
    /// Starts a scheduler with extra flags (`["--leader-elect=false"]`). It is not
    /// waited for: tests poll for what it does.
    pub fn start(kubeconfig: &Path, extra: &[&str]) -> Scheduler {
        let port = free_port().to_string();
        let mut args = vec![
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port,
            "--log-level",
            "info,capstan_scheduler=debug",
        ];
        args.extend(extra);
        Scheduler {
            url: format!("https://127.0.0.1:{port}"),
            process: Component::with_kubeconfig(kubeconfig, "scheduler", &args),
        }
    }
}

impl std::ops::Deref for Scheduler {
    type Target = Component;
    fn deref(&self) -> &Component {
        &self.process
    }
}

impl std::ops::DerefMut for Scheduler {
    fn deref_mut(&mut self) -> &mut Component {
        &mut self.process
    }
}

/// A TLS client of a peer port (the members' own `raftpb.Raft` service), with the
/// given client identity, trusting `ca`; the members' names.
pub async fn peer_client(
    peer: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Vec<String>, String> {
    use capstan_proto::raftpb::raft_client::RaftClient;
    let read = |f: &Path| std::fs::read(f).expect("certificate file");
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)));
    if let Some((c, k)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(c), read(k)));
    }
    let channel = tonic::transport::Endpoint::from_shared(peer.to_string())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    member_names(RaftClient::new(channel))
        .await
        .map_err(|e| format!("{e:?}"))
}

/// The members' names, as a peer's `Members` RPC lists them.
async fn member_names(
    mut c: capstan_proto::raftpb::raft_client::RaftClient<tonic::transport::Channel>,
) -> Result<Vec<String>, tonic::Status> {
    let resp = c.members(capstan_proto::raftpb::MembersRequest {}).await?;
    Ok(resp
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect())
}

/// A plaintext client of a peer port (`http://...`): the members' names, or the error
/// of a port that refuses plaintext.
pub async fn plaintext_peer_members(peer: &str) -> Result<Vec<String>, String> {
    let raw = capstan_proto::raftpb::raft_client::RaftClient::connect(peer.to_string())
        .await
        .map_err(|e| e.to_string())?;
    member_names(raw).await.map_err(|e| e.to_string())
}
