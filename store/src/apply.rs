//! The one apply path: every change to the store is an [`ApplyRequest`] applied here in
//! log order, whether the log is the single member's group-commit queue or, with Raft,
//! the replicated log. Apply is deterministic (no clocks, no randomness: IDs and
//! password hashes are chosen before proposing) so every member reaches the same state,
//! and idempotent across restarts (the applied index is written in the same batch as the
//! data it covers).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::{compare, request_op, response_op};
use parking_lot::Mutex;

use crate::auth::AuthStore;
use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{Result, StoreError};
use crate::lease::Lessor;
use crate::mvcc::{self, KeyRange, KvRead, Mvcc, Revision, Writer};
use crate::watch::WatchHub;

/// A replicated state change. Encoded with protobuf so it can be a Raft log entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyRequest {
    #[prost(
        oneof = "Op",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21"
    )]
    pub op: Option<Op>,
}

/// The operations of an [`ApplyRequest`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "1")]
    Put(pb::PutRequest),
    #[prost(message, tag = "2")]
    DeleteRange(pb::DeleteRangeRequest),
    #[prost(message, tag = "3")]
    Txn(pb::TxnRequest),
    #[prost(message, tag = "4")]
    Compaction(pb::CompactionRequest),
    #[prost(message, tag = "5")]
    LeaseGrant(pb::LeaseGrantRequest),
    #[prost(message, tag = "6")]
    LeaseRevoke(pb::LeaseRevokeRequest),
    #[prost(message, tag = "7")]
    LeaseCheckpoint(pb::LeaseCheckpointRequest),
    #[prost(message, tag = "8")]
    Alarm(pb::AlarmRequest),
    #[prost(message, tag = "10")]
    AuthEnable(pb::AuthEnableRequest),
    #[prost(message, tag = "11")]
    AuthDisable(pb::AuthDisableRequest),
    /// `hashed_password` is filled before proposing; `password` is cleared.
    #[prost(message, tag = "12")]
    AuthUserAdd(pb::AuthUserAddRequest),
    #[prost(message, tag = "13")]
    AuthUserDelete(pb::AuthUserDeleteRequest),
    /// `hashed_password` is filled before proposing; `password` is cleared.
    #[prost(message, tag = "14")]
    AuthUserChangePassword(pb::AuthUserChangePasswordRequest),
    #[prost(message, tag = "15")]
    AuthUserGrantRole(pb::AuthUserGrantRoleRequest),
    #[prost(message, tag = "16")]
    AuthUserRevokeRole(pb::AuthUserRevokeRoleRequest),
    #[prost(message, tag = "17")]
    AuthRoleAdd(pb::AuthRoleAddRequest),
    #[prost(message, tag = "18")]
    AuthRoleDelete(pb::AuthRoleDeleteRequest),
    #[prost(message, tag = "19")]
    AuthRoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    #[prost(message, tag = "20")]
    AuthRoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
    /// A member publishes its name and client URLs after it starts (etcd's "publish"),
    /// kept in `Cf::Meta` under [`member_attr_key`]; its peer URLs are the Raft
    /// membership's.
    #[prost(message, tag = "21")]
    MemberAttr(pb::Member),
}

impl ApplyRequest {
    /// Whether applying this costs a bounded, small amount whatever the store holds: a
    /// put, or a txn of single-key compares, puts and single-key reads (what the
    /// apiserver and most clients write with). A delete range, a range in a txn, a
    /// compaction or a lease revoke can each touch any number of keys.
    pub fn is_point_write(&self) -> bool {
        fn ops_are_points(ops: &[pb::RequestOp]) -> bool {
            ops.iter().all(|op| match &op.request {
                Some(request_op::Request::RequestPut(_)) => true,
                Some(request_op::Request::RequestRange(r)) => r.range_end.is_empty(),
                _ => false,
            })
        }
        match &self.op {
            Some(Op::Put(_)) => true,
            Some(Op::Txn(t)) => {
                t.compare.iter().all(|c| c.range_end.is_empty())
                    && ops_are_points(&t.success)
                    && ops_are_points(&t.failure)
            }
            _ => false,
        }
    }
}

/// `Cf::Meta` key of a member's published attributes (a `pb::Member` with name and
/// client URLs).
pub fn member_attr_key(id: u64) -> Vec<u8> {
    let mut k = b"member_attr/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// What applying one request produced. Headers carry only the revision; the server
/// fills in cluster, member and term.
#[derive(Clone, Debug)]
pub enum ApplyResponse {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compaction(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    Alarm(pb::AlarmResponse),
    /// Requests whose response is a bare header (checkpoints, auth changes).
    Done {
        revision: i64,
    },
}

impl ApplyResponse {
    /// The store revision after the request.
    pub fn revision(&self) -> i64 {
        let h = match self {
            ApplyResponse::Put(r) => &r.header,
            ApplyResponse::DeleteRange(r) => &r.header,
            ApplyResponse::Txn(r) => &r.header,
            ApplyResponse::Compaction(r) => &r.header,
            ApplyResponse::LeaseGrant(r) => &r.header,
            ApplyResponse::LeaseRevoke(r) => &r.header,
            ApplyResponse::Alarm(r) => &r.header,
            ApplyResponse::Done { revision } => return *revision,
        };
        h.as_ref().map(|h| h.revision).unwrap_or_default()
    }
}

const META_APPLIED_INDEX: &[u8] = b"applied_index";
const ALARM_PREFIX: &[u8] = b"alarm/";

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// The replicated state: key space, leases, auth and alarms.
pub struct StateMachine {
    pub mvcc: Mvcc,
    pub lessor: Lessor,
    pub auth: AuthStore,
    pub watch: WatchHub,
    /// Deletes compacted history off the applier.
    pub purger: mvcc::Purger,
    alarms: Mutex<BTreeSet<(u64, i32)>>,
    applied_index: AtomicU64,
}

impl StateMachine {
    /// Opens the state on `engine`, finishing any compaction a crash interrupted.
    pub fn open(engine: Arc<dyn Engine>, min_lease_ttl: i64) -> Result<Self> {
        let (mvcc, doomed) = Mvcc::open(engine.clone())?;
        mvcc.purge(doomed)?;
        let lessor = Lessor::open(&*engine, min_lease_ttl)?;
        let auth = AuthStore::open(&*engine)?;
        let applied_index = load_applied_index(&*engine)?;
        let alarms = load_alarms(&*engine)?;
        Ok(Self {
            mvcc,
            lessor,
            auth,
            watch: WatchHub::new(),
            purger: mvcc::Purger::start(engine)?,
            alarms: Mutex::new(alarms),
            applied_index: AtomicU64::new(applied_index),
        })
    }

    /// The index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::SeqCst)
    }

    /// Raised alarms as `(member, AlarmType)`.
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.alarms.lock().iter().copied().collect()
    }

    /// Whether the NOSPACE alarm is raised (writes are refused).
    pub fn no_space(&self) -> bool {
        self.alarms
            .lock()
            .iter()
            .any(|(_, t)| *t == pb::AlarmType::Nospace as i32)
    }

    /// Replaces the whole replicated state with a snapshot's `records` (a Raft snapshot
    /// install): one synced batch deletes every record of the state keyspaces, writes
    /// the snapshot's, the applied index `applied` and the caller's `extra` records (the
    /// Raft applied log id), so a crash leaves either the old state or the new, whole.
    /// Then every in-memory structure is rebuilt from the engine, as at start-up, and
    /// watchers are moved to catch up from the new history (see `WatchHub::resync`).
    ///
    /// Part of the one apply path: only the owner of the log's apply order calls it,
    /// never concurrently with [`StateMachine::apply_batch`].
    pub fn install(
        &self,
        records: Vec<(Cf, Vec<u8>, Vec<u8>)>,
        applied: u64,
        extra: WriteBatch,
    ) -> Result<()> {
        let engine = self.mvcc.engine().clone();
        let mut batch = WriteBatch::default();
        // Point deletes of what is there (not range deletes): the state keyspaces have no
        // key bound a range could name safely, and this runs only for a lagging member.
        for cf in Cf::ALL.into_iter().filter(|cf| cf.is_state()) {
            engine.scan(cf, &[], None, &mut |k, _| {
                batch.delete(cf, k.to_vec());
                true
            })?;
        }
        for (cf, k, v) in records {
            if !cf.is_state() || crate::snapshot::is_member_meta(cf, &k) {
                continue;
            }
            batch.put(cf, k, v);
        }
        batch.put(
            Cf::Meta,
            META_APPLIED_INDEX.to_vec(),
            applied.to_be_bytes().to_vec(),
        );
        batch.ops.extend(extra.ops);
        // Synced inside: the Raft log is purged up to the snapshot right after.
        let doomed = self.mvcc.replace(batch)?;
        self.lessor.reload(&*engine)?;
        self.auth.reload(&*engine)?;
        *self.alarms.lock() = load_alarms(&*engine)?;
        self.applied_index
            .store(load_applied_index(&*engine)?, Ordering::SeqCst);
        self.watch.resync(self.mvcc.current_rev());
        if !doomed.is_empty() {
            self.purger.submit(doomed);
        }
        Ok(())
    }

    /// Applies entries in index order as one atomic, durable batch (with `sync`), then
    /// publishes the new revision to readers and the events to watchers. Entries at or
    /// below the applied index are skipped (replay after a restart). The outer error is
    /// fatal (the engine failed); inner ones belong to each request.
    pub fn apply_batch(
        &self,
        entries: &[(u64, &ApplyRequest)],
        sync: bool,
    ) -> Result<Vec<Option<Result<ApplyResponse>>>> {
        self.apply_batch_with(entries, sync, WriteBatch::default())
    }

    /// [`StateMachine::apply_batch`] that also writes `extra` in the same atomic batch:
    /// Raft's last applied log id, so that any point-in-time view of the engine (a
    /// snapshot being built) pairs the data with the exact log position it reflects.
    pub fn apply_batch_with(
        &self,
        entries: &[(u64, &ApplyRequest)],
        sync: bool,
        extra: WriteBatch,
    ) -> Result<Vec<Option<Result<ApplyResponse>>>> {
        let mut w = self.mvcc.writer();
        let applied = self.applied_index();
        let mut last = applied;
        let mut results = Vec::with_capacity(entries.len());
        let mut doomed = Vec::new();
        for (index, req) in entries {
            if *index <= applied {
                results.push(None);
                continue;
            }
            last = *index;
            results.push(Some(self.apply_one(&mut w, req, &mut doomed)));
        }
        if last != applied {
            w.batch_mut().put(
                Cf::Meta,
                META_APPLIED_INDEX.to_vec(),
                last.to_be_bytes().to_vec(),
            );
        }
        w.batch_mut().ops.extend(extra.ops);
        let out = w.finish();
        self.mvcc.engine().write(out.batch, sync)?;
        self.applied_index.store(last, Ordering::SeqCst);
        self.mvcc.publish(out.rev);
        self.watch
            .notify(out.rev, &out.events, &out.unloaded_prev, &self.mvcc);
        if !doomed.is_empty() {
            self.purger.submit(doomed);
        }
        Ok(results)
    }

    fn apply_one(
        &self,
        w: &mut Writer<'_>,
        req: &ApplyRequest,
        doomed: &mut Vec<Revision>,
    ) -> Result<ApplyResponse> {
        let Some(op) = &req.op else {
            return Err(StoreError::InvalidArgument(
                "etcdserver: empty request".into(),
            ));
        };
        match op {
            Op::Put(p) => {
                self.check_put(w, p)?;
                w.begin_txn();
                let r = self.put(w, p);
                let rev = w.end_txn();
                let mut r = r?;
                r.header = header(rev);
                Ok(ApplyResponse::Put(r))
            }
            Op::DeleteRange(d) => {
                w.begin_txn();
                let r = self.delete_range(w, d);
                let rev = w.end_txn();
                let mut r = r?;
                r.header = header(rev);
                Ok(ApplyResponse::DeleteRange(r))
            }
            Op::Txn(t) => {
                // Compares are judged on the state before any of the txn's writes, and
                // every check runs before the first write, so a failing txn changes nothing.
                let path = self.txn_path(w, t)?;
                w.begin_txn();
                let r = self.txn(w, t, &path, &mut 0);
                let rev = w.end_txn();
                let mut r = r?;
                r.header = header(rev);
                Ok(ApplyResponse::Txn(r))
            }
            Op::Compaction(c) => {
                doomed.extend(w.compact(c.revision)?);
                Ok(ApplyResponse::Compaction(pb::CompactionResponse {
                    header: header(w.current_rev()),
                }))
            }
            Op::LeaseGrant(g) => {
                let ttl = self.lessor.grant(g.id, g.ttl, w.batch_mut())?;
                Ok(ApplyResponse::LeaseGrant(pb::LeaseGrantResponse {
                    header: header(w.current_rev()),
                    id: g.id,
                    ttl,
                    error: String::new(),
                }))
            }
            Op::LeaseRevoke(r) => {
                let keys = self.lessor.revoke(r.id, w.batch_mut())?;
                w.begin_txn();
                for k in keys {
                    w.delete_range(&KeyRange::Single(k))?;
                }
                let rev = w.end_txn();
                Ok(ApplyResponse::LeaseRevoke(pb::LeaseRevokeResponse {
                    header: header(rev),
                }))
            }
            Op::LeaseCheckpoint(c) => {
                for cp in &c.checkpoints {
                    // A lease revoked since the checkpoint was taken is simply gone.
                    let _ = self
                        .lessor
                        .checkpoint(cp.id, cp.remaining_ttl, w.batch_mut());
                }
                Ok(ApplyResponse::Done {
                    revision: w.current_rev(),
                })
            }
            Op::Alarm(a) => Ok(ApplyResponse::Alarm(self.alarm(w, a))),
            Op::MemberAttr(m) => {
                let attr = pb::Member {
                    name: m.name.clone(),
                    client_ur_ls: m.client_ur_ls.clone(),
                    ..Default::default()
                };
                w.batch_mut().put(
                    Cf::Meta,
                    member_attr_key(m.id),
                    prost::Message::encode_to_vec(&attr),
                );
                Ok(ApplyResponse::Done {
                    revision: w.current_rev(),
                })
            }
            auth => {
                self.auth.apply(auth, w.batch_mut())?;
                Ok(ApplyResponse::Done {
                    revision: w.current_rev(),
                })
            }
        }
    }

    fn alarm(&self, w: &mut Writer<'_>, a: &pb::AlarmRequest) -> pb::AlarmResponse {
        use pb::alarm_request::AlarmAction;
        let mut alarms = self.alarms.lock();
        let key = |m: u64, t: i32| {
            let mut k = ALARM_PREFIX.to_vec();
            k.extend_from_slice(&m.to_be_bytes());
            k.extend_from_slice(&t.to_be_bytes());
            k
        };
        let member = |m: u64, t: i32| pb::AlarmMember {
            member_id: m,
            alarm: t,
        };
        let list: Vec<pb::AlarmMember> = match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Activate) if a.alarm != pb::AlarmType::None as i32 => {
                alarms.insert((a.member_id, a.alarm));
                w.batch_mut()
                    .put(Cf::Meta, key(a.member_id, a.alarm), Vec::new());
                vec![member(a.member_id, a.alarm)]
            }
            Ok(AlarmAction::Deactivate) => {
                let matching: Vec<(u64, i32)> = alarms
                    .iter()
                    .filter(|(m, t)| {
                        (a.member_id == 0 || *m == a.member_id)
                            && (a.alarm == pb::AlarmType::None as i32 || *t == a.alarm)
                    })
                    .copied()
                    .collect();
                for (m, t) in &matching {
                    alarms.remove(&(*m, *t));
                    w.batch_mut().delete(Cf::Meta, key(*m, *t));
                }
                matching.into_iter().map(|(m, t)| member(m, t)).collect()
            }
            _ => alarms.iter().map(|(m, t)| member(*m, *t)).collect(),
        };
        pb::AlarmResponse {
            header: header(w.current_rev()),
            alarms: list,
        }
    }

    /// Checks a put can succeed before anything is written.
    fn check_put(&self, w: &Writer<'_>, p: &pb::PutRequest) -> Result<()> {
        if p.lease != 0 && !self.lessor.exists(p.lease) {
            return Err(StoreError::LeaseNotFound);
        }
        if (p.ignore_value || p.ignore_lease) && w.live(&p.key).is_none() {
            return Err(StoreError::KeyNotFound);
        }
        Ok(())
    }

    fn put(&self, w: &mut Writer<'_>, p: &pb::PutRequest) -> Result<pb::PutResponse> {
        // Only these need the previous record itself; what a plain put inherits from
        // it (create revision, version, the lease to detach) the index has.
        let prev = if p.prev_kv || p.ignore_value {
            w.latest(&p.key)?
        } else {
            None
        };
        let value = match (&prev, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => p.value.clone(),
        };
        let prev_kv = if p.prev_kv { prev.clone() } else { None };
        let lease = (!p.ignore_lease).then_some(p.lease);
        let old_lease = w.put(&p.key, value, lease, prev).map_or(0, |l| l.lease);
        let lease = lease.unwrap_or(old_lease);
        self.lessor.attach(&p.key, old_lease, lease, w.batch_mut());
        Ok(pb::PutResponse {
            header: None,
            prev_kv,
        })
    }

    fn delete_range(
        &self,
        w: &mut Writer<'_>,
        d: &pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse> {
        let deleted = w.delete_range(&KeyRange::new(&d.key, &d.range_end))?;
        for kv in &deleted {
            self.lessor.attach(&kv.key, kv.lease, 0, w.batch_mut());
        }
        Ok(pb::DeleteRangeResponse {
            header: None,
            deleted: deleted.len() as i64,
            prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
        })
    }

    /// Evaluates every compare of a txn tree up front; returns the branch taken at each
    /// txn in depth-first order, and checks the puts on that path can succeed.
    fn txn_path(&self, w: &Writer<'_>, t: &pb::TxnRequest) -> Result<Vec<bool>> {
        let mut path = Vec::new();
        self.txn_path_into(w, t, &mut path)?;
        Ok(path)
    }

    fn txn_path_into(
        &self,
        w: &Writer<'_>,
        t: &pb::TxnRequest,
        path: &mut Vec<bool>,
    ) -> Result<()> {
        let ok = t.compare.iter().all(|c| compare(w, c));
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    if r.revision > w.current_rev() {
                        return Err(StoreError::FutureRev);
                    }
                    if r.revision > 0 && r.revision < w.compact_rev() {
                        return Err(StoreError::Compacted);
                    }
                }
                Some(request_op::Request::RequestPut(p)) => self.check_put(w, p)?,
                Some(request_op::Request::RequestTxn(inner)) => {
                    self.txn_path_into(w, inner, path)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn txn(
        &self,
        w: &mut Writer<'_>,
        t: &pb::TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<pb::TxnResponse> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let mut rr = mvcc::range(w, r)?;
                    rr.header = header(w.current_rev());
                    response_op::Response::ResponseRange(rr)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    let mut r = self.put(w, p)?;
                    r.header = header(w.txn_rev());
                    response_op::Response::ResponsePut(r)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let mut r = self.delete_range(w, d)?;
                    r.header = header(w.current_rev());
                    response_op::Response::ResponseDeleteRange(r)
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    let mut r = self.txn(w, inner, path, at)?;
                    r.header = header(w.current_rev());
                    response_op::Response::ResponseTxn(r)
                }
                None => continue,
            };
            responses.push(pb::ResponseOp {
                response: Some(resp),
            });
        }
        Ok(pb::TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }
}

fn load_applied_index(engine: &dyn Engine) -> Result<u64> {
    Ok(engine
        .get(Cf::Meta, META_APPLIED_INDEX)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Raised alarms as `(member, AlarmType)`, from their `Cf::Meta` records.
fn load_alarms(engine: &dyn Engine) -> Result<BTreeSet<(u64, i32)>> {
    let mut alarms = BTreeSet::new();
    let mut end = ALARM_PREFIX.to_vec();
    end.push(0xff);
    engine.scan(Cf::Meta, ALARM_PREFIX, Some(&end), &mut |k, _| {
        let rest = &k[ALARM_PREFIX.len()..];
        if let (Some(m), Some(t)) = (rest.get(..8), rest.get(8..12)) {
            let member = u64::from_be_bytes(m.try_into().unwrap_or_default());
            let t = i32::from_be_bytes(t.try_into().unwrap_or_default());
            alarms.insert((member, t));
        }
        true
    })?;
    Ok(alarms)
}

/// etcd's compare: on every key of the range; a missing key compares as zero values,
/// except that a VALUE compare on a missing key always fails.
pub fn compare(view: &dyn KvRead, c: &pb::Compare) -> bool {
    let r = pb::RangeRequest {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        ..Default::default()
    };
    let Ok(rr) = mvcc::range(view, &r) else {
        return false;
    };
    let target =
        compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    if rr.kvs.is_empty() {
        if target == compare::CompareTarget::Value {
            return false;
        }
        return compare_kv(c, target, &Default::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, target, kv))
}

fn compare_kv(
    c: &pb::Compare,
    target: compare::CompareTarget,
    kv: &capstan_proto::mvccpb::KeyValue,
) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match target {
        CompareTarget::Value => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        t => {
            let want = match (&c.target_union, t) {
                (Some(TargetUnion::Version(v)), _)
                | (Some(TargetUnion::CreateRevision(v)), _)
                | (Some(TargetUnion::ModRevision(v)), _)
                | (Some(TargetUnion::Lease(v)), _) => *v,
                _ => 0,
            };
            let have = match t {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Lease => kv.lease,
                CompareTarget::Value => 0,
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

#[cfg(test)]
mod tests;
