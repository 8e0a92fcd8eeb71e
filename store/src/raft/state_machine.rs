//! openraft's `RaftStateMachine` over the store's one apply path: committed entries go
//! through `StateMachine::apply_batch_with` (unsynced: the Raft log is the durable
//! record, and apply is idempotent by index, so anything lost in a crash is re-applied
//! from the log). The last applied log id and membership are kept in `Cf::Meta`, written
//! in the same atomic batch as the data they cover, so every point-in-time view of the
//! engine pairs the data with its exact log position. The member that proposed an entry
//! hands its result to the waiting client.
//!
//! Snapshots ([`SnapshotBuilder`], `install_snapshot`) are every state keyspace in the
//! format of `crate::snapshot` (the one `etcdctl snapshot save` gets), from one engine
//! view, labelled with the log id and membership read from that same view. Before a
//! built snapshot is handed to openraft (which then purges the log up to it, less
//! `--experimental-snapshot-catchup-entries`), one synced write makes the unsynced
//! applies it covers durable: the purged entries can no longer be replayed. A member
//! that receives one replaces its state wholesale (`StateMachine::install`).
//!
//! This slice keeps snapshots in memory (`SnapshotData` is a `Cursor<Vec<u8>>`, the
//! latest one held in [`SmStore`]; after a restart openraft rebuilds one when the log
//! was purged), which bounds the store by memory; streaming the export to a file and
//! sending that is the next step for big stores.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
use crate::error::Result;
use crate::metrics::METRICS;
use crate::snapshot;

type C = TypeConfig;

/// `Cf::Meta` key of the last applied log id and membership (a `raftpb.SnapshotMeta`).
const META_RAFT_APPLIED: &[u8] = b"raft_applied";

/// `Cf::RaftState` key of the last snapshot built (a `raftpb.SnapshotMeta`); writing it
/// synced is what makes the applies the snapshot covers durable.
const KEY_LAST_SNAPSHOT: &[u8] = b"last_snapshot";

/// The latest snapshot built or installed on this member (what `get_current_snapshot`
/// returns), shared with the builders.
type Current = Arc<Mutex<Option<(SnapshotMeta<u64, Member>, Arc<Vec<u8>>)>>>;

/// The most requests, and encoded request bytes, of an apply run on the state machine's
/// task rather than the blocking pool (see `apply`): with only point writes
/// (`ApplyRequest::is_point_write`) an apply within these bounds takes well under a
/// millisecond.
const INLINE_APPLY_MAX: usize = 64;
const INLINE_APPLY_MAX_BYTES: usize = 256 << 10;
/// The most watchers for an inline apply: the apply also hands every event to the
/// watchers it matches, which with thousands of watchers on one prefix takes
/// milliseconds (an apiserver's watch cache is a few dozen).
const INLINE_APPLY_MAX_WATCHERS: usize = 256;

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

fn snap_write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

/// The `Cf::Meta` record of the last applied log id and membership.
fn applied_meta(
    last: &Option<LogId<u64>>,
    membership: &StoredMembership<u64, Member>,
) -> rpb::SnapshotMeta {
    rpb::SnapshotMeta {
        last_log_id: convert::opt_log_id_to_pb(last),
        last_membership_log_id: convert::opt_log_id_to_pb(membership.log_id()),
        last_membership: Some(convert::membership_to_pb(membership.membership())),
        snapshot_id: String::new(),
    }
}

/// See the module documentation.
pub struct SmStore {
    sm: Arc<StateMachine>,
    member: u64,
    waiters: Arc<Waiters>,
    applied_tx: watch::Sender<u64>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, Member>,
    current: Current,
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
                current: Current::default(),
            },
            applied_rx,
        ))
    }
}

impl RaftStateMachine<C> for SmStore {
    type SnapshotBuilder = SnapshotBuilder;

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
        let mut request_bytes = 0;
        let mut point_writes = true;
        let mut proposers: Vec<(u64, u64)> = Vec::new();
        let mut n = 0;
        let mut last = self.last_applied;
        for e in entries {
            n += 1;
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(p) => {
                    let items: Vec<(u64, u64, Vec<u8>)> = if p.items.is_empty() {
                        vec![(p.member, p.seq, p.request)]
                    } else {
                        p.items
                            .into_iter()
                            .map(|i| {
                                let member = if i.member == 0 { p.member } else { i.member };
                                (member, i.seq, i.request)
                            })
                            .collect()
                    };
                    // A batch's requests share the entry's index: apply_batch applies them
                    // all in one atomic batch, or skips them all on replay.
                    for (member, seq, request) in items {
                        request_bytes += request.len();
                        // A request that does not decode is a bug in the proposer; every
                        // member decodes the same bytes, so every member fails it the same
                        // way (apply answers an empty request with an error).
                        let req = ApplyRequest::decode(request.as_slice()).unwrap_or_else(|e| {
                            tracing::error!(index = e_index(&last), error = %e, "undecodable proposal");
                            ApplyRequest { op: None }
                        });
                        point_writes &= req.is_point_write();
                        reqs.push((e.log_id.index, req));
                        proposers.push((member, seq));
                    }
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
        }
        if last == self.last_applied {
            return Ok(vec![(); n]);
        }
        // The applied log id travels in the data's own batch (see the module docs).
        let mut extra = WriteBatch::default();
        extra.put(
            Cf::Meta,
            META_RAFT_APPLIED,
            applied_meta(&last, &self.last_membership).encode_to_vec(),
        );
        if reqs.is_empty() {
            self.sm.mvcc.engine().write(extra, false).map_err(sm_err)?;
        } else {
            let sm = self.sm.clone();
            let inline = point_writes
                && reqs.len() <= INLINE_APPLY_MAX
                && request_bytes <= INLINE_APPLY_MAX_BYTES
                && {
                    let (synced, unsynced) = self.sm.watch.counts();
                    synced + unsynced <= INLINE_APPLY_MAX_WATCHERS
                };
            let apply = move || {
                let refs: Vec<(u64, &ApplyRequest)> = reqs.iter().map(|(i, r)| (*i, r)).collect();
                let started = std::time::Instant::now();
                let r = sm.apply_batch_with(&refs, false, extra);
                let m = &*crate::metrics::METRICS;
                m.backend_commit.observe(started.elapsed().as_secs_f64());
                m.apply_batch_size.observe(refs.len() as f64);
                m.proposals_committed.inc_by(refs.len() as u64);
                r
            };
            // A small batch of point writes (the common case under load: a few dozen
            // puts, well under a millisecond) is applied on this task: handing it to
            // the blocking pool costs two thread wake-ups per batch, which on a loaded
            // two-core machine cost more CPU than the apply. Anything else (a delete
            // range, a compaction, a catch-up after a restart, a fan-out to thousands
            // of watchers) still leaves the runtime's workers free.
            let results = if inline {
                apply()
            } else {
                tokio::task::spawn_blocking(apply).await.map_err(sm_err)?
            };
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
                    tracing::error!(member = %format!("{:x}", self.member), index = e_index(&last), error = %e, "apply failed; stopping the member");
                    std::process::exit(1);
                }
            }
        }
        self.last_applied = last;
        self.applied_tx.send_replace(e_index(&last));
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            sm: self.sm.clone(),
            member: self.member,
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let started = Instant::now();
        let data = Arc::new(snapshot.into_inner());
        let index = e_index(&meta.last_log_id);
        let term = meta.last_log_id.map(|l| l.leader_id.term).unwrap_or(0);
        let sm = self.sm.clone();
        let bytes = data.clone();
        let applied = applied_meta(&meta.last_log_id, &meta.last_membership);
        // Parsing, the wholesale write and rebuilding the index are blocking work.
        tokio::task::spawn_blocking(move || -> Result<()> {
            let body = snapshot::verify(&bytes)?;
            let mut records = Vec::new();
            snapshot::read_records(&mut &body[..], &mut |cf, k, v| {
                records.push((cf, k, v));
                Ok(())
            })?;
            let mut extra = WriteBatch::default();
            extra.put(Cf::Meta, META_RAFT_APPLIED, applied.encode_to_vec());
            sm.install(records, index, extra)
        })
        .await
        .map_err(sm_err)?
        .map_err(|e| {
            // A storage error stops this member's Raft (openraft treats it as fatal); the
            // engine holds the old state or the new one whole (one atomic batch), so a
            // restart rebuilds memory from a consistent disk.
            tracing::error!(member = %format!("{:x}", self.member), term, index, error = %e, "installing snapshot failed");
            sm_err(e)
        })?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.applied_tx.send_replace(index);
        *self.current.lock() = Some((meta.clone(), data.clone()));
        METRICS
            .snap_db_save
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            member = %format!("{:x}", self.member),
            term,
            index,
            bytes = data.len(),
            revision = crate::mvcc::KvRead::current_rev(&self.sm.mvcc),
            snapshot_id = %meta.snapshot_id,
            "installed snapshot"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        Ok(self.current.lock().as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        }))
    }
}

fn e_index(l: &Option<LogId<u64>>) -> u64 {
    l.map(|l| l.index).unwrap_or(0)
}

/// Builds a snapshot of the state as of one engine view; see the module documentation.
pub struct SnapshotBuilder {
    sm: Arc<StateMachine>,
    member: u64,
    current: Current,
}

impl RaftSnapshotBuilder<C> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let started = Instant::now();
        let engine = self.sm.mvcc.engine().clone();
        // openraft runs this beside apply: everything comes from one engine view.
        let (data, applied) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut applied = None;
            let data = snapshot::encode(&*engine, &mut |cf, k, v| {
                if cf == Cf::Meta && k == META_RAFT_APPLIED {
                    applied = Some(v.to_vec());
                }
            })?;
            let applied = match applied {
                Some(v) => rpb::SnapshotMeta::decode(v.as_slice())?,
                None => rpb::SnapshotMeta::default(),
            };
            // The applies this snapshot covers were written unsynced; the log is purged
            // up to it next, so they must be durable first. One synced write syncs the
            // WAL, and with it every earlier write.
            let mut b = WriteBatch::default();
            b.put(Cf::RaftState, KEY_LAST_SNAPSHOT, applied.encode_to_vec());
            engine.write(b, true)?;
            Ok((data, applied))
        })
        .await
        .map_err(snap_write_err)?
        .map_err(snap_write_err)?;
        let last_log_id = convert::opt_log_id_from_pb(&applied.last_log_id);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let index = e_index(&last_log_id);
        let term = last_log_id.map(|l| l.leader_id.term).unwrap_or(0);
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: convert::stored_membership_from_pb(
                &applied.last_membership_log_id,
                &applied.last_membership,
            ),
            // Unique per build, so a receiver never mixes chunks of two snapshots.
            snapshot_id: format!("{term}-{index}-{nanos:x}"),
        };
        let data = Arc::new(data);
        {
            // An install may have overtaken this build (it runs beside the state machine):
            // never replace a newer current snapshot with an older one.
            let mut cur = self.current.lock();
            if cur
                .as_ref()
                .is_none_or(|(m, _)| m.last_log_id <= meta.last_log_id)
            {
                *cur = Some((meta.clone(), data.clone()));
            }
        }
        METRICS.snap_save.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            member = %format!("{:x}", self.member),
            term,
            index,
            bytes = data.len(),
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use capstan_proto::etcdserverpb as pb;
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::apply::Op;
    use crate::engine::memory::MemEngine;
    use crate::mvcc::KvRead;
    use crate::server::maintenance::hash_kv;
    use crate::watch::{Notice, WatchSpec, WatchStream, AUTO_WATCH_ID, STREAM_CAPACITY};

    fn store() -> (Arc<StateMachine>, SmStore) {
        let sm = Arc::new(StateMachine::open(Arc::new(MemEngine::new()), 1).expect("open"));
        let (st, _) = SmStore::open(sm.clone(), 1, Arc::new(Waiters::default())).expect("sm");
        (sm, st)
    }

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    fn entry(index: u64, op: Op) -> Entry<C> {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(rpb::Proposal {
                member: 9,
                seq: index,
                request: ApplyRequest { op: Some(op) }.encode_to_vec(),
                items: Vec::new(),
            }),
        }
    }

    fn put(key: &str, value: &str, lease: i64) -> Op {
        Op::Put(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        })
    }

    /// A membership entry, then puts, a lease with a key, a user, a delete and a
    /// compaction at `compact` (0: none); returns the next free index.
    async fn fill(st: &mut SmStore, compact: i64) -> u64 {
        let mut nodes = BTreeMap::new();
        nodes.insert(1, Member::default());
        let membership = Membership::new(vec![[1u64].into_iter().collect()], nodes);
        let mut entries = vec![Entry::<C> {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership),
        }];
        let mut ops = vec![Op::LeaseGrant(pb::LeaseGrantRequest { ttl: 60, id: 7 })];
        for i in 0..20 {
            ops.push(put(&format!("k/{i:02}"), &format!("v{i}"), 0));
        }
        ops.push(put("leased", "x", 7));
        ops.push(Op::AuthUserAdd(pb::AuthUserAddRequest {
            name: "alice".into(),
            options: Some(capstan_proto::authpb::UserAddOptions { no_password: true }),
            ..Default::default()
        }));
        ops.push(Op::DeleteRange(pb::DeleteRangeRequest {
            key: b"k/00".to_vec(),
            ..Default::default()
        }));
        if compact > 0 {
            ops.push(Op::Compaction(pb::CompactionRequest {
                revision: compact,
                physical: false,
            }));
        }
        let mut index = 2;
        for op in ops {
            entries.push(entry(index, op));
            index += 1;
        }
        st.apply(entries).await.expect("apply");
        index
    }

    async fn next(ws: &mut WatchStream) -> Notice {
        tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("a notice in time")
            .expect("stream open")
    }

    /// The leader merges the batches its followers forward into its own entries, so
    /// one entry holds requests of several members: each member answers only its own
    /// clients (a follower's sequence numbers may equal this member's), each with the
    /// result of its own request.
    #[tokio::test]
    async fn an_entry_of_several_members_answers_only_this_members_clients() {
        let sm = Arc::new(StateMachine::open(Arc::new(MemEngine::new()), 1).expect("open"));
        let waiters = Arc::new(Waiters::default());
        let (mut st, _) = SmStore::open(sm.clone(), 1, waiters.clone()).expect("sm");
        let (mine, mut mine_rx) = oneshot::channel();
        waiters.insert(5, mine);
        let (same_seq, mut same_seq_rx) = oneshot::channel();
        waiters.insert(6, same_seq);
        let req = |k: &str| {
            ApplyRequest {
                op: Some(put(k, "v", 0)),
            }
            .encode_to_vec()
        };
        let item = |seq, k: &str, member| rpb::ProposalItem {
            seq,
            request: req(k),
            member,
        };
        let e = Entry::<C> {
            log_id: log_id(1),
            payload: EntryPayload::Normal(rpb::Proposal {
                member: 2,
                seq: 0,
                request: Vec::new(),
                // Member 2's seq 6, this member's seq 5, and (member 0) the proposal's
                // member, 2, again.
                items: vec![item(6, "a", 2), item(5, "b", 1), item(6, "c", 0)],
            }),
        };
        st.apply([e]).await.expect("apply");
        // Answered within the apply, before it returns.
        let r = mine_rx.try_recv().expect("answered").expect("applied");
        // "a" made revision 2, "b" 3: the answer is b's own.
        assert_eq!(r.revision(), 3);
        assert!(matches!(
            same_seq_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        let all = crate::mvcc::range(
            &sm.mvcc,
            &pb::RangeRequest {
                key: b"a".to_vec(),
                range_end: b"d".to_vec(),
                ..Default::default()
            },
        )
        .expect("range");
        assert_eq!(all.count, 3);
    }

    #[tokio::test]
    async fn build_then_install_into_a_fresh_member_gives_the_same_state() {
        let (sm1, mut st1) = store();
        let next_index = fill(&mut st1, 10).await;
        let snap = st1
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        assert_eq!(snap.meta.last_log_id, Some(log_id(next_index - 1)));
        assert_eq!(snap.meta.last_membership.log_id(), &Some(log_id(1)));

        let (sm2, mut st2) = store();
        // A watcher from before the install needs revisions the snapshot compacted away.
        let mut ws = WatchStream::new(sm2.clone(), STREAM_CAPACITY);
        let spec = WatchSpec {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            ..Default::default()
        };
        let (id, _) = ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
        st2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect("install");

        assert_eq!(hash_kv(&sm2.mvcc, 0).ok(), hash_kv(&sm1.mvcc, 0).ok());
        assert_eq!(sm2.mvcc.current_rev(), sm1.mvcc.current_rev());
        assert_eq!(sm2.mvcc.compact_rev(), 10);
        assert_eq!(sm2.applied_index(), next_index - 1);
        assert_eq!(sm2.lessor.ids(), vec![7]);
        assert_eq!(
            sm2.lessor.get(7).map(|l| l.keys.len()),
            Some(1),
            "the attachment came along"
        );
        assert_eq!(sm2.auth.user_list(), vec!["alice".to_string()]);
        let (applied, membership) = st2.applied_state().await.expect("state");
        assert_eq!(applied, Some(log_id(next_index - 1)));
        assert_eq!(membership.log_id(), &Some(log_id(1)));
        let current = st2.get_current_snapshot().await.expect("get");
        assert_eq!(
            current.map(|s| s.meta.snapshot_id),
            Some(snap.meta.snapshot_id.clone())
        );
        assert_eq!(
            next(&mut ws).await,
            Notice::Compacted {
                watch_id: id,
                compact_revision: 10
            },
            "canceled with the compact revision, not left silently behind"
        );

        // Both go on applying the same log to the same state; replays are skipped.
        let more = vec![
            entry(next_index - 1, put("k/replayed", "no", 0)),
            entry(next_index, put("k/after", "yes", 0)),
        ];
        st1.apply(more.clone()).await.expect("apply");
        st2.apply(more).await.expect("apply");
        assert_eq!(hash_kv(&sm2.mvcc, 0).ok(), hash_kv(&sm1.mvcc, 0).ok());
        assert_eq!(sm2.mvcc.current_rev(), sm1.mvcc.current_rev());
    }

    #[tokio::test]
    async fn watchers_catch_up_across_an_install_from_the_new_history() {
        let (_sm1, mut st1) = store();
        fill(&mut st1, 0).await;
        let snap = st1
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let (sm2, mut st2) = store();
        let mut ws = WatchStream::new(sm2.clone(), STREAM_CAPACITY);
        let spec = WatchSpec {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            ..Default::default()
        };
        let (id, _) = ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
        st2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect("install");
        let mut got = Vec::new();
        while got.len() < 21 {
            match next(&mut ws).await {
                Notice::Events { watch_id, events } => {
                    assert_eq!(watch_id, id);
                    got.extend(events.into_iter().filter_map(|e| e.kv).map(|kv| kv.key));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got.first().map(Vec::as_slice), Some(&b"k/00"[..]));
        assert_eq!(
            got.last().map(Vec::as_slice),
            Some(&b"k/00"[..]),
            "the delete"
        );
    }
}
