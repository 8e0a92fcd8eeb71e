//! What a run records: every client call (invocation, completion, result) and every
//! watch response, with times in nanoseconds since the run started. Everything
//! serialises to JSON so a failing run's history can be saved and inspected (or fed
//! back into the checkers by hand).

use serde::{Deserialize, Serialize};

/// A call as the client issued it. Values are unique per run (`c<client>-<seq>`), so
/// a read names the one write it observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// `Put(key, value)`; `lease` is non-zero for a key attached to a lease.
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    /// A linearizable `Range` of one key.
    Get { key: String },
    /// A txn: `if value(key) == expect (None: key absent) then put(key, new) else get(key)`.
    Cas {
        key: String,
        expect: Option<String>,
        new: String,
    },
    /// `DeleteRange` of one key.
    Delete { key: String },
    /// `LeaseGrant` (TTL seconds).
    LeaseGrant { ttl: i64 },
    /// `LeaseRevoke`; `key` is the one key this run attached to the lease, which the
    /// revoke deletes.
    LeaseRevoke { id: i64, key: Option<String> },
}

impl Input {
    /// The key the call reads or writes (for per-key checking), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Input::Put { key, .. }
            | Input::Get { key }
            | Input::Cas { key, .. }
            | Input::Delete { key } => Some(key),
            Input::LeaseRevoke { key, .. } => key.as_deref(),
            Input::LeaseGrant { .. } => None,
        }
    }

    /// Whether the call may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, Input::Get { .. })
    }
}

/// A call's result. `Unknown` is a failed or timed-out call: it may or may not have
/// taken effect, at any time after its invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Put,
    Get {
        value: Option<String>,
        mod_rev: i64,
    },
    /// `current` is the value the failure branch read (`None` when it succeeded).
    Cas {
        succeeded: bool,
        current: Option<String>,
    },
    Delete {
        deleted: i64,
    },
    LeaseGrant {
        id: i64,
    },
    LeaseRevoke,
    Unknown {
        error: String,
    },
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (one session) that issued it; its calls are sequential.
    pub client: usize,
    /// The member the client talks to.
    pub member: usize,
    pub input: Input,
    pub output: Output,
    /// Nanoseconds since the run started.
    pub invoke: u64,
    pub complete: u64,
    /// The response header's revision (0 for a failed call).
    pub rev: i64,
}

impl Op {
    /// Whether the outcome is unknown.
    pub fn unknown(&self) -> bool {
        matches!(self.output, Output::Unknown { .. })
    }
}

/// One event as a watch delivered it (or the reference history holds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub rev: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

/// What one watcher saw, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchRecord {
    /// A (re)created watch from `start_rev` on `member`.
    Created {
        member: usize,
        start_rev: i64,
        at: u64,
    },
    /// A response carrying events (all of them, in order).
    Events { events: Vec<Event>, at: u64 },
    /// A progress notification: everything up to `rev` has been delivered.
    Progress { rev: i64, at: u64 },
    /// The server canceled the watch (we never compact, so this is unexpected).
    Canceled {
        reason: String,
        compact_rev: i64,
        at: u64,
    },
    /// The stream broke (member killed, partitioned, ...); the watcher resumes.
    Broken { error: String, at: u64 },
}

/// One watcher's full record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchHistory {
    pub watcher: usize,
    /// The prefix watched.
    pub prefix: String,
    pub records: Vec<WatchRecord>,
}

/// Everything a run recorded, as saved for a failing run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub seed: u64,
    pub ops: Vec<Op>,
    pub watches: Vec<WatchHistory>,
    /// The reference event history read at the end (every revision under the
    /// workload's prefix since the workload started).
    pub reference: Vec<Event>,
}
