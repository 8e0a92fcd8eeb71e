//! The Cluster service. A single member answers as a one-member etcd does (adding a
//! member needs the replicated log, so it answers "not capable"); a Raft member lists
//! the Raft membership with the attributes each member published, and carries out
//! membership changes through the leader (see `raft::membership`). Every change answers
//! with the membership as this member's log has it afterwards, as etcd's does.

use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::cluster_server::Cluster;
use capstan_proto::raftpb as rpb;
use rpb::change_members_request::Kind;
use tonic::{Request, Response, Status};

use super::EtcdServer;
use crate::error::{Result, StoreError};

/// See the module documentation.
pub struct ClusterService {
    pub srv: Arc<EtcdServer>,
}

impl ClusterService {
    /// etcd's cluster responses carry no revision.
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            revision: 0,
            ..self.srv.header(0)
        })
    }

    /// Membership changes are admin operations.
    fn check_admin<T>(&self, req: &Request<T>) -> Result<()> {
        let user = self.srv.auth_user(req)?;
        self.srv.sm.auth.check_admin(user.as_deref())
    }

    /// The one member of a single-member cluster, if `id` names it.
    fn lookup(&self, id: u64) -> Result<pb::Member> {
        let me = self.srv.member();
        if me.id == id {
            Ok(me)
        } else {
            Err(StoreError::MemberNotFound)
        }
    }

    /// A membership change of member `id` through Raft; on a single member (no Raft)
    /// an unknown `id` gets "member not found" and a known one `single`.
    async fn change_one(&self, kind: Kind, id: u64, single: StoreError) -> Result<(), Status> {
        let change = rpb::ChangeMembersRequest {
            kind: kind as i32,
            id,
            ..Default::default()
        };
        match self.change(change).await {
            Some(r) => r.map(|_| ()).map_err(Into::into),
            None => {
                self.lookup(id)?;
                Err(single.into())
            }
        }
    }

    /// Carries out a change on a Raft cluster (`None`: this is a single member).
    async fn change(&self, req: rpb::ChangeMembersRequest) -> Option<Result<u64>> {
        let raft = self.srv.raft()?;
        Some(raft.change_members(req).await.map(|r| r.id))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.check_admin(&req)?;
        let r = req.into_inner();
        let change = rpb::ChangeMembersRequest {
            kind: Kind::Add as i32,
            id: 0,
            peer_urls: r.peer_ur_ls.clone(),
            is_learner: r.is_learner,
        };
        let Some(added) = self.change(change).await else {
            let me = self.srv.member();
            if r.peer_ur_ls.iter().any(|u| me.peer_ur_ls.contains(u)) {
                return Err(StoreError::PeerUrlExist.into());
            }
            // A second member needs the replicated log, which a single member lacks.
            return Err(StoreError::NotCapable.into());
        };
        let id = added?;
        let members = self.srv.members();
        // The new member has no name or client URLs until it starts and publishes them.
        let member = members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .unwrap_or(pb::Member {
                id,
                peer_ur_ls: r.peer_ur_ls,
                is_learner: r.is_learner,
                ..Default::default()
            });
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_admin(&req)?;
        let id = req.into_inner().id;
        // Removing the only member would leave no quorum: etcd's strict reconfig check.
        self.change_one(Kind::Remove, id, StoreError::NotEnoughStartedMembers)
            .await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members: self.srv.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.check_admin(&req)?;
        let r = req.into_inner();
        let change = rpb::ChangeMembersRequest {
            kind: Kind::Update as i32,
            id: r.id,
            peer_urls: r.peer_ur_ls.clone(),
            is_learner: false,
        };
        match self.change(change).await {
            Some(res) => {
                res?;
            }
            None => {
                let me = self.lookup(r.id)?;
                let mut want = r.peer_ur_ls.clone();
                let mut have = me.peer_ur_ls.clone();
                want.sort();
                have.sort();
                if want != have {
                    // New peer URLs only matter to peers, which a single member lacks.
                    return Err(StoreError::NotCapable.into());
                }
            }
        }
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: self.srv.members(),
        }))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.srv.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.check_admin(&req)?;
        let id = req.into_inner().id;
        // The one member is a voter.
        self.change_one(Kind::Promote, id, StoreError::MemberNotLearner)
            .await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: self.srv.members(),
        }))
    }
}
