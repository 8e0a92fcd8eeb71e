//! The garbage collector, after upstream's: a cache of every object of the covered
//! kinds indexed by uid (the ownership graph); dependents whose owners are all gone are
//! deleted (background propagation), dangling references beside live owners are
//! removed; an owner being deleted with the `foregroundDeletion` finalizer has its
//! dependents deleted first and loses the finalizer once no blocking dependent remains;
//! one with the `orphan` finalizer has the references to it removed from its dependents,
//! then loses the finalizer. An owner missing from the cache is confirmed gone with a
//! live read before anything is deleted, since caches of different kinds lag apart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;

/// The kinds whose objects are dependents or owners here: (group, version, kind,
/// plural, namespaced).
pub const COVERED: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Pod", "pods", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "Deployment", "deployments", true),
    ("batch", "v1", "Job", "jobs", true),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ("", "v1", "Endpoints", "endpoints", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
    ("", "v1", "Node", "nodes", false),
    ("", "v1", "Namespace", "namespaces", false),
];

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// One covered kind: how to reach it and its cache.
struct Kind {
    ar: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

/// An object to look at: kind index, namespace, name.
type Item = (usize, Option<String>, String);

struct Gc {
    client: Client,
    kinds: Vec<Kind>,
    /// uid -> item, for every cached object.
    by_uid: Mutex<HashMap<String, Item>>,
    /// owner uid -> dependents' items, and its inverse (item -> owner uids), so an
    /// event updates only the edges of its object.
    dependents: Mutex<HashMap<String, HashSet<Item>>>,
    owners: Mutex<HashMap<Item, Vec<String>>>,
    queue: tokio::sync::mpsc::UnboundedSender<Item>,
    pending: Mutex<HashSet<Item>>,
}

/// Runs the garbage collector until the process ends.
pub async fn run(client: Client) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Item>();
    let mut tasks = tokio::task::JoinSet::new();
    let mut kinds = Vec::new();
    let mut streams = Vec::new();
    for (i, (group, version, kind, plural, namespaced)) in COVERED.iter().enumerate() {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let store = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        streams.push((
            i,
            reflector::reflector(writer, watcher(api, watcher::Config::default())),
        ));
        kinds.push(Kind {
            ar,
            namespaced: *namespaced,
            store,
        });
    }
    let gc = Arc::new(Gc {
        client,
        kinds,
        by_uid: Mutex::new(HashMap::new()),
        dependents: Mutex::new(HashMap::new()),
        owners: Mutex::new(HashMap::new()),
        queue: tx,
        pending: Mutex::new(HashSet::new()),
    });
    for (i, stream) in streams {
        let gc = gc.clone();
        tasks.spawn(stream.default_backoff().for_each(move |ev| {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    gc.observe(i, &o, true)
                }
                Ok(watcher::Event::Delete(o)) => gc.observe(i, &o, false),
                _ => {}
            }
            futures::future::ready(())
        }));
    }
    for k in &gc.kinds {
        let _ = k.store.wait_until_ready().await;
    }
    // Index what the initial lists brought, then look at everything.
    gc.resync();
    {
        let gc = gc.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(crate::RESYNC).await;
                gc.resync();
            }
        });
    }
    let worker = gc.clone();
    crate::stream(rx)
        .for_each_concurrent(8, move |item| {
            let gc = worker.clone();
            async move {
                gc.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&item);
                if let Err(e) = gc.process(&item).await {
                    tracing::warn!(kind = %gc.kinds[item.0].ar.kind, namespace = item.1.as_deref().unwrap_or(""), name = %item.2, error = %e, "garbage collection failed; retrying");
                    let gc = gc.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        gc.enqueue(item);
                    });
                }
            }
        })
        .await;
}

impl Gc {
    fn enqueue(&self, item: Item) {
        if self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(item.clone())
        {
            let _ = self.queue.send(item);
        }
    }

    /// Rebuilds the graph from the caches and enqueues every object.
    fn resync(&self) {
        let mut by_uid = HashMap::new();
        let mut deps: HashMap<String, HashSet<Item>> = HashMap::new();
        let mut owners: HashMap<Item, Vec<String>> = HashMap::new();
        let mut items = Vec::new();
        for (i, k) in self.kinds.iter().enumerate() {
            for o in k.store.state() {
                let item = (i, o.namespace(), o.name_any());
                if let Some(uid) = o.uid() {
                    by_uid.insert(uid, item.clone());
                }
                for r in o.owner_references() {
                    deps.entry(r.uid.clone()).or_default().insert(item.clone());
                    owners.entry(item.clone()).or_default().push(r.uid.clone());
                }
                items.push(item);
            }
        }
        *self.by_uid.lock().unwrap_or_else(|e| e.into_inner()) = by_uid;
        *self.dependents.lock().unwrap_or_else(|e| e.into_inner()) = deps;
        *self.owners.lock().unwrap_or_else(|e| e.into_inner()) = owners;
        for item in items {
            self.enqueue(item);
        }
    }

    /// A cache changed: update the graph, and look at the object, its owners (a
    /// dependent's change may unblock them) and its dependents (an owner's may doom
    /// them).
    fn observe(&self, kind: usize, o: &DynamicObject, present: bool) {
        let item = (kind, o.namespace(), o.name_any());
        let uid = o.uid().unwrap_or_default();
        {
            let mut by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
            let mut deps = self.dependents.lock().unwrap_or_else(|e| e.into_inner());
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if present {
                by_uid.insert(uid.clone(), item.clone());
            } else {
                by_uid.remove(&uid);
            }
            for owner in owners.remove(&item).unwrap_or_default() {
                if let Some(set) = deps.get_mut(&owner) {
                    set.remove(&item);
                    if set.is_empty() {
                        deps.remove(&owner);
                    }
                }
            }
            if present {
                for r in o.owner_references() {
                    deps.entry(r.uid.clone()).or_default().insert(item.clone());
                    owners.entry(item.clone()).or_default().push(r.uid.clone());
                }
            }
        }
        let owners: Vec<Item> = {
            let by_uid = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
            o.owner_references()
                .iter()
                .filter_map(|r| by_uid.get(&r.uid).cloned())
                .collect()
        };
        let dependents: Vec<Item> = self
            .dependents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if present {
            self.enqueue(item);
        }
        for i in owners.into_iter().chain(dependents) {
            self.enqueue(i);
        }
    }

    fn api(&self, kind: usize, ns: Option<&str>) -> Api<DynamicObject> {
        let k = &self.kinds[kind];
        match (k.namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        }
    }

    fn cached(&self, item: &Item) -> Option<Arc<DynamicObject>> {
        self.kinds[item.0].store.get(&self.object_ref(item))
    }

    fn object_ref(&self, item: &Item) -> reflector::ObjectRef<DynamicObject> {
        let mut r = reflector::ObjectRef::new_with(&item.2, self.kinds[item.0].ar.clone());
        r.namespace = item.1.clone();
        r
    }

    async fn process(&self, item: &Item) -> Result<(), Error> {
        let Some(obj) = self.cached(item) else {
            return Ok(());
        };
        if obj.metadata.deletion_timestamp.is_some() {
            let fins = obj.finalizers();
            if fins.iter().any(|f| f == ORPHAN) {
                return self.orphan_dependents(item, &obj).await;
            }
            if fins.iter().any(|f| f == FOREGROUND) {
                return self.delete_dependents(item, &obj).await;
            }
            return Ok(());
        }
        let refs = obj.owner_references().to_vec();
        if refs.is_empty() {
            return Ok(());
        }
        let mut dangling = Vec::new();
        for r in &refs {
            if self.owner_gone(item.1.as_deref(), r).await? {
                dangling.push(r.uid.clone());
            }
        }
        if dangling.is_empty() {
            return Ok(());
        }
        let api = self.api(item.0, item.1.as_deref());
        if dangling.len() == refs.len() {
            tracing::info!(kind = %self.kinds[item.0].ar.kind, namespace = item.1.as_deref().unwrap_or(""), name = %item.2, "deleting object whose owners are gone");
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: obj.uid(),
                    resource_version: None,
                }),
                propagation_policy: Some(kube::api::PropagationPolicy::Background),
                ..Default::default()
            };
            return ignore_gone(api.delete(&item.2, &dp).await.map(|_| ()));
        }
        let keep: Vec<_> = refs
            .into_iter()
            .filter(|r| !dangling.contains(&r.uid))
            .collect();
        let patch = json!({"metadata": {"ownerReferences": keep, "uid": obj.uid(), "resourceVersion": obj.resource_version()}});
        ignore_gone(
            api.patch(&item.2, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        )
    }

    /// Whether the owner a reference names is gone: not in the cache, and a live
    /// read finds nothing with its uid. Kinds not covered count as present.
    async fn owner_gone(
        &self,
        ns: Option<&str>,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Result<bool, Error> {
        if self
            .by_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&r.uid)
        {
            return Ok(false);
        }
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let Some(kind) = self
            .kinds
            .iter()
            .position(|k| k.ar.group == group && k.ar.version == version && k.ar.kind == r.kind)
        else {
            return Ok(false);
        };
        let ns = if self.kinds[kind].namespaced {
            ns
        } else {
            None
        };
        match self.api(kind, ns).get_opt(&r.name).await? {
            Some(o) => Ok(o.uid().as_deref() != Some(r.uid.as_str())),
            None => Ok(true),
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<Item> {
        self.dependents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `orphan`: drop every reference to the owner from its dependents, then the
    /// finalizer.
    async fn orphan_dependents(&self, item: &Item, owner: &DynamicObject) -> Result<(), Error> {
        let uid = owner.uid().unwrap_or_default();
        for d in self.dependents_of(&uid) {
            let Some(dep) = self.cached(&d) else { continue };
            let keep: Vec<_> = dep
                .owner_references()
                .iter()
                .filter(|r| r.uid != uid)
                .cloned()
                .collect();
            if keep.len() == dep.owner_references().len() {
                continue;
            }
            let patch = json!({"metadata": {"ownerReferences": keep, "resourceVersion": dep.resource_version()}});
            ignore_gone(
                self.api(d.0, d.1.as_deref())
                    .patch(&d.2, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
            )?;
        }
        tracing::info!(kind = %self.kinds[item.0].ar.kind, namespace = item.1.as_deref().unwrap_or(""), name = %item.2, "orphaned dependents");
        self.remove_finalizer(item, owner, ORPHAN).await
    }

    /// `foregroundDeletion`: delete the dependents; once none that blocks the owner's
    /// deletion is left, drop the finalizer.
    async fn delete_dependents(&self, item: &Item, owner: &DynamicObject) -> Result<(), Error> {
        let uid = owner.uid().unwrap_or_default();
        let mut blocking = 0;
        for d in self.dependents_of(&uid) {
            let Some(dep) = self.cached(&d) else { continue };
            let Some(r) = dep
                .owner_references()
                .iter()
                .find(|r| r.uid == uid)
                .cloned()
            else {
                continue;
            };
            if r.block_owner_deletion == Some(true) {
                blocking += 1;
            }
            if dep.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // A dependent with other live owners only loses its reference.
            let others = dep.owner_references().len() > 1;
            let api = self.api(d.0, d.1.as_deref());
            if others {
                let keep: Vec<_> = dep
                    .owner_references()
                    .iter()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": keep, "resourceVersion": dep.resource_version()}});
                ignore_gone(
                    api.patch(&d.2, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ()),
                )?;
                continue;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: dep.uid(),
                    resource_version: None,
                }),
                propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
                ..Default::default()
            };
            ignore_gone(api.delete(&d.2, &dp).await.map(|_| ()))?;
        }
        if blocking > 0 {
            // The dependents' deletion events bring the owner back here.
            return Ok(());
        }
        tracing::info!(kind = %self.kinds[item.0].ar.kind, namespace = item.1.as_deref().unwrap_or(""), name = %item.2, "dependents deleted; finalizing");
        self.remove_finalizer(item, owner, FOREGROUND).await
    }

    async fn remove_finalizer(
        &self,
        item: &Item,
        obj: &DynamicObject,
        f: &str,
    ) -> Result<(), Error> {
        let keep: Vec<&String> = obj.finalizers().iter().filter(|x| *x != f).collect();
        let patch =
            json!({"metadata": {"finalizers": keep, "resourceVersion": obj.resource_version()}});
        ignore_gone(
            self.api(item.0, item.1.as_deref())
                .patch(&item.2, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        )
    }
}

/// A 404 means the work is done; a 409 (stale cache or precondition) is retried by
/// the caller through the next event or the retry.
fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        r => r.map_err(Error::from),
    }
}
