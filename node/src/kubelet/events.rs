//! Events about pods, as the kubelet records them (source `kubelet`, the node as host,
//! the container as `fieldPath`), so `kubectl describe pod` and `kubectl get events`
//! tell what happened: Pulling, Pulled, Created, Started, Killing, BackOff, Failed.
//! Posted in the background; a lost event is logged, never retried.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::PostParams;
use kube::Api;
use serde_json::json;

use crate::registration::now;

/// Which container an event is about.
pub enum About<'a> {
    Pod,
    Container(&'a str),
    InitContainer(&'a str),
}

pub struct Recorder {
    client: kube::Client,
    node: String,
    seq: AtomicU64,
}

impl Recorder {
    pub fn new(client: kube::Client, node: String) -> Recorder {
        Recorder {
            client,
            node,
            seq: AtomicU64::new(0),
        }
    }

    /// Records a Normal event (`warning` false) or a Warning one.
    pub fn record(&self, pod: &Pod, about: About, warning: bool, reason: &str, message: String) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Unique names as client-go's recorder makes them: the object's name and a
        // hex timestamp (plus a counter, for two events in one nanosecond).
        let nanos = chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .unsigned_abs();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut involved = json!({
            "kind": "Pod", "namespace": ns, "name": name, "apiVersion": "v1",
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        });
        match about {
            About::Pod => {}
            About::Container(c) => involved["fieldPath"] = json!(format!("spec.containers{{{c}}}")),
            About::InitContainer(c) => {
                involved["fieldPath"] = json!(format!("spec.initContainers{{{c}}}"))
            }
        }
        let t = now();
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{:x}", nanos + seq), "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": t,
            "lastTimestamp": t,
            "count": 1,
            "type": if warning { "Warning" } else { "Normal" },
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
        });
        let Ok(ev) = serde_json::from_value::<Event>(ev) else {
            return;
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(namespace = %ns, pod = %name, error = %e, "recording event");
            }
        });
    }
}
