//! Cluster membership on Raft, as etcd's Cluster API and `MoveLeader` present it.
//!
//! - **Identity.** A founding member (`--initial-cluster-state new`) computes its id and
//!   the cluster id from the flags. A member added later (`member add`, then started
//!   with `--initial-cluster-state existing`) asks a peer from `--initial-cluster` for
//!   the membership and finds itself by its peer URLs, as etcd's new member fetches the
//!   cluster from its peers; it never calls `initialize` but waits for the leader to
//!   replicate the log to it. Either way the identity is kept in
//!   `<data-dir>/member/identity`, so a restart does not depend on the flags.
//! - **Changes.** Members are openraft nodes; learners are non-voting nodes. Add is
//!   `add_learner` (non-blocking: the new member usually is not running yet) plus
//!   `change_membership` to a voter unless `--learner`; remove, promote and peer-URL
//!   updates are `change_membership` too. Only the leader changes membership, so any
//!   other member forwards the request (`ChangeMembers`) and then waits until its own
//!   log holds the change, so its answer lists the new membership.
//! - **Removal.** A removed member stops (etcd exits with "the member has been
//!   permanently removed from the cluster"). It learns it from the leader (`Removed`),
//!   from its own committed membership, or, if it was down, from the members refusing
//!   its vote requests once it campaigns.
//! - **Leader transfer.** The leader waits until the transferee's log matches its own,
//!   stops heartbeats so the followers' leader lease runs out, and asks the transferee
//!   to campaign (`Campaign`) until it wins.
//! - **Leases.** Only the leader's clock renews leases, so a follower forwards
//!   keep-alives and time-to-live queries to it (`LeaseRenew`, `LeaseTtl`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use capstan_proto::raftpb as rpb;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership};

use super::{member_id, network, Member, RaftNode};
use crate::error::{Result, StoreError};
use crate::server::{hash_id, Config, EtcdServer};

/// etcd promotes a learner only when its log has at least this share of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;

/// etcd's limit on learners in a cluster (`maxLearners`).
const MAX_LEARNERS: usize = 1;

/// This member's `(id, cluster id)`: from the identity file when there is one, else
/// from the flags (a founding member) or from a peer (a member joining a running
/// cluster).
pub(super) async fn identity(cfg: &Config, me: &Member) -> Result<(u64, u64)> {
    let dir = cfg.data_dir.join("member");
    let path = dir.join("identity");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let mut it = s
            .split_whitespace()
            .map(|w| u64::from_str_radix(w, 16).ok());
        if let (Some(Some(id)), Some(Some(cluster))) = (it.next(), it.next()) {
            return Ok((id, cluster));
        }
        return Err(StoreError::Engine(format!(
            "{}: not a member identity",
            path.display()
        )));
    }
    let (id, cluster) = if cfg.initial_cluster_state == "existing" {
        join(cfg, me).await?
    } else {
        (
            member_id(me, &cfg.initial_cluster_token),
            hash_id(&[&cfg.initial_cluster, &cfg.initial_cluster_token]),
        )
    };
    std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&path, format!("{id:x} {cluster:x}\n")))
        .map_err(|e| StoreError::Engine(format!("{}: {e}", path.display())))?;
    Ok((id, cluster))
}

/// Asks the other members named in `--initial-cluster` for the membership and finds
/// this member in it by its peer URLs.
async fn join(cfg: &Config, me: &Member) -> Result<(u64, u64)> {
    let others: Vec<String> = super::parse_initial_cluster(&cfg.initial_cluster)?
        .into_iter()
        .filter(|m| m.name != me.name)
        .flat_map(|m| m.peer_urls)
        .collect();
    let mut want = me.peer_urls.clone();
    want.sort();
    let dialer = network::PeerDialer::new(cfg)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for url in &others {
            let Ok(mut c) = network::client_at(url, &dialer) else {
                continue;
            };
            let mut req = tonic::Request::new(rpb::MembersRequest {});
            req.set_timeout(Duration::from_secs(2));
            let Ok(resp) = c.members(req).await else {
                continue;
            };
            let resp = resp.into_inner();
            for m in &resp.members {
                let mut have = m.peer_urls.clone();
                have.sort();
                if have == want {
                    tracing::info!(member = %format!("{:x}", m.id), cluster = %format!("{:x}", resp.cluster_id), "joining the cluster as an added member");
                    return Ok((m.id, resp.cluster_id));
                }
            }
            // A member answered and we are not in its membership: `member add` first.
            return Err(StoreError::InvalidArgument(format!(
                "member with peer URLs {:?} is not in the cluster (add it with `member add` first)",
                me.peer_urls
            )));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StoreError::InvalidArgument(format!(
                "could not reach any member of the existing cluster at {others:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `url` is a `scheme://host:port` URL etcd accepts as a peer URL.
fn valid_peer_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut v = urls.to_vec();
    v.sort();
    v
}

/// openraft's refusal of a membership change, as the client sees it.
fn change_err(member: u64, e: RaftError<u64, ClientWriteError<u64, Member>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::LearnerNotFound(_),
        )) => StoreError::MemberNotFound,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::EmptyMembership(_),
        )) => StoreError::NotEnoughStartedMembers,
        e => {
            tracing::warn!(member = %format!("{member:x}"), error = %e, "membership change failed");
            StoreError::Timeout
        }
    }
}

/// One member as the Cluster API lists it, before its published attributes are added.
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

impl RaftNode {
    /// Connects the node to its server (for the lease requests the leader answers).
    pub fn set_server(&self, srv: &Arc<EtcdServer>) {
        let _ = self.server.set(Arc::downgrade(srv));
    }

    fn server(&self) -> Result<Arc<EtcdServer>> {
        self.server
            .get()
            .and_then(|w| w.upgrade())
            .ok_or(StoreError::Stopped)
    }

    /// The membership as this member's log has it (the newest entry, committed or not,
    /// as Raft uses it).
    pub fn membership(&self) -> Membership<u64, Member> {
        self.metrics.borrow().membership_config.membership().clone()
    }

    /// Every member (voters and learners), by id.
    pub fn members(&self) -> Vec<MemberView> {
        let m = self.membership();
        let voters: BTreeSet<u64> = m.voter_ids().collect();
        m.nodes()
            .map(|(id, n)| MemberView {
                id: *id,
                name: n.name.clone(),
                peer_urls: n.peer_urls.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Whether this member is a learner (a non-voting member).
    pub fn is_learner(&self) -> bool {
        let m = self.membership();
        m.get_node(&self.id).is_some() && !m.voter_ids().any(|v| v == self.id)
    }

    /// Resolves once this member knows it was removed from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Marks this member removed (it then stops serving).
    pub fn mark_removed(&self) {
        if !self.removed.send_replace(true) {
            tracing::error!(member = %format!("{:x}", self.id), "{}", StoreError::MemberRemoved);
        }
    }

    /// Watches this member's committed membership: once a member has belonged to it,
    /// a committed membership without it means it was removed. (A joining member's
    /// log starts with memberships from before it was added, hence "has belonged".)
    pub(super) fn watch_removal(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut was_member = false;
            loop {
                let Some(node) = weak.upgrade() else { return };
                {
                    let m = metrics.borrow_and_update();
                    let mc = &m.membership_config;
                    let member = mc.membership().get_node(&node.id).is_some();
                    let committed = match (mc.log_id(), m.last_applied) {
                        (Some(ml), Some(applied)) => ml.index <= applied.index,
                        _ => false,
                    };
                    if member {
                        was_member = true;
                    } else if was_member && committed {
                        node.mark_removed();
                        return;
                    }
                }
                drop(node);
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Whether a vote request from `candidate` comes from a member removed from the
    /// cluster: it is not in this member's committed membership, and its log ends
    /// before that membership's entry (so it cannot be a member added after it that
    /// this member has not heard of yet).
    pub(super) fn is_removed_peer(&self, candidate: u64, last_log_index: Option<u64>) -> bool {
        let m = self.metrics.borrow();
        let mc = &m.membership_config;
        let (Some(ml), Some(applied)) = (mc.log_id(), m.last_applied) else {
            return false;
        };
        ml.index <= applied.index
            && mc.membership().get_node(&candidate).is_none()
            && last_log_index.is_none_or(|i| i < ml.index)
    }

    /// The membership for a member that is joining (`Members`).
    pub(super) fn members_pb(&self) -> rpb::MembersResponse {
        rpb::MembersResponse {
            cluster_id: self.cluster_id,
            members: self
                .members()
                .into_iter()
                .map(|m| rpb::Member {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                })
                .collect(),
        }
    }

    /// Carries out a membership change through the leader; once this member's log has
    /// it, returns the leader's answer.
    pub async fn change_members(
        &self,
        req: rpb::ChangeMembersRequest,
    ) -> Result<rpb::ChangeMembersResponse> {
        let leader = self.leader().ok_or(StoreError::NoLeader)?;
        let resp = if leader == self.id {
            self.change_members_local(req).await?
        } else {
            let mut c = self.leader_client(leader)?;
            let mut r = tonic::Request::new(req);
            r.set_timeout(self.request_timeout);
            c.change_members(r)
                .await
                .map_err(|s| network::member_error(&s))?
                .into_inner()
        };
        let mut metrics = self.metrics.clone();
        let wait = metrics.wait_for(|m| {
            m.membership_config
                .log_id()
                .is_some_and(|l| l.index >= resp.index)
        });
        let _ = tokio::time::timeout(self.request_timeout, wait).await;
        Ok(resp)
    }

    /// A membership change on the leader (see [`RaftNode::change_members`]).
    pub(super) async fn change_members_local(
        &self,
        req: rpb::ChangeMembersRequest,
    ) -> Result<rpb::ChangeMembersResponse> {
        use rpb::change_members_request::Kind;
        let _guard = self.changing.lock().await;
        if !self.is_leader() {
            return Err(StoreError::NoLeader);
        }
        let m = self.membership();
        let voters: BTreeSet<u64> = m.voter_ids().collect();
        let kind = Kind::try_from(req.kind)
            .map_err(|_| StoreError::InvalidArgument(format!("unknown change {}", req.kind)))?;
        let url_taken = |urls: &[String], except: u64| {
            m.nodes()
                .any(|(id, n)| *id != except && n.peer_urls.iter().any(|u| urls.contains(u)))
        };
        let (id, index) = match kind {
            Kind::Add => {
                if req.peer_urls.is_empty() || !req.peer_urls.iter().all(|u| valid_peer_url(u)) {
                    return Err(StoreError::MemberBadUrls);
                }
                // Like etcd's, a new member's id includes the second it was added at,
                // so the same peer URLs can be added again after a removal; and like
                // etcd, an id clash is checked before the peer URLs.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default()
                    .to_string();
                let id = hash_id(&[&sorted(&req.peer_urls).join(","), &self.token, &now]);
                if m.get_node(&id).is_some() || id == 0 {
                    return Err(StoreError::MemberExist);
                }
                if url_taken(&req.peer_urls, 0) {
                    return Err(StoreError::PeerUrlExist);
                }
                if req.is_learner && m.nodes().count() - voters.len() >= MAX_LEARNERS {
                    return Err(StoreError::TooManyLearners);
                }
                let node = Member {
                    name: String::new(),
                    peer_urls: req.peer_urls.clone(),
                };
                // Not blocking: the new member is usually started only after this
                // answers, and the leader replicates to it from then on.
                let r = self
                    .raft
                    .add_learner(id, node, false)
                    .await
                    .map_err(|e| change_err(id, e))?;
                let mut index = r.log_id.index;
                if !req.is_learner {
                    let r = self
                        .raft
                        .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                        .await
                        .map_err(|e| change_err(id, e))?;
                    index = r.log_id.index;
                }
                tracing::info!(member = %format!("{id:x}"), peer_urls = ?req.peer_urls, learner = req.is_learner, index, "added member");
                (id, index)
            }
            Kind::Remove => {
                let id = req.id;
                let node = m.get_node(&id).cloned().ok_or(StoreError::MemberNotFound)?;
                let change = if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(StoreError::NotEnoughStartedMembers);
                    }
                    ChangeMembers::RemoveVoters([id].into())
                } else {
                    ChangeMembers::RemoveNodes([id].into())
                };
                let r = self
                    .raft
                    .change_membership(change, false)
                    .await
                    .map_err(|e| change_err(id, e))?;
                tracing::info!(member = %format!("{id:x}"), index = r.log_id.index, "removed member");
                self.tell_removed(id, node);
                (id, r.log_id.index)
            }
            Kind::Update => {
                let id = req.id;
                let old = m.get_node(&id).cloned().ok_or(StoreError::MemberNotFound)?;
                if req.peer_urls.is_empty() || !req.peer_urls.iter().all(|u| valid_peer_url(u)) {
                    return Err(StoreError::MemberBadUrls);
                }
                if url_taken(&req.peer_urls, id) {
                    return Err(StoreError::PeerUrlExist);
                }
                let node = Member {
                    name: old.name,
                    peer_urls: req.peer_urls.clone(),
                };
                let r = self
                    .raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
                    .await
                    .map_err(|e| change_err(id, e))?;
                tracing::info!(member = %format!("{id:x}"), peer_urls = ?req.peer_urls, index = r.log_id.index, "updated member");
                (id, r.log_id.index)
            }
            Kind::Promote => {
                let id = req.id;
                if m.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                if voters.contains(&id) {
                    return Err(StoreError::MemberNotLearner);
                }
                let (leader_last, matched) = {
                    let metrics = self.metrics.borrow();
                    let matched = metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|l| l.index)
                        .unwrap_or(0);
                    (metrics.last_log_index.unwrap_or(0), matched)
                };
                if (matched as f64) < (leader_last as f64) * LEARNER_READY_PERCENT {
                    return Err(StoreError::LearnerNotReady);
                }
                let r = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(|e| change_err(id, e))?;
                tracing::info!(member = %format!("{id:x}"), index = r.log_id.index, "promoted learner");
                (id, r.log_id.index)
            }
        };
        Ok(rpb::ChangeMembersResponse { id, index })
    }

    /// Tells a removed member so it stops serving at once (best effort: one that is
    /// down learns it when its vote requests are refused).
    fn tell_removed(&self, id: u64, node: Member) {
        if id == self.id {
            // The leader removed itself: it answers the client first, then stops.
            let removed = self.removed.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                tracing::error!(member = %format!("{id:x}"), "{}", StoreError::MemberRemoved);
                removed.send_replace(true);
            });
            return;
        }
        let Some(url) = node.peer_urls.first().cloned() else {
            return;
        };
        let dialer = self.peers.dialer.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                if let Ok(mut c) = network::client_at(&url, &dialer) {
                    let mut req = tonic::Request::new(rpb::RemovedRequest {});
                    req.set_timeout(Duration::from_secs(1));
                    if c.removed(req).await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }

    /// Whether this leader is handing leadership over (it takes no new entries).
    pub(super) fn is_transferring(&self) -> bool {
        self.transferring.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `MoveLeader` on the leader: hands leadership to voter `target` and returns once
    /// it leads.
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let m = self.membership();
        if !m.voter_ids().any(|v| v == target) {
            return Err(StoreError::BadLeaderTransferee);
        }
        if target == self.id {
            return Ok(());
        }
        let node = m
            .get_node(&target)
            .cloned()
            .ok_or(StoreError::BadLeaderTransferee)?;
        let _guard = self.changing.lock().await;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut metrics = self.metrics.clone();
        // No new entries from here on, so the transferee can catch up for good; and
        // followers refuse votes while the leader's lease (renewed by every heartbeat)
        // lasts, so without heartbeats it runs out and the transferee can win.
        self.transferring
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.raft.runtime_config().heartbeat(false);
        tracing::info!(member = %format!("{:x}", self.id), target = %format!("{target:x}"), term = self.term(), "transferring leadership");
        let mut moved = false;
        while tokio::time::Instant::now() < deadline {
            // The transferee must hold the whole log, or the others will not vote for
            // it (and it would campaign itself out of the leader's reach).
            let last = self.last_log_index();
            let caught_up = metrics.wait_for(|m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .is_some_and(|l| l.index >= last)
            });
            if tokio::time::timeout_at(deadline, caught_up).await.is_err() {
                break;
            }
            if let Ok(mut c) = self.peers.client(target, &node) {
                let mut req = tonic::Request::new(rpb::CampaignRequest {
                    last_log_index: last,
                });
                req.set_timeout(Duration::from_secs(1));
                let _ = c.campaign(req).await;
            }
            let wait = metrics.wait_for(|m| m.current_leader == Some(target));
            if tokio::time::timeout(self.heartbeat * 4, wait).await.is_ok() {
                moved = true;
                break;
            }
        }
        self.raft.runtime_config().heartbeat(true);
        self.transferring
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if moved {
            tracing::info!(member = %format!("{:x}", self.id), target = %format!("{target:x}"), term = self.term(), "leadership transferred");
            Ok(())
        } else {
            Err(StoreError::Timeout)
        }
    }

    /// A keep-alive: renewed by the leader's clock, on the leader. Returns the TTL
    /// (0: the lease is gone).
    pub async fn lease_renew(&self, id: i64) -> Result<i64> {
        let leader = self.leader().ok_or(StoreError::NoLeader)?;
        if leader == self.id {
            return self.server()?.lease_renew_local(id).await;
        }
        let mut c = self.leader_client(leader)?;
        let mut req = tonic::Request::new(rpb::LeaseRenewRequest { id });
        req.set_timeout(self.request_timeout);
        let r = c
            .lease_renew(req)
            .await
            .map_err(|s| network::leader_error(&s))?;
        Ok(r.into_inner().ttl)
    }

    /// `(ttl, granted_ttl)` of a lease by the leader's clock (`ttl` -1: no such lease).
    pub async fn lease_ttl(&self, id: i64) -> Result<(i64, i64)> {
        let leader = self.leader().ok_or(StoreError::NoLeader)?;
        if leader == self.id {
            return Ok(self.server()?.lease_ttl_local(id));
        }
        let mut c = self.leader_client(leader)?;
        let mut req = tonic::Request::new(rpb::LeaseTtlRequest { id });
        req.set_timeout(self.request_timeout);
        let r = c
            .lease_ttl(req)
            .await
            .map_err(|s| network::leader_error(&s))?
            .into_inner();
        Ok((r.ttl, r.granted_ttl))
    }

    /// The leader's half of [`RaftNode::lease_renew`].
    pub(super) async fn lease_renew_on_leader(&self, id: i64) -> Result<i64> {
        if !self.is_leader() {
            return Err(StoreError::NoLeader);
        }
        self.server()?.lease_renew_local(id).await
    }

    /// The leader's half of [`RaftNode::lease_ttl`].
    pub(super) fn lease_ttl_on_leader(&self, id: i64) -> Result<(i64, i64)> {
        if !self.is_leader() {
            return Err(StoreError::NoLeader);
        }
        Ok(self.server()?.lease_ttl_local(id))
    }
}
