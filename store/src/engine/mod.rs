//! The storage-engine boundary, in the manner of TiKV's `engine_traits`.
//!
//! MVCC, leases and auth speak only to [`Engine`]; RocksDB ([`rocks::RocksEngine`]) is the
//! production implementation and [`memory::MemEngine`] a pure in-memory one. One
//! conformance suite (`tests` below) runs against both, so a new engine must behave
//! identically before the store can sit on it.

pub mod memory;
pub mod rocks;

use std::fmt;

/// A keyspace inside the engine (a RocksDB column family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// MVCC history: `revision -> (tombstone flag, KeyValue)`; the source of truth for keys.
    History,
    /// Leases: `lease id -> (ttl, remaining ttl checkpoint)`.
    Lease,
    /// Users, roles and the auth switch.
    Auth,
    /// Applied index, compaction marks, term and the other scalars.
    Meta,
    /// The Raft log (multi-member clusters): `index (big-endian) -> raftpb.Entry`.
    RaftLog,
    /// The Raft vote and the log's bounds (last and last purged log id).
    RaftState,
}

impl Cf {
    /// Every keyspace, in a fixed order. New keyspaces go at the end: snapshots record a
    /// keyspace by its position here.
    pub const ALL: [Cf; 6] = [
        Cf::History,
        Cf::Lease,
        Cf::Auth,
        Cf::Meta,
        Cf::RaftLog,
        Cf::RaftState,
    ];

    /// Whether the keyspace holds replicated state (what snapshots, hashes and restores
    /// carry) rather than one member's own consensus bookkeeping.
    pub fn is_state(self) -> bool {
        !matches!(self, Cf::RaftLog | Cf::RaftState)
    }

    /// The column-family name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::History => "history",
            Cf::Lease => "lease",
            Cf::Auth => "auth",
            Cf::Meta => "meta",
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
        }
    }
}

/// A failure of the storage engine itself (I/O, corruption): never the client's fault.
#[derive(Debug, thiserror::Error)]
pub struct EngineError(pub String);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage engine: {}", self.0)
    }
}

/// One mutation inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes `[start, end)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// An atomic group of mutations: all of it reaches disk or none of it does.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    pub ops: Vec<BatchOp>,
}

impl WriteBatch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put(cf, key.into(), value.into()));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete(cf, key.into()));
    }
    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops
            .push(BatchOp::DeleteRange(cf, start.into(), end.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Receives each record of [`Engine::export`]; returns `false` to stop.
pub type ExportVisitor<'a> = dyn FnMut(Cf, &[u8], &[u8]) -> bool + 'a;

/// What the store needs from a storage engine.
pub trait Engine: Send + Sync + 'static {
    /// Point read.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Visits `[start, end)` in ascending key order (`end = None`: to the end of the
    /// keyspace) until `visit` returns `false`.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError>;

    /// Applies the batch atomically. With `sync`, it is on stable storage when this returns.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), EngineError>;

    /// Reclaims the space of deleted data (background compaction, defragmentation).
    fn compact(&self) -> Result<(), EngineError>;

    /// Bytes the engine occupies (on disk for RocksDB).
    fn size_bytes(&self) -> u64;

    /// Visits every record of every keyspace (in [`Cf::ALL`] order, keys ascending) from
    /// one point-in-time view, so a snapshot never mixes half of a batch with the rest:
    /// the applied index it carries matches the data. Stops when `visit` returns `false`.
    fn export(&self, visit: &mut ExportVisitor<'_>) -> Result<(), EngineError>;
}

#[cfg(test)]
mod tests;
