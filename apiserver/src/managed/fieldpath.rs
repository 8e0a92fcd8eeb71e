//! Field paths and sets of them, as structured-merge-diff models ownership, and their
//! wire form `FieldsV1` (the `fieldsV1` of a `metadata.managedFields` entry).
//!
//! A set is kept as an ordered set of whole paths: the sets of one object hold hundreds
//! of paths at most, so plain set algebra on paths is fast enough and leaves nothing to
//! get wrong. The tree shape exists only on the wire: a node is written `"f:name": {}`
//! when it is a member with nothing below it, and carries `".": {}` when it is a member
//! that also has members below it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pe {
    /// `f:<name>`: a field of a struct or a key of a map.
    Field(String),
    /// `k:<json>`: an item of an associative list, named by its key fields (a JSON
    /// object with its keys sorted, as upstream writes it).
    Key(String),
    /// `v:<json>`: an item of a set list, by its value.
    Value(String),
    /// `i:<n>`: an item by position. Only ever read from a client's managedFields.
    Index(u64),
}

impl Pe {
    /// The `FieldsV1` key of this step.
    fn wire(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(k) => format!("k:{k}"),
            Pe::Value(v) => format!("v:{v}"),
            Pe::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key.
    fn from_wire(s: &str) -> Option<Pe> {
        let (tag, rest) = s.split_at_checked(2)?;
        match tag {
            "f:" => Some(Pe::Field(rest.to_string())),
            "k:" => {
                // Re-encode so that equal keys compare equal whatever the client's spacing.
                let v: Value = serde_json::from_str(rest).ok()?;
                let m = v.as_object()?;
                Some(Pe::Key(key_json(m.iter().map(|(k, v)| (k.as_str(), v)))))
            }
            "v:" => {
                let v: Value = serde_json::from_str(rest).ok()?;
                Some(Pe::Value(v.to_string()))
            }
            "i:" => rest.parse().ok().map(Pe::Index),
            _ => None,
        }
    }

    /// The step as upstream prints it in conflict messages: `.name`, `[name="web"]`,
    /// `[containerPort=80,protocol="TCP"]`, `[="finalizer"]`, `[0]`.
    fn display(&self) -> String {
        match self {
            Pe::Field(f) => format!(".{f}"),
            Pe::Key(k) => {
                let parsed: Option<Map<String, Value>> = serde_json::from_str(k).ok();
                let fields: Vec<String> = parsed
                    .iter()
                    .flatten()
                    .map(|(name, v)| format!("{name}={}", go_value(v)))
                    .collect();
                format!("[{}]", fields.join(","))
            }
            Pe::Value(v) => {
                let parsed: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                format!("[={}]", go_value(&parsed))
            }
            Pe::Index(i) => format!("[{i}]"),
        }
    }
}

/// The JSON text of an associative list item's key: its key fields, sorted by name.
pub fn key_json<'a>(fields: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut fields: Vec<(&str, &Value)> = fields.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut m = Map::new();
    for (k, v) in fields {
        m.insert(k.to_string(), v.clone());
    }
    // serde_json's map keeps keys sorted (no `preserve_order` in this workspace), and
    // the insertion above is sorted anyway.
    Value::Object(m).to_string()
}

/// A value as structured-merge-diff's `value.ToString` prints it: strings quoted Go-style.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// A path from the object's root.
pub type Path = Vec<Pe>;

/// Prints a path as upstream does in conflict messages (`.spec.replicas`).
pub fn path_string(p: &[Pe]) -> String {
    p.iter().map(Pe::display).collect()
}

/// A set of paths (structured-merge-diff's `fieldpath.Set`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set {
    paths: BTreeSet<Path>,
}

impl Set {
    pub fn new() -> Set {
        Set::default()
    }

    pub fn insert(&mut self, p: Path) {
        self.paths.insert(p);
    }

    pub fn contains(&self, p: &[Pe]) -> bool {
        self.paths.contains(p)
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.paths.iter()
    }

    pub fn remove(&mut self, p: &[Pe]) {
        self.paths.remove(p);
    }

    pub fn union(&self, other: &Set) -> Set {
        Set {
            paths: self.paths.union(&other.paths).cloned().collect(),
        }
    }

    pub fn difference(&self, other: &Set) -> Set {
        Set {
            paths: self.paths.difference(&other.paths).cloned().collect(),
        }
    }

    pub fn intersection(&self, other: &Set) -> Set {
        Set {
            paths: self.paths.intersection(&other.paths).cloned().collect(),
        }
    }

    /// Whether some member lies strictly below `prefix`.
    pub fn has_below(&self, prefix: &[Pe]) -> bool {
        self.paths
            .range::<[Pe], _>((
                std::ops::Bound::Excluded(prefix),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .is_some_and(|p| p.len() > prefix.len() && p.starts_with(prefix))
    }

    /// The set without every path at or below `prefix`.
    pub fn without_prefix(&self, prefix: &[Pe]) -> Set {
        Set {
            paths: self
                .paths
                .iter()
                .filter(|p| !p.starts_with(prefix))
                .cloned()
                .collect(),
        }
    }

    /// The paths at or below `prefix`.
    pub fn only_under(&self, prefix: &[Pe]) -> Set {
        Set {
            paths: self
                .paths
                .iter()
                .filter(|p| p.starts_with(prefix))
                .cloned()
                .collect(),
        }
    }

    /// The members in the order structured-merge-diff walks a set (at each level its
    /// members, then what lies below its children), which is the order upstream lists
    /// conflicts in.
    pub fn walk_order(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = self.paths.iter().collect();
        out.sort_by(|a, b| {
            let common = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
            // A member at the level where the two part comes before a deeper path.
            let a_here = a.len() <= common + 1;
            let b_here = b.len() <= common + 1;
            match (a_here, b_here) {
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                _ => a.cmp(b),
            }
        });
        out
    }

    /// The set plus every field a member lies below (structured-merge-diff's
    /// `EnsureNamedFieldsAreMembers`): owning `spec.replicas` means having a say in
    /// whether `spec` exists. List items above a member are not added: owning a field
    /// of a container does not make the container one's own.
    pub fn with_named_parents(&self) -> Set {
        let mut out = self.clone();
        for p in &self.paths {
            for i in 1..p.len() {
                if matches!(p[i - 1], Pe::Field(_)) {
                    out.paths.insert(p[..i].to_vec());
                }
            }
        }
        out
    }

    /// The `FieldsV1` form.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for p in &self.paths {
            let mut node = &mut root;
            for (i, pe) in p.iter().enumerate() {
                let entry = node
                    .entry(pe.wire())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(m) = entry else {
                    break;
                };
                if i + 1 == p.len() {
                    // A member that turns out to have members below it gets `.` when
                    // they are added; mark it now if they already are.
                    if !m.is_empty() {
                        m.insert(".".into(), Value::Object(Map::new()));
                    }
                } else if self.paths.contains(&p[..=i]) && !m.contains_key(".") {
                    m.insert(".".into(), Value::Object(Map::new()));
                }
                node = m;
            }
        }
        Value::Object(root)
    }

    /// Reads a `FieldsV1` value; `None` when it is not one.
    pub fn from_fields_v1(v: &Value) -> Option<Set> {
        let mut set = Set::new();
        let m = v.as_object()?;
        read_node(m, &mut Vec::new(), &mut set)?;
        Some(set)
    }
}

fn read_node(m: &Map<String, Value>, path: &mut Path, set: &mut Set) -> Option<()> {
    for (k, child) in m {
        if k == "." {
            if !path.is_empty() {
                set.insert(path.clone());
            }
            continue;
        }
        let pe = Pe::from_wire(k)?;
        let cm = child.as_object()?;
        path.push(pe);
        if cm.is_empty() {
            set.insert(path.clone());
        } else {
            read_node(cm, path, set)?;
        }
        path.pop();
    }
    Some(())
}

impl FromIterator<Path> for Set {
    fn from_iter<I: IntoIterator<Item = Path>>(iter: I) -> Set {
        Set {
            paths: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> Pe {
        Pe::Field(s.into())
    }

    #[test]
    fn fields_v1_round_trip_with_dot_markers() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}}}}
                }}}
            },
            "f:metadata2": {"f:finalizers": {".": {}, "v:\"a\"": {}}}
        });
        let set = Set::from_fields_v1(&v).expect("parses");
        assert!(set.contains(&[f("spec"), f("replicas")]));
        assert!(set.contains(&[f("metadata"), f("labels")]));
        assert!(!set.contains(&[f("metadata")]));
        assert!(!set.contains(&[f("spec")]));
        assert_eq!(set.to_fields_v1(), v);
    }

    #[test]
    fn keys_are_canonical_and_print_like_upstream() {
        let a = Pe::from_wire("k:{ \"protocol\":\"TCP\", \"containerPort\":80}").expect("key");
        assert_eq!(
            a,
            Pe::Key(r#"{"containerPort":80,"protocol":"TCP"}"#.into())
        );
        let p = vec![
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            Pe::Key(r#"{"name":"web"}"#.into()),
            f("ports"),
            a,
        ];
        assert_eq!(
            path_string(&p),
            r#".spec.template.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"]"#
        );
        assert_eq!(
            path_string(&[f("metadata"), f("finalizers"), Pe::Value("\"x\"".into())]),
            r#".metadata.finalizers[="x"]"#
        );
    }

    #[test]
    fn named_parents_skip_list_items() {
        let set: Set = [vec![
            f("spec"),
            f("containers"),
            Pe::Key(r#"{"name":"a"}"#.into()),
            f("image"),
        ]]
        .into_iter()
        .collect();
        let named = set.with_named_parents();
        assert!(named.contains(&[f("spec")]));
        assert!(named.contains(&[f("spec"), f("containers")]));
        assert!(!named.contains(&[
            f("spec"),
            f("containers"),
            Pe::Key(r#"{"name":"a"}"#.into())
        ]));
        assert_eq!(named.len(), 3);
        assert!(set.has_below(&[f("spec")]));
        assert!(!set.has_below(&[f("status")]));
    }

    #[test]
    fn conflicts_are_listed_members_first() {
        let set: Set = [
            vec![f("spec"), f("a"), f("b")],
            vec![f("spec"), f("z")],
            vec![f("data")],
        ]
        .into_iter()
        .collect();
        let order: Vec<String> = set
            .walk_order()
            .into_iter()
            .map(|p| path_string(p))
            .collect();
        assert_eq!(order, [".data", ".spec.z", ".spec.a.b"]);
    }

    #[test]
    fn bad_fields_v1_is_refused() {
        assert!(Set::from_fields_v1(&json!({"x:y": {}})).is_none());
        assert!(Set::from_fields_v1(&json!({"f:y": 1})).is_none());
        assert!(Set::from_fields_v1(&json!([])).is_none());
    }
}
