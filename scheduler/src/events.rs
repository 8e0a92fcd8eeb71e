//! Events about pods (`Scheduled`, `FailedScheduling`), written off the scheduling
//! path by one background task as core/v1 Events from `default-scheduler`. A repeat
//! of the same reason and message for the same pod bumps the existing event's count
//! instead of adding one, as client-go's event correlator does, so `kubectl describe`
//! shows "(x3 over 10s)". When the writer falls behind, events are dropped rather
//! than slowing scheduling.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

use crate::SCHEDULER_NAME;

/// One event to write.
#[derive(Debug, Clone)]
pub struct PodEvent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub message: String,
}

impl PodEvent {
    /// An event about a pod the scheduler is handling.
    pub fn about(
        pod: &crate::types::PodInfo,
        warning: bool,
        reason: &'static str,
        action: &'static str,
        message: String,
    ) -> PodEvent {
        PodEvent {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            resource_version: pod
                .pod
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default(),
            warning,
            reason,
            action,
            message,
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<PodEvent>,
}

impl Recorder {
    /// Starts the writer task.
    pub fn start(client: kube::Client, instance: String) -> Recorder {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(write_loop(client, instance, rx));
        Recorder { tx }
    }

    /// Queues an event; dropped (and counted) when the writer is too far behind.
    pub fn record(&self, ev: PodEvent) {
        if self.tx.try_send(ev).is_err() {
            crate::metrics::EVENTS_DROPPED.inc();
        }
    }
}

async fn write_loop(client: kube::Client, instance: String, mut rx: mpsc::Receiver<PodEvent>) {
    // (namespace, pod uid, reason, message) -> (event name, count)
    let mut seen: HashMap<(String, String, &'static str, String), (String, i32)> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        let api: Api<Event> = Api::namespaced(client.clone(), &ev.namespace);
        let now = Utc::now();
        let id = (
            ev.namespace.clone(),
            ev.uid.clone(),
            ev.reason,
            ev.message.clone(),
        );
        if let Some((name, count)) = seen.get_mut(&id) {
            *count += 1;
            let patch = serde_json::json!({
                "count": *count,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                // Gone (expired or deleted): write a fresh one below.
                Err(e) => tracing::debug!(error = %e, "event patch failed"),
            }
        }
        // client-go names events <object>.<hex nanoseconds>.
        let name = format!(
            "{}.{:x}",
            ev.name,
            now.timestamp_nanos_opt().unwrap_or_default()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ev.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(ev.namespace.clone()),
                name: Some(ev.name.clone()),
                uid: Some(ev.uid.clone()),
                resource_version: Some(ev.resource_version.clone()),
                ..Default::default()
            },
            reason: Some(ev.reason.into()),
            message: Some(ev.message.clone()),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            action: Some(ev.action.into()),
            source: Some(EventSource {
                component: Some(SCHEDULER_NAME.into()),
                host: None,
            }),
            reporting_component: Some(SCHEDULER_NAME.into()),
            reporting_instance: Some(instance.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                if seen.len() > 10_000 {
                    seen.clear();
                }
                seen.insert(id, (name, 1));
            }
            Err(e) => {
                tracing::warn!(namespace = %ev.namespace, pod = %ev.name, error = %e, "failed to write event")
            }
        }
    }
}
