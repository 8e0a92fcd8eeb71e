//! Walks over an object (`serde_json::Value`) guided by the schema table, with
//! structured-merge-diff's semantics: the set of fields a value holds, the comparison of
//! two values (added, removed and modified fields), the merge of an applied
//! configuration onto a live object, and the removal of a set of fields.
//!
//! Rules carried over from upstream because the managedFields clients see depend on them:
//! - A value owned whole (atomic, a scalar, a list without markers) is one leaf.
//! - In a field set, an object is not a member itself (only its fields are), unless it is
//!   empty or null; an item of an associative or set list always is.
//! - In a comparison, an object or list present on one side only is added or removed
//!   whole (itself and everything below); one present on both sides, even as `null` on
//!   one, is compared field by field, so it is never itself added. Two empty or null
//!   values compare as leaves.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::fieldpath::{key_json, path_string, Path, Pe, Set};
use super::schema::{field, Ctx, Shape};

/// A value that does not fit the schema (only reported for applied configurations,
/// whose list items must name themselves); the text is structured-merge-diff's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedError(pub String);

/// The shape of an item of a list of `shape` whose items are at `ctx`.
fn item_shape(ctx: Ctx) -> Shape {
    if ctx == Ctx::Atomic {
        Shape::Atomic
    } else {
        Shape::Granular
    }
}

/// Whether a list of this shape is owned item by item.
fn granular_list(shape: Shape) -> bool {
    matches!(shape, Shape::Set | Shape::Map(_))
}

/// The path element naming a list item. Leniently (for live objects) a missing key
/// field is left out of the key; strictly (for an applied configuration) it is an error.
fn item_pe(item: &Value, shape: Shape, strict: bool) -> Result<Pe, String> {
    match shape {
        Shape::Map(keys) => {
            let Some(obj) = item.as_object() else {
                return if strict {
                    Err("expected a map for an associative list item".into())
                } else {
                    Ok(Pe::Value(item.to_string()))
                };
            };
            let mut fields: Vec<(&str, Value)> = Vec::with_capacity(keys.len());
            for (name, default) in keys {
                match (obj.get(*name).filter(|v| !v.is_null()), default) {
                    (Some(v), _) => fields.push((name, v.clone())),
                    (None, Some(d)) => fields.push((name, Value::String((*d).to_string()))),
                    (None, None) if strict => {
                        return Err(format!("associative list with keys has an element that omits key field {name:?} (and doesn't have default value)"));
                    }
                    (None, None) => {}
                }
            }
            Ok(Pe::Key(key_json(fields.iter().map(|(k, v)| (*k, v)))))
        }
        _ => Ok(Pe::Value(item.to_string())),
    }
}

/// A list's items with their path elements, in order. Strictly, duplicates are errors.
fn index_items<'a>(
    items: &'a [Value],
    shape: Shape,
    path: &[Pe],
    strict: bool,
) -> Result<Vec<(Pe, &'a Value)>, TypedError> {
    let mut out = Vec::with_capacity(items.len());
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let pe = item_pe(item, shape, strict)
            .map_err(|e| TypedError(format!("{}: element {i}: {e}", path_string(path))))?;
        if strict && !seen.insert(pe.clone()) {
            let shown = path_string(std::slice::from_ref(&pe));
            return Err(TypedError(format!(
                "{}: duplicate entries for key {shown}",
                path_string(path)
            )));
        }
        out.push((pe, item));
    }
    Ok(out)
}

// --- field sets -------------------------------------------------------------------------------

/// The fields `obj` (an object at `ctx`) sets (structured-merge-diff's `ToFieldSet`).
pub fn field_set(obj: &Value, ctx: Ctx, strict: bool) -> Result<Set, TypedError> {
    let mut out = Set::new();
    let mut path = Vec::new();
    if let Value::Object(m) = obj {
        fields_of(m, ctx, &mut path, &mut out, strict)?;
    }
    Ok(out)
}

fn fields_of(
    m: &Map<String, Value>,
    ctx: Ctx,
    path: &mut Path,
    out: &mut Set,
    strict: bool,
) -> Result<(), TypedError> {
    for (k, v) in m {
        let (shape, child) = field(ctx, k);
        path.push(Pe::Field(k.clone()));
        value_fields(v, shape, child, path, out, strict)?;
        path.pop();
    }
    Ok(())
}

fn value_fields(
    v: &Value,
    shape: Shape,
    ctx: Ctx,
    path: &mut Path,
    out: &mut Set,
    strict: bool,
) -> Result<(), TypedError> {
    match v {
        _ if shape == Shape::Atomic || ctx == Ctx::Atomic => out.insert(path.clone()),
        Value::Object(m) if m.is_empty() => out.insert(path.clone()),
        Value::Object(m) => fields_of(m, ctx, path, out, strict)?,
        Value::Array(items) if granular_list(shape) => {
            for (pe, item) in index_items(items, shape, path, strict)? {
                path.push(pe);
                if let (Shape::Map(_), Value::Object(im)) = (shape, item) {
                    if ctx != Ctx::Atomic {
                        fields_of(im, ctx, path, out, strict)?;
                    }
                }
                out.insert(path.clone());
                path.pop();
            }
        }
        _ => out.insert(path.clone()),
    }
    Ok(())
}

// --- comparison -------------------------------------------------------------------------------

/// What changed between two versions of an object.
#[derive(Debug, Default, Clone)]
pub struct Comparison {
    pub added: Set,
    pub removed: Set,
    pub modified: Set,
}

impl Comparison {
    /// Every path whose value is new or different.
    pub fn changed(&self) -> Set {
        self.added.union(&self.modified)
    }

    /// The comparison with every path at or below `prefix` left out.
    pub fn without_prefix(&self, prefix: &[Pe]) -> Comparison {
        Comparison {
            added: self.added.without_prefix(prefix),
            removed: self.removed.without_prefix(prefix),
            modified: self.modified.without_prefix(prefix),
        }
    }

    /// The comparison of the paths at or below `prefix` only.
    pub fn only_under(&self, prefix: &[Pe]) -> Comparison {
        Comparison {
            added: self.added.only_under(prefix),
            removed: self.removed.only_under(prefix),
            modified: self.modified.only_under(prefix),
        }
    }

    /// The comparison without the exact paths of `set`.
    pub fn without(&self, set: &Set) -> Comparison {
        Comparison {
            added: self.added.difference(set),
            removed: self.removed.difference(set),
            modified: self.modified.difference(set),
        }
    }
}

/// Compares two objects at `ctx` (structured-merge-diff's `Compare`).
pub fn compare(lhs: &Value, rhs: &Value, ctx: Ctx) -> Comparison {
    let mut out = Comparison::default();
    let mut path = Vec::new();
    match (lhs.as_object(), rhs.as_object()) {
        (Some(l), Some(r)) => compare_fields(Some(l), Some(r), ctx, &mut path, &mut out),
        _ if lhs != rhs => out.modified.insert(path),
        _ => {}
    }
    out
}

fn compare_fields(
    l: Option<&Map<String, Value>>,
    r: Option<&Map<String, Value>>,
    ctx: Ctx,
    path: &mut Path,
    out: &mut Comparison,
) {
    let keys: BTreeSet<&String> = l
        .into_iter()
        .flat_map(|m| m.keys())
        .chain(r.into_iter().flat_map(|m| m.keys()))
        .collect();
    for k in keys {
        let (shape, child) = field(ctx, k);
        path.push(Pe::Field(k.clone()));
        compare_value(
            l.and_then(|m| m.get(k)),
            r.and_then(|m| m.get(k)),
            shape,
            child,
            path,
            out,
        );
        path.pop();
    }
}

fn compare_value(
    l: Option<&Value>,
    r: Option<&Value>,
    shape: Shape,
    ctx: Ctx,
    path: &mut Path,
    out: &mut Comparison,
) {
    let leaf = |out: &mut Comparison, path: &Path| match (l, r) {
        (None, _) => out.added.insert(path.clone()),
        (_, None) => out.removed.insert(path.clone()),
        (Some(a), Some(b)) if a != b => out.modified.insert(path.clone()),
        _ => {}
    };
    let empty_or_absent = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if shape == Shape::Atomic || ctx == Ctx::Atomic {
        return leaf(out, path);
    }
    let kind = |v: Option<&Value>| -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Object(_)) => 1,
            Some(Value::Array(_)) => 2,
            Some(_) => 3,
        }
    };
    let (lk, rk) = (kind(l), kind(r));
    let container = match (lk, rk) {
        (0, 0) => 0,
        (0, k) | (k, 0) => k,
        (a, b) if a == b => a,
        _ => 3,
    };
    match container {
        1 => {
            if empty_or_absent(l) && empty_or_absent(r) {
                return leaf(out, path);
            }
            compare_fields(
                l.and_then(Value::as_object),
                r.and_then(Value::as_object),
                ctx,
                path,
                out,
            );
        }
        2 if granular_list(shape) => {
            if empty_or_absent(l) && empty_or_absent(r) {
                return leaf(out, path);
            }
            let no_items: &[Value] = &[];
            let li = l.and_then(Value::as_array).map_or(no_items, Vec::as_slice);
            let ri = r.and_then(Value::as_array).map_or(no_items, Vec::as_slice);
            // Live objects are indexed leniently, so this cannot fail.
            let li = index_items(li, shape, path, false).unwrap_or_default();
            let ri = index_items(ri, shape, path, false).unwrap_or_default();
            let lmap: BTreeMap<&Pe, &Value> = li.iter().map(|(p, v)| (p, *v)).collect();
            let rmap: BTreeMap<&Pe, &Value> = ri.iter().map(|(p, v)| (p, *v)).collect();
            let item = item_shape(ctx);
            for (pe, rv) in &rmap {
                path.push((*pe).clone());
                compare_value(lmap.get(pe).copied(), Some(rv), item, ctx, path, out);
                path.pop();
            }
            for (pe, lv) in &lmap {
                if !rmap.contains_key(pe) {
                    path.push((*pe).clone());
                    compare_value(Some(lv), None, item, ctx, path, out);
                    path.pop();
                }
            }
        }
        _ => return leaf(out, path),
    }
    if l.is_none() {
        out.added.insert(path.clone());
    } else if r.is_none() {
        out.removed.insert(path.clone());
    }
}

// --- merge ------------------------------------------------------------------------------------

/// Merges an applied configuration onto a live object (structured-merge-diff's `Merge`):
/// fields merge, atomic values and scalars are replaced, granular lists merge item by
/// item, shared items in the configuration's order with the live object's other items
/// kept where they were.
pub fn merge(lhs: &Value, rhs: &Value, ctx: Ctx) -> Value {
    merge_value(Some(lhs), Some(rhs), Shape::Granular, ctx).unwrap_or(Value::Null)
}

fn merge_value(l: Option<&Value>, r: Option<&Value>, shape: Shape, ctx: Ctx) -> Option<Value> {
    let (l, r) = match (l, r) {
        (l, None) => return l.cloned(),
        (None, r) => return r.cloned(),
        (Some(l), Some(r)) => (l, r),
    };
    if shape == Shape::Atomic || ctx == Ctx::Atomic {
        return Some(r.clone());
    }
    match (l, r) {
        (Value::Object(_) | Value::Null, Value::Object(_) | Value::Null) => {
            let (lm, rm) = (l.as_object(), r.as_object());
            if lm.is_none_or(Map::is_empty) && rm.is_none_or(Map::is_empty) {
                return Some(r.clone());
            }
            let mut out = lm.cloned().unwrap_or_default();
            for (k, rv) in rm.into_iter().flatten() {
                let (s, c) = field(ctx, k);
                if let Some(v) = merge_value(out.get(k), Some(rv), s, c) {
                    out.insert(k.clone(), v);
                }
            }
            Some(Value::Object(out))
        }
        (Value::Array(_) | Value::Null, Value::Array(_) | Value::Null) if granular_list(shape) => {
            let no_items: &[Value] = &[];
            let la = l.as_array().map_or(no_items, Vec::as_slice);
            let ra = r.as_array().map_or(no_items, Vec::as_slice);
            if la.is_empty() && ra.is_empty() {
                return Some(r.clone());
            }
            Some(Value::Array(merge_list(la, ra, shape, ctx)))
        }
        _ => Some(r.clone()),
    }
}

/// The items of two granular lists merged: items in both are merged, in the right-hand
/// list's order; items only on the left keep their place relative to their neighbours.
fn merge_list(la: &[Value], ra: &[Value], shape: Shape, ctx: Ctx) -> Vec<Value> {
    let path: Path = Vec::new();
    let li = index_items(la, shape, &path, false).unwrap_or_default();
    let ri = index_items(ra, shape, &path, false).unwrap_or_default();
    let mut lpos: BTreeMap<&Pe, usize> = BTreeMap::new();
    for (i, (pe, _)) in li.iter().enumerate() {
        lpos.entry(pe).or_insert(i);
    }
    let mut rpos: BTreeMap<&Pe, usize> = BTreeMap::new();
    for (i, (pe, _)) in ri.iter().enumerate() {
        rpos.entry(pe).or_insert(i);
    }
    let item = item_shape(ctx);
    let merged_item = |lv: Option<&Value>, rv: &Value| merge_value(lv, Some(rv), item, ctx);
    // The right-hand items the left also has, in the right-hand order: each is emitted
    // when its turn comes in this order, so a shared item never jumps ahead of another.
    let shared: Vec<&Pe> = ri
        .iter()
        .map(|(pe, _)| pe)
        .filter(|pe| lpos.contains_key(pe))
        .collect();
    let mut next_shared = 0usize;
    let mut emitted: BTreeSet<&Pe> = BTreeSet::new();
    let mut out = Vec::with_capacity(la.len().max(ra.len()));
    let (mut l, mut r) = (0usize, 0usize);
    while l < li.len() || r < ri.len() {
        if l < li.len() && r < ri.len() {
            let lpe = &li[l].0;
            if *lpe == ri[r].0 {
                emitted.insert(lpe);
                let lv = lpos.get(lpe).map(|&i| li[i].1);
                let rv = rpos.get(lpe).map_or(ri[r].1, |&i| ri[i].1);
                out.extend(merged_item(lv, rv));
                l += 1;
                r += 1;
                next_shared += 1;
                continue;
            }
            if rpos.contains_key(lpe) && shared.get(next_shared).is_some_and(|s| *s != lpe) {
                l += 1;
                continue;
            }
        }
        if l < li.len() {
            let lpe = &li[l].0;
            if !rpos.contains_key(lpe) {
                out.push(li[l].1.clone());
                l += 1;
                continue;
            }
            if emitted.contains(lpe) {
                l += 1;
                continue;
            }
        }
        if r < ri.len() {
            let rpe = &ri[r].0;
            emitted.insert(rpe);
            let lv = lpos.get(rpe).map(|&i| li[i].1);
            let rv = rpos.get(rpe).map_or(ri[r].1, |&i| ri[i].1);
            out.extend(merged_item(lv, rv));
            r += 1;
            if shared.get(next_shared) == Some(&rpe) {
                next_shared += 1;
            }
        }
    }
    out
}

// --- removal ----------------------------------------------------------------------------------

/// `obj` without the fields of `set` (each removed with everything below it). An object
/// or list left empty by the removal becomes `null`, as upstream's walker leaves it;
/// the typed decode that follows drops it.
pub fn remove(obj: &Value, set: &Set, ctx: Ctx) -> Value {
    let mut path = Vec::new();
    remove_value(obj, set, Shape::Granular, ctx, &mut path)
}

fn remove_value(v: &Value, set: &Set, shape: Shape, ctx: Ctx, path: &mut Path) -> Value {
    if shape == Shape::Atomic || ctx == Ctx::Atomic {
        return v.clone();
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut out = Map::new();
            for (k, c) in m {
                path.push(Pe::Field(k.clone()));
                if !set.contains(path) {
                    let kept = if set.has_below(path) {
                        let (s, cc) = field(ctx, k);
                        remove_value(c, set, s, cc, path)
                    } else {
                        c.clone()
                    };
                    out.insert(k.clone(), kept);
                }
                path.pop();
            }
            if out.is_empty() && !path.is_empty() {
                Value::Null
            } else {
                Value::Object(out)
            }
        }
        Value::Array(items) if !items.is_empty() && granular_list(shape) => {
            let indexed = index_items(items, shape, path, false).unwrap_or_default();
            let mut out = Vec::with_capacity(items.len());
            for (pe, item) in indexed {
                path.push(pe);
                if !set.contains(path) {
                    if set.has_below(path) {
                        out.push(remove_value(item, set, item_shape(ctx), ctx, path));
                    } else {
                        out.push(item.clone());
                    }
                }
                path.pop();
            }
            if out.is_empty() {
                Value::Null
            } else {
                Value::Array(out)
            }
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managed::schema::Kind;
    use serde_json::json;

    const DEPLOY: Ctx = Ctx::Root(Kind::Workload);

    fn fv1(s: &Set) -> Value {
        s.to_fields_v1()
    }

    #[test]
    fn field_set_of_an_applied_deployment() {
        let cfg = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx",
                        "ports": [{"containerPort": 80}]}]}}}
        });
        let set = field_set(&cfg, DEPLOY, true).expect("fits");
        assert_eq!(
            fv1(&set),
            json!({
                "f:apiVersion": {}, "f:kind": {},
                "f:metadata": {"f:name": {}, "f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {},
                    "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:name": {}, "f:image": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}}}}}}}}
            })
        );
    }

    #[test]
    fn applied_lists_must_name_their_items() {
        let cfg = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = field_set(&cfg, DEPLOY, true).expect_err("no name");
        assert_eq!(
            err.0,
            ".spec.template.spec.containers: element 0: associative list with keys has an element that omits key field \"name\" (and doesn't have default value)"
        );
        let cfg =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        let err = field_set(&cfg, DEPLOY, true).expect_err("duplicate");
        assert_eq!(
            err.0,
            ".spec.template.spec.containers: duplicate entries for key [name=\"a\"]"
        );
    }

    #[test]
    fn compare_adds_new_subtrees_whole_and_existing_ones_by_field() {
        let zero = crate::managed::schema::zero_object("Deployment");
        let created = json!({
            "metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {"metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx", "resources": {}}]}}},
            "status": {}
        });
        let c = compare(&zero, &created, DEPLOY);
        assert!(c.removed.is_empty(), "{:?}", c.removed);
        assert_eq!(
            fv1(&c.changed()),
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {},
                    "f:strategy": {"f:type": {}, "f:rollingUpdate": {".": {}, "f:maxSurge": {}}},
                    "f:template": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:name": {}, "f:image": {}, "f:resources": {}}}}}}
            })
        );
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("app");
        let c = compare(&created, &scaled, DEPLOY);
        assert_eq!(fv1(&c.modified), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(
            fv1(&c.removed),
            json!({"f:metadata": {"f:labels": {"f:app": {}}}})
        );
    }

    #[test]
    fn merge_keeps_live_items_and_follows_applied_order() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "imagePullPolicy": "Always"},
            {"name": "b", "image": "b:1"},
            {"name": "c", "image": "c:1"}]}}}});
        let cfg = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "c:2"}, {"name": "a", "image": "a:2"}, {"name": "d"}]}}}});
        let out = merge(&live, &cfg, DEPLOY);
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["b", "c", "a", "d"]);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][2],
            json!({"name": "a", "image": "a:2", "imagePullPolicy": "Always"})
        );
        // Atomic values are replaced, not merged.
        let live = json!({"spec": {"selector": {"matchLabels": {"a": "1", "b": "2"}}}});
        let cfg = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}});
        assert_eq!(merge(&live, &cfg, DEPLOY), cfg);
    }

    #[test]
    fn remove_takes_subtrees_and_leaves_nulls() {
        let obj = json!({"metadata": {"labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "a", "image": "a"}, {"name": "b", "image": "b"}]}}}});
        let set: Set = [
            vec![
                Pe::Field("metadata".into()),
                Pe::Field("labels".into()),
                Pe::Field("a".into()),
            ],
            vec![Pe::Field("spec".into()), Pe::Field("replicas".into())],
            vec![
                Pe::Field("spec".into()),
                Pe::Field("template".into()),
                Pe::Field("spec".into()),
                Pe::Field("containers".into()),
                Pe::Key(r#"{"name":"b"}"#.into()),
            ],
        ]
        .into_iter()
        .collect();
        assert_eq!(
            remove(&obj, &set, DEPLOY),
            json!({"metadata": {"labels": null},
                "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a"}]}}}})
        );
    }
}
