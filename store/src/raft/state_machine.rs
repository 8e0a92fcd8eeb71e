//! openraft's `RaftStateMachine` over the store's one apply path: committed entries go
//! through `StateMachine::apply_batch` (unsynced: the Raft log is the durable record,
//! and apply is idempotent by index, so anything lost in a crash is re-applied from the
//! log). The last applied log id and membership are kept in `Cf::Meta`, written after
//! the data; a crash in between only makes openraft re-apply entries `apply_batch` then
//! skips. The member that proposed an entry hands its result to the waiting client.
//!
//! Snapshots are not part of this slice: openraft never builds one (`SnapshotPolicy::
//! Never`) and so never purges the log, and installing one is refused.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use capstan_proto::raftpb as rpb;
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{oneshot, watch};

use super::{convert, Member, TypeConfig};
use crate::apply::{ApplyRequest, ApplyResponse, StateMachine};
use crate::engine::{Cf, WriteBatch};
use crate::error::{Result, StoreError};

type C = TypeConfig;

/// `Cf::Meta` key of the last applied log id and membership (a `raftpb.SnapshotMeta`).
const META_RAFT_APPLIED: &[u8] = b"raft_applied";

/// Clients waiting for the result of an entry this member proposed, by sequence number.
#[derive(Default)]
pub struct Waiters {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<ApplyResponse>>>>,
}

impl Waiters {
    pub fn insert(&self, seq: u64, tx: oneshot::Sender<Result<ApplyResponse>>) {
        self.waiting.lock().insert(seq, tx);
    }

    pub fn remove(&self, seq: u64) {
        self.waiting.lock().remove(&seq);
    }

    fn complete(&self, seq: u64, r: Result<ApplyResponse>) {
        if let Some(tx) = self.waiting.lock().remove(&seq) {
            let _ = tx.send(r);
        }
    }
}

fn sm_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

/// See the module documentation.
pub struct SmStore {
    sm: Arc<StateMachine>,
    member: u64,
    waiters: Arc<Waiters>,
    applied_tx: watch::Sender<u64>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, Member>,
}

impl SmStore {
    /// Loads the last applied log id and membership. Also returns a receiver of the
    /// applied index (linearizable reads wait on it).
    pub fn open(
        sm: Arc<StateMachine>,
        member: u64,
        waiters: Arc<Waiters>,
    ) -> Result<(Self, watch::Receiver<u64>)> {
        let (last_applied, last_membership) =
            match sm.mvcc.engine().get(Cf::Meta, META_RAFT_APPLIED)? {
                Some(v) => {
                    let m = rpb::SnapshotMeta::decode(v.as_slice())?;
                    (
                        convert::opt_log_id_from_pb(&m.last_log_id),
                        convert::stored_membership_from_pb(
                            &m.last_membership_log_id,
                            &m.last_membership,
                        ),
                    )
                }
                None => (None, StoredMembership::default()),
            };
        let (applied_tx, applied_rx) = watch::channel(last_applied.map(|l| l.index).unwrap_or(0));
        Ok((
            Self {
                sm,
                member,
                waiters,
                applied_tx,
                last_applied,
                last_membership,
            },
            applied_rx,
        ))
    }
}

impl RaftStateMachine<C> for SmStore {
    type SnapshotBuilder = NoSnapshots;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut reqs: Vec<(u64, ApplyRequest)> = Vec::new();
        let mut proposers: Vec<(u64, u64)> = Vec::new();
        let mut n = 0;
        let mut last = self.last_applied;
        for e in entries {
            n += 1;
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(p) => {
                    // A request that does not decode is a bug in the proposer; every member
                    // decodes the same bytes, so every member fails it the same way (apply
                    // answers an empty request with an error) and stays in step.
                    let req = ApplyRequest::decode(p.request.as_slice()).unwrap_or_else(|e| {
                        tracing::error!(index = e_index(&last), error = %e, "undecodable proposal");
                        ApplyRequest { op: None }
                    });
                    reqs.push((e.log_id.index, req));
                    proposers.push((p.member, p.seq));
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
        }
        if !reqs.is_empty() {
            let sm = self.sm.clone();
            let results = tokio::task::spawn_blocking(move || {
                let refs: Vec<(u64, &ApplyRequest)> = reqs.iter().map(|(i, r)| (*i, r)).collect();
                sm.apply_batch(&refs, false)
            })
            .await
            .map_err(sm_err)?;
            match results {
                Ok(results) => {
                    for ((member, seq), r) in proposers.into_iter().zip(results) {
                        if member == self.member {
                            if let Some(r) = r {
                                self.waiters.complete(seq, r);
                            }
                        }
                    }
                }
                Err(e) => {
                    // Memory and disk may disagree now: stop, as the single member does,
                    // and let restart re-apply from the durable log.
                    tracing::error!(member = self.member, error = %e, "apply failed; stopping the member");
                    std::process::exit(1);
                }
            }
        }
        if last != self.last_applied {
            self.last_applied = last;
            let meta = rpb::SnapshotMeta {
                last_log_id: convert::opt_log_id_to_pb(&last),
                last_membership_log_id: convert::opt_log_id_to_pb(self.last_membership.log_id()),
                last_membership: Some(convert::membership_to_pb(self.last_membership.membership())),
                snapshot_id: String::new(),
            };
            let mut b = WriteBatch::default();
            b.put(Cf::Meta, META_RAFT_APPLIED, meta.encode_to_vec());
            self.sm.mvcc.engine().write(b, false).map_err(sm_err)?;
            self.applied_tx.send_replace(e_index(&last));
        }
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, Member>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        Err(sm_err(StoreError::NotCapable))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        Ok(None)
    }
}

fn e_index(l: &Option<LogId<u64>>) -> u64 {
    l.map(|l| l.index).unwrap_or(0)
}

/// Snapshots are not built in this slice (see the module documentation).
pub struct NoSnapshots;

impl RaftSnapshotBuilder<C> for NoSnapshots {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        Err(StorageIOError::write_snapshot(
            None,
            openraft::AnyError::error("snapshots are not supported yet"),
        )
        .into())
    }
}
