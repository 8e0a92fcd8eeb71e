//! The in-memory key index: for every key, the revisions at which it changed.
//!
//! Like etcd's `treeIndex`, it lives only in memory and is rebuilt from the history
//! keyspace at start-up; the history is the one source of truth on disk, so the index
//! can never disagree with it after a crash.
//!
//! Besides the revisions, each key keeps its live record's create revision, version and
//! lease ([`Live`]), as etcd's `keyIndex` generations (and its lessor's key map) do, so
//! that a put over a live key computes its new record without reading the old one.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A revision: `main` is the store revision, `sub` the position inside one txn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The history-keyspace key: big-endian so byte order is revision order.
    pub fn to_key(self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.main.to_be_bytes());
        k[8..].copy_from_slice(&self.sub.to_be_bytes());
        k
    }

    pub fn from_key(k: &[u8]) -> Option<Self> {
        let main = i64::from_be_bytes(k.get(..8)?.try_into().ok()?);
        let sub = i64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
        Some(Self { main, sub })
    }
}

/// One change of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub rev: Revision,
    pub tombstone: bool,
}

/// A key's live record as far as a put over it needs: the record's revision and the
/// fields the new record inherits or derives (meaningless after a tombstone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub rev: Revision,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// One key's entry.
struct KeyIndex {
    changes: Vec<Change>,
    /// The newest change's record (when it is a put). Kept here rather than derived
    /// from `changes`, because compaction drops the change that created the key.
    create_revision: i64,
    version: i64,
    lease: i64,
}

/// The key-to-revisions map.
#[derive(Default)]
pub struct Index {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

/// How a range request names its keys, decoded from etcd's `key`/`range_end` convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// `range_end` empty: exactly one key.
    Single(Vec<u8>),
    /// `[start, end)`; `end = None` for `range_end = "\0"` (to the end of the keyspace).
    Interval(Vec<u8>, Option<Vec<u8>>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == [0] {
            KeyRange::Interval(key.to_vec(), None)
        } else {
            KeyRange::Interval(key.to_vec(), Some(range_end.to_vec()))
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k == key,
            KeyRange::Interval(s, e) => key >= &s[..] && e.as_ref().is_none_or(|e| key < &e[..]),
        }
    }

    /// Whether two ranges share a key (for the txn duplicate-key check).
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let (s1, e1) = self.bounds();
        let (s2, e2) = other.bounds();
        let before = |e: &Option<Vec<u8>>, s: &[u8]| e.as_ref().is_some_and(|e| &e[..] <= s);
        !(before(&e1, &s2) || before(&e2, &s1))
    }

    /// Half-open bounds; a single key `k` is `[k, k\0)`.
    fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut e = k.clone();
                e.push(0);
                (k.clone(), Some(e))
            }
            KeyRange::Interval(s, e) => (s.clone(), e.clone()),
        }
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records a change whose record has `create_revision`, `version` and `lease` (all
    /// zero for a tombstone, as etcd writes them). Changes arrive in revision order.
    pub fn push(
        &mut self,
        key: &[u8],
        change: Change,
        create_revision: i64,
        version: i64,
        lease: i64,
    ) {
        match self.keys.get_mut(key) {
            Some(k) => {
                k.changes.push(change);
                k.create_revision = create_revision;
                k.version = version;
                k.lease = lease;
            }
            None => {
                let k = KeyIndex {
                    changes: vec![change],
                    create_revision,
                    version,
                    lease,
                };
                self.keys.insert(key.to_vec(), k);
            }
        }
    }

    /// The revision at which `key` was last put at or before `rev`, unless deleted since.
    pub fn get(&self, key: &[u8], rev: i64) -> Option<Revision> {
        self.keys.get(key).and_then(|k| live_at(&k.changes, rev))
    }

    /// `key`'s live record now, unless it is deleted or was never written.
    pub fn live(&self, key: &[u8]) -> Option<Live> {
        let k = self.keys.get(key)?;
        let last = k.changes.last()?;
        (!last.tombstone).then_some(Live {
            rev: last.rev,
            create_revision: k.create_revision,
            version: k.version,
            lease: k.lease,
        })
    }

    /// Visits live keys of `range` at `rev` in key order until `visit` returns false.
    pub fn visit(
        &self,
        range: &KeyRange,
        rev: i64,
        visit: &mut dyn FnMut(&[u8], Revision) -> bool,
    ) {
        match range {
            KeyRange::Single(k) => {
                if let Some(r) = self.get(k, rev) {
                    visit(k, r);
                }
            }
            KeyRange::Interval(s, e) => {
                if e.as_ref().is_some_and(|e| e <= s) {
                    return;
                }
                let upper = match e {
                    Some(e) => Bound::Excluded(&e[..]),
                    None => Bound::Unbounded,
                };
                for (k, entry) in self.keys.range::<[u8], _>((Bound::Included(&s[..]), upper)) {
                    if let Some(r) = live_at(&entry.changes, rev) {
                        if !visit(k, r) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Drops every change superseded at `rev`: per key, all changes before the last one
    /// at or below `rev`, and that one too if it is a tombstone. Returns the dropped
    /// revisions (to delete from disk).
    pub fn compact(&mut self, rev: i64) -> Vec<Revision> {
        let mut doomed = Vec::new();
        self.keys.retain(|_, k| {
            let changes = &mut k.changes;
            let n = changes.partition_point(|c| c.rev.main <= rev);
            if n == 0 {
                return true;
            }
            let keep_from = if changes[n - 1].tombstone { n } else { n - 1 };
            doomed.extend(changes.drain(..keep_from).map(|c| c.rev));
            !changes.is_empty()
        });
        doomed
    }

    /// The revisions a compaction at `rev` keeps at or below `rev` (what `HashKV` counts).
    pub fn kept_at(&self, rev: i64) -> std::collections::HashSet<Revision> {
        let mut keep = std::collections::HashSet::new();
        for k in self.keys.values() {
            let changes = &k.changes;
            let n = changes.partition_point(|c| c.rev.main <= rev);
            if n > 0 && !changes[n - 1].tombstone {
                keep.insert(changes[n - 1].rev);
            }
        }
        keep
    }
}

fn live_at(changes: &[Change], rev: i64) -> Option<Revision> {
    let n = changes.partition_point(|c| c.rev.main <= rev);
    let last = changes.get(n.checked_sub(1)?)?;
    (!last.tombstone).then_some(last.rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(i: &mut Index, k: &str, main: i64) {
        i.push(
            k.as_bytes(),
            Change {
                rev: Revision::new(main, 0),
                tombstone: false,
            },
            main,
            1,
            0,
        );
    }
    fn del(i: &mut Index, k: &str, main: i64) {
        i.push(
            k.as_bytes(),
            Change {
                rev: Revision::new(main, 0),
                tombstone: true,
            },
            0,
            0,
            0,
        );
    }

    #[test]
    fn reads_at_revisions() {
        let mut i = Index::default();
        put(&mut i, "a", 2);
        put(&mut i, "a", 4);
        del(&mut i, "a", 6);
        put(&mut i, "a", 8);
        assert_eq!(i.get(b"a", 1), None);
        assert_eq!(i.get(b"a", 3), Some(Revision::new(2, 0)));
        assert_eq!(i.get(b"a", 5), Some(Revision::new(4, 0)));
        assert_eq!(i.get(b"a", 6), None);
        assert_eq!(i.get(b"a", 9), Some(Revision::new(8, 0)));
    }

    #[test]
    fn compaction_keeps_what_later_reads_need() {
        let mut i = Index::default();
        put(&mut i, "a", 2);
        put(&mut i, "a", 4);
        put(&mut i, "b", 3);
        del(&mut i, "b", 5);
        put(&mut i, "c", 7);
        let mut doomed = i.compact(5);
        doomed.sort();
        assert_eq!(
            doomed,
            vec![
                Revision::new(2, 0),
                Revision::new(3, 0),
                Revision::new(5, 0)
            ]
        );
        assert_eq!(i.get(b"a", 5), Some(Revision::new(4, 0)));
        assert_eq!(i.get(b"b", 5), None);
        assert_eq!(i.len(), 2, "b is gone entirely");
        assert_eq!(i.kept_at(5).len(), 1);
    }

    #[test]
    fn live_state_outlives_the_changes_compaction_drops() {
        let mut i = Index::default();
        let change = |main| Change {
            rev: Revision::new(main, 0),
            tombstone: false,
        };
        i.push(b"a", change(2), 2, 1, 0);
        i.push(b"a", change(3), 2, 2, 7);
        assert_eq!(i.compact(3), vec![Revision::new(2, 0)]);
        let live = Live {
            rev: Revision::new(3, 0),
            create_revision: 2,
            version: 2,
            lease: 7,
        };
        assert_eq!(i.live(b"a"), Some(live));
        del(&mut i, "a", 4);
        assert_eq!(i.live(b"a"), None);
        assert_eq!(i.live(b"never"), None);
    }

    #[test]
    fn ranges() {
        let mut i = Index::default();
        for (n, k) in ["a", "b", "c", "d"].iter().enumerate() {
            put(&mut i, k, n as i64 + 1);
        }
        let mut seen = Vec::new();
        i.visit(&KeyRange::new(b"b", b"d"), 10, &mut |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert_eq!(seen, vec![b"b".to_vec(), b"c".to_vec()]);
        assert!(KeyRange::new(b"a", b"c").overlaps(&KeyRange::new(b"b", b"")));
        assert!(!KeyRange::new(b"a", b"b").overlaps(&KeyRange::new(b"b", b"")));
        assert!(KeyRange::new(b"a", &[0]).overlaps(&KeyRange::new(b"zzz", b"")));
    }
}
