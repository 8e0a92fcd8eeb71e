//! The Lease service. Grants and revokes are replicated (proposed to the apply path);
//! keep-alives renew the deadline in the clock owner's memory only, and time-to-live
//! answers from it, exactly as etcd's leader does. In a Raft cluster the clock owner is
//! the leader, so a follower forwards both to it (as etcd's follower forwards
//! keep-alives to its leader).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::lease_server::Lease;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::kv::unexpected;
use super::EtcdServer;
use crate::apply::{ApplyResponse, Op};
use crate::error::{Result, StoreError};
use crate::lease::MAX_LEASE_TTL;

/// See the module documentation.
pub struct LeaseService {
    pub srv: Arc<EtcdServer>,
}

/// Seconds until `expiry`, truncated toward zero like Go's `int64(d.Seconds())`: a lease
/// granted with TTL 100 reports 99 a moment later, and one past its deadline but not yet
/// revoked reports 0 or less.
fn remaining_secs(expiry: Instant, now: Instant) -> i64 {
    if expiry >= now {
        (expiry - now).as_secs() as i64
    } else {
        -((now - expiry).as_secs() as i64)
    }
}

impl LeaseService {
    /// Checks the caller may write (or read) every key attached to lease `id`.
    fn check_keys(&self, user: Option<&str>, id: i64, write: bool) -> Result<()> {
        if let Some(l) = self.srv.sm.lessor.get(id) {
            for k in &l.keys {
                self.srv.sm.auth.check(user, k, &[], write)?;
            }
        }
        Ok(())
    }

    /// A keep-alive: renews on the clock owner and answers TTL 0 for a lease that is
    /// gone, as etcd does (clients turn that into "lease not found" themselves).
    pub(crate) async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse> {
        let ttl = match self.srv.raft() {
            Some(r) => r.lease_renew(id).await?,
            None => self.srv.lease_renew_local(id).await?,
        };
        Ok(pb::LeaseKeepAliveResponse {
            header: Some(self.srv.header(self.srv.current_rev())),
            id,
            ttl,
        })
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let mut g = req.into_inner();
        if g.ttl > MAX_LEASE_TTL {
            return Err(StoreError::LeaseTtlTooLarge.into());
        }
        // The ID is chosen here, not in apply, so apply stays deterministic. Positive only
        // (etcd masks the sign bit); a clash with a live lease just draws again.
        while g.id == 0 {
            let id = (rand::random::<u64>() & (i64::MAX as u64)) as i64;
            if !self.srv.sm.lessor.exists(id) {
                g.id = id;
            }
        }
        match self.srv.propose(Op::LeaseGrant(g)).await? {
            ApplyResponse::LeaseGrant(mut r) => {
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let user = self.srv.auth_user(&req)?;
        let r = req.into_inner();
        // Revoking deletes the attached keys, so it needs write permission on each.
        self.check_keys(user.as_deref(), r.id, true)?;
        match self.srv.propose(Op::LeaseRevoke(r)).await? {
            ApplyResponse::LeaseRevoke(mut r) => {
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = LeaseService {
            srv: self.srv.clone(),
        };
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let out = match msg {
                    Ok(r) => svc.keep_alive_once(r.id).await.map_err(Status::from),
                    // The client went away or sent garbage: the stream is over.
                    Err(_) => return,
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let user = self.srv.auth_user(&req)?;
        let r = req.into_inner();
        if r.keys {
            self.check_keys(user.as_deref(), r.id, false)?;
        }
        let (ttl, granted_ttl) = match self.srv.raft() {
            Some(raft) => raft.lease_ttl(r.id).await?,
            None => self.srv.lease_ttl_local(r.id),
        };
        let header = Some(self.srv.header(self.srv.current_rev()));
        // A missing lease is not an error here: etcd answers TTL -1 with the ID echoed.
        let resp = match self.srv.sm.lessor.get(r.id).filter(|_| ttl != -1) {
            Some(l) => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl,
                granted_ttl,
                keys: if r.keys {
                    l.keys.into_iter().collect()
                } else {
                    Vec::new()
                },
            },
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        // etcd lists leases soonest-expiring first.
        let mut leases: Vec<_> = self
            .srv
            .sm
            .lessor
            .ids()
            .into_iter()
            .filter_map(|id| self.srv.sm.lessor.get(id).map(|l| (l.expiry, id)))
            .collect();
        leases.sort_unstable();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.srv.header(self.srv.current_rev())),
            leases: leases
                .into_iter()
                .map(|(_, id)| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}

impl EtcdServer {
    /// Renews lease `id` by this member's clock (the single member's, or the Raft
    /// leader's); returns its TTL, 0 when it is gone.
    pub async fn lease_renew_local(&self, id: i64) -> Result<i64> {
        let checkpointed = self.sm.lessor.get(id).is_some_and(|l| l.remaining_ttl > 0);
        let ttl = match self.sm.lessor.renew(id) {
            Ok(ttl) => ttl,
            Err(StoreError::LeaseNotFound) => 0,
            Err(e) => return Err(e),
        };
        if ttl > 0 && checkpointed {
            // The recorded remaining TTL would shorten the lease again after a restart;
            // clear it, at most one entry per checkpoint interval (etcd's renew does this).
            let cp = pb::LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            };
            let req = pb::LeaseCheckpointRequest {
                checkpoints: vec![cp],
            };
            match self.propose(Op::LeaseCheckpoint(req)).await {
                Ok(_) | Err(StoreError::LeaseNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ttl)
    }

    /// `(ttl, granted_ttl)` of lease `id` by this member's clock (`ttl` -1: no such
    /// lease).
    pub fn lease_ttl_local(&self, id: i64) -> (i64, i64) {
        match self.sm.lessor.get(id) {
            Some(l) => (remaining_secs(l.expiry, Instant::now()), l.ttl),
            None => (-1, 0),
        }
    }
}
