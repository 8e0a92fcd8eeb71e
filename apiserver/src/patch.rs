//! PATCH bodies as kube-apiserver applies them, over `serde_json::Value`.
//!
//! Four media types reach the PATCH verb (see [`PatchType`]):
//!
//! - JSON patch (RFC 6902): a list of operations, applied by the `json-patch` crate. Error
//!   texts follow evanphx/json-patch v4 (`patch.go`), which kube-apiserver uses, because
//!   clients and e2e tests match on them (e.g. `testing value /x failed: test failed`).
//! - JSON merge patch (RFC 7386): objects merge, `null` deletes, everything else replaces.
//! - Strategic merge patch: merge patch plus per-field list semantics taken from the Go struct
//!   tags `patchStrategy`/`patchMergeKey` of k8s.io/api, and the `$patch`, `$retainKeys`,
//!   `$setElementOrder/…` and `$deleteFromPrimitiveList/…` directives. The algorithm mirrors
//!   k8s.io/apimachinery `pkg/util/strategicpatch/patch.go` (`mergeMap`, `mergeSlice`,
//!   `normalizeElementOrder`), including the order in which merged list items come out, so a
//!   `kubectl apply`/`kubectl patch` produces the same object here as against kube-apiserver.
//! - Apply (server-side apply) is not a patch of this kind: it is the field manager's
//!   (`crate::managed`), which owns fields and detects conflicts.
//!
//! Deliberate differences from `patch.go`, all where upstream's result is an accident:
//!
//! - kube-apiserver decodes the patched map into the typed Go struct, which silently drops
//!   stray directive keys and `null`s inside newly added values. There is no typed decode
//!   here, so values taken from the patch are cleaned on the way in (see `absent_value`).
//! - `$patch: replace` on a map the object lacks yields the patch's map (upstream drops it).
//! - `$patch: merge` in a map merges (upstream answers "unknown patch type"); in a list it is
//!   rejected as upstream does.
//! - `$deleteFromPrimitiveList` runs after the other keys of its map (upstream: map order).
//! - `$setElementOrder` over lists that are empty on both sides is a no-op (upstream errors).

use serde_json::{Map, Value};
use std::cmp::Ordering;
use thiserror::Error;

/// Patch media types kube-apiserver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type for a `Content-Type` header value; parameters after `;` (charset…) and
    /// letter case are ignored, as media types are case-insensitive.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let media = ct.split(';').next().unwrap_or("").trim();
        [
            PatchType::Json,
            PatchType::Merge,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ]
        .into_iter()
        .find(|t| t.content_type().eq_ignore_ascii_case(media))
    }

    /// The media type this patch type is sent as.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

/// kube-apiserver refuses JSON patches with more operations than this
/// (kubernetes staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Why a patch could not be applied. Texts match kube-apiserver's where it has one; the HTTP
/// status it answers with is [`PatchError::status_code`].
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PatchError {
    /// The JSON patch body is not a list of RFC 6902 operations (400).
    #[error("{0}")]
    InvalidJsonPatch(String),
    /// The JSON patch has more than [`MAX_JSON_PATCH_OPERATIONS`] operations (413).
    #[error("The allowed maximum operations in a JSON patch is {max}, got {got}")]
    TooManyJsonPatchOperations {
        /// The limit.
        max: usize,
        /// Operations in the request.
        got: usize,
    },
    /// A `test` operation did not match (422).
    #[error("testing value {path} failed: test failed")]
    JsonPatchTestFailed {
        /// The operation's `path`.
        path: String,
    },
    /// Another JSON patch operation could not be applied (422); the text is evanphx/json-patch's
    /// for the same failure, e.g. `replace operation does not apply: doc is missing key: /x: missing value`.
    #[error("{0}")]
    JsonPatchFailed(String),
    /// A merge patch body that is not a JSON object (400; evanphx `ErrBadJSONPatch`).
    #[error("Invalid JSON Patch")]
    InvalidMergePatch,
    /// A strategic merge patch body that is not a JSON object (400; the Go JSON decoder's text).
    #[error("json: cannot unmarshal {0} into Go value of type map[string]interface {{}}")]
    InvalidStrategicMergePatch(&'static str),
    /// A `$deleteFromPrimitiveList` key without a field name (400).
    #[error("invalid patch format of primitive list")]
    BadPatchFormatForPrimitiveList,
    /// A `$retainKeys` value that is not a list, or a patch setting a key it does not retain (400).
    #[error("invalid patch format of retainKeys")]
    BadPatchFormatForRetainKeys,
    /// A `$setElementOrder` key without a field name (400).
    #[error("invalid patch format of setElementOrder list")]
    BadPatchFormatForSetElementOrderList,
    /// A list whose items are lists (422).
    #[error("lists of lists are not supported")]
    NoListOfLists,
    /// A list item (in the object or the patch) of a merge-by-key list lacks the key (500).
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey {
        /// The item, in Go's `%v` form.
        map: String,
        /// The field's merge key.
        key: String,
    },
    /// A value has the wrong JSON type for where it is used (500).
    #[error("expected a {expected}, but received a {actual}")]
    BadArgType {
        /// Go type name expected.
        expected: &'static str,
        /// Go type name found.
        actual: &'static str,
    },
    /// A `$patch` directive with an unknown value (500).
    #[error("unknown patch type: {directive} in map: {map}")]
    BadPatchType {
        /// The directive's value, in Go's `%s` form.
        directive: String,
        /// The map holding it, in Go's `%v` form.
        map: String,
    },
    /// `$patch: merge` inside a list, which kube-apiserver does not implement (500).
    #[error("merging lists cannot yet be specified in the patch")]
    MergeDirectiveInList,
    /// A list mixes item types, e.g. strings and objects (500).
    #[error("list element types are not identical: {0}")]
    ListElementTypesDiffer(String),
    /// A list of objects declared as a primitive set (500).
    #[error("cannot merge lists without merge key for {0}")]
    NoMergeKeyForList(String),
    /// The patch list's items are not in the `$setElementOrder` list's relative order (500).
    #[error("The order in patch list:\n{patch}\n doesn't match $setElementOrder list:\n{order}\n")]
    SetElementOrderMismatch {
        /// The patch list, in Go's `%v` form.
        patch: String,
        /// The order list, in Go's `%v` form.
        order: String,
    },
}

impl PatchError {
    /// The HTTP status kube-apiserver answers this error with: 400 for malformed bodies, 413 for
    /// too many JSON patch operations, 422 when the patch does not apply, and 500 for the
    /// strategic merge errors it passes through unclassified (`interpretStrategicMergePatchError`
    /// in the apiserver's patch handler).
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::InvalidJsonPatch(_)
            | PatchError::InvalidMergePatch
            | PatchError::InvalidStrategicMergePatch(_)
            | PatchError::BadPatchFormatForPrimitiveList
            | PatchError::BadPatchFormatForRetainKeys
            | PatchError::BadPatchFormatForSetElementOrderList => 400,
            PatchError::TooManyJsonPatchOperations { .. } => 413,
            PatchError::JsonPatchTestFailed { .. }
            | PatchError::JsonPatchFailed(_)
            | PatchError::NoListOfLists => 422,
            PatchError::NoMergeKey { .. }
            | PatchError::BadArgType { .. }
            | PatchError::BadPatchType { .. }
            | PatchError::MergeDirectiveInList
            | PatchError::ListElementTypesDiffer(_)
            | PatchError::NoMergeKeyForList(_)
            | PatchError::SetElementOrderMismatch { .. } => 500,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON patch (RFC 6902)
// ---------------------------------------------------------------------------------------------

/// Applies an RFC 6902 JSON patch (the raw request body) to `doc`. Operations apply in order;
/// on failure nothing of the patch is kept (the input is never modified).
pub fn json_patch(doc: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_slice(patch).map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyJsonPatchOperations {
            max: MAX_JSON_PATCH_OPERATIONS,
            got: ops.0.len(),
        });
    }
    let mut out = doc.clone();
    for op in &ops.0 {
        // One operation at a time, so that on failure `out` is the document the failing
        // operation saw, which is what the Go-compatible error text is derived from.
        if json_patch::patch(&mut out, std::slice::from_ref(op)).is_err() {
            return Err(json_patch_error(&out, op));
        }
    }
    Ok(out)
}

/// evanphx/json-patch's text for `op` failing on `doc` (patch.go, `add`/`remove`/…/`test`).
fn json_patch_error(doc: &Value, op: &json_patch::PatchOperation) -> PatchError {
    use json_patch::PatchOperation as Op;
    let parent_exists = |path: &str| -> bool {
        match path.rfind('/') {
            Some(i) => matches!(
                doc.pointer(&path[..i]),
                Some(Value::Object(_) | Value::Array(_))
            ),
            None => false,
        }
    };
    let last_token = |path: &str| -> String {
        path.rsplit('/')
            .next()
            .unwrap_or("")
            .replace("~1", "/")
            .replace("~0", "~")
    };
    // An existing parent that is an array means the index was the problem.
    let bad_index = |path: &str| -> Option<String> {
        let i = path.rfind('/')?;
        match doc.pointer(&path[..i]) {
            Some(Value::Array(_)) => Some(format!(
                "Unable to access invalid index: {}: invalid index referenced",
                last_token(path)
            )),
            _ => None,
        }
    };
    let msg = match op {
        Op::Test(t) => {
            return PatchError::JsonPatchTestFailed {
                path: t.path.to_string(),
            }
        }
        Op::Add(a) => {
            let path = a.path.to_string();
            match bad_index(&path) {
                Some(why) => format!("error in add for path: '{path}': {why}"),
                None => format!(
                    "add operation does not apply: doc is missing path: \"{path}\": missing value"
                ),
            }
        }
        Op::Remove(r) => {
            let path = r.path.to_string();
            if !parent_exists(&path) {
                format!(
                    "remove operation does not apply: doc is missing path: \"{path}\": missing value"
                )
            } else if let Some(why) = bad_index(&path) {
                format!("error in remove for path: '{path}': {why}")
            } else {
                format!(
                    "error in remove for path: '{path}': Unable to remove nonexistent key: {}: missing value",
                    last_token(&path)
                )
            }
        }
        Op::Replace(r) => {
            let path = r.path.to_string();
            if parent_exists(&path) {
                format!(
                    "replace operation does not apply: doc is missing key: {path}: missing value"
                )
            } else {
                format!(
                    "replace operation does not apply: doc is missing path: {path}: missing value"
                )
            }
        }
        Op::Move(m) => {
            let (from, path) = (m.from.to_string(), m.path.to_string());
            if doc.pointer(&from).is_none() {
                format!(
                    "move operation does not apply: doc is missing from path: {from}: missing value"
                )
            } else {
                format!("move operation does not apply: doc is missing destination path: {path}: missing value")
            }
        }
        Op::Copy(c) => {
            let (from, path) = (c.from.to_string(), c.path.to_string());
            if doc.pointer(&from).is_none() {
                format!(
                    "copy operation does not apply: doc is missing from path: {from}: missing value"
                )
            } else {
                format!("copy operation does not apply: doc is missing destination path: {path}: missing value")
            }
        }
    };
    PatchError::JsonPatchFailed(msg)
}

// ---------------------------------------------------------------------------------------------
// JSON merge patch (RFC 7386)
// ---------------------------------------------------------------------------------------------

/// Applies an RFC 7386 merge patch. The patch must be an object: kube-apiserver (via
/// evanphx/json-patch) answers 400 `Invalid JSON Patch` to anything else that could not
/// produce a Kubernetes object.
pub fn merge_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::InvalidMergePatch);
    }
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------------------------

/// Applies a strategic merge patch to `doc`, an object of Kind `kind`.
///
/// List fields merge as declared by k8s.io/api's struct tags for that kind (see the table in
/// `field_meta`); fields it does not know behave as in a merge patch (objects merge, lists
/// are replaced), which is also what kube-apiserver does for fields without tags. A `null`
/// patch changes nothing, like kube-apiserver's decode of `null` into an empty map.
///
/// kube-apiserver rejects strategic merge patches for custom resources with 415 (they have no
/// struct tags); that check belongs to the caller, which knows whether a resource is built in.
pub fn strategic_merge_patch(doc: &Value, patch: &Value, kind: &str) -> Result<Value, PatchError> {
    let patch = match patch {
        Value::Object(p) => p.clone(),
        Value::Null => return Ok(doc.clone()),
        other => return Err(PatchError::InvalidStrategicMergePatch(go_json_kind(other))),
    };
    let original = match doc {
        Value::Object(o) => o.clone(),
        // A live object is always a map; anything else is treated as absent.
        _ => Map::new(),
    };
    merge_map(original, patch, Schema::Root(KindClass::of(kind))).map(Value::Object)
}

const DIRECTIVE_MARKER: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder";

// --- patch metadata ---------------------------------------------------------------------------
//
// Facts from k8s.io/api struct tags (kubernetes/api core/v1/types.go, apps/v1/types.go,
// batch/v1/types.go) and k8s.io/apimachinery pkg/apis/meta/v1/types.go. Only fields with a
// `patchStrategy` tag, and the struct fields leading to them, are listed. Lists not listed
// (tolerations, Node spec.taints, containerStatuses, Endpoints subsets, EndpointSlice
// endpoints, Ingress rules…) have no strategy upstream and are replaced whole.
//
// `retainKeys` strategies (Deployment spec.strategy, PodSpec volumes and resourceClaims items)
// only tell clients to send `$retainKeys`; the server honours that directive wherever it
// appears, so they need no entry here.

/// Kinds grouped by where their pod template and status conditions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KindClass {
    Pod,
    PodTemplate,
    Deployment,
    /// ReplicaSet, StatefulSet, DaemonSet, ReplicationController, Job: `spec.template`.
    Workload,
    CronJob,
    Service,
    Node,
    ServiceAccount,
    /// Namespace, PersistentVolumeClaim: only `status.conditions`.
    ConditionsOnly,
    /// ConfigMap, Secret, Endpoints, Event, Lease, EndpointSlice, Ingress, …: only metadata.
    Other,
}

impl KindClass {
    fn of(kind: &str) -> KindClass {
        match kind {
            "Pod" => KindClass::Pod,
            "PodTemplate" => KindClass::PodTemplate,
            "Deployment" => KindClass::Deployment,
            "ReplicaSet" | "StatefulSet" | "DaemonSet" | "ReplicationController" | "Job" => {
                KindClass::Workload
            }
            "CronJob" => KindClass::CronJob,
            "Service" => KindClass::Service,
            "Node" => KindClass::Node,
            "ServiceAccount" => KindClass::ServiceAccount,
            "Namespace" | "PersistentVolumeClaim" => KindClass::ConditionsOnly,
            _ => KindClass::Other,
        }
    }
}

/// The Go struct a JSON object corresponds to, as far as patch metadata goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    /// A struct with no strategic fields below it (or one we know nothing about).
    Plain,
    Root(KindClass),
    ObjectMeta,
    /// Deployment/ReplicaSet/StatefulSet/DaemonSet/ReplicationController/Job spec.
    WorkloadSpec,
    CronJobSpec,
    /// CronJob `spec.jobTemplate`.
    JobTemplateSpec,
    PodTemplateSpec,
    PodSpec,
    Container,
    PodStatus,
    /// Any status whose only strategic field is `conditions` (merge key `type`).
    ConditionsStatus,
    ServiceSpec,
    NodeSpec,
    NodeStatus,
}

/// How a list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListStrategy {
    /// No `patchStrategy`: the patch's list replaces the object's.
    Replace,
    /// `patchStrategy:"merge"` with `patchMergeKey`: items are matched by that key.
    MergeByKey(&'static str),
    /// `patchStrategy:"merge"` on a list of primitives: a set union.
    Set,
}

#[derive(Clone, Copy, Debug)]
struct FieldMeta {
    /// Strategy when the field is a list.
    list: ListStrategy,
    /// Schema of the field's value, or of its items when it is a list.
    schema: Schema,
}

impl FieldMeta {
    const PLAIN: FieldMeta = FieldMeta {
        list: ListStrategy::Replace,
        schema: Schema::Plain,
    };

    fn merge_key(self) -> Option<&'static str> {
        match self.list {
            ListStrategy::MergeByKey(k) => Some(k),
            _ => None,
        }
    }

    fn merges(self) -> bool {
        self.list != ListStrategy::Replace
    }
}

fn child(schema: Schema) -> FieldMeta {
    FieldMeta {
        list: ListStrategy::Replace,
        schema,
    }
}

fn by_key(key: &'static str, schema: Schema) -> FieldMeta {
    FieldMeta {
        list: ListStrategy::MergeByKey(key),
        schema,
    }
}

const SET: FieldMeta = FieldMeta {
    list: ListStrategy::Set,
    schema: Schema::Plain,
};

fn field_meta(schema: Schema, field: &str) -> FieldMeta {
    use KindClass as K;
    use Schema as S;
    match (schema, field) {
        (S::Root(_), "metadata") => child(S::ObjectMeta),
        (S::Root(K::Pod), "spec") => child(S::PodSpec),
        (S::Root(K::Pod), "status") => child(S::PodStatus),
        (S::Root(K::PodTemplate), "template") => child(S::PodTemplateSpec),
        (S::Root(K::Deployment | K::Workload), "spec") => child(S::WorkloadSpec),
        (S::Root(K::CronJob), "spec") => child(S::CronJobSpec),
        (S::Root(K::Service), "spec") => child(S::ServiceSpec),
        (S::Root(K::Node), "spec") => child(S::NodeSpec),
        (S::Root(K::Node), "status") => child(S::NodeStatus),
        (
            S::Root(K::Deployment | K::Workload | K::Service | K::ConditionsOnly | K::CronJob),
            "status",
        ) => {
            // CronJobStatus has no conditions; the entry is harmless there.
            child(S::ConditionsStatus)
        }
        (S::Root(K::ServiceAccount), "secrets") => by_key("name", S::Plain),

        (S::ObjectMeta, "finalizers") => SET,
        (S::ObjectMeta, "ownerReferences") => by_key("uid", S::Plain),

        (S::WorkloadSpec, "template") => child(S::PodTemplateSpec),
        (S::CronJobSpec, "jobTemplate") => child(S::JobTemplateSpec),
        (S::JobTemplateSpec, "metadata") => child(S::ObjectMeta),
        (S::JobTemplateSpec, "spec") => child(S::WorkloadSpec),
        (S::PodTemplateSpec, "metadata") => child(S::ObjectMeta),
        (S::PodTemplateSpec, "spec") => child(S::PodSpec),

        (S::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            by_key("name", S::Container)
        }
        (S::PodSpec, "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims") => {
            by_key("name", S::Plain)
        }
        (S::PodSpec, "hostAliases") => by_key("ip", S::Plain),
        (S::PodSpec, "topologySpreadConstraints") => by_key("topologyKey", S::Plain),

        // EphemeralContainer inlines EphemeralContainerCommon, with the same tags.
        (S::Container, "ports") => by_key("containerPort", S::Plain),
        (S::Container, "env") => by_key("name", S::Plain),
        (S::Container, "volumeMounts") => by_key("mountPath", S::Plain),
        (S::Container, "volumeDevices") => by_key("devicePath", S::Plain),

        (S::PodStatus | S::ConditionsStatus | S::NodeStatus, "conditions") => {
            by_key("type", S::Plain)
        }
        (S::PodStatus, "hostIPs" | "podIPs") => by_key("ip", S::Plain),
        (S::PodStatus, "resourceClaimStatuses") => by_key("name", S::Plain),
        (S::NodeStatus, "addresses") => by_key("type", S::Plain),

        // Upstream's key is `port` alone, though (port, protocol) is what is unique.
        (S::ServiceSpec, "ports") => by_key("port", S::Plain),
        (S::NodeSpec, "podCIDRs") => SET,

        _ => FieldMeta::PLAIN,
    }
}

// --- merging ----------------------------------------------------------------------------------

/// Merges `patch` into `original` (patch.go `mergeMap`).
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: Schema,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.remove(DIRECTIVE_MARKER) {
        match directive.as_str() {
            // The patch's map is the result; it may itself hold directives, which are
            // interpreted against nothing.
            Some("replace") => return merge_map(Map::new(), patch, schema),
            // Upstream yields an empty map, not a removed key (its test "delete map from
            // nested map"); `null` is the way to remove the key.
            Some("delete") => return Ok(Map::new()),
            // Upstream rejects `$patch: merge` in a map (it is documented for struct tags
            // only); merging is what it means, and it is the default, so accept it.
            Some("merge") => {}
            _ => {
                patch.insert(DIRECTIVE_MARKER.to_owned(), directive.clone());
                return Err(PatchError::BadPatchType {
                    directive: go_fmt_s(&directive),
                    map: go_fmt(&Value::Object(patch)),
                });
            }
        }
    }

    apply_retain_keys(&mut original, &mut patch)?;
    apply_set_element_order(&mut original, &mut patch, schema)?;

    // Deletions from primitive lists run after everything else so the result does not depend
    // on key order (Go iterates the map randomly; clients never put a value in both lists).
    let mut delete_lists = Vec::new();
    for (key, patch_value) in patch {
        if key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            let field = extract_key(&key, DELETE_FROM_PRIMITIVE_LIST_PREFIX)
                .ok_or(PatchError::BadPatchFormatForPrimitiveList)?;
            delete_lists.push((field.to_owned(), patch_value));
            continue;
        }
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let meta = field_meta(schema, &key);
        let merged = match original.remove(&key) {
            None => absent_value(patch_value, meta)?,
            Some(original_value) => merge_value(original_value, patch_value, meta)?,
        };
        if let Some(v) = merged {
            original.insert(key, v);
        }
    }

    for (field, patch_value) in delete_lists {
        // Upstream treats the null as for any key: the list itself goes.
        if patch_value.is_null() {
            original.remove(&field);
            continue;
        }
        let Some(Value::Array(current)) = original.get_mut(&field) else {
            // Absent, or not a list: a type mismatch upstream skips silently.
            continue;
        };
        let Value::Array(to_delete) = patch_value else {
            continue;
        };
        let meta = field_meta(schema, &field);
        let current_items = std::mem::take(current);
        let merged = merge_list(current_items, to_delete, meta, &field, true)?;
        original.insert(field, Value::Array(merged));
    }
    Ok(original)
}

/// The merge of a patch value onto an existing one (the body of `mergeMap`'s loop).
fn merge_value(
    original: Value,
    patch: Value,
    meta: FieldMeta,
) -> Result<Option<Value>, PatchError> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => {
            Ok(Some(Value::Object(merge_map(o, p, meta.schema)?)))
        }
        (Value::Array(o), Value::Array(p)) => {
            if meta.merges() {
                Ok(Some(Value::Array(merge_list(o, p, meta, "", false)?)))
            } else {
                absent_value(Value::Array(p), meta)
            }
        }
        // Same or different scalar types, or a type change: the patch value wins.
        (_, p) => absent_value(p, meta),
    }
}

/// A patch value for a field the object does not have (or has with another type): the value
/// itself, with its directives interpreted against nothing and its nulls dropped. `None` when
/// the value is a `$patch: delete` map, which leaves the field absent.
fn absent_value(patch: Value, meta: FieldMeta) -> Result<Option<Value>, PatchError> {
    match patch {
        Value::Object(p) => {
            if p.get(DIRECTIVE_MARKER).and_then(Value::as_str) == Some("delete") {
                return Ok(None);
            }
            Ok(Some(Value::Object(merge_map(Map::new(), p, meta.schema)?)))
        }
        Value::Array(items) => {
            if meta.merges() {
                return Ok(Some(Value::Array(merge_list(
                    Vec::new(),
                    items,
                    meta,
                    "",
                    false,
                )?)));
            }
            // A replaced list: items that are directives (e.g. `$patch: replace` markers) go,
            // as upstream's `removeDirectives` does; the rest are cleaned.
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Object(m) if m.contains_key(DIRECTIVE_MARKER) => {}
                    Value::Object(m) => {
                        out.push(Value::Object(merge_map(Map::new(), m, meta.schema)?))
                    }
                    other => out.push(other),
                }
            }
            Ok(Some(Value::Array(out)))
        }
        other => Ok(Some(other)),
    }
}

/// `$retainKeys`: drop every key of `original` not listed (patch.go `applyRetainKeysDirective`).
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS_DIRECTIVE) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(PatchError::BadPatchFormatForRetainKeys);
    };
    let retained = |k: &str| retain.iter().any(|v| v.as_str() == Some(k));
    // A patch may not set what it asks to clear.
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
            || k.starts_with(SET_ELEMENT_ORDER_PREFIX)
        {
            continue;
        }
        if !retained(k) {
            return Err(PatchError::BadPatchFormatForRetainKeys);
        }
    }
    original.retain(|k, _| retained(k));
    Ok(())
}

/// `$setElementOrder/<field>`: merge that field's list now and order the result by the
/// directive (patch.go `mergePatchIntoOriginal`). The field is removed from `patch` so the
/// main loop does not merge it again.
fn apply_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Schema,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER_PREFIX))
        .cloned()
        .collect();
    for key in keys {
        let order = match patch.remove(&key) {
            Some(Value::Array(order)) => order,
            Some(other) => return Err(bad_arg_type("[]interface {}", &other)),
            None => continue,
        };
        let field = extract_key(&key, SET_ELEMENT_ORDER_PREFIX)
            .ok_or(PatchError::BadPatchFormatForSetElementOrderList)?
            .to_owned();
        let original_list = match original.remove(&field) {
            None => None,
            Some(Value::Array(l)) => Some(l),
            Some(other) => return Err(bad_arg_type("[]interface {}", &other)),
        };
        let patch_list = match patch.remove(&field) {
            None => None,
            Some(Value::Array(l)) => Some(l),
            Some(other) => return Err(bad_arg_type("[]interface {}", &other)),
        };
        let meta = field_meta(schema, &field);
        let merge_key = meta.merge_key();
        validate_patch_with_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;

        let server_order = original_list.clone().unwrap_or_default();
        let merged = match (original_list, patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => match absent_value(Value::Array(p), meta)? {
                Some(Value::Array(l)) => l,
                _ => Vec::new(),
            },
            (Some(o), Some(p)) => match merge_value(Value::Array(o), Value::Array(p), meta)? {
                Some(Value::Array(l)) => l,
                _ => Vec::new(),
            },
            (None, None) => continue,
        };
        let (in_order, server_only) = partition(merged, &order, merge_key)?;
        let sorted =
            normalize_element_order(in_order, server_only, &order, &server_order, merge_key)?;
        original.insert(field, Value::Array(sorted));
    }
    Ok(())
}

/// Checks that the patch list's items (deletions and directive items aside) appear in the
/// `$setElementOrder` list in the same relative order (patch.go `validatePatchWithSetOrderList`).
fn validate_patch_with_order(
    patch: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let mut items = Vec::with_capacity(patch.len());
    for v in patch {
        if merge_key.is_some() {
            let Value::Object(m) = v else {
                return Err(bad_arg_type("map[string]interface {}", v));
            };
            if m.get(DIRECTIVE_MARKER).and_then(Value::as_str) == Some("delete") {
                continue;
            }
        }
        items.push(v);
    }
    let (mut pi, mut oi) = (0, 0);
    while pi < items.len() && oi < order.len() {
        if matches!(items[pi], Value::Object(m) if m.contains_key(DIRECTIVE_MARKER)) {
            pi += 1;
            continue;
        }
        if merge_key_equal(items[pi], &order[oi], merge_key)? {
            pi += 1;
        }
        oi += 1;
    }
    if pi < items.len() {
        return Err(PatchError::SetElementOrderMismatch {
            patch: go_fmt(&Value::Array(patch.to_vec())),
            order: go_fmt(&Value::Array(order.to_vec())),
        });
    }
    Ok(())
}

/// Whether two list items are the same item: by merge key for maps, by value otherwise.
fn merge_key_equal(
    left: &Value,
    right: &Value,
    merge_key: Option<&str>,
) -> Result<bool, PatchError> {
    let Some(key) = merge_key else {
        return Ok(go_eq(left, right));
    };
    Ok(go_eq(key_value(left, key)?, key_value(right, key)?))
}

/// An item's merge key value; upstream errors when the item is no map or lacks the key.
fn key_value<'a>(item: &'a Value, key: &str) -> Result<&'a Value, PatchError> {
    let Value::Object(m) = item else {
        return Err(bad_arg_type("map[string]interface {}", item));
    };
    m.get(key).ok_or_else(|| no_merge_key(item, key))
}

/// The Go type of list items, which must all agree (patch.go `sliceElementType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ItemKind {
    Map,
    Scalar(&'static str),
}

fn item_kind(lists: &[&[Value]]) -> Result<Option<ItemKind>, PatchError> {
    let mut kind = None;
    for v in lists.iter().flat_map(|l| l.iter()) {
        let this = match v {
            Value::Array(_) => return Err(PatchError::NoListOfLists),
            Value::Object(_) => ItemKind::Map,
            other => ItemKind::Scalar(go_type(other)),
        };
        match kind {
            None => kind = Some(this),
            Some(k) if k == this => {}
            Some(_) => {
                let all: Vec<Value> = lists.iter().map(|l| Value::Array(l.to_vec())).collect();
                return Err(PatchError::ListElementTypesDiffer(go_fmt(&Value::Array(
                    all,
                ))));
            }
        }
    }
    Ok(kind)
}

/// Merges a list with a merge strategy (patch.go `mergeSlice`). With `is_delete` the patch is a
/// `$deleteFromPrimitiveList` list whose values are removed. `field` names the list in errors.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    meta: FieldMeta,
    field: &str,
    is_delete: bool,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let Some(kind) = item_kind(&[&original, &patch])? else {
        return Ok(original);
    };
    if let ItemKind::Scalar(_) = kind {
        if is_delete {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.iter().any(|d| go_eq(v, d)))
                .collect());
        }
        // A set: duplicates (even in the object) collapse, like upstream's deduplicateScalars.
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch.iter()) {
            if !merged.iter().any(|m| go_eq(m, v)) {
                merged.push(v.clone());
            }
        }
        let (in_patch, server_only) = partition(merged, &patch, None)?;
        return normalize_element_order(in_patch, server_only, &patch, &original, None);
    }

    let Some(key) = meta.merge_key() else {
        return Err(PatchError::NoMergeKeyForList(field.to_owned()));
    };

    // Directive items first: deletions by key, and `$patch: replace` which makes the other
    // patch items the whole list (patch.go `mergeSliceWithSpecialElements`).
    let mut original = original;
    let mut items = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Value::Object(mut m) = item else {
            // Unreachable: item_kind saw only maps.
            return Err(bad_arg_type("map[string]interface {}", &item));
        };
        match m.remove(DIRECTIVE_MARKER) {
            None => items.push(m),
            Some(directive) => match directive.as_str() {
                Some("delete") => {
                    let Some(value) = m.get(key) else {
                        m.insert(DIRECTIVE_MARKER.to_owned(), directive);
                        return Err(no_merge_key(&Value::Object(m), key));
                    };
                    let mut kept = Vec::with_capacity(original.len());
                    for o in original {
                        if !go_eq(key_value(&o, key)?, value) {
                            kept.push(o);
                        }
                    }
                    original = kept;
                }
                Some("replace") => replace = true,
                Some("merge") => return Err(PatchError::MergeDirectiveInList),
                _ => {
                    m.insert(DIRECTIVE_MARKER.to_owned(), directive.clone());
                    return Err(PatchError::BadPatchType {
                        directive: go_fmt_s(&directive),
                        map: go_fmt(&Value::Object(m)),
                    });
                }
            },
        }
    }
    if replace {
        let mut out = Vec::with_capacity(items.len());
        for m in items {
            out.push(Value::Object(merge_map(Map::new(), m, meta.schema)?));
        }
        return Ok(out);
    }

    let server_order = original.clone();
    let mut merged = original;
    let mut patch_order = Vec::with_capacity(items.len());
    for m in items {
        let value = m
            .get(key)
            .cloned()
            .ok_or_else(|| no_merge_key(&Value::Object(m.clone()), key))?;
        patch_order.push(Value::Object(Map::from_iter([(
            key.to_owned(),
            value.clone(),
        )])));
        let mut found = None;
        for (i, o) in merged.iter().enumerate() {
            if go_eq(key_value(o, key)?, &value) {
                found = Some(i);
                break;
            }
        }
        match found {
            Some(i) => {
                let Value::Object(current) = std::mem::take(&mut merged[i]) else {
                    return Err(bad_arg_type("map[string]interface {}", &merged[i]));
                };
                merged[i] = Value::Object(merge_map(current, m, meta.schema)?);
            }
            None => merged.push(Value::Object(merge_map(Map::new(), m, meta.schema)?)),
        }
    }
    let (in_patch, server_only) = partition(merged, &patch_order, Some(key))?;
    normalize_element_order(
        in_patch,
        server_only,
        &patch_order,
        &server_order,
        Some(key),
    )
}

/// Splits `items` into those present in `by` and the rest, keeping their order.
fn partition(
    items: Vec<Value>,
    by: &[Value],
    merge_key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for item in items {
        if index_of(by, &item, merge_key)?.is_some() {
            present.push(item);
        } else {
            absent.push(item);
        }
    }
    Ok((present, absent))
}

/// Position of `item` in `list`, by merge key for maps. Items of `list` without the key never
/// match, as in upstream's `index`; `item` itself must have it.
fn index_of(
    list: &[Value],
    item: &Value,
    merge_key: Option<&str>,
) -> Result<Option<usize>, PatchError> {
    match merge_key {
        None => Ok(list.iter().position(|v| go_eq(v, item))),
        Some(key) => {
            let wanted = key_value(item, key)?;
            Ok(list
                .iter()
                .position(|v| v.get(key).is_some_and(|kv| go_eq(kv, wanted))))
        }
    }
}

/// Orders a merged list (patch.go `normalizeElementOrder` + `mergeSortedSlice`): items named by
/// the patch in patch order, the object's other items in their old order, interleaved so each
/// object item stays before patch items that came after it in the object. New items go before
/// the object items they are compared against, which is upstream's (observable) choice.
fn normalize_element_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Result<Vec<Value>, PatchError> {
    sort_by_order(&mut patch_items, patch_order, merge_key)?;
    sort_by_order(&mut server_only, server_order, merge_key)?;

    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                let li = index_of(server_order, l, merge_key)?;
                let ri = index_of(server_order, r, merge_key)?;
                matches!((li, ri), (Some(li), Some(ri)) if li < ri)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// Stable sort by position in `order`; items not in it go last.
fn sort_by_order(
    items: &mut Vec<Value>,
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    let mut keyed = Vec::with_capacity(items.len());
    for item in items.drain(..) {
        let i = index_of(order, &item, merge_key)?.unwrap_or(usize::MAX);
        keyed.push((i, item));
    }
    keyed.sort_by_key(|a| a.0);
    items.extend(keyed.into_iter().map(|(_, v)| v));
    Ok(())
}

/// `$prefix/field` → `field` (patch.go `extractKey`): the prefix must be exact.
fn extract_key<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    match key.split_once('/') {
        Some((p, field)) if p == prefix => Some(field),
        _ => None,
    }
}

// --- Go compatibility helpers -------------------------------------------------------------------

/// Equality as Go's `==` on decoded JSON: numbers are all float64, so `1` equals `1.0`.
fn go_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y) == Some(Ordering::Equal),
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Go's type name for a decoded JSON value, as `reflect.TypeOf` prints it.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "%!s(<nil>)",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// The JSON kind name Go's decoder uses in "cannot unmarshal X into …".
fn go_json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn bad_arg_type(expected: &'static str, actual: &Value) -> PatchError {
    PatchError::BadArgType {
        expected,
        actual: go_type(actual),
    }
}

fn no_merge_key(item: &Value, key: &str) -> PatchError {
    PatchError::NoMergeKey {
        map: go_fmt(item),
        key: key.to_owned(),
    }
}

/// Go's `%v` of a decoded JSON value: `map[k:v]` with sorted keys, `[a b]`, bare strings.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_float(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(go_fmt).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_fmt(&m[k])))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

/// Go's `%s` of a decoded JSON value: strings bare, anything else flagged as a bad verb.
fn go_fmt_s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "%!s(<nil>)".to_owned(),
        other => format!("%!s({}={})", go_type(other), go_fmt(other)),
    }
}

/// Go's `%v` of a float64: strconv's shortest `%g`, which switches to exponent form when the
/// decimal exponent is below -4 or at least 6 (so 1e6 prints as `1e+06`).
fn go_float(f: f64) -> String {
    let sci = format!("{f:e}");
    let Some((mant, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if f == 0.0 || (-4..6).contains(&exp) {
        // Rust's Display is the same shortest digits, without exponent ("80", "0.5").
        return f.to_string();
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mant}e{sign}{:02}", exp.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value, kind: &str) -> Value {
        strategic_merge_patch(&doc, &patch, kind).unwrap_or_else(|e| panic!("smp failed: {e}"))
    }

    fn smp_err(doc: Value, patch: Value, kind: &str) -> PatchError {
        match strategic_merge_patch(&doc, &patch, kind) {
            Ok(v) => panic!("expected an error, got {v}"),
            Err(e) => e,
        }
    }

    fn jp(doc: &Value, patch: Value) -> Result<Value, PatchError> {
        json_patch(doc, patch.to_string().as_bytes())
    }

    fn pod(containers: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": containers}})
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("Application/Strategic-Merge-Patch+JSON"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn json_patch_add_remove_replace() {
        let doc = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "list": [1, 2]});
        let out = jp(
            &doc,
            json!([
                {"op": "add", "path": "/metadata/labels/y", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/x"},
                {"op": "replace", "path": "/metadata/name", "value": "b"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/0", "value": 1}
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            json!({"metadata": {"name": "b", "labels": {"y": "2"}}, "list": [1, 2, 3]})
        );
    }

    #[test]
    fn json_patch_test_failure() {
        let doc = json!({"metadata": {"name": "a"}});
        let err = match jp(
            &doc,
            json!([
                {"op": "replace", "path": "/metadata/name", "value": "b"},
                {"op": "test", "path": "/metadata/name", "value": "a"}
            ]),
        ) {
            Ok(v) => panic!("expected failure, got {v}"),
            Err(e) => e,
        };
        assert_eq!(
            err.to_string(),
            "testing value /metadata/name failed: test failed"
        );
        assert_eq!(err.status_code(), 422);
        assert_eq!(doc, json!({"metadata": {"name": "a"}}));
    }

    #[test]
    fn json_patch_missing_paths() {
        let doc = json!({"metadata": {"name": "a"}, "list": [1]});
        let msg = |patch: Value| match jp(&doc, patch) {
            Ok(v) => panic!("expected failure, got {v}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            msg(json!([{"op": "replace", "path": "/metadata/uid", "value": "u"}])),
            "replace operation does not apply: doc is missing key: /metadata/uid: missing value"
        );
        assert_eq!(
            msg(json!([{"op": "add", "path": "/spec/x", "value": 1}])),
            "add operation does not apply: doc is missing path: \"/spec/x\": missing value"
        );
        assert_eq!(
            msg(json!([{"op": "remove", "path": "/metadata/uid"}])),
            "error in remove for path: '/metadata/uid': Unable to remove nonexistent key: uid: missing value"
        );
        assert_eq!(
            msg(json!([{"op": "add", "path": "/list/5", "value": 1}])),
            "error in add for path: '/list/5': Unable to access invalid index: 5: invalid index referenced"
        );
    }

    #[test]
    fn json_patch_bad_bodies() {
        let doc = json!({});
        let err = match json_patch(&doc, br#"{"op": "add"}"#) {
            Ok(v) => panic!("expected failure, got {v}"),
            Err(e) => e,
        };
        assert!(matches!(err, PatchError::InvalidJsonPatch(_)), "{err:?}");
        assert_eq!(err.status_code(), 400);

        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "", "value": {}}))
            .collect();
        let err = match jp(&doc, Value::Array(ops)) {
            Ok(v) => panic!("expected failure, got {v}"),
            Err(e) => e,
        };
        assert_eq!(
            err.to_string(),
            "The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
        assert_eq!(err.status_code(), 413);
    }

    #[test]
    fn merge_patch_basic() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}], "x": 1}});
        let out = merge_patch(
            &doc,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}},
                    "spec": {"containers": [{"name": "d"}]}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}},
                   "spec": {"containers": [{"name": "d"}], "x": 1}})
        );
        assert_eq!(
            merge_patch(&doc, &json!([1])),
            Err(PatchError::InvalidMergePatch)
        );
        assert_eq!(
            PatchError::InvalidMergePatch.to_string(),
            "Invalid JSON Patch"
        );
    }

    #[test]
    fn smp_containers_merge_by_name_with_env_and_ports() {
        let doc = pod(json!([
            {"name": "app", "image": "app:1",
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "side:1"}
        ]));
        let out = smp(
            doc,
            json!({"spec": {"containers": [
                {"name": "app", "image": "app:2",
                 "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                 "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443}]},
                {"name": "new", "image": "new:1"}
            ]}}),
            "Pod",
        );
        assert_eq!(
            out,
            pod(json!([
                {"name": "app", "image": "app:2",
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"},
                         {"name": "C", "value": "4"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"},
                           {"containerPort": 443}]},
                {"name": "new", "image": "new:1"},
                {"name": "side", "image": "side:1"}
            ]))
        );
    }

    #[test]
    fn smp_new_items_interleave_like_upstream() {
        // patch.go mergeSortedSlice: a new item goes before the next object item it is compared
        // with, so an item added alone lands first (kustomize reproduces this as "prepend").
        let doc = pod(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]));
        let out = smp(
            doc,
            json!({"spec": {"containers": [{"name": "b", "image": "x"}, {"name": "d"}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            pod(json!([{"name": "a"}, {"name": "b", "image": "x"}, {"name": "d"}, {"name": "c"}]))
        );
    }

    #[test]
    fn smp_pod_template_of_workloads() {
        for kind in [
            "Deployment",
            "ReplicaSet",
            "Job",
            "StatefulSet",
            "DaemonSet",
        ] {
            let doc = json!({"kind": kind, "spec": {"replicas": 1, "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}}});
            let out = smp(
                doc,
                json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}}),
                kind,
            );
            assert_eq!(
                out,
                json!({"kind": kind, "spec": {"replicas": 1, "template": {
                    "metadata": {"labels": {"app": "x"}},
                    "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]}}}}),
                "{kind}"
            );
        }
        // The same path means nothing special for a kind without a pod template.
        let out = smp(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b"}]}}}}),
            "ConfigMap",
        );
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b"}]}}}})
        );
    }

    #[test]
    fn smp_cronjob_job_template() {
        let doc = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "a:1"}]}}}}}});
        let out = smp(
            doc,
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "b", "image": "b:1"}]}}}}}}),
            "CronJob",
        );
        assert_eq!(
            out,
            // New items come before the object's (see smp_new_items_interleave_like_upstream).
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:1"}]}}}}}})
        );
    }

    #[test]
    fn smp_finalizers_set_union() {
        let doc = json!({"metadata": {"name": "n", "finalizers": ["a", "b"]}});
        let out = smp(
            doc,
            json!({"metadata": {"finalizers": ["b", "c"]}}),
            "Namespace",
        );
        assert_eq!(
            out,
            json!({"metadata": {"name": "n", "finalizers": ["a", "b", "c"]}})
        );
    }

    #[test]
    fn smp_null_deletes() {
        let doc = json!({"metadata": {"name": "n", "labels": {"a": "1", "b": "2"},
                                      "annotations": {"x": "y"}},
                         "data": {"k": "v"}});
        let out = smp(
            doc,
            json!({"metadata": {"labels": {"a": null, "c": "3"}, "annotations": null},
                   "data": {"absent": null}}),
            "ConfigMap",
        );
        assert_eq!(
            out,
            json!({"metadata": {"name": "n", "labels": {"b": "2", "c": "3"}},
                   "data": {"k": "v"}})
        );
    }

    #[test]
    fn smp_replaces_lists_without_strategy() {
        let doc = json!({"spec": {"containers": [{"name": "a"}],
                                  "tolerations": [{"key": "x", "operator": "Exists"}]}});
        let out = smp(
            doc,
            json!({"spec": {"tolerations": [{"key": "y", "operator": "Exists"}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a"}],
                            "tolerations": [{"key": "y", "operator": "Exists"}]}})
        );
        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}],
                                   "podCIDRs": ["10.0.0.0/24"]}});
        let out = smp(
            node,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}],
                            "podCIDRs": ["10.0.1.0/24"]}}),
            "Node",
        );
        assert_eq!(
            out,
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}],
                            "podCIDRs": ["10.0.1.0/24", "10.0.0.0/24"]}})
        );
    }

    #[test]
    fn smp_other_merge_keys() {
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let out = smp(
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            "Service",
        );
        assert_eq!(
            out,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}})
        );

        let owned = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}});
        let out = smp(
            owned,
            json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]}}),
            "Secret",
        );
        assert_eq!(
            out,
            json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"},
                                                    {"uid": "1", "name": "a"}]}})
        );

        let node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}]}});
        let out = smp(
            node,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            "Node",
        );
        assert_eq!(
            out,
            json!({"status": {"conditions": [
                {"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]}})
        );
    }

    #[test]
    fn smp_patch_replace_in_map() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = smp(
            doc,
            json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
            "Pod",
        );
        assert_eq!(out, json!({"metadata": {"labels": {"c": "3"}}}));
    }

    #[test]
    fn smp_patch_replace_in_list() {
        let doc = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let out = smp(
            doc,
            json!({"spec": {"containers": [{"name": "c", "image": "c"}, {"$patch": "replace"}]}}),
            "Pod",
        );
        assert_eq!(out, pod(json!([{"name": "c", "image": "c"}])));
    }

    #[test]
    fn smp_patch_delete_in_list_and_map() {
        let doc = pod(json!([{"name": "a", "env": [{"name": "X", "value": "1"},
                                                   {"name": "Y", "value": "2"}]},
                             {"name": "b"}]));
        let out = smp(
            doc,
            json!({"spec": {"containers": [
                {"name": "a", "env": [{"name": "X", "$patch": "delete"}]},
                {"name": "b", "$patch": "delete"}
            ]}}),
            "Pod",
        );
        assert_eq!(
            out,
            pod(json!([{"name": "a", "env": [{"name": "Y", "value": "2"}]}]))
        );

        // Upstream leaves an empty map (patch_test.go "delete map from nested map").
        let dep = json!({"spec": {"strategy": {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            dep,
            json!({"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}}),
            "Deployment",
        );
        assert_eq!(
            out,
            json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {}}}})
        );
        // …and a field the object lacks stays absent.
        let out = smp(
            json!({"spec": {}}),
            json!({"spec": {"strategy": {"$patch": "delete"}}}),
            "Deployment",
        );
        assert_eq!(out, json!({"spec": {}}));
    }

    #[test]
    fn smp_patch_merge_directive() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}});
        let out = smp(
            doc.clone(),
            json!({"metadata": {"labels": {"$patch": "merge", "b": "2"}}}),
            "Pod",
        );
        assert_eq!(out, json!({"metadata": {"labels": {"a": "1", "b": "2"}}}));

        let err = smp_err(
            pod(json!([{"name": "a"}])),
            json!({"spec": {"containers": [{"$patch": "merge"}]}}),
            "Pod",
        );
        assert_eq!(err, PatchError::MergeDirectiveInList);
        assert_eq!(
            err.to_string(),
            "merging lists cannot yet be specified in the patch"
        );

        let err = smp_err(doc, json!({"metadata": {"$patch": "bogus"}}), "Pod");
        assert_eq!(
            err.to_string(),
            "unknown patch type: bogus in map: map[$patch:bogus]"
        );
    }

    #[test]
    fn smp_set_element_order_maps() {
        let doc = pod(json!([{"name": "a"}, {"name": "b"}]));
        let out = smp(
            doc,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
                "containers": [{"name": "c", "image": "c"}]
            }}),
            "Pod",
        );
        assert_eq!(
            out,
            pod(json!([{"name": "c", "image": "c"}, {"name": "b"}, {"name": "a"}]))
        );

        let err = smp_err(
            pod(json!([{"name": "a"}, {"name": "b"}])),
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b"}, {"name": "a"}]
            }}),
            "Pod",
        );
        assert!(
            matches!(err, PatchError::SetElementOrderMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn smp_set_element_order_primitives() {
        let doc = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        let out = smp(
            doc,
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"]}}),
            "Pod",
        );
        assert_eq!(out, json!({"metadata": {"finalizers": ["b", "c", "a"]}}));
    }

    #[test]
    fn smp_retain_keys() {
        let dep = json!({"spec": {"replicas": 2, "strategy": {
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            dep.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            "Deployment",
        );
        assert_eq!(
            out,
            json!({"spec": {"replicas": 2, "strategy": {"type": "Recreate"}}})
        );

        let err = smp_err(
            dep,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}),
            "Deployment",
        );
        assert_eq!(err, PatchError::BadPatchFormatForRetainKeys);
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn smp_delete_from_primitive_list() {
        let doc = json!({"metadata": {"finalizers": ["a", "b", "c", "b"]}});
        let out = smp(
            doc,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "x"],
                                "finalizers": ["d"]}}),
            "Pod",
        );
        // A new set member goes first (patch.go mergeSortedSlice takes the patch item when
        // the object has no position for it); deletions run last.
        assert_eq!(out, json!({"metadata": {"finalizers": ["d", "a", "c"]}}));

        let err = smp_err(
            json!({"metadata": {}}),
            json!({"metadata": {"$deleteFromPrimitiveList": ["b"]}}),
            "Pod",
        );
        assert_eq!(err, PatchError::BadPatchFormatForPrimitiveList);
    }

    #[test]
    fn smp_directives_never_reach_the_output() {
        let doc = json!({"spec": {"containers": [{"name": "a"}]}});
        let out = smp(
            doc,
            json!({"spec": {"initContainers": [{
                "name": "init",
                "$setElementOrder/env": [{"name": "X"}],
                "env": [{"name": "X", "value": "1", "valueFrom": null}],
                "resources": {"$patch": "replace", "limits": {"cpu": "1"}}
            }, {"name": "gone", "$patch": "delete"}]}}),
            "Pod",
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{
                "name": "init",
                "env": [{"name": "X", "value": "1"}],
                "resources": {"limits": {"cpu": "1"}}
            }]}})
        );
    }

    #[test]
    fn smp_errors_match_upstream() {
        let err = smp_err(
            pod(json!([{"name": "a"}])),
            json!({"spec": {"containers": [{"image": "x", "ports": [{"containerPort": 80}]}]}}),
            "Pod",
        );
        assert_eq!(
            err.to_string(),
            "map: map[image:x ports:[map[containerPort:80]]] does not contain declared merge key: name"
        );
        assert_eq!(err.status_code(), 500);

        let err = smp_err(
            json!({"metadata": {"finalizers": [["a"]]}}),
            json!({"metadata": {"finalizers": ["b"]}}),
            "Pod",
        );
        assert_eq!(err, PatchError::NoListOfLists);

        let err = smp_err(json!({}), json!(["x"]), "Pod");
        assert_eq!(
            err.to_string(),
            "json: cannot unmarshal array into Go value of type map[string]interface {}"
        );
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn smp_null_patch_is_a_no_op() {
        let doc = json!({"metadata": {"name": "a"}});
        assert_eq!(smp(doc.clone(), Value::Null, "Pod"), doc);
    }

    #[test]
    fn go_formatting() {
        assert_eq!(go_float(80.0), "80");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_fmt_s(&json!(5)), "%!s(float64=5)");
    }
}
