//! Server-side table printing: the body of a `GET`/`LIST` negotiated as
//! `application/json;as=Table;v=v1;g=meta.k8s.io`, which is what `kubectl get` asks for.
//!
//! kubectl prints whatever cells the server sends, so every column and cell here follows
//! upstream kube-apiserver (v1.32) exactly: the per-kind printers in kubernetes/kubernetes
//! `pkg/printers/internalversion/printers.go`, the fallback in
//! `staging/src/k8s.io/apiserver/pkg/registry/rest/table.go`, the row `object` handling in
//! `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go` (`asTable`), and the age
//! humanizer in `staging/src/k8s.io/apimachinery/pkg/util/duration/duration.go`.
//!
//! The server always prints "wide" (kubernetes/kubernetes `pkg/printers/storage/storage.go`
//! passes `Wide: true`): every column, priority 1 included, is sent, and kubectl hides the
//! priority-1 ones unless `-o wide`. The apiserver keeps no internal types, so objects arrive
//! as stored v1 JSON; where upstream would have seen a value filled in by v1 defaulting on
//! decode (Service type, port protocol, replicas, ...) the default is applied here.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Builds a meta.k8s.io/v1 Table for objects of `kind`. `objects` are full JSON objects (each
/// with apiVersion/kind/metadata). `include_object` is the `includeObject` query parameter:
/// "None" | "Metadata" (default when absent) | "Object" — each row's `object` is then null /
/// a PartialObjectMetadata (apiVersion meta.k8s.io/v1, kind PartialObjectMetadata, metadata) /
/// the full object. Any other value is treated as "Metadata"; upstream answers it with a 400,
/// so callers should reject it first (see [`is_valid_include_object`]). `list_meta` is the
/// list's metadata (resourceVersion, continue, remainingItemCount) copied into the Table's
/// metadata. `now` is the current time (for AGE columns; passed in so tests are deterministic).
pub fn to_table(
    kind: &str,
    objects: &[Value],
    include_object: &str,
    list_meta: Value,
    now: DateTime<Utc>,
) -> Value {
    let printer = Printer::for_kind(kind);
    let column_definitions: Vec<Value> = printer.columns().iter().map(Column::to_json).collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let (cells, conditions) = printer.row(obj, now);
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells));
            if let Some(c) = conditions {
                row.insert("conditions".into(), c);
            }
            row.insert("object".into(), row_object(obj, include_object));
            Value::Object(row)
        })
        .collect();
    // upstream's fallback convertor appends to a nil slice, so an empty list encodes as
    // `null` there, while the kind printers allocate `[]` (rest/table.go vs printers.go).
    let rows = if rows.is_empty() && printer == Printer::Default {
        Value::Null
    } else {
        Value::Array(rows)
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": table_metadata(&list_meta),
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

/// Whether `value` is an `includeObject` value upstream accepts; the empty string stands for
/// the parameter being absent (kubernetes/kubernetes
/// staging/src/k8s.io/apiserver/pkg/endpoints/handlers/response.go, `asTable`).
pub fn is_valid_include_object(value: &str) -> bool {
    matches!(value, "" | "None" | "Metadata" | "Object")
}

/// ListMeta fields are all `omitempty` upstream, so only non-empty ones are copied
/// (kubernetes/kubernetes pkg/printers/tablegenerator.go copies resourceVersion, continue
/// and remainingItemCount from the list).
fn table_metadata(list_meta: &Value) -> Value {
    let mut out = Map::new();
    for key in ["resourceVersion", "continue"] {
        if let Some(v) = list_meta.get(key).and_then(Value::as_str) {
            if !v.is_empty() {
                out.insert(key.into(), Value::String(v.into()));
            }
        }
    }
    if let Some(v) = list_meta.get("remainingItemCount") {
        if v.is_number() {
            out.insert("remainingItemCount".into(), v.clone());
        }
    }
    Value::Object(out)
}

/// The row's `object` per includeObject (response.go `asTable`). `None` leaves upstream's
/// RawExtension empty, which encoding/json writes as `null`: the struct-typed field is not
/// dropped by `omitempty`.
fn row_object(obj: &Value, include_object: &str) -> Value {
    match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Column definitions
// ---------------------------------------------------------------------------------------

/// One `TableColumnDefinition`; all five fields are always encoded (no `omitempty` upstream).
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i32,
}

impl Column {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.ty,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

const fn name_col() -> Column {
    Column {
        name: "Name",
        ty: "string",
        format: "name",
        description: D_META_NAME,
        priority: 0,
    }
}

const fn age_col() -> Column {
    col("Age", "string", D_META_CREATIONTIMESTAMP)
}

// Descriptions are the Go swagger docs upstream reads with `SwaggerDoc()[field]` (generated
// from the kubernetes/kubernetes staging/src/k8s.io/api/*/types_swagger_doc_generated.go
// comments; the v1 texts were taken from the same comments as shipped in k8s-openapi 0.24's
// v1_32 docs), or the literal strings in printers.go.
const D_META_NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const D_META_CREATIONTIMESTAMP: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const D_POD_PODIP: &str = "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.";
const D_POD_NOMINATEDNODENAME: &str = "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.";
const D_POD_NODENAME: &str = "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename";
const D_POD_READINESSGATES: &str = "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates";
const D_JOB_SUCCEEDED: &str = "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.";
const D_JOB_SELECTOR: &str = "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";
const D_SVC_TYPE: &str = "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types";
const D_SVC_CLUSTERIP: &str = "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies";
const D_SVC_EXTERNALIPS: &str = "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.";
const D_SVC_PORTS: &str = "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies";
const D_SVC_SELECTOR: &str = "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/";
const D_EP_SUBSETS: &str = "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.";
const D_NODE_KUBELETVERSION: &str = "Kubelet Version reported by the node.";
const D_NODE_OSIMAGE: &str =
    "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).";
const D_NODE_KERNELVERSION: &str =
    "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).";
const D_NODE_CONTAINERRUNTIMEVERSION: &str = "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).";
const D_NODE_ADDRESSES: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";
const D_EV_LASTTIMESTAMP: &str =
    "The time at which the most recent occurrence of this event was recorded.";
const D_EV_TYPE: &str =
    "Type of this event (Normal, Warning), new types could be added in the future";
const D_EV_REASON: &str = "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.";
const D_EV_INVOLVEDOBJECT: &str = "The object that this event is about.";
const D_EV_SOURCE: &str =
    "The component reporting this event. Should be a short machine understandable string.";
const D_EV_MESSAGE: &str = "A human-readable description of the status of this operation.";
const D_EV_FIRSTTIMESTAMP: &str =
    "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)";
const D_EV_COUNT: &str = "The number of times this event has occurred.";
const D_REF_FIELDPATH: &str = "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.";
const D_SECRET_TYPE: &str = "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types";
const D_SECRET_DATA: &str = "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4";
const D_SA_SECRETS: &str = "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a \"kubernetes.io/enforce-mountable-secrets\" annotation set to \"true\". The \"kubernetes.io/enforce-mountable-secrets\" annotation is deprecated since v1.32. Prefer separate namespaces to isolate access to mounted secrets. This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret";
const D_CM_DATA: &str = "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.";
const D_LEASE_HOLDERIDENTITY: &str = "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.";
// Deployment and ReplicaSet columns describe themselves with the extensions/v1beta1 docs
// (kubernetes/kubernetes staging/src/k8s.io/api/extensions/v1beta1/types_swagger_doc_generated.go).
const D_EXT_RS_REPLICAS: &str = "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller";
const D_EXT_RS_SELECTOR: &str = "Selector is a label query over pods that should match the replica count. If the selector is empty, it is defaulted to the labels present on the pod template. Label keys and values that must match in order to be controlled by this replica set. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";
const D_EXT_RSS_REPLICAS: &str = "Replicas is the most recently observed number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller";
const D_EXT_RSS_READYREPLICAS: &str = "The number of ready replicas for this replica set.";
const D_EXT_DS_UPDATEDREPLICAS: &str = "Total number of non-terminated pods targeted by this deployment that have the desired template spec.";
const D_EXT_DS_AVAILABLEREPLICAS: &str = "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.";
const D_EXT_D_SELECTOR: &str = "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.";
// Upstream reads these from discovery/v1beta1; the discovery/v1 text is used here.
const D_ES_ADDRESSTYPE: &str = "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name.";
const D_ES_PORTS: &str = "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. When ports is empty, it indicates that there are no defined ports. When a port is defined with a nil port value, it indicates \"all ports\". Each slice may include a maximum of 100 ports.";
const D_ES_ENDPOINTS: &str = "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.";
const D_CONTAINERS: &str = "Names of each container in the template.";
const D_IMAGES: &str = "Images referenced by each container in the template.";

const POD_COLUMNS: &[Column] = &[
    name_col(),
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    age_col(),
    wide("IP", "string", D_POD_PODIP),
    wide("Node", "string", D_POD_NODENAME),
    wide("Nominated Node", "string", D_POD_NOMINATEDNODENAME),
    wide("Readiness Gates", "string", D_POD_READINESSGATES),
];

const NAMESPACE_COLUMNS: &[Column] = &[
    name_col(),
    col("Status", "string", "The status of the namespace"),
    age_col(),
];

const SERVICE_COLUMNS: &[Column] = &[
    name_col(),
    col("Type", "string", D_SVC_TYPE),
    col("Cluster-IP", "string", D_SVC_CLUSTERIP),
    col("External-IP", "string", D_SVC_EXTERNALIPS),
    col("Port(s)", "string", D_SVC_PORTS),
    age_col(),
    wide("Selector", "string", D_SVC_SELECTOR),
];

const ENDPOINTS_COLUMNS: &[Column] = &[
    name_col(),
    col("Endpoints", "string", D_EP_SUBSETS),
    age_col(),
];

const NODE_COLUMNS: &[Column] = &[
    name_col(),
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    age_col(),
    col("Version", "string", D_NODE_KUBELETVERSION),
    wide("Internal-IP", "string", D_NODE_ADDRESSES),
    wide("External-IP", "string", D_NODE_ADDRESSES),
    wide("OS-Image", "string", D_NODE_OSIMAGE),
    wide("Kernel-Version", "string", D_NODE_KERNELVERSION),
    wide(
        "Container-Runtime",
        "string",
        D_NODE_CONTAINERRUNTIMEVERSION,
    ),
];

const CONFIGMAP_COLUMNS: &[Column] = &[name_col(), col("Data", "string", D_CM_DATA), age_col()];

const SECRET_COLUMNS: &[Column] = &[
    name_col(),
    col("Type", "string", D_SECRET_TYPE),
    col("Data", "string", D_SECRET_DATA),
    age_col(),
];

const SERVICEACCOUNT_COLUMNS: &[Column] = &[
    name_col(),
    col("Secrets", "string", D_SA_SECRETS),
    age_col(),
];

// Roles and ClusterRoles have no printer upstream: they get the default Name and Created At.
// The Role column's description is the v1beta1 type's roleRef doc, as printers.go reads it.
const ROLEBINDING_COLUMNS: &[Column] = &[
    name_col(),
    col("Role", "string", "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error."),
    age_col(),
    wide("Users", "string", "Users in the roleBinding"),
    wide("Groups", "string", "Groups in the roleBinding"),
    wide("ServiceAccounts", "string", "ServiceAccounts in the roleBinding"),
];

const CLUSTERROLEBINDING_COLUMNS: &[Column] = &[
    name_col(),
    col("Role", "string", "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error."),
    age_col(),
    wide("Users", "string", "Users in the clusterRoleBinding"),
    wide("Groups", "string", "Groups in the clusterRoleBinding"),
    wide("ServiceAccounts", "string", "ServiceAccounts in the clusterRoleBinding"),
];

// Event's Name column is a priority-1 column that still carries the "name" format.
const EVENT_COLUMNS: &[Column] = &[
    col("Last Seen", "string", D_EV_LASTTIMESTAMP),
    col("Type", "string", D_EV_TYPE),
    col("Reason", "string", D_EV_REASON),
    col("Object", "string", D_EV_INVOLVEDOBJECT),
    wide("Subobject", "string", D_REF_FIELDPATH),
    wide("Source", "string", D_EV_SOURCE),
    col("Message", "string", D_EV_MESSAGE),
    wide("First Seen", "string", D_EV_FIRSTTIMESTAMP),
    wide("Count", "string", D_EV_COUNT),
    Column {
        name: "Name",
        ty: "string",
        format: "name",
        description: D_META_NAME,
        priority: 1,
    },
];

const DEPLOYMENT_COLUMNS: &[Column] = &[
    name_col(),
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", D_EXT_DS_UPDATEDREPLICAS),
    col("Available", "string", D_EXT_DS_AVAILABLEREPLICAS),
    age_col(),
    wide("Containers", "string", D_CONTAINERS),
    wide("Images", "string", D_IMAGES),
    wide("Selector", "string", D_EXT_D_SELECTOR),
];

const REPLICASET_COLUMNS: &[Column] = &[
    name_col(),
    col("Desired", "integer", D_EXT_RS_REPLICAS),
    col("Current", "integer", D_EXT_RSS_REPLICAS),
    col("Ready", "integer", D_EXT_RSS_READYREPLICAS),
    age_col(),
    wide("Containers", "string", D_CONTAINERS),
    wide("Images", "string", D_IMAGES),
    wide("Selector", "string", D_EXT_RS_SELECTOR),
];

const JOB_COLUMNS: &[Column] = &[
    name_col(),
    col("Status", "string", "Status of the job."),
    col("Completions", "string", D_JOB_SUCCEEDED),
    col("Duration", "string", "Time required to complete the job."),
    age_col(),
    wide("Containers", "string", D_CONTAINERS),
    wide("Images", "string", D_IMAGES),
    wide("Selector", "string", D_JOB_SELECTOR),
];

const LEASE_COLUMNS: &[Column] = &[
    name_col(),
    col("Holder", "string", D_LEASE_HOLDERIDENTITY),
    age_col(),
];

const ENDPOINTSLICE_COLUMNS: &[Column] = &[
    name_col(),
    col("AddressType", "string", D_ES_ADDRESSTYPE),
    col("Ports", "string", D_ES_PORTS),
    col("Endpoints", "string", D_ES_ENDPOINTS),
    age_col(),
];

const INGRESS_COLUMNS: &[Column] = &[
    name_col(),
    col(
        "Class",
        "string",
        "The name of the IngressClass resource that should be used for additional configuration",
    ),
    col(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "string", "Ports of TLS configurations that open"),
    age_col(),
];

// rest/table.go's DefaultTableConvertor: the one column typed "date", its cell RFC3339.
const DEFAULT_COLUMNS: &[Column] = &[
    name_col(),
    col("Created At", "date", D_META_CREATIONTIMESTAMP),
];

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Printer {
    Pod,
    Namespace,
    Service,
    Endpoints,
    Node,
    ConfigMap,
    Secret,
    ServiceAccount,
    Event,
    Deployment,
    ReplicaSet,
    Job,
    Lease,
    EndpointSlice,
    Ingress,
    RoleBinding,
    ClusterRoleBinding,
    Default,
}

impl Printer {
    fn for_kind(kind: &str) -> Self {
        match kind {
            "Pod" => Self::Pod,
            "Namespace" => Self::Namespace,
            "Service" => Self::Service,
            "Endpoints" => Self::Endpoints,
            "Node" => Self::Node,
            "ConfigMap" => Self::ConfigMap,
            "Secret" => Self::Secret,
            "ServiceAccount" => Self::ServiceAccount,
            "Event" => Self::Event,
            "Deployment" => Self::Deployment,
            "ReplicaSet" => Self::ReplicaSet,
            "Job" => Self::Job,
            "Lease" => Self::Lease,
            "EndpointSlice" => Self::EndpointSlice,
            "Ingress" => Self::Ingress,
            "RoleBinding" => Self::RoleBinding,
            "ClusterRoleBinding" => Self::ClusterRoleBinding,
            _ => Self::Default,
        }
    }

    fn columns(self) -> &'static [Column] {
        match self {
            Self::Pod => POD_COLUMNS,
            Self::Namespace => NAMESPACE_COLUMNS,
            Self::Service => SERVICE_COLUMNS,
            Self::Endpoints => ENDPOINTS_COLUMNS,
            Self::Node => NODE_COLUMNS,
            Self::ConfigMap => CONFIGMAP_COLUMNS,
            Self::Secret => SECRET_COLUMNS,
            Self::ServiceAccount => SERVICEACCOUNT_COLUMNS,
            Self::Event => EVENT_COLUMNS,
            Self::Deployment => DEPLOYMENT_COLUMNS,
            Self::ReplicaSet => REPLICASET_COLUMNS,
            Self::Job => JOB_COLUMNS,
            Self::Lease => LEASE_COLUMNS,
            Self::EndpointSlice => ENDPOINTSLICE_COLUMNS,
            Self::Ingress => INGRESS_COLUMNS,
            Self::RoleBinding => ROLEBINDING_COLUMNS,
            Self::ClusterRoleBinding => CLUSTERROLEBINDING_COLUMNS,
            Self::Default => DEFAULT_COLUMNS,
        }
    }

    /// The row's cells, plus its `conditions` when upstream sets any (only pods do).
    fn row(self, obj: &Value, now: DateTime<Utc>) -> (Vec<Value>, Option<Value>) {
        match self {
            Self::Pod => pod_row(obj, now),
            Self::Namespace => (namespace_row(obj, now), None),
            Self::Service => (service_row(obj, now), None),
            Self::Endpoints => (endpoints_row(obj, now), None),
            Self::Node => (node_row(obj, now), None),
            Self::ConfigMap => (configmap_row(obj, now), None),
            Self::Secret => (secret_row(obj, now), None),
            Self::ServiceAccount => (serviceaccount_row(obj, now), None),
            Self::Event => (event_row(obj, now), None),
            Self::Deployment => (deployment_row(obj, now), None),
            Self::ReplicaSet => (replicaset_row(obj, now), None),
            Self::Job => (job_row(obj, now), None),
            Self::Lease => (lease_row(obj, now), None),
            Self::EndpointSlice => (endpointslice_row(obj, now), None),
            Self::Ingress => (ingress_row(obj, now), None),
            Self::RoleBinding | Self::ClusterRoleBinding => (binding_row(obj, now), None),
            Self::Default => (default_row(obj), None),
        }
    }
}

// --- JSON access: a missing or mistyped field reads as Go's zero value, as it would after
// decoding into upstream's typed structs.

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| cur.get(key))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(Value::as_i64)
}

fn arr_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn map_len(v: &Value, path: &[&str]) -> i64 {
    at(v, path)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len() as i64)
}

fn bool_at(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn name(obj: &Value) -> Value {
    Value::String(str_at(obj, &["metadata", "name"]).to_string())
}

/// metav1.Time / MicroTime in RFC3339; unparseable counts as unset, like a zero time.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn time_at(v: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    parse_time(str_at(v, path))
}

/// printers.go `translateTimestampSince`: "<unknown>" for an unset time.
fn since(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => human_duration(now - t),
        None => "<unknown>".to_string(),
    }
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    Value::String(since(time_at(obj, &["metadata", "creationTimestamp"]), now))
}

/// `duration.HumanDuration` (kubernetes/kubernetes
/// staging/src/k8s.io/apimachinery/pkg/util/duration/duration.go): about two or three
/// significant figures; up to 1s of clock skew into the future reads as "0s". Every step
/// truncates toward zero, as Go's integer conversions do.
pub(crate) fn human_duration(d: chrono::TimeDelta) -> String {
    const SEC: i128 = 1_000_000_000;
    let nanos = d
        .num_nanoseconds()
        .map(i128::from)
        .unwrap_or_else(|| i128::from(d.num_seconds()) * SEC);
    let seconds = nanos / SEC;
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / (60 * SEC);
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / (3600 * SEC);
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `labels.FormatLabels` (kubernetes/kubernetes
/// staging/src/k8s.io/apimachinery/pkg/labels/labels.go): sorted `k=v` pairs or "<none>".
fn format_labels(v: Option<&Value>) -> String {
    let Some(m) = v.and_then(Value::as_object) else {
        return "<none>".to_string();
    };
    let mut pairs: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".to_string()
    } else {
        pairs.join(",")
    }
}

/// `metav1.LabelSelectorAsSelector(sel).String()` (kubernetes/kubernetes
/// staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/helpers.go and pkg/labels/selector.go):
/// requirements sorted by key, set values sorted; nil or empty selects everything and prints
/// as "". `Err` for an operator upstream rejects.
fn label_selector_string(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return Ok(String::new());
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for expr in arr_at(sel, &["matchExpressions"]) {
        let key = str_at(expr, &["key"]).to_string();
        let mut values: Vec<&str> = arr_at(expr, &["values"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        let text = match str_at(expr, &["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return Err(()),
        };
        reqs.push((key, text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: as above, but "<none>" when empty and "<error>" on error.
fn format_label_selector(sel: Option<&Value>) -> String {
    match label_selector_string(sel) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(()) => "<error>".to_string(),
    }
}

/// printers.go `layoutContainerCells`: comma-joined names and images.
fn container_cells(obj: &Value, containers_path: &[&str]) -> (Value, Value) {
    let containers = arr_at(obj, containers_path);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, &["image"])).collect();
    (
        Value::String(names.join(",")),
        Value::String(images.join(",")),
    )
}

/// Go's `net.JoinHostPort`: brackets around hosts containing a colon (IPv6).
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// printers.go `listWithMoreString`.
fn list_with_more(list: &[String], more: bool, count: usize, max: usize) -> String {
    let ret = list.join(",");
    if more {
        return format!("{ret} + {} more...", count - max);
    }
    if ret.is_empty() {
        "<unset>".to_string()
    } else {
        ret
    }
}

fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

// --- Pod (printers.go `printPod`)

/// Kubelet's reason for pods on an unreachable node (kubernetes/kubernetes
/// pkg/util/node/node.go `NodeUnreachablePodReason`).
const NODE_UNREACHABLE_POD_REASON: &str = "NodeLost";

fn condition_true(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .any(|c| str_at(c, &["type"]) == ty && str_at(c, &["status"]) == "True")
}

/// The later of `current` and a container's last termination time, which is what the
/// "(Xm ago)" after RESTARTS measures from.
fn later_termination(current: Option<DateTime<Utc>>, status: &Value) -> Option<DateTime<Utc>> {
    if at(status, &["lastState", "terminated"]).is_none() {
        return current;
    }
    let finished = time_at(status, &["lastState", "terminated", "finishedAt"]);
    match (current, finished) {
        (Some(c), Some(f)) if f > c => Some(f),
        (None, f) => f,
        (c, _) => c,
    }
}

fn pod_row(pod: &Value, now: DateTime<Utc>) -> (Vec<Value>, Option<Value>) {
    let spec_containers = arr_at(pod, &["spec", "containers"]);
    let init_containers = arr_at(pod, &["spec", "initContainers"]);
    let conditions = arr_at(pod, &["status", "conditions"]);
    let phase = str_at(pod, &["status", "phase"]);
    let status_reason = str_at(pod, &["status", "reason"]);

    // Sidecars (init containers with restartPolicy Always) count as regular containers for
    // READY and RESTARTS (kubernetes/kubernetes pkg/api/pod/util.go
    // `IsRestartableInitContainer`).
    let restartable = |name: &str| {
        init_containers
            .iter()
            .any(|c| str_at(c, &["name"]) == name && str_at(c, &["restartPolicy"]) == "Always")
    };
    let total_containers = spec_containers.len()
        + init_containers
            .iter()
            .filter(|c| str_at(c, &["restartPolicy"]) == "Always")
            .count();
    let mut ready_containers = 0usize;
    let mut restarts: i64 = 0;
    let mut restartable_restarts: i64 = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_restartable_restart: Option<DateTime<Utc>> = None;

    let mut reason = if status_reason.is_empty() {
        phase
    } else {
        status_reason
    }
    .to_string();
    if conditions.iter().any(|c| {
        str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated"
    }) {
        reason = "SchedulingGated".to_string();
    }

    let row_conditions = match phase {
        "Succeeded" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        }])),
        "Failed" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Failed",
            "message": "The pod failed.",
        }])),
        _ => None,
    };

    // Init containers run in order: the first one not yet successfully finished decides the
    // Init:... status, and later ones are not looked at.
    let mut initializing = false;
    for (i, cs) in arr_at(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        let cname = str_at(cs, &["name"]);
        let count = int_at(cs, &["restartCount"]).unwrap_or(0);
        restarts += count;
        last_restart = later_termination(last_restart, cs);
        let is_restartable = restartable(cname);
        if is_restartable {
            restartable_restarts += count;
            last_restartable_restart = later_termination(last_restartable_restart, cs);
        }
        let terminated = at(cs, &["state", "terminated"]);
        let waiting_reason = str_at(cs, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int_at(t, &["exitCode"]).unwrap_or(0) == 0) {
            continue;
        }
        if is_restartable && bool_at(cs, &["started"]) {
            if bool_at(cs, &["ready"]) {
                ready_containers += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let treason = str_at(t, &["reason"]);
            reason = if !treason.is_empty() {
                format!("Init:{treason}")
            } else if let Some(sig) = int_at(t, &["signal"]).filter(|s| *s != 0) {
                format!("Init:Signal:{sig}")
            } else {
                format!("Init:ExitCode:{}", int_at(t, &["exitCode"]).unwrap_or(0))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_containers.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = restartable_restarts;
        last_restart = last_restartable_restart;
        let mut has_running = false;
        // Walked last to first, so the first container's state wins the STATUS column.
        for cs in arr_at(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += int_at(cs, &["restartCount"]).unwrap_or(0);
            last_restart = later_termination(last_restart, cs);
            let waiting_reason = str_at(cs, &["state", "waiting", "reason"]);
            let terminated = at(cs, &["state", "terminated"]);
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let treason = str_at(t, &["reason"]);
                reason = if !treason.is_empty() {
                    treason.to_string()
                } else if let Some(sig) = int_at(t, &["signal"]).filter(|s| *s != 0) {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", int_at(t, &["exitCode"]).unwrap_or(0))
                };
            } else if bool_at(cs, &["ready"]) && at(cs, &["state", "running"]).is_some() {
                has_running = true;
                ready_containers += 1;
            }
        }
        // A pod whose first container completed while another still runs is not done.
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }

    let deleting = at(pod, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    if deleting && status_reason == NODE_UNREACHABLE_POD_REASON {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    // v1 → internal conversion fills podIPs from podIP when only the latter is set
    // (kubernetes/kubernetes pkg/apis/core/v1/conversion.go).
    let pod_ip = arr_at(pod, &["status", "podIPs"])
        .first()
        .map(|p| str_at(p, &["ip"]))
        .unwrap_or_else(|| str_at(pod, &["status", "podIP"]));
    let or_none = |v: &str| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v.to_string()
        }
    };

    let gates = arr_at(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        // Only the first condition of each gated type counts.
        let true_count = gates
            .iter()
            .filter(|g| {
                let ty = str_at(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| str_at(c, &["type"]) == ty)
                    .is_some_and(|c| str_at(c, &["status"]) == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };

    let cells = vec![
        name(pod),
        s(format!("{ready_containers}/{total_containers}")),
        s(reason),
        s(restarts_str),
        age(pod, now),
        s(or_none(pod_ip)),
        s(or_none(str_at(pod, &["spec", "nodeName"]))),
        s(or_none(str_at(pod, &["status", "nominatedNodeName"]))),
        s(readiness_gates),
    ];
    (cells, row_conditions)
}

// --- Namespace, ConfigMap, Secret, ServiceAccount, Lease (printers.go)

fn namespace_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // v1 defaulting sets an empty phase to Active (pkg/apis/core/v1/defaults.go).
    let phase = str_at(obj, &["status", "phase"]);
    let phase = if phase.is_empty() { "Active" } else { phase };
    vec![name(obj), s(phase), age(obj, now)]
}

fn configmap_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let data = map_len(obj, &["data"]) + map_len(obj, &["binaryData"]);
    vec![name(obj), json!(data), age(obj, now)]
}

fn secret_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // v1 defaulting sets an empty type to Opaque (pkg/apis/core/v1/defaults.go).
    let ty = str_at(obj, &["type"]);
    let ty = if ty.is_empty() { "Opaque" } else { ty };
    vec![
        name(obj),
        s(ty),
        json!(map_len(obj, &["data"])),
        age(obj, now),
    ]
}

fn serviceaccount_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj),
        json!(arr_at(obj, &["secrets"]).len()),
        age(obj, now),
    ]
}

/// A RoleBinding's or ClusterRoleBinding's row: `Kind/name` of the role, then the
/// subjects by kind (upstream's `SubjectsStrings`; service accounts as `ns/name`).
fn binding_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for subject in arr_at(obj, &["subjects"]) {
        let name = str_at(subject, &["name"]);
        match str_at(subject, &["kind"]) {
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            "ServiceAccount" => {
                sas.push(format!("{}/{name}", str_at(subject, &["namespace"])));
            }
            _ => {}
        }
    }
    vec![
        name(obj),
        s(format!(
            "{}/{}",
            str_at(obj, &["roleRef", "kind"]),
            str_at(obj, &["roleRef", "name"])
        )),
        age(obj, now),
        s(users.join(", ")),
        s(groups.join(", ")),
        s(sas.join(", ")),
    ]
}

fn lease_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj),
        s(str_at(obj, &["spec", "holderIdentity"])),
        age(obj, now),
    ]
}

// --- Service (printers.go `printService`, `getServiceExternalIP`, `makePortString`)

/// Sorted, de-duplicated ingress IPs (or hostnames); untruncated because the server prints
/// wide (`loadBalancerStatusStringer` / `ingressLoadBalancerStatusStringer`).
fn load_balancer_ingress(obj: &Value) -> String {
    let set: BTreeSet<&str> = arr_at(obj, &["status", "loadBalancer", "ingress"])
        .iter()
        .filter_map(|i| {
            let ip = str_at(i, &["ip"]);
            let host = str_at(i, &["hostname"]);
            if !ip.is_empty() {
                Some(ip)
            } else if !host.is_empty() {
                Some(host)
            } else {
                None
            }
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

fn service_row(svc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // v1 defaulting: type ClusterIP, port protocol TCP (pkg/apis/core/v1/defaults.go).
    let ty = str_at(svc, &["spec", "type"]);
    let ty = if ty.is_empty() { "ClusterIP" } else { ty };
    let cluster_ip = arr_at(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_at(svc, &["spec", "clusterIP"]));
    let cluster_ip = if cluster_ip.is_empty() {
        "<none>"
    } else {
        cluster_ip
    };

    let external_ips: Vec<&str> = arr_at(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" if !external_ips.is_empty() => external_ips.join(","),
        "ClusterIP" | "NodePort" => "<none>".to_string(),
        "LoadBalancer" => {
            let lb = load_balancer_ingress(svc);
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = Vec::new();
                if !lb.is_empty() {
                    all.extend(lb.split(','));
                }
                all.extend(external_ips.iter().copied());
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_at(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };

    let ports: Vec<String> = arr_at(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]).unwrap_or(0);
            let proto = str_at(p, &["protocol"]);
            let proto = if proto.is_empty() { "TCP" } else { proto };
            match int_at(p, &["nodePort"]).filter(|n| *n > 0) {
                Some(node_port) => format!("{port}:{node_port}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };

    vec![
        name(svc),
        s(ty),
        s(cluster_ip),
        s(external),
        s(ports),
        age(svc, now),
        s(format_labels(at(svc, &["spec", "selector"]))),
    ]
}

// --- Endpoints (printers.go `formatEndpoints`)

fn endpoints_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![name(obj), s(format_endpoints(obj)), age(obj, now)]
}

/// At most three `ip:port` entries (bare IPs for port-less headless subsets), then
/// " + N more..." counting every address/port pair left out.
fn format_endpoints(obj: &Value) -> String {
    let subsets = arr_at(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr_at(ss, &["addresses"]);
        let ports = arr_at(ss, &["ports"]);
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(
                    str_at(a, &["ip"]),
                    int_at(p, &["port"]).unwrap_or(0),
                ));
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}

// --- EndpointSlice (printers.go `formatDiscoveryPorts`, `formatDiscoveryEndpoints`)

fn endpointslice_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    const MAX: usize = 3;
    let ports = arr_at(obj, &["ports"]);
    let port_list: Vec<String> = ports
        .iter()
        .take(MAX)
        .map(|p| match int_at(p, &["port"]) {
            Some(n) => n.to_string(),
            None => match at(p, &["name"]).and_then(Value::as_str) {
                Some(n) => n.to_string(),
                // A nil port number means "all ports".
                None => "*".to_string(),
            },
        })
        .collect();
    let ports_cell = list_with_more(&port_list, ports.len() > MAX, ports.len(), MAX);

    let addresses: Vec<&str> = arr_at(obj, &["endpoints"])
        .iter()
        .flat_map(|e| {
            arr_at(e, &["addresses"])
                .iter()
                .map(|a| a.as_str().unwrap_or(""))
        })
        .collect();
    let addr_list: Vec<String> = addresses.iter().take(MAX).map(|a| a.to_string()).collect();
    let endpoints_cell = list_with_more(&addr_list, addresses.len() > MAX, addresses.len(), MAX);

    vec![
        name(obj),
        s(str_at(obj, &["addressType"])),
        s(ports_cell),
        s(endpoints_cell),
        age(obj, now),
    ]
}

// --- Node (printers.go `printNode`, `findNodeRoles`)

fn node_row(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // Only the Ready condition feeds STATUS; the last Ready entry wins, as upstream keys its
    // condition map by type.
    let ready = arr_at(node, &["status", "conditions"])
        .iter()
        .rfind(|c| str_at(c, &["type"]) == "Ready");
    let mut status = match ready {
        Some(c) if str_at(c, &["status"]) == "True" => vec!["Ready"],
        Some(_) => vec!["NotReady"],
        None => vec!["Unknown"],
    };
    if bool_at(node, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }

    let mut roles = BTreeSet::new();
    if let Some(labels) = at(node, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.insert(v.to_string());
                }
            }
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };

    let address = |ty: &str| {
        arr_at(node, &["status", "addresses"])
            .iter()
            .find(|a| str_at(a, &["type"]) == ty)
            .map_or_else(
                || "<none>".to_string(),
                |a| str_at(a, &["address"]).to_string(),
            )
    };
    let info = |field: &str| {
        let v = str_at(node, &["status", "nodeInfo", field]);
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };

    vec![
        name(node),
        s(status.join(",")),
        s(roles),
        age(node, now),
        s(str_at(node, &["status", "nodeInfo", "kubeletVersion"])),
        s(address("InternalIP")),
        s(address("ExternalIP")),
        s(info("osImage")),
        s(info("kernelVersion")),
        s(info("containerRuntimeVersion")),
    ]
}

// --- Event (printers.go `printEvent`, `formatEventSource`)

fn event_row(ev: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // events.k8s.io/v1 Events share the core printer upstream (both decode to the internal
    // core Event); their JSON renames the fields (kubernetes/kubernetes
    // pkg/apis/events/v1/conversion.go).
    let new_api = str_at(ev, &["apiVersion"]).starts_with("events.k8s.io/");
    let (regarding, message, first, last, count_path, source) = if new_api {
        (
            "regarding",
            "note",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
            "deprecatedSource",
        )
    } else {
        (
            "involvedObject",
            "message",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "source",
        )
    };
    let reporting_controller = str_at(
        ev,
        &[if new_api {
            "reportingController"
        } else {
            "reportingComponent"
        }],
    );
    let reporting_instance = str_at(ev, &["reportingInstance"]);

    let first_seen = match time_at(ev, &[first]) {
        Some(t) => since(Some(t), now),
        None => since(time_at(ev, &["eventTime"]), now),
    };
    let mut last_seen = match time_at(ev, &[last]) {
        Some(t) => since(Some(t), now),
        None => first_seen.clone(),
    };
    let mut count = int_at(ev, &[count_path]).unwrap_or(0);
    if let Some(series) = at(ev, &["series"]).filter(|v| v.is_object()) {
        last_seen = since(time_at(series, &["lastObservedTime"]), now);
        count = int_at(series, &["count"]).unwrap_or(0);
    } else if count == 0 {
        // Singleton events of the new API carry no count.
        count = 1;
    }

    let kind = str_at(ev, &[regarding, "kind"]).to_lowercase();
    let obj_name = str_at(ev, &[regarding, "name"]);
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };

    let component = Some(str_at(ev, &[source, "component"]))
        .filter(|c| !c.is_empty())
        .unwrap_or(reporting_controller);
    let instance = Some(str_at(ev, &[source, "host"]))
        .filter(|h| !h.is_empty())
        .unwrap_or(reporting_instance);
    let source_cell = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };

    vec![
        s(last_seen),
        s(str_at(ev, &["type"])),
        s(str_at(ev, &["reason"])),
        s(target),
        s(str_at(ev, &[regarding, "fieldPath"])),
        s(source_cell),
        s(str_at(ev, &[message]).trim()),
        s(first_seen),
        json!(count),
        name(ev),
    ]
}

// --- Deployment, ReplicaSet, Job (printers.go `printDeployment`, `printReplicaSet`,
// `printJob`)

/// `spec.replicas`, which v1 defaulting sets to 1 when absent (pkg/apis/apps/v1/defaults.go).
fn desired_replicas(obj: &Value) -> i64 {
    int_at(obj, &["spec", "replicas"]).unwrap_or(1)
}

fn deployment_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ready = int_at(obj, &["status", "readyReplicas"]).unwrap_or(0);
    let (containers, images) = container_cells(obj, &["spec", "template", "spec", "containers"]);
    // Unlike the other workloads, an empty selector prints as "" here, not "<none>".
    let selector = label_selector_string(at(obj, &["spec", "selector"]))
        .unwrap_or_else(|()| "<invalid>".to_string());
    vec![
        name(obj),
        s(format!("{ready}/{}", desired_replicas(obj))),
        json!(int_at(obj, &["status", "updatedReplicas"]).unwrap_or(0)),
        json!(int_at(obj, &["status", "availableReplicas"]).unwrap_or(0)),
        age(obj, now),
        containers,
        images,
        s(selector),
    ]
}

fn replicaset_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (containers, images) = container_cells(obj, &["spec", "template", "spec", "containers"]);
    vec![
        name(obj),
        json!(desired_replicas(obj)),
        json!(int_at(obj, &["status", "replicas"]).unwrap_or(0)),
        json!(int_at(obj, &["status", "readyReplicas"]).unwrap_or(0)),
        age(obj, now),
        containers,
        images,
        s(format_label_selector(at(obj, &["spec", "selector"]))),
    ]
}

/// printers.go `hasJobCondition`: the first condition of the type decides.
fn job_condition(obj: &Value, ty: &str) -> bool {
    arr_at(obj, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == ty)
        .is_some_and(|c| str_at(c, &["status"]) == "True")
}

fn job_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let succeeded = int_at(obj, &["status", "succeeded"]).unwrap_or(0);
    let completions = match int_at(obj, &["spec", "completions"]) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int_at(obj, &["spec", "parallelism"]).unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let duration = match (
        time_at(obj, &["status", "startTime"]),
        time_at(obj, &["status", "completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now - start),
        (Some(start), Some(end)) => human_duration(end - start),
    };
    let deleting = at(obj, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    let status = if job_condition(obj, "Complete") {
        "Complete"
    } else if job_condition(obj, "Failed") {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if job_condition(obj, "Suspended") {
        "Suspended"
    } else if job_condition(obj, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (containers, images) = container_cells(obj, &["spec", "template", "spec", "containers"]);
    vec![
        name(obj),
        s(status),
        s(completions),
        s(duration),
        age(obj, now),
        containers,
        images,
        s(format_label_selector(at(obj, &["spec", "selector"]))),
    ]
}

// --- Ingress (printers.go `printIngress`, `formatHosts`, `formatPorts`)

fn ingress_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    const MAX: usize = 3;
    let class = at(obj, &["spec", "ingressClassName"])
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let rules = arr_at(obj, &["spec", "rules"]);
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        if hosts.len() == MAX {
            more = true;
        }
        let host = str_at(rule, &["host"]);
        if !more && !host.is_empty() {
            hosts.push(host);
        }
    }
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if more {
        // Counts rules, not hosts, so host-less rules inflate N as they do upstream.
        format!("{} + {} more...", hosts.join(","), rules.len() - MAX)
    } else {
        hosts.join(",")
    };
    let ports = if arr_at(obj, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(obj),
        s(class),
        s(hosts),
        s(load_balancer_ingress(obj)),
        s(ports),
        age(obj, now),
    ]
}

// --- Any other kind (rest/table.go `DefaultTableConvertor`)

fn default_row(obj: &Value) -> Vec<Value> {
    // Go formats a zero metav1.Time too, so an absent timestamp prints as year 1.
    let created = time_at(obj, &["metadata", "creationTimestamp"]).map_or_else(
        || "0001-01-01T00:00:00Z".to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    vec![name(obj), s(created)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn now() -> DateTime<Utc> {
        parse_time("2025-01-01T12:00:00Z").expect("valid test time")
    }

    /// RFC3339 for `now` minus `secs`.
    fn ago(secs: i64) -> String {
        (now() - TimeDelta::seconds(secs))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    fn cells(kind: &str, obj: Value) -> Vec<Value> {
        let t = to_table(kind, &[obj], "None", json!({}), now());
        t["rows"][0]["cells"]
            .as_array()
            .cloned()
            .expect("row cells")
    }

    fn column_names(kind: &str) -> Vec<(String, i64)> {
        let t = to_table(kind, &[], "None", json!({}), now());
        t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").to_string(),
                    c["priority"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    #[test]
    fn human_duration_boundaries() {
        let hd = |secs: i64| human_duration(TimeDelta::seconds(secs));
        let (m, h, d) = (60, 3600, 86400);
        assert_eq!(hd(-2), "<invalid>");
        assert_eq!(human_duration(TimeDelta::milliseconds(-1500)), "0s");
        assert_eq!(hd(-1), "0s");
        assert_eq!(human_duration(TimeDelta::milliseconds(-999)), "0s");
        assert_eq!(hd(0), "0s");
        assert_eq!(hd(59), "59s");
        assert_eq!(hd(119), "119s");
        assert_eq!(hd(2 * m), "2m");
        assert_eq!(hd(2 * m + 1), "2m1s");
        assert_eq!(hd(3 * m + 2), "3m2s");
        assert_eq!(hd(10 * m - 1), "9m59s");
        assert_eq!(hd(10 * m), "10m");
        assert_eq!(hd(10 * m + 59), "10m");
        assert_eq!(hd(3 * h - 1), "179m");
        assert_eq!(hd(3 * h), "3h");
        assert_eq!(hd(3 * h + m), "3h1m");
        assert_eq!(hd(8 * h - 1), "7h59m");
        assert_eq!(hd(8 * h), "8h");
        assert_eq!(hd(48 * h - 1), "47h");
        assert_eq!(hd(48 * h), "2d");
        assert_eq!(hd(49 * h), "2d1h");
        assert_eq!(hd(8 * d - 1), "7d23h");
        assert_eq!(hd(8 * d), "8d");
        assert_eq!(hd(730 * d - 1), "729d");
        assert_eq!(hd(730 * d), "2y");
        assert_eq!(hd(731 * d), "2y1d");
        assert_eq!(hd(8 * 365 * d - 1), "7y364d");
        assert_eq!(hd(8 * 365 * d), "8y");
        assert_eq!(hd(20 * 365 * d + 5 * d), "20y");
    }

    #[test]
    fn age_unknown_without_creation_timestamp() {
        let c = cells("ConfigMap", json!({"metadata": {"name": "cm"}}));
        assert_eq!(c, vec![json!("cm"), json!(0), json!("<unknown>")]);
    }

    #[test]
    fn table_shape_and_list_metadata() {
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": ago(5)}});
        let t = to_table(
            "Namespace",
            std::slice::from_ref(&obj),
            "",
            json!({"resourceVersion": "42", "continue": "tok", "remainingItemCount": 3}),
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "42", "continue": "tok", "remainingItemCount": 3})
        );
        assert_eq!(
            t["columnDefinitions"][0],
            json!({"name": "Name", "type": "string", "format": "name", "description": D_META_NAME, "priority": 0})
        );
        assert_eq!(t["columnDefinitions"][1]["format"], "");
        assert_eq!(t["rows"][0]["cells"], json!(["a", "Active", "5s"]));
        let empty = to_table("Namespace", &[], "", json!({"resourceVersion": ""}), now());
        assert_eq!(empty["metadata"], json!({}));
        assert_eq!(empty["rows"], json!([]));
    }

    #[test]
    fn include_object_variants() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "ns", "uid": "u1", "creationTimestamp": ago(5)},
            "data": {"a": "1"},
        });
        let row = |mode: &str| {
            to_table(
                "ConfigMap",
                std::slice::from_ref(&obj),
                mode,
                json!({}),
                now(),
            )["rows"][0]
                .clone()
        };
        let partial = json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"].clone(),
        });
        assert_eq!(row("")["object"], partial);
        assert_eq!(row("Metadata")["object"], partial);
        assert_eq!(row("Object")["object"], obj);
        let none = row("None");
        assert!(none["object"].is_null());
        assert_eq!(none["cells"], json!(["cm", 1, "5s"]));
        assert!(none.get("conditions").is_none());
        assert!(is_valid_include_object("") && is_valid_include_object("Object"));
        assert!(!is_valid_include_object("object"));
    }

    fn pod(status: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "creationTimestamp": ago(300)},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "nginx"}]},
            "status": status,
        })
    }

    #[test]
    fn pod_columns() {
        let names: Vec<(String, i64)> = column_names("Pod");
        let expected = [
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ];
        assert_eq!(
            names,
            expected
                .iter()
                .map(|(n, p)| (n.to_string(), *p))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn pod_running() {
        let c = cells(
            "Pod",
            pod(json!({
                "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": ago(290)}}}],
            })),
        );
        assert_eq!(
            c,
            json!(["web", "1/1", "Running", "0", "5m", "10.0.0.5", "n1", "<none>", "<none>"])
                .as_array()
                .cloned()
                .expect("array")
        );
    }

    #[test]
    fn pod_pending_container_creating() {
        let mut p = pod(json!({
            "phase": "Pending",
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}],
        }));
        p["spec"]["readinessGates"] = json!([{"conditionType": "example.com/gate"}]);
        let c = cells("Pod", p);
        assert_eq!(
            c,
            json!([
                "web",
                "0/1",
                "ContainerCreating",
                "0",
                "5m",
                "<none>",
                "n1",
                "<none>",
                "0/1"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        // Not yet scheduled: no node, phase only.
        let mut unscheduled = pod(json!({"phase": "Pending"}));
        unscheduled["spec"]["nodeName"] = Value::Null;
        let c = cells("Pod", unscheduled);
        assert_eq!(c[2], "Pending");
        assert_eq!(c[6], "<none>");
    }

    #[test]
    fn pod_completed_has_row_condition() {
        let p = pod(json!({
            "phase": "Succeeded",
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
        }));
        let t = to_table("Pod", &[p], "None", json!({}), now());
        let row = &t["rows"][0];
        assert_eq!(row["cells"][1], "0/1");
        assert_eq!(row["cells"][2], "Completed");
        assert_eq!(
            row["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded",
                    "message": "The pod has completed successfully."}])
        );
    }

    #[test]
    fn pod_crashloop_restarts_with_age() {
        let c = cells(
            "Pod",
            pod(json!({
                "phase": "Running",
                "containerStatuses": [{"name": "app", "ready": false, "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                        "finishedAt": ago(182)}}}],
            })),
        );
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "5 (3m2s ago)");
    }

    #[test]
    fn pod_terminating_and_node_lost() {
        let mut p = pod(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 1,
                "state": {"running": {}}}],
        }));
        p["metadata"]["deletionTimestamp"] = json!(ago(1));
        let c = cells("Pod", p.clone());
        assert_eq!(c[1], "1/1");
        assert_eq!(c[2], "Terminating");
        // A restart without a known termination time prints the bare count.
        assert_eq!(c[3], "1");
        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(cells("Pod", p)[2], "Unknown");
    }

    #[test]
    fn pod_init_containers() {
        let mut p = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "init", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}],
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}],
        }));
        p["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
        assert_eq!(cells("Pod", p.clone())[2], "Init:0/1");

        p["status"]["initContainerStatuses"][0]["state"] =
            json!({"terminated": {"exitCode": 2, "reason": ""}});
        assert_eq!(cells("Pod", p.clone())[2], "Init:ExitCode:2");

        p["status"]["initContainerStatuses"][0]["state"] =
            json!({"waiting": {"reason": "CrashLoopBackOff"}});
        assert_eq!(cells("Pod", p.clone())[2], "Init:CrashLoopBackOff");

        // A started sidecar counts toward READY and does not hold up initialization.
        p["spec"]["initContainers"][0]["restartPolicy"] = json!("Always");
        p["status"]["initContainerStatuses"][0] = json!({"name": "init", "ready": true,
            "started": true, "restartCount": 2, "state": {"running": {}}});
        p["status"]["containerStatuses"][0] = json!({"name": "app", "ready": true,
            "restartCount": 0, "state": {"running": {}}});
        p["status"]["phase"] = json!("Running");
        let c = cells("Pod", p);
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "2");
    }

    fn service(spec: Value) -> Value {
        json!({"metadata": {"name": "svc", "creationTimestamp": ago(3600)}, "spec": spec})
    }

    #[test]
    fn service_cluster_ip_and_node_port() {
        let c = cells(
            "Service",
            service(json!({"type": "ClusterIP", "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"], "selector": {"b": "2", "a": "1"},
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]})),
        );
        assert_eq!(
            c,
            json!([
                "svc",
                "ClusterIP",
                "10.96.0.10",
                "<none>",
                "53/UDP,53/TCP",
                "60m",
                "a=1,b=2"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        let c = cells(
            "Service",
            service(json!({"type": "NodePort", "clusterIP": "10.96.1.1",
                "ports": [{"port": 80, "nodePort": 30080}]})),
        );
        assert_eq!(
            c,
            json!([
                "svc",
                "NodePort",
                "10.96.1.1",
                "<none>",
                "80:30080/TCP",
                "60m",
                "<none>"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
    }

    #[test]
    fn service_load_balancer_and_headless() {
        let mut lb = service(json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1",
            "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}));
        assert_eq!(cells("Service", lb.clone())[3], "<pending>");
        lb["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "a.example"}]}});
        lb["spec"]["externalIPs"] = json!(["1.2.3.4"]);
        assert_eq!(cells("Service", lb)[3], "5.6.7.8,a.example,1.2.3.4");
        let headless = cells("Service", service(json!({"clusterIP": "None"})));
        assert_eq!(
            headless[1..5],
            [
                json!("ClusterIP"),
                json!("None"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let ext = cells(
            "Service",
            service(json!({"type": "ExternalName", "externalName": "db.example"})),
        );
        assert_eq!(ext[2..4], [json!("<none>"), json!("db.example")]);
    }

    #[test]
    fn endpoints_truncation() {
        let ep = json!({"metadata": {"name": "ep", "creationTimestamp": ago(10)}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]},
            {"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 8080}]},
        ]});
        assert_eq!(
            cells("Endpoints", ep),
            vec![
                json!("ep"),
                json!("10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more..."),
                json!("10s")
            ]
        );
        let few = json!({"metadata": {"name": "ep"}, "subsets": [
            {"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 8080}]}]});
        assert_eq!(cells("Endpoints", few)[1], "[fd00::1]:8080");
        assert_eq!(
            cells("Endpoints", json!({"metadata": {"name": "e"}}))[1],
            "<none>"
        );
    }

    #[test]
    fn deployment_and_replicaset() {
        let dep = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(86400 * 3)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
                "template": {"spec": {"containers": [
                    {"name": "app", "image": "nginx:1"}, {"name": "log", "image": "busybox"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        assert_eq!(
            cells("Deployment", dep.clone()),
            json!([
                "web",
                "2/3",
                3,
                2,
                "3d",
                "app,log",
                "nginx:1,busybox",
                "app=web,tier in (a,b)"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        assert_eq!(
            column_names("Deployment")
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        // Fresh deployment: replicas defaulted to 1, no status yet, empty selector prints "".
        let fresh = json!({"metadata": {"name": "d"}, "spec": {"template": {}}});
        assert_eq!(
            cells("Deployment", fresh),
            json!(["d", "0/1", 0, 0, "<unknown>", "", "", ""])
                .as_array()
                .cloned()
                .expect("array")
        );
        let mut rs = dep;
        rs["spec"]["selector"] = json!({"matchLabels": {"app": "web"}});
        assert_eq!(
            cells("ReplicaSet", rs),
            json!([
                "web",
                3,
                3,
                2,
                "3d",
                "app,log",
                "nginx:1,busybox",
                "app=web"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        let bare_rs = json!({"metadata": {"name": "r"}, "spec": {"replicas": 0}});
        assert_eq!(cells("ReplicaSet", bare_rs)[7], "<none>");
    }

    #[test]
    fn node_status_roles_and_wide() {
        let node = json!({
            "metadata": {"name": "n1", "creationTimestamp": ago(86400 * 10), "labels": {
                "node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/": "",
                "kubernetes.io/role": "master", "kubernetes.io/hostname": "n1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.168.1.10"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.0"}},
        });
        assert_eq!(
            cells("Node", node),
            json!([
                "n1",
                "Ready,SchedulingDisabled",
                "control-plane,master",
                "10d",
                "v1.32.0",
                "192.168.1.10",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0",
                "containerd://1.7.0"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        let bare = json!({"metadata": {"name": "n2", "creationTimestamp": ago(30)},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        assert_eq!(
            cells("Node", bare),
            json!([
                "n2",
                "NotReady",
                "<none>",
                "30s",
                "",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        assert_eq!(
            cells("Node", json!({"metadata": {"name": "n3"}}))[1],
            "Unknown"
        );
    }

    #[test]
    fn job_status_completions_duration() {
        let job = json!({
            "metadata": {"name": "pi", "creationTimestamp": ago(600)},
            "spec": {"completions": 1, "parallelism": 1,
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}},
                "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
            "status": {"succeeded": 1, "startTime": ago(590), "completionTime": ago(545),
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]},
        });
        assert_eq!(
            cells("Job", job),
            json!([
                "pi",
                "Complete",
                "1/1",
                "45s",
                "10m",
                "pi",
                "perl",
                "batch.kubernetes.io/controller-uid=abc"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        let running = json!({"metadata": {"name": "q", "creationTimestamp": ago(200)},
            "spec": {"parallelism": 3}, "status": {"startTime": ago(190), "active": 3}});
        assert_eq!(
            cells("Job", running)[1..4],
            [json!("Running"), json!("0/1 of 3"), json!("3m10s")]
        );
        let failed = json!({"metadata": {"name": "f"}, "spec": {"completions": 2},
            "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(
            cells("Job", failed)[1..4],
            [json!("Failed"), json!("0/2"), json!("")]
        );
    }

    #[test]
    fn event_columns_and_cells() {
        assert_eq!(
            column_names("Event")
                .iter()
                .map(|(n, p)| format!("{n}:{p}"))
                .collect::<Vec<_>>(),
            [
                "Last Seen:0",
                "Type:0",
                "Reason:0",
                "Object:0",
                "Subobject:1",
                "Source:1",
                "Message:0",
                "First Seen:1",
                "Count:1",
                "Name:1"
            ]
        );
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.17a", "creationTimestamp": ago(100)},
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
            "reason": "Pulled", "message": "  Container image pulled \n", "type": "Normal",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": ago(100), "lastTimestamp": ago(40), "count": 2,
        });
        assert_eq!(
            cells("Event", ev),
            json!([
                "40s",
                "Normal",
                "Pulled",
                "pod/web",
                "spec.containers{app}",
                "kubelet, n1",
                "Container image pulled",
                "100s",
                2,
                "web.17a"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
        let new_api = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e2"}, "eventTime": "2025-01-01T11:59:00.123456Z",
            "regarding": {"kind": "Node", "name": "n1"}, "note": "Starting", "type": "Normal",
            "reason": "Starting", "reportingController": "kubelet", "reportingInstance": "",
        });
        assert_eq!(
            cells("Event", new_api),
            // MicroTime keeps its fraction: 59.88s truncates to 59s.
            json!([
                "59s", "Normal", "Starting", "node/n1", "", "kubelet", "Starting", "59s", 1, "e2"
            ])
            .as_array()
            .cloned()
            .expect("array")
        );
    }

    #[test]
    fn small_kinds() {
        let meta = json!({"name": "x", "creationTimestamp": ago(7200)});
        assert_eq!(
            cells(
                "Secret",
                json!({"metadata": meta, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}})
            ),
            vec![
                json!("x"),
                json!("kubernetes.io/tls"),
                json!(2),
                json!("120m")
            ]
        );
        assert_eq!(
            cells(
                "ServiceAccount",
                json!({"metadata": meta, "secrets": [{"name": "t"}]})
            ),
            vec![json!("x"), json!(1), json!("120m")]
        );
        assert_eq!(
            cells(
                "ConfigMap",
                json!({"metadata": meta, "data": {"a": "1"}, "binaryData": {"b": ""}})
            ),
            vec![json!("x"), json!(2), json!("120m")]
        );
        assert_eq!(
            cells(
                "Namespace",
                json!({"metadata": meta, "status": {"phase": "Terminating"}})
            ),
            vec![json!("x"), json!("Terminating"), json!("120m")]
        );
        assert_eq!(
            cells(
                "Lease",
                json!({"metadata": meta, "spec": {"holderIdentity": "n1"}})
            ),
            vec![json!("x"), json!("n1"), json!("120m")]
        );
        assert_eq!(cells("Lease", json!({"metadata": meta, "spec": {}}))[1], "");
    }

    #[test]
    fn endpointslice_and_ingress() {
        let es = json!({"metadata": {"name": "svc-abc", "creationTimestamp": ago(5)},
            "addressType": "IPv4",
            "ports": [{"port": 80, "name": "http"}, {"name": "named"}, {}, {"port": 9}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        assert_eq!(
            cells("EndpointSlice", es),
            vec![
                json!("svc-abc"),
                json!("IPv4"),
                json!("80,named,* + 1 more..."),
                json!("10.0.0.1,10.0.0.2"),
                json!("5s")
            ]
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv6"});
        assert_eq!(
            cells("EndpointSlice", empty)[2..4],
            [json!("<unset>"), json!("<unset>")]
        );

        let ing = json!({"metadata": {"name": "ing", "creationTimestamp": ago(5)},
            "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example"]}],
                "rules": [{"host": "a.example"}, {}, {"host": "b.example"}, {"host": "c.example"}, {"host": "d.example"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        assert_eq!(
            cells("Ingress", ing),
            vec![
                json!("ing"),
                json!("nginx"),
                json!("a.example,b.example,c.example + 2 more..."),
                json!("1.2.3.4"),
                json!("80, 443"),
                json!("5s")
            ]
        );
        let bare = json!({"metadata": {"name": "i"}, "spec": {}});
        assert_eq!(
            cells("Ingress", bare)[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
    }

    #[test]
    fn default_table_for_other_kinds() {
        let obj = json!({"metadata": {"name": "r", "creationTimestamp": "2024-06-01T08:09:10Z"}});
        let t = to_table("ClusterRole", &[obj], "None", json!({}), now());
        assert_eq!(
            t["columnDefinitions"][1],
            json!({"name": "Created At", "type": "date", "format": "",
                "description": D_META_CREATIONTIMESTAMP, "priority": 0})
        );
        assert_eq!(t["rows"][0]["cells"], json!(["r", "2024-06-01T08:09:10Z"]));
        let t = to_table(
            "ClusterRole",
            &[json!({"metadata": {"name": "z"}})],
            "None",
            json!({}),
            now(),
        );
        assert_eq!(t["rows"][0]["cells"], json!(["z", "0001-01-01T00:00:00Z"]));
        assert!(to_table("ClusterRole", &[], "", json!({}), now())["rows"].is_null());
    }
}
