//! The Cluster service of a single-member cluster. Listing works as in etcd; membership
//! changes answer with the errors a one-member etcd gives (unknown member, removing the
//! last member, promoting a voter). Adding a member, or moving this one to other peer
//! URLs, needs Raft replication, which is the next layer of work: until it lands those
//! answer "not capable" (Unavailable) instead of pretending to succeed.

use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::cluster_server::Cluster;
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

    fn members(&self) -> Vec<pb::Member> {
        vec![self.srv.member()]
    }

    /// Membership changes are admin operations.
    fn check_admin<T>(&self, req: &Request<T>) -> Result<()> {
        let user = self.srv.auth_user(req)?;
        self.srv.sm.auth.check_admin(user.as_deref())
    }

    /// The one member, if `id` names it.
    fn lookup(&self, id: u64) -> Result<pb::Member> {
        let me = self.srv.member();
        if me.id == id {
            Ok(me)
        } else {
            Err(StoreError::MemberNotFound)
        }
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
        let me = self.srv.member();
        if r.peer_ur_ls.iter().any(|u| me.peer_ur_ls.contains(u)) {
            return Err(StoreError::PeerUrlExist.into());
        }
        // A second member needs the replicated log (Raft), not there yet.
        Err(StoreError::NotCapable.into())
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.check_admin(&req)?;
        self.lookup(req.into_inner().id)?;
        // Removing the only member would leave no quorum: etcd's strict reconfig check.
        Err(StoreError::NotEnoughStartedMembers.into())
    }

    async fn member_update(
        &self,
        req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.check_admin(&req)?;
        let r = req.into_inner();
        let me = self.lookup(r.id)?;
        let mut want = r.peer_ur_ls.clone();
        let mut have = me.peer_ur_ls.clone();
        want.sort();
        have.sort();
        if want != have {
            // New peer URLs only matter to peers, and persisting membership is Raft's job.
            return Err(StoreError::NotCapable.into());
        }
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.check_admin(&req)?;
        self.lookup(req.into_inner().id)?;
        // The one member is a voter.
        Err(StoreError::MemberNotLearner.into())
    }
}
