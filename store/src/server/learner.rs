//! The learner guard in front of every gRPC service: a learner (a non-voting member
//! that may lag) refuses client requests with "etcdserver: rpc not supported for
//! learner", except Status and serializable reads, as etcd's gRPC interceptor does.
//! Range is let through here and refused by the KV service unless it is serializable
//! (the guard sees only the path, not the request). The HTTP endpoints (`/health`,
//! `/metrics`, `/version`) are not gRPC and pass; the JSON gateway applies the same rule
//! to its own paths (`gateway.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::EtcdServer;
use crate::error::StoreError;

/// What a learner serves: Status, and Range (which checks `serializable` itself).
fn allowed_on_learner(path: &str) -> bool {
    !path.starts_with("/etcdserverpb.")
        || path == "/etcdserverpb.Maintenance/Status"
        || path == "/etcdserverpb.KV/Range"
}

/// Wraps the services in a [`LearnerGuard`].
#[derive(Clone)]
pub struct LearnerGuardLayer {
    pub srv: Arc<EtcdServer>,
}

impl<S> tower_layer::Layer<S> for LearnerGuardLayer {
    type Service = LearnerGuard<S>;

    fn layer(&self, inner: S) -> LearnerGuard<S> {
        LearnerGuard {
            inner,
            srv: self.srv.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct LearnerGuard<S> {
    inner: S,
    srv: Arc<EtcdServer>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for LearnerGuard<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        if !allowed_on_learner(req.uri().path()) && self.srv.is_learner() {
            let resp = StoreError::NotSupportedForLearner.to_status().into_http();
            return Box::pin(async move { Ok(resp) });
        }
        Box::pin(self.inner.call(req))
    }
}
