//! Request bodies in `application/vnd.kubernetes.protobuf`, which client-go's typed
//! clients (kubectl's `create deployment`, `run`, `expose`...) send: the envelope (the
//! magic `k8s\0`, then a `runtime.Unknown` naming apiVersion and kind and carrying the
//! object's message) is turned into the JSON the same client would have sent, so the
//! object then takes the one decode, validation and defaulting path of JSON bodies.
//!
//! The conversion is driven by Kubernetes' own `generated.proto` descriptors (compiled
//! into `capstan_proto::k8s`) through `prost-reflect`, with the JSON forms Kubernetes
//! gives its well-known types (Time, MicroTime, Duration, IntOrString, Quantity,
//! FieldsV1, RawExtension) and the facts the descriptors lack (inline members, the one
//! JSON name that differs, which scalars keep a zero value), from
//! `capstan_proto::k8s::FIELD_NOTES`.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use base64::Engine;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{json, Map, Value as Json};

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What every protobuf body starts with.
const MAGIC: [u8; 4] = [b'k', b'8', b's', 0];

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

/// Why a protobuf body could not be read. The messages are upstream's (its protobuf
/// serializer's and gogo-protobuf's), as clients show them to users.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtobufError {
    /// The body is empty.
    #[error("empty data")]
    Empty,
    /// The body does not start with the magic `k8s\0`.
    #[error(
        "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
    )]
    Magic,
    /// The body is the magic and nothing else.
    #[error("empty body")]
    EmptyBody,
    /// The envelope (`runtime.Unknown`) is not a valid message.
    #[error("{0}")]
    Envelope(String),
    /// The envelope names no kind.
    #[error("Object 'Kind' is missing in '{0}'")]
    MissingKind(String),
    /// The envelope names no apiVersion.
    #[error("Object 'apiVersion' is missing in '{0}'")]
    MissingVersion(String),
    /// The envelope names a kind this server has no message type for.
    #[error("no kind \"{kind}\" is registered for version \"{api_version}\" in scheme \"pkg/api/legacyscheme/scheme.go:30\"")]
    UnknownKind { api_version: String, kind: String },
    /// The object's own message (or an object embedded in it) is not valid.
    #[error("{detail}")]
    Object {
        api_version: String,
        kind: String,
        detail: String,
    },
}

impl ProtobufError {
    /// The apiVersion and kind the envelope named, when it got that far; upstream words
    /// its error differently with and without them.
    pub fn group_version_kind(&self) -> Option<(&str, &str)> {
        match self {
            ProtobufError::UnknownKind { api_version, kind }
            | ProtobufError::Object {
                api_version, kind, ..
            } => Some((api_version, kind)),
            _ => None,
        }
    }
}

/// Whether a Content-Type header names the protobuf encoding.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// The descriptors and the field notes, parsed once.
struct Schema {
    pool: DescriptorPool,
    /// `<message>.<field>` of members flattened into their parent in JSON.
    inline: HashSet<String>,
    /// `<message>.<field>` of scalars whose zero value is written to JSON.
    keep_zero: HashSet<String>,
    /// `<message>.<field>` whose JSON name is not the field's name.
    renamed: HashMap<String, String>,
}

static SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(capstan_proto::k8s::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("the built-in Kubernetes descriptors do not load: {e}"))?;
    let mut inline = HashSet::new();
    let mut keep_zero = HashSet::new();
    let mut renamed = HashMap::new();
    for line in capstan_proto::k8s::FIELD_NOTES.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some((field, "inline")) => inline.insert(field.to_string()),
            Some((field, "keepzero")) => keep_zero.insert(field.to_string()),
            Some((field, note)) if note.starts_with("json=") => {
                renamed.insert(field.to_string(), note["json=".len()..].to_string());
                true
            }
            _ => return Err(format!("bad line in the Kubernetes field notes: {line}")),
        };
    }
    Ok(Schema {
        pool,
        inline,
        keep_zero,
        renamed,
    })
});

fn schema() -> Result<&'static Schema, ProtobufError> {
    SCHEMA
        .as_ref()
        .map_err(|e| ProtobufError::Envelope(e.clone()))
}

/// The protobuf package of an API group version (`apps/v1` -> `k8s.io.api.apps.v1`).
fn package(api_version: &str) -> String {
    match api_version.split_once('/') {
        None => format!("k8s.io.api.core.{api_version}"),
        Some(("meta.k8s.io", v)) => format!("k8s.io.apimachinery.pkg.apis.meta.{v}"),
        // The Go package is the group's first label: networking.k8s.io → networking,
        // rbac.authorization.k8s.io → rbac.
        Some((group, v)) => {
            let short = group.split('.').next().unwrap_or(group);
            format!("k8s.io.api.{short}.{v}")
        }
    }
}

/// The message type of `kind` in `api_version`. Options types (DeleteOptions...) are
/// meta/v1's, whatever group version the client put on them.
fn message_for(pool: &DescriptorPool, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    pool.get_message_by_name(&format!("{}.{kind}", package(api_version)))
        .or_else(|| pool.get_message_by_name(&format!("{META}.{kind}")))
}

/// Decodes a protobuf request body into the JSON object a JSON client would have sent,
/// apiVersion and kind included.
pub fn to_json(body: &[u8]) -> Result<Json, ProtobufError> {
    envelope_to_json(body, 0)
}

/// How deep objects may nest inside RawExtensions of objects (none of the served types'
/// messages is recursive, so this bounds the conversion's recursion).
const MAX_EMBEDDED: u32 = 8;

fn envelope_to_json(body: &[u8], depth: u32) -> Result<Json, ProtobufError> {
    let schema = schema()?;
    let rest = match body {
        [] => return Err(ProtobufError::Empty),
        b if !b.starts_with(&MAGIC) => return Err(ProtobufError::Magic),
        b if b.len() == MAGIC.len() => return Err(ProtobufError::EmptyBody),
        b => &b[MAGIC.len()..],
    };
    let unknown = schema
        .pool
        .get_message_by_name(UNKNOWN)
        .ok_or_else(|| ProtobufError::Envelope(format!("no descriptor for {UNKNOWN}")))?;
    let envelope = DynamicMessage::decode(unknown, rest)
        .map_err(|e| ProtobufError::Envelope(decode_detail(&e)))?;
    let (api_version, kind, raw) = envelope_parts(&envelope);
    let type_meta = format!("TypeMeta{{APIVersion:\"{api_version}\", Kind:\"{kind}\"}}");
    if kind.is_empty() {
        return Err(ProtobufError::MissingKind(type_meta));
    }
    if api_version.is_empty() {
        return Err(ProtobufError::MissingVersion(type_meta));
    }
    let desc = message_for(&schema.pool, &api_version, &kind).ok_or_else(|| {
        ProtobufError::UnknownKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        }
    })?;
    let object = |detail: String| ProtobufError::Object {
        api_version: api_version.clone(),
        kind: kind.clone(),
        detail,
    };
    let msg =
        DynamicMessage::decode(desc, raw.as_slice()).map_err(|e| object(decode_detail(&e)))?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!(kind));
    message_into(schema, &msg, &mut out, depth).map_err(object)?;
    Ok(Json::Object(out))
}

/// apiVersion, kind and raw of a `runtime.Unknown`.
fn envelope_parts(envelope: &DynamicMessage) -> (String, String, Vec<u8>) {
    let text = |m: &DynamicMessage, name: &str| {
        m.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let (api_version, kind) = match envelope.get_field_by_name("typeMeta") {
        Some(tm) => match tm.as_message() {
            Some(tm) => (text(tm, "apiVersion"), text(tm, "kind")),
            None => Default::default(),
        },
        None => Default::default(),
    };
    let raw = envelope
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().map(|b| b.to_vec()))
        .unwrap_or_default();
    (api_version, kind, raw)
}

/// The decoder's complaint in gogo-protobuf's words where they differ: a message cut
/// short is Go's "unexpected EOF".
fn decode_detail(e: &prost_reflect::prost::DecodeError) -> String {
    let text = e.to_string();
    if text.contains("buffer underflow") || text.contains("invalid varint") {
        "unexpected EOF".into()
    } else {
        text
    }
}

/// Writes the JSON members of `msg` into `out`.
fn message_into(
    schema: &Schema,
    msg: &DynamicMessage,
    out: &mut Map<String, Json>,
    depth: u32,
) -> Result<(), String> {
    let desc = msg.descriptor();
    for (field, value) in msg.fields() {
        let key = format!("{}.{}", desc.full_name(), field.name());
        if schema.inline.contains(&key) {
            if let Value::Message(inner) = value {
                message_into(schema, inner, out, depth)?;
            }
            continue;
        }
        let json = if field.is_map() {
            let Value::Map(entries) = value else { continue };
            if entries.is_empty() {
                continue;
            }
            let mut m = Map::new();
            for (k, v) in entries {
                m.insert(map_key(k), single(schema, v, depth)?);
            }
            Json::Object(m)
        } else if field.is_list() {
            let Value::List(items) = value else { continue };
            if items.is_empty() {
                continue;
            }
            items
                .iter()
                .map(|v| single(schema, v, depth))
                .collect::<Result<Vec<_>, _>>()
                .map(Json::Array)?
        } else {
            // The Go marshaller writes every non-pointer scalar, so a zero one is only
            // meaningful where the Go field is a pointer or has no omitempty.
            if is_zero_scalar(value) && !schema.keep_zero.contains(&key) {
                continue;
            }
            single(schema, value, depth)?
        };
        let name = schema
            .renamed
            .get(&key)
            .map_or(field.name(), String::as_str);
        out.insert(name.to_string(), json);
    }
    Ok(())
}

fn is_zero_scalar(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::I32(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        Value::F32(n) => *n == 0.0,
        Value::F64(n) => *n == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::EnumNumber(n) => *n == 0,
        Value::Message(_) | Value::List(_) | Value::Map(_) => false,
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// One value (a field's, a list item's or a map value's) as JSON.
fn single(schema: &Schema, v: &Value, depth: u32) -> Result<Json, String> {
    Ok(match v {
        Value::Bool(b) => json!(b),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F32(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => json!(n),
        Value::Message(m) => well_known(schema, m, depth)?,
        Value::List(items) => Json::Array(
            items
                .iter()
                .map(|i| single(schema, i, depth))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                m.insert(map_key(k), single(schema, v, depth)?);
            }
            Json::Object(m)
        }
    })
}

/// A message as JSON, with Kubernetes' own JSON form for its well-known types.
fn well_known(schema: &Schema, m: &DynamicMessage, depth: u32) -> Result<Json, String> {
    let int = |name: &str| -> i64 {
        match m.get_field_by_name(name).as_deref() {
            Some(Value::I64(n)) => *n,
            Some(Value::I32(n)) => i64::from(*n),
            _ => 0,
        }
    };
    let text = |name: &str| -> String {
        m.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let bytes = |name: &str| -> Vec<u8> {
        m.get_field_by_name(name)
            .and_then(|v| v.as_bytes().map(|b| b.to_vec()))
            .unwrap_or_default()
    };
    let name = m.descriptor().full_name().to_string();
    Ok(match name.as_str() {
        // The zero time is an empty message, which JSON writes as null; the wire's
        // nanoseconds are dropped for Time (its JSON has none) and cut to microseconds
        // for MicroTime, as upstream's decoder does.
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            if m.fields().next().is_none() {
                Json::Null
            } else {
                json!(rfc3339(int("seconds"), None)?)
            }
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            if m.fields().next().is_none() {
                Json::Null
            } else {
                json!(rfc3339(int("seconds"), Some(int("nanos")))?)
            }
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => json!(go_duration(int("duration"))),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            if int("type") == 1 {
                json!(text("strVal"))
            } else {
                json!(int("intVal"))
            }
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => json!(text("string")),
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => embedded(&bytes("Raw"), depth)?,
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => embedded(&bytes("raw"), depth)?,
        UNKNOWN => embedded(&bytes("raw"), depth)?,
        _ => {
            let mut out = Map::new();
            message_into(schema, m, &mut out, depth)?;
            Json::Object(out)
        }
    })
}

/// The bytes of a RawExtension or FieldsV1: JSON as it is, or a nested protobuf
/// envelope, converted in turn.
fn embedded(raw: &[u8], depth: u32) -> Result<Json, String> {
    if raw.is_empty() {
        return Ok(Json::Null);
    }
    if raw.starts_with(&MAGIC) {
        if depth >= MAX_EMBEDDED {
            return Err(format!("objects nested deeper than {MAX_EMBEDDED} levels"));
        }
        return envelope_to_json(raw, depth + 1).map_err(|e| e.to_string());
    }
    serde_json::from_slice(raw).map_err(|e| format!("error decoding embedded object: {e}"))
}

/// Seconds (and, for MicroTime, nanoseconds cut to microseconds) since the epoch in the
/// RFC 3339 form Kubernetes writes: UTC, `Z`, six fractional digits for MicroTime.
fn rfc3339(seconds: i64, nanos: Option<i64>) -> Result<String, String> {
    let micros = nanos.map(|n| n.clamp(0, 999_999_999) / 1000);
    let t = chrono::DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| format!("time out of range: {seconds}s"))?;
    let base = t.format("%Y-%m-%dT%H:%M:%S");
    Ok(match micros {
        None => format!("{base}Z"),
        Some(us) => format!("{base}.{us:06}Z"),
    })
}

/// A duration in nanoseconds as Go's `time.Duration.String()` writes it ("1h0m0s",
/// "1.5s", "300ms", "0s"), which is metav1.Duration's JSON form.
pub fn go_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u == 0 {
        return "0s".into();
    }
    if u < 1_000_000_000 {
        return match u {
            u if u < 1_000 => format!("{sign}{u}ns"),
            u if u < 1_000_000 => format!("{sign}{}µs", fraction(u, 3)),
            u => format!("{sign}{}ms", fraction(u, 6)),
        };
    }
    let secs = u / 1_000_000_000;
    let s = format!("{}s", fraction(u % 60_000_000_000, 9));
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    match (h, m) {
        (0, 0) => format!("{sign}{s}"),
        (0, m) => format!("{sign}{m}m{s}"),
        (h, m) => format!("{sign}{h}h{m}m{s}"),
    }
}

/// `v / 10^digits` with the fraction's trailing zeros (and a bare point) left out.
fn fraction(v: u64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    let (int, frac) = (v / scale, v % scale);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::prost::Message;

    /// A message of `name` built from (field, value) pairs; a value that is itself a
    /// `Vec<(…)>` is written with `msg`.
    fn msg(name: &str, fields: Vec<(&str, Value)>) -> DynamicMessage {
        let pool = &schema().expect("descriptors load").pool;
        let desc = pool
            .get_message_by_name(name)
            .unwrap_or_else(|| panic!("no message {name}"));
        let mut m = DynamicMessage::new(desc);
        for (f, v) in fields {
            m.try_set_field_by_name(f, v)
                .unwrap_or_else(|e| panic!("{name}.{f}: {e}"));
        }
        m
    }

    fn m(name: &str, fields: Vec<(&str, Value)>) -> Value {
        Value::Message(msg(name, fields))
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let tm = m(
            "k8s.io.apimachinery.pkg.runtime.TypeMeta",
            vec![("apiVersion", s(api_version)), ("kind", s(kind))],
        );
        let unk = msg(
            UNKNOWN,
            vec![("typeMeta", tm), ("raw", Value::Bytes(raw.into()))],
        );
        let mut out = MAGIC.to_vec();
        out.extend(unk.encode_to_vec());
        out
    }

    fn meta(name: &str) -> Value {
        // As the Go marshaller writes an ObjectMeta: every non-pointer scalar, zero or
        // not, and the zero creationTimestamp as an empty message.
        m(
            &format!("{META}.ObjectMeta"),
            vec![
                ("name", s(name)),
                ("generateName", s("")),
                ("namespace", s("")),
                ("generation", Value::I64(0)),
                ("creationTimestamp", m(&format!("{META}.Time"), vec![])),
            ],
        )
    }

    fn int_or_string(v: Result<i32, &str>) -> Value {
        let f = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
        match v {
            Ok(n) => m(
                f,
                vec![
                    ("type", Value::I64(0)),
                    ("intVal", Value::I32(n)),
                    ("strVal", s("")),
                ],
            ),
            Err(t) => m(
                f,
                vec![
                    ("type", Value::I64(1)),
                    ("intVal", Value::I32(0)),
                    ("strVal", s(t)),
                ],
            ),
        }
    }

    fn quantity(q: &str) -> Value {
        m(
            "k8s.io.apimachinery.pkg.api.resource.Quantity",
            vec![("string", s(q))],
        )
    }

    #[test]
    fn deployment_with_pointer_zero_int_or_string_and_null_timestamp() {
        let core = "k8s.io.api.core.v1";
        let container = m(
            &format!("{core}.Container"),
            vec![
                ("name", s("nginx")),
                ("image", s("nginx:1.27")),
                (
                    "ports",
                    Value::List(vec![m(
                        &format!("{core}.ContainerPort"),
                        vec![
                            ("containerPort", Value::I32(80)),
                            ("hostPort", Value::I32(0)),
                            ("protocol", s("")),
                        ],
                    )]),
                ),
                (
                    "resources",
                    m(
                        &format!("{core}.ResourceRequirements"),
                        vec![(
                            "limits",
                            Value::Map(
                                [
                                    (MapKey::String("cpu".into()), quantity("500m")),
                                    (MapKey::String("memory".into()), quantity("1Gi")),
                                ]
                                .into(),
                            ),
                        )],
                    ),
                ),
                (
                    "livenessProbe",
                    m(
                        &format!("{core}.Probe"),
                        vec![
                            (
                                "handler",
                                m(
                                    &format!("{core}.ProbeHandler"),
                                    vec![(
                                        "httpGet",
                                        m(
                                            &format!("{core}.HTTPGetAction"),
                                            vec![("path", s("/")), ("port", int_or_string(Ok(80)))],
                                        ),
                                    )],
                                ),
                            ),
                            ("periodSeconds", Value::I32(0)),
                        ],
                    ),
                ),
            ],
        );
        let pod_spec = m(
            &format!("{core}.PodSpec"),
            vec![
                ("containers", Value::List(vec![container])),
                (
                    "volumes",
                    Value::List(vec![m(
                        &format!("{core}.Volume"),
                        vec![
                            ("name", s("cfg")),
                            (
                                "volumeSource",
                                m(
                                    &format!("{core}.VolumeSource"),
                                    vec![(
                                        "configMap",
                                        m(
                                            &format!("{core}.ConfigMapVolumeSource"),
                                            vec![(
                                                "localObjectReference",
                                                m(
                                                    &format!("{core}.LocalObjectReference"),
                                                    vec![("name", s("web"))],
                                                ),
                                            )],
                                        ),
                                    )],
                                ),
                            ),
                        ],
                    )]),
                ),
            ],
        );
        let labels = Value::Map([(MapKey::String("app".into()), s("web"))].into());
        let dep = msg(
            "k8s.io.api.apps.v1.Deployment",
            vec![
                ("metadata", meta("web")),
                (
                    "spec",
                    m(
                        "k8s.io.api.apps.v1.DeploymentSpec",
                        vec![
                            ("replicas", Value::I32(0)),
                            (
                                "selector",
                                m(
                                    &format!("{META}.LabelSelector"),
                                    vec![("matchLabels", labels.clone())],
                                ),
                            ),
                            (
                                "template",
                                m(
                                    &format!("{core}.PodTemplateSpec"),
                                    vec![
                                        (
                                            "metadata",
                                            m(
                                                &format!("{META}.ObjectMeta"),
                                                vec![
                                                    ("labels", labels),
                                                    (
                                                        "creationTimestamp",
                                                        m(&format!("{META}.Time"), vec![]),
                                                    ),
                                                ],
                                            ),
                                        ),
                                        ("spec", pod_spec),
                                    ],
                                ),
                            ),
                            (
                                "strategy",
                                m(
                                    "k8s.io.api.apps.v1.DeploymentStrategy",
                                    vec![(
                                        "rollingUpdate",
                                        m(
                                            "k8s.io.api.apps.v1.RollingUpdateDeployment",
                                            vec![
                                                ("maxSurge", int_or_string(Err("25%"))),
                                                ("maxUnavailable", int_or_string(Ok(1))),
                                            ],
                                        ),
                                    )],
                                ),
                            ),
                            ("paused", Value::Bool(false)),
                        ],
                    ),
                ),
                (
                    "status",
                    m(
                        "k8s.io.api.apps.v1.DeploymentStatus",
                        vec![("replicas", Value::I32(0))],
                    ),
                ),
            ],
        );
        let got =
            to_json(&envelope("apps/v1", "Deployment", dep.encode_to_vec())).expect("decodes");
        assert_eq!(
            got,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "creationTimestamp": null},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                        "spec": {
                            "containers": [{
                                "name": "nginx", "image": "nginx:1.27",
                                "ports": [{"containerPort": 80}],
                                "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                                "livenessProbe": {"httpGet": {"path": "/", "port": 80}},
                            }],
                            "volumes": [{"name": "cfg", "configMap": {"name": "web"}}],
                        },
                    },
                    "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                },
                "status": {},
            })
        );
    }

    #[test]
    fn secret_bytes_are_base64_and_round_trip() {
        let binary: Vec<u8> = (0..=255).collect();
        let secret = msg(
            "k8s.io.api.core.v1.Secret",
            vec![
                ("metadata", meta("s")),
                (
                    "data",
                    Value::Map(
                        [(
                            MapKey::String("bin".into()),
                            Value::Bytes(binary.clone().into()),
                        )]
                        .into(),
                    ),
                ),
                ("type", s("Opaque")),
            ],
        );
        let got = to_json(&envelope("v1", "Secret", secret.encode_to_vec())).expect("decodes");
        let b64 = got
            .pointer("/data/bin")
            .and_then(Json::as_str)
            .expect("data.bin");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64"),
            binary
        );
        assert_eq!(got["type"], "Opaque");
    }

    #[test]
    fn times_micro_times_and_raw_extensions() {
        let created = m(
            &format!("{META}.Time"),
            vec![
                ("seconds", Value::I64(1_764_166_000)),
                ("nanos", Value::I32(123_456_789)),
            ],
        );
        let lease = msg(
            "k8s.io.api.coordination.v1.Lease",
            vec![
                (
                    "metadata",
                    m(
                        &format!("{META}.ObjectMeta"),
                        vec![("name", s("l")), ("creationTimestamp", created)],
                    ),
                ),
                (
                    "spec",
                    m(
                        "k8s.io.api.coordination.v1.LeaseSpec",
                        vec![
                            (
                                "renewTime",
                                m(
                                    &format!("{META}.MicroTime"),
                                    vec![
                                        ("seconds", Value::I64(1_764_166_000)),
                                        ("nanos", Value::I32(123_456_789)),
                                    ],
                                ),
                            ),
                            ("leaseDurationSeconds", Value::I32(15)),
                        ],
                    ),
                ),
            ],
        );
        let got = to_json(&envelope(
            "coordination.k8s.io/v1",
            "Lease",
            lease.encode_to_vec(),
        ))
        .expect("decodes");
        assert_eq!(
            got.pointer("/metadata/creationTimestamp"),
            Some(&json!("2025-11-26T14:06:40Z"))
        );
        assert_eq!(
            got.pointer("/spec/renewTime"),
            Some(&json!("2025-11-26T14:06:40.123456Z"))
        );
        assert_eq!(got.pointer("/spec/leaseDurationSeconds"), Some(&json!(15)));

        let raw = br#"{"spec":{"template":{"metadata":{"labels":{"a":"b"}}}}}"#.to_vec();
        let rev = msg(
            "k8s.io.api.apps.v1.ControllerRevision",
            vec![
                ("metadata", meta("r")),
                (
                    "data",
                    m(
                        "k8s.io.apimachinery.pkg.runtime.RawExtension",
                        vec![("raw", Value::Bytes(raw.into()))],
                    ),
                ),
                ("revision", Value::I64(3)),
            ],
        );
        let got = to_json(&envelope(
            "apps/v1",
            "ControllerRevision",
            rev.encode_to_vec(),
        ))
        .expect("decodes");
        assert_eq!(
            got["data"],
            json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}})
        );
        assert_eq!(got["revision"], 3);
    }

    #[test]
    fn durations_are_written_as_go_does() {
        for (nanos, want) in [
            (0, "0s"),
            (999, "999ns"),
            (1_500, "1.5µs"),
            (300_000_000, "300ms"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (5_430_100_000_000, "1h30m30.1s"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(nanos), want, "{nanos}ns");
        }
    }

    #[test]
    fn malformed_bodies_are_errors_with_upstreams_words() {
        let cm = msg(
            "k8s.io.api.core.v1.ConfigMap",
            vec![("metadata", meta("c"))],
        )
        .encode_to_vec();
        let good = envelope("v1", "ConfigMap", cm.clone());
        assert!(to_json(&good).is_ok());
        assert_eq!(to_json(b""), Err(ProtobufError::Empty));
        assert_eq!(
            to_json(b"{\"kind\":\"ConfigMap\"}"),
            Err(ProtobufError::Magic)
        );
        assert_eq!(to_json(&MAGIC), Err(ProtobufError::EmptyBody));
        // Cut anywhere: never a panic (a cut at a field boundary is a valid, shorter
        // message, as in Go); cut inside the last field: an error.
        for cut in MAGIC.len() + 1..good.len() {
            let _ = to_json(&good[..cut]);
        }
        assert_eq!(
            to_json(&good[..good.len() - 1]),
            Err(ProtobufError::Envelope("unexpected EOF".into()))
        );
        let truncated_object = envelope("v1", "ConfigMap", cm[..cm.len() - 1].to_vec());
        let e = to_json(&truncated_object).expect_err("truncated object");
        assert_eq!(e.to_string(), "unexpected EOF");
        assert_eq!(
            crate::error::ApiError::undecodable("ConfigMap", &e, &truncated_object).to_string(),
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: unexpected EOF"
        );
        let e = to_json(&envelope("apps/v1", "Frobnicator", vec![])).expect_err("unknown kind");
        assert_eq!(
            crate::error::ApiError::undecodable("Deployment", &e, b"").to_string(),
            "Frobnicator in version \"v1\" cannot be handled as a Deployment: no kind \"Frobnicator\" is registered for version \"apps/v1\" in scheme \"pkg/api/legacyscheme/scheme.go:30\""
        );
        let e = to_json(&envelope("v1", "", vec![])).expect_err("no kind");
        assert_eq!(
            e.to_string(),
            "Object 'Kind' is missing in 'TypeMeta{APIVersion:\"v1\", Kind:\"\"}'"
        );
        let body = b"not protobuf at all, and longer than thirty bytes";
        let e = to_json(body).expect_err("magic");
        let api = crate::error::ApiError::undecodable("Deployment", &e, body);
        assert_eq!(api.code(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(
            api.to_string(),
            "the object provided is unrecognized (must be of type Deployment): provided data does not appear to be a protobuf message, expected prefix [107 56 115 0] (6e6f742070726f746f62756620617420616c6c2c20616e64206c6f6e6765 ...)"
        );
        // An embedded object that is not JSON is the object's error.
        let rev = msg(
            "k8s.io.api.apps.v1.ControllerRevision",
            vec![(
                "data",
                m(
                    "k8s.io.apimachinery.pkg.runtime.RawExtension",
                    vec![("raw", Value::Bytes(b"{nope".to_vec().into()))],
                ),
            )],
        );
        assert!(matches!(
            to_json(&envelope(
                "apps/v1",
                "ControllerRevision",
                rev.encode_to_vec()
            )),
            Err(ProtobufError::Object { .. })
        ));
    }

    #[test]
    fn json_names_that_differ_from_the_field_name() {
        let net = "k8s.io.api.networking.v1";
        let class = msg(
            &format!("{net}.IngressClass"),
            vec![
                ("metadata", meta("nginx")),
                (
                    "spec",
                    m(
                        &format!("{net}.IngressClassSpec"),
                        vec![
                            ("controller", s("example.com/ingress")),
                            (
                                "parameters",
                                m(
                                    &format!("{net}.IngressClassParametersReference"),
                                    vec![
                                        ("aPIGroup", s("k8s.example.com")),
                                        ("kind", s("Params")),
                                        ("name", s("p")),
                                    ],
                                ),
                            ),
                        ],
                    ),
                ),
            ],
        );
        let got = to_json(&envelope(
            "networking.k8s.io/v1",
            "IngressClass",
            class.encode_to_vec(),
        ))
        .expect("decodes");
        assert_eq!(
            got.pointer("/spec/parameters"),
            Some(&json!({"apiGroup": "k8s.example.com", "kind": "Params", "name": "p"}))
        );
    }

    #[test]
    fn options_types_are_meta_v1_whatever_group_version_names_them() {
        // A grace period of 0 is a pointer set to zero ("delete now"), so it is kept.
        let opts = msg(
            &format!("{META}.DeleteOptions"),
            vec![
                ("gracePeriodSeconds", Value::I64(0)),
                ("propagationPolicy", s("Foreground")),
                ("dryRun", Value::List(vec![s("All")])),
            ],
        );
        let got =
            to_json(&envelope("apps/v1", "DeleteOptions", opts.encode_to_vec())).expect("decodes");
        assert_eq!(
            got,
            json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "propagationPolicy": "Foreground", "dryRun": ["All"]})
        );
    }

    #[test]
    fn embedded_objects_nest_within_a_bound() {
        let revision = |inner: Vec<u8>| {
            let rev = msg(
                "k8s.io.api.apps.v1.ControllerRevision",
                vec![(
                    "data",
                    m(
                        "k8s.io.apimachinery.pkg.runtime.RawExtension",
                        vec![("raw", Value::Bytes(inner.into()))],
                    ),
                )],
            );
            envelope("apps/v1", "ControllerRevision", rev.encode_to_vec())
        };
        let mut body = br#"{"a":1}"#.to_vec();
        for _ in 0..2 {
            body = revision(body);
        }
        let got = to_json(&body).expect("two levels");
        assert_eq!(got.pointer("/data/data"), Some(&json!({"a": 1})));
        assert_eq!(
            got.pointer("/data/kind"),
            Some(&json!("ControllerRevision"))
        );
        for _ in 0..20 {
            body = revision(body);
        }
        assert!(matches!(to_json(&body), Err(ProtobufError::Object { .. })));
        // Deeply nested embedded JSON is refused by the JSON parser's own limit.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(to_json(&revision(deep.into_bytes())).is_err());
    }

    #[test]
    fn content_types() {
        assert!(is_protobuf("application/vnd.kubernetes.protobuf"));
        assert!(is_protobuf(
            "application/vnd.kubernetes.protobuf; charset=utf-8"
        ));
        assert!(!is_protobuf("application/json"));
    }
}
