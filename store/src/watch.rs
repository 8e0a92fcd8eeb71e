//! The watch hub: fans committed events out to watchers, in the manner of etcd's
//! `watchableStore`.
//!
//! Every watcher belongs to a [`WatchStream`] (one gRPC `Watch` call; its watchers share
//! one bounded channel) and is either *synced* or *unsynced*:
//! - A synced watcher is pushed each applied batch's matching events by
//!   [`WatchHub::notify`], on the applier thread, with a `try_send` that never waits.
//! - A watcher whose channel is full becomes unsynced and remembers the first revision
//!   it did not get; a watcher created with a start revision in the past starts out
//!   unsynced. The syncer thread reads what such watchers missed from the history
//!   keyspace, in chunks, sends it once their channel has room, and moves them back to
//!   the synced set when they have caught up with the newest notified revision.
//!
//! So a slow client costs at most its channel's worth of memory, never stalls the
//! applier or other streams, and loses nothing, unless the history it still needs is
//! compacted, which cancels the watcher with the compacted revision as etcd does.
//!
//! The invariants, all kept under the hub lock: `last_rev` is the newest revision handed
//! to `notify`; a synced watcher has been sent every matching event below its `min_rev`
//! and `min_rev > last_rev` held when it became synced, so every later batch's events at
//! or above `min_rev` are exactly what it still needs; an unsynced watcher has been sent
//! every matching event below its `next_rev` and none at or above it. Events of one
//! revision always travel in one delivery: a batch holds whole revisions, and catch-up
//! reads cover whole revisions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use capstan_proto::mvccpb::{event::EventType, Event, KeyValue};
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc;

use crate::apply::StateMachine;
use crate::error::StoreError;
use crate::mvcc::{KeyRange, KvRead, Revision};

/// The capacity of a stream's channel, in deliveries (etcd's `chanBufLen`).
pub const STREAM_CAPACITY: usize = 128;
/// A create request's `watch_id` asking the server to choose one.
pub const AUTO_WATCH_ID: i64 = 0;
/// The watch ID of responses that belong to no single watcher.
pub const INVALID_WATCH_ID: i64 = -1;

/// Revisions one catch-up read covers at most, so a watcher far behind neither loads
/// the whole history at once nor starves watchers that are only a little behind.
const CATCH_UP_REVS: i64 = 1000;
/// How soon the syncer retries watchers whose channels were full.
const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Why a watcher could not be created; the strings are etcd's `mvcc` errors, which it
/// sends as the `cancel_reason` of the create response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `range_end` is not after `key`.
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// The client chose a watch ID the stream already uses.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
}

/// What to watch, decoded from a `WatchCreateRequest`.
#[derive(Clone, Debug, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// etcd's encoding: empty for one key, `"\0"` for every key from `key` on.
    pub range_end: Vec<u8>,
    /// The first revision to deliver; 0 for "after the current revision".
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// What a [`WatchStream`] yields. Event notices hold whole revisions in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Events {
        watch_id: i64,
        events: Vec<Event>,
    },
    /// The watcher needed history that is compacted away; it is canceled.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
    },
    /// Every event up to `revision` has been delivered to the watcher (or, with
    /// [`INVALID_WATCH_ID`], to every watcher of the stream).
    Progress {
        watch_id: i64,
        revision: i64,
    },
}

/// What travels through a stream's channel; `watcher` is the hub's key, never reused,
/// so a delivery still queued for a canceled watcher cannot reach a new watcher that
/// took the same client-visible ID.
enum Delivery {
    Events {
        watcher: u64,
        batch: Arc<Vec<Event>>,
        picks: Picks,
    },
    Compacted {
        watcher: u64,
        compact_rev: i64,
    },
    Progress {
        watcher: Option<u64>,
        rev: i64,
    },
}

/// Which events of a delivered batch are the watcher's.
enum Picks {
    /// Every one: no list to allocate per watcher, which for a batch of one event
    /// (the usual batch of a lightly loaded store) was most of a fan-out's cost.
    All,
    /// These, by index into the batch.
    These(Vec<u32>),
}

impl Picks {
    /// `picks` of a batch of `n` events.
    fn of(picks: Vec<u32>, n: usize) -> Self {
        if picks.len() == n {
            Picks::All
        } else {
            Picks::These(picks)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    /// Gets every batch's events at or above `min_rev` from `notify`.
    Synced { min_rev: i64 },
    /// Waits for the syncer to send events from `next_rev` on.
    Unsynced { next_rev: i64 },
}

/// A watcher's `NOPUT`/`NODELETE` filters.
#[derive(Clone, Copy, Debug, Default)]
struct Filter {
    no_put: bool,
    no_delete: bool,
}

impl Filter {
    fn passes(self, ev: &Event) -> bool {
        if ev.r#type == EventType::Put as i32 {
            !self.no_put
        } else {
            !self.no_delete
        }
    }
}

struct Watcher {
    range: KeyRange,
    filter: Filter,
    prev_kv: bool,
    start_rev: i64,
    tx: mpsc::Sender<Delivery>,
    sync: SyncState,
    /// Scratch for `notify`: the index of this watcher's picks, valid while
    /// `pick_epoch` equals the hub's `epoch` (saves a map lookup per matched event).
    pick_epoch: u64,
    pick_slot: usize,
}

/// Hashes the hub's watcher keys (sequential integers) with one multiplication.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, k: u64) {
        self.0 = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;
type KeySet = HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// A synced range watcher, as `notify` scans them.
struct RangeEntry {
    start: Vec<u8>,
    /// `None`: to the end of the key space.
    end: Option<Vec<u8>>,
    watcher: u64,
}

#[derive(Default)]
struct State {
    watchers: KeyMap<Watcher>,
    /// Synced watchers of one key, by key: the common case, found with one lookup.
    keys: HashMap<Vec<u8>, Vec<u64>>,
    /// Synced watchers of a range, sorted by start so a key's candidates are a prefix
    /// found by binary search.
    ranges: Vec<RangeEntry>,
    unsynced: KeySet,
    /// Numbers `notify` calls, for the watchers' pick slots.
    epoch: u64,
    /// The newest revision handed to `notify`.
    last_rev: i64,
    /// Whether `last_rev` has been brought up to the store's revision; see [`WatchHub::add`].
    primed: bool,
    next_key: u64,
    closed: bool,
}

impl State {
    fn index(&mut self, key: u64, range: &KeyRange) {
        match range {
            KeyRange::Single(k) => self.keys.entry(k.clone()).or_default().push(key),
            KeyRange::Interval(start, end) => {
                let at = self.ranges.partition_point(|r| r.start <= *start);
                let entry = RangeEntry {
                    start: start.clone(),
                    end: end.clone(),
                    watcher: key,
                };
                self.ranges.insert(at, entry);
            }
        }
    }

    fn unindex(&mut self, key: u64, range: &KeyRange) {
        match range {
            KeyRange::Single(k) => {
                if let Some(v) = self.keys.get_mut(k) {
                    v.retain(|w| *w != key);
                    if v.is_empty() {
                        self.keys.remove(k);
                    }
                }
            }
            KeyRange::Interval(..) => self.ranges.retain(|r| r.watcher != key),
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(w) = self.watchers.remove(&key) {
            match w.sync {
                SyncState::Synced { .. } => self.unindex(key, &w.range),
                SyncState::Unsynced { .. } => {
                    self.unsynced.remove(&key);
                }
            }
        }
    }

    /// Moves a synced watcher to the unsynced set from `next_rev` on.
    fn unsync(&mut self, key: u64, next_rev: i64) {
        let Some(w) = self.watchers.get_mut(&key) else {
            return;
        };
        if matches!(w.sync, SyncState::Synced { .. }) {
            w.sync = SyncState::Unsynced { next_rev };
            let range = w.range.clone();
            self.unindex(key, &range);
            self.unsynced.insert(key);
        }
    }

    /// Whether some unsynced watcher's channel has room for the syncer to use.
    fn syncer_has_work(&self) -> bool {
        self.unsynced
            .iter()
            .any(|k| self.watchers.get(k).is_some_and(|w| w.tx.capacity() > 0))
    }

    /// Sends a progress notice for `watchers` if all are synced and past their start
    /// revision, as etcd's `progressIfSync`; `watcher` labels the notice.
    fn progress(&self, watchers: &[u64], watcher: Option<u64>) -> bool {
        let mut rev = i64::MAX;
        let mut tx = None;
        for k in watchers {
            let Some(w) = self.watchers.get(k) else {
                return false;
            };
            let SyncState::Synced { min_rev } = w.sync else {
                return false;
            };
            if self.last_rev < w.start_rev {
                return false;
            }
            // Everything below `min_rev` and every notified batch reached it; a watcher
            // created while a batch was published but not yet notified starts above
            // `last_rev`, and must not be told of a revision before its creation.
            rev = rev.min(self.last_rev.max(min_rev - 1));
            tx = Some(&w.tx);
        }
        // Like etcd, a stream without watchers gets no progress notice; a full channel
        // drops it (the client asks again).
        if let Some(tx) = tx {
            let _ = tx.try_send(Delivery::Progress { watcher, rev });
        }
        true
    }
}

/// Shared between the hub and its syncer thread.
struct Shared {
    state: Mutex<State>,
    /// Wakes the syncer: an unsynced watcher appeared, or the hub is closing.
    wake: Condvar,
    syncer_started: AtomicBool,
}

/// Fans committed events out to watchers. See the module documentation.
pub struct WatchHub {
    shared: Arc<Shared>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WatchHub {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

/// Reads the record a put event replaced, for a `prev_kv` watcher. A failed read leaves
/// the event without it, as etcd's watch stream does when its read fails.
fn load_prev(view: &dyn KvRead, rev: Revision) -> Option<KeyValue> {
    match view.load(rev) {
        Ok(Some(kv)) => Some(kv),
        Ok(None) => {
            tracing::warn!(?rev, "replaced record missing: event sent without prev_kv");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, ?rev, "reading a replaced record failed: event sent without prev_kv");
            None
        }
    }
}

/// Renumbers per-watcher picks of `n` events into a batch holding only picked events;
/// returns, for each old index, whether the event is kept.
fn renumber(n: usize, picks: &mut [(u64, Vec<u32>)]) -> Vec<bool> {
    let mut keep = vec![false; n];
    for (_, p) in picks.iter() {
        for &i in p {
            if let Some(k) = keep.get_mut(i as usize) {
                *k = true;
            }
        }
    }
    let mut new_index = vec![0u32; n];
    let mut next = 0u32;
    for (i, k) in keep.iter().enumerate() {
        if *k {
            new_index[i] = next;
            next += 1;
        }
    }
    for (_, p) in picks.iter_mut() {
        for i in p.iter_mut() {
            *i = new_index.get(*i as usize).copied().unwrap_or(0);
        }
    }
    keep
}

impl WatchHub {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                syncer_started: AtomicBool::new(false),
            }),
        }
    }

    /// Called by the applier after each durable batch, with every event at revisions up
    /// to `rev` in order. Never waits: a watcher whose channel is full is left to the
    /// syncer.
    ///
    /// `unloaded_prev` lists the put events sent without their `prev_kv` (the put did
    /// not read it; see `mvcc::Writer::put`) and the revision of the record each
    /// replaced; those records are read from `view` here, once per event, and only for
    /// events that a `prev_kv` watcher takes. Here, because the batch that could purge
    /// them (a compaction in this very batch) is handed to the purger only after this.
    pub fn notify(
        &self,
        rev: i64,
        events: &[Event],
        unloaded_prev: &[(usize, Revision)],
        view: &dyn KvRead,
    ) {
        let mut st = self.shared.state.lock();
        st.last_rev = st.last_rev.max(rev);
        if events.is_empty() || (st.keys.is_empty() && st.ranges.is_empty()) {
            return;
        }
        let mut picks: Vec<(u64, Vec<u32>)> = Vec::new();
        // One event: whoever takes anything takes it, so no per-watcher list is kept.
        let single = events.len() == 1;
        // Which events a `prev_kv` watcher took; only tracked when some lack it.
        let mut wants_prev = vec![
            false;
            if unloaded_prev.is_empty() {
                0
            } else {
                events.len()
            }
        ];
        {
            st.epoch += 1;
            let State {
                watchers,
                keys,
                ranges,
                epoch,
                ..
            } = &mut *st;
            let epoch = *epoch;
            let mut pick = |key: u64, i: usize, ev: &Event, mod_rev: i64| {
                let Some(w) = watchers.get_mut(&key) else {
                    return;
                };
                let SyncState::Synced { min_rev } = w.sync else {
                    return;
                };
                if mod_rev < min_rev || !w.filter.passes(ev) {
                    return;
                }
                if w.pick_epoch != epoch {
                    w.pick_epoch = epoch;
                    w.pick_slot = picks.len();
                    picks.push((key, Vec::new()));
                }
                if !single {
                    if let Some((_, p)) = picks.get_mut(w.pick_slot) {
                        p.push(i as u32);
                    }
                }
                if w.prev_kv {
                    if let Some(wanted) = wants_prev.get_mut(i) {
                        *wanted = true;
                    }
                }
            };
            for (i, ev) in events.iter().enumerate() {
                let Some(kv) = ev.kv.as_ref() else { continue };
                let key = kv.key.as_slice();
                if let Some(ws) = keys.get(key) {
                    for &k in ws {
                        pick(k, i, ev, kv.mod_revision);
                    }
                }
                let candidates = ranges.partition_point(|r| r.start.as_slice() <= key);
                for r in &ranges[..candidates] {
                    if r.end.as_ref().is_none_or(|e| key < e.as_slice()) {
                        pick(r.watcher, i, ev, kv.mod_revision);
                    }
                }
            }
        }
        if picks.is_empty() {
            return;
        }
        let keep = if single {
            vec![true]
        } else {
            renumber(events.len(), &mut picks)
        };
        let mut unloaded = unloaded_prev.iter().peekable();
        let mut kept = Vec::with_capacity(keep.iter().filter(|k| **k).count());
        for (i, e) in events.iter().enumerate() {
            if !keep.get(i).copied().unwrap_or(false) {
                continue;
            }
            let mut e = e.clone();
            while unloaded.next_if(|(at, _)| *at < i).is_some() {}
            if let Some((_, prev)) = unloaded.next_if(|(at, _)| *at == i) {
                if wants_prev.get(i).copied().unwrap_or(false) {
                    e.prev_kv = load_prev(view, *prev);
                }
            }
            kept.push(e);
        }
        let batch: Arc<Vec<Event>> = Arc::new(kept);
        // Every event of this batch is newer than anything notified before, so a watcher
        // that misses this batch needs history from its first revision on.
        let first_rev = events
            .first()
            .and_then(|e| e.kv.as_ref())
            .map_or(rev, |kv| kv.mod_revision);
        let mut fell_behind = false;
        for (key, p) in picks {
            let Some(w) = st.watchers.get(&key) else {
                continue;
            };
            let SyncState::Synced { min_rev } = w.sync else {
                continue;
            };
            let picks = if single {
                Picks::All
            } else {
                Picks::of(p, batch.len())
            };
            match w.tx.try_send(Delivery::Events {
                watcher: key,
                batch: batch.clone(),
                picks,
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let next_rev = min_rev.max(first_rev);
                    tracing::debug!(
                        watcher = key,
                        next_rev,
                        "watch channel full: watcher falls behind"
                    );
                    st.unsync(key, next_rev);
                    fell_behind = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => st.remove(key),
            }
        }
        drop(st);
        if fell_behind {
            self.shared.wake.notify_one();
        }
    }

    /// Starts the syncer thread once; it ends when the hub is dropped.
    fn start_syncer(&self, sm: &Arc<StateMachine>) {
        if self.shared.syncer_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.shared.clone();
        let sm = Arc::downgrade(sm);
        let spawned = std::thread::Builder::new()
            .name("watch-sync".into())
            .spawn(move || run_syncer(&shared, &sm));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the watch syncer");
            self.shared.syncer_started.store(false, Ordering::SeqCst);
        }
    }

    /// Registers a watcher; returns its key and the revision the watch starts after
    /// (the created response's header revision).
    fn add(
        &self,
        view: &dyn KvRead,
        tx: &mpsc::Sender<Delivery>,
        spec: &WatchSpec,
        range: KeyRange,
    ) -> (u64, i64) {
        let mut st = self.shared.state.lock();
        // The store's revision is published just before its batch is notified, so it may
        // be ahead of `last_rev`; a watcher starting "now" starts after it, and the
        // pending batch is then skipped by its `min_rev`. Before the first watcher
        // exists nobody can miss that batch, so `last_rev` may jump ahead then; this
        // primes it after a restart, when nothing has been notified yet.
        let visible = view.current_rev();
        if !st.primed {
            st.primed = true;
            st.last_rev = st.last_rev.max(visible);
        }
        let cur = st.last_rev.max(visible);
        let start = spec.start_revision;
        let sync = if start == 0 || start > cur {
            SyncState::Synced {
                min_rev: start.max(cur + 1),
            }
        } else {
            SyncState::Unsynced { next_rev: start }
        };
        let key = st.next_key;
        st.next_key += 1;
        let w = Watcher {
            range: range.clone(),
            filter: Filter {
                no_put: spec.no_put,
                no_delete: spec.no_delete,
            },
            prev_kv: spec.prev_kv,
            start_rev: start,
            tx: tx.clone(),
            sync,
            pick_epoch: 0,
            pick_slot: 0,
        };
        st.watchers.insert(key, w);
        match sync {
            SyncState::Synced { .. } => st.index(key, &range),
            SyncState::Unsynced { .. } => {
                st.unsynced.insert(key);
            }
        }
        drop(st);
        if matches!(sync, SyncState::Unsynced { .. }) {
            self.shared.wake.notify_one();
        }
        (key, cur)
    }

    /// Called after a Raft snapshot install replaced the history with one at revision
    /// `rev`: no batch carried the events in between, so every synced watcher becomes
    /// unsynced from the first revision it has not been sent, and the syncer catches it
    /// up from the new history, or cancels it with the compact revision if that history
    /// no longer reaches back far enough (as etcd does). Nothing is missed silently.
    pub fn resync(&self, rev: i64) {
        let mut st = self.shared.state.lock();
        let last_rev = st.last_rev;
        let synced: Vec<(u64, i64)> = st
            .watchers
            .iter()
            .filter_map(|(k, w)| match w.sync {
                // Sent everything below `min_rev` and every notified batch from it on.
                SyncState::Synced { min_rev } => Some((*k, min_rev.max(last_rev + 1))),
                SyncState::Unsynced { .. } => None,
            })
            .collect();
        for (key, next_rev) in synced {
            st.unsync(key, next_rev);
        }
        st.last_rev = st.last_rev.max(rev);
        let woke = !st.unsynced.is_empty();
        drop(st);
        if woke {
            self.shared.wake.notify_one();
        }
    }

    fn remove(&self, key: u64) {
        self.shared.state.lock().remove(key);
    }

    /// Watchers synced and unsynced (for metrics and tests).
    pub fn counts(&self) -> (usize, usize) {
        let st = self.shared.state.lock();
        (st.watchers.len() - st.unsynced.len(), st.unsynced.len())
    }
}

/// The syncer: catches unsynced watchers up from history until the hub is dropped.
fn run_syncer(shared: &Shared, sm: &Weak<StateMachine>) {
    loop {
        {
            let mut st = shared.state.lock();
            loop {
                if st.closed {
                    return;
                }
                if st.syncer_has_work() {
                    break;
                }
                if st.unsynced.is_empty() {
                    shared.wake.wait(&mut st);
                } else {
                    // Their channels are full: look again once the streams have drained.
                    shared.wake.wait_for(&mut st, RETRY_INTERVAL);
                }
            }
        }
        let Some(sm) = sm.upgrade() else { return };
        if !sync_round(shared, &sm) {
            // Nothing could be sent (every channel with room filled up again): do not spin.
            std::thread::sleep(RETRY_INTERVAL);
        }
    }
}

/// One unsynced watcher as the syncer sees it, copied out so the read runs unlocked.
struct Pending {
    key: u64,
    range: KeyRange,
    filter: Filter,
    prev_kv: bool,
    tx: mpsc::Sender<Delivery>,
}

impl Pending {
    fn wants(&self, ev: &Event) -> bool {
        ev.kv
            .as_ref()
            .is_some_and(|kv| self.range.contains(&kv.key))
            && self.filter.passes(ev)
    }
}

/// Sends every unsynced watcher with room in its channel the next chunk of what it
/// missed, and moves those that caught up to the synced set. Returns whether anything
/// was sent or changed.
fn sync_round(shared: &Shared, sm: &StateMachine) -> bool {
    let mut groups: BTreeMap<i64, Vec<Pending>> = BTreeMap::new();
    {
        let st = shared.state.lock();
        for k in &st.unsynced {
            let Some(w) = st.watchers.get(k) else {
                continue;
            };
            let SyncState::Unsynced { next_rev } = w.sync else {
                continue;
            };
            if w.tx.capacity() == 0 {
                continue;
            }
            groups.entry(next_rev).or_default().push(Pending {
                key: *k,
                range: w.range.clone(),
                filter: w.filter,
                prev_kv: w.prev_kv,
                tx: w.tx.clone(),
            });
        }
    }
    let current = sm.mvcc.current_rev();
    let compact = sm.mvcc.compact_rev();
    let mut progressed = false;
    // Watchers that fell behind at the same batch share one read.
    for (next, group) in groups {
        if next < compact {
            let mut st = shared.state.lock();
            for p in group {
                if !st.unsynced.contains(&p.key) {
                    continue;
                }
                let sent = p.tx.try_send(Delivery::Compacted {
                    watcher: p.key,
                    compact_rev: compact,
                });
                if !matches!(sent, Err(mpsc::error::TrySendError::Full(_))) {
                    tracing::debug!(
                        watcher = p.key,
                        next_rev = next,
                        compact_rev = compact,
                        "watcher's history is compacted: canceling it"
                    );
                    st.remove(p.key);
                    progressed = true;
                }
            }
            continue;
        }
        let end = current
            .min(next.saturating_add(CATCH_UP_REVS - 1))
            .max(next - 1);
        let events = if end >= next {
            let prev_kv = group.iter().any(|p| p.prev_kv);
            match sm.mvcc.history(next, end, prev_kv) {
                Ok(e) => e,
                // Compacted while we read: the next round cancels these watchers.
                Err(StoreError::Compacted) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, from = next, to = end, "reading history failed");
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let mut picks: Vec<(u64, Vec<u32>)> = group
            .iter()
            .map(|p| {
                let mine = events
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| p.wants(e))
                    .map(|(i, _)| i as u32);
                (p.key, mine.collect())
            })
            .collect();
        let keep = renumber(events.len(), &mut picks);
        let batch: Arc<Vec<Event>> = Arc::new(
            events
                .into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(e, _)| e)
                .collect(),
        );
        for (p, (key, mine)) in group.iter().zip(picks) {
            if !mine.is_empty() {
                match p.tx.try_send(Delivery::Events {
                    watcher: key,
                    batch: batch.clone(),
                    picks: Picks::of(mine, batch.len()),
                }) {
                    Ok(()) => {}
                    // Retried next round from the same revision.
                    Err(mpsc::error::TrySendError::Full(_)) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        shared.state.lock().remove(key);
                        continue;
                    }
                }
            }
            progressed = true;
            let mut st = shared.state.lock();
            let last_rev = st.last_rev;
            let Some(w) = st.watchers.get_mut(&key) else {
                continue;
            };
            if w.sync != (SyncState::Unsynced { next_rev: next }) {
                continue;
            }
            // Re-checked under the lock that `notify` holds: if no batch past `end` has
            // been notified, every later batch reaches this watcher and its `min_rev`
            // skips what this read already sent. Otherwise it missed those batches and
            // stays unsynced for another round.
            if end >= last_rev {
                w.sync = SyncState::Synced { min_rev: end + 1 };
                let range = w.range.clone();
                st.unsynced.remove(&key);
                st.index(key, &range);
                tracing::trace!(watcher = key, min_rev = end + 1, "watcher caught up");
            } else {
                w.sync = SyncState::Unsynced { next_rev: end + 1 };
            }
        }
    }
    progressed
}

/// The watchers of one client stream, sharing one bounded channel, in the manner of
/// etcd's `mvcc.WatchStream`: IDs are per stream, and an ID stays in use until
/// canceled, even after compaction canceled its watcher.
pub struct WatchStream {
    sm: Arc<StateMachine>,
    tx: mpsc::Sender<Delivery>,
    rx: mpsc::Receiver<Delivery>,
    ids: HashMap<i64, u64>,
    by_key: KeyMap<(i64, bool)>,
    next_id: i64,
}

impl WatchStream {
    /// A stream whose channel holds `capacity` deliveries ([`STREAM_CAPACITY`] as etcd).
    pub fn new(sm: Arc<StateMachine>, capacity: usize) -> Self {
        sm.watch.start_syncer(&sm);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            sm,
            tx,
            rx,
            ids: HashMap::new(),
            by_key: KeyMap::default(),
            next_id: 0,
        }
    }

    /// Creates a watcher with the client's ID, or the lowest free one for
    /// [`AUTO_WATCH_ID`]; returns the ID and the revision it watches after.
    pub fn watch(&mut self, id: i64, spec: &WatchSpec) -> Result<(i64, i64), WatchError> {
        let range = KeyRange::new(&spec.key, &spec.range_end);
        if let KeyRange::Interval(start, Some(end)) = &range {
            if start >= end {
                return Err(WatchError::EmptyRange);
            }
        }
        let id = if id == AUTO_WATCH_ID {
            while self.ids.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.ids.contains_key(&id) {
            return Err(WatchError::DuplicateId);
        } else {
            id
        };
        let (key, rev) = self.sm.watch.add(&self.sm.mvcc, &self.tx, spec, range);
        self.ids.insert(id, key);
        self.by_key.insert(key, (id, spec.prev_kv));
        tracing::debug!(
            watch_id = id,
            watcher = key,
            start_revision = spec.start_revision,
            "watcher created"
        );
        Ok((id, rev))
    }

    /// Cancels a watcher; false if the stream has no such ID.
    pub fn cancel(&mut self, id: i64) -> bool {
        let Some(key) = self.ids.remove(&id) else {
            return false;
        };
        self.by_key.remove(&key);
        self.sm.watch.remove(key);
        tracing::debug!(watch_id = id, watcher = key, "watcher canceled");
        true
    }

    /// Queues a progress notice for one watcher if it is synced.
    pub fn request_progress(&self, id: i64) {
        if let Some(key) = self.ids.get(&id) {
            self.sm
                .watch
                .shared
                .state
                .lock()
                .progress(&[*key], Some(*key));
        }
    }

    /// Queues a progress notice with [`INVALID_WATCH_ID`] if every watcher of the stream
    /// is synced (otherwise nothing, as etcd 3.5: the client asks again). Returns
    /// whether they were.
    pub fn request_progress_all(&self) -> bool {
        let keys: Vec<u64> = self.ids.values().copied().collect();
        self.sm.watch.shared.state.lock().progress(&keys, None)
    }

    /// The store's current revision.
    pub fn rev(&self) -> i64 {
        self.sm.mvcc.current_rev()
    }

    /// The next notice for a live watcher of this stream, in the order the hub queued
    /// them. Cancel safe.
    pub async fn recv(&mut self) -> Option<Notice> {
        loop {
            let d = self.rx.recv().await?;
            let notice = match d {
                Delivery::Events {
                    watcher,
                    batch,
                    picks,
                } => {
                    let Some(&(watch_id, prev_kv)) = self.by_key.get(&watcher) else {
                        continue;
                    };
                    // The previous record is copied only for a watcher that wants it.
                    let copy = |e: &Event| Event {
                        r#type: e.r#type,
                        kv: e.kv.clone(),
                        prev_kv: if prev_kv { e.prev_kv.clone() } else { None },
                    };
                    let events = match &picks {
                        Picks::All => batch.iter().map(copy).collect(),
                        Picks::These(p) => p
                            .iter()
                            .filter_map(|i| batch.get(*i as usize))
                            .map(copy)
                            .collect(),
                    };
                    Notice::Events { watch_id, events }
                }
                Delivery::Compacted {
                    watcher,
                    compact_rev,
                } => {
                    let Some(&(watch_id, _)) = self.by_key.get(&watcher) else {
                        continue;
                    };
                    Notice::Compacted {
                        watch_id,
                        compact_revision: compact_rev,
                    }
                }
                Delivery::Progress { watcher: None, rev } => Notice::Progress {
                    watch_id: INVALID_WATCH_ID,
                    revision: rev,
                },
                Delivery::Progress {
                    watcher: Some(w),
                    rev,
                } => {
                    let Some(&(watch_id, _)) = self.by_key.get(&w) else {
                        continue;
                    };
                    Notice::Progress {
                        watch_id,
                        revision: rev,
                    }
                }
            };
            return Some(notice);
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let mut st = self.sm.watch.shared.state.lock();
        for key in self.ids.values() {
            st.remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The hub on a real state machine over the in-memory engine: writes go through
    //! `apply_batch`, exactly as the applier does.

    use std::sync::atomic::AtomicU64;

    use capstan_proto::etcdserverpb as pb;
    use pb::request_op::Request;

    use super::*;
    use crate::apply::{ApplyRequest, Op};
    use crate::engine::memory::MemEngine;

    struct Store {
        sm: Arc<StateMachine>,
        index: AtomicU64,
    }

    impl Store {
        fn open() -> Arc<Self> {
            let sm = StateMachine::open(Arc::new(MemEngine::new()), 1).expect("open");
            Arc::new(Self {
                sm: Arc::new(sm),
                index: AtomicU64::new(0),
            })
        }

        /// Applies `ops` as one batch (one group commit); returns the revision after it.
        fn apply(&self, ops: Vec<Op>) -> i64 {
            let reqs: Vec<ApplyRequest> = ops
                .into_iter()
                .map(|op| ApplyRequest { op: Some(op) })
                .collect();
            let first = self.index.fetch_add(reqs.len() as u64, Ordering::SeqCst) + 1;
            let entries: Vec<(u64, &ApplyRequest)> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| (first + i as u64, r))
                .collect();
            for r in self.sm.apply_batch(&entries, false).expect("apply") {
                r.expect("not replayed").expect("applied");
            }
            self.sm.mvcc.current_rev()
        }

        fn put(&self, key: &str, value: &str) -> i64 {
            self.apply(vec![put(key, value)])
        }

        fn stream(&self, capacity: usize) -> WatchStream {
            WatchStream::new(self.sm.clone(), capacity)
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    fn txn_puts(keys: &[String]) -> Op {
        let success = keys
            .iter()
            .map(|k| pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: k.clone().into_bytes(),
                    value: b"t".to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        Op::Txn(pb::TxnRequest {
            success,
            ..Default::default()
        })
    }

    fn prefix(p: &str) -> WatchSpec {
        let mut end = p.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        WatchSpec {
            key: p.into(),
            range_end: end,
            ..Default::default()
        }
    }

    async fn next(ws: &mut WatchStream) -> Notice {
        tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("a notice in time")
            .expect("stream open")
    }

    async fn quiet(ws: &mut WatchStream) -> bool {
        tokio::time::timeout(Duration::from_millis(150), ws.recv())
            .await
            .is_err()
    }

    /// (revision, key, is_put) of each event.
    fn summary(events: &[Event]) -> Vec<(i64, String, bool)> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                (
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    e.r#type == EventType::Put as i32,
                )
            })
            .collect()
    }

    /// Reads event notices for `id` until one reaches `last_rev`; checks no notice splits
    /// a revision that another notice also carries.
    async fn collect_until(
        ws: &mut WatchStream,
        id: i64,
        last_rev: i64,
    ) -> Vec<(i64, String, bool)> {
        let mut all = Vec::new();
        let mut seen_revs = HashSet::new();
        while all.last().is_none_or(|(r, _, _)| *r < last_rev) {
            match next(ws).await {
                Notice::Events { watch_id, events } => {
                    assert_eq!(watch_id, id);
                    let s = summary(&events);
                    let revs: HashSet<i64> = s.iter().map(|e| e.0).collect();
                    for r in &revs {
                        assert!(seen_revs.insert(*r), "revision {r} split across notices");
                    }
                    all.extend(s);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        all
    }

    /// What a watcher of `p` from `from` must see, read straight from history.
    fn expected(store: &Store, p: &str, from: i64) -> Vec<(i64, String, bool)> {
        let to = store.sm.mvcc.current_rev();
        let events = store.sm.mvcc.history(from, to, false).expect("history");
        summary(&events)
            .into_iter()
            .filter(|(_, k, _)| k.starts_with(p))
            .collect()
    }

    #[tokio::test]
    async fn events_arrive_in_order_with_whole_revisions() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        let (id, rev) = ws.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        assert_eq!(
            (id, rev),
            (0, 1),
            "first auto ID is 0; an empty store is at revision 1"
        );
        store.put("k/a", "1");
        store.put("other", "x");
        store.apply(vec![
            put("k/b", "1"),
            put("k/c", "1"),
            txn_puts(&["k/d".into(), "k/e".into()]),
        ]);
        store.apply(vec![Op::DeleteRange(pb::DeleteRangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            ..Default::default()
        })]);
        let last = store.sm.mvcc.current_rev();
        let got = collect_until(&mut ws, id, last).await;
        assert_eq!(got, expected(&store, "k/", 2));
        assert!(
            got.iter().any(|(r, k, _)| *r == 6 && k == "k/e"),
            "txn's two puts share revision 6"
        );
        assert!(quiet(&mut ws).await);
    }

    #[tokio::test]
    async fn overlapping_ranges_route_exactly() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        let range = |k: &str, e: &[u8]| WatchSpec {
            key: k.into(),
            range_end: e.to_vec(),
            ..Default::default()
        };
        let specs = [
            range("b", b"d"),
            range("a", b"z"),
            range("c", &[0]),
            range("a", b"b"),
            range("c", b"c\0"),
        ];
        let mut ids = Vec::new();
        for s in &specs {
            ids.push(ws.watch(AUTO_WATCH_ID, s).expect("watch").0);
        }
        assert!(
            ws.cancel(ids[3]),
            "removal keeps the index sorted and the rest routed"
        );
        for k in ["a", "b", "c", "cc", "d", "z", "zz"] {
            store.put(k, "v");
        }
        let expect = [
            vec!["b", "c", "cc"],
            vec!["a", "b", "c", "cc", "d"],
            vec!["c", "cc", "d", "z", "zz"],
            vec![],
            vec!["c"],
        ];
        let total: usize = expect.iter().map(Vec::len).sum();
        let mut got: HashMap<i64, Vec<String>> = HashMap::new();
        let mut n = 0;
        while n < total {
            let Notice::Events { watch_id, events } = next(&mut ws).await else {
                panic!("events expected")
            };
            for (_, k, _) in summary(&events) {
                got.entry(watch_id).or_default().push(k);
                n += 1;
            }
        }
        for (id, want) in ids.iter().zip(expect) {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(got.remove(id).unwrap_or_default(), want, "watcher {id}");
        }
        assert!(quiet(&mut ws).await);
    }

    #[tokio::test]
    async fn single_key_watch_sees_only_its_key() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        let (id, _) = ws
            .watch(
                AUTO_WATCH_ID,
                &WatchSpec {
                    key: b"a".to_vec(),
                    ..Default::default()
                },
            )
            .expect("watch");
        store.put("ab", "1");
        store.put("a", "1");
        store.put("a\0", "1");
        let got = collect_until(&mut ws, id, 3).await;
        assert_eq!(got, vec![(3, "a".to_string(), true)]);
        assert!(quiet(&mut ws).await);
    }

    /// Reads `ws` in a task until the revision sent on `target` is reached, pausing
    /// every few notices when `slow`; checks no revision is split or repeated.
    fn reader(
        mut ws: WatchStream,
        id: i64,
        mut target: tokio::sync::watch::Receiver<i64>,
        slow: bool,
    ) -> tokio::task::JoinHandle<Vec<(i64, String, bool)>> {
        tokio::spawn(async move {
            let mut all: Vec<(i64, String, bool)> = Vec::new();
            let mut seen_revs = HashSet::new();
            let mut n = 0u32;
            while all.last().map_or(0, |e| e.0) < *target.borrow() {
                tokio::select! {
                    notice = ws.recv() => {
                        let Some(Notice::Events { watch_id, events }) = notice else {
                            panic!("unexpected {notice:?}")
                        };
                        assert_eq!(watch_id, id);
                        let s = summary(&events);
                        for r in s.iter().map(|e| e.0).collect::<HashSet<_>>() {
                            assert!(seen_revs.insert(r), "revision {r} split or repeated");
                        }
                        all.extend(s);
                        n += 1;
                        if slow && n.is_multiple_of(3) {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    _ = target.changed() => {}
                }
            }
            all
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_watcher_catches_up_without_gaps_or_duplicates() {
        let store = Store::open();
        let mut slow = store.stream(1);
        let mut fast = store.stream(STREAM_CAPACITY);
        let (slow_id, _) = slow.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        let (fast_id, _) = fast.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        let (target_tx, target_rx) = tokio::sync::watch::channel(i64::MAX);
        let slow_reader = reader(slow, slow_id, target_rx.clone(), true);
        let fast_reader = reader(fast, fast_id, target_rx, false);
        let writer_store = store.clone();
        // Writes continue, in batches of varying size with multi-key txns, while the slow
        // reader lags; the writer records whether the slow watcher ever fell behind.
        let writer = std::thread::spawn(move || {
            let s = writer_store;
            let mut fell_behind = false;
            for i in 0..600 {
                let mut ops = Vec::new();
                for j in 0..(i % 7 + 1) {
                    if j % 3 == 2 {
                        ops.push(txn_puts(&[format!("k/t{i}-{j}a"), format!("k/t{i}-{j}b")]));
                    } else {
                        ops.push(put(&format!("k/{}", (i * 7 + j) % 50), &format!("{i}")));
                    }
                }
                if i % 5 == 0 {
                    ops.push(put("unwatched", "x"));
                }
                s.apply(ops);
                fell_behind |= s.sm.watch.counts().1 > 0;
            }
            fell_behind
        });
        let fell_behind = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
            .await
            .expect("join");
        let want = expected(&store, "k/", 2);
        target_tx
            .send(want.last().map_or(0, |e| e.0))
            .expect("readers alive");
        let wait = |h: tokio::task::JoinHandle<Vec<(i64, String, bool)>>| async move {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("in time")
                .expect("reader")
        };
        assert_eq!(
            wait(fast_reader).await,
            want,
            "the fast watcher got everything"
        );
        let slow_got = wait(slow_reader).await;
        assert_eq!(slow_got.len(), want.len());
        assert_eq!(
            slow_got, want,
            "the slow watcher got every event once, in order"
        );
        assert!(
            fell_behind,
            "a one-slot channel under this load must overflow"
        );
    }

    #[tokio::test]
    async fn stalled_stream_blocks_neither_writers_nor_other_streams() {
        let store = Store::open();
        let mut stalled = store.stream(2);
        let mut live = store.stream(STREAM_CAPACITY);
        let (sid, _) = stalled.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        let (lid, _) = live.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        let mut last = 0;
        for i in 0..300 {
            last = store.put(&format!("k/{}", i % 10), "v");
            if i % 100 == 99 {
                // Keep the live stream drained so only the stalled one falls behind.
                collect_until(&mut live, lid, last).await;
            }
        }
        assert_eq!(
            store.sm.watch.counts(),
            (1, 1),
            "only the stalled watcher is unsynced"
        );
        let got = collect_until(&mut stalled, sid, last).await;
        assert_eq!(got, expected(&store, "k/", 2));
        store.put("k/after", "v");
        let got = collect_until(&mut stalled, sid, last + 1).await;
        assert_eq!(got, vec![(last + 1, "k/after".to_string(), true)]);
    }

    #[tokio::test]
    async fn replay_from_a_past_revision_then_live() {
        let store = Store::open();
        for i in 0..10 {
            store.put(&format!("k/{i}"), "v");
        }
        let mut ws = store.stream(STREAM_CAPACITY);
        let spec = WatchSpec {
            start_revision: 3,
            ..prefix("k/")
        };
        let (id, rev) = ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
        assert_eq!(rev, 11, "created at the current revision");
        let got = collect_until(&mut ws, id, 11).await;
        assert_eq!(got, expected(&store, "k/", 3));
        assert_eq!(got.first().map(|e| e.0), Some(3));
        store.put("k/live", "v");
        assert_eq!(
            collect_until(&mut ws, id, 12).await,
            vec![(12, "k/live".to_string(), true)]
        );
    }

    #[tokio::test]
    async fn start_revision_of_the_current_revision_replays_it() {
        let store = Store::open();
        let rev = store.put("k", "v");
        let mut ws = store.stream(STREAM_CAPACITY);
        let spec = WatchSpec {
            key: b"k".to_vec(),
            start_revision: rev,
            ..Default::default()
        };
        let (id, _) = ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
        assert_eq!(
            collect_until(&mut ws, id, rev).await,
            vec![(rev, "k".to_string(), true)]
        );
    }

    #[tokio::test]
    async fn future_start_revision_waits_for_it() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        let spec = WatchSpec {
            start_revision: 4,
            ..prefix("k/")
        };
        let (id, rev) = ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
        assert_eq!(rev, 1);
        store.put("k/a", "1");
        store.put("k/b", "1");
        assert!(
            quiet(&mut ws).await,
            "revisions before the start are skipped"
        );
        assert!(
            !ws.request_progress_all() || quiet(&mut ws).await,
            "no progress before the start revision"
        );
        store.put("k/c", "1");
        assert_eq!(
            collect_until(&mut ws, id, 4).await,
            vec![(4, "k/c".to_string(), true)]
        );
    }

    #[tokio::test]
    async fn compacted_start_revision_cancels_with_the_compact_revision() {
        let store = Store::open();
        for i in 0..10 {
            store.put(&format!("k/{i}"), "v");
        }
        store.apply(vec![Op::Compaction(pb::CompactionRequest {
            revision: 8,
            physical: false,
        })]);
        let mut ws = store.stream(STREAM_CAPACITY);
        let (id, _) = ws
            .watch(
                5,
                &WatchSpec {
                    start_revision: 5,
                    ..prefix("k/")
                },
            )
            .expect("watch");
        assert_eq!(
            next(&mut ws).await,
            Notice::Compacted {
                watch_id: id,
                compact_revision: 8
            }
        );
        assert_eq!(store.sm.watch.counts(), (0, 0), "the hub dropped it");
        assert_eq!(
            ws.watch(id, &prefix("k/")),
            Err(WatchError::DuplicateId),
            "as in etcd, the ID stays taken until canceled"
        );
        assert!(ws.cancel(id));
        let (id2, _) = ws
            .watch(
                AUTO_WATCH_ID,
                &WatchSpec {
                    start_revision: 8,
                    ..prefix("k/")
                },
            )
            .expect("watch");
        let got = collect_until(&mut ws, id2, 11).await;
        assert_eq!(
            got,
            expected(&store, "k/", 8),
            "the compact revision itself is still watchable"
        );
    }

    #[tokio::test]
    async fn unsynced_watcher_overtaken_by_compaction_is_canceled() {
        let store = Store::open();
        let mut ws = store.stream(1);
        let (id, _) = ws.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        for i in 0..5 {
            store.put(&format!("k/{i}"), "v");
        }
        assert_eq!(
            store.sm.watch.counts(),
            (0, 1),
            "fell behind at the second put"
        );
        let rev = store.put("k/x", "v");
        store.apply(vec![Op::Compaction(pb::CompactionRequest {
            revision: rev,
            physical: false,
        })]);
        let first = next(&mut ws).await;
        assert!(
            matches!(&first, Notice::Events { events, .. } if summary(events)[0].0 == 2),
            "{first:?}"
        );
        assert_eq!(
            next(&mut ws).await,
            Notice::Compacted {
                watch_id: id,
                compact_revision: rev
            }
        );
    }

    #[tokio::test]
    async fn filters_and_prev_kv() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        let key = WatchSpec {
            key: b"k".to_vec(),
            ..Default::default()
        };
        let (no_put, _) = ws
            .watch(
                AUTO_WATCH_ID,
                &WatchSpec {
                    no_put: true,
                    ..key.clone()
                },
            )
            .expect("watch");
        let (no_del, _) = ws
            .watch(
                AUTO_WATCH_ID,
                &WatchSpec {
                    no_delete: true,
                    prev_kv: true,
                    ..key.clone()
                },
            )
            .expect("watch");
        let (plain, _) = ws.watch(AUTO_WATCH_ID, &key).expect("watch");
        store.put("k", "1");
        store.put("k", "2");
        store.apply(vec![Op::DeleteRange(pb::DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })]);
        let mut by_id: HashMap<i64, Vec<Event>> = HashMap::new();
        // no_put: 1 notice; no_delete: 2; plain: 3.
        for _ in 0..6 {
            match next(&mut ws).await {
                Notice::Events { watch_id, events } => {
                    by_id.entry(watch_id).or_default().extend(events)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let types = |id: i64| {
            summary(&by_id[&id])
                .into_iter()
                .map(|e| (e.0, e.2))
                .collect::<Vec<_>>()
        };
        assert_eq!(types(no_put), vec![(4, false)]);
        assert_eq!(types(no_del), vec![(2, true), (3, true)]);
        assert_eq!(types(plain), vec![(2, true), (3, true), (4, false)]);
        let prevs: Vec<Option<Vec<u8>>> = by_id[&no_del]
            .iter()
            .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
            .collect();
        assert_eq!(
            prevs,
            vec![None, Some(b"1".to_vec())],
            "a create has no prev_kv"
        );
        assert!(
            by_id[&plain].iter().all(|e| e.prev_kv.is_none()),
            "prev_kv only when asked"
        );
    }

    #[tokio::test]
    async fn prev_kv_on_catch_up() {
        let store = Store::open();
        store.put("k", "1");
        store.put("k", "2");
        let mut ws = store.stream(STREAM_CAPACITY);
        let spec = WatchSpec {
            key: b"k".to_vec(),
            start_revision: 2,
            prev_kv: true,
            ..Default::default()
        };
        ws.watch(AUTO_WATCH_ID, &spec).expect("watch");
        let Notice::Events { events, .. } = next(&mut ws).await else {
            panic!("events expected")
        };
        let prevs: Vec<Option<Vec<u8>>> = events
            .iter()
            .map(|e| e.prev_kv.as_ref().map(|p| p.value.clone()))
            .collect();
        assert_eq!(prevs, vec![None, Some(b"1".to_vec())]);
    }

    #[tokio::test]
    async fn progress_only_when_every_watcher_is_synced() {
        let store = Store::open();
        let mut ws = store.stream(1);
        assert!(ws.request_progress_all());
        assert!(
            quiet(&mut ws).await,
            "no watchers, no progress notice (as etcd)"
        );
        let (id, _) = ws.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        ws.request_progress_all();
        assert_eq!(
            next(&mut ws).await,
            Notice::Progress {
                watch_id: INVALID_WATCH_ID,
                revision: 1
            }
        );
        ws.request_progress(id);
        assert_eq!(
            next(&mut ws).await,
            Notice::Progress {
                watch_id: id,
                revision: 1
            }
        );
        store.put("k/a", "1");
        store.put("k/b", "1");
        assert_eq!(store.sm.watch.counts(), (0, 1));
        assert!(
            !ws.request_progress_all(),
            "an unsynced watcher suppresses progress"
        );
        ws.request_progress(id);
        let got = collect_until(&mut ws, id, 3).await;
        assert_eq!(got.len(), 2);
        // The catch-up lands asynchronously; once synced, progress reports revision 3.
        let mut synced = false;
        for _ in 0..200 {
            if ws.request_progress_all() {
                synced = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(synced);
        assert_eq!(
            next(&mut ws).await,
            Notice::Progress {
                watch_id: INVALID_WATCH_ID,
                revision: 3
            }
        );
    }

    #[tokio::test]
    async fn watch_ids_errors_and_cancel() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        assert_eq!(ws.watch(1, &prefix("k/")).map(|r| r.0), Ok(1));
        assert_eq!(ws.watch(AUTO_WATCH_ID, &prefix("k/")).map(|r| r.0), Ok(0));
        assert_eq!(
            ws.watch(AUTO_WATCH_ID, &prefix("k/")).map(|r| r.0),
            Ok(2),
            "skips the client's ID"
        );
        assert_eq!(ws.watch(1, &prefix("k/")), Err(WatchError::DuplicateId));
        let empty = WatchSpec {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        };
        assert_eq!(ws.watch(AUTO_WATCH_ID, &empty), Err(WatchError::EmptyRange));
        let from_key = WatchSpec {
            key: b"b".to_vec(),
            range_end: vec![0],
            ..Default::default()
        };
        assert_eq!(
            ws.watch(AUTO_WATCH_ID, &from_key).map(|r| r.0),
            Ok(3),
            "\"\\0\" means every key from key on"
        );
        assert!(ws.cancel(1));
        assert!(!ws.cancel(1), "already canceled");
        assert!(!ws.cancel(42));
        // Other streams number their watchers independently.
        let mut other = store.stream(STREAM_CAPACITY);
        assert_eq!(
            other.watch(AUTO_WATCH_ID, &prefix("k/")).map(|r| r.0),
            Ok(0)
        );
        drop(other);
        assert_eq!(
            store.sm.watch.counts(),
            (3, 0),
            "dropping a stream drops its watchers"
        );
    }

    #[tokio::test]
    async fn a_reused_id_never_gets_the_old_watchers_events() {
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        ws.watch(
            7,
            &WatchSpec {
                key: b"old".to_vec(),
                ..Default::default()
            },
        )
        .expect("watch");
        store.put("old", "queued for the old watcher");
        assert!(ws.cancel(7));
        ws.watch(
            7,
            &WatchSpec {
                key: b"new".to_vec(),
                ..Default::default()
            },
        )
        .expect("watch");
        let rev = store.put("new", "v");
        assert_eq!(
            collect_until(&mut ws, 7, rev).await,
            vec![(rev, "new".to_string(), true)]
        );
    }

    #[tokio::test]
    async fn watcher_created_while_a_batch_is_published_but_not_yet_notified() {
        // Publish-then-notify leaves a window in which readers see a revision the hub has
        // not delivered; a watcher created in it must start after that revision.
        let store = Store::open();
        let mut ws = store.stream(STREAM_CAPACITY);
        ws.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        let mut w = store.sm.mvcc.writer();
        w.begin_txn();
        w.put(b"k/a", b"v".to_vec(), Some(0), None);
        let put_rev = w.end_txn();
        let out = w.finish();
        store
            .sm
            .mvcc
            .engine()
            .write(out.batch, false)
            .expect("write");
        store.sm.mvcc.publish(out.rev);
        let (late, rev) = ws.watch(AUTO_WATCH_ID, &prefix("k/")).expect("watch");
        assert_eq!(rev, put_rev, "created at the published revision");
        ws.request_progress(late);
        assert_eq!(
            next(&mut ws).await,
            Notice::Progress {
                watch_id: late,
                revision: rev
            },
            "never below creation"
        );
        store
            .sm
            .watch
            .notify(out.rev, &out.events, &out.unloaded_prev, &store.sm.mvcc);
        let Notice::Events { watch_id, .. } = next(&mut ws).await else {
            panic!("events expected")
        };
        assert_ne!(
            watch_id, late,
            "the late watcher does not get the revision it starts after"
        );
        assert!(quiet(&mut ws).await);
    }
}
