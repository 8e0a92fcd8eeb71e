//! Raft replication for multi-member clusters, on openraft (storage v2). The log and
//! vote live in RocksDB beside the state ([`log_store`]); committed entries are applied
//! through the store's one apply path ([`state_machine`]); peers talk gRPC
//! ([`network`] out, [`service`] in) in a hand-written protobuf format ([`convert`]).
//!
//! [`RaftNode`] is what `EtcdServer` uses: `propose` (a write, forwarded to the leader
//! from a follower), `read_index` (the barrier before a linearizable read) and the
//! leader/term figures response headers and `Status` report. Membership changes,
//! leader transfer and the leader's lease clock for followers are in [`membership`].

pub mod convert;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod service;
pub mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use capstan_proto::raftpb as rpb;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState, SnapshotPolicy};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::{ApplyRequest, ApplyResponse, StateMachine};
use crate::error::{Result, StoreError};
use crate::server::{parse_url, Config, EtcdServer};

openraft::declare_raft_types!(
    /// capstan's openraft types: entries carry a [`rpb::Proposal`] (an encoded
    /// `ApplyRequest` plus who proposed it); results travel through the proposer's own
    /// apply, so the response type is empty.
    pub TypeConfig:
        D = rpb::Proposal,
        R = (),
        NodeId = u64,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A member as the Raft membership records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Parses `--initial-cluster` (`name=url,name=url2,other=url3`) into members in order of
/// first appearance; a name listed twice has several peer URLs.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<Member>> {
    let mut members: Vec<Member> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            StoreError::InvalidArgument(format!("--initial-cluster: {part:?} is not name=url"))
        })?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(Member {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    Ok(members)
}

/// A member's node id: a hash of its peer URLs and the cluster token (as etcd derives
/// member ids), so every member computes the same id for a name from the same flags.
pub fn member_id(m: &Member, token: &str) -> u64 {
    crate::server::hash_id(&[&m.peer_urls.join(","), token])
}

/// This member's Raft node; see the module documentation.
pub struct RaftNode {
    pub id: u64,
    /// The cluster's id: computed from `--initial-cluster` by the founding members,
    /// learned from a peer by a member that joins later (see [`membership`]).
    pub cluster_id: u64,
    pub raft: Raft<TypeConfig>,
    metrics: watch::Receiver<RaftMetrics<u64, Member>>,
    applied: watch::Receiver<u64>,
    waiters: Arc<state_machine::Waiters>,
    peers: Arc<network::Peers>,
    seq: AtomicU64,
    /// Proposals waiting to be batched into a log entry (see [`run_batcher`]).
    batcher: mpsc::UnboundedSender<Queued>,
    /// Linearizable reads waiting for the next read barrier (see [`run_read_loop`]).
    read_waiters: parking_lot::Mutex<Vec<oneshot::Sender<Result<u64>>>>,
    read_wake: Arc<tokio::sync::Notify>,
    /// How long a proposal or read may take before the client gets "request timed out"
    /// (etcd: 5 s plus two election timeouts).
    request_timeout: Duration,
    /// `--initial-cluster-token`, part of a new member's id.
    token: String,
    heartbeat: Duration,
    /// The server this node serves, for the peer requests the leader answers from the
    /// server's state (lease renewals); set once by `EtcdServer::start`.
    server: OnceLock<Weak<EtcdServer>>,
    /// Set when this member learns it was removed from the cluster.
    removed: Arc<watch::Sender<bool>>,
    /// Serializes membership changes and leader transfers on this member (openraft
    /// refuses a change while another is in progress).
    changing: tokio::sync::Mutex<()>,
    /// Set while the leader hands leadership over: it takes no new entries then, so the
    /// transferee's log stays as long as its own (etcd drops proposals meanwhile too).
    transferring: std::sync::atomic::AtomicBool,
}

impl RaftNode {
    /// Starts the node on `sm`'s engine, serves the peer API on `--listen-peer-urls`
    /// and, for a new cluster, bootstraps the membership from `--initial-cluster`.
    pub async fn start(cfg: &Config, sm: Arc<StateMachine>) -> Result<Arc<Self>> {
        let members = parse_initial_cluster(&cfg.initial_cluster)?;
        let me = members.iter().find(|m| m.name == cfg.name).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            ))
        })?;
        if me.peer_urls != cfg.initial_advertise_peer_urls {
            tracing::warn!(name = %cfg.name, initial_cluster = ?me.peer_urls, advertised = ?cfg.initial_advertise_peer_urls,
                "--initial-cluster and --initial-advertise-peer-urls disagree; using --initial-cluster");
        }
        let (id, cluster_id) = membership::identity(cfg, me).await?;
        let nodes: BTreeMap<u64, Member> = members
            .iter()
            .map(|m| (member_id(m, &cfg.initial_cluster_token), m.clone()))
            .collect();

        // openraft 0.9 lets a follower campaign only after the leader lease (its
        // election_timeout_max) *plus* a random election timeout without a heartbeat,
        // and rejects votes inside the lease. Mapping --election-timeout straight onto
        // min/max therefore detected a dead leader after 3-4 s, against etcd's 1-2 s.
        // These bounds put detection at 0.75-1x --election-timeout (etcd: 1-2x), while
        // a silence of seven heartbeats is still needed before anyone campaigns, which
        // keeps a busy 2-core machine free of spurious elections.
        let (election_timeout_min, election_timeout_max) =
            election_bounds(cfg.election_timeout_ms, cfg.heartbeat_interval_ms);
        let rcfg = openraft::Config {
            cluster_name: cfg.initial_cluster_token.clone(),
            heartbeat_interval: cfg.heartbeat_interval_ms,
            election_timeout_min,
            election_timeout_max,
            // etcd's --snapshot-count (0 means etcd's default, as in etcd): a snapshot
            // after that many entries, then the log is purged up to it, less
            // --experimental-snapshot-catchup-entries kept for slow followers.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(if cfg.snapshot_count == 0 {
                100_000
            } else {
                cfg.snapshot_count
            }),
            max_in_snapshot_log_to_keep: cfg.snapshot_catchup_entries,
            // A member behind the purged log gets the snapshot in chunks of this size.
            snapshot_max_chunk_size: 1024 * 1024,
            // Bounds each chunk's RPC, and the last one's includes replacing the state
            // and rebuilding the index on the receiver: openraft's 200 ms is too short.
            install_snapshot_timeout: 10_000,
            // Bounded so one AppendEntries stays a reasonable message even with
            // max-size requests.
            max_payload_entries: 64,
            ..Default::default()
        };
        let rcfg = Arc::new(
            rcfg.validate()
                .map_err(|e| StoreError::InvalidArgument(format!("raft configuration: {e}")))?,
        );

        let engine = sm.mvcc.engine().clone();
        let waiters = Arc::new(state_machine::Waiters::default());
        let (sm_store, applied) = state_machine::SmStore::open(sm, id, waiters.clone())?;
        let log_store = log_store::LogStore::new(engine);
        let peers = Arc::new(network::Peers::new(network::PeerDialer::new(cfg)?));
        let removed = Arc::new(watch::channel(false).0);
        let net = network::Network {
            peers: peers.clone(),
            removed: removed.clone(),
        };
        let raft = Raft::new(id, rcfg, net, log_store, sm_store)
            .await
            .map_err(|e| StoreError::Engine(format!("starting raft: {e}")))?;

        if cfg.initial_cluster_state == "new" {
            // Every member proposes the same initial membership; openraft accepts it
            // where the log is empty and refuses it (NotAllowed) on a restart.
            match raft.initialize(nodes.clone()).await {
                Ok(()) => {
                    tracing::info!(member = %format!("{id:x}"), members = nodes.len(), "bootstrapped raft membership")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::debug!(member = %format!("{id:x}"), "raft already initialized")
                }
                Err(e) => return Err(StoreError::Engine(format!("initializing raft: {e}"))),
            }
        }

        let metrics = raft.metrics();
        let (batcher, batch_rx) = mpsc::unbounded_channel();
        let node = Arc::new(Self {
            batcher,
            read_waiters: parking_lot::Mutex::new(Vec::new()),
            read_wake: Arc::new(tokio::sync::Notify::new()),
            id,
            cluster_id,
            raft: raft.clone(),
            metrics,
            applied,
            waiters,
            peers,
            // Unique across restarts, so a replayed entry of an earlier run never
            // completes a waiter of this one.
            seq: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1),
            ),
            request_timeout: Duration::from_secs(5)
                + Duration::from_millis(2 * cfg.election_timeout_ms),
            token: cfg.initial_cluster_token.clone(),
            heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms),
            server: OnceLock::new(),
            removed,
            changing: tokio::sync::Mutex::new(()),
            transferring: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(run_batcher(Arc::downgrade(&node), batch_rx));
        tokio::spawn(run_read_loop(Arc::downgrade(&node)));
        // Served only now: the peer service answers from the node (membership,
        // leases), and a joining member is contacted by the leader from here on.
        for url in &cfg.listen_peer_urls {
            let addr = parse_url(url)?;
            let tls = crate::tls::is_https(url)
                .then(|| {
                    cfg.peer_tls
                        .server_config("--peer-cert-file, --peer-key-file")
                })
                .transpose()?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StoreError::InvalidArgument(format!("listen on {url}: {e}")))?;
            tracing::info!(member = %format!("{id:x}"), %addr, tls = tls.is_some(),
                client_cert_auth = tls.is_some() && cfg.peer_tls.client_cert_auth, "serving peer traffic");
            let svc =
                rpb::raft_server::RaftServer::new(service::RaftService { node: node.clone() })
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
            let svc = tonic::service::interceptor::InterceptedService::new(
                svc,
                network::PeerCheck::new(cfg.peer_secret.as_deref()),
            );
            let router = tonic::transport::Server::builder().add_service(svc);
            tokio::spawn(async move {
                // With peer TLS a plaintext connection fails the handshake and is
                // closed before anything reaches Raft.
                let served = match tls {
                    Some(cfg) => {
                        router
                            .serve_with_incoming(crate::tls::incoming(listener, cfg, "peer"))
                            .await
                    }
                    None => {
                        let incoming = tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true));
                        router.serve_with_incoming(incoming).await
                    }
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "peer server stopped");
                }
            });
        }

        node.watch_removal();
        Ok(node)
    }

    /// The leader this member knows of.
    pub fn leader(&self) -> Option<u64> {
        self.metrics.borrow().current_leader
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.metrics.borrow().state == ServerState::Leader
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.metrics.borrow().current_term
    }

    /// The index of the last entry in this member's log.
    pub fn last_log_index(&self) -> u64 {
        self.metrics.borrow().last_log_index.unwrap_or(0)
    }

    /// The index of the last entry applied on this member.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Builds a snapshot of everything applied and purges the log it covers, so that a
    /// member added later starts from the snapshot rather than from the log. A store
    /// rebuilt from a snapshot file (`capstan server --cluster-reset`) needs it: its data
    /// is in no log entry, so replaying the log would give a new member none of it.
    pub async fn snapshot_and_purge(&self) -> Result<()> {
        let applied = self.applied_index();
        let fatal = |e: openraft::error::Fatal<u64>| StoreError::Engine(format!("raft: {e}"));
        self.raft.trigger().snapshot().await.map_err(fatal)?;
        let mut m = self.metrics.clone();
        let built = async {
            m.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied))
                .await
                .map(|m| m.snapshot.map(|s| s.index).unwrap_or(applied))
        };
        let index = match tokio::time::timeout(Duration::from_secs(60), built).await {
            Ok(Ok(i)) => i,
            Ok(Err(_)) => return Err(StoreError::Stopped),
            Err(_) => {
                return Err(StoreError::Engine(
                    "raft: snapshot not built within 60 s".into(),
                ))
            }
        };
        self.raft.trigger().purge_log(index).await.map_err(fatal)?;
        let purged = async {
            m.wait_for(|m| m.purged.is_some_and(|p| p.index >= index))
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(Duration::from_secs(60), purged).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Engine(
                "raft: log not purged within 60 s".into(),
            )),
        }
    }

    /// Resolves once this member knows of a leader other than `old` (never while no
    /// leader is known: an election alone does not mean the old leader is gone).
    async fn leader_changed_from(&self, old: u64) {
        let mut m = self.metrics.clone();
        if m.wait_for(|m| m.current_leader.is_some_and(|l| l != old))
            .await
            .is_err()
        {
            // Raft stopped: the pending call fails on its own.
            std::future::pending::<()>().await;
        }
    }

    /// A client of the leader's peer service.
    fn leader_client(&self, leader: u64) -> Result<network::PeerRaftClient> {
        let node = self
            .metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or(StoreError::NoLeader)?;
        self.peers.client(leader, &node)
    }

    /// Appends `req` to the replicated log (through the leader) and waits until this
    /// member has applied it; the result is this member's own apply of the entry.
    pub async fn propose(&self, req: &ApplyRequest) -> Result<ApplyResponse> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(seq, tx);
        // Removes the waiter whatever happens (error, timeout, client gone).
        struct Guard<'a>(&'a state_machine::Waiters, u64);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                self.0.remove(self.1);
            }
        }
        let _guard = Guard(&self.waiters, seq);
        let (submitted, submitted_rx) = oneshot::channel();
        let request = req.encode_to_vec();
        self.batcher
            .send(Queued {
                bytes: request.len(),
                items: vec![rpb::ProposalItem {
                    seq,
                    request,
                    member: self.id,
                }],
                forwarded: false,
                submitted,
            })
            .map_err(|_| StoreError::Stopped)?;
        let work = async {
            submitted_rx.await.map_err(|_| StoreError::Stopped)??;
            let submitted = std::time::Instant::now();
            let r = rx.await.map_err(|_| StoreError::Stopped)?;
            crate::metrics::METRICS
                .proposal_apply_lag
                .observe(submitted.elapsed().as_secs_f64());
            r
        };
        tokio::time::timeout(self.request_timeout, work)
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    /// A follower's `Forward` RPC, served by the leader: the forwarded batch joins the
    /// leader's own batcher, so the requests of every member share log entries instead
    /// of each member's batches taking entries of their own. Returns once the entry is
    /// committed and applied here, as `client_write` would.
    pub(crate) async fn serve_forward(&self, p: rpb::Proposal) -> Result<()> {
        if !self.is_leader() || self.is_transferring() {
            return Err(StoreError::NoLeader);
        }
        let mut items = if p.items.is_empty() {
            vec![rpb::ProposalItem {
                seq: p.seq,
                request: p.request,
                member: p.member,
            }]
        } else {
            p.items
        };
        for i in &mut items {
            if i.member == 0 {
                i.member = p.member;
            }
        }
        let (submitted, rx) = oneshot::channel();
        self.batcher
            .send(Queued {
                bytes: items.iter().map(|i| i.request.len()).sum(),
                items,
                forwarded: true,
                submitted,
            })
            .map_err(|_| StoreError::Stopped)?;
        tokio::time::timeout(self.request_timeout, rx)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|_| StoreError::Stopped)?
    }

    /// Appends one batch of proposals to the log: directly on the leader, through the
    /// leader's `Forward` RPC on a follower. A batch holding requests that followers
    /// forwarded here fails if this member no longer leads: sending them on to the new
    /// leader would be a second hop the forwarding member does not expect, and its
    /// client gets etcd's error for a leader change either way.
    async fn submit(&self, proposal: rpb::Proposal, forwarded: bool) -> Result<()> {
        let leader = self.leader().ok_or(StoreError::NoLeader)?;
        if leader != self.id && forwarded {
            return Err(StoreError::NoLeader);
        }
        if leader != self.id {
            let c = self.leader_client(leader)?;
            // A paused or cut-off leader may never answer (or answer only when it is
            // healed), so once another member leads, waiting on the old one only delays
            // the client's retry. The batch may still have been appended there, which
            // is why it fails rather than being sent again (a write applied twice would
            // break linearizability), and with etcd's error for an unknown outcome
            // after a leader failure, which etcd gives only after its full timeout.
            return tokio::select! {
                r = network::forward(c, proposal, self.request_timeout) => r,
                () = self.leader_changed_from(leader) => Err(StoreError::TimeoutDueToLeaderFail),
            };
        }
        if self.transferring.load(Ordering::SeqCst) {
            return Err(StoreError::NoLeader);
        }
        match self.raft.client_write(proposal).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(StoreError::NoLeader)
            }
            Err(e) => {
                tracing::warn!(member = %format!("{:x}", self.id), error = %e, "raft write failed");
                Err(StoreError::Stopped)
            }
        }
    }

    /// The barrier before a linearizable read (ReadIndex): the leader confirms with a
    /// quorum that it still leads and returns its commit point; once this member has
    /// applied up to it, a local read sees every write acknowledged before the read began.
    pub async fn read_index(&self) -> Result<()> {
        let work = async {
            let index = self.next_read_round().await?;
            let mut applied = self.applied.clone();
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| StoreError::Stopped)?;
            Ok(())
        };
        tokio::time::timeout(self.request_timeout, work)
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    /// The commit point confirmed by the next read round of [`run_read_loop`], which every
    /// read waiting when it starts shares.
    async fn next_read_round(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.read_waiters.lock().push(tx);
        self.read_wake.notify_one();
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// A follower's `ReadIndex` RPC, served by the leader. It joins the leader's own read
    /// rounds rather than confirming leadership once per RPC: with reads spread over all
    /// members, each follower's round would otherwise cost the leader a heartbeat to
    /// every member, and its own reads another.
    pub(crate) async fn serve_read_index(&self) -> Result<u64> {
        if !self.is_leader() {
            return Err(StoreError::NoLeader);
        }
        tokio::time::timeout(self.request_timeout, self.next_read_round())
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    /// One read barrier: the leader's confirmed commit point (see [`Self::read_index`]).
    async fn read_barrier(&self) -> Result<u64> {
        let work = async {
            loop {
                let leader = self.leader().ok_or(StoreError::NoLeader)?;
                if leader == self.id {
                    return match self.raft.ensure_linearizable().await {
                        Ok(l) => Ok(l.map(|l| l.index).unwrap_or(0)),
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))
                        | Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                            Err(StoreError::NoLeader)
                        }
                        Err(_) => Err(StoreError::Stopped),
                    };
                }
                let c = self.leader_client(leader)?;
                // Unlike a write, a read index is safe to ask again: the new leader's
                // commit point, confirmed after this round began, serves every read
                // waiting in it. So a leader change retries instead of failing.
                tokio::select! {
                    r = network::read_index(c, self.request_timeout) => return r,
                    () = self.leader_changed_from(leader) => {}
                }
            }
        };
        tokio::time::timeout(self.request_timeout, work)
            .await
            .map_err(|_| StoreError::Timeout)?
    }
}

/// Serves linearizable reads in rounds, as etcd's `linearizableReadLoop` does: every
/// read waiting when a round starts shares that round's single barrier (one quorum
/// confirmation on the leader, one `ReadIndex` RPC from a follower) instead of paying
/// for its own. A read that arrives during a round waits for the next one, so its
/// barrier always starts after the read did, which is what makes it linearizable.
async fn run_read_loop(node: Weak<RaftNode>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let wake = n.read_wake.clone();
        drop(n);
        wake.notified().await;
        let Some(n) = node.upgrade() else { return };
        let waiters = std::mem::take(&mut *n.read_waiters.lock());
        if waiters.is_empty() {
            continue;
        }
        let r = n.read_barrier().await;
        for w in waiters {
            let _ = w.send(r.clone());
        }
    }
}

/// openraft's `(election_timeout_min, election_timeout_max)` for etcd's
/// `--election-timeout` and `--heartbeat-interval` (see where `RaftNode::start` uses it).
fn election_bounds(election_timeout_ms: u64, heartbeat_ms: u64) -> (u64, u64) {
    let min = (election_timeout_ms / 4).max(heartbeat_ms * 2);
    let max = (election_timeout_ms / 2).max(min + heartbeat_ms);
    (min, max)
}

/// Requests waiting for [`run_batcher`]: one client request of this member, or (on the
/// leader) a batch a follower forwarded. `submitted` says whether the entry they joined
/// reached the log; each result comes from its proposer's own apply, through a waiter.
struct Queued {
    /// Each stamped with the member that proposed it.
    items: Vec<rpb::ProposalItem>,
    /// The items' encoded requests, summed.
    bytes: usize,
    /// Whether a follower forwarded these (see [`RaftNode::submit`]).
    forwarded: bool,
    submitted: oneshot::Sender<Result<()>>,
}

/// Batches in flight at once; while all are, new proposals queue and form the next.
const MAX_INFLIGHT_BATCHES: usize = 4;
/// Bounds of one batch: requests, and encoded bytes. A batch takes what is queued
/// until it reaches either, so one queued item (or forwarded batch) may exceed them.
const MAX_BATCH_ITEMS: usize = 512;
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Turns concurrent proposals into few log entries, as etcd's raft loop turns all the
/// proposals of one Ready into one append. openraft 0.9 runs its whole engine (append,
/// replication, commit, apply) once per `client_write`, and a follower forwards each
/// write in its own RPC, so one entry per client write costs a cluster most of its
/// throughput. With at most [`MAX_INFLIGHT_BATCHES`] batches in flight, proposals
/// arriving meanwhile wait and leave together, so batches grow with the load while a
/// lone write still goes out at once. On the leader the batches its followers forward
/// queue here too, so the whole cluster's writes share entries: with clients spread
/// over three members, entries per write fell to about a third (BENCHMARKS.md).
async fn run_batcher(node: Weak<RaftNode>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_BATCHES));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut count = first.items.len();
        let mut queued = vec![first];
        while count < MAX_BATCH_ITEMS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) => {
                    bytes += q.bytes;
                    count += q.items.len();
                    queued.push(q);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        let forwarded = queued.iter().any(|q| q.forwarded);
        let mut items = Vec::with_capacity(count);
        let mut senders = Vec::with_capacity(queued.len());
        for q in queued {
            items.extend(q.items);
            senders.push(q.submitted);
        }
        let m = &*crate::metrics::METRICS;
        m.proposal_batch_size.observe(items.len() as f64);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let proposal = rpb::Proposal {
                member: node.id,
                seq: 0,
                request: Vec::new(),
                items,
            };
            let r = node.submit(proposal, forwarded).await;
            m.proposal_submit.observe(started.elapsed().as_secs_f64());
            drop(permit);
            for s in senders {
                let _ = s.send(r.clone());
            }
        });
    }
}

#[cfg(test)]
mod election_tests {
    use super::election_bounds;

    #[test]
    fn detection_window_tracks_etcds_election_timeout() {
        // etcd's defaults: a follower campaigns 0.75-1 s after the last heartbeat
        // (lease = max, plus a random timeout in [min, max)).
        let (min, max) = election_bounds(1000, 100);
        assert_eq!((min, max), (250, 500));
        assert_eq!((max + min, max + max), (750, 1000));
        // Tight settings still satisfy openraft's heartbeat < min < max.
        let (min, max) = election_bounds(300, 100);
        assert!(100 < min && min < max, "{min} {max}");
    }
}
