//! What server-side apply needs to know of the served types' shape: which lists are
//! associative (and by which keys), which are sets, and which structs, maps and lists are
//! atomic (owned and replaced whole). These are the `x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys`, `x-kubernetes-map-type` and structType markers of
//! k8s.io/api 1.32, which kube-apiserver feeds to structured-merge-diff.
//!
//! This is a table of its own rather than the strategic merge patch one in `patch.rs`:
//! the two disagree where it shows (a container port is keyed by `containerPort` and
//! `protocol` here but by `containerPort` alone in SMP, a Service port by `port` and
//! `protocol` against `port`; Job conditions are atomic here), and SMP knows nothing of
//! atomic structs such as label selectors or env var sources.
//!
//! Anything not listed is granular (each field owned on its own) when it is an object,
//! and atomic when it is a list, which is upstream's default for a list without markers.

use serde_json::{json, Value};

/// Where a value sits, as far as its shape goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctx {
    /// An object with nothing special below it (or one we know nothing about).
    Plain,
    /// A value owned whole: a leaf, whatever it holds.
    Atomic,
    Root(Kind),
    ObjectMeta,
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController, Job spec.
    WorkloadSpec,
    CronJobSpec,
    JobTemplate,
    PodTemplateSpec,
    PodSpec,
    Container,
    Resources,
    EnvVar,
    EnvVarSource,
    Affinity,
    NodeAffinity,
    TopologySpread,
    PodStatus,
    /// A status whose only marked list is `conditions`, keyed by `type`.
    ConditionsStatus,
    ServiceSpec,
    NodeSpec,
    NodeStatus,
}

/// Kinds grouped by their top-level shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    PodTemplate,
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController.
    Workload,
    Job,
    CronJob,
    Service,
    Node,
    Namespace,
    ServiceAccount,
    Event,
    Other,
}

impl Kind {
    pub fn of(kind: &str) -> Kind {
        match kind {
            "Pod" => Kind::Pod,
            "PodTemplate" => Kind::PodTemplate,
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "ReplicationController" => {
                Kind::Workload
            }
            "Job" => Kind::Job,
            "CronJob" => Kind::CronJob,
            "Service" => Kind::Service,
            "Node" => Kind::Node,
            "Namespace" => Kind::Namespace,
            "ServiceAccount" => Kind::ServiceAccount,
            "Event" => Kind::Event,
            _ => Kind::Other,
        }
    }
}

/// A key field of an associative list, with the default the schema gives it (used
/// when an item leaves it out, as a container port without `protocol`).
pub type KeyField = (&'static str, Option<&'static str>);

/// How a field's value is owned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An object owned field by field; a list here is atomic (no list marker).
    Granular,
    /// Owned whole.
    Atomic,
    /// A list of scalars owned item by item (`listType=set`).
    Set,
    /// A list of objects owned item by item, items named by these key fields
    /// (`listType=map`).
    Map(&'static [KeyField]),
}

const NAME: &[KeyField] = &[("name", None)];
const TYPE: &[KeyField] = &[("type", None)];
const IP: &[KeyField] = &[("ip", None)];
const UID: &[KeyField] = &[("uid", None)];

/// The shape of field `name` of an object at `ctx`, and the context of its value (of
/// its items, for a list).
pub fn field(ctx: Ctx, name: &str) -> (Shape, Ctx) {
    use Ctx as C;
    use Kind as K;
    use Shape as S;
    let granular = |c| (S::Granular, c);
    match (ctx, name) {
        (C::Atomic, _) => (S::Atomic, C::Atomic),
        (C::Root(_), "metadata") => granular(C::ObjectMeta),
        (C::Root(K::Pod), "spec") => granular(C::PodSpec),
        (C::Root(K::Pod), "status") => granular(C::PodStatus),
        (C::Root(K::PodTemplate), "template") => granular(C::PodTemplateSpec),
        (C::Root(K::Workload | K::Job), "spec") => granular(C::WorkloadSpec),
        (C::Root(K::Workload | K::Namespace | K::Service), "status") => {
            granular(C::ConditionsStatus)
        }
        (C::Root(K::CronJob), "spec") => granular(C::CronJobSpec),
        (C::Root(K::Service), "spec") => granular(C::ServiceSpec),
        (C::Root(K::Node), "spec") => granular(C::NodeSpec),
        (C::Root(K::Node), "status") => granular(C::NodeStatus),
        // ObjectReference is an atomic struct.
        (C::Root(K::ServiceAccount), "secrets") => (S::Map(NAME), C::Atomic),
        (C::Root(K::Event), "involvedObject" | "related") => (S::Atomic, C::Atomic),

        (C::ObjectMeta, "finalizers") => (S::Set, C::Plain),
        // OwnerReference is an atomic struct.
        (C::ObjectMeta, "ownerReferences") => (S::Map(UID), C::Atomic),

        (C::WorkloadSpec, "selector") => (S::Atomic, C::Atomic),
        (C::WorkloadSpec, "template") => granular(C::PodTemplateSpec),
        (C::CronJobSpec, "jobTemplate") => granular(C::JobTemplate),
        (C::JobTemplate, "metadata") => granular(C::ObjectMeta),
        (C::JobTemplate, "spec") => granular(C::WorkloadSpec),
        (C::PodTemplateSpec, "metadata") => granular(C::ObjectMeta),
        (C::PodTemplateSpec, "spec") => granular(C::PodSpec),

        (C::PodSpec, "containers" | "initContainers" | "ephemeralContainers") => {
            (S::Map(NAME), C::Container)
        }
        (C::PodSpec, "volumes" | "schedulingGates" | "resourceClaims") => (S::Map(NAME), C::Plain),
        // LocalObjectReference is an atomic struct.
        (C::PodSpec, "imagePullSecrets") => (S::Map(NAME), C::Atomic),
        (C::PodSpec, "hostAliases") => (S::Map(IP), C::Plain),
        (C::PodSpec, "topologySpreadConstraints") => (
            S::Map(&[("topologyKey", None), ("whenUnsatisfiable", None)]),
            C::TopologySpread,
        ),
        (C::PodSpec, "affinity") => granular(C::Affinity),
        (C::TopologySpread, "labelSelector") => (S::Atomic, C::Atomic),
        (C::Affinity, "nodeAffinity") => granular(C::NodeAffinity),
        // NodeSelector is an atomic struct.
        (C::NodeAffinity, "requiredDuringSchedulingIgnoredDuringExecution") => {
            (S::Atomic, C::Atomic)
        }

        (C::Container, "ports") => (
            S::Map(&[("containerPort", None), ("protocol", Some("TCP"))]),
            C::Plain,
        ),
        (C::Container, "env") => (S::Map(NAME), C::EnvVar),
        (C::Container, "volumeMounts") => (S::Map(&[("mountPath", None)]), C::Plain),
        (C::Container, "volumeDevices") => (S::Map(&[("devicePath", None)]), C::Plain),
        (C::Container, "resources") => granular(C::Resources),
        (C::Resources, "claims") => (S::Map(NAME), C::Plain),
        (C::EnvVar, "valueFrom") => granular(C::EnvVarSource),
        // ObjectFieldSelector, ResourceFieldSelector, ConfigMapKeySelector and
        // SecretKeySelector are atomic structs.
        (C::EnvVarSource, _) => (S::Atomic, C::Atomic),

        (C::PodStatus | C::ConditionsStatus | C::NodeStatus, "conditions") => {
            (S::Map(TYPE), C::Plain)
        }
        (C::PodStatus, "podIPs" | "hostIPs") => (S::Map(IP), C::Plain),
        (C::PodStatus, "resourceClaimStatuses") => (S::Map(NAME), C::Plain),
        (C::NodeStatus, "addresses") => (S::Map(TYPE), C::Plain),

        (C::ServiceSpec, "ports") => (
            S::Map(&[("port", None), ("protocol", Some("TCP"))]),
            C::Plain,
        ),
        (C::ServiceSpec, "selector") => (S::Atomic, C::Atomic),
        (C::NodeSpec, "podCIDRs") => (S::Set, C::Plain),

        _ => granular(C::Plain),
    }
}

/// The object a create starts from, as kube-apiserver's field manager sees it: the Go
/// zero value of the kind converted to JSON, which holds the struct fields Go never
/// omits (`spec`, a pod template's `metadata`, `containers: null`...). What the create
/// adds under those is owned field by field, not as a new subtree, which is why a
/// created Deployment's managedFields have no `.` under `f:spec`.
pub fn zero_object(kind: &str) -> Value {
    let template = json!({"metadata": {"creationTimestamp": null}, "spec": {"containers": null}});
    let mut obj = json!({"metadata": {"creationTimestamp": null}});
    let extra = match kind {
        "Pod" => json!({"spec": {"containers": null}, "status": {}}),
        "Deployment" => json!({
            "spec": {"selector": null, "template": template, "strategy": {}},
            "status": {}
        }),
        "ReplicaSet" => {
            json!({"spec": {"selector": null, "template": template}, "status": {"replicas": 0}})
        }
        "Job" => json!({"spec": {"template": template}, "status": {}}),
        "CronJob" => json!({
            "spec": {"schedule": "", "jobTemplate": {
                "metadata": {"creationTimestamp": null}, "spec": {"template": template}}},
            "status": {}
        }),
        "Service" | "Ingress" => json!({"spec": {}, "status": {"loadBalancer": {}}}),
        "Namespace" | "Node" => json!({"spec": {}, "status": {}}),
        "Lease" => json!({"spec": {}}),
        "EndpointSlice" => json!({"addressType": "", "endpoints": null}),
        "Event" => json!({
            "involvedObject": {}, "source": {}, "firstTimestamp": null, "lastTimestamp": null,
            "eventTime": null, "reportingComponent": "", "reportingInstance": ""
        }),
        _ => json!({}),
    };
    if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), extra) {
        o.extend(e);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_differ_from_strategic_merge_where_upstream_does() {
        let (shape, _) = field(Ctx::Container, "ports");
        assert_eq!(
            shape,
            Shape::Map(&[("containerPort", None), ("protocol", Some("TCP"))])
        );
        assert_eq!(field(Ctx::PodSpec, "tolerations").0, Shape::Granular);
        assert_eq!(field(Ctx::WorkloadSpec, "selector").0, Shape::Atomic);
        assert_eq!(field(Ctx::ObjectMeta, "finalizers").0, Shape::Set);
        assert_eq!(field(Ctx::Root(Kind::Job), "status").1, Ctx::Plain);
    }
}
