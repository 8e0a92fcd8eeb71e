//! Outgoing peer traffic: openraft's `RaftNetwork` over tonic (the `raftpb.Raft`
//! service on each member's peer URL), plus the Forward and ReadIndex calls a follower
//! makes to its leader. Connections are lazy and cached per member, so a member that is
//! down costs a failed connect, not a stalled start-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_proto::raftpb as rpb;
use capstan_proto::raftpb::raft_client::RaftClient;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use super::{convert, Member, TypeConfig};
use crate::error::{Result, StoreError};

type C = TypeConfig;

/// A client of a member's peer service, every request carrying the peer secret.
pub type PeerRaftClient = RaftClient<InterceptedService<Channel, PeerAuth>>;

/// Adds `authorization: Bearer <peer secret>` to every outgoing peer request (see
/// [`crate::Config::peer_secret`]); nothing without a secret.
#[derive(Clone, Default)]
pub struct PeerAuth(Option<MetadataValue<Ascii>>);

impl PeerAuth {
    pub fn new(secret: Option<&str>) -> Result<PeerAuth> {
        secret
            .map(|s| {
                format!("Bearer {s}")
                    .parse()
                    .map_err(|_| StoreError::InvalidArgument("peer secret: not ASCII".into()))
            })
            .transpose()
            .map(PeerAuth)
    }
}

impl Interceptor for PeerAuth {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The peer service's check of [`PeerAuth`]: with a secret configured, a request
/// without it is refused (Unauthenticated) before it reaches Raft. Compares digests,
/// so the time taken says nothing about a guess.
#[derive(Clone)]
pub struct PeerCheck(Option<[u8; 32]>);

impl PeerCheck {
    pub fn new(secret: Option<&str>) -> PeerCheck {
        PeerCheck(secret.map(|s| digest(format!("Bearer {s}").as_bytes())))
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

impl Interceptor for PeerCheck {
    fn call(
        &mut self,
        req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let Some(want) = &self.0 else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .map(|v| digest(v.as_bytes()));
        if got.as_ref() == Some(want) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "peer request without the cluster's peer secret",
            ))
        }
    }
}

/// How this member dials its peers: the peer secret on every request and, with peer
/// TLS configured, its peer certificate (`https://` peer URLs only, as etcd's peer
/// transport).
#[derive(Clone, Default)]
pub struct PeerDialer {
    pub auth: PeerAuth,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerDialer {
    pub fn new(cfg: &crate::Config) -> Result<PeerDialer> {
        Ok(PeerDialer {
            auth: PeerAuth::new(cfg.peer_secret.as_deref())?,
            // As the listener: certificates with only http:// peer URLs are ignored.
            tls: (cfg.peer_tls.is_set()
                && cfg.listen_peer_urls.iter().any(|u| crate::tls::is_https(u)))
            .then(|| {
                cfg.peer_tls
                    .client_config("--peer-cert-file, --peer-key-file")
            })
            .transpose()?,
        })
    }
}

/// A client of the peer service at `url` (connected on first use).
pub fn client_at(url: &str, dialer: &PeerDialer) -> Result<PeerRaftClient> {
    let bad =
        |e: tonic::transport::Error| StoreError::InvalidArgument(format!("peer URL {url:?}: {e}"));
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url.replace("localhost", "127.0.0.1"))
            .map_err(bad)?;
    if let Some(tls) = &dialer.tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_lazy();
    Ok(RaftClient::with_interceptor(channel, dialer.auth.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Lazily connected clients of the other members, by node id (with the URL each was
/// connected to, so a member whose peer URLs were updated is reconnected).
#[derive(Default)]
pub struct Peers {
    clients: Mutex<HashMap<u64, (String, PeerRaftClient)>>,
    pub dialer: PeerDialer,
}

impl Peers {
    pub fn new(dialer: PeerDialer) -> Peers {
        Peers {
            clients: Mutex::default(),
            dialer,
        }
    }

    /// A client of `node` (connected on first use).
    pub fn client(&self, id: u64, node: &Member) -> Result<PeerRaftClient> {
        let mut clients = self.clients.lock();
        let url = node
            .peer_urls
            .first()
            .ok_or_else(|| StoreError::InvalidArgument(format!("member {id:x} has no peer URL")))?;
        if let Some((u, c)) = clients.get(&id) {
            if u == url {
                return Ok(c.clone());
            }
        }
        let c = client_at(url, &self.dialer)?;
        clients.insert(id, (url.clone(), c.clone()));
        Ok(c)
    }
}

/// What a failed call to the leader means for the client: the leader's own verdict when
/// it gave one, otherwise (unreachable, crashed) that there is no usable leader.
pub fn leader_error(status: &tonic::Status) -> StoreError {
    for e in [
        StoreError::Timeout,
        StoreError::Stopped,
        StoreError::NoLeader,
        StoreError::TimeoutDueToLeaderFail,
    ] {
        if status.message() == e.to_string() {
            return e;
        }
    }
    StoreError::NoLeader
}

/// What a failed membership change at the leader means for the client: the leader's
/// verdict (member not found, peer URLs taken, ...) when it gave one.
pub fn member_error(status: &tonic::Status) -> StoreError {
    for e in [
        StoreError::MemberNotFound,
        StoreError::PeerUrlExist,
        StoreError::MemberExist,
        StoreError::MemberBadUrls,
        StoreError::MemberNotLearner,
        StoreError::LearnerNotReady,
        StoreError::TooManyLearners,
        StoreError::NotEnoughStartedMembers,
    ] {
        if status.message() == e.to_string() {
            return e;
        }
    }
    if status.code() == tonic::Code::InvalidArgument {
        return StoreError::InvalidArgument(status.message().to_string());
    }
    leader_error(status)
}

/// openraft's network factory: one [`PeerClient`] per target.
pub struct Network {
    pub peers: Arc<Peers>,
    /// Set when a peer refuses this member's vote because it was removed.
    pub removed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl RaftNetworkFactory<C> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient {
            target,
            client: self.peers.client(target, node),
            removed: self.removed.clone(),
        }
    }
}

/// The connection to one member.
pub struct PeerClient {
    target: u64,
    client: Result<PeerRaftClient>,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
}

fn unreachable<E: std::error::Error>(
    e: impl std::error::Error + 'static,
) -> RPCError<u64, Member, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn network<E: std::error::Error>(e: impl std::error::Error + 'static) -> RPCError<u64, Member, E> {
    RPCError::Network(NetworkError::new(&e))
}

/// A transport failure means the peer is unreachable (openraft backs off); anything the
/// peer answered with is a network error (retried at once).
fn status_err<E: std::error::Error>(s: tonic::Status) -> RPCError<u64, Member, E> {
    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded {
        unreachable(s)
    } else {
        network(s)
    }
}

impl PeerClient {
    // The error is openraft's RPCError, large by openraft's design.
    #[allow(clippy::result_large_err)]
    fn client<E: std::error::Error>(&self) -> Result<PeerRaftClient, RPCError<u64, Member, E>> {
        self.client.clone().map_err(unreachable)
    }
}

impl RaftNetwork<C> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let mut c = self.client()?;
        let mut req = tonic::Request::new(convert::append_req_to_pb(rpc));
        req.set_timeout(option.hard_ttl());
        let resp = c.append_entries(req).await.map_err(status_err)?;
        convert::append_resp_from_pb(resp.get_ref()).map_err(network)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        let mut c = self.client()?;
        let mut req = tonic::Request::new(convert::snapshot_req_to_pb(&rpc));
        req.set_timeout(option.hard_ttl());
        let resp = c.install_snapshot(req).await.map_err(status_err)?;
        convert::snapshot_resp_from_pb(resp.get_ref()).map_err(network)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let mut c = self.client()?;
        let mut req = tonic::Request::new(convert::vote_req_to_pb(&rpc));
        req.set_timeout(option.hard_ttl());
        let resp = match c.vote(req).await {
            Ok(r) => r,
            Err(s) => {
                // The peer's committed membership no longer has this member: it was
                // removed while it could not hear about it (etcd's peers answer a
                // removed member the same way, and it exits).
                if s.message() == StoreError::MemberRemoved.to_string()
                    && !self.removed.send_replace(true)
                {
                    tracing::error!(peer = %format!("{:x}", self.target), "{}", StoreError::MemberRemoved);
                }
                return Err(status_err(s));
            }
        };
        tracing::trace!(
            target_member = self.target,
            granted = resp.get_ref().vote_granted,
            "vote answered"
        );
        convert::vote_resp_from_pb(resp.get_ref()).map_err(network)
    }
}

/// Asks the leader to append a client's write; returns once it is committed and applied
/// on the leader.
pub async fn forward(
    mut c: PeerRaftClient,
    proposal: rpb::Proposal,
    timeout: Duration,
) -> Result<()> {
    let mut req = tonic::Request::new(rpb::ForwardRequest {
        proposal: Some(proposal),
    });
    req.set_timeout(timeout);
    c.forward(req).await.map_err(|s| leader_error(&s))?;
    Ok(())
}

/// Asks the leader for a read index (see `RaftNode::read_index`).
pub async fn read_index(mut c: PeerRaftClient, timeout: Duration) -> Result<u64> {
    let mut req = tonic::Request::new(rpb::ReadIndexRequest {});
    req.set_timeout(timeout);
    let r = c.read_index(req).await.map_err(|s| leader_error(&s))?;
    Ok(r.get_ref().index)
}
