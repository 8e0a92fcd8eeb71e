//! `failover`: the write gap a leader crash causes, and proof that it loses nothing.
//!
//! Clients bound to every member put unique keys back to back. After `--kill-after`,
//! the tool asks the members who leads, SIGKILLs that member's process (`--pids`, in
//! `--endpoints` order) and measures the gap: from the kill to the first acknowledged
//! write among requests *sent after* the kill, so a write already in flight when the
//! leader died does not hide the gap. At the end every acknowledged key is read back
//! linearizably from a survivor; a missing or different one is a lost write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::kv_client::KvClient;
use capstan_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use parking_lot::Mutex;
use serde::Serialize;
use tonic::transport::Channel;

use crate::conn;

/// What one failover run measured (`--json` prints it as one line).
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub label: String,
    /// Kill to the first acknowledged write sent after it, in milliseconds.
    pub gap_ms: f64,
    /// The longest stretch without any acknowledged write, in milliseconds.
    pub longest_silence_ms: f64,
    pub acknowledged: u64,
    pub errors: u64,
    /// Acknowledged writes missing (or different) when read back: must be 0.
    pub lost: u64,
}

pub struct FailoverOpts {
    pub endpoints: Vec<String>,
    pub pids: Vec<u32>,
    pub clients_per_member: usize,
    pub kill_after: Duration,
    pub duration: Duration,
    pub val_size: usize,
    pub label: String,
}

#[derive(Default)]
struct Shared {
    /// Acknowledged key -> value.
    acked: HashMap<Vec<u8>, Vec<u8>>,
    /// Every acknowledgement's (send time, ack time).
    acks: Vec<(Instant, Instant)>,
    errors: u64,
}

/// Which endpoint index the members agree is the leader.
async fn leader(channels: &[Channel]) -> anyhow::Result<usize> {
    let mut ids = Vec::new();
    let mut leader_id = None;
    for ch in channels {
        let s = MaintenanceClient::new(ch.clone())
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        ids.push(s.header.map(|h| h.member_id).unwrap_or_default());
        leader_id = leader_id.or(Some(s.leader)).filter(|l| *l != 0);
    }
    let leader_id = leader_id.ok_or_else(|| anyhow::anyhow!("no member reports a leader"))?;
    ids.iter()
        .position(|id| *id == leader_id)
        .ok_or_else(|| anyhow::anyhow!("leader {leader_id:x} is none of --endpoints"))
}

pub async fn run(o: FailoverOpts) -> anyhow::Result<FailoverReport> {
    anyhow::ensure!(
        o.pids.len() == o.endpoints.len(),
        "--pids must name one process per endpoint"
    );
    let channels = conn::connect(&o.endpoints, o.endpoints.len()).await?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let start = Instant::now();
    let stop_at = start + o.duration;
    let value = crate::kv::random_value(o.val_size);
    let mut tasks = Vec::new();
    for (m, ch) in channels.iter().enumerate() {
        for c in 0..o.clients_per_member {
            let mut kv = KvClient::new(ch.clone());
            let shared = shared.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while Instant::now() < stop_at {
                    seq += 1;
                    let key = format!("/failover/{m}/{c}/{seq:08}").into_bytes();
                    let sent = Instant::now();
                    let req = pb::PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    };
                    let r = tokio::time::timeout(Duration::from_secs(5), kv.put(req)).await;
                    let done = Instant::now();
                    let ok = matches!(r, Ok(Ok(_)));
                    {
                        let mut s = shared.lock();
                        if ok {
                            s.acked.insert(key, value.clone());
                            s.acks.push((sent, done));
                        } else {
                            s.errors += 1;
                        }
                    }
                    if !ok {
                        // A dead member refuses at once; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
    }
    tokio::time::sleep(o.kill_after).await;
    let victim = leader(&channels).await?;
    let killed_at = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &o.pids[victim].to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -9 {} failed", o.pids[victim]);
    eprintln!(
        "failover: killed the leader ({}) at {:?}",
        o.endpoints[victim],
        killed_at - start
    );
    for t in tasks {
        t.await?;
    }
    let s = std::mem::take(&mut *shared.lock());
    let gap = s
        .acks
        .iter()
        .filter(|(sent, _)| *sent >= killed_at)
        .map(|(_, done)| *done)
        .min()
        .map(|d| d - killed_at)
        .ok_or_else(|| anyhow::anyhow!("no write was acknowledged after the kill"))?;
    let mut done: Vec<Instant> = s.acks.iter().map(|(_, d)| *d).collect();
    done.sort_unstable();
    let longest = done
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // Read everything back from a survivor, linearizably.
    let survivor = (victim + 1) % channels.len();
    let mut kv = KvClient::new(channels[survivor].clone()).max_decoding_message_size(usize::MAX);
    let r = kv
        .range(pb::RangeRequest {
            key: b"/failover/".to_vec(),
            range_end: b"/failover0".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let stored: HashMap<Vec<u8>, Vec<u8>> =
        r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let lost = s
        .acked
        .iter()
        .filter(|(k, v)| stored.get(*k) != Some(*v))
        .count() as u64;
    Ok(FailoverReport {
        label: o.label,
        gap_ms: gap.as_secs_f64() * 1000.0,
        longest_silence_ms: longest.as_secs_f64() * 1000.0,
        acknowledged: s.acked.len() as u64,
        errors: s.errors,
        lost,
    })
}
