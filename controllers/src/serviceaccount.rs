//! The service account controller: every active namespace has a `default`
//! ServiceAccount, created when the namespace appears and again if it is deleted, as
//! upstream's does. (Tokens for service accounts are not issued yet.)

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;

/// The service account every namespace gets.
const DEFAULT: &str = "default";

/// Runs the controller until the process ends.
pub async fn run(client: Client) {
    // A deleted `default` account brings its namespace back for a reconcile.
    let accounts = watcher::Config::default().fields(&format!("metadata.name={DEFAULT}"));
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<ServiceAccount>::all(client.clone()), accounts, |sa| {
        sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
    })
    .run(reconcile, error_policy, Arc::new(client))
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _: Arc<Client>) -> Action {
    tracing::warn!(namespace = ns.name_any(), error = %err, "creating the default service account failed");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, Error> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced((*client).clone(), &name);
    if api.get_opt(DEFAULT).await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => tracing::info!(namespace = %name, "created the default service account"),
        // Already made meanwhile, or the namespace began terminating: nothing to do.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
