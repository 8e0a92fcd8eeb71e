//! The Watch service: one bidirectional stream per call, carrying many watchers, as
//! etcd's `v3rpc` `serverWatchStream` does.
//!
//! Each stream runs as one task that reads requests, drains its [`WatchStream`] and
//! ticks progress notifications, so a watcher's `created` response always precedes its
//! events and control responses are never reordered with the events around them. When
//! the client reads slowly the task stops draining the hub channel and the stream's
//! watchers fall behind, to be caught up from history: a slow client never holds events
//! in server memory beyond its channels.
//!
//! etcd 3.5's answers, kept here: a refused create (negative start revision, permission,
//! empty range, duplicate ID) is a response with `created` and `canceled` set, watch ID
//! -1 and the reason; a cancel of an unknown ID is ignored; a progress request is
//! answered with watch ID -1 only when every watcher of the stream is synced; a watcher
//! whose history was compacted gets `canceled` with `compact_revision` and no reason.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::watch_create_request::FilterType;
use capstan_proto::etcdserverpb::watch_request::RequestUnion;
use capstan_proto::etcdserverpb::watch_server::Watch;
use capstan_proto::mvccpb::Event;
use futures::future::{BoxFuture, FutureExt, Shared};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdServer, GRPC_OVERHEAD_BYTES};
use crate::error::StoreError;
use crate::watch::{Notice, WatchSpec, WatchStream, INVALID_WATCH_ID, STREAM_CAPACITY};

/// etcd's floor for `--experimental-watch-progress-notify-interval`.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// etcd's progress interval when none is configured.
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// Responses queued for the transport per stream. Beyond it the stream stops draining
/// its hub channel, which is what makes a slow client's watchers fall behind.
const OUT_CAPACITY: usize = 16;
/// The protobuf field number of `WatchResponse.events`, for sizing responses.
const EVENTS_FIELD: u32 = 11;

/// See the module documentation.
#[derive(Clone)]
pub struct WatchService {
    srv: Arc<EtcdServer>,
    /// Resolves when the server shuts down: streams never end by themselves, and the
    /// transport's graceful shutdown waits for every open one.
    stopping: Shared<BoxFuture<'static, ()>>,
}

impl WatchService {
    pub fn new(srv: Arc<EtcdServer>, stopping: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            srv,
            stopping: stopping.boxed().shared(),
        }
    }
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let metadata = req.metadata().clone();
        Ok(Response::new(self.open(metadata, req.into_inner())))
    }
}

impl WatchService {
    /// Opens a watch stream reading `input` with the caller's `metadata` (its token):
    /// for gRPC's Watch and the JSON gateway's `/v3/watch` alike.
    pub fn open<S>(
        &self,
        metadata: MetadataMap,
        input: S,
    ) -> ReceiverStream<Result<pb::WatchResponse, Status>>
    where
        S: futures::Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin + 'static,
    {
        static STREAMS: AtomicU64 = AtomicU64::new(0);
        let (out, rx) = mpsc::channel(OUT_CAPACITY);
        let session = Session {
            id: STREAMS.fetch_add(1, Ordering::Relaxed),
            hub: WatchStream::new(self.srv.sm.clone(), STREAM_CAPACITY),
            srv: self.srv.clone(),
            metadata,
            out,
            opts: HashMap::new(),
            stopping: self.stopping.clone(),
        };
        tokio::spawn(session.run(input));
        ReceiverStream::new(rx)
    }
}

/// What the service remembers per watcher beyond the hub.
struct Opts {
    fragment: bool,
    progress_notify: bool,
    /// No events were sent since the last tick, so the next tick sends progress.
    progress_due: bool,
}

/// One client stream.
struct Session {
    id: u64,
    srv: Arc<EtcdServer>,
    hub: WatchStream,
    /// The call's metadata: permissions are checked per create, with the token as it is
    /// then, as etcd does.
    metadata: MetadataMap,
    out: Out,
    opts: HashMap<i64, Opts>,
    stopping: Shared<BoxFuture<'static, ()>>,
}

impl Session {
    async fn run<S>(mut self, mut input: S)
    where
        S: futures::Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
    {
        use futures::StreamExt;
        tracing::debug!(stream = self.id, "watch stream opened");
        let interval = progress_interval(self.srv.cfg.watch_progress_notify_interval);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reading = true;
        loop {
            let go_on = tokio::select! {
                msg = input.next(), if reading => match msg {
                    Some(Ok(req)) => self.handle(req).await,
                    // etcd goes on sending after the client closes its side.
                    None => {
                        reading = false;
                        true
                    }
                    Some(Err(status)) => {
                        tracing::debug!(stream = self.id, %status, "watch stream receive failed");
                        false
                    }
                },
                notice = self.hub.recv() => match notice {
                    Some(n) => self.deliver(n).await,
                    None => false,
                },
                _ = ticker.tick() => {
                    self.tick();
                    true
                }
                _ = self.out.closed() => false,
                _ = self.stopping.clone() => {
                    // Best effort: a client that stopped reading just sees the stream end.
                    let _ = self.out.try_send(Err(StoreError::Stopped.into()));
                    false
                }
            };
            if !go_on {
                break;
            }
        }
        tracing::debug!(stream = self.id, "watch stream closed");
    }

    /// Queues a response; false once the client is gone or the server is stopping (a
    /// client that stopped reading must not hold up shutdown).
    async fn send(&self, resp: pb::WatchResponse) -> bool {
        tokio::select! {
            sent = self.out.send(Ok(resp)) => sent.is_ok(),
            _ = self.stopping.clone() => false,
        }
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let resp = self.create(c);
                self.send(resp).await
            }
            Some(RequestUnion::CancelRequest(c)) => {
                if !self.hub.cancel(c.watch_id) {
                    return true;
                }
                self.opts.remove(&c.watch_id);
                let resp = pb::WatchResponse {
                    header: Some(self.srv.header(self.hub.rev())),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                };
                self.send(resp).await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.hub.request_progress_all();
                true
            }
            None => true,
        }
    }

    fn create(&mut self, c: pb::WatchCreateRequest) -> pb::WatchResponse {
        // "\0" is the smallest key: an empty key means it.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        if c.start_revision < 0 {
            return self.refused(StoreError::Compacted.to_string());
        }
        if let Err(e) = self.permitted(&key, &c.range_end) {
            return self.refused(cancel_reason(e));
        }
        let mut spec = WatchSpec {
            key,
            range_end: c.range_end,
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            ..Default::default()
        };
        for f in &c.filters {
            match FilterType::try_from(*f) {
                Ok(FilterType::Noput) => spec.no_put = true,
                Ok(FilterType::Nodelete) => spec.no_delete = true,
                Err(_) => {}
            }
        }
        match self.hub.watch(c.watch_id, &spec) {
            Ok((id, rev)) => {
                tracing::debug!(
                    stream = self.id,
                    watch_id = id,
                    start_revision = c.start_revision,
                    "watch created"
                );
                let opts = Opts {
                    fragment: c.fragment,
                    progress_notify: c.progress_notify,
                    progress_due: true,
                };
                self.opts.insert(id, opts);
                pb::WatchResponse {
                    header: Some(self.srv.header(rev)),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                }
            }
            Err(e) => self.refused(e.to_string()),
        }
    }

    fn refused(&self, reason: String) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.srv.header(self.hub.rev())),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        }
    }

    fn permitted(&self, key: &[u8], range_end: &[u8]) -> Result<(), StoreError> {
        let mut r = Request::new(());
        *r.metadata_mut() = self.metadata.clone();
        let user = self.srv.auth_user(&r)?;
        self.srv
            .sm
            .auth
            .check(user.as_deref(), key, range_end, false)
    }

    async fn deliver(&mut self, notice: Notice) -> bool {
        match notice {
            Notice::Events { watch_id, events } => {
                if events.is_empty() {
                    return true;
                }
                let fragment = match self.opts.get_mut(&watch_id) {
                    Some(o) => {
                        o.progress_due = false;
                        o.fragment
                    }
                    None => false,
                };
                let limit = self.srv.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
                for chunk in split_revisions(events, self.srv.cfg.max_request_bytes) {
                    let rev = chunk
                        .last()
                        .and_then(|e| e.kv.as_ref())
                        .map_or(0, |kv| kv.mod_revision);
                    let resp = pb::WatchResponse {
                        header: Some(self.srv.header(rev)),
                        watch_id,
                        events: chunk,
                        ..Default::default()
                    };
                    let parts = if fragment {
                        fragments(resp, limit)
                    } else {
                        vec![resp]
                    };
                    for r in parts {
                        if !self.send(r).await {
                            return false;
                        }
                    }
                }
                true
            }
            // etcd leaves the header revision of this response at 0.
            Notice::Compacted {
                watch_id,
                compact_revision,
            } => {
                let resp = pb::WatchResponse {
                    header: Some(self.srv.header(0)),
                    watch_id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                };
                self.send(resp).await
            }
            Notice::Progress { watch_id, revision } => {
                let resp = pb::WatchResponse {
                    header: Some(self.srv.header(revision)),
                    watch_id,
                    ..Default::default()
                };
                self.send(resp).await
            }
        }
    }

    /// Asks progress for every `progress_notify` watcher that got no events since the
    /// previous tick (the hub sends it only to synced ones), as etcd's send loop does.
    fn tick(&mut self) {
        for (id, o) in self.opts.iter_mut() {
            if !o.progress_notify {
                continue;
            }
            if o.progress_due {
                self.hub.request_progress(*id);
            }
            o.progress_due = true;
        }
    }
}

/// etcd's progress interval: at least 100ms, plus up to a tenth of random jitter so
/// watchers created together do not all report at once.
fn progress_interval(configured: Duration) -> Duration {
    let base = if configured.is_zero() {
        DEFAULT_PROGRESS_INTERVAL
    } else {
        configured.max(MIN_PROGRESS_INTERVAL)
    };
    let tenth = u64::try_from(base.as_nanos() / 10).unwrap_or(u64::MAX);
    base + Duration::from_nanos(rand::random_range(0..tenth.max(1)))
}

/// Why a create was refused a permission, in etcd's words.
fn cancel_reason(e: StoreError) -> String {
    match e {
        StoreError::InvalidAuthToken
        | StoreError::AuthOldRevision
        | StoreError::UserEmpty
        | StoreError::PermissionDenied => e.to_string(),
        other => {
            tracing::warn!(error = %other, "unexpected error checking watch permission");
            StoreError::PermissionDenied.to_string()
        }
    }
}

fn event_len(e: &Event) -> usize {
    prost::encoding::message::encoded_len(EVENTS_FIELD, e)
}

fn revision_of(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Groups events (whole revisions, in order) into responses of about `budget` bytes,
/// never splitting a revision, so one client message stays well under its limits.
fn split_revisions(events: Vec<Event>, budget: usize) -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let mut cur_size = 0;
    let mut it = events.into_iter().peekable();
    while let Some(first) = it.next() {
        let rev = revision_of(&first);
        let mut group = vec![first];
        while let Some(e) = it.next_if(|e| revision_of(e) == rev) {
            group.push(e);
        }
        let size: usize = group.iter().map(event_len).sum();
        if !cur.is_empty() && cur_size + size > budget {
            out.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        cur.extend(group);
        cur_size += size;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// etcd's `sendFragments`: a response of at least `limit` bytes with two or more events
/// is cut into pieces under `limit` (a single event larger than that travels alone),
/// every piece but the last marked `fragment`.
fn fragments(resp: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    if resp.encoded_len() < limit || resp.events.len() < 2 {
        return vec![resp];
    }
    let mut template = resp;
    let events = std::mem::take(&mut template.events);
    template.fragment = true;
    let base = template.encoded_len();
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = base;
    for ev in events {
        let len = event_len(&ev);
        if !cur.is_empty() && size + len >= limit {
            out.push(pb::WatchResponse {
                events: std::mem::take(&mut cur),
                ..template.clone()
            });
            size = base;
        }
        size += len;
        cur.push(ev);
    }
    out.push(pb::WatchResponse {
        events: cur,
        fragment: false,
        ..template
    });
    out
}

#[cfg(test)]
mod tests {
    use capstan_proto::mvccpb::KeyValue;

    use super::*;

    fn ev(rev: i64, key: &str, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; value_len],
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn revisions_are_never_split() {
        let events = vec![
            ev(2, "a", 600),
            ev(2, "b", 600),
            ev(3, "c", 600),
            ev(4, "d", 600),
            ev(4, "e", 600),
        ];
        let revs = |chunks: &[Vec<Event>]| -> Vec<Vec<i64>> {
            chunks
                .iter()
                .map(|c| c.iter().map(revision_of).collect())
                .collect()
        };
        assert_eq!(
            revs(&split_revisions(events.clone(), 1 << 20)),
            vec![vec![2, 2, 3, 4, 4]]
        );
        assert_eq!(
            revs(&split_revisions(events.clone(), 1500)),
            vec![vec![2, 2], vec![3], vec![4, 4]]
        );
        // A budget smaller than one revision still sends that revision whole.
        assert_eq!(
            revs(&split_revisions(events, 10)),
            vec![vec![2, 2], vec![3], vec![4, 4]]
        );
    }

    #[test]
    fn fragments_as_etcd() {
        let resp = |events: Vec<Event>| pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 3,
            events,
            ..Default::default()
        };
        let small = resp(vec![ev(2, "a", 10), ev(3, "b", 10)]);
        assert_eq!(
            fragments(small.clone(), 1000),
            vec![small],
            "under the limit: as is"
        );
        let one = resp(vec![ev(2, "a", 5000)]);
        assert_eq!(
            fragments(one.clone(), 1000),
            vec![one],
            "one event is never fragmented"
        );
        let events: Vec<Event> = (0..10).map(|i| ev(5, &format!("k{i}"), 300)).collect();
        let parts = fragments(resp(events.clone()), 1000);
        assert!(parts.len() > 1);
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        for p in &parts {
            assert!(p.encoded_len() < 1000, "each piece is under the limit");
            assert_eq!(
                (p.watch_id, p.header.as_ref().map(|h| h.revision)),
                (3, Some(9))
            );
        }
        let rejoined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, events);
    }

    #[test]
    fn progress_interval_has_a_floor_and_jitter() {
        let i = progress_interval(Duration::from_millis(1));
        assert!(
            i >= MIN_PROGRESS_INTERVAL && i < MIN_PROGRESS_INTERVAL + MIN_PROGRESS_INTERVAL / 10
        );
        let d = progress_interval(Duration::ZERO);
        assert!(d >= DEFAULT_PROGRESS_INTERVAL);
    }
}
