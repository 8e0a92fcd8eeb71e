//! Events (core/v1, as `kubectl describe` and `kubectl get events` read them) recorded
//! by the controllers with upstream's reasons and messages. Recording never holds a
//! sync up: each event is written in the background and a failure is only logged.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug)]
pub enum Type {
    Normal,
    Warning,
}

/// Records an event about `obj` from `component` (e.g. `deployment-controller`).
pub fn record<K>(
    client: &Client,
    component: &str,
    obj: &K,
    type_: Type,
    reason: &str,
    message: String,
) where
    K: Resource<DynamicType = ()>,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let name = obj.name_any();
    let now = crate::util::now();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{nanos:x}")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name.clone()),
            namespace: obj.namespace(),
            uid: obj.meta().uid.clone(),
            resource_version: obj.meta().resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(format!("{type_:?}")),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        ..Default::default()
    };
    let api = Api::<Event>::namespaced(client.clone(), &ns);
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(namespace = %ns, name = %name, error = %e, "event not recorded");
        }
    });
}
