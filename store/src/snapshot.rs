//! capstan's snapshot format, shared by `etcdctl snapshot save` / `capstan snapshot
//! restore` (`server::maintenance`) and Raft snapshots (`raft::state_machine`), so one
//! encoder and one parser cover both.
//!
//! A snapshot is every record of the state keyspaces ([`Cf::is_state`]) from one
//! point-in-time engine view: a body of [`MAGIC`], then records `(keyspace code: u8,
//! key length: u32 BE, key, value length: u32 BE, value)`, then [`END_OF_RECORDS`], zero
//! padding to a multiple of [`PAGE`] (etcdctl 3.4 only accepts bodies of whole 512-byte
//! pages, as a bbolt file is), then the SHA-256 of the body.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use crate::engine::{Cf, Engine};
use crate::error::{Result, StoreError};

/// First bytes of a capstan snapshot (an etcd snapshot starts with a bbolt page instead).
pub const MAGIC: &[u8; 16] = b"capstan-snap-v1\n";

/// Marks the end of the records (zero padding follows), so a truncated body is detected
/// even before the hash.
pub const END_OF_RECORDS: u8 = 0xff;

/// The body is zero-padded to a multiple of this.
pub const PAGE: usize = 512;

/// Length of the SHA-256 trailer.
pub const SHA_LEN: usize = 32;

/// Meta records that describe one member's position in its own log (applied index, last
/// applied Raft log id) rather than the data: left out of hashes, and dropped on restore
/// and snapshot install, where the receiving member records its own position.
pub fn is_member_meta(cf: Cf, key: &[u8]) -> bool {
    cf == Cf::Meta && (key == b"applied_index" || key == b"raft_applied")
}

/// An invalid snapshot (corrupt, truncated, or not a capstan snapshot).
pub fn bad_snapshot(why: &str) -> StoreError {
    StoreError::InvalidArgument(format!("invalid snapshot: {why}"))
}

fn io_err(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what}: {e}"))
}

/// Sees each record a snapshot is written from (see [`write_body`]).
pub type Observer<'a> = dyn FnMut(Cf, &[u8], &[u8]) + 'a;

/// Receives each record [`read_records`] parses.
pub type RecordVisitor<'a> = dyn FnMut(Cf, Vec<u8>, Vec<u8>) -> Result<()> + 'a;

fn cf_code(cf: Cf) -> u8 {
    Cf::ALL.iter().position(|c| *c == cf).unwrap_or_default() as u8
}

/// Writes a snapshot body (magic, records, end mark, padding) of `engine`'s state
/// keyspaces to `out`; returns its SHA-256 and length. `observe` sees every record
/// written, from the same point-in-time view (a Raft snapshot reads its log id there).
pub fn write_body(
    engine: &dyn Engine,
    out: &mut dyn Write,
    observe: &mut Observer<'_>,
) -> Result<(Vec<u8>, u64)> {
    struct Hashing<'a> {
        w: &'a mut dyn Write,
        sha: Sha256,
        len: u64,
    }
    impl Hashing<'_> {
        fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
            self.sha.update(b);
            self.len += b.len() as u64;
            self.w.write_all(b)
        }
    }
    let mut w = Hashing {
        w: out,
        sha: Sha256::new(),
        len: 0,
    };
    w.put(MAGIC).map_err(|e| io_err("write snapshot", e))?;
    let mut failure = None;
    engine.export(&mut |cf, k, v| {
        if !cf.is_state() {
            return true;
        }
        let (Ok(kl), Ok(vl)) = (u32::try_from(k.len()), u32::try_from(v.len())) else {
            failure = Some(StoreError::Engine("record too large for a snapshot".into()));
            return false;
        };
        observe(cf, k, v);
        let r = w
            .put(&[cf_code(cf)])
            .and_then(|_| w.put(&kl.to_be_bytes()))
            .and_then(|_| w.put(k))
            .and_then(|_| w.put(&vl.to_be_bytes()))
            .and_then(|_| w.put(v));
        if let Err(e) = r {
            failure = Some(io_err("write snapshot", e));
            return false;
        }
        true
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    w.put(&[END_OF_RECORDS])
        .map_err(|e| io_err("write snapshot", e))?;
    let pad = (PAGE - (w.len % PAGE as u64) as usize) % PAGE;
    w.put(&vec![0u8; pad])
        .map_err(|e| io_err("write snapshot", e))?;
    w.w.flush().map_err(|e| io_err("write snapshot", e))?;
    let len = w.len;
    Ok((w.sha.finalize().to_vec(), len))
}

/// A whole snapshot (body and SHA-256 trailer) of `engine` in memory; `observe` as in
/// [`write_body`].
pub fn encode(engine: &dyn Engine, observe: &mut Observer<'_>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let (sha, _) = write_body(engine, &mut buf, observe)?;
    buf.extend_from_slice(&sha);
    Ok(buf)
}

/// Checks the SHA-256 trailer of a whole in-memory snapshot; returns the body.
pub fn verify(snapshot: &[u8]) -> Result<&[u8]> {
    if snapshot.len() < MAGIC.len() + 1 + SHA_LEN {
        return Err(bad_snapshot("too short"));
    }
    let (body, trailer) = snapshot.split_at(snapshot.len() - SHA_LEN);
    if Sha256::digest(body).as_slice() != trailer {
        return Err(bad_snapshot(
            "sha256 mismatch (the data is corrupt or truncated)",
        ));
    }
    Ok(body)
}

/// Parses a snapshot body from its start, handing every record to `visit` until the end
/// mark. Checks the magic; the caller checks the hash first.
pub fn read_records(r: &mut dyn Read, visit: &mut RecordVisitor<'_>) -> Result<()> {
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)
        .map_err(|_| bad_snapshot("file too short"))?;
    if &magic != MAGIC {
        return Err(bad_snapshot(
            "not a capstan snapshot (an etcd bbolt snapshot is restored with etcdctl)",
        ));
    }
    let read_bytes = |r: &mut dyn Read, n: usize| -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        r.read_exact(&mut v)
            .map_err(|_| bad_snapshot("truncated record"))?;
        Ok(v)
    };
    let read_len = |r: &mut dyn Read| -> Result<usize> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)
            .map_err(|_| bad_snapshot("truncated record"))?;
        Ok(u32::from_be_bytes(b) as usize)
    };
    loop {
        let mut code = [0u8; 1];
        r.read_exact(&mut code)
            .map_err(|_| bad_snapshot("missing end mark"))?;
        if code[0] == END_OF_RECORDS {
            return Ok(());
        }
        let cf = *Cf::ALL
            .get(code[0] as usize)
            .ok_or_else(|| bad_snapshot("unknown keyspace"))?;
        let kl = read_len(r)?;
        let k = read_bytes(r, kl)?;
        let vl = read_len(r)?;
        let v = read_bytes(r, vl)?;
        visit(cf, k, v)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::memory::MemEngine;
    use crate::engine::WriteBatch;

    #[test]
    fn records_round_trip_and_corruption_is_detected() {
        let e = MemEngine::new();
        let mut b = WriteBatch::default();
        b.put(Cf::History, b"k1".to_vec(), b"v1".to_vec());
        b.put(
            Cf::Meta,
            b"applied_index".to_vec(),
            7u64.to_be_bytes().to_vec(),
        );
        b.put(Cf::RaftLog, b"x".to_vec(), b"not state".to_vec());
        e.write(b, true).expect("write");
        let mut seen = 0;
        let snap = encode(&e, &mut |_, _, _| seen += 1).expect("encode");
        assert_eq!(seen, 2, "only state keyspaces");
        let body = verify(&snap).expect("verifies");
        assert_eq!(body.len() % PAGE, 0);
        let mut got = Vec::new();
        read_records(&mut &body[..], &mut |cf, k, v| {
            got.push((cf, k, v));
            Ok(())
        })
        .expect("parses");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (Cf::History, b"k1".to_vec(), b"v1".to_vec()));
        let mut bad = snap.clone();
        bad[20] ^= 1;
        assert!(verify(&bad).is_err());
        assert!(verify(&snap[..snap.len() - 1]).is_err());
    }
}
