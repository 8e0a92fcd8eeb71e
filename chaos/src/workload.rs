//! The client workload: sessions bound to one member each doing puts, linearizable
//! gets, txn compare-and-swaps, deletes and lease grant/attach/revoke cycles, and one
//! watcher per member on the workload's prefix. Every call is recorded with its
//! invocation and completion time; a failed or timed-out write is an unknown outcome.
//!
//! Keys rotate every [`EPOCH`] (a fresh set of `keys` keys), which keeps each key's
//! sub-history a few seconds long however long the run, so the linearizability search
//! stays small in long mode while clients still contend on the same keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use capstan_proto::etcdserverpb::kv_client::KvClient;
use capstan_proto::etcdserverpb::lease_client::LeaseClient;
use capstan_proto::etcdserverpb::request_op::Request;
use capstan_proto::etcdserverpb::response_op::Response;
use capstan_proto::etcdserverpb::watch_client::WatchClient;
use capstan_proto::etcdserverpb::watch_request::RequestUnion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::history::{Event, Input, Op, Output, WatchHistory, WatchRecord};

/// How long one set of keys is used.
pub const EPOCH: Duration = Duration::from_secs(15);

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    /// Clients stop; watchers drain until they have everything up to this revision.
    Drain(i64),
}

/// Nanoseconds since `start`.
pub fn ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// The end of the range that covers every key starting with `prefix` (etcd's prefix
/// range end: the last byte incremented).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Settings of one client session.
#[derive(Debug, Clone)]
pub struct ClientCfg {
    pub id: usize,
    pub member: usize,
    pub seed: u64,
    pub prefix: String,
    pub keys: usize,
    pub op_timeout: Duration,
}

/// Runs one client session until the phase leaves `Run`; returns its calls.
pub async fn client(
    cfg: ClientCfg,
    ch: Channel,
    start: Instant,
    phase: watch::Receiver<Phase>,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(cfg.id as u64 * 0x9e37_79b9));
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);
    let mut ops: Vec<Op> = Vec::new();
    // The last value this session knows for each key (what its CAS expects).
    let mut known: HashMap<String, Option<String>> = HashMap::new();
    let mut seq = 0u64;
    while *phase.borrow() == Phase::Run {
        let epoch = start.elapsed().as_secs() / EPOCH.as_secs().max(1);
        let key = format!(
            "{}k{epoch}-{}",
            cfg.prefix,
            rng.random_range(0..cfg.keys.max(1))
        );
        seq += 1;
        let value = format!("c{}-{seq}", cfg.id);
        let dice: f64 = rng.random();
        let mut rec = Recorder {
            ops: &mut ops,
            start,
            timeout: cfg.op_timeout,
            client: cfg.id,
            member: cfg.member,
        };
        let failed = if dice < 0.30 {
            let input = Input::Put {
                key: key.clone(),
                value: value.clone(),
                lease: 0,
            };
            let ok = rec.put(&mut kv, input).await;
            if ok {
                known.insert(key, Some(value));
            }
            !ok
        } else if dice < 0.55 {
            match rec.get(&mut kv, &key).await {
                Some(v) => {
                    known.insert(key, v);
                    false
                }
                None => true,
            }
        } else if dice < 0.72 {
            let expect = known.get(&key).cloned().flatten();
            let out = rec.cas(&mut kv, &key, expect, &value).await;
            match &out {
                Some(Output::Cas {
                    succeeded: true, ..
                }) => {
                    known.insert(key, Some(value));
                }
                Some(Output::Cas { current, .. }) => {
                    known.insert(key, current.clone());
                }
                _ => {}
            }
            out.is_none()
        } else if dice < 0.85 {
            let ok = rec.delete(&mut kv, &key).await;
            if ok {
                known.insert(key, None);
            }
            !ok
        } else {
            rec.lease_cycle(
                &mut kv,
                &mut lease,
                &format!("{}lease/c{}-{seq}", cfg.prefix, cfg.id),
                &value,
            )
            .await
        };
        if failed {
            // A dead or cut-off member fails at once; pace retries instead of spinning.
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
        }
    }
    ops
}

/// Records calls into one session's history.
struct Recorder<'a> {
    ops: &'a mut Vec<Op>,
    start: Instant,
    timeout: Duration,
    client: usize,
    member: usize,
}

impl Recorder<'_> {
    /// Runs `call` with the timeout and records it; returns the output if it succeeded.
    async fn record<T, F>(
        &mut self,
        input: Input,
        call: F,
        read: impl FnOnce(T) -> (Output, i64),
    ) -> Option<Output>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let invoke = ns(self.start);
        let r = tokio::time::timeout(self.timeout, call).await;
        let complete = ns(self.start);
        let (output, rev) = match r {
            Ok(Ok(resp)) => read(resp.into_inner()),
            Ok(Err(st)) => (
                Output::Unknown {
                    error: format!("{:?}: {}", st.code(), st.message()),
                },
                0,
            ),
            Err(_) => (
                Output::Unknown {
                    error: "client timeout".into(),
                },
                0,
            ),
        };
        let ok = (!matches!(output, Output::Unknown { .. })).then(|| output.clone());
        self.ops.push(Op {
            client: self.client,
            member: self.member,
            input,
            output,
            invoke,
            complete,
            rev,
        });
        ok
    }

    async fn put(&mut self, kv: &mut KvClient<Channel>, input: Input) -> bool {
        let Input::Put { key, value, lease } = &input else {
            return false;
        };
        let req = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease: *lease,
            ..Default::default()
        };
        self.record(input.clone(), kv.put(req), |r| {
            (Output::Put, rev_of(&r.header))
        })
        .await
        .is_some()
    }

    /// A linearizable get: `Some(value)` if it succeeded.
    async fn get(&mut self, kv: &mut KvClient<Channel>, key: &str) -> Option<Option<String>> {
        let req = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let input = Input::Get {
            key: key.to_string(),
        };
        match self
            .record(input, kv.range(req), |r| {
                let kv = r.kvs.first();
                (
                    Output::Get {
                        value: kv.map(|kv| s(&kv.value)),
                        mod_rev: kv.map(|kv| kv.mod_revision).unwrap_or_default(),
                    },
                    rev_of(&r.header),
                )
            })
            .await
        {
            Some(Output::Get { value, .. }) => Some(value),
            _ => None,
        }
    }

    async fn cas(
        &mut self,
        kv: &mut KvClient<Channel>,
        key: &str,
        expect: Option<String>,
        new: &str,
    ) -> Option<Output> {
        let k = key.as_bytes().to_vec();
        let compare = match &expect {
            Some(v) => pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: k.clone(),
                target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
                range_end: vec![],
            },
            None => pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                key: k.clone(),
                target_union: Some(TargetUnion::Version(0)),
                range_end: vec![],
            },
        };
        let req = pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: k.clone(),
                    value: new.as_bytes().to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            }],
        };
        let input = Input::Cas {
            key: key.to_string(),
            expect,
            new: new.to_string(),
        };
        self.record(input, kv.txn(req), |r| {
            let current = r.responses.first().and_then(|op| match &op.response {
                Some(Response::ResponseRange(rr)) => rr.kvs.first().map(|kv| s(&kv.value)),
                _ => None,
            });
            (
                Output::Cas {
                    succeeded: r.succeeded,
                    current: if r.succeeded { None } else { current },
                },
                rev_of(&r.header),
            )
        })
        .await
    }

    async fn delete(&mut self, kv: &mut KvClient<Channel>, key: &str) -> bool {
        let req = pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let input = Input::Delete {
            key: key.to_string(),
        };
        self.record(input, kv.delete_range(req), |r| {
            (Output::Delete { deleted: r.deleted }, rev_of(&r.header))
        })
        .await
        .is_some()
    }

    /// Grant a lease, attach a fresh key to it, revoke it (which deletes the key).
    /// Returns whether anything failed.
    async fn lease_cycle(
        &mut self,
        kv: &mut KvClient<Channel>,
        lease: &mut LeaseClient<Channel>,
        key: &str,
        value: &str,
    ) -> bool {
        // A TTL far beyond any run, so only the revoke (never expiry) removes the key.
        let ttl = 3600;
        let grant = self
            .record(
                Input::LeaseGrant { ttl },
                lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
                |r| (Output::LeaseGrant { id: r.id }, rev_of(&r.header)),
            )
            .await;
        let Some(Output::LeaseGrant { id }) = grant else {
            return true;
        };
        let attached = self
            .put(
                kv,
                Input::Put {
                    key: key.to_string(),
                    value: value.to_string(),
                    lease: id,
                },
            )
            .await;
        let revoked = self
            .record(
                Input::LeaseRevoke {
                    id,
                    key: Some(key.to_string()),
                },
                lease.lease_revoke(pb::LeaseRevokeRequest { id }),
                |r| (Output::LeaseRevoke, rev_of(&r.header)),
            )
            .await;
        !attached || revoked.is_none()
    }
}

fn rev_of(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map(|h| h.revision).unwrap_or_default()
}

/// Settings of one watcher.
#[derive(Debug, Clone)]
pub struct WatchCfg {
    pub id: usize,
    pub member: usize,
    pub prefix: String,
    pub start_rev: i64,
    /// How often to ask for a progress notification.
    pub progress_every: Duration,
    /// After the drain begins, how long to wait for the watcher to catch up.
    pub drain_deadline: Duration,
}

/// Watches `prefix` on one member from `start_rev`, resuming from the last delivered
/// revision + 1 whenever the stream breaks, until it delivers an event at or past the
/// drain revision (the run's last write, under the prefix), or the drain deadline
/// passes.
pub async fn watcher(
    cfg: WatchCfg,
    ch: Channel,
    start: Instant,
    mut phase: watch::Receiver<Phase>,
) -> WatchHistory {
    let mut h = WatchHistory {
        watcher: cfg.id,
        prefix: cfg.prefix.clone(),
        records: Vec::new(),
    };
    let mut next_rev = cfg.start_rev;
    let mut drain_until: Option<Instant> = None;
    loop {
        if drained(&phase, &mut drain_until, cfg.drain_deadline, next_rev).1 {
            return h;
        }
        match watch_once(
            &cfg,
            ch.clone(),
            start,
            &mut phase,
            &mut h,
            &mut next_rev,
            drain_until,
        )
        .await
        {
            Ok(true) => return h,
            Ok(false) => {}
            Err(error) => h.records.push(WatchRecord::Broken {
                error,
                at: ns(start),
            }),
        }
        // The member is down or cut off; try again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The drain revision, once announced, and whether a watcher is done: that revision is
/// behind it, or the drain deadline, which starts with the announcement, has passed.
fn drained(
    phase: &watch::Receiver<Phase>,
    drain_until: &mut Option<Instant>,
    deadline: Duration,
    next_rev: i64,
) -> (Option<i64>, bool) {
    let target = match *phase.borrow() {
        Phase::Drain(r) => Some(r),
        Phase::Run => None,
    };
    if target.is_some() && drain_until.is_none() {
        *drain_until = Some(Instant::now() + deadline);
    }
    let done =
        drain_until.is_some_and(|d| Instant::now() > d) || target.is_some_and(|t| next_rev > t);
    (target, done)
}

/// One watch stream. `Ok(true)`: done (drained, or canceled by the server).
async fn watch_once(
    cfg: &WatchCfg,
    ch: Channel,
    start: Instant,
    phase: &mut watch::Receiver<Phase>,
    h: &mut WatchHistory,
    next_rev: &mut i64,
    mut drain_until: Option<Instant>,
) -> Result<bool, String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(16);
    let create = pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: cfg.prefix.as_bytes().to_vec(),
            range_end: prefix_end(&cfg.prefix),
            start_revision: *next_rev,
            ..Default::default()
        })),
    };
    tx.send(create).await.map_err(|e| e.to_string())?;
    let mut client = WatchClient::new(ch);
    let stream = tokio::time::timeout(
        Duration::from_secs(3),
        client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "watch open timed out".to_string())?
    .map_err(|st| format!("{:?}: {}", st.code(), st.message()))?;
    let mut stream = stream.into_inner();
    let mut tick = tokio::time::interval(cfg.progress_every);
    let asked_from = *next_rev;
    loop {
        // Everything through the drain revision may have arrived before it was known.
        let (target, done) = drained(phase, &mut drain_until, cfg.drain_deadline, *next_rev);
        if done {
            return Ok(true);
        }
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("stream ended".into()),
                    Err(st) => return Err(format!("{:?}: {}", st.code(), st.message())),
                };
                let at = ns(start);
                if resp.created {
                    h.records.push(WatchRecord::Created { member: cfg.member, start_rev: asked_from, at });
                }
                if resp.canceled {
                    h.records.push(WatchRecord::Canceled { reason: resp.cancel_reason, compact_rev: resp.compact_revision, at });
                    return Ok(true);
                }
                if !resp.events.is_empty() {
                    let events: Vec<Event> = resp.events.iter().map(|e| Event {
                        rev: e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default(),
                        key: e.kv.as_ref().map(|kv| s(&kv.key)).unwrap_or_default(),
                        value: match (e.r#type, &e.kv) {
                            (0, Some(kv)) => Some(s(&kv.value)),
                            _ => None,
                        },
                    }).collect();
                    let last = events.last().map(|e| e.rev).unwrap_or_default();
                    *next_rev = last + 1;
                    h.records.push(WatchRecord::Events { events, at });
                    if target.is_some_and(|t| last >= t) {
                        return Ok(true);
                    }
                } else if !resp.created {
                    let rev = rev_of(&resp.header);
                    h.records.push(WatchRecord::Progress { rev, at });
                }
            }
            _ = tick.tick() => {
                let req = pb::WatchRequest { request_union: Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})) };
                if tx.send(req).await.is_err() {
                    return Err("request stream closed".into());
                }
            }
            _ = phase.changed() => {}
        }
    }
}

/// Reads every event under `prefix` from `from_rev` through `to_rev` (which must be
/// the revision of an event under `prefix`) from one member: a watch from the past,
/// i.e. the history as that member committed it.
pub async fn read_history(
    ch: Channel,
    prefix: &str,
    from_rev: i64,
    to_rev: i64,
    deadline: Duration,
) -> Result<Vec<Event>, String> {
    let start = Instant::now();
    let (_tx, phase) = watch::channel(Phase::Drain(to_rev));
    let cfg = WatchCfg {
        id: usize::MAX,
        member: 0,
        prefix: prefix.to_string(),
        start_rev: from_rev,
        progress_every: Duration::from_millis(200),
        drain_deadline: deadline,
    };
    let h = watcher(cfg, ch, start, phase).await;
    let mut out = Vec::new();
    for r in h.records {
        match r {
            WatchRecord::Events { events, .. } => {
                out.extend(events.into_iter().filter(|e| e.rev <= to_rev))
            }
            WatchRecord::Canceled { reason, .. } => {
                return Err(format!("history watch canceled: {reason}"))
            }
            _ => {}
        }
    }
    if out.last().is_none_or(|e| e.rev < to_rev) {
        return Err(format!(
            "history through revision {to_rev} not read in {deadline:?}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
