//! The namespace controller: a Terminating namespace (deletionTimestamp set, the
//! `kubernetes` finalizer in spec.finalizers) has every namespaced object of every
//! served resource deleted; once none is left, the finalizer is dropped through the
//! `finalize` subresource and the apiserver removes the namespace.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;

/// The finalizer the namespace controller owns.
const FINALIZER: &str = "kubernetes";

/// Runs the controller until the process ends.
pub async fn run(client: Client) {
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, Arc::new(client))
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _: Arc<Client>) -> Action {
    tracing::warn!(namespace = ns.name_any(), error = %err, "namespace deletion failed");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let fins = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !fins.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let discovery = Discovery::new((*client).clone()).run().await?;
    let mut left = 0usize;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api = Api::<DynamicObject>::namespaced_with((*client).clone(), &name, &ar);
            let items = api.list(&ListParams::default()).await?.items;
            for o in items {
                left += 1;
                if o.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let dp = DeleteParams::background();
                match api.delete(&o.name_any(), &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if left > 0 {
        tracing::info!(namespace = %name, remaining = left, "namespace not yet empty");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut done = (*ns).clone();
    if let Some(spec) = done.spec.as_mut() {
        spec.finalizers = Some(fins.into_iter().filter(|f| f != FINALIZER).collect());
    }
    let body = serde_json::to_vec(&done).map_err(|e| Error::Sync(e.to_string()))?;
    let api = Api::<Namespace>::all((*client).clone());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), body)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(namespace = %name, "namespace finalized");
    Ok(Action::await_change())
}
