//! The etcd server: configuration, the proposal pipeline into the apply path, and the
//! gRPC services (one file each) that etcd clients talk to.

pub mod auth;
pub mod cluster;
pub mod gateway;
pub mod http;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_proto::etcdserverpb as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::apply::{ApplyRequest, ApplyResponse, Op, StateMachine};
use crate::engine::rocks::RocksEngine;
use crate::engine::Engine;
use crate::error::{Result, StoreError};
use crate::raft::RaftNode;

/// gRPC framing overhead allowed on top of `max_request_bytes` (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// A member's configuration, with etcd's flag names and defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_cluster_state: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Entries applied since the last Raft snapshot that trigger a new one (etcd's
    /// `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept in the Raft log behind a snapshot, so a slightly slow follower
    /// catches up from the log rather than by a snapshot (etcd's
    /// `--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    pub quota_backend_bytes: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often remaining lease TTLs are checkpointed.
    pub lease_checkpoint_interval: Duration,
    /// How often watchers asking for it get a progress notification when idle
    /// (etcd's `--experimental-watch-progress-notify-interval`).
    pub watch_progress_notify_interval: Duration,
    /// Run the Raft log even when `--initial-cluster` names one member, so members can
    /// be added later (`capstan server --cluster-init`); a single member without it
    /// has no log to replicate and answers `member add` with "not capable".
    pub raft: bool,
    /// A secret every peer request carries and the peer service demands (capstan
    /// server's join secret), so only members of the cluster reach Raft. Not part of
    /// etcd, which secures peers with TLS; the secret itself travels unencrypted.
    pub peer_secret: Option<String>,
    /// TLS on the client listeners (`--cert-file`, `--key-file`, `--trusted-ca-file`,
    /// `--client-cert-auth`): used for the `https://` ones.
    pub client_tls: crate::tls::TlsInfo,
    /// TLS on the peer listeners and for dialing peers (`--peer-cert-file`, ...).
    pub peer_tls: crate::tls::TlsInfo,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "default".into(),
            data_dir: PathBuf::from("default.etcd"),
            listen_client_urls: vec!["http://localhost:2379".into()],
            advertise_client_urls: vec!["http://localhost:2379".into()],
            listen_peer_urls: vec!["http://localhost:2380".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_cluster_state: "new".into(),
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            max_request_bytes: 1024 * 1024 + 512 * 1024,
            max_txn_ops: 128,
            lease_checkpoint_interval: Duration::from_secs(300),
            watch_progress_notify_interval: Duration::from_secs(600),
            raft: false,
            peer_secret: None,
            client_tls: Default::default(),
            peer_tls: Default::default(),
        }
    }
}

impl Config {
    /// The shortest lease TTL, derived from the election timeout as etcd does
    /// (`3/2 * election timeout`, rounded up to seconds).
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.election_timeout_ms * 3 / 2;
        ms.div_ceil(1000).max(1) as i64
    }

    /// Checks the listener URLs against the TLS flags, as etcd does before it opens
    /// anything (an `https://` URL needs a certificate).
    pub fn check_tls(&self) -> Result<()> {
        use crate::tls::check_urls;
        let client = "--cert-file, --key-file";
        let peer = "--peer-cert-file, --peer-key-file";
        check_urls(&self.listen_client_urls, &self.client_tls, "client", client)?;
        check_urls(&self.listen_peer_urls, &self.peer_tls, "peer", peer)?;
        if self
            .listen_client_urls
            .iter()
            .any(|u| crate::tls::is_https(u))
        {
            self.client_tls.server_config(client)?;
        }
        if self
            .listen_peer_urls
            .iter()
            .any(|u| crate::tls::is_https(u))
        {
            self.peer_tls.server_config(peer)?;
            self.peer_tls.client_config(peer)?;
        }
        Ok(())
    }
}

/// Parses an etcd URL (`http://host:port`) into a socket address to bind.
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("unix://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|_| StoreError::InvalidArgument(format!("invalid URL {url:?}")))
}

pub(crate) fn hash_id(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or_default())
}

struct Proposal {
    req: ApplyRequest,
    done: oneshot::Sender<Result<ApplyResponse>>,
}

/// Where proposals go: the single member's group-commit queue, or the Raft log when
/// `--initial-cluster` names more than one member.
enum Log {
    Local(mpsc::Sender<Proposal>),
    Raft(Arc<RaftNode>),
}

/// One member: the state machine plus its identity and proposal log. Every gRPC
/// service holds an `Arc` of it.
pub struct EtcdServer {
    pub cfg: Config,
    pub sm: Arc<StateMachine>,
    pub member_id: u64,
    pub cluster_id: u64,
    log: Log,
}

fn open_engine(cfg: &Config) -> Result<Arc<dyn Engine>> {
    let dir = cfg.data_dir.join("member").join("db");
    std::fs::create_dir_all(&dir)
        .map_err(|e| StoreError::Engine(format!("{}: {e}", dir.display())))?;
    Ok(Arc::new(RocksEngine::open(&dir)?))
}

impl EtcdServer {
    /// Starts a member: the single-member path ([`EtcdServer::open`]) when
    /// `--initial-cluster` names one member (and [`Config::raft`] is off), a Raft
    /// member (serving the peer API on `--listen-peer-urls`) otherwise.
    pub async fn start(cfg: Config) -> Result<Arc<Self>> {
        cfg.check_tls()?;
        if !cfg.raft && crate::raft::parse_initial_cluster(&cfg.initial_cluster)?.len() <= 1 {
            return Self::open(cfg);
        }
        let engine = open_engine(&cfg)?;
        let sm = Arc::new(StateMachine::open(engine, cfg.min_lease_ttl())?);
        let node = RaftNode::start(&cfg, sm.clone()).await?;
        let srv = Arc::new(Self {
            cfg,
            sm,
            member_id: node.id,
            cluster_id: node.cluster_id,
            log: Log::Raft(node.clone()),
        });
        node.set_server(&srv);
        sm_lease_owner(srv.clone());
        publish(srv.clone());
        Ok(srv)
    }

    /// Opens the data dir and starts the applier of a single member. Must run inside a
    /// tokio runtime.
    pub fn open(cfg: Config) -> Result<Arc<Self>> {
        let engine = open_engine(&cfg)?;
        Self::with_engine(cfg, engine)
    }

    /// Like [`EtcdServer::open`] on any engine.
    pub fn with_engine(cfg: Config, engine: Arc<dyn Engine>) -> Result<Arc<Self>> {
        let sm = Arc::new(StateMachine::open(engine, cfg.min_lease_ttl())?);
        let peer = cfg.initial_advertise_peer_urls.join(",");
        let member_id = hash_id(&[&peer, &cfg.initial_cluster_token]);
        let cluster_id = hash_id(&[&cfg.initial_cluster, &cfg.initial_cluster_token]);
        let (tx, rx) = mpsc::channel(16 * 1024);
        let applier_sm = sm.clone();
        std::thread::Builder::new()
            .name("applier".into())
            .spawn(move || run_applier(applier_sm, rx))
            .map_err(|e| StoreError::Engine(format!("spawn applier: {e}")))?;
        let srv = Arc::new(Self {
            cfg,
            sm,
            member_id,
            cluster_id,
            log: Log::Local(tx),
        });
        sm_lease_owner(srv.clone());
        Ok(srv)
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.term(),
        }
    }

    /// The Raft term (a single member stays in the term it elected itself in).
    pub fn term(&self) -> u64 {
        match &self.log {
            Log::Local(_) => 2,
            Log::Raft(r) => r.term(),
        }
    }

    /// The leader's member id (0: none known).
    pub fn leader_id(&self) -> u64 {
        match &self.log {
            Log::Local(_) => self.member_id,
            Log::Raft(r) => r.leader().unwrap_or(0),
        }
    }

    /// Whether this member leads (and so owns the lease clock).
    pub fn is_leader(&self) -> bool {
        match &self.log {
            Log::Local(_) => true,
            Log::Raft(r) => r.is_leader(),
        }
    }

    /// The index of the last entry in this member's log.
    pub fn raft_index(&self) -> u64 {
        match &self.log {
            // A single member commits what it applies.
            Log::Local(_) => self.sm.applied_index(),
            Log::Raft(r) => r.last_log_index(),
        }
    }

    /// The index of the last log entry applied on this member.
    pub fn raft_applied_index(&self) -> u64 {
        match &self.log {
            Log::Local(_) => self.sm.applied_index(),
            Log::Raft(r) => r.applied_index(),
        }
    }

    /// Waits until a read on this member is linearizable: every write acknowledged
    /// before this call (by any member) is applied here. A single member applies before
    /// it acknowledges, so it needs no wait; a Raft member asks the leader for a read
    /// index (see `RaftNode::read_index`).
    pub async fn linearizable_read(&self) -> Result<()> {
        match &self.log {
            Log::Local(_) => Ok(()),
            Log::Raft(r) => r.read_index().await,
        }
    }

    /// Completes a header the apply path filled with a revision only.
    pub fn fill(&self, h: &mut Option<pb::ResponseHeader>) {
        let rev = h
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.current_rev());
        *h = Some(self.header(rev));
    }

    /// The newest durable revision.
    pub fn current_rev(&self) -> i64 {
        use crate::mvcc::KvRead;
        self.sm.mvcc.current_rev()
    }

    /// Whether this member is a learner (it then serves only serializable reads and
    /// Status, as etcd's learner).
    pub fn is_learner(&self) -> bool {
        match &self.log {
            Log::Local(_) => false,
            Log::Raft(r) => r.is_learner(),
        }
    }

    /// The Raft node, when this member is part of a Raft cluster.
    pub fn raft(&self) -> Option<&Arc<RaftNode>> {
        match &self.log {
            Log::Local(_) => None,
            Log::Raft(r) => Some(r),
        }
    }

    /// Resolves when this member was removed from its cluster (never for a single
    /// member); the process then stops, as etcd's does.
    pub async fn removed(&self) {
        match &self.log {
            Log::Local(_) => std::future::pending().await,
            Log::Raft(r) => r.removed().await,
        }
    }

    /// Every member as the Cluster API lists them, by id: peer URLs and learner status
    /// from the Raft membership, name and client URLs as each member published them
    /// (empty until a member added with `member add` has started, as in etcd).
    pub fn members(&self) -> Vec<pb::Member> {
        let Log::Raft(r) = &self.log else {
            return vec![self.member()];
        };
        r.members()
            .into_iter()
            .map(|m| {
                let attr = self
                    .sm
                    .mvcc
                    .engine()
                    .get(
                        crate::engine::Cf::Meta,
                        &crate::apply::member_attr_key(m.id),
                    )
                    .ok()
                    .flatten()
                    .and_then(|v| pb::Member::decode(v.as_slice()).ok());
                let (name, client_ur_ls) = match attr {
                    Some(a) => (a.name, a.client_ur_ls),
                    None => (m.name, Vec::new()),
                };
                pb::Member {
                    id: m.id,
                    name,
                    peer_ur_ls: m.peer_urls,
                    client_ur_ls,
                    is_learner: m.is_learner,
                }
            })
            .collect()
    }

    /// This member as the Cluster API describes it.
    pub fn member(&self) -> pb::Member {
        pb::Member {
            id: self.member_id,
            name: self.cfg.name.clone(),
            peer_ur_ls: self.cfg.initial_advertise_peer_urls.clone(),
            client_ur_ls: self.cfg.advertise_client_urls.clone(),
            is_learner: false,
        }
    }

    /// Proposes a change and waits until it is applied and durable.
    pub async fn propose(&self, op: Op) -> Result<ApplyResponse> {
        let writes = matches!(&op, Op::Put(_) | Op::Txn(_) | Op::LeaseGrant(_));
        let req = ApplyRequest { op: Some(op) };
        if req.encoded_len() > self.cfg.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        if writes {
            if self.sm.no_space() {
                return Err(StoreError::NoSpace);
            }
            let size = self.sm.mvcc.engine().size_bytes() + req.encoded_len() as u64;
            if size > self.cfg.quota_backend_bytes {
                let alarm = pb::AlarmRequest {
                    action: pb::alarm_request::AlarmAction::Activate as i32,
                    member_id: self.member_id,
                    alarm: pb::AlarmType::Nospace as i32,
                };
                tracing::warn!(
                    size,
                    quota = self.cfg.quota_backend_bytes,
                    "backend quota exceeded: raising NOSPACE"
                );
                Box::pin(self.propose(Op::Alarm(alarm))).await?;
                return Err(StoreError::NoSpace);
            }
        }
        let proposals = match &self.log {
            Log::Local(q) => q,
            Log::Raft(r) => return r.propose(&req).await,
        };
        let (done, rx) = oneshot::channel();
        proposals
            .send(Proposal { req, done })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The single member's log: drains queued proposals into one batch (group commit), applies
/// it with one fsync, then answers every proposer.
fn run_applier(sm: Arc<StateMachine>, mut rx: mpsc::Receiver<Proposal>) {
    const MAX_BATCH: usize = 1024;
    let mut next = sm.applied_index() + 1;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let entries: Vec<(u64, &ApplyRequest)> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| (next + i as u64, &p.req))
            .collect();
        let started = std::time::Instant::now();
        let applied = sm.apply_batch(&entries, true);
        let m = &*crate::metrics::METRICS;
        m.backend_commit.observe(started.elapsed().as_secs_f64());
        m.apply_batch_size.observe(batch.len() as f64);
        m.proposals_committed.inc_by(batch.len() as u64);
        match applied {
            Ok(results) => {
                next += batch.len() as u64;
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.done.send(r.unwrap_or(Err(StoreError::Stopped)));
                }
            }
            Err(e) => {
                // The engine failed mid-apply: memory and disk may disagree, so the only
                // safe move is to stop and let restart rebuild from disk (as etcd panics).
                tracing::error!(error = %e, "apply failed; stopping the member");
                for p in batch {
                    let _ = p.done.send(Err(e.clone()));
                }
                std::process::exit(1);
            }
        }
    }
}

/// A Raft member publishes its name and client URLs through the log once it runs
/// (etcd's `publish`), so every member lists them; retried until it is applied.
fn publish(srv: Arc<EtcdServer>) {
    let weak = Arc::downgrade(&srv);
    let attr = pb::Member {
        id: srv.member_id,
        name: srv.cfg.name.clone(),
        client_ur_ls: srv.cfg.advertise_client_urls.clone(),
        ..Default::default()
    };
    tokio::spawn(async move {
        loop {
            let Some(srv) = weak.upgrade() else { return };
            match srv.propose(Op::MemberAttr(attr.clone())).await {
                Ok(_) => {
                    tracing::info!(member = %format!("{:x}", srv.member_id), name = %attr.name, client_urls = ?attr.client_ur_ls, "published member attributes");
                    return;
                }
                Err(e) => {
                    tracing::debug!(member = %format!("{:x}", srv.member_id), error = %e, "publishing member attributes; retrying")
                }
            }
            drop(srv);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// The lease clock owner: revokes expired leases and checkpoints remaining TTLs, both
/// through the apply path.
fn sm_lease_owner(srv: Arc<EtcdServer>) {
    let weak = Arc::downgrade(&srv);
    let checkpoint_every = srv.cfg.lease_checkpoint_interval;
    let raft = srv.raft().is_some();
    let extend = Duration::from_millis(srv.cfg.election_timeout_ms);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_checkpoint = tokio::time::Instant::now();
        let mut was_leader = false;
        loop {
            tick.tick().await;
            let Some(srv) = weak.upgrade() else { return };
            // Only the leader's clock decides expiry (as in etcd's lessor): followers
            // apply the revokes and checkpoints it proposes.
            let leader = srv.is_leader();
            if raft && leader && !was_leader {
                // A new leader cannot know how long the old one's clock had left (and
                // renewals went to the old leader): every lease restarts from its TTL
                // plus an election timeout, as etcd's `Promote` does, before any
                // expiry is decided.
                srv.sm.lessor.promote(extend);
                tracing::info!(member = %format!("{:x}", srv.member_id), term = srv.term(), "became leader: lease deadlines extended");
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            let now = std::time::Instant::now();
            for id in srv.sm.lessor.expired(now) {
                tracing::debug!(lease = id, "lease expired: revoking");
                if let Err(e) = srv
                    .propose(Op::LeaseRevoke(pb::LeaseRevokeRequest { id }))
                    .await
                {
                    if e != StoreError::LeaseNotFound {
                        tracing::warn!(lease = id, error = %e, "revoking expired lease failed");
                    }
                }
            }
            if last_checkpoint.elapsed() >= checkpoint_every {
                last_checkpoint = tokio::time::Instant::now();
                let checkpoints: Vec<pb::LeaseCheckpoint> = srv
                    .sm
                    .lessor
                    .to_checkpoint(now)
                    .into_iter()
                    .map(|(id, remaining_ttl)| pb::LeaseCheckpoint { id, remaining_ttl })
                    .collect();
                if !checkpoints.is_empty() {
                    let req = pb::LeaseCheckpointRequest { checkpoints };
                    if let Err(e) = srv.propose(Op::LeaseCheckpoint(req)).await {
                        tracing::warn!(error = %e, "lease checkpoint failed");
                    }
                }
            }
        }
    });
}

impl EtcdServer {
    /// The user a request acts as: the token's user, else (with `--client-cert-auth`)
    /// the common name of the client certificate the connection was verified with, as
    /// etcd's `AuthInfoFromTLS`; `None` when auth is off or neither names one (a
    /// permission check then fails with etcd's "user name is empty").
    pub fn auth_user<T>(&self, req: &tonic::Request<T>) -> Result<Option<String>> {
        if !self.sm.auth.is_enabled() {
            return Ok(None);
        }
        let md = req.metadata();
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok());
        if let Some(t) = token {
            return Ok(Some(self.sm.auth.user_from_token(t)?));
        }
        if !self.cfg.client_tls.client_cert_auth {
            return Ok(None);
        }
        Ok(req
            .peer_certs()
            .and_then(|chain| chain.first().and_then(|c| crate::tls::common_name(c))))
    }
}

/// Serves the etcd v3 API on every `--listen-client-urls` address until `shutdown`
/// resolves.
pub async fn serve(
    srv: Arc<EtcdServer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use capstan_proto::etcdserverpb::kv_server::KvServer;
    use capstan_proto::etcdserverpb::watch_server::WatchServer;
    let limit = srv.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let mut tasks = Vec::new();
    for url in &srv.cfg.listen_client_urls {
        let addr = parse_url(url)?;
        let tls = crate::tls::is_https(url)
            .then(|| srv.cfg.client_tls.server_config("--cert-file, --key-file"))
            .transpose()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(member = %format!("{:x}", srv.member_id), %addr, tls = tls.is_some(),
            client_cert_auth = tls.is_some() && srv.cfg.client_tls.client_cert_auth, "serving client requests");
        let router = tonic::transport::Server::builder()
            .layer(learner::LearnerGuardLayer { srv: srv.clone() })
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // HTTP/1.1 for /health, /version and /metrics (see `http`).
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(http::router(
                srv.clone(),
                gateway::Gateway {
                    srv: srv.clone(),
                    watch: watch::WatchService::new(srv.clone(), shutdown.clone()),
                },
            )))
            .add_service(
                capstan_proto::etcdserverpb::auth_server::AuthServer::new(auth::AuthService {
                    srv: srv.clone(),
                })
                .max_decoding_message_size(limit),
            )
            .add_service(
                KvServer::new(kv::KvService { srv: srv.clone() })
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                WatchServer::new(watch::WatchService::new(srv.clone(), shutdown.clone()))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(pb::lease_server::LeaseServer::new(lease::LeaseService {
                srv: srv.clone(),
            }))
            .add_service(pb::maintenance_server::MaintenanceServer::new(
                maintenance::MaintenanceService { srv: srv.clone() },
            ))
            .add_service(pb::cluster_server::ClusterServer::new(
                cluster::ClusterService { srv: srv.clone() },
            ));
        let sd = shutdown.clone();
        tasks.push(match tls {
            Some(cfg) => {
                tokio::spawn(router.serve_with_incoming_shutdown(
                    crate::tls::incoming(listener, cfg, "client"),
                    sd,
                ))
            }
            None => {
                // Set here: the builder's `tcp_nodelay` is ignored for a caller-supplied
                // listener, and Nagle delays a response queued behind a watch event on
                // the same connection.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, sd))
            }
        });
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
