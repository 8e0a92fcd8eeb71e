//! An in-memory [`Engine`]: a `BTreeMap` per keyspace. Used by unit tests and as the
//! second implementation the conformance suite keeps honest.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::{BatchOp, Cf, Engine, EngineError, ExportVisitor, WriteBatch};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// See the module documentation.
#[derive(Default)]
pub struct MemEngine {
    cfs: RwLock<[Map; Cf::ALL.len()]>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

fn idx(cf: Cf) -> usize {
    cf as usize
}

impl Engine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.cfs.read()[idx(cf)].get(key).cloned())
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), EngineError> {
        let guard = self.cfs.read();
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        for (k, v) in guard[idx(cf)].range::<[u8], _>((Bound::Included(start), upper)) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<(), EngineError> {
        let mut guard = self.cfs.write();
        for op in batch.ops {
            match op {
                BatchOp::Put(cf, k, v) => {
                    guard[idx(cf)].insert(k, v);
                }
                BatchOp::Delete(cf, k) => {
                    guard[idx(cf)].remove(&k);
                }
                BatchOp::DeleteRange(cf, s, e) => {
                    if s < e {
                        let map = &mut guard[idx(cf)];
                        let doomed: Vec<Vec<u8>> = map
                            .range::<[u8], _>((Bound::Included(&s[..]), Bound::Excluded(&e[..])))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn compact(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn export(&self, visit: &mut ExportVisitor<'_>) -> Result<(), EngineError> {
        // One read guard over every keyspace is the point-in-time view.
        let guard = self.cfs.read();
        for cf in Cf::ALL {
            for (k, v) in &guard[idx(cf)] {
                if !visit(cf, k, v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.cfs
            .read()
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}
