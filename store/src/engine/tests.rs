//! The engine conformance suite: every [`Engine`] implementation must pass all of it.

use super::memory::MemEngine;
use super::rocks::RocksEngine;
use super::{Cf, Engine, WriteBatch};

fn collect(e: &dyn Engine, cf: Cf, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    e.scan(cf, start, end, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .expect("scan");
    out
}

fn put_get_delete(e: &dyn Engine) {
    let mut b = WriteBatch::default();
    b.put(Cf::History, b"a".to_vec(), b"1".to_vec());
    b.put(Cf::Meta, b"a".to_vec(), b"meta".to_vec());
    e.write(b, true).expect("write");
    assert_eq!(e.get(Cf::History, b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(e.get(Cf::Meta, b"a").expect("get"), Some(b"meta".to_vec()));
    assert_eq!(
        e.get(Cf::Lease, b"a").expect("get"),
        None,
        "keyspaces are separate"
    );
    let mut b = WriteBatch::default();
    b.delete(Cf::History, b"a".to_vec());
    e.write(b, false).expect("write");
    assert_eq!(e.get(Cf::History, b"a").expect("get"), None);
    assert_eq!(e.get(Cf::Meta, b"a").expect("get"), Some(b"meta".to_vec()));
}

fn batch_is_ordered(e: &dyn Engine) {
    let mut b = WriteBatch::default();
    b.put(Cf::Lease, b"k".to_vec(), b"1".to_vec());
    b.delete(Cf::Lease, b"k".to_vec());
    b.put(Cf::Lease, b"j".to_vec(), b"1".to_vec());
    b.put(Cf::Lease, b"j".to_vec(), b"2".to_vec());
    e.write(b, true).expect("write");
    assert_eq!(e.get(Cf::Lease, b"k").expect("get"), None);
    assert_eq!(e.get(Cf::Lease, b"j").expect("get"), Some(b"2".to_vec()));
}

fn scan_bounds_and_stop(e: &dyn Engine) {
    let mut b = WriteBatch::default();
    for k in [&b"a"[..], b"b", b"b\0", b"c", b"d"] {
        b.put(Cf::Auth, k.to_vec(), k.to_vec());
    }
    e.write(b, true).expect("write");
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(collect(e, Cf::Auth, b"b", Some(b"d"))),
        vec![b"b".to_vec(), b"b\0".to_vec(), b"c".to_vec()]
    );
    assert_eq!(
        keys(collect(e, Cf::Auth, b"c", None)),
        vec![b"c".to_vec(), b"d".to_vec()]
    );
    assert!(
        collect(e, Cf::Auth, b"c", Some(b"c")).is_empty(),
        "empty interval"
    );
    assert!(
        collect(e, Cf::Auth, b"d", Some(b"a")).is_empty(),
        "inverted interval"
    );
    let mut seen = 0;
    e.scan(Cf::Auth, b"", None, &mut |_, _| {
        seen += 1;
        seen < 2
    })
    .expect("scan");
    assert_eq!(seen, 2, "scan stops when the visitor says so");
}

fn delete_range(e: &dyn Engine) {
    let mut b = WriteBatch::default();
    for i in 0u8..10 {
        b.put(Cf::History, vec![i], vec![i]);
    }
    e.write(b, true).expect("write");
    let mut b = WriteBatch::default();
    b.delete_range(Cf::History, vec![2u8], vec![5u8]);
    b.delete_range(Cf::History, vec![9u8], vec![3u8]); // inverted: no-op
    e.write(b, true).expect("write");
    let keys: Vec<u8> = collect(e, Cf::History, &[], None)
        .into_iter()
        .map(|(k, _)| k[0])
        .collect();
    assert_eq!(keys, vec![0, 1, 5, 6, 7, 8, 9]);
    e.compact().expect("compact");
    assert_eq!(
        collect(e, Cf::History, &[], None).len(),
        7,
        "compaction keeps live data"
    );
}

fn export_is_complete_and_ordered(e: &dyn Engine) {
    let mut b = WriteBatch::default();
    b.put(Cf::Meta, b"m".to_vec(), b"1".to_vec());
    b.put(Cf::History, b"h2".to_vec(), b"2".to_vec());
    b.put(Cf::History, b"h1".to_vec(), b"1".to_vec());
    b.put(Cf::Auth, b"a".to_vec(), Vec::new());
    b.put(Cf::Lease, b"l".to_vec(), b"x".to_vec());
    b.delete(Cf::Lease, b"l".to_vec());
    e.write(b, true).expect("write");
    let mut seen = Vec::new();
    e.export(&mut |cf, k, v| {
        seen.push((cf, k.to_vec(), v.to_vec()));
        true
    })
    .expect("export");
    assert_eq!(
        seen,
        vec![
            (Cf::History, b"h1".to_vec(), b"1".to_vec()),
            (Cf::History, b"h2".to_vec(), b"2".to_vec()),
            (Cf::Auth, b"a".to_vec(), Vec::new()),
            (Cf::Meta, b"m".to_vec(), b"1".to_vec()),
        ],
        "every keyspace in Cf::ALL order, keys ascending, deletions absent"
    );
    let mut n = 0;
    e.export(&mut |_, _, _| {
        n += 1;
        n < 3
    })
    .expect("export");
    assert_eq!(n, 3, "export stops when the visitor says so");
}

fn suite(make: &dyn Fn() -> Box<dyn Engine>) {
    put_get_delete(&*make());
    batch_is_ordered(&*make());
    scan_bounds_and_stop(&*make());
    delete_range(&*make());
    export_is_complete_and_ordered(&*make());
}

#[test]
fn memory_engine_conforms() {
    suite(&|| Box::new(MemEngine::new()));
}

#[test]
fn rocks_engine_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    suite(&|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = RocksEngine::open(dir.path()).expect("open");
        dirs.borrow_mut().push(dir);
        Box::new(e)
    });
}

#[test]
fn rocks_engine_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let e = RocksEngine::open(dir.path()).expect("open");
        let mut b = WriteBatch::default();
        b.put(Cf::Meta, b"x".to_vec(), b"y".to_vec());
        e.write(b, true).expect("write");
    }
    let e = RocksEngine::open(dir.path()).expect("reopen");
    assert_eq!(e.get(Cf::Meta, b"x").expect("get"), Some(b"y".to_vec()));
}
