//! `/healthz`, `/livez` and `/readyz` as kube-apiserver serves them: named checks
//! (`ping`, `log`, `etcd`; for readiness also `etcd-readiness`, `informer-sync` and
//! `shutdown`), `ok` when all pass, one `[+]name ok` line per check and a verdict with
//! `?verbose`, `[-]name failed: reason withheld` and 500 when one fails, a single
//! check at `/livez/<name>`, and `?exclude=<name>`. The `etcd` checks read the store
//! within 2 s (`--etcd-healthcheck-timeout`), so a store that is down or has lost its
//! quorum makes the apiserver unready. Anonymous, as upstream allows them to everyone.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::App;

/// How long the store has to answer a health read.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// The checks of `kind` (`healthz`, `livez`, `readyz`), in upstream's order, each
/// with its failure (None: passed).
async fn run_checks(app: &App, kind: &str) -> Vec<(&'static str, Option<String>)> {
    let etcd = match tokio::time::timeout(ETCD_TIMEOUT, app.registry.store.revision()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer from the store within {ETCD_TIMEOUT:?}")),
    };
    let mut checks = vec![("ping", None), ("log", None), ("etcd", etcd.clone())];
    if kind == "readyz" {
        checks.push(("etcd-readiness", etcd));
        let unsynced = app.caches.values().filter(|c| c.revision() == 0).count();
        checks.push((
            "informer-sync",
            (unsynced > 0).then(|| format!("{unsynced} watch caches not synced")),
        ));
        checks.push(("shutdown", None));
    }
    checks
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The whole report of `kind`.
pub async fn root(app: &App, kind: &str, query: &[(String, String)]) -> Response {
    let mut excluded: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "exclude")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let verbose = query.iter().any(|(k, v)| k == "verbose" && v != "false");
    let mut lines = String::new();
    let mut failed = false;
    for (name, failure) in run_checks(app, kind).await {
        if let Some(i) = excluded.iter().position(|e| *e == name) {
            excluded.remove(i);
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match failure {
            None => lines.push_str(&format!("[+]{name} ok\n")),
            Some(e) => {
                tracing::info!(check = name, endpoint = kind, error = %e, "health check failed");
                failed = true;
                lines.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    if !excluded.is_empty() {
        let quoted: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        lines.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            quoted.join(",")
        ));
    }
    if failed {
        lines.push_str(&format!("{kind} check failed\n"));
        return text(StatusCode::INTERNAL_SERVER_ERROR, lines);
    }
    if !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    lines.push_str(&format!("{kind} check passed\n"));
    text(StatusCode::OK, lines)
}

/// One check of `kind`: `ok`, or 500 `internal server error: ...`; 404 for a check
/// that does not exist.
pub async fn single(app: &App, kind: &str, name: &str) -> Response {
    match run_checks(app, kind)
        .await
        .into_iter()
        .find(|(n, _)| *n == name)
    {
        Some((_, None)) => text(StatusCode::OK, "ok".into()),
        Some((_, Some(e))) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal server error: {e}\n"),
        ),
        None => text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
}

/// The routes, for `http::router`.
pub fn routes() -> axum::Router<std::sync::Arc<App>> {
    use axum::routing::get;
    let mut r = axum::Router::new();
    for kind in ["healthz", "livez", "readyz"] {
        r = r
            .route(
                &format!("/{kind}"),
                get(
                    move |State(app): State<std::sync::Arc<App>>,
                          Query(q): Query<Vec<(String, String)>>| async move {
                        root(&app, kind, &q).await
                    },
                ),
            )
            .route(
                &format!("/{kind}/{{check}}"),
                get(
                    move |State(app): State<std::sync::Arc<App>>, Path(check): Path<String>| async move {
                        single(&app, kind, &check).await
                    },
                ),
            );
    }
    r
}
