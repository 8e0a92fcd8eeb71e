//! Incoming peer traffic: the `raftpb.Raft` gRPC service on `--listen-peer-urls`. Raft
//! messages are handed to openraft; Forward, ReadIndex, ChangeMembers and the lease
//! requests are answered only by the leader (a member that is not the leader says "no
//! leader" and the caller retries against whoever it learns is leader next). A vote
//! request from a member removed from the cluster is refused with "removed", which
//! stops it (see `membership`).

use capstan_proto::raftpb as rpb;
use capstan_proto::raftpb::raft_server::Raft as RaftRpc;
use openraft::error::RaftError;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{convert, RaftNode};
use crate::error::StoreError;

/// See the module documentation.
pub struct RaftService {
    pub node: Arc<RaftNode>,
}

fn fatal<E>(e: RaftError<u64, E>) -> Status
where
    E: std::fmt::Debug,
{
    tracing::debug!(error = ?e, "raft request failed");
    StoreError::Stopped.to_status()
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<rpb::AppendEntriesRequest>,
    ) -> Result<Response<rpb::AppendEntriesResponse>, Status> {
        let r = convert::append_req_from_pb(req.into_inner())?;
        let resp = self.node.raft.append_entries(r).await.map_err(fatal)?;
        Ok(Response::new(convert::append_resp_to_pb(&resp)))
    }

    async fn vote(
        &self,
        req: Request<rpb::VoteRequest>,
    ) -> Result<Response<rpb::VoteResponse>, Status> {
        let r = convert::vote_req_from_pb(req.get_ref())?;
        let candidate = r.vote.leader_id.node_id;
        if self
            .node
            .is_removed_peer(candidate, r.last_log_id.map(|l| l.index))
        {
            tracing::warn!(peer = %format!("{candidate:x}"), term = r.vote.leader_id.term, "vote request from a removed member");
            return Err(StoreError::MemberRemoved.to_status());
        }
        let resp = self.node.raft.vote(r).await.map_err(fatal)?;
        Ok(Response::new(convert::vote_resp_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        req: Request<rpb::InstallSnapshotRequest>,
    ) -> Result<Response<rpb::InstallSnapshotResponse>, Status> {
        let r = convert::snapshot_req_from_pb(req.into_inner())?;
        let resp = self.node.raft.install_snapshot(r).await.map_err(fatal)?;
        Ok(Response::new(rpb::InstallSnapshotResponse {
            vote: Some(convert::vote_to_pb(&resp.vote)),
        }))
    }

    async fn forward(
        &self,
        req: Request<rpb::ForwardRequest>,
    ) -> Result<Response<rpb::ForwardResponse>, Status> {
        let proposal = req
            .into_inner()
            .proposal
            .ok_or_else(|| StoreError::InvalidArgument("forward without a proposal".into()))?;
        self.node.serve_forward(proposal).await?;
        Ok(Response::new(rpb::ForwardResponse {}))
    }

    async fn read_index(
        &self,
        _req: Request<rpb::ReadIndexRequest>,
    ) -> Result<Response<rpb::ReadIndexResponse>, Status> {
        let index = self.node.serve_read_index().await?;
        Ok(Response::new(rpb::ReadIndexResponse { index }))
    }

    async fn members(
        &self,
        _req: Request<rpb::MembersRequest>,
    ) -> Result<Response<rpb::MembersResponse>, Status> {
        Ok(Response::new(self.node.members_pb()))
    }

    async fn change_members(
        &self,
        req: Request<rpb::ChangeMembersRequest>,
    ) -> Result<Response<rpb::ChangeMembersResponse>, Status> {
        let r = self.node.change_members_local(req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn campaign(
        &self,
        req: Request<rpb::CampaignRequest>,
    ) -> Result<Response<rpb::CampaignResponse>, Status> {
        if self.node.last_log_index() < req.get_ref().last_log_index {
            // Not caught up yet: the leader asks again.
            return Err(StoreError::Timeout.to_status());
        }
        tracing::info!(member = %format!("{:x}", self.node.id), term = self.node.term(), "campaigning at the leader's request");
        self.node
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|_| StoreError::Stopped.to_status())?;
        Ok(Response::new(rpb::CampaignResponse {}))
    }

    async fn removed(
        &self,
        _req: Request<rpb::RemovedRequest>,
    ) -> Result<Response<rpb::RemovedResponse>, Status> {
        self.node.mark_removed();
        Ok(Response::new(rpb::RemovedResponse {}))
    }

    async fn lease_renew(
        &self,
        req: Request<rpb::LeaseRenewRequest>,
    ) -> Result<Response<rpb::LeaseRenewResponse>, Status> {
        let ttl = self.node.lease_renew_on_leader(req.get_ref().id).await?;
        Ok(Response::new(rpb::LeaseRenewResponse { ttl }))
    }

    async fn lease_ttl(
        &self,
        req: Request<rpb::LeaseTtlRequest>,
    ) -> Result<Response<rpb::LeaseTtlResponse>, Status> {
        let (ttl, granted_ttl) = self.node.lease_ttl_on_leader(req.get_ref().id)?;
        Ok(Response::new(rpb::LeaseTtlResponse { ttl, granted_ttl }))
    }
}
