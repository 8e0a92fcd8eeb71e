//! The KV workloads: `put`, `range` and `txn-put`, each a closed loop of unary RPCs.

use std::time::Duration;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::kv_client::KvClient;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::Channel;

use crate::conn::closed_loop;
use crate::stats::Recorder;

/// Which keys a workload touches (`--key-size`, `--key-space-size`, `--sequential-keys`).
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub prefix: String,
    pub size: usize,
    pub space: u64,
    pub sequential: bool,
}

/// One client's key source. Random keys come from a per-client seeded generator, so a
/// run is repeatable and clients do not contend on a shared RNG.
pub struct KeyGen {
    spec: KeySpec,
    rng: SmallRng,
}

impl KeyGen {
    pub fn new(spec: KeySpec, client: usize) -> Self {
        Self {
            spec,
            rng: SmallRng::seed_from_u64(0x6361_7073_7461_6e00 ^ client as u64),
        }
    }

    /// The key index for operation `seq`: `seq` itself modulo the key space when
    /// sequential, else uniform over the key space.
    pub fn index(&mut self, seq: u64) -> u64 {
        if self.spec.sequential {
            seq % self.spec.space
        } else {
            self.rng.random_range(0..self.spec.space)
        }
    }

    /// Key number `n`: the prefix then `n` zero-padded so the key is `--key-size` bytes
    /// (longer when the number does not fit). Printable, unlike etcd's varint keys,
    /// so a failed run can be inspected with etcdctl.
    pub fn key(&self, n: u64) -> Vec<u8> {
        let width = self.spec.size.saturating_sub(self.spec.prefix.len());
        format!("{}{:0width$}", self.spec.prefix, n, width = width).into_bytes()
    }
}

/// A value of `size` random bytes, made once and sent with every put as etcd's
/// benchmark does. Random so RocksDB's compression gets no advantage over bbolt.
pub fn random_value(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    SmallRng::seed_from_u64(size as u64).fill_bytes(&mut v);
    v
}

fn kv_clients(channels: &[Channel], clients: usize) -> Vec<KvClient<Channel>> {
    (0..clients)
        .map(|i| {
            KvClient::new(channels[i % channels.len()].clone())
                .max_decoding_message_size(usize::MAX)
        })
        .collect()
}

pub async fn put(
    channels: &[Channel],
    clients: usize,
    total: u64,
    keys: &KeySpec,
    val_size: usize,
) -> anyhow::Result<(Recorder, Duration)> {
    let value = random_value(val_size);
    let ops = kv_clients(channels, clients)
        .into_iter()
        .enumerate()
        .map(|(i, kv)| {
            let mut gen = KeyGen::new(keys.clone(), i);
            let value = value.clone();
            move |seq| {
                let n = gen.index(seq);
                let req = pb::PutRequest {
                    key: gen.key(n),
                    value: value.clone(),
                    ..Default::default()
                };
                let mut kv = kv.clone();
                async move { kv.put(req).await.map(|_| ()) }
            }
        })
        .collect();
    closed_loop(total, ops).await
}

pub async fn range(
    channels: &[Channel],
    clients: usize,
    total: u64,
    keys: &KeySpec,
    serializable: bool,
) -> anyhow::Result<(Recorder, Duration)> {
    let ops = kv_clients(channels, clients)
        .into_iter()
        .enumerate()
        .map(|(i, kv)| {
            let mut gen = KeyGen::new(keys.clone(), i);
            move |seq| {
                let n = gen.index(seq);
                let req = pb::RangeRequest {
                    key: gen.key(n),
                    serializable,
                    ..Default::default()
                };
                let mut kv = kv.clone();
                async move { kv.range(req).await.map(|_| ()) }
            }
        })
        .collect();
    closed_loop(total, ops).await
}

/// Txns of `txn_ops` unconditional puts on consecutive keys (distinct, since etcd
/// rejects a txn writing one key twice), like etcd's `txn-put` benchmark.
pub async fn txn_put(
    channels: &[Channel],
    clients: usize,
    total: u64,
    keys: &KeySpec,
    val_size: usize,
    txn_ops: u64,
) -> anyhow::Result<(Recorder, Duration)> {
    anyhow::ensure!(
        txn_ops >= 1 && txn_ops <= keys.space,
        "--txn-ops must be between 1 and --key-space-size"
    );
    let value = random_value(val_size);
    let space = keys.space;
    let ops = kv_clients(channels, clients)
        .into_iter()
        .enumerate()
        .map(|(i, kv)| {
            let mut gen = KeyGen::new(keys.clone(), i);
            let value = value.clone();
            move |seq| {
                let base = gen.index(seq);
                let success = (0..txn_ops)
                    .map(|j| pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: gen.key((base + j) % space),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let req = pb::TxnRequest {
                    success,
                    ..Default::default()
                };
                let mut kv = kv.clone();
                async move { kv.txn(req).await.map(|_| ()) }
            }
        })
        .collect();
    closed_loop(total, ops).await
}
