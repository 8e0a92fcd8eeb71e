//! `ApiError`: every way a request can fail, and the one place that turns a failure into
//! Kubernetes' `Status` body and HTTP code (`ApiError::status`), with upstream's reasons
//! and message wording, because clients (kubectl, client-go, kube-rs) branch on them.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::resources::ResourceType;

/// A failed request, or a failure to start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The named object does not exist.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: String,
        group: String,
        name: String,
    },
    /// The path names no resource the server serves.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// Create of a name that exists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: String,
        group: String,
        name: String,
    },
    /// The client's resourceVersion is not the stored one (optimistic concurrency).
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict {
        resource: String,
        group: String,
        name: String,
        detail: String,
    },
    /// The object fails validation; `causes` are (field, message) pairs. The message
    /// names the group-qualified kind (`Deployment.apps`), as upstream's NewInvalid.
    #[error("{kind}{} \"{name}\" is invalid: {}", if group.is_empty() { String::new() } else { format!(".{group}") }, causes.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join(", "))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        causes: Vec<(String, String)>,
    },
    /// A server-side apply would change fields other managers own: upstream's
    /// `NewApplyConflict`, 409 with one `FieldManagerConflict` cause per field, given
    /// as (field path, message).
    #[error("{message}")]
    ApplyConflict {
        message: String,
        causes: Vec<(String, String)>,
    },
    /// A failure upstream reports as a plain 500 with no reason (an error that is no
    /// API status, e.g. an applied configuration structured-merge-diff cannot type).
    #[error("{0}")]
    Unclassified(String),
    /// A well-formed request that cannot be carried out (a patch that does not apply);
    /// upstream's generic 422 with the reason `Invalid` and the message as it is.
    #[error("{0}")]
    Unprocessable(String),
    /// A malformed request (body, query, selector).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials we do not accept.
    #[error("Unauthorized")]
    Unauthorized,
    /// The verb is not served on this path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// The body's content type is not one the verb accepts; carries the accepted ones.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(&'static str),
    /// The request body is over the limit (3 MiB, as kube-apiserver).
    #[error("Request entity too large: limit is 3145728")]
    TooLarge,
    /// A resourceVersion or continue token older than the store's compaction.
    #[error("{0}")]
    Expired(String),
    /// The store has compacted away the revision a read asked for (etcd's
    /// ErrCompacted); callers turn it into the 410 their request calls for.
    #[error("the requested revision has been compacted")]
    Compacted,
    /// A continue token older than the store's compaction; carries a fresh token.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")]
    ExpiredContinue(String),
    /// The request is understood but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The authorizer denied the request: upstream's 403 naming the resource (details
    /// `group`, `kind` = the resource, `name`, each only when set) and the message of
    /// `rbac::forbidden`.
    #[error("{message}")]
    Denied {
        group: String,
        resource: String,
        name: String,
        message: String,
    },
    /// A resourceVersion newer than anything the server has seen (after the wait).
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: i64, current: i64 },
    /// The store did not answer in time.
    #[error("Timeout: {0}")]
    Timeout(String),
    /// A node's kubelet answered a proxied request (logs, exec) with an error; its
    /// code and text pass on, as upstream's generic response checker does.
    #[error("{message}")]
    Kubelet { code: u16, message: String },
    /// The store failed.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// Startup failed (PKI, config files, listener).
    #[error("{0}")]
    Setup(String),
}

impl ApiError {
    pub fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::NotFound {
            resource: rt.qualified(),
            group: rt.group.into(),
            name: name.into(),
        }
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::AlreadyExists {
            resource: rt.qualified(),
            group: rt.group.into(),
            name: name.into(),
        }
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::Conflict {
            resource: rt.qualified(),
            group: rt.group.into(),
            name: name.into(),
            detail: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }

    pub fn invalid(rt: &ResourceType, name: &str, field: &str, msg: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            kind: rt.kind.into(),
            group: rt.group.into(),
            name: name.into(),
            causes: vec![(field.into(), msg.into())],
        }
    }

    /// The HTTP code, reason and `details` of upstream's `Status` for this error.
    fn parts(&self) -> (StatusCode, &'static str, Value) {
        use ApiError::*;
        let plural = |r: &str| r.split('.').next().unwrap_or(r).to_string();
        match self {
            NotFound {
                resource,
                group,
                name,
            } => (
                StatusCode::NOT_FOUND,
                "NotFound",
                json!({"name": name, "group": group, "kind": plural(resource)}),
            ),
            NoRoute => (StatusCode::NOT_FOUND, "NotFound", json!({})),
            AlreadyExists {
                resource,
                group,
                name,
            } => (
                StatusCode::CONFLICT,
                "AlreadyExists",
                json!({"name": name, "group": group, "kind": plural(resource)}),
            ),
            Conflict {
                resource,
                group,
                name,
                ..
            } => (
                StatusCode::CONFLICT,
                "Conflict",
                json!({"name": name, "group": group, "kind": plural(resource)}),
            ),
            Invalid {
                kind,
                group,
                name,
                causes,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                json!({"name": name, "group": group, "kind": kind, "causes":
                    causes.iter().map(|(f, m)| json!({"reason": cause_reason(m), "message": m, "field": f})).collect::<Vec<_>>()}),
            ),
            ApplyConflict { causes, .. } => (
                StatusCode::CONFLICT,
                "Conflict",
                json!({"causes": causes.iter().map(|(f, m)| json!({"reason": "FieldManagerConflict", "message": m, "field": f})).collect::<Vec<_>>()}),
            ),
            Unclassified(_) => (StatusCode::INTERNAL_SERVER_ERROR, "", json!({})),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest", json!({})),
            Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid", json!({})),
            Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized", json!({})),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                json!({}),
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                json!({}),
            ),
            TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                json!({}),
            ),
            Expired(_) | ExpiredContinue(_) | Compacted => (StatusCode::GONE, "Expired", json!({})),
            Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden", json!({})),
            Denied {
                group,
                resource,
                name,
                ..
            } => {
                let mut d = serde_json::Map::new();
                for (k, v) in [("name", name), ("group", group), ("kind", resource)] {
                    if !v.is_empty() {
                        d.insert(k.into(), json!(v));
                    }
                }
                (StatusCode::FORBIDDEN, "Forbidden", Value::Object(d))
            }
            TooLargeResourceVersion { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
            ),
            Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Timeout", json!({})),
            Kubelet { code, .. } => {
                let code = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let reason = match code {
                    StatusCode::BAD_REQUEST => "BadRequest",
                    StatusCode::NOT_FOUND => "NotFound",
                    StatusCode::FORBIDDEN => "Forbidden",
                    StatusCode::UNAUTHORIZED => "Unauthorized",
                    StatusCode::CONFLICT => "Conflict",
                    c if c.is_server_error() => "InternalError",
                    _ => "Unknown",
                };
                (code, reason, json!({}))
            }
            Internal(_) | Setup(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                json!({}),
            ),
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        self.parts().0
    }

    /// The `Status` object clients receive (also the object of a watch `ERROR` event).
    pub fn status(&self) -> Value {
        let (code, reason, details) = self.parts();
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        if reason.is_empty() {
            if let Some(m) = s.as_object_mut() {
                m.remove("reason");
            }
        }
        if let ApiError::ExpiredContinue(token) = self {
            s["metadata"] = json!({"continue": token});
        }
        // A denial always carries details, empty for a path (upstream's non-nil
        // StatusDetails with every field omitted).
        if details.as_object().is_some_and(|d| !d.is_empty())
            || matches!(self, ApiError::Denied { .. })
        {
            s["details"] = details;
        }
        s
    }
}

/// The cause reason of a field error, from the wording upstream's `field.Error` gives
/// each type (`Required value: ...` is `FieldValueRequired`...).
fn cause_reason(message: &str) -> &'static str {
    const REASONS: &[(&str, &str)] = &[
        ("Required value", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Not found", "FieldValueNotFound"),
    ];
    REASONS
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map_or("FieldValueInvalid", |(_, r)| r)
}

impl From<crate::managed::ApplyError> for ApiError {
    fn from(e: crate::managed::ApplyError) -> ApiError {
        use crate::managed::ApplyError as E;
        match e {
            E::BadRequest(m) => ApiError::BadRequest(m),
            E::Unfit(m) => ApiError::Unclassified(m),
            E::Conflicts { message, causes } => ApiError::ApplyConflict { message, causes },
        }
    }
}

impl From<etcd_client::Error> for ApiError {
    fn from(e: etcd_client::Error) -> ApiError {
        match &e {
            etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::DeadlineExceeded => {
                ApiError::Timeout(s.message().to_string())
            }
            // etcd's ErrCompacted: OutOfRange, "mvcc: required revision has been compacted".
            etcd_client::Error::GRpcStatus(s)
                if s.code() == tonic::Code::OutOfRange && s.message().contains("compacted") =>
            {
                ApiError::Compacted
            }
            // The store's own words, as the Go client's error reads (e.g. "etcdserver:
            // request timed out" from a member without a quorum), not the Rust
            // client's description of the gRPC status around them; kube-apiserver
            // answers such an error, which is no API status, as a plain 500.
            etcd_client::Error::GRpcStatus(s) => ApiError::Unclassified(s.message().to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::patch::PatchError> for ApiError {
    /// kube-apiserver's codes for patch failures (its `interpretStrategicMergePatchError`
    /// and JSON patch handling), which the patch module reports.
    fn from(e: crate::patch::PatchError) -> ApiError {
        match e.status_code() {
            400 | 413 => ApiError::BadRequest(e.to_string()),
            422 => ApiError::Unprocessable(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// A protobuf body that could not be read, worded as kube-apiserver's
    /// `transformDecodeError`: with the kind the envelope named when it got that far,
    /// otherwise with a hex summary of the body's first 30 bytes.
    pub fn undecodable(
        expected_kind: &str,
        e: &crate::protobuf::ProtobufError,
        body: &[u8],
    ) -> ApiError {
        if let Some((api_version, kind)) = e.group_version_kind() {
            let version = api_version.rsplit('/').next().unwrap_or(api_version);
            return ApiError::BadRequest(format!(
                "{kind} in version \"{version}\" cannot be handled as a {expected_kind}: {e}"
            ));
        }
        let summary = match body {
            [] => "<empty>".to_string(),
            b if b.len() > 30 => format!("{} ...", hex(&b[..30])),
            b => hex(b),
        };
        ApiError::BadRequest(format!(
            "the object provided is unrecognized (must be of type {expected_kind}): {e} ({summary})"
        ))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let code = self.code();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.status().to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_read_as_the_go_clients() {
        let timed_out = etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "etcdserver: request timed out",
        ));
        let e = ApiError::from(timed_out);
        assert_eq!(e.to_string(), "etcdserver: request timed out");
        assert!(matches!(e, ApiError::Unclassified(_)));
    }
}
