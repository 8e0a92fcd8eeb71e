//! The Raft log and vote in RocksDB (`Cf::RaftLog`, `Cf::RaftState`), for openraft's
//! storage-v2 `RaftLogStorage`, with group commit.
//!
//! openraft 0.9 hands the store one client write at a time and waits for `append` to
//! return before taking the next, so an `append` that fsyncs before returning costs one
//! fsync per write and caps a cluster at the disk's fsync rate. As the storage-v2
//! contract allows, `append` therefore only makes the entries readable (in `pending`)
//! and queues them; one writer thread drains everything queued into a single
//! `WriteBatch` with one fsync, then reports each append flushed, in order. Truncate,
//! purge and vote writes travel the same queue, so all log mutations reach disk in the
//! order openraft issued them, and they return only once durable. The log's bounds
//! live beside the vote so start-up needs no scan.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;

use capstan_proto::raftpb as rpb;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use prost::Message;

use super::convert;
use super::TypeConfig;
use crate::engine::{Cf, Engine, WriteBatch};

type C = TypeConfig;

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_LOG: &[u8] = b"last_log_id";
const KEY_LAST_PURGED: &[u8] = b"last_purged_log_id";

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Past every 8-byte index key (range ends are exclusive).
const END_OF_LOG: [u8; 9] = [0xff; 9];

fn read_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

/// A log mutation for the writer thread.
enum Job {
    /// Entries already readable from `pending`; reported flushed through `callback`.
    Append {
        batch: WriteBatch,
        ids: Vec<LogId<u64>>,
        callback: LogFlushed<C>,
    },
    /// Truncate, purge or vote: the caller waits for `done`.
    Sync {
        batch: WriteBatch,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// The most jobs merged into one fsync, so one write stays a bounded batch.
const MAX_JOBS_PER_FSYNC: usize = 4096;

/// See the module documentation. Cheap to clone: clones share the engine, the pending
/// entries and the writer's queue.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    /// Appended but not yet durable, by index: what readers see beside the engine.
    pending: Arc<Mutex<BTreeMap<u64, Entry<C>>>>,
    jobs: mpsc::Sender<Job>,
}

impl LogStore {
    /// Opens the log on `engine` and starts its writer thread, which ends when the last
    /// clone is dropped.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        let (jobs, rx) = mpsc::channel();
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let (w_engine, w_pending) = (engine.clone(), pending.clone());
        let spawned = std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || run_writer(w_engine, w_pending, rx));
        if let Err(e) = spawned {
            // Without a writer no append can complete; openraft then stops on the
            // first failed flush, which is the right outcome for an unusable store.
            tracing::error!(error = %e, "cannot start the raft log writer");
        }
        Self {
            engine,
            pending,
            jobs,
        }
    }

    // openraft's StorageError is large; it is openraft's type, boxed by openraft itself.
    #[allow(clippy::result_large_err)]
    fn get_log_id(&self, k: &[u8]) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let Some(v) = self.engine.get(Cf::RaftState, k).map_err(read_err)? else {
            return Ok(None);
        };
        let l = rpb::LogId::decode(v.as_slice()).map_err(read_err)?;
        Ok(Some(convert::log_id_from_pb(&l)))
    }

    /// Queues `batch` behind every earlier log mutation and waits until it is durable.
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), String> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Job::Sync { batch, done })
            .map_err(|_| "raft log writer stopped".to_string())?;
        rx.await
            .map_err(|_| "raft log writer stopped".to_string())?
    }
}

/// The writer thread: merges every queued job into one synced batch (group commit),
/// then completes them in queue order.
fn run_writer(
    engine: Arc<dyn Engine>,
    pending: Arc<Mutex<BTreeMap<u64, Entry<C>>>>,
    rx: mpsc::Receiver<Job>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_FSYNC {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::default();
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Append {
                    batch: b,
                    ids,
                    callback,
                } => {
                    batch.ops.extend(b.ops);
                    done.push((Some((ids, callback)), None));
                }
                Job::Sync { batch: b, done: d } => {
                    batch.ops.extend(b.ops);
                    done.push((None, Some(d)));
                }
            }
        }
        let started = std::time::Instant::now();
        let result = engine.write(batch, true).map_err(|e| e.to_string());
        crate::metrics::METRICS
            .wal_fsync
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log write failed");
        }
        for (append, sync) in done {
            if let Some((ids, callback)) = append {
                if result.is_ok() {
                    // Durable now; keep an entry only if a truncate and re-append
                    // replaced it meanwhile (then the newer one is still pending).
                    let mut p = pending.lock();
                    for id in &ids {
                        if p.get(&id.index).map(|e| e.log_id) == Some(*id) {
                            p.remove(&id.index);
                        }
                    }
                }
                callback.log_io_completed(result.clone().map_err(std::io::Error::other));
            }
            if let Some(d) = sync {
                let _ = d.send(result.clone());
            }
        }
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.checked_add(1),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        // Appended entries not yet on disk, taken *before* reading the engine: the
        // writer removes an entry from `pending` only after it is in the engine, so an
        // entry missing from this copy is already on disk and the scan below sees it.
        // (Reading the engine first could miss an entry flushed between the two.)
        let upper = end.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
        let unflushed: Vec<Entry<C>> = self
            .pending
            .lock()
            .range((Bound::Included(start), upper))
            .map(|(_, e)| e.clone())
            .collect();
        // Replication usually asks for entries the leader has just appended, before
        // they are on disk: when the unflushed copy holds every index asked for, the
        // engine has nothing newer and the scan (an iterator and a decode per entry)
        // is skipped.
        if let (Some(end), Some(first)) = (end, unflushed.first()) {
            if first.log_id.index == start && unflushed.len() as u64 == end.saturating_sub(start) {
                return Ok(unflushed);
            }
        }
        let end_key = end.map(key);
        let mut out = Vec::new();
        let mut bad = None;
        self.engine
            .scan(
                Cf::RaftLog,
                &key(start),
                Some(end_key.as_ref().map(|k| &k[..]).unwrap_or(&END_OF_LOG)),
                &mut |_, v| match rpb::Entry::decode(v)
                    .map_err(|e| e.to_string())
                    .and_then(|e| convert::entry_from_pb(e).map_err(|e| e.to_string()))
                {
                    Ok(e) => {
                        out.push(e);
                        true
                    }
                    Err(e) => {
                        bad = Some(e);
                        false
                    }
                },
            )
            .map_err(read_err)?;
        if let Some(e) = bad {
            return Err(read_err(format!("corrupt log entry: {e}")));
        }
        if unflushed.is_empty() {
            return Ok(out);
        }
        // An unflushed entry is newer than whatever the engine has at its index.
        let mut merged: BTreeMap<u64, Entry<C>> =
            out.into_iter().map(|e| (e.log_id.index, e)).collect();
        for e in unflushed {
            merged.insert(e.log_id.index, e);
        }
        Ok(merged.into_values().collect())
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id = self.get_log_id(KEY_LAST_PURGED)?;
        let pending_last = self.pending.lock().values().next_back().map(|e| e.log_id);
        let last_log_id = pending_last
            .or(self.get_log_id(KEY_LAST_LOG)?)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut b = WriteBatch::default();
        b.put(
            Cf::RaftState,
            KEY_VOTE,
            convert::vote_to_pb(vote).encode_to_vec(),
        );
        self.write_synced(b)
            .await
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let v = self
            .engine
            .get(Cf::RaftState, KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(openraft::AnyError::error(e.to_string())))?;
        match v {
            None => Ok(None),
            Some(v) => {
                let v = rpb::Vote::decode(v.as_slice()).map_err(|e| {
                    StorageIOError::read_vote(openraft::AnyError::error(e.to_string()))
                })?;
                Ok(Some(convert::vote_from_pb(&v)))
            }
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::default();
        let mut ids = Vec::new();
        let mut readable = Vec::new();
        for e in entries {
            b.put(
                Cf::RaftLog,
                key(e.log_id.index).to_vec(),
                convert::entry_to_pb(&e).encode_to_vec(),
            );
            ids.push(e.log_id);
            readable.push(e);
        }
        let Some(last) = ids.last().copied() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        b.put(
            Cf::RaftState,
            KEY_LAST_LOG,
            convert::log_id_to_pb(&last).encode_to_vec(),
        );
        {
            let mut p = self.pending.lock();
            for e in readable {
                p.insert(e.log_id.index, e);
            }
        }
        tracing::trace!(
            index = last.index,
            term = last.leader_id.term,
            entries = ids.len(),
            "raft log append queued"
        );
        self.jobs
            .send(Job::Append {
                batch: b,
                ids,
                callback,
            })
            .map_err(|_| write_err("raft log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(
            index = log_id.index,
            term = log_id.leader_id.term,
            "truncating raft log"
        );
        // Truncated entries stop being readable now; a queued append of them still
        // reaches disk first, and this truncate's batch then deletes them.
        self.pending.lock().split_off(&log_id.index);
        let mut b = WriteBatch::default();
        b.delete_range(Cf::RaftLog, key(log_id.index).to_vec(), END_OF_LOG.to_vec());
        // The new last entry is the one before the truncation point (or the purge mark).
        let prev = match log_id.index.checked_sub(1) {
            Some(i) => self
                .try_get_log_entries(i..=i)
                .await?
                .pop()
                .map(|e| e.log_id),
            None => None,
        };
        match prev {
            Some(p) => b.put(
                Cf::RaftState,
                KEY_LAST_LOG,
                convert::log_id_to_pb(&p).encode_to_vec(),
            ),
            None => b.delete(Cf::RaftState, KEY_LAST_LOG),
        }
        self.write_synced(b).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(
            index = log_id.index,
            term = log_id.leader_id.term,
            "purging raft log"
        );
        let mut b = WriteBatch::default();
        // The purge mark first in the same batch: the log's bounds never disagree with it.
        b.put(
            Cf::RaftState,
            KEY_LAST_PURGED,
            convert::log_id_to_pb(&log_id).encode_to_vec(),
        );
        let end = log_id.index.checked_add(1).map(|i| key(i).to_vec());
        b.delete_range(
            Cf::RaftLog,
            key(0).to_vec(),
            end.unwrap_or_else(|| END_OF_LOG.to_vec()),
        );
        self.write_synced(b).await.map_err(write_err)
    }
}
