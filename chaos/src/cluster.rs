//! A cluster the harness owns: real member processes (capstan or etcd, started with
//! etcd's flags) on free loopback ports in one temp dir, peer links through the
//! fault-injecting proxies, and the process faults (SIGKILL + restart, SIGSTOP/SIGCONT).
//! Dropping it kills every member (a stopped one too: SIGKILL needs no SIGCONT),
//! stops the proxies and removes the temp dir.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::kv_client::KvClient;
use capstan_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ChaosError, Result};
use crate::proxy::Network;

/// Which server binary the members run.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// `<path> store ...`
    Capstan(PathBuf),
    /// `<path> ...` (etcd takes the same flags).
    Etcd(PathBuf),
}

/// Timing flags every member gets.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

struct Member {
    name: String,
    client: String,
    /// What the member listens on for peers.
    peer_real: u16,
    /// What it advertises (its proxy).
    peer_proxy: u16,
    child: Option<Child>,
    paused: bool,
}

/// A running cluster (see the module docs).
pub struct Cluster {
    kind: ServerKind,
    timing: Timing,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    pub net: Network,
    dir: tempfile::TempDir,
}

fn free_listener() -> Result<std::net::TcpListener> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
}

/// A free loopback port: bound then released (the member binds it right after).
fn free_port() -> Result<u16> {
    Ok(free_listener()?.local_addr()?.port())
}

/// A channel to `endpoint` (connects lazily, so a dead member costs nothing here).
pub fn channel(endpoint: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(endpoint.to_string())
        .map_err(|source| ChaosError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

impl Cluster {
    /// Starts `n` members and waits (up to `deadline`) until each serves a linearizable
    /// read.
    pub async fn start(
        kind: ServerKind,
        n: usize,
        timing: Timing,
        deadline: Duration,
    ) -> Result<Cluster> {
        if n == 0 {
            return Err(ChaosError::Config(
                "a cluster needs at least one member".into(),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("capstan-chaos-")
            .tempdir()?;
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for i in 0..n {
            let l = free_listener()?;
            members.push(Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()?),
                peer_real: free_port()?,
                peer_proxy: l.local_addr()?.port(),
                child: None,
                paused: false,
            });
            listeners.push(l);
        }
        let net = Network::start(listeners, members.iter().map(|m| m.peer_real).collect())?;
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_proxy))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "chaos-{}",
            dir.path()
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("cluster")
        );
        let mut c = Cluster {
            kind,
            timing,
            members,
            initial_cluster,
            token,
            net,
            dir,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_ready(i, deadline).await?;
        }
        Ok(c)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    /// The last `bytes` of member `i`'s log.
    pub fn log_tail(&self, i: usize, bytes: usize) -> String {
        let s = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let cut = s.len().saturating_sub(bytes);
        let cut = (cut..s.len())
            .find(|&c| s.is_char_boundary(c))
            .unwrap_or(s.len());
        s[cut..].to_string()
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let data = self.dir.path().join(format!("m{i}.data"));
        let m = &self.members[i];
        let mut cmd = match &self.kind {
            ServerKind::Capstan(p) => {
                let mut c = Command::new(p);
                c.arg("store");
                c
            }
            ServerKind::Etcd(p) => Command::new(p),
        };
        let peer_real = format!("http://127.0.0.1:{}", m.peer_real);
        let peer_proxy = format!("http://127.0.0.1:{}", m.peer_proxy);
        let child = cmd
            .args(["--name", &m.name, "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &m.client])
            .args(["--advertise-client-urls", &m.client])
            .args(["--listen-peer-urls", &peer_real])
            .args(["--initial-advertise-peer-urls", &peer_proxy])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args([
                "--heartbeat-interval",
                &self.timing.heartbeat_ms.to_string(),
            ])
            .args(["--election-timeout", &self.timing.election_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.net.set_pid(i, Some(child.id()));
        self.members[i].child = Some(child);
        self.members[i].paused = false;
        Ok(())
    }

    /// Polls until member `i` answers a linearizable read.
    pub async fn wait_ready(&mut self, i: usize, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        let ch = channel(&self.members[i].client)?;
        while Instant::now() < until {
            if let Some(c) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.members[i].child = None;
                    return Err(ChaosError::MemberExited {
                        member: i,
                        status: status.to_string(),
                        log: self.log_tail(i, 4000),
                    });
                }
            }
            let req = pb::RangeRequest {
                key: b"chaos-ready".to_vec(),
                ..Default::default()
            };
            let r =
                tokio::time::timeout(Duration::from_secs(2), KvClient::new(ch.clone()).range(req))
                    .await;
            if matches!(r, Ok(Ok(_))) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ChaosError::Timeout(
            deadline,
            format!("member {i} to serve a linearizable read"),
        ))
    }

    /// SIGKILLs member `i` (no shutdown path runs), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.net.set_pid(i, None);
        self.members[i].paused = false;
    }

    /// Starts a killed member `i` again on its data dir and ports (does not wait).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Whether member `i` has a process.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    fn signal(&self, i: usize, sig: &str) -> Result<()> {
        let Some(c) = self.members[i].child.as_ref() else {
            return Ok(());
        };
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let st = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()?;
        if st.success() {
            Ok(())
        } else {
            Err(ChaosError::Config(format!(
                "kill {sig} {} failed: {st}",
                c.id()
            )))
        }
    }

    /// SIGSTOPs member `i`.
    pub fn pause(&mut self, i: usize) -> Result<()> {
        self.signal(i, "-STOP")?;
        self.members[i].paused = true;
        Ok(())
    }

    /// SIGCONTs member `i`.
    pub fn resume(&mut self, i: usize) -> Result<()> {
        if self.members[i].paused {
            self.signal(i, "-CONT")?;
            self.members[i].paused = false;
        }
        Ok(())
    }

    /// Undoes every fault: heals the network, resumes paused members, restarts dead
    /// ones, then waits until every member serves a linearizable read.
    pub async fn settle(&mut self, deadline: Duration) -> Result<()> {
        self.net.heal();
        for i in 0..self.members.len() {
            self.resume(i)?;
            if !self.is_running(i) {
                self.spawn(i)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_ready(i, deadline).await?;
        }
        Ok(())
    }

    /// `(member id, leader id)` as member `i` reports them (`None`: no answer soon).
    pub async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let ch = channel(&self.members[i].client).ok()?;
        let s = tokio::time::timeout(
            Duration::from_millis(800),
            MaintenanceClient::new(ch).status(pb::StatusRequest {}),
        )
        .await
        .ok()?
        .ok()?
        .into_inner();
        Some((s.header?.member_id, s.leader))
    }

    /// The member a majority of reachable members name as leader, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut votes: std::collections::HashMap<u64, usize> = Default::default();
        for i in 0..self.members.len() {
            if !self.is_running(i) || self.members[i].paused {
                continue;
            }
            if let Some((id, leader)) = self.status(i).await {
                ids.push((i, id));
                if leader != 0 {
                    *votes.entry(leader).or_default() += 1;
                }
            }
        }
        let (leader, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        ids.iter().find(|(_, id)| *id == leader).map(|(i, _)| *i)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
