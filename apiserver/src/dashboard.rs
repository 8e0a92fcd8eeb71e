//! The built-in dashboard (`/dashboard/`): one static page, its script and its style,
//! compiled into the binary, and the one endpoint it needs beyond the Kubernetes API,
//! the store's members with their Raft state ([`STORE_PATH`]).
//!
//! The page is public, as it holds no data: everything it shows comes from requests it
//! makes to this same origin with the user's bearer token, which are authenticated and
//! authorized like any other (nodes, pods and deployments through list and watch, so a
//! user sees only what RBAC lets them read). The store endpoint is a non-resource URL,
//! so only users a role grants `get` on it reach it (by default the admins:
//! `system:masters` and `cluster-admin`'s `*`), since member URLs and Raft state are
//! operator matters. No build step and no external asset: the machine that serves the
//! dashboard may have no internet, and a browser loads nothing from elsewhere (the
//! content security policy forbids it).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::error::ApiError;
use crate::storage::{MemberStatus, Store};

/// Where the page is served.
pub const PAGE_PATH: &str = "/dashboard/";

/// The non-resource URL of the store's status, which RBAC authorizes as
/// `get` on `/dashboard/api/store`.
pub const STORE_PATH: &str = "/dashboard/api/store";

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard/dashboard.css");

/// Same origin only, no inline code: a page that handles a bearer token runs nothing
/// but its own script and talks to nothing but its own apiserver.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's static routes; merged into the apiserver's router outside authentication.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new binary serves a new page: never a stale script against a newer API.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The store's members, each with its Status, and the leader they agree on (`""` when
/// no member knows one): `{"leader": id, "raftTerm": n, "members": [...]}`.
pub async fn store_status(store: &Store) -> Result<Response, ApiError> {
    let members = store.member_statuses().await?;
    let body = json!({
        "kind": "StoreStatus",
        "leader": leader(&members),
        "raftTerm": members.iter().filter_map(|m| m.status.as_ref()).map(|s| s.raft_term).max(),
        "members": members,
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response())
}

/// The leader as the members of the highest term report it: a member still in an
/// older term (cut off, catching up) may name a leader that has since been replaced.
fn leader(members: &[MemberStatus]) -> String {
    members
        .iter()
        .filter_map(|m| m.status.as_ref())
        .filter(|s| !s.leader.is_empty())
        .max_by_key(|s| s.raft_term)
        .map(|s| s.leader.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EndpointStatus;

    fn member(id: &str, status: Option<(u64, &str)>) -> MemberStatus {
        MemberStatus {
            id: id.into(),
            name: id.into(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: false,
            status: status.map(|(term, leader)| EndpointStatus {
                version: "3.5.0".into(),
                db_size: 0,
                leader: leader.into(),
                raft_term: term,
                raft_index: 1,
                raft_applied_index: 1,
                errors: vec![],
            }),
            error: None,
        }
    }

    #[test]
    fn the_leader_is_the_one_of_the_newest_term() {
        let members = [
            member("a", Some((3, "a"))),
            member("b", Some((4, "c"))),
            member("c", None),
        ];
        assert_eq!(leader(&members), "c");
        assert_eq!(leader(&[member("a", Some((2, "")))]), "");
    }
}
