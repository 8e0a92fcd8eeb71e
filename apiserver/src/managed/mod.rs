//! Field management: `metadata.managedFields` and server-side apply, as kube-apiserver's
//! field manager (k8s.io/apiserver `fieldmanager`) does them over structured-merge-diff.
//!
//! Every write records who set which fields. A create, update or non-apply patch is an
//! `Update` operation: the writer takes every field its write added or changed, from
//! whoever had it, and nobody keeps a field the write removed. A server-side apply
//! (`application/apply-patch+yaml`) is an `Apply` operation: the applied configuration
//! is merged onto the object; fields the same applier applied last time and left out
//! now are removed unless someone else also manages them; and a value it would change
//! in a field another manager owns is a conflict (409) unless `force` is set, in which
//! case it takes the field over. Applying the value a field already has makes the
//! applier a co-owner.
//!
//! Managers are told apart by (name, operation, subresource, and for updates the API
//! version), and the entries are sorted as upstream sorts them. A few upstream details
//! kept on purpose: a `scale` entry carries no `time` (upstream loses it converting to
//! and from the Scale object); at most ten `Update` entries are kept, older ones merged
//! into `ancient-changes`; `apiVersion`, `kind`, `metadata.name`, `uid`,
//! `resourceVersion` and the other system fields are never owned; and on the main
//! resource of a kind with a status subresource nobody owns `status`.
//!
//! The migration from client-side apply is upstream's too: `kubectl apply
//! --server-side` (manager `kubectl`) may take over, without `--force-conflicts`, the
//! fields whose values still match the `last-applied-configuration` annotation, and
//! keeps that annotation up to date when the object has one.
//!
//! Not done: conversion between API versions (every served resource has one).

pub mod fieldpath;
pub mod schema;
pub mod typed;

use serde_json::{json, Map, Value};

use fieldpath::{path_string, Pe, Set};
use schema::{Ctx, Kind};

/// Longest `fieldManager` kube-apiserver accepts.
pub const FIELD_MANAGER_MAX_LENGTH: usize = 128;

/// Update entries kept before the oldest are merged (upstream's DefaultMaxUpdateManagers).
const MAX_UPDATE_MANAGERS: usize = 10;

/// The manager old update entries are merged into.
const ANCIENT_CHANGES: &str = "ancient-changes";

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The configuration is not an object of the resource's kind, or sets managedFields (400).
    #[error("{0}")]
    BadRequest(String),
    /// The configuration does not fit the kind's schema, e.g. a container without a
    /// name (upstream answers 500 with structured-merge-diff's text).
    #[error("{0}")]
    Unfit(String),
    /// Fields other managers own would change (409); the message is upstream's.
    #[error("{message}")]
    Conflicts {
        message: String,
        /// (field path, `conflict with "<manager>"...`) per conflicting field.
        causes: Vec<(String, String)>,
    },
}

/// The two operations managedFields record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One decoded `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: Set,
}

/// What tells managers apart (upstream's manager identifier: everything but the time and
/// the fields, and the API version only for updates).
type Identity = (String, Operation, String, String);

impl Entry {
    fn identity(&self) -> Identity {
        identity(
            &self.manager,
            self.operation,
            &self.api_version,
            &self.subresource,
        )
    }

    /// The manager as conflict messages name it (upstream's `printManager`).
    fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn seconds(&self) -> i64 {
        self.time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp())
    }

    fn encode(&self) -> Value {
        let mut m = Map::new();
        if !self.manager.is_empty() {
            m.insert("manager".into(), json!(self.manager));
        }
        m.insert("operation".into(), json!(self.operation.as_str()));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }
}

fn identity(manager: &str, op: Operation, api_version: &str, subresource: &str) -> Identity {
    let version = match op {
        Operation::Apply => String::new(),
        Operation::Update => api_version.to_string(),
    };
    (manager.to_string(), op, version, subresource.to_string())
}

/// Decodes `metadata.managedFields`; `None` when it is malformed (an unknown operation
/// or fieldsType, unreadable fields). Entries of the same manager are merged.
fn decode(v: Option<&Value>) -> Option<Vec<Entry>> {
    let items = match v {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return None,
    };
    let mut out: Vec<Entry> = Vec::with_capacity(items.len());
    for item in items {
        let m = item.as_object()?;
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let operation = match m.get("operation").and_then(Value::as_str) {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            _ => return None,
        };
        if s("fieldsType") != "FieldsV1" {
            return None;
        }
        let fields = match m.get("fieldsV1") {
            None | Some(Value::Null) => Set::new(),
            Some(f) => Set::from_fields_v1(f)?,
        };
        let entry = Entry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            time: m.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: s("subresource"),
            fields,
        };
        match out.iter_mut().find(|e| e.identity() == entry.identity()) {
            Some(e) => e.fields = e.fields.union(&entry.fields),
            None => out.push(entry),
        }
    }
    Some(out)
}

/// Writes the entries into `obj`'s metadata, sorted as upstream sorts them (operation,
/// time, manager, API version, subresource); none at all leaves no `managedFields`.
fn store(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    cap_update_managers(&mut entries);
    entries.sort_by(|a, b| {
        (
            a.operation,
            a.seconds(),
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                b.seconds(),
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::encode).collect()),
        );
    }
}

/// Merges the oldest update entries into `ancient-changes` until at most
/// [`MAX_UPDATE_MANAGERS`] are left (upstream's capManagersManager).
fn cap_update_managers(entries: &mut Vec<Entry>) {
    let count = |e: &[Entry]| {
        e.iter()
            .filter(|x| x.operation == Operation::Update)
            .count()
    };
    let mut guard = entries.len() * 2;
    while count(entries) > MAX_UPDATE_MANAGERS && guard > 0 {
        guard -= 1;
        let Some(oldest) = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.operation == Operation::Update && e.manager != ANCIENT_CHANGES)
            .min_by(|(_, a), (_, b)| (a.seconds(), a.identity()).cmp(&(b.seconds(), b.identity())))
            .map(|(i, _)| i)
        else {
            return;
        };
        let old = entries.remove(oldest);
        let bucket = identity(ANCIENT_CHANGES, Operation::Update, &old.api_version, "");
        match entries.iter_mut().find(|e| e.identity() == bucket) {
            Some(b) => {
                b.fields = b.fields.union(&old.fields);
                b.time = old.time;
            }
            None => entries.push(Entry {
                manager: ANCIENT_CHANGES.into(),
                subresource: String::new(),
                ..old
            }),
        }
    }
}

/// Fields no manager ever owns (upstream's stripMetaManager).
fn stripped() -> Set {
    let f = |s: &str| Pe::Field(s.to_string());
    let mut set: Set = [vec![f("apiVersion")], vec![f("kind")], vec![f("metadata")]]
        .into_iter()
        .collect();
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        set.insert(vec![f("metadata"), f(m)]);
    }
    set
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// Adds what `zero` has and `v` lacks, at every level both have an object.
fn fill_zero(v: &mut Value, zero: &Value) {
    let (Some(m), Some(z)) = (v.as_object_mut(), zero.as_object()) else {
        return;
    };
    for (k, zv) in z {
        match m.get_mut(k) {
            None => {
                m.insert(k.clone(), zv.clone());
            }
            Some(child) => fill_zero(child, zv),
        }
    }
}

/// Whether a request's managedFields ask to clear them (`[]` or `[{}]`).
fn is_reset(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Array(items)) => match items.as_slice() {
            [] => true,
            [only] => only.as_object().is_some_and(Map::is_empty),
            _ => false,
        },
        _ => false,
    }
}

/// The manager of a request: its `fieldManager`, else what precedes the first `/` of
/// its User-Agent without unprintable characters, at most 128 bytes (upstream's
/// `managerOrUserAgent`; kubectl's User-Agent makes `kubectl`).
pub fn manager_or_user_agent(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    let prefix = user_agent.unwrap_or("").split('/').next().unwrap_or("");
    let mut out = String::new();
    for c in prefix.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > FIELD_MANAGER_MAX_LENGTH {
            break;
        }
        out.push(c);
    }
    out
}

/// Upstream's check of a `fieldManager` parameter: (field, message) when it is refused.
pub fn validate_field_manager(m: &str) -> Option<(String, String)> {
    if m.len() > FIELD_MANAGER_MAX_LENGTH {
        return Some((
            "fieldManager".into(),
            format!("Too long: may not be more than {FIELD_MANAGER_MAX_LENGTH} bytes"),
        ));
    }
    let (i, c) = m.char_indices().find(|(_, c)| c.is_control())?;
    Some((
        "fieldManager".into(),
        format!(
            "Invalid value: {m:?}: invalid character U+{:04X} (at position {i})",
            c as u32
        ),
    ))
}

/// One write's manager and what it writes to.
pub struct Writer<'a> {
    /// The resource's kind and `apiVersion`.
    pub kind: &'a str,
    pub api_version: &'a str,
    pub manager: &'a str,
    /// "" for the main resource, else `status` or `scale`.
    pub subresource: &'a str,
    /// The main resource of a kind with a status subresource: `status` is nobody's.
    pub ignore_status: bool,
    /// The write's time, RFC 3339 in seconds.
    pub now: String,
}

impl Writer<'_> {
    fn ctx(&self) -> Ctx {
        Ctx::Root(Kind::of(self.kind))
    }

    /// An object (the kind's zero value when absent) as kube-apiserver's field manager
    /// sees it: without its managedFields, and with the struct fields Go never omits,
    /// which the stored JSON may lack (a Deployment without `status`). Without them a
    /// first status write would take `status` as a new subtree and own it whole.
    fn as_go_sees(&self, v: Option<&Value>) -> Value {
        let mut out = v.map_or_else(|| json!({}), without_managed_fields);
        fill_zero(&mut out, &schema::zero_object(self.kind));
        out
    }

    fn time(&self) -> Option<String> {
        (self.subresource != "scale").then(|| self.now.clone())
    }

    /// Leaves out what this writer never owns: `status` through the main resource of a
    /// kind with a status subresource, anything but `status` through that subresource
    /// (upstream's reset fields: what the strategy would undo).
    fn filter_set(&self, set: Set) -> Set {
        let status = [Pe::Field("status".into())];
        if self.subresource == "status" {
            set.only_under(&status)
        } else if self.ignore_status {
            set.without_prefix(&status)
        } else {
            set
        }
    }

    fn filter(&self, c: typed::Comparison) -> typed::Comparison {
        let c = c.without(&stripped());
        let status = [Pe::Field("status".into())];
        if self.subresource == "status" {
            c.only_under(&status)
        } else if self.ignore_status {
            c.without_prefix(&status)
        } else {
            c
        }
    }

    /// Records an `Update` by this writer: `new` is the object about to be stored, and
    /// `live` the stored one (`None` for a create). The managedFields `new` carries are
    /// the client's: when they are valid and not empty they are the starting point (a
    /// client may edit them), `[]` or `[{}]` clears them, and anything else, or any
    /// subresource write, starts from the live object's.
    pub fn track_update(&self, live: Option<&Value>, new: &mut Value) {
        let requested = new.pointer("/metadata/managedFields");
        let live_entries = || {
            live.and_then(|l| decode(l.pointer("/metadata/managedFields")))
                .unwrap_or_default()
        };
        let mut entries = if !self.subresource.is_empty() {
            live_entries()
        } else if is_reset(requested) {
            Vec::new()
        } else {
            match decode(requested) {
                Some(e) if !e.is_empty() => e,
                _ => live_entries(),
            }
        };
        let before = self.as_go_sees(live);
        let cmp = self.filter(typed::compare(
            &before,
            &self.as_go_sees(Some(new)),
            self.ctx(),
        ));
        let changed = cmp.changed();
        let lost = changed.union(&cmp.removed);
        for e in &mut entries {
            e.fields = e.fields.difference(&lost);
        }
        if !changed.is_empty() {
            let me = identity(
                self.manager,
                Operation::Update,
                self.api_version,
                self.subresource,
            );
            match entries.iter_mut().find(|e| e.identity() == me) {
                Some(e) => {
                    e.fields = e.fields.union(&changed);
                    e.time = self.time();
                }
                None => entries.push(Entry {
                    manager: self.manager.to_string(),
                    operation: Operation::Update,
                    api_version: self.api_version.to_string(),
                    time: self.time(),
                    subresource: self.subresource.to_string(),
                    fields: changed,
                }),
            }
        }
        store(new, entries);
    }

    /// Applies `config` (the parsed apply patch) to `live` (`None` when the object does
    /// not exist yet) and returns the object to store, its managedFields set.
    pub fn apply(
        &self,
        live: Option<&Value>,
        config: &Value,
        force: bool,
    ) -> Result<Value, ApplyError> {
        let Some(cfg) = config.as_object() else {
            return Err(ApplyError::BadRequest(format!(
                "invalid object type: {}",
                gvk_string("", "")
            )));
        };
        let av = cfg.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = cfg.get("kind").and_then(Value::as_str).unwrap_or("");
        if av != self.api_version || kind != self.kind {
            return Err(ApplyError::BadRequest(format!(
                "invalid object type: {}",
                gvk_string(av, kind)
            )));
        }
        if config
            .pointer("/metadata/managedFields")
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApplyError::BadRequest(
                "metadata.managedFields must be nil".into(),
            ));
        }
        let ctx = self.ctx();
        let applied = typed::field_set(config, ctx, true).map_err(|e| {
            let meta = |f: &str| {
                config
                    .pointer(&format!("/metadata/{f}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            ApplyError::Unfit(format!(
                "failed to create typed patch object ({}/{}; {}): {}",
                meta("namespace"),
                meta("name"),
                gvk_string(av, kind),
                e.0
            ))
        })?;
        let applied = self.filter_set(applied);

        let mut entries = live
            .and_then(|l| decode(l.pointer("/metadata/managedFields")))
            .unwrap_or_default();
        let before = self.as_go_sees(live);
        let mut merged = typed::merge(&before, config, ctx);
        let me = identity(self.manager, Operation::Apply, "", self.subresource);
        let mine = entries.iter().position(|e| e.identity() == me);

        // Fields applied last time and left out now go, unless someone (this applier's
        // new configuration included) still manages them.
        if let Some(last) = mine.map(|i| &entries[i].fields).filter(|l| !l.is_empty()) {
            let mut managed = applied.clone();
            for (i, e) in entries.iter().enumerate() {
                if Some(i) != mine {
                    managed = managed.union(&e.fields);
                }
            }
            let present = typed::field_set(&merged, ctx, false)
                .unwrap_or_default()
                .with_named_parents();
            let gone = present
                .intersection(&last.with_named_parents())
                .difference(&managed.with_named_parents());
            if !gone.is_empty() {
                merged = typed::remove(&merged, &gone, ctx);
            }
        }

        let cmp = self.filter(typed::compare(&before, &merged, ctx));
        let changed = cmp.changed();
        let mut conflicts: Vec<(&Entry, Set)> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != mine)
            .map(|(_, e)| (e, e.fields.intersection(&changed)))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        if !conflicts.is_empty() && !force {
            // kubectl's own server-side apply may take over what its client-side apply
            // set, as long as the values are still those it last applied.
            if self.manager == KUBECTL {
                if let Some(allowed) = live.and_then(|l| allowed_by_last_applied(l, ctx)) {
                    for (_, c) in &mut conflicts {
                        *c = c.difference(&allowed);
                    }
                    conflicts.retain(|(_, c)| !c.is_empty());
                }
            }
            if !conflicts.is_empty() {
                conflicts.sort_by_key(|(e, _)| e.identity());
                return Err(conflict_error(&conflicts));
            }
        }
        for (i, e) in entries.iter_mut().enumerate() {
            if Some(i) != mine {
                e.fields = e.fields.difference(&changed).difference(&cmp.removed);
            }
        }
        let time = if before != merged { self.time() } else { None };
        let fields = applied.difference(&stripped());
        match mine {
            Some(i) => {
                entries[i].fields = fields;
                if time.is_some() {
                    entries[i].time = time;
                }
            }
            None => entries.push(Entry {
                manager: self.manager.to_string(),
                operation: Operation::Apply,
                api_version: self.api_version.to_string(),
                time,
                subresource: self.subresource.to_string(),
                fields,
            }),
        }
        if self.manager == KUBECTL {
            keep_last_applied(live, config, &mut merged);
        }
        store(&mut merged, entries);
        Ok(merged)
    }
}

/// The manager name of `kubectl apply --server-side`, whose applies upstream lets take
/// over from client-side apply.
const KUBECTL: &str = "kubectl";

/// The annotation client-side apply keeps its last configuration in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields of the live object's last-applied configuration that still hold the
/// values it applied (upstream's lastAppliedManager): conflicts on them are allowed.
fn allowed_by_last_applied(live: &Value, ctx: Ctx) -> Option<Set> {
    let text = live
        .get("metadata")?
        .get("annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    let last: Value = serde_json::from_str(text).ok()?;
    let set = typed::field_set(&last, ctx, false).ok()?;
    let differ = typed::compare(&last, &without_managed_fields(live), ctx);
    Some(set.difference(&differ.modified).difference(&differ.removed))
}

/// After kubectl's server-side apply, an object that has a last-applied annotation gets
/// the applied configuration in it, so a later client-side apply sees what this one set
/// (upstream's lastAppliedUpdater).
fn keep_last_applied(live: Option<&Value>, config: &Value, merged: &mut Value) {
    let had = live
        .and_then(|l| l.pointer("/metadata/annotations"))
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty());
    if !had {
        return;
    }
    let mut cfg = config.clone();
    if let Some(a) = cfg
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
    }
    if let Some(a) = merged
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.insert(LAST_APPLIED.into(), Value::String(cfg.to_string()));
    }
}

/// A group/version/kind as Go prints it (`apps/v1, Kind=Deployment`, `/v1, Kind=Pod`).
fn gvk_string(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

/// Upstream's conflict error: the message lists each conflict (one line for a single
/// one, grouped by manager for several), and each conflict is a cause.
fn conflict_error(conflicts: &[(&Entry, Set)]) -> ApplyError {
    let total: usize = conflicts.iter().map(|(_, s)| s.len()).sum();
    let mut causes = Vec::with_capacity(total);
    let mut lines = Vec::new();
    for (e, set) in conflicts {
        let who = e.display();
        lines.push(format!("conflicts with {who}:"));
        for p in set.walk_order() {
            lines.push(format!("- {}", path_string(p)));
            causes.push((path_string(p), format!("conflict with {who}")));
        }
    }
    let message = match causes.as_slice() {
        [(path, why)] => format!("Apply failed with 1 conflict: {why}: {path}"),
        _ => format!("Apply failed with {total} conflicts: {}", lines.join("\n")),
    };
    ApplyError::Conflicts { message, causes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer<'a>(manager: &'a str, kind: &'a str, av: &'a str) -> Writer<'a> {
        Writer {
            kind,
            api_version: av,
            manager,
            subresource: "",
            ignore_status: true,
            now: "2026-01-02T03:04:05Z".into(),
        }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}}}
        })
    }

    fn entries(obj: &Value) -> Vec<Value> {
        obj.pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn create_records_an_update_without_dots_under_go_struct_fields() {
        let mut obj = deployment(1, "nginx");
        obj["metadata"]["labels"] = json!({"app": "web"});
        writer("kubectl-create", "Deployment", "apps/v1").track_update(None, &mut obj);
        let e = entries(&obj);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0],
            json!({
                "manager": "kubectl-create", "operation": "Update", "apiVersion": "apps/v1",
                "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                    "f:spec": {"f:replicas": {}, "f:selector": {},
                        "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                                ".": {}, "f:image": {}, "f:name": {}}}}}}
                }
            })
        );
    }

    #[test]
    fn apply_conflicts_forces_shares_and_prunes() {
        let a = writer("a", "Deployment", "apps/v1");
        let live = a
            .apply(None, &deployment(2, "nginx"), false)
            .expect("create");
        assert_eq!(entries(&live)[0]["operation"], "Apply");
        assert!(entries(&live)[0]["fieldsV1"]["f:metadata"].is_null());

        // Another applier changing replicas conflicts with `a`.
        let b = writer("b", "Deployment", "apps/v1");
        let err = b
            .apply(Some(&live), &deployment(3, "nginx"), false)
            .expect_err("conflict");
        let ApplyError::Conflicts { message, causes } = err else {
            panic!("not a conflict");
        };
        assert_eq!(
            message,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        assert_eq!(
            causes,
            [(
                ".spec.replicas".to_string(),
                "conflict with \"a\"".to_string()
            )]
        );

        // The same values: shared ownership, no conflict.
        let shared = b
            .apply(Some(&live), &deployment(2, "nginx"), false)
            .expect("same values");
        let e = entries(&shared);
        assert_eq!(e.len(), 2);
        assert!(e
            .iter()
            .all(|x| !x["fieldsV1"]["f:spec"]["f:replicas"].is_null()));
        // A no-op apply leaves the new manager without a time, as upstream.
        assert!(e
            .iter()
            .any(|x| x["manager"] == "b" && x.get("time").is_none()));

        // Forced: `b` takes replicas from `a`.
        let forced = b
            .apply(Some(&shared), &deployment(5, "nginx"), true)
            .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 5);
        let e = entries(&forced);
        let of = |m: &str| {
            e.iter()
                .find(|x| x["manager"] == m)
                .cloned()
                .unwrap_or_default()
        };
        assert!(of("a")["fieldsV1"]["f:spec"]["f:replicas"].is_null());
        assert!(!of("b")["fieldsV1"]["f:spec"]["f:replicas"].is_null());

        // `a` leaves replicas out now, but `b` owns them since the forced apply: they stay.
        let mut cfg = deployment(0, "nginx");
        cfg["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        let kept = a.apply(Some(&forced), &cfg, false).expect("re-apply");
        assert_eq!(kept["spec"]["replicas"], 5);
    }

    #[test]
    fn apply_removes_fields_the_applier_alone_dropped() {
        let a = writer("a", "Deployment", "apps/v1");
        let mut cfg = deployment(2, "nginx");
        cfg["metadata"]["labels"] = json!({"x": "1", "y": "2"});
        let live = a.apply(None, &cfg, false).expect("create");
        let mut cfg2 = deployment(2, "nginx");
        cfg2["metadata"]["labels"] = json!({"x": "1"});
        cfg2["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("replicas");
        let out = a.apply(Some(&live), &cfg2, false).expect("re-apply");
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert!(out["spec"].get("replicas").is_none(), "{out}");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
    }

    #[test]
    fn updates_take_ownership_without_conflict() {
        let a = writer("a", "Deployment", "apps/v1");
        let live = a
            .apply(None, &deployment(2, "nginx"), false)
            .expect("create");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(4);
        let s = Writer {
            subresource: "scale",
            ..writer("kubectl", "Deployment", "apps/v1")
        };
        s.track_update(Some(&live), &mut scaled);
        let e = entries(&scaled);
        let scale = e
            .iter()
            .find(|x| x["subresource"] == "scale")
            .expect("scale entry");
        assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        assert!(scale.get("time").is_none());
        let err = a
            .apply(Some(&scaled), &deployment(2, "nginx"), false)
            .expect_err("conflict");
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn kubectl_takes_over_from_client_side_apply() {
        let mut created = deployment(2, "nginx");
        let last = deployment(2, "nginx").to_string();
        created["metadata"]["annotations"] = json!({ LAST_APPLIED: last });
        writer("kubectl-client-side-apply", "Deployment", "apps/v1")
            .track_update(None, &mut created);
        // Another manager gets the conflict...
        let err = writer("other", "Deployment", "apps/v1")
            .apply(Some(&created), &deployment(3, "nginx:2"), false)
            .expect_err("conflict");
        assert!(
            err.to_string().starts_with("Apply failed with 2 conflicts"),
            "{err}"
        );
        // ...kubectl does not, since the values are still the last applied ones.
        let out = writer(KUBECTL, "Deployment", "apps/v1")
            .apply(Some(&created), &deployment(3, "nginx:2"), false)
            .expect("migrates");
        assert_eq!(out["spec"]["replicas"], 3);
        let annotation = out["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        assert_eq!(annotation, Some(deployment(3, "nginx:2")));
        // A value changed since by someone else is still a conflict.
        let mut changed = out.clone();
        changed["spec"]["replicas"] = json!(7);
        writer("kubectl-scale", "Deployment", "apps/v1").track_update(Some(&out), &mut changed);
        let mut csa = changed.clone();
        csa["metadata"]["annotations"][LAST_APPLIED] = json!(deployment(3, "nginx:2").to_string());
        let err = writer(KUBECTL, "Deployment", "apps/v1")
            .apply(Some(&csa), &deployment(4, "nginx:2"), false)
            .expect_err("conflict");
        assert!(err.to_string().contains("kubectl-scale"), "{err}");
    }

    #[test]
    fn status_writes_own_fields_of_status_not_status() {
        let a = writer("a", "Deployment", "apps/v1");
        let live = a
            .apply(None, &deployment(2, "nginx"), false)
            .expect("create");
        let mut live = live;
        if let Some(o) = live.as_object_mut() {
            o.remove("status");
        }
        let mut new = live.clone();
        new["status"] = json!({"replicas": 2});
        let s = Writer {
            subresource: "status",
            ignore_status: false,
            ..writer("ctrl", "Deployment", "apps/v1")
        };
        s.track_update(Some(&live), &mut new);
        let e = entries(&new);
        let st = e.iter().find(|x| x["manager"] == "ctrl").expect("entry");
        assert_eq!(st["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
        assert_eq!(st["subresource"], "status");
    }

    #[test]
    fn reset_and_user_agent_managers() {
        let mut obj = deployment(1, "nginx");
        writer("a", "Deployment", "apps/v1").track_update(None, &mut obj);
        let live = obj.clone();
        obj["metadata"]["managedFields"] = json!([]);
        writer("b", "Deployment", "apps/v1").track_update(Some(&live), &mut obj);
        assert!(obj["metadata"].get("managedFields").is_none());
        assert_eq!(
            manager_or_user_agent(None, Some("kubectl/v1.32.4 (linux/amd64) kubernetes/abc")),
            "kubectl"
        );
        assert_eq!(manager_or_user_agent(Some("x"), Some("kubectl/v1")), "x");
        assert_eq!(manager_or_user_agent(None, None), "");
        assert!(validate_field_manager(&"m".repeat(129)).is_some());
        assert!(validate_field_manager("ok").is_none());
    }

    #[test]
    fn many_update_managers_are_capped() {
        let mut obj = deployment(1, "nginx");
        obj["metadata"]["annotations"] = json!({});
        let mut live: Option<Value> = None;
        for i in 0..12 {
            let name = format!("m{i:02}");
            let mut w = writer(&name, "Deployment", "apps/v1");
            w.now = format!("2026-01-02T03:04:{:02}Z", i);
            obj["metadata"]["annotations"][&name] = json!("x");
            w.track_update(live.as_ref(), &mut obj);
            live = Some(obj.clone());
        }
        let e = entries(&obj);
        assert_eq!(e.len(), 10, "{e:?}");
        assert!(e.iter().any(|x| x["manager"] == ANCIENT_CHANGES));
    }
}
