//! The plain-HTTP endpoints etcd serves beside gRPC on its client URLs: `/health`
//! (what load balancers and kubeadm probe), `/version`, `/metrics` (Prometheus) and
//! the JSON gateway's `/v3/...` ([`super::gateway`]).
//! They share the client port with gRPC (HTTP/1.1 and HTTP/2 are told apart per
//! connection), as etcd's do.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::EtcdServer;
use crate::metrics::{render, CLUSTER_VERSION, SERVER_VERSION};

/// The HTTP routes; gRPC services are added to the same router by `serve`.
pub fn router(srv: Arc<EtcdServer>, gateway: super::gateway::Gateway) -> axum::Router {
    let metrics_srv = srv.clone();
    axum::Router::new()
        .route(
            "/v3/{*method}",
            post(
                move |Path(method): Path<String>, headers: HeaderMap, body: Bytes| {
                    gateway.clone().call_owned(method, headers, body)
                },
            )
            // A browser's preflight: the CORS headers and nothing else, as etcd's.
            .options(|| async {
                let mut h = HeaderMap::new();
                super::gateway::cors(&mut h);
                (StatusCode::OK, h)
            }),
        )
        .route("/health", get(move || health(srv.clone())))
        .route(
            "/version",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    format!(
                        r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#
                    ),
                )
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let srv = metrics_srv.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render(&srv),
                    )
                }
            }),
        )
}

/// Healthy when a read through the state machine succeeds and no alarm is raised, as
/// etcd's `/health` (which also reports unhealthy while NOSPACE is active).
async fn health(srv: Arc<EtcdServer>) -> impl IntoResponse {
    let (code, body) = if srv.sm.no_space() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"ALARM NOSPACE"}"#,
        )
    } else {
        (StatusCode::OK, r#"{"health":"true","reason":""}"#)
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}
