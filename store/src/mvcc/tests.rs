//! MVCC semantics on the in-memory engine: revisions, versions, txn visibility,
//! compaction and history replay.

use std::sync::Arc;

use capstan_proto::etcdserverpb::RangeRequest;

use super::*;
use crate::engine::memory::MemEngine;

fn open() -> Mvcc {
    Mvcc::open(Arc::new(MemEngine::new())).expect("open").0
}

fn commit(m: &Mvcc, f: impl FnOnce(&mut Writer<'_>)) -> i64 {
    let mut w = m.writer();
    w.begin_txn();
    f(&mut w);
    w.end_txn();
    let out = w.finish();
    m.engine().write(out.batch, true).expect("write");
    m.publish(out.rev);
    out.rev
}

fn get(m: &Mvcc, key: &str, rev: i64) -> Result<Option<KeyValue>> {
    let r = RangeRequest {
        key: key.into(),
        revision: rev,
        ..Default::default()
    };
    Ok(range(m, &r)?.kvs.into_iter().next())
}

#[test]
fn versions_and_revisions() {
    let m = open();
    assert_eq!(
        m.current_rev(),
        1,
        "an empty store is at revision 1 like etcd"
    );
    commit(&m, |w| {
        w.put(b"a", b"1".to_vec(), Some(0), None);
    });
    commit(&m, |w| {
        w.put(b"a", b"2".to_vec(), Some(0), None);
    });
    let kv = get(&m, "a", 0).expect("get").expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(get(&m, "a", 2).expect("get").expect("old").value, b"1");
    commit(&m, |w| {
        assert_eq!(
            w.delete_range(&KeyRange::new(b"a", b""))
                .expect("del")
                .len(),
            1
        );
    });
    assert!(get(&m, "a", 0).expect("get").is_none());
    let rev = commit(&m, |w| {
        w.put(b"a", b"3".to_vec(), Some(0), None);
    });
    let kv = get(&m, "a", 0).expect("get").expect("present");
    assert_eq!(
        (kv.create_revision, kv.version),
        (rev, 1),
        "a new generation"
    );
    assert_eq!(get(&m, "a", 99), Err(StoreError::FutureRev));
}

#[test]
fn a_txn_sees_its_own_writes_and_shares_one_revision() {
    let m = open();
    let rev = commit(&m, |w| {
        w.put(b"x", b"1".to_vec(), Some(0), None);
        w.put(b"y", b"2".to_vec(), Some(0), None);
        let seen = range(
            w,
            &RangeRequest {
                key: b"x".to_vec(),
                ..Default::default()
            },
        )
        .expect("range");
        assert_eq!(seen.kvs[0].value, b"1");
    });
    assert_eq!(rev, 2);
    let y = get(&m, "y", 0).expect("get").expect("present");
    assert_eq!(y.mod_revision, 2);
}

#[test]
fn empty_delete_does_not_bump_the_revision() {
    let m = open();
    let rev = commit(&m, |w| {
        assert!(w
            .delete_range(&KeyRange::new(b"nothing", b""))
            .expect("del")
            .is_empty());
    });
    assert_eq!(rev, 1);
}

#[test]
fn compaction_and_history() {
    let m = open();
    for i in 0..5 {
        commit(&m, |w| {
            w.put(b"k", vec![b'0' + i], Some(0), None);
        });
    }
    // revisions 2..=6
    let ev = m.history(3, 6, true).expect("history");
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[0].prev_kv.as_ref().expect("prev").value, b"0");
    let mut w = m.writer();
    let doomed = w.compact(4).expect("compact");
    assert_eq!(doomed.len(), 2);
    let out = w.finish();
    m.engine().write(out.batch, true).expect("write");
    m.purge(doomed).expect("purge");
    assert_eq!(get(&m, "k", 3), Err(StoreError::Compacted));
    assert_eq!(get(&m, "k", 4).expect("get").expect("kept").value, b"2");
    assert_eq!(m.history(3, 6, false).err(), Some(StoreError::Compacted));
    let mut w = m.writer();
    assert_eq!(w.compact(4).err(), Some(StoreError::Compacted));
    assert_eq!(w.compact(60).err(), Some(StoreError::FutureRev));
}

#[test]
fn reopen_rebuilds_the_index() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    {
        let (m, _) = Mvcc::open(engine.clone()).expect("open");
        commit(&m, |w| {
            w.put(b"a", b"1".to_vec(), Some(0), None);
        });
        commit(&m, |w| {
            w.delete_range(&KeyRange::new(b"a", b"")).expect("del");
        });
    }
    let (m, _) = Mvcc::open(engine).expect("reopen");
    assert_eq!(m.current_rev(), 3);
    assert!(get(&m, "a", 0).expect("get").is_none());
    assert!(get(&m, "a", 2).expect("get").is_some());
}

#[tokio::test]
async fn purger_deletes_compacted_history_in_the_background() {
    let m = open();
    for v in ["1", "2", "3"] {
        commit(&m, |w| {
            w.put(b"a", v.as_bytes().to_vec(), Some(0), None);
        });
    }
    let mut w = m.writer();
    let doomed = w.compact(3).expect("compact");
    let out = w.finish();
    m.engine().write(out.batch, true).expect("write");
    // Revision 2 is superseded by 3 (the compaction revision stays readable).
    assert_eq!(doomed, vec![Revision::new(2, 0)]);
    let purger = Purger::start(m.engine().clone()).expect("purger");
    purger.submit(doomed);
    purger.wait_idle().await;
    let history = |rev: i64| {
        m.engine()
            .get(Cf::History, &Revision::new(rev, 0).to_key())
            .expect("get")
    };
    assert!(history(2).is_none(), "revision 2 purged");
    assert!(
        history(3).is_some() && history(4).is_some(),
        "newer revisions kept"
    );
}
