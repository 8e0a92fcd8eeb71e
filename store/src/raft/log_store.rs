//! The Raft log and vote in RocksDB (`Cf::RaftLog`, `Cf::RaftState`), for openraft's
//! storage-v2 `RaftLogStorage`. Each append is one `WriteBatch` with one fsync (group
//! commit: openraft hands over every entry it has queued), and the log's bounds live
//! beside the vote so start-up needs no scan.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

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

/// See the module documentation. Cheap to clone: it is the engine handle.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
}

impl LogStore {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self { engine }
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

    /// Writes `batch` durably off the async runtime (the fsync blocks).
    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError<u64>> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.write(batch, true))
            .await
            .map_err(write_err)?
            .map_err(write_err)
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
        match bad {
            Some(e) => Err(read_err(format!("corrupt log entry: {e}"))),
            None => Ok(out),
        }
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id = self.get_log_id(KEY_LAST_PURGED)?;
        let last_log_id = self.get_log_id(KEY_LAST_LOG)?.or(last_purged_log_id);
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
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.write(b, true))
            .await
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e.to_string())))?
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e.to_string())))?;
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
        let mut last = None;
        for e in entries {
            b.put(
                Cf::RaftLog,
                key(e.log_id.index).to_vec(),
                convert::entry_to_pb(&e).encode_to_vec(),
            );
            last = Some(e.log_id);
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        b.put(
            Cf::RaftState,
            KEY_LAST_LOG,
            convert::log_id_to_pb(&last).encode_to_vec(),
        );
        let entries = b.len() - 1;
        match self.write_synced(b).await {
            Ok(()) => {
                tracing::trace!(
                    index = last.index,
                    term = last.leader_id.term,
                    entries,
                    "raft log appended"
                );
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(
            index = log_id.index,
            term = log_id.leader_id.term,
            "truncating raft log"
        );
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
        self.write_synced(b).await
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
        self.write_synced(b).await
    }
}
