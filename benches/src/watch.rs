//! `watch-latency`: N watchers on one prefix, spread over `--streams` Watch streams
//! (themselves spread over the connections), while one client puts keys under the
//! prefix at `--put-rate`. Each event's latency is the time from just before its put
//! was sent to its arrival at the watcher, so it includes the put's own commit (fsync)
//! plus the fan-out; one put yields N latency samples. With `--prev-kv` the watchers
//! ask for the replaced record, and every key is put once before they start, so every
//! event carries one (Kubernetes' apiserver watches that way).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::kv_client::KvClient;
use capstan_proto::etcdserverpb::watch_client::WatchClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::kv::random_value;
use crate::stats::Recorder;

/// How long watchers may trail the last put before missing events count as errors.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct WatchOpts {
    pub watchers: usize,
    pub streams: usize,
    pub puts: u64,
    pub put_rate: f64,
    pub val_size: usize,
    /// Watch with `prev_kv`, as Kubernetes' apiserver does: every event then carries
    /// the record its put replaced.
    pub prev_kv: bool,
}

/// The end of etcd's prefix range: the prefix with its last byte incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Opens one Watch stream carrying `n` watchers on `prefix` and waits until the
/// server has confirmed every one.
async fn open_stream(
    channel: Channel,
    prefix: &[u8],
    n: usize,
    prev_kv: bool,
) -> Result<(mpsc::Sender<pb::WatchRequest>, Streaming<pb::WatchResponse>), Status> {
    let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(n + 1);
    // Queue the create requests before opening the stream: grpc-go sends response
    // headers only with the first response, so awaiting the call first would hang.
    for _ in 0..n {
        let create = pb::WatchCreateRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            prev_kv,
            ..Default::default()
        };
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| Status::internal("watch request channel closed"))?;
    }
    let mut stream = client.watch(ReceiverStream::new(rx)).await?.into_inner();
    let mut created = 0;
    while created < n {
        let resp = stream
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("watch stream ended during create"))?;
        if resp.canceled {
            return Err(Status::failed_precondition(format!(
                "watch canceled on create: {}",
                resp.cancel_reason
            )));
        }
        if resp.created {
            created += 1;
        }
    }
    Ok((tx, stream))
}

/// Reads one stream's events until `expected` have arrived or `stop` fires.
async fn read_events(
    _keep_open: mpsc::Sender<pb::WatchRequest>,
    mut stream: Streaming<pb::WatchResponse>,
    prefix: Vec<u8>,
    sent: Arc<Vec<OnceLock<Instant>>>,
    expected: u64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Recorder> {
    let mut rec = Recorder::new()?;
    let mut received = 0u64;
    while received < expected {
        let resp = tokio::select! {
            m = stream.message() => m,
            _ = stop.changed() => break,
        };
        let resp = match resp {
            Ok(Some(r)) => r,
            Ok(None) => {
                rec.error(Status::unavailable("watch stream ended"));
                break;
            }
            Err(st) => {
                rec.error(st);
                break;
            }
        };
        let now = Instant::now();
        for ev in &resp.events {
            received += 1;
            let sent_at = ev
                .kv
                .as_ref()
                .and_then(|kv| kv.key.strip_prefix(prefix.as_slice()))
                .and_then(|seq| std::str::from_utf8(seq).ok()?.parse::<usize>().ok())
                .and_then(|seq| sent.get(seq)?.get().copied());
            match sent_at {
                Some(t) => rec.record(now.saturating_duration_since(t)),
                None => rec.error(Status::internal("event for a key this run did not put")),
            }
        }
    }
    // Every event that never came is an error: a watch benchmark that silently drops
    // events would flatter the server.
    for _ in received..expected {
        rec.errors += 1;
    }
    if received < expected && rec.first_error.is_none() {
        rec.first_error = Some(Status::deadline_exceeded(format!(
            "{} of {expected} events not delivered",
            expected - received
        )));
    }
    Ok(rec)
}

pub async fn latency(channels: &[Channel], o: &WatchOpts) -> anyhow::Result<(Recorder, Duration)> {
    anyhow::ensure!(
        o.watchers > 0 && o.streams > 0,
        "--watchers and --streams must be > 0"
    );
    anyhow::ensure!(o.put_rate > 0.0, "--put-rate must be > 0");
    let streams = o.streams.min(o.watchers);
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // A fresh prefix per run, so keys left by earlier runs never reach these watchers.
    let prefix = format!("/capstan-bench/watch/{run_id}/").into_bytes();
    let puts = usize::try_from(o.puts).context("--total too large")?;
    let sent: Arc<Vec<OnceLock<Instant>>> = Arc::new((0..puts).map(|_| OnceLock::new()).collect());

    let value = random_value(o.val_size);
    let mut kv = KvClient::new(channels[0].clone());
    let key = |seq: usize| {
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{seq:010}").as_bytes());
        key
    };
    if o.prev_kv {
        // Before any watcher exists, so none sees these; each measured put then
        // replaces a record, which the prev_kv watchers receive with its event.
        for seq in 0..puts {
            let req = pb::PutRequest {
                key: key(seq),
                value: value.clone(),
                ..Default::default()
            };
            kv.put(req).await.context("pre-filling the keys")?;
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::with_capacity(streams);
    for s in 0..streams {
        let n = o.watchers / streams + usize::from(s < o.watchers % streams);
        let channel = channels[s % channels.len()].clone();
        let (tx, stream) = match open_stream(channel, &prefix, n, o.prev_kv).await {
            Ok(x) => x,
            Err(st) => {
                let mut rec = Recorder::new()?;
                rec.error(st);
                return Ok((rec, Duration::ZERO));
            }
        };
        readers.push(tokio::spawn(read_events(
            tx,
            stream,
            prefix.clone(),
            sent.clone(),
            o.puts * n as u64,
            stop_rx.clone(),
        )));
    }

    let mut put_errors = Recorder::new()?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.put_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    for (seq, slot) in sent.iter().enumerate() {
        tick.tick().await;
        let _ = slot.set(Instant::now());
        let req = pb::PutRequest {
            key: key(seq),
            value: value.clone(),
            ..Default::default()
        };
        if let Err(st) = kv.put(req).await {
            put_errors.error(st);
        }
    }

    let mut all = Recorder::new()?;
    let drain = tokio::time::sleep(DRAIN_TIMEOUT);
    tokio::pin!(drain);
    for r in readers {
        let mut r = r;
        let rec = tokio::select! {
            res = &mut r => res,
            _ = &mut drain => {
                let _ = stop_tx.send(true);
                r.await
            }
        };
        all.merge(rec.context("watch reader panicked")??)?;
    }
    let elapsed = start.elapsed();
    // Put failures first: a failed put is why its events are missing.
    if put_errors.errors > 0 {
        let mut merged = put_errors;
        merged.merge(all)?;
        all = merged;
    }
    Ok((all, elapsed))
}
