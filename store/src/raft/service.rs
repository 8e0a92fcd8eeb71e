//! Incoming peer traffic: the `raftpb.Raft` gRPC service on `--listen-peer-urls`. Raft
//! messages are handed to openraft; Forward and ReadIndex are answered only by the
//! leader (a member that is not the leader says "no leader" and the caller retries
//! against whoever it learns is leader next).

use capstan_proto::raftpb as rpb;
use capstan_proto::raftpb::raft_server::Raft as RaftRpc;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::Raft;
use tonic::{Request, Response, Status};

use super::{convert, TypeConfig};
use crate::error::StoreError;

/// See the module documentation.
pub struct RaftService {
    pub raft: Raft<TypeConfig>,
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
        let resp = self.raft.append_entries(r).await.map_err(fatal)?;
        Ok(Response::new(convert::append_resp_to_pb(&resp)))
    }

    async fn vote(
        &self,
        req: Request<rpb::VoteRequest>,
    ) -> Result<Response<rpb::VoteResponse>, Status> {
        let r = convert::vote_req_from_pb(req.get_ref())?;
        let resp = self.raft.vote(r).await.map_err(fatal)?;
        Ok(Response::new(convert::vote_resp_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        req: Request<rpb::InstallSnapshotRequest>,
    ) -> Result<Response<rpb::InstallSnapshotResponse>, Status> {
        let r = convert::snapshot_req_from_pb(req.into_inner())?;
        let resp = self.raft.install_snapshot(r).await.map_err(fatal)?;
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
        match self.raft.client_write(proposal).await {
            Ok(r) => Ok(Response::new(rpb::ForwardResponse {
                log_id: Some(convert::log_id_to_pb(&r.log_id)),
            })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(StoreError::NoLeader.to_status())
            }
            Err(e) => Err(fatal(e)),
        }
    }

    async fn read_index(
        &self,
        _req: Request<rpb::ReadIndexRequest>,
    ) -> Result<Response<rpb::ReadIndexResponse>, Status> {
        match self.raft.ensure_linearizable().await {
            Ok(l) => Ok(Response::new(rpb::ReadIndexResponse {
                index: l.map(|l| l.index).unwrap_or(0),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))
            | Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(StoreError::NoLeader.to_status())
            }
            Err(e) => Err(fatal(e)),
        }
    }
}
