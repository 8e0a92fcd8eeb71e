//! The Maintenance service: status, alarms, defragmentation, consistency hashes,
//! snapshots and leadership moves of a single member.
//!
//! `HashKV` reproduces etcd's hash byte for byte (crc32c over etcd's own encoding of
//! the MVCC history), so capstan and etcd agree on the hash of equal histories and the
//! value never depends on RocksDB's layout. Snapshots cannot be bbolt files; they are a
//! capstan format (every keyspace, from one point-in-time view) that keeps etcd's
//! framing — 32 KiB chunks with `remaining_bytes`, then the SHA-256 of everything sent —
//! so `etcdctl snapshot save` stores them unchanged and [`restore_snapshot`] can verify
//! them the way etcd's restore does.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::maintenance_server::Maintenance;
use capstan_proto::mvccpb::KeyValue;
use futures::Stream;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::kv::unexpected;
use super::EtcdServer;
use crate::apply::{ApplyResponse, Op};
use crate::engine::rocks::RocksEngine;
use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{Result, StoreError};
// `Status` reports the version `/version` does: "3.5.17", since clients gate features
// on 3.5 and 3.5.17 is the etcd release whose behaviour capstan matches.
use crate::metrics::SERVER_VERSION;
use crate::mvcc::{decode_record, KvRead, Mvcc, Revision};
use crate::snapshot::{self, bad_snapshot, is_member_meta, MAGIC, SHA_LEN};

/// The storage version etcd 3.5 puts in snapshot chunks.
const STORAGE_VERSION: &str = "3.5.0";

/// etcd's snapshot chunk size (`snapshotSendBufferSize`).
const CHUNK: usize = 32 * 1024;

/// See the module documentation.
pub struct MaintenanceService {
    pub srv: Arc<EtcdServer>,
}

/// crc32 with the Castagnoli polynomial, as etcd's hashes use.
struct Crc32c(u32);

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32c {
    fn new() -> Self {
        Crc32c(!0)
    }
    fn write(&mut self, data: &[u8]) {
        let mut c = self.0;
        for b in data {
            c = CRC32C_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    fn sum(&self) -> u32 {
        !self.0
    }
}

/// etcd's on-disk key of a history record: `main`, `_`, `sub` (big-endian), and a `t`
/// for a tombstone.
fn etcd_rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&rev.main.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&rev.sub.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// The result of [`hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The store's revision when hashed.
    pub current_rev: i64,
    /// The compaction revision, `-1` when never compacted (as etcd reports it).
    pub compact_rev: i64,
    /// The revision the hash covers.
    pub hash_rev: i64,
}

/// etcd's `HashByRev`: crc32c over `"key"` then every history record at or below `rev`
/// in etcd's encoding, skipping records a compaction has doomed but not yet purged.
pub fn hash_kv(mvcc: &Mvcc, rev: i64) -> Result<KvHash> {
    let current = mvcc.current_rev();
    let compact = mvcc.compact_rev();
    let compact_rev = if compact > 0 { compact } else { -1 };
    if rev > 0 && compact > 0 && rev <= compact {
        return Err(StoreError::Compacted);
    }
    if rev > current {
        return Err(StoreError::FutureRev);
    }
    let rev = if rev <= 0 { current } else { rev };
    let keep = mvcc.kept_at(rev);
    let mut h = Crc32c::new();
    h.write(b"key");
    let end = Revision::new(rev + 1, 0).to_key();
    let mut failure = None;
    mvcc.engine()
        .scan(Cf::History, &[], Some(&end), &mut |k, v| {
            let Some(r) = Revision::from_key(k) else {
                failure = Some(StoreError::Engine(format!("corrupt history key {k:?}")));
                return false;
            };
            // etcd skips compacted-away revisions only when something is kept at all.
            if r.main <= compact && !keep.is_empty() && !keep.contains(&r) {
                return true;
            }
            match decode_record(v) {
                Ok((true, kv)) => {
                    h.write(&etcd_rev_key(r, true));
                    // etcd's tombstone value is a KeyValue holding just the key.
                    h.write(
                        &KeyValue {
                            key: kv.key,
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    );
                }
                Ok((false, _)) => {
                    h.write(&etcd_rev_key(r, false));
                    // The record after its flag byte is exactly the marshalled KeyValue.
                    h.write(v.get(1..).unwrap_or_default());
                }
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
    Ok(KvHash {
        hash: h.sum(),
        current_rev: current,
        compact_rev,
        hash_rev: rev,
    })
}

/// etcd's `Hash`: crc32c over the whole backend, leaving out the applied index (etcd
/// ignores its consistent index, which moves without any client-visible change).
fn hash_all(engine: &dyn Engine) -> Result<u32> {
    let mut h = Crc32c::new();
    let mut last = None;
    engine.export(&mut |cf, k, v| {
        if !cf.is_state() || is_member_meta(cf, k) {
            return true;
        }
        if last != Some(cf) {
            h.write(cf.name().as_bytes());
            last = Some(cf);
        }
        h.write(k);
        h.write(v);
        true
    })?;
    Ok(h.sum())
}

fn io_err(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what}: {e}"))
}

/// Writes a snapshot body of `engine` to `out`; returns its SHA-256 and length.
fn write_snapshot(engine: &dyn Engine, out: &mut File) -> Result<(Vec<u8>, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, out);
    snapshot::write_body(engine, &mut w, &mut |_, _, _| {})
}

/// A scratch file for a snapshot, unlinked at once: nothing is left behind whatever
/// happens, and the open handle keeps the data readable while it streams.
fn scratch_file(dir: &Path) -> Result<File> {
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!(
        ".snapshot-{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_err(&path.display().to_string(), e))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

/// Produces the snapshot chunks into `tx` (runs on a blocking thread).
fn stream_snapshot(
    srv: &EtcdServer,
    tx: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> Result<()> {
    let mut f = scratch_file(&srv.cfg.data_dir.join("member"))?;
    let (sha, total) = write_snapshot(&**srv.sm.mvcc.engine(), &mut f)?;
    f.seek(SeekFrom::Start(0))
        .map_err(|e| io_err("read snapshot", e))?;
    let header = Some(srv.header(srv.current_rev()));
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while sent < total {
        let n = f.read(&mut buf).map_err(|e| io_err("read snapshot", e))?;
        if n == 0 {
            return Err(StoreError::Engine(
                "snapshot file shrank while streaming".into(),
            ));
        }
        sent += n as u64;
        let resp = pb::SnapshotResponse {
            header,
            remaining_bytes: total.saturating_sub(sent),
            blob: buf[..n].to_vec(),
            version: STORAGE_VERSION.into(),
        };
        if tx.blocking_send(Ok(resp)).is_err() {
            return Ok(()); // the client went away
        }
    }
    let last = pb::SnapshotResponse {
        header,
        remaining_bytes: 0,
        blob: sha,
        version: STORAGE_VERSION.into(),
    };
    let _ = tx.blocking_send(Ok(last));
    Ok(())
}

/// Writes a snapshot of a stopped member's data dir to `file` (created, not
/// overwritten), in the format `etcdctl snapshot save` stores: what `capstan server
/// --cluster-reset` takes before it rebuilds the store as a single member. The state is
/// what the member had applied; a Raft member's committed entries it had not applied
/// yet are not in it.
pub fn export_snapshot(data_dir: &Path, file: &Path) -> Result<()> {
    let db = data_dir.join("member").join("db");
    if !db.is_dir() {
        return Err(StoreError::InvalidArgument(format!(
            "{}: no store data",
            db.display()
        )));
    }
    let engine = RocksEngine::open(&db).map_err(|e| StoreError::Engine(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| io_err(&file.display().to_string(), e))?;
    let (sha, _) = write_snapshot(&engine, &mut f)?;
    use std::io::Write as _;
    f.write_all(&sha)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&file.display().to_string(), e))
}

/// Restores a member's data dir from a snapshot taken with `etcdctl snapshot save`
/// (or any client of the `Snapshot` RPC): checks the SHA-256 trailer, then writes every
/// record into a fresh engine under `<data_dir>/member/db`. Refuses an existing data dir.
pub fn restore_snapshot(file: &Path, data_dir: &Path) -> Result<()> {
    let member = data_dir.join("member");
    if member.exists() {
        return Err(StoreError::InvalidArgument(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        )));
    }
    // Problems with the input file are the caller's to fix, so they read as plain text.
    let open = || {
        File::open(file)
            .map_err(|e| StoreError::InvalidArgument(format!("{}: {e}", file.display())))
    };
    let len = open()?
        .metadata()
        .map_err(|e| io_err("stat snapshot", e))?
        .len();
    let min = (MAGIC.len() + 1 + SHA_LEN) as u64;
    if len < min {
        return Err(bad_snapshot("file too short"));
    }
    let body_len = len - SHA_LEN as u64;

    // Pass 1: integrity, before anything is written.
    let mut r = BufReader::with_capacity(1 << 20, open()?);
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)
        .map_err(|e| io_err("read snapshot", e))?;
    if &magic != MAGIC {
        return Err(bad_snapshot(
            "not a capstan snapshot (an etcd bbolt snapshot is restored with etcdctl)",
        ));
    }
    let mut sha = Sha256::new();
    sha.update(magic);
    let mut left = body_len - magic.len() as u64;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        r.read_exact(&mut buf[..n])
            .map_err(|e| io_err("read snapshot", e))?;
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; SHA_LEN];
    r.read_exact(&mut trailer)
        .map_err(|e| io_err("read snapshot", e))?;
    if sha.finalize().as_slice() != trailer {
        return Err(bad_snapshot(
            "sha256 mismatch (the file is corrupt or truncated)",
        ));
    }

    let dir = member.join("db");
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
    let result = load_records(file, body_len, &dir);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&member);
    }
    result
}

/// Pass 2 of [`restore_snapshot`]: parses the records into a new engine at `dir`.
fn load_records(file: &Path, body_len: u64, dir: &Path) -> Result<()> {
    let engine = RocksEngine::open(dir)?;
    let f = File::open(file).map_err(|e| io_err(&file.display().to_string(), e))?;
    let mut r = BufReader::with_capacity(1 << 20, f.take(body_len));
    let mut batch = WriteBatch::default();
    snapshot::read_records(&mut r, &mut |cf, k, v| {
        if !cf.is_state() || is_member_meta(cf, &k) {
            return Ok(());
        }
        batch.put(cf, k, v);
        if batch.len() >= 4096 {
            engine.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    })?;
    // The last write is synced; RocksDB's WAL is ordered, so that covers the earlier ones.
    engine.write(batch, true)?;
    Ok(())
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

impl MaintenanceService {
    /// Maintenance that reads or rewrites the whole store is for admins only.
    fn check_admin<T>(&self, req: &Request<T>) -> Result<()> {
        let user = self.srv.auth_user(req)?;
        self.srv.sm.auth.check_admin(user.as_deref())
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.srv.header(self.srv.current_rev()))
    }
}

/// Runs blocking engine work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Engine(format!("maintenance task failed: {e}")))?
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // Even GET goes through the log, as in etcd: it is linearized with the changes.
        match self.srv.propose(Op::Alarm(req.into_inner())).await? {
            ApplyResponse::Alarm(mut r) => {
                self.srv.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let srv = &self.srv;
        let size = srv.sm.mvcc.engine().size_bytes() as i64;
        // etcd prints alarms in protobuf text form, trailing space included.
        let errors = srv
            .sm
            .alarms()
            .into_iter()
            .map(|(m, t)| {
                let name = pb::AlarmType::try_from(t)
                    .map(|a| a.as_str_name())
                    .unwrap_or("NONE");
                format!("memberID:{m} alarm:{name} ")
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            header: self.header(),
            version: SERVER_VERSION.into(),
            db_size: size,
            leader: srv.leader_id(),
            raft_index: srv.raft_index(),
            raft_term: srv.term(),
            raft_applied_index: srv.raft_applied_index(),
            errors,
            // RocksDB reports no free-page figure: all of it is in use.
            db_size_in_use: size,
            is_learner: srv.is_learner(),
        }))
    }

    async fn defragment(
        &self,
        req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.check_admin(&req)?;
        let engine = self.srv.sm.mvcc.engine().clone();
        blocking(move || Ok(engine.compact()?)).await?;
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(
        &self,
        req: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.check_admin(&req)?;
        let engine = self.srv.sm.mvcc.engine().clone();
        let header = self.header();
        let hash = blocking(move || hash_all(&*engine)).await?;
        Ok(Response::new(pb::HashResponse { header, hash }))
    }

    async fn hash_kv(
        &self,
        req: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.check_admin(&req)?;
        let rev = req.into_inner().revision;
        let sm = self.srv.sm.clone();
        let h = blocking(move || hash_kv(&sm.mvcc, rev)).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.srv.header(h.current_rev)),
            hash: h.hash,
            compact_revision: h.compact_rev,
            hash_revision: h.hash_rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin(&req)?;
        let (tx, rx) = mpsc::channel(4);
        let srv = self.srv.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = stream_snapshot(&srv, &tx) {
                tracing::warn!(error = %e, "snapshot failed");
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.check_admin(&req)?;
        let target = req.into_inner().target_id;
        if let Some(raft) = self.srv.raft() {
            raft.move_leader(target).await?;
        } else if target != self.srv.member_id {
            // The only voter is already the leader; any other target is not a member.
            return Err(StoreError::BadLeaderTransferee.into());
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.header(),
        }))
    }

    async fn downgrade(
        &self,
        req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        self.check_admin(&req)?;
        // There is no older capstan storage version to go back to.
        Err(StoreError::NotCapable.into())
    }
}
