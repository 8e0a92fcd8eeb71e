//! The production [`Engine`]: one RocksDB instance, one column family per [`Cf`].
//!
//! Durability comes from RocksDB's write-ahead log: a batch written with `sync` is
//! fsynced before `write` returns, which is what lets the apply path acknowledge it.

use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, DB,
};

use super::{BatchOp, Cf, Engine, EngineError, ExportVisitor, WriteBatch};

/// See the module documentation.
pub struct RocksEngine {
    db: DB,
    size_cache: Mutex<Option<(Instant, u64)>>,
    /// Declared after `db`, so it drops (and counts the engine closed) only once the
    /// database is closed.
    _open: OpenGuard,
}

/// Engines opened in this process and not yet closed, for [`wait_all_closed`].
static OPEN: (Mutex<usize>, parking_lot::Condvar) = (Mutex::new(0), parking_lot::Condvar::new());

struct OpenGuard;

impl OpenGuard {
    fn new() -> Self {
        *OPEN.0.lock() += 1;
        OpenGuard
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut n = OPEN.0.lock();
        *n = n.saturating_sub(1);
        OPEN.1.notify_all();
    }
}

/// Waits (up to `timeout`) until every engine this process opened is closed; returns
/// whether they all are. A process should call it before it exits: the last handle
/// to an engine may be dropped by one of the store's own threads (the Raft log
/// writer) while the main thread returns, and RocksDB closing a database while the
/// process runs its exit-time destructors aborts it ("pthread lock: Invalid
/// argument").
pub fn wait_all_closed(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut n = OPEN.0.lock();
    while *n > 0 {
        if OPEN.1.wait_until(&mut n, deadline).timed_out() {
            return *n == 0;
        }
    }
    true
}

/// How long a size reading is reused (see `size_bytes`).
const SIZE_CACHE_TTL: Duration = Duration::from_millis(20);

fn err(e: rocksdb::Error) -> EngineError {
    EngineError(e.into_string())
}

impl RocksEngine {
    /// Opens (creating if missing) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Two cores is the machine we are built for: RocksDB's background flush and
        // compaction must not starve the apply loop.
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // Keep the WAL bounded so a restart replays little.
        opts.set_max_total_wal_size(256 << 20);
        let cache = Cache::new_lru_cache(128 << 20);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            table.set_cache_index_and_filter_blocks(true);
            o.set_block_based_table_factory(&table);
            if *cf == Cf::History {
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
                o.set_write_buffer_size(64 << 20);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(err)?;
        Ok(Self {
            db,
            size_cache: Mutex::new(None),
            _open: OpenGuard::new(),
        })
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, EngineError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| EngineError(format!("missing column family {}", cf.name())))
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(err)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let mut ro = ReadOptions::default();
        if let Some(e) = end {
            ro.set_iterate_upper_bound(e.to_vec());
        }
        let it = self.db.iterator_cf_opt(
            self.cf(cf)?,
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(err)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), EngineError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(cf, k, v) => wb.put_cf(self.cf(cf)?, k, v),
                BatchOp::Delete(cf, k) => wb.delete_cf(self.cf(cf)?, k),
                BatchOp::DeleteRange(cf, s, e) => {
                    if s < e {
                        wb.delete_range_cf(self.cf(cf)?, s, e)
                    }
                }
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(err)
    }

    fn compact(&self) -> Result<(), EngineError> {
        for cf in Cf::ALL {
            self.db
                .compact_range_cf(self.cf(cf)?, None::<&[u8]>, None::<&[u8]>);
        }
        // The space just reclaimed must count at once (disarming NOSPACE follows).
        *self.size_cache.lock() = None;
        Ok(())
    }

    fn export(&self, visit: &mut ExportVisitor<'_>) -> Result<(), EngineError> {
        // One RocksDB snapshot shared by every column family's iterator: a batch is
        // either wholly in the export or wholly out of it.
        let snap = self.db.snapshot();
        for cf in Cf::ALL {
            for item in snap.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
                let (k, v) = item.map_err(err)?;
                if !visit(cf, &k, &v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        // Every write proposal checks the quota against this; asking RocksDB for a
        // dozen properties each time showed up in put profiles, and the quota is a
        // coarse bound anyway, so a reading stays good for a few milliseconds.
        let mut cached = self.size_cache.lock();
        if let Some((at, size)) = *cached {
            if at.elapsed() < SIZE_CACHE_TTL {
                return size;
            }
        }
        let size = self.read_size();
        *cached = Some((Instant::now(), size));
        size
    }
}

impl RocksEngine {
    fn read_size(&self) -> u64 {
        let mut total = 0;
        for cf in Cf::ALL {
            let Ok(h) = self.cf(cf) else { continue };
            for prop in [
                "rocksdb.total-sst-files-size",
                "rocksdb.size-all-mem-tables",
            ] {
                total += self
                    .db
                    .property_int_value_cf(h, prop)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
        }
        total
    }
}
