//! The KV service: request validation as etcd's `v3rpc` does it, permission checks,
//! then reads served from the MVCC view and writes proposed to the apply path.

use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::kv_server::Kv;
use capstan_proto::etcdserverpb::request_op::Request as Req;
use tonic::{Request, Response, Status};

use super::EtcdServer;
use crate::apply::{ApplyResponse, Op};
use crate::error::{Result, StoreError};
use crate::mvcc::{self, KeyRange};

/// See the module documentation.
pub struct KvService {
    pub srv: Arc<EtcdServer>,
}

fn check_put(p: &pb::PutRequest) -> Result<()> {
    if p.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

/// Validates a txn tree: sizes, empty keys, and that no key is written twice.
fn check_txn(t: &pb::TxnRequest, max_ops: usize) -> Result<()> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(StoreError::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
    }
    for branch in [&t.success, &t.failure] {
        for op in branch.iter() {
            match &op.request {
                Some(Req::RequestRange(r)) if r.key.is_empty() => return Err(StoreError::EmptyKey),
                Some(Req::RequestPut(p)) => check_put(p)?,
                Some(Req::RequestDeleteRange(d)) if d.key.is_empty() => {
                    return Err(StoreError::EmptyKey)
                }
                Some(Req::RequestTxn(inner)) => check_txn(inner, max_ops)?,
                _ => {}
            }
        }
        let (mut puts, mut dels) = (Vec::new(), Vec::new());
        collect_writes(branch, &mut puts, &mut dels)?;
        for d in &dels {
            if puts.iter().any(|p| d.overlaps(p)) {
                return Err(StoreError::DuplicateKey);
            }
        }
    }
    Ok(())
}

/// Gathers the keys one branch writes, descending into nested txns (whose two branches
/// are alternatives, so each is checked against the outer writes separately).
fn collect_writes(
    ops: &[pb::RequestOp],
    puts: &mut Vec<KeyRange>,
    dels: &mut Vec<KeyRange>,
) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(Req::RequestPut(p)) => {
                let k = KeyRange::Single(p.key.clone());
                if puts.contains(&k) {
                    return Err(StoreError::DuplicateKey);
                }
                puts.push(k);
            }
            Some(Req::RequestDeleteRange(d)) => dels.push(KeyRange::new(&d.key, &d.range_end)),
            Some(Req::RequestTxn(inner)) => {
                for branch in [&inner.success, &inner.failure] {
                    let (mut p2, mut d2) = (puts.clone(), dels.clone());
                    collect_writes(branch, &mut p2, &mut d2)?;
                    for d in &d2 {
                        if p2.iter().any(|p| d.overlaps(p)) {
                            return Err(StoreError::DuplicateKey);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl KvService {
    /// Checks every key a txn touches against the caller's permissions.
    fn check_txn_perms(&self, user: Option<&str>, t: &pb::TxnRequest) -> Result<()> {
        let auth = &self.srv.sm.auth;
        for c in &t.compare {
            auth.check(user, &c.key, &c.range_end, false)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Req::RequestRange(r)) => auth.check(user, &r.key, &r.range_end, false)?,
                Some(Req::RequestPut(p)) => auth.check(user, &p.key, &[], true)?,
                Some(Req::RequestDeleteRange(d)) => {
                    auth.check(user, &d.key, &d.range_end, true)?;
                    if d.prev_kv {
                        auth.check(user, &d.key, &d.range_end, false)?;
                    }
                }
                Some(Req::RequestTxn(inner)) => self.check_txn_perms(user, inner)?,
                None => {}
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        // A learner serves serializable reads only (see `learner`), before anything else
        // is checked, as etcd's interceptor.
        if !req.get_ref().serializable && self.srv.is_learner() {
            return Err(StoreError::NotSupportedForLearner.into());
        }
        let user = self.srv.auth_user(&req)?;
        let r = req.into_inner();
        if r.key.is_empty() {
            return Err(StoreError::EmptyKey.into());
        }
        self.srv
            .sm
            .auth
            .check(user.as_deref(), &r.key, &r.range_end, false)?;
        if !r.serializable {
            self.srv.linearizable_read().await?;
        }
        let mut resp = mvcc::range(&self.srv.sm.mvcc, &r)?;
        self.srv.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let user = self.srv.auth_user(&req)?;
        let p = req.into_inner();
        check_put(&p)?;
        self.srv.sm.auth.check(user.as_deref(), &p.key, &[], true)?;
        if p.prev_kv {
            self.srv
                .sm
                .auth
                .check(user.as_deref(), &p.key, &[], false)?;
        }
        match self.srv.propose(Op::Put(p)).await? {
            ApplyResponse::Put(mut r) => {
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let user = self.srv.auth_user(&req)?;
        let d = req.into_inner();
        if d.key.is_empty() {
            return Err(StoreError::EmptyKey.into());
        }
        self.srv
            .sm
            .auth
            .check(user.as_deref(), &d.key, &d.range_end, true)?;
        if d.prev_kv {
            self.srv
                .sm
                .auth
                .check(user.as_deref(), &d.key, &d.range_end, false)?;
        }
        match self.srv.propose(Op::DeleteRange(d)).await? {
            ApplyResponse::DeleteRange(mut r) => {
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let user = self.srv.auth_user(&req)?;
        let t = req.into_inner();
        check_txn(&t, self.srv.cfg.max_txn_ops)?;
        self.check_txn_perms(user.as_deref(), &t)?;
        match self.srv.propose(Op::Txn(t)).await? {
            ApplyResponse::Txn(mut r) => {
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // etcd checks no permission for compaction, only that a presented token is
        // valid (verified against etcd: a non-root user may compact).
        self.srv.auth_user(&req)?;
        let c = req.into_inner();
        let physical = c.physical;
        match self.srv.propose(Op::Compaction(c)).await? {
            ApplyResponse::Compaction(mut r) => {
                if physical {
                    self.srv.sm.purger.wait_idle().await;
                }
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }
}

/// The apply path answered with the wrong kind of response: a bug, reported rather
/// than panicking in front of a client.
pub(crate) fn unexpected(r: ApplyResponse) -> Status {
    tracing::error!(response = ?r, "apply answered with an unexpected response kind");
    Status::internal("etcdserver: unexpected apply response")
}
