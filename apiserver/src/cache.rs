//! The watch cache: one store watch per resource type feeding an in-memory copy of every
//! object and a bounded history of events, from which watches and most lists are
//! served (as kube-apiserver's cacher does), so N watchers cost one store watch and each
//! event is serialised once.
//!
//! Consistency: the cache knows the store revision it has caught up to. A consistent
//! list first reads the store's current revision, then waits for the cache to reach it;
//! when no event of this resource moves the cache there, a watch progress request makes
//! the store confirm the cache is current (an empty response at the header revision).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::EventType;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ApiError;
use crate::registry::{from_stored, set_rv, ListOptions};
use crate::resources::ResourceType;
use crate::storage::{stored, Store};

/// Events kept for watches resuming from an older resourceVersion.
const HISTORY: usize = 10_000;
/// Events a watcher may fall behind by before it is dropped.
const WATCHER_BUFFER: usize = 4096;
/// How long a read waits for the cache to reach a revision before answering 504.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Added,
    Modified,
    Deleted,
}

/// One object as cached: the decoded value (for selectors) and its JSON, made once.
pub struct Cached {
    pub obj: Value,
    pub json: Bytes,
}

impl Cached {
    fn new(obj: Value) -> Arc<Cached> {
        let json = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
        Arc::new(Cached { obj, json })
    }
}

/// One event in the history.
struct Event {
    rev: i64,
    kind: Kind,
    key: String,
    cur: Arc<Cached>,
    prev: Option<Arc<Cached>>,
}

struct Watcher {
    prefix: String,
    opts: Arc<ListOptions>,
    table: Option<String>,
    tx: mpsc::Sender<Bytes>,
    /// Dropped with the watcher: tells its bookmark task, which holds a sender of the
    /// same stream, to let go, so a watcher the cache drops (slow, or ended by a relist)
    /// sees its stream end instead of silently missing events.
    _alive: oneshot::Sender<()>,
}

struct Inner {
    objects: BTreeMap<String, Arc<Cached>>,
    history: VecDeque<Arc<Event>>,
    /// Watches may resume from any revision at or after this one.
    oldest: i64,
    watchers: Vec<Watcher>,
}

/// The cache of one resource type.
pub struct Cache {
    rt: &'static ResourceType,
    inner: Mutex<Inner>,
    /// The store revision the cache has caught up to (0 until the first list).
    revision: watch::Sender<i64>,
    progress: mpsc::Sender<()>,
}

fn line(kind: &str, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(json);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "ADDED",
            Kind::Modified => "MODIFIED",
            Kind::Deleted => "DELETED",
        }
    }
}

impl Watcher {
    /// The line this watcher gets for `ev`, after its selectors (upstream's transitions:
    /// an object leaving the selection is DELETED, one entering it ADDED).
    fn render(&self, rt: &ResourceType, ev: &Event) -> Option<Bytes> {
        if !ev.key.starts_with(&self.prefix) {
            return None;
        }
        let m = |c: &Cached| self.opts.labels.matches(&c.obj) && self.opts.fields.matches(&c.obj);
        let kind = match ev.kind {
            Kind::Deleted => m(&ev.cur).then_some(Kind::Deleted)?,
            _ => match (ev.prev.as_deref().map(m), m(&ev.cur)) {
                (None | Some(false), true) => Kind::Added,
                (Some(true), true) => Kind::Modified,
                (Some(true), false) => Kind::Deleted,
                _ => return None,
            },
        };
        Some(self.render_obj(rt, kind.as_str(), &ev.cur))
    }

    fn render_obj(&self, rt: &ResourceType, kind: &str, c: &Cached) -> Bytes {
        match &self.table {
            None => line(kind, &c.json),
            Some(include) => {
                let meta = json!({"resourceVersion": c.obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
                let t = crate::table::to_table(
                    rt.kind,
                    std::slice::from_ref(&c.obj),
                    include,
                    meta,
                    chrono::Utc::now(),
                );
                line(kind, t.to_string().as_bytes())
            }
        }
    }
}

/// Options of a watch served from the cache.
pub struct CacheWatch {
    pub namespace: Option<String>,
    pub opts: ListOptions,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub table: Option<String>,
}

impl Cache {
    /// Starts the cache of `rt`: lists it, then follows the store's watch for as long as
    /// the process runs (relisting after a compaction or a lost stream).
    pub fn start(store: Store, rt: &'static ResourceType) -> Arc<Cache> {
        let (cache, progress_rx) = Cache::empty(rt);
        tokio::spawn(feed(cache.clone(), store, progress_rx));
        cache
    }

    /// An empty cache at revision 0, and the receiver of its progress requests.
    fn empty(rt: &'static ResourceType) -> (Arc<Cache>, mpsc::Receiver<()>) {
        let (progress, progress_rx) = mpsc::channel(1);
        let cache = Arc::new(Cache {
            rt,
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest: 0,
                watchers: Vec::new(),
            }),
            revision: watch::channel(0).0,
            progress,
        });
        (cache, progress_rx)
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the cache has caught up to `rev`, asking the store for progress
    /// while it waits; upstream's "Too large resource version" after the bound.
    pub async fn wait_for(&self, rev: i64) -> Result<(), ApiError> {
        let mut rx = self.revision.subscribe();
        let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
        loop {
            if *rx.borrow_and_update() >= rev {
                return Ok(());
            }
            let _ = self.progress.try_send(());
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ApiError::TooLargeResourceVersion { requested: rev, current: self.revision() });
                }
            }
        }
    }

    /// `f` of the object at `key`, if the cache holds one.
    pub fn peek<R>(&self, key: &str, f: impl FnOnce(&Value) -> R) -> Option<R> {
        self.inner.lock().objects.get(key).map(|c| f(&c.obj))
    }

    /// The objects under `prefix` matching the selectors (shared, not copied: a list
    /// of 100,000 pods copies no object), and the revision they are at.
    pub fn list(&self, prefix: &str, opts: &ListOptions) -> (Vec<Arc<Cached>>, i64) {
        let inner = self.inner.lock();
        let items = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, c)| opts.labels.matches(&c.obj) && opts.fields.matches(&c.obj))
            .map(|(_, c)| c.clone())
            .collect();
        (items, self.revision())
    }

    /// Starts a watch. `resume`: the resourceVersion to continue after, `None` for "send
    /// the current state first".
    pub async fn watch(
        &self,
        w: CacheWatch,
        resume: Option<i64>,
    ) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        if let Some(rv) = resume {
            self.wait_for(rv).await?;
        }
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let (alive, dropped) = oneshot::channel();
        let rt = self.rt;
        let prefix = rt.list_prefix(w.namespace.as_deref());
        let watcher = Watcher {
            prefix: prefix.clone(),
            opts: Arc::new(w.opts),
            table: w.table.clone(),
            tx: tx.clone(),
            _alive: alive,
        };
        {
            let mut inner = self.inner.lock();
            let rev = self.revision();
            let initial = resume.is_none() || w.send_initial_events;
            if let Some(rv) = resume.filter(|_| !w.send_initial_events) {
                if rv < inner.oldest {
                    let err = ApiError::Expired(format!(
                        "too old resource version: {rv} ({})",
                        inner.oldest
                    ));
                    let _ = tx.try_send(line("ERROR", err.status().to_string().as_bytes()));
                    return Ok(rx);
                }
                for ev in inner.history.iter().filter(|e| e.rev > rv) {
                    if let Some(b) = watcher.render(rt, ev) {
                        if tx.try_send(b).is_err() {
                            return Ok(rx);
                        }
                    }
                }
            }
            if initial {
                for (_, c) in inner
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                {
                    let selected =
                        watcher.opts.labels.matches(&c.obj) && watcher.opts.fields.matches(&c.obj);
                    if selected && tx.try_send(watcher.render_obj(rt, "ADDED", c)).is_err() {
                        return Ok(rx);
                    }
                }
                if w.send_initial_events && w.allow_bookmarks {
                    let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {
                        "resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                    let _ = tx.try_send(line("BOOKMARK", bm.to_string().as_bytes()));
                }
            }
            inner.watchers.push(watcher);
        }
        if w.allow_bookmarks || w.timeout.is_some() {
            tokio::spawn(bookmarks(
                self.revision.subscribe(),
                tx,
                dropped,
                rt,
                w.allow_bookmarks,
                w.timeout,
            ));
        }
        Ok(rx)
    }

    /// Applies one store event and fans it out.
    fn apply(&self, kind: Kind, key: String, cur: Arc<Cached>, rev: i64) {
        let mut inner = self.inner.lock();
        let prev = match kind {
            Kind::Deleted => inner.objects.remove(&key),
            _ => inner.objects.insert(key.clone(), cur.clone()),
        };
        let kind = match (kind, &prev) {
            (Kind::Deleted, _) => Kind::Deleted,
            (_, None) => Kind::Added,
            _ => Kind::Modified,
        };
        let ev = Arc::new(Event {
            rev,
            kind,
            key,
            cur,
            prev,
        });
        let rt = self.rt;
        // Slow watchers are dropped (their channel is full), never waited for.
        inner.watchers.retain(|w| match w.render(rt, &ev) {
            Some(b) => w.tx.try_send(b).is_ok(),
            None => !w.tx.is_closed(),
        });
        inner.history.push_back(ev);
        if inner.history.len() > HISTORY {
            if let Some(old) = inner.history.pop_front() {
                inner.oldest = old.rev;
            }
        }
    }

    /// Replaces the whole state after a (re)list at `rev`; watchers of the old state are
    /// ended, as upstream ends them, and resume with a fresh list.
    fn reset(&self, objects: BTreeMap<String, Arc<Cached>>, rev: i64) {
        let mut inner = self.inner.lock();
        inner.objects = objects;
        inner.history.clear();
        inner.oldest = rev;
        inner.watchers.clear();
        drop(inner);
        self.revision.send_replace(rev);
    }
}

/// Sends bookmarks at the cache's revision every 30 s, and ends the watch at its timeout.
async fn bookmarks(
    mut rev: watch::Receiver<i64>,
    tx: mpsc::Sender<Bytes>,
    mut dropped: oneshot::Receiver<()>,
    rt: &'static ResourceType,
    allow: bool,
    timeout: Option<Duration>,
) {
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let deadline = timeout
        .map(|t| tokio::time::Instant::now() + t)
        .unwrap_or(far);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
            _ = &mut dropped => return,
            _ = tick.tick(), if allow => {
                let r = *rev.borrow_and_update();
                let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": r.to_string()}});
                if tx.try_send(line("BOOKMARK", bm.to_string().as_bytes())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Why a store watch ended.
enum Ended {
    /// The store compacted past the cache's revision: only a fresh list can catch up.
    Compacted,
    /// The stream broke (member gone, connection reset, canceled): the history is
    /// still there, so watching again from the cache's revision loses nothing.
    Broken,
}

/// The cache's feed: list, then watch. A broken watch is resumed from the cache's
/// revision on whichever member answers (as client-go's reflector resumes from its
/// last resourceVersion), so the cache's own watchers never notice a store member
/// dying; only a compaction past the cache forces a relist, which ends them.
async fn feed(cache: Arc<Cache>, store: Store, mut progress: mpsc::Receiver<()>) {
    let prefix = format!("{}/", cache.rt.prefix);
    let mut listed = false;
    loop {
        if !listed {
            let page = match store.list(&prefix, None, 0, 0).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(resource = cache.rt.plural, error = %e, "watch cache list failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let objects = page
                .items
                .iter()
                .filter_map(|s| from_stored(s).ok().map(|o| (s.key.clone(), Cached::new(o))))
                .collect();
            cache.reset(objects, page.revision);
            listed = true;
        }
        let stream = match store.watch(&prefix, cache.revision() + 1).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(resource = cache.rt.plural, error = %e, "watch cache watch failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match follow(&cache, stream, &mut progress).await {
            Ended::Compacted => {
                tracing::info!(
                    resource = cache.rt.plural,
                    "watch cache relisting after compaction"
                );
                listed = false;
            }
            Ended::Broken => {
                tracing::info!(
                    resource = cache.rt.plural,
                    revision = cache.revision(),
                    "watch cache resuming its store watch"
                );
                // A member that keeps ending the watch at once must not be hammered.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Applies one store watch's events to the cache until the watch ends.
async fn follow(
    cache: &Cache,
    stream: etcd_client::WatchStream,
    progress: &mut mpsc::Receiver<()>,
) -> Ended {
    let (mut requests, mut responses) = stream.split();
    loop {
        tokio::select! {
            Some(()) = progress.recv() => {
                if requests.request_progress().await.is_err() {
                    return Ended::Broken;
                }
            }
            msg = responses.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return Ended::Broken,
                };
                if resp.compact_revision() > 0 {
                    return Ended::Compacted;
                }
                if resp.canceled() {
                    return Ended::Broken;
                }
                let mut seen = 0;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let rev = kv.mod_revision();
                    seen = rev;
                    match ev.event_type() {
                        EventType::Put => {
                            let s = stored(kv);
                            let Ok(obj) = from_stored(&s) else { continue };
                            cache.apply(Kind::Modified, s.key, Cached::new(obj), rev);
                        }
                        EventType::Delete => {
                            let Some(prev) = ev.prev_kv().and_then(|p| from_stored(&stored(p)).ok()) else { continue };
                            let mut obj = prev;
                            set_rv(&mut obj, rev);
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            cache.apply(Kind::Deleted, key, Cached::new(obj), rev);
                        }
                    }
                }
                // A progress notification (no events) says every event up to its
                // header revision has been delivered; an event response, up to
                // its events' revision.
                if resp.events().is_empty() {
                    seen = resp.header().map(|h| h.revision()).unwrap_or(0);
                }
                if seen > cache.revision() {
                    cache.revision.send_replace(seen);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;

    fn configmaps() -> &'static ResourceType {
        RESOURCES
            .iter()
            .find(|r| r.kind == "ConfigMap")
            .expect("configmaps are served")
    }

    fn put(cache: &Cache, i: usize) {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": format!("c{i}"), "namespace": "default"}});
        let key = format!("/registry/configmaps/default/c{i}");
        cache.apply(Kind::Modified, key, Cached::new(obj), i as i64 + 1);
    }

    async fn bookmarked_watch(cache: &Cache) -> mpsc::Receiver<Bytes> {
        let w = CacheWatch {
            namespace: None,
            opts: ListOptions::default(),
            // Bookmarks (and a timeout) give the watch a second sender, the one that
            // used to keep a dropped watcher's stream open.
            allow_bookmarks: true,
            send_initial_events: false,
            timeout: Some(Duration::from_secs(3600)),
            table: None,
        };
        cache.watch(w, Some(0)).await.expect("watch")
    }

    /// Reads the stream to its end; panics if it does not end.
    async fn drain(rx: &mut mpsc::Receiver<Bytes>) -> usize {
        let mut n = 0;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while rx.recv().await.is_some() {
                n += 1;
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream did not end after {n} events");
        n
    }

    #[tokio::test]
    async fn a_watcher_too_slow_to_keep_up_sees_its_stream_end() {
        let (cache, _progress) = Cache::empty(configmaps());
        let mut rx = bookmarked_watch(&cache).await;
        // One event more than the watcher's buffer holds, none of them read.
        for i in 0..=WATCHER_BUFFER {
            put(&cache, i);
        }
        // It gets what was buffered, then the end: never a stream that goes on
        // without the events it missed.
        assert_eq!(drain(&mut rx).await, WATCHER_BUFFER);
    }

    #[tokio::test]
    async fn a_relist_ends_the_watches_of_the_old_state() {
        let (cache, _progress) = Cache::empty(configmaps());
        let mut rx = bookmarked_watch(&cache).await;
        put(&cache, 0);
        cache.reset(BTreeMap::new(), 10);
        assert_eq!(drain(&mut rx).await, 1);
    }
}
