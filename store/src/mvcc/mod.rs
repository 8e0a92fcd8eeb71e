//! Multi-version key-value storage with etcd's semantics, on an [`Engine`].
//!
//! Every change is a new record in the history keyspace under its [`Revision`]; a delete
//! is a tombstone record. The [`index::Index`] maps keys to their revisions in memory.
//! Readers ([`Mvcc`]) see only revisions that are durable (`visible_rev`); the single
//! applier writes through a [`Writer`], which sees its own not-yet-durable changes.

pub mod index;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use capstan_proto::etcdserverpb::{range_request, RangeRequest, RangeResponse, ResponseHeader};
use capstan_proto::mvccpb::{event::EventType, Event, KeyValue};
use parking_lot::{RwLock, RwLockWriteGuard};
use prost::Message;

use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{Result, StoreError};
pub use index::{Change, Index, KeyRange, Live, Revision};

const META_CURRENT_REV: &[u8] = b"current_rev";
const META_COMPACT_REV: &[u8] = b"compact_rev";

/// Encodes a history record: one flag byte (1 = tombstone), then the `KeyValue`.
pub fn encode_record(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(u8::from(tombstone));
    kv.encode(&mut buf).expect("Vec grows as needed");
    buf
}

/// Decodes a history record written by [`encode_record`].
pub fn decode_record(buf: &[u8]) -> Result<(bool, KeyValue)> {
    let (flag, rest) = buf
        .split_first()
        .ok_or_else(|| StoreError::Engine("empty history record".into()))?;
    Ok((*flag == 1, KeyValue::decode(rest)?))
}

/// Read access to one consistent view of the key space, shared by the read path and
/// by reads inside a write txn.
pub trait KvRead {
    /// The newest revision this view may read.
    fn current_rev(&self) -> i64;
    /// Revisions below this are gone.
    fn compact_rev(&self) -> i64;
    /// Live revisions in `range` at `rev`, at most `limit` (0: all), and the total count.
    fn revisions(&self, range: &KeyRange, rev: i64, limit: usize) -> (Vec<Revision>, i64);
    /// The record stored under `rev`.
    fn load(&self, rev: Revision) -> Result<Option<KeyValue>>;
}

/// The MVCC store: index, engine and the revision counters.
pub struct Mvcc {
    engine: Arc<dyn Engine>,
    index: RwLock<Index>,
    /// Newest revision applied in memory (possibly not yet durable).
    applied_rev: AtomicI64,
    /// Newest revision that is durable: what readers see.
    visible_rev: AtomicI64,
    compact_rev: AtomicI64,
}

/// What [`load`] reads off the engine: the index and the revision counters.
struct Loaded {
    index: Index,
    current: i64,
    compact: i64,
    doomed: Vec<Revision>,
}

/// Rebuilds the index from the history keyspace; `doomed` are the revisions an
/// interrupted compaction had still to delete.
fn load(engine: &dyn Engine) -> Result<Loaded> {
    let mut index = Index::default();
    let mut last = 0i64;
    let mut bad = None;
    engine.scan(Cf::History, &[], None, &mut |k, v| {
        let (Some(rev), Ok((tombstone, kv))) = (Revision::from_key(k), decode_record(v)) else {
            bad = Some(k.to_vec());
            return false;
        };
        last = rev.main;
        index.push(
            &kv.key,
            Change { rev, tombstone },
            kv.create_revision,
            kv.version,
            kv.lease,
        );
        true
    })?;
    if let Some(k) = bad {
        return Err(StoreError::Engine(format!(
            "corrupt history record at {k:?}"
        )));
    }
    let meta_i64 = |k: &[u8]| -> Result<i64> {
        Ok(engine
            .get(Cf::Meta, k)?
            .and_then(|v| v.try_into().ok())
            .map(i64::from_be_bytes)
            .unwrap_or(0))
    };
    let current = last.max(meta_i64(META_CURRENT_REV)?).max(1);
    let compact = meta_i64(META_COMPACT_REV)?;
    let doomed = if compact > 0 {
        index.compact(compact)
    } else {
        Vec::new()
    };
    Ok(Loaded {
        index,
        current,
        compact,
        doomed,
    })
}

impl Mvcc {
    /// Rebuilds the index from the history keyspace. Returns the store and the
    /// revisions an interrupted compaction had still to delete.
    pub fn open(engine: Arc<dyn Engine>) -> Result<(Self, Vec<Revision>)> {
        let l = load(&*engine)?;
        let mvcc = Mvcc {
            engine,
            index: RwLock::new(l.index),
            applied_rev: AtomicI64::new(l.current),
            visible_rev: AtomicI64::new(l.current),
            compact_rev: AtomicI64::new(l.compact),
        };
        Ok((mvcc, l.doomed))
    }

    /// Writes `batch` (which replaces the history wholesale: a Raft snapshot install)
    /// durably, then rebuilds the index and revisions from the engine, as [`Mvcc::open`]
    /// does. The index stays write-locked throughout, so no reader pairs the old index
    /// with the new records. Only the apply path calls this, never beside a [`Writer`].
    /// Returns the revisions a compaction in the new history had still to delete.
    pub fn replace(&self, batch: WriteBatch) -> Result<Vec<Revision>> {
        let mut index = self.index.write();
        self.engine.write(batch, true)?;
        let l = load(&*self.engine)?;
        *index = l.index;
        self.compact_rev.store(l.compact, Ordering::SeqCst);
        self.applied_rev.store(l.current, Ordering::SeqCst);
        self.visible_rev.store(l.current, Ordering::SeqCst);
        Ok(l.doomed)
    }

    /// The engine underneath (for maintenance: size, defragment, hash).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Number of keys the index holds (live or with history).
    pub fn index_len(&self) -> usize {
        self.index.read().len()
    }

    /// Starts applying writes. Only the applier calls this, one writer at a time.
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            rev: self.applied_rev.load(Ordering::SeqCst),
            mvcc: self,
            index: self.index.write(),
            pending: HashMap::new(),
            batch: WriteBatch::default(),
            txn_main: 0,
            sub: 0,
            events: Vec::new(),
            unloaded_prev: Vec::new(),
        }
    }

    /// Makes everything up to `rev` visible to readers: call once it is durable.
    pub fn publish(&self, rev: i64) {
        self.visible_rev.fetch_max(rev, Ordering::SeqCst);
    }

    /// Revisions a compaction at `rev` keeps at or below it (for `HashKV`).
    pub fn kept_at(&self, rev: i64) -> std::collections::HashSet<Revision> {
        self.index.read().kept_at(rev)
    }

    /// Every event with a revision in `[from, to]`, in revision order, for watchers that
    /// start in the past or fell behind. With `prev_kv`, each event carries the record
    /// its key had just before.
    pub fn history(&self, from: i64, to: i64, prev_kv: bool) -> Result<Vec<Event>> {
        if from < self.compact_rev() {
            return Err(StoreError::Compacted);
        }
        let to = to.min(self.current_rev());
        if from > to {
            return Ok(Vec::new());
        }
        let start = Revision::new(from, 0).to_key();
        let end = Revision::new(to + 1, 0).to_key();
        let mut records = Vec::new();
        let mut failure = None;
        self.engine
            .scan(Cf::History, &start, Some(&end), &mut |_, v| {
                match decode_record(v) {
                    Ok(r) => records.push(r),
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                }
                true
            })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut events = Vec::with_capacity(records.len());
        for (tombstone, kv) in records {
            let prev = if prev_kv {
                let r = self.index.read().get(&kv.key, kv.mod_revision - 1);
                match r {
                    Some(r) => self.load(r)?,
                    None => None,
                }
            } else {
                None
            };
            let r#type = if tombstone {
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event {
                r#type: r#type as i32,
                kv: Some(kv),
                prev_kv: prev,
            });
        }
        // A compaction may have purged part of the range while we scanned.
        if from < self.compact_rev() {
            return Err(StoreError::Compacted);
        }
        Ok(events)
    }

    /// Deletes compacted history records from disk, in chunks that do not block writers.
    pub fn purge(&self, doomed: Vec<Revision>) -> Result<()> {
        purge(&*self.engine, doomed)
    }
}

fn purge(engine: &dyn Engine, mut doomed: Vec<Revision>) -> Result<()> {
    doomed.sort_unstable();
    for chunk in doomed.chunks(10_000) {
        let mut b = WriteBatch::default();
        for r in chunk {
            b.delete(Cf::History, r.to_key().to_vec());
        }
        // Not synced: a crash before this lands only means start-up purges again.
        engine.write(b, false)?;
    }
    Ok(())
}

/// Physical compaction in the background: deleting the history a compaction made
/// unreachable can take seconds for a large keyspace, and doing it on the applier
/// would stall every write behind it (Kubernetes compacts every five minutes). The
/// index was compacted during apply, so nothing reads these records any more; a crash
/// before they are gone only means start-up purges them again.
pub struct Purger {
    tx: std::sync::mpsc::Sender<Vec<Revision>>,
    queued: std::sync::atomic::AtomicU64,
    done: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Purger {
    /// Starts the purge thread on `engine`.
    pub fn start(engine: Arc<dyn Engine>) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Revision>>();
        let done = Arc::new(tokio::sync::watch::channel(0u64).0);
        let thread_done = done.clone();
        std::thread::Builder::new()
            .name("purger".into())
            .spawn(move || {
                while let Ok(doomed) = rx.recv() {
                    let n = doomed.len();
                    if let Err(e) = purge(&*engine, doomed) {
                        // The records stay; start-up purges them again.
                        tracing::error!(error = %e, revisions = n, "physical compaction failed");
                    }
                    thread_done.send_modify(|d| *d += 1);
                }
            })
            .map_err(|e| StoreError::Engine(format!("spawn purger: {e}")))?;
        Ok(Self {
            tx,
            queued: Default::default(),
            done,
        })
    }

    /// Queues the revisions a compaction made unreachable.
    pub fn submit(&self, doomed: Vec<Revision>) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(doomed).is_err() {
            // The thread is gone only if it panicked; start-up will purge instead.
            self.done.send_modify(|d| *d += 1);
        }
    }

    /// Waits until everything submitted so far is deleted (a `physical` compaction
    /// answers only then, as etcd's does).
    pub async fn wait_idle(&self) {
        let target = self.queued.load(Ordering::SeqCst);
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d >= target).await;
    }
}

impl KvRead for Mvcc {
    fn current_rev(&self) -> i64 {
        self.visible_rev.load(Ordering::SeqCst)
    }

    fn compact_rev(&self) -> i64 {
        self.compact_rev.load(Ordering::SeqCst)
    }

    fn revisions(&self, range: &KeyRange, rev: i64, limit: usize) -> (Vec<Revision>, i64) {
        collect_revisions(&self.index.read(), range, rev, limit)
    }

    fn load(&self, rev: Revision) -> Result<Option<KeyValue>> {
        match self.engine.get(Cf::History, &rev.to_key())? {
            Some(v) => Ok(Some(decode_record(&v)?.1)),
            None => Ok(None),
        }
    }
}

fn collect_revisions(
    index: &Index,
    range: &KeyRange,
    rev: i64,
    limit: usize,
) -> (Vec<Revision>, i64) {
    let mut revs = Vec::new();
    let mut total = 0i64;
    index.visit(range, rev, &mut |_, r| {
        total += 1;
        if limit == 0 || revs.len() < limit {
            revs.push(r);
        }
        true
    });
    (revs, total)
}

/// What one applied batch produced.
pub struct WriterOutput {
    pub batch: WriteBatch,
    pub events: Vec<Event>,
    /// Put events whose `prev_kv` was not read (see [`Writer::put`]): the event's index
    /// in `events` and the revision of the record it replaced, in event order.
    pub unloaded_prev: Vec<(usize, Revision)>,
    pub rev: i64,
}

/// The applier's handle: applies changes in memory and collects them into one batch.
pub struct Writer<'a> {
    mvcc: &'a Mvcc,
    index: RwLockWriteGuard<'a, Index>,
    /// Records written by this batch, not yet in the engine: the index of the event
    /// that holds each.
    pending: HashMap<Revision, usize>,
    batch: WriteBatch,
    /// Newest applied revision (committed txns of this batch included).
    rev: i64,
    /// The revision the open txn writes at.
    txn_main: i64,
    sub: i64,
    events: Vec<Event>,
    unloaded_prev: Vec<(usize, Revision)>,
}

impl Writer<'_> {
    /// Opens a txn: everything until [`Writer::end_txn`] shares one revision.
    pub fn begin_txn(&mut self) {
        self.txn_main = self.rev + 1;
        self.sub = 0;
    }

    /// Closes the txn; returns the store revision after it.
    pub fn end_txn(&mut self) -> i64 {
        if self.sub > 0 {
            self.rev = self.txn_main;
        }
        self.rev
    }

    /// Whether the open txn changed anything yet.
    pub fn txn_changed(&self) -> bool {
        self.sub > 0
    }

    /// The revision the open txn writes at.
    pub fn txn_rev(&self) -> i64 {
        self.txn_main
    }

    /// Extra records to write atomically with this batch (leases, auth, meta).
    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// The live record of `key` right now, if any.
    pub fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.index.get(key, i64::MAX) {
            Some(r) => self.load(r),
            None => Ok(None),
        }
    }

    /// The index's view of `key`'s live record (revision, create revision, version,
    /// lease), without reading the record.
    pub fn live(&self, key: &[u8]) -> Option<Live> {
        self.index.live(key)
    }

    /// Puts `key` with `lease`, or with its current lease for `None` (`ignore_lease`);
    /// returns the live state it replaced (its lease is the one to detach). Create
    /// revision, version and lease come from the index, so nothing is read, as in etcd.
    /// `prev` is the key's live record if the caller read it anyway (for `prev_kv` or
    /// `ignore_value`); it then travels in the watch event. Otherwise the event goes
    /// out without it and its revision is listed in [`WriterOutput::unloaded_prev`],
    /// for the watch hub to read only if a watcher asks for `prev_kv` (etcd reads it
    /// per watcher when sending).
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: Option<i64>,
        prev: Option<KeyValue>,
    ) -> Option<Live> {
        let live = self.index.live(key);
        debug_assert_eq!(
            prev.as_ref()
                .map(|p| (p.mod_revision, p.create_revision, p.version, p.lease)),
            live.filter(|_| prev.is_some()).map(|l| (
                l.rev.main,
                l.create_revision,
                l.version,
                l.lease
            )),
            "the index disagrees with the record it names"
        );
        let (create_revision, version) = match live {
            Some(l) => (l.create_revision, l.version + 1),
            None => (self.txn_main, 1),
        };
        if let (None, Some(l)) = (&prev, live) {
            self.unloaded_prev.push((self.events.len(), l.rev));
        }
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: self.txn_main,
            version,
            value,
            lease: lease.unwrap_or_else(|| live.map_or(0, |l| l.lease)),
        };
        self.record(false, kv, prev);
        live
    }

    /// Deletes every live key in `range`; returns the deleted records.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let (revs, _) = collect_revisions(&self.index, range, i64::MAX, 0);
        let mut deleted = Vec::with_capacity(revs.len());
        for r in revs {
            let prev = self
                .load(r)?
                .ok_or_else(|| StoreError::Engine(format!("index names missing revision {r:?}")))?;
            let tomb = KeyValue {
                key: prev.key.clone(),
                mod_revision: self.txn_main,
                ..Default::default()
            };
            self.record(true, tomb, Some(prev.clone()));
            deleted.push(prev);
        }
        Ok(deleted)
    }

    fn record(&mut self, tombstone: bool, kv: KeyValue, prev: Option<KeyValue>) {
        let rev = Revision::new(self.txn_main, self.sub);
        self.sub += 1;
        self.index.push(
            &kv.key,
            Change { rev, tombstone },
            kv.create_revision,
            kv.version,
            kv.lease,
        );
        self.batch.put(
            Cf::History,
            rev.to_key().to_vec(),
            encode_record(tombstone, &kv),
        );
        let r#type = if tombstone {
            EventType::Delete
        } else {
            EventType::Put
        };
        if !tombstone {
            self.pending.insert(rev, self.events.len());
        }
        self.events.push(Event {
            r#type: r#type as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
    }

    /// Compacts history up to `rev`. Returns the revisions to purge from disk once
    /// this batch is durable.
    pub fn compact(&mut self, rev: i64) -> Result<Vec<Revision>> {
        if rev <= self.mvcc.compact_rev.load(Ordering::SeqCst) {
            return Err(StoreError::Compacted);
        }
        if rev > self.rev {
            return Err(StoreError::FutureRev);
        }
        self.mvcc.compact_rev.store(rev, Ordering::SeqCst);
        self.batch.put(
            Cf::Meta,
            META_COMPACT_REV.to_vec(),
            rev.to_be_bytes().to_vec(),
        );
        Ok(self.index.compact(rev))
    }

    /// Ends the batch: the caller writes `batch` durably, then calls [`Mvcc::publish`].
    pub fn finish(mut self) -> WriterOutput {
        self.mvcc.applied_rev.store(self.rev, Ordering::SeqCst);
        self.batch.put(
            Cf::Meta,
            META_CURRENT_REV.to_vec(),
            self.rev.to_be_bytes().to_vec(),
        );
        WriterOutput {
            batch: self.batch,
            events: self.events,
            unloaded_prev: self.unloaded_prev,
            rev: self.rev,
        }
    }
}

impl KvRead for Writer<'_> {
    fn current_rev(&self) -> i64 {
        if self.sub > 0 {
            self.txn_main
        } else {
            self.rev
        }
    }

    fn compact_rev(&self) -> i64 {
        self.mvcc.compact_rev()
    }

    fn revisions(&self, range: &KeyRange, rev: i64, limit: usize) -> (Vec<Revision>, i64) {
        collect_revisions(&self.index, range, rev, limit)
    }

    fn load(&self, rev: Revision) -> Result<Option<KeyValue>> {
        match self.pending.get(&rev) {
            Some(&at) => Ok(self.events.get(at).and_then(|e| e.kv.clone())),
            None => self.mvcc.load(rev),
        }
    }
}

/// Serves a `RangeRequest` from any view, with etcd's limit, sort and filter rules.
pub fn range(view: &dyn KvRead, r: &RangeRequest) -> Result<RangeResponse> {
    let current = view.current_rev();
    let rev = if r.revision <= 0 { current } else { r.revision };
    if rev > current {
        return Err(StoreError::FutureRev);
    }
    if rev < view.compact_rev() {
        return Err(StoreError::Compacted);
    }
    let key_range = KeyRange::new(&r.key, &r.range_end);
    let sort_order = range_request::SortOrder::try_from(r.sort_order).unwrap_or_default();
    let sort_target = range_request::SortTarget::try_from(r.sort_target).unwrap_or_default();
    let filters = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting and filtering need every key; otherwise fetch one extra to learn `more`.
    let fetch = if sort_order != range_request::SortOrder::None || filters || r.limit <= 0 {
        0
    } else {
        r.limit as usize + 1
    };
    let (revs, count) = view.revisions(&key_range, rev, fetch);
    let header = Some(ResponseHeader {
        revision: current,
        ..Default::default()
    });
    if r.count_only {
        return Ok(RangeResponse {
            header,
            kvs: vec![],
            more: false,
            count,
        });
    }
    let mut kvs = Vec::with_capacity(revs.len());
    for rv in revs {
        match view.load(rv)? {
            Some(kv) => kvs.push(kv),
            // Compaction purged it while we read: the read is too old now.
            None => return Err(StoreError::Compacted),
        }
    }
    let keep = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
    if filters {
        kvs.retain(|kv| {
            keep(kv.mod_revision, r.min_mod_revision, r.max_mod_revision)
                && keep(
                    kv.create_revision,
                    r.min_create_revision,
                    r.max_create_revision,
                )
        });
    }
    use range_request::{SortOrder, SortTarget};
    let order = match (sort_target, sort_order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, o) => o,
    };
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let o = match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            if order == SortOrder::Descend {
                o.reverse()
            } else {
                o
            }
        });
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header,
        kvs,
        more,
        count,
    })
}

#[cfg(test)]
mod tests;
