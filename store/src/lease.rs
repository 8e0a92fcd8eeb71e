//! Leases: TTL-bound handles that keys attach to, revoked with all their keys on expiry.
//!
//! Grant, revoke and checkpoint are replicated state changes (they go through the apply
//! path); expiry deadlines and keep-alive renewals are the clock owner's (today the one
//! member, later the Raft leader) local business, and an expiry becomes a replicated
//! revoke. Remaining TTLs are checkpointed so a restart does not hand every lease a
//! fresh TTL.
//!
//! On disk (the lease keyspace): `l<id>` holds `ttl, remaining_ttl`; `k<id><key>` marks
//! an attached key, so attachments survive restarts without reading every value.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{Result, StoreError};

/// The largest TTL etcd accepts (`MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One lease.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Checkpointed remaining TTL (0: none recorded).
    pub remaining_ttl: i64,
    pub expiry: Instant,
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// Seconds left, rounded up like etcd (`-1` once expired).
    pub fn remaining(&self, now: Instant) -> i64 {
        if self.expiry <= now {
            return -1;
        }
        let d = self.expiry - now;
        (d.as_millis() as i64 + 999) / 1000
    }
}

/// All leases of the member.
pub struct Lessor {
    leases: Mutex<HashMap<i64, Lease>>,
    min_ttl: i64,
}

fn meta_key(id: i64) -> Vec<u8> {
    let mut k = vec![b'l'];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = vec![b'k'];
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn encode(ttl: i64, remaining: i64) -> Vec<u8> {
    let mut v = ttl.to_be_bytes().to_vec();
    v.extend_from_slice(&remaining.to_be_bytes());
    v
}

impl Lessor {
    /// Loads leases and attachments. Every lease starts with its checkpointed remaining
    /// TTL, or its full TTL when none was checkpointed.
    pub fn open(engine: &dyn Engine, min_ttl: i64) -> Result<Self> {
        Ok(Self {
            leases: Mutex::new(load(engine)?),
            min_ttl,
        })
    }

    /// Replaces every lease with what the lease keyspace holds now (after a Raft
    /// snapshot install replaced it), with deadlines restarted as in [`Lessor::open`].
    pub fn reload(&self, engine: &dyn Engine) -> Result<()> {
        let leases = load(engine)?;
        *self.leases.lock() = leases;
        Ok(())
    }

    /// The TTL a grant of `ttl` really gets (etcd raises short TTLs to the minimum).
    pub fn effective_ttl(&self, ttl: i64) -> i64 {
        ttl.max(self.min_ttl)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.leases.lock().contains_key(&id)
    }

    /// Applies a grant.
    pub fn grant(&self, id: i64, ttl: i64, batch: &mut WriteBatch) -> Result<i64> {
        let mut leases = self.leases.lock();
        if leases.contains_key(&id) {
            return Err(StoreError::LeaseExist);
        }
        let ttl = self.effective_ttl(ttl);
        leases.insert(
            id,
            Lease {
                id,
                ttl,
                remaining_ttl: 0,
                expiry: Instant::now() + secs(ttl),
                keys: BTreeSet::new(),
            },
        );
        batch.put(Cf::Lease, meta_key(id), encode(ttl, 0));
        Ok(ttl)
    }

    /// Applies a revoke; returns the keys to delete (in the same revision).
    pub fn revoke(&self, id: i64, batch: &mut WriteBatch) -> Result<Vec<Vec<u8>>> {
        let lease = self
            .leases
            .lock()
            .remove(&id)
            .ok_or(StoreError::LeaseNotFound)?;
        batch.delete(Cf::Lease, meta_key(id));
        let mut end = attach_key(id, &[]);
        end[8] = end[8].wrapping_add(1);
        let start = attach_key(id, &[]);
        if end > start {
            batch.delete_range(Cf::Lease, start, end);
        } else {
            for k in &lease.keys {
                batch.delete(Cf::Lease, attach_key(id, k));
            }
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Applies a checkpoint of the remaining TTL.
    pub fn checkpoint(&self, id: i64, remaining: i64, batch: &mut WriteBatch) -> Result<()> {
        let mut leases = self.leases.lock();
        let l = leases.get_mut(&id).ok_or(StoreError::LeaseNotFound)?;
        l.remaining_ttl = remaining;
        batch.put(Cf::Lease, meta_key(id), encode(l.ttl, remaining));
        Ok(())
    }

    /// Records that `key` now belongs to `lease` (0: none), leaving `old`.
    pub fn attach(&self, key: &[u8], old: i64, lease: i64, batch: &mut WriteBatch) {
        if old == lease {
            return;
        }
        let mut leases = self.leases.lock();
        if old != 0 {
            if let Some(l) = leases.get_mut(&old) {
                l.keys.remove(key);
            }
            batch.delete(Cf::Lease, attach_key(old, key));
        }
        if lease != 0 {
            if let Some(l) = leases.get_mut(&lease) {
                l.keys.insert(key.to_vec());
            }
            batch.put(Cf::Lease, attach_key(lease, key), Vec::new());
        }
    }

    /// Renews a lease (keep-alive); returns its TTL.
    pub fn renew(&self, id: i64) -> Result<i64> {
        let mut leases = self.leases.lock();
        let l = leases.get_mut(&id).ok_or(StoreError::LeaseNotFound)?;
        if l.expiry <= Instant::now() {
            // Expired but not yet revoked: it is as good as gone.
            return Err(StoreError::LeaseNotFound);
        }
        l.expiry = Instant::now() + secs(l.ttl);
        l.remaining_ttl = 0;
        Ok(l.ttl)
    }

    /// A copy of one lease.
    pub fn get(&self, id: i64) -> Option<Lease> {
        self.leases.lock().get(&id).cloned()
    }

    /// Every lease ID.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leases past their deadline.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        self.leases
            .lock()
            .values()
            .filter(|l| l.expiry <= now)
            .map(|l| l.id)
            .collect()
    }

    /// Remaining TTLs to checkpoint: leases whose remaining time differs from what is
    /// recorded.
    pub fn to_checkpoint(&self, now: Instant) -> Vec<(i64, i64)> {
        self.leases
            .lock()
            .values()
            .filter_map(|l| {
                let r = l.remaining(now);
                (r > 0 && r != l.remaining_ttl && r < l.ttl).then_some((l.id, r))
            })
            .collect()
    }

    /// Restarts every deadline from now: a new clock owner cannot know how long the old
    /// one had left, so it extends rather than expire leases early (etcd's `Promote`).
    pub fn promote(&self, extend: Duration) {
        let now = Instant::now();
        for l in self.leases.lock().values_mut() {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            l.expiry = now + secs(left) + extend;
        }
    }
}

/// Loads leases and attachments; see [`Lessor::open`].
fn load(engine: &dyn Engine) -> Result<HashMap<i64, Lease>> {
    let mut leases = HashMap::new();
    let now = Instant::now();
    engine.scan(Cf::Lease, b"l", Some(b"m"), &mut |k, v| {
        if let (Some(id), Some(ttl), Some(rem)) = (
            be_i64(&k[1..]),
            be_i64(v),
            be_i64(v.get(8..).unwrap_or(&[])),
        ) {
            let left = if rem > 0 { rem } else { ttl };
            leases.insert(
                id,
                Lease {
                    id,
                    ttl,
                    remaining_ttl: rem,
                    expiry: now + secs(left),
                    keys: BTreeSet::new(),
                },
            );
        }
        true
    })?;
    engine.scan(Cf::Lease, b"k", Some(b"l"), &mut |k, _| {
        if let Some(id) = be_i64(&k[1..]) {
            if let Some(l) = leases.get_mut(&id) {
                l.keys.insert(k[9..].to_vec());
            }
        }
        true
    })?;
    Ok(leases)
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

fn be_i64(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}
