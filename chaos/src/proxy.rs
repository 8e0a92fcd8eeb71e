//! A fault-injecting TCP proxy in front of every member's peer port. Members advertise
//! the proxy's port (`--initial-advertise-peer-urls`, `--initial-cluster`) and listen
//! on the real one, so every byte between two members passes through here.
//!
//! A proxy knows which member it fronts (the destination), and learns which member
//! dialed it (the source) from the kernel: the dialer's socket is the one in
//! `/proc/net/tcp` whose local port is the accepted connection's remote port, and its
//! inode is among exactly one member process's file descriptors. That makes faults
//! per directed link possible without network namespaces or root.
//!
//! Faults, per directed link `from -> to`:
//! - **cut** (a member isolated, or a partition between two groups): existing
//!   connections are closed, new ones closed on accept. A connection carries both a
//!   request and its answer, so partitions cut both directions of a pair.
//! - **stall** (one-way loss): bytes from `from` to `to` are no longer read, so they sit
//!   in kernel buffers as a 100%-loss link would hold them in TCP retransmission;
//!   the other direction flows. Healing resumes the stream where it stopped.
//! - **delay**: every chunk is forwarded after a fixed delay, order preserved.
//! - **lossy**: partial loss as TCP turns it into something an application sees. A
//!   proxy cannot drop bytes inside a TCP stream (the receiver would read corrupt
//!   frames, not a lost packet), and on a real network TCP retransmits what was lost,
//!   so loss reaches the members as stalls of about a retransmission timeout (Linux's
//!   minimum RTO is 200 ms) during which the stream, head-of-line blocked, delivers
//!   nothing; and when loss is bad enough, as a connection reset. So each chunk read
//!   on a lossy link is, with a set probability, held back 200-600 ms (with everything
//!   after it), and with another, much smaller probability the connection is closed
//!   mid-stream instead, which fails every call on it as a reset would.
//!   Chunk boundaries depend on timing, so which chunk is hit does not replay exactly
//!   from a seed, but each connection's dice are seeded from the fault's seed.
//!
//! Only loopback is touched: proxies listen on `127.0.0.1` and dial `127.0.0.1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;

/// The faults currently in force on the peer links.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Faults {
    /// Members cut off from every other member.
    pub isolated: BTreeSet<usize>,
    /// Directed links that are cut (partitions insert both directions).
    pub cut: BTreeSet<(usize, usize)>,
    /// Directed links with partial loss.
    pub lossy: BTreeMap<(usize, usize), Loss>,
    /// Directed links whose traffic is held (one-way loss).
    pub stalled: BTreeSet<(usize, usize)>,
    /// Directed links with added delay.
    pub delayed: BTreeMap<(usize, usize), Duration>,
    /// Set on teardown: every connection closes.
    pub shutdown: bool,
}

/// Partial loss on a link, as TCP presents it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Loss {
    /// Chance per chunk, in thousandths, that the chunk is held back like a
    /// retransmission (200-600 ms, and everything after it with it).
    pub stall_permille: u32,
    /// Chance per chunk, in thousandths, that the connection is reset instead.
    pub reset_permille: u32,
    /// Seeds each connection's dice (mixed with the link and a connection count).
    pub seed: u64,
}

/// What a directed link does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open { delay: Duration, loss: Option<Loss> },
    Stalled,
    Cut,
}

impl Faults {
    fn link(&self, from: usize, to: usize) -> Link {
        if self.shutdown
            || self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.cut.contains(&(from, to))
        {
            Link::Cut
        } else if self.stalled.contains(&(from, to)) {
            Link::Stalled
        } else {
            Link::Open {
                delay: self.delayed.get(&(from, to)).copied().unwrap_or_default(),
                loss: self.lossy.get(&(from, to)).copied(),
            }
        }
    }
}

/// What the dice say for one chunk on a lossy link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pass,
    Stall(Duration),
    Reset,
}

fn roll(loss: &Loss, rng: &mut StdRng) -> Fate {
    let d: u32 = rng.random_range(0..1000);
    if d < loss.reset_permille {
        Fate::Reset
    } else if d < loss.reset_permille + loss.stall_permille {
        Fate::Stall(Duration::from_millis(rng.random_range(200..600)))
    } else {
        Fate::Pass
    }
}

/// The proxies of one cluster and the fault table they obey.
pub struct Network {
    faults: watch::Sender<Faults>,
    /// Member index -> pid, for telling which member dialed (updated on restart).
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Network {
    /// Starts one proxy per member: `listeners[i]` (already bound, so its port cannot be
    /// taken meanwhile) forwards to `127.0.0.1:real_ports[i]`.
    pub fn start(listeners: Vec<std::net::TcpListener>, real_ports: Vec<u16>) -> Result<Network> {
        let (faults, _) = watch::channel(Faults::default());
        let pids = Arc::new(Mutex::new(vec![None; real_ports.len()]));
        let mut tasks = Vec::new();
        for (to, (l, real)) in listeners.into_iter().zip(real_ports).enumerate() {
            l.set_nonblocking(true)?;
            let listener = TcpListener::from_std(l)?;
            let faults = faults.clone();
            let pids = pids.clone();
            tasks.push(tokio::spawn(async move {
                accept_loop(listener, to, real, faults, pids).await;
            }));
        }
        Ok(Network {
            faults,
            pids,
            tasks,
        })
    }

    /// Records member `i`'s process id (after every (re)start).
    pub fn set_pid(&self, i: usize, pid: Option<u32>) {
        if let Some(p) = self.pids.lock().get_mut(i) {
            *p = pid;
        }
    }

    /// Changes the fault table; every connection re-evaluates its links at once.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(f);
    }

    /// The faults in force.
    pub fn current(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.update(|f| {
            let shutdown = f.shutdown;
            *f = Faults {
                shutdown,
                ..Faults::default()
            };
        });
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.update(|f| f.shutdown = true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    to: usize,
    real: u16,
    faults: watch::Sender<Faults>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut accepted = 0u64;
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            continue;
        };
        accepted += 1;
        let conn_no = accepted;
        let faults = faults.subscribe();
        let pids = pids.clone();
        tokio::spawn(async move {
            // The dialer's socket is registered before its connect completes; a few
            // attempts cover /proc lagging a scheduler tick behind.
            let mut from = None;
            for _ in 0..5 {
                let snapshot = pids.lock().clone();
                from = tokio::task::spawn_blocking(move || dialer(peer, local_port, &snapshot))
                    .await
                    .ok()
                    .flatten();
                if from.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // An unidentified dialer could be an isolated member: never let it through.
            let Some(from) = from else { return };
            if faults.borrow().link(from, to) == Link::Cut {
                return;
            }
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", real)).await else {
                return;
            };
            let _ = conn.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (cr, cw) = conn.into_split();
            let (ur, uw) = upstream.into_split();
            let a = pump(cr, uw, (from, to, conn_no), faults.clone());
            let b = pump(ur, cw, (to, from, conn_no), faults);
            // When either direction ends (EOF or cut), drop both: the connection closes.
            tokio::select! { _ = a => {}, _ = b => {} }
        });
    }
}

/// Copies one direction (`from -> to` of connection `conn_no`) under the fault table.
async fn pump(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    (from, to, conn_no): (usize, usize, u64),
    mut faults: watch::Receiver<Faults>,
) {
    // Delayed chunks go through a queue to a writer, so a delay does not throttle reads
    // (a delayed link still has its full bandwidth) and order is preserved.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if wr.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // Created when the link first turns lossy, from that fault's seed.
        let mut dice: Option<(u64, StdRng)> = None;
        // A held-back chunk delays everything after it, as TCP's in-order delivery
        // does after a retransmission.
        let mut not_before = tokio::time::Instant::now();
        loop {
            let link = faults.borrow_and_update().link(from, to);
            match link {
                Link::Cut => return,
                Link::Stalled => {
                    if faults.changed().await.is_err() {
                        return;
                    }
                }
                Link::Open { delay, loss } => {
                    tokio::select! {
                        r = rd.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut at = tokio::time::Instant::now() + delay;
                                if let Some(loss) = loss {
                                    let rng = match &mut dice {
                                        Some((seed, rng)) if *seed == loss.seed => rng,
                                        _ => {
                                            let s = loss.seed
                                                ^ ((from as u64) << 48)
                                                ^ ((to as u64) << 32)
                                                ^ conn_no;
                                            &mut dice.insert((loss.seed, StdRng::seed_from_u64(s))).1
                                        }
                                    };
                                    match roll(&loss, rng) {
                                        Fate::Pass => {}
                                        Fate::Stall(d) => at += d,
                                        Fate::Reset => return,
                                    }
                                }
                                at = at.max(not_before);
                                not_before = at;
                                if tx.send((at, buf[..n].to_vec())).is_err() {
                                    return;
                                }
                            }
                        },
                        c = faults.changed() => if c.is_err() { return },
                    }
                }
            }
        }
    };
    // The reader returning on a cut must close the connection even if the writer still
    // holds queued bytes, so the first to finish ends the pump.
    tokio::select! { _ = reader => {}, _ = writer => {} }
}

/// Which member (index into `pids`) owns the socket that dialed `peer` -> `local_port`.
fn dialer(peer: SocketAddr, local_port: u16, pids: &[Option<u32>]) -> Option<usize> {
    let inode = socket_inode(peer.port(), local_port)?;
    let needle = format!("socket:[{inode}]");
    for (i, pid) in pids.iter().enumerate() {
        let Some(pid) = pid else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                return Some(i);
            }
        }
    }
    None
}

/// The inode of the loopback socket with local port `local` and remote port `remote`.
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want_local = format!("0100007F:{local:04X}");
    let want_remote = format!("0100007F:{remote:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&want_local.as_str()) && cols.get(2) == Some(&want_remote.as_str()))
            .then(|| cols.get(9).and_then(|s| s.parse().ok()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_fault_table() {
        let open = |ms| Link::Open {
            delay: Duration::from_millis(ms),
            loss: None,
        };
        let mut f = Faults::default();
        assert_eq!(f.link(0, 1), open(0));
        f.stalled.insert((0, 1));
        f.delayed.insert((1, 2), Duration::from_millis(100));
        assert_eq!(f.link(0, 1), Link::Stalled);
        assert_eq!(f.link(1, 0), open(0));
        assert_eq!(f.link(1, 2), open(100));
        let loss = Loss {
            stall_permille: 50,
            reset_permille: 5,
            seed: 1,
        };
        f.lossy.insert((1, 0), loss);
        assert_eq!(
            f.link(1, 0),
            Link::Open {
                delay: Duration::ZERO,
                loss: Some(loss)
            }
        );
        // A bridge: 0 and 2 no longer talk, both still talk to 1.
        f.cut.extend([(0, 2), (2, 0)]);
        assert_eq!(f.link(0, 2), Link::Cut);
        assert_eq!(f.link(2, 0), Link::Cut);
        assert_eq!(f.link(2, 1), open(0));
        f.isolated.insert(2);
        assert_eq!(f.link(1, 2), Link::Cut);
        assert_eq!(f.link(2, 0), Link::Cut);
    }

    #[test]
    fn lossy_dice_hit_about_the_set_fractions_and_replay_from_the_seed() {
        let loss = Loss {
            stall_permille: 100,
            reset_permille: 10,
            seed: 42,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..10_000)
                .map(|_| roll(&loss, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        let stalls = a.iter().filter(|f| matches!(f, Fate::Stall(_))).count();
        let resets = a.iter().filter(|f| **f == Fate::Reset).count();
        assert!((800..1200).contains(&stalls), "{stalls} stalls");
        assert!((50..150).contains(&resets), "{resets} resets");
        assert!(a.iter().all(|f| match f {
            Fate::Stall(d) => (200..600).contains(&d.as_millis()),
            _ => true,
        }));
    }

    /// The proxy finds the dialer among the given pids (here: this test process).
    #[tokio::test]
    async fn the_dialing_process_is_identified() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let real = upstream.local_addr().expect("addr").port();
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = front.local_addr().expect("addr").port();
        let net = Network::start(vec![front], vec![real]).expect("proxy");
        net.set_pid(0, Some(std::process::id()));
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.expect("dial");
        let (mut s, _) = tokio::task::spawn_blocking(move || upstream.accept())
            .await
            .expect("join")
            .expect("accept");
        c.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        tokio::task::spawn_blocking(move || {
            std::io::Read::read_exact(&mut s, &mut got).map(|_| got)
        })
        .await
        .expect("join")
        .map(|g| assert_eq!(&g, b"ping"))
        .expect("forwarded");
    }
}
