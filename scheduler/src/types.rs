//! What the scheduler reads out of Pod and Node objects, parsed once per object
//! version: resource requests, host ports, affinity terms, taints. Filters and scores
//! work on these, never on raw JSON, so the hot loop does no parsing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm,
    Taint, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::quantity::parse_milli;

/// Resource amounts in thousandths of their unit, by resource name.
pub type Resources = BTreeMap<String, i64>;

/// A scoring request of a container that asks for nothing: upstream's
/// `DefaultMilliCPURequest`, so empty pods still spread.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Likewise upstream's `DefaultMemoryRequest`, 200 MiB (in milli-bytes here).
pub const DEFAULT_MEMORY_MILLI: i64 = 200 * 1024 * 1024 * 1000;

/// `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A host port a pod asks for: protocol, host IP ("" or "0.0.0.0" = every address), port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two pods asking for these could not share a node.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == other.port
            && self.protocol == other.protocol
            && (wild(&self.ip) || wild(&other.ip) || self.ip == other.ip)
    }
}

/// Which namespaces an affinity term's selector looks at.
#[derive(Clone, Debug)]
pub enum Namespaces {
    /// `namespaceSelector: {}`: every namespace.
    All,
    /// The listed namespaces (the pod's own when the term names none and has no
    /// selector), plus those whose labels match the selector.
    Some(Vec<String>, Option<LabelSelector>),
}

/// Namespace name -> its labels, for terms with a `namespaceSelector`.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// A pod (anti-)affinity term with its namespaces resolved.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    pub selector: Option<LabelSelector>,
    pub namespaces: Namespaces,
    pub topology_key: String,
}

impl AffinityTerm {
    fn from_api(t: &PodAffinityTerm, own_ns: &str) -> AffinityTerm {
        let mut ns: Vec<String> = t.namespaces.clone().unwrap_or_default();
        let namespaces = match &t.namespace_selector {
            // An empty namespace selector selects every namespace.
            Some(sel) if selector_is_empty(sel) => Namespaces::All,
            Some(sel) => Namespaces::Some(ns, Some(sel.clone())),
            None => {
                if ns.is_empty() {
                    ns.push(own_ns.to_string());
                }
                Namespaces::Some(ns, None)
            }
        };
        AffinityTerm {
            selector: t.label_selector.clone(),
            namespaces,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether `pod` is one of the pods this term is about.
    pub fn matches(&self, pod: &PodInfo, ns_labels: &NamespaceLabels) -> bool {
        let ns_ok = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Some(list, sel) => {
                list.contains(&pod.namespace)
                    || sel.as_ref().is_some_and(|sel| {
                        ns_labels
                            .get(&pod.namespace)
                            .is_some_and(|labels| selector_matches(sel, labels))
                    })
            }
        };
        // A term without a label selector selects nothing.
        ns_ok
            && self
                .selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, &pod.labels))
    }
}

fn selector_is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// A label selector against a label set; `{}` selects everything.
pub fn selector_matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &s.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let v = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => v.is_none_or(|v| !values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    })
}

/// A topology spread constraint the scheduler applies to a pod.
#[derive(Clone, Debug)]
pub struct SpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    /// Which pods count: by labels, or (the system default) the pod's own workload.
    pub selector: SpreadSelector,
}

/// The pods a spread constraint counts.
#[derive(Clone, Debug)]
pub enum SpreadSelector {
    Labels(LabelSelector),
    /// Pods controlled by the same owner (ReplicaSet, StatefulSet, Job...): what
    /// upstream's default constraints select through the owner's selector.
    Owner(String),
}

/// Everything the scheduler needs of a pod.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: String,
    pub scheduler_name: String,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub preempt_never: bool,
    pub terminating: bool,
    pub terminal: bool,
    pub gated: bool,
    pub requests: Resources,
    /// cpu and memory with upstream's defaults for containers that ask for none (scores).
    pub nonzero_cpu: i64,
    pub nonzero_mem: i64,
    pub host_ports: Vec<HostPort>,
    pub tolerations: Vec<Toleration>,
    pub node_selector: BTreeMap<String, String>,
    pub required_node_affinity: Option<NodeSelector>,
    pub preferred_node_affinity: Vec<(i32, NodeSelectorTerm)>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    pub spread: Vec<SpreadConstraint>,
    /// uid of the controlling owner, if any.
    pub owner: Option<String>,
}

fn add_requests(into: &mut Resources, c: &Container) {
    let Some(r) = &c.resources else { return };
    // A container with only limits gets them as requests (the apiserver's defaulting).
    let requests = r.requests.as_ref();
    let limits = r.limits.as_ref();
    let mut names: Vec<&String> = requests.into_iter().flat_map(|m| m.keys()).collect();
    names.extend(limits.into_iter().flat_map(|m| m.keys()));
    names.sort();
    names.dedup();
    for name in names {
        let q = requests
            .and_then(|m| m.get(name))
            .or_else(|| limits.and_then(|m| m.get(name)));
        if let Some(v) = q.and_then(|q| parse_milli(&q.0)) {
            *into.entry(name.clone()).or_default() += v;
        }
    }
}

fn max_into(into: &mut Resources, other: &Resources) {
    for (k, v) in other {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

fn sum_into(into: &mut Resources, other: &Resources) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// The pod's effective requests, as upstream computes them: the containers' sum
/// (restartable init containers, i.e. sidecars, run beside them), or the largest
/// need of any init container while it runs, whichever is more; plus the overhead.
fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::new();
    };
    let mut total = Resources::new();
    for c in &spec.containers {
        add_requests(&mut total, c);
    }
    let mut sidecars = Resources::new();
    let mut init_max = Resources::new();
    for c in spec.init_containers.iter().flatten() {
        let mut r = Resources::new();
        add_requests(&mut r, c);
        if c.restart_policy.as_deref() == Some("Always") {
            sum_into(&mut sidecars, &r);
            max_into(&mut init_max, &sidecars);
        } else {
            sum_into(&mut r, &sidecars);
            max_into(&mut init_max, &r);
        }
    }
    sum_into(&mut total, &sidecars);
    max_into(&mut total, &init_max);
    if let Some(o) = &spec.overhead {
        for (k, q) in o {
            if let Some(v) = parse_milli(&q.0) {
                *total.entry(k.clone()).or_default() += v;
            }
        }
    }
    total.retain(|_, v| *v != 0);
    total
}

/// Sum of containers' cpu/memory, each container that asks for none counted at the
/// defaults.
fn nonzero_requests(pod: &Pod) -> (i64, i64) {
    let (mut cpu, mut mem) = (0, 0);
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let mut r = Resources::new();
        add_requests(&mut r, c);
        cpu += r
            .get("cpu")
            .copied()
            .filter(|v| *v != 0)
            .unwrap_or(DEFAULT_MILLI_CPU);
        mem += r
            .get("memory")
            .copied()
            .filter(|v| *v != 0)
            .unwrap_or(DEFAULT_MEMORY_MILLI);
    }
    (cpu, mem)
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let no_spec = k8s_openapi::api::core::v1::PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&no_spec);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let mut host_ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: hp,
                    });
                }
            }
        }
        let affinity = spec.affinity.clone().unwrap_or_default();
        let na = affinity.node_affinity.unwrap_or_default();
        let pa = affinity.pod_affinity.unwrap_or_default();
        let paa = affinity.pod_anti_affinity.unwrap_or_default();
        let terms = |v: Option<Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            v.unwrap_or_default()
                .iter()
                .map(|t| AffinityTerm::from_api(t, &namespace))
                .collect()
        };
        let weighted = |v: Option<Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            v.unwrap_or_default()
                .iter()
                .map(|w| {
                    (
                        w.weight,
                        AffinityTerm::from_api(&w.pod_affinity_term, &namespace),
                    )
                })
                .collect::<Vec<_>>()
        };
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        let spread = spread_constraints(
            spec.topology_spread_constraints.as_deref(),
            owner.as_deref(),
        );
        let (nonzero_cpu, nonzero_mem) = nonzero_requests(&pod);
        PodInfo {
            requests: pod_requests(&pod),
            nonzero_cpu,
            nonzero_mem,
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            node_name: spec.node_name.clone().unwrap_or_default(),
            scheduler_name: spec
                .scheduler_name
                .clone()
                .unwrap_or_else(|| crate::SCHEDULER_NAME.into()),
            labels: meta.labels.clone().unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            preempt_never: spec.preemption_policy.as_deref() == Some("Never"),
            terminating: meta.deletion_timestamp.is_some(),
            terminal: matches!(phase, Some("Succeeded" | "Failed")),
            gated: spec
                .scheduling_gates
                .as_ref()
                .is_some_and(|g| !g.is_empty()),
            host_ports,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity: na.required_during_scheduling_ignored_during_execution,
            preferred_node_affinity: na
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.weight, p.preference))
                .collect(),
            required_affinity: terms(pa.required_during_scheduling_ignored_during_execution),
            required_anti_affinity: terms(paa.required_during_scheduling_ignored_during_execution),
            preferred_affinity: weighted(pa.preferred_during_scheduling_ignored_during_execution),
            preferred_anti_affinity: weighted(
                paa.preferred_during_scheduling_ignored_during_execution,
            ),
            spread,
            owner,
            namespace,
            pod,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        key(&self.namespace, &self.name)
    }

    /// The same, keeping of the object only its identity: what a placed pod needs.
    /// Every placed pod stays in the cache for as long as it runs, and its whole
    /// object (managed fields, status, every container) was most of the memory.
    pub fn slim(mut self) -> PodInfo {
        let m = &self.pod.metadata;
        let slim = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        self.pod = Arc::new(slim);
        self
    }

    /// Whether this pod has any pod (anti-)affinity term that other pods' placement
    /// must respect or that scores.
    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }
}

/// The pod's own constraints, or upstream's system defaults (hostname skew 3, zone skew
/// 5, both ScheduleAnyway) over its workload's pods when it has none and an owner.
fn spread_constraints(
    own: Option<&[TopologySpreadConstraint]>,
    owner: Option<&str>,
) -> Vec<SpreadConstraint> {
    match own {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|c| {
                Some(SpreadConstraint {
                    max_skew: c.max_skew.max(1),
                    topology_key: c.topology_key.clone(),
                    hard: c.when_unsatisfiable != "ScheduleAnyway",
                    selector: SpreadSelector::Labels(c.label_selector.clone()?),
                })
            })
            .collect(),
        _ => match owner {
            Some(uid) => vec![
                SpreadConstraint {
                    max_skew: 3,
                    topology_key: "kubernetes.io/hostname".into(),
                    hard: false,
                    selector: SpreadSelector::Owner(uid.to_string()),
                },
                SpreadConstraint {
                    max_skew: 5,
                    topology_key: "topology.kubernetes.io/zone".into(),
                    hard: false,
                    selector: SpreadSelector::Owner(uid.to_string()),
                },
            ],
            None => Vec::new(),
        },
    }
}

/// Everything the scheduler needs of a node.
#[derive(Debug)]
pub struct NodeSpec {
    pub node: Arc<Node>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// Allocatable pod count (0 when the node reports none).
    pub max_pods: i64,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
}

impl NodeSpec {
    pub fn new(node: Arc<Node>) -> NodeSpec {
        let status = node.status.clone().unwrap_or_default();
        // A node reporting capacity but no allocatable offers its capacity.
        let alloc: BTreeMap<String, Quantity> =
            status.allocatable.or(status.capacity).unwrap_or_default();
        let mut allocatable = Resources::new();
        let mut max_pods = 0;
        for (k, q) in &alloc {
            let Some(v) = parse_milli(&q.0) else { continue };
            if k == "pods" {
                max_pods = v / 1000;
            } else {
                allocatable.insert(k.clone(), v);
            }
        }
        let spec = node.spec.clone().unwrap_or_default();
        NodeSpec {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable,
            max_pods,
            taints: spec.taints.unwrap_or_default(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            node,
        }
    }
}

impl NodeSpec {
    /// Whether the two versions of a node are the same to every filter and score.
    pub fn same_for_scheduling(&self, other: &NodeSpec) -> bool {
        self.labels == other.labels
            && self.allocatable == other.allocatable
            && self.max_pods == other.max_pods
            && self.taints == other.taints
            && self.unschedulable == other.unschedulable
    }
}

/// Whether `t` tolerates `taint` (same key, or an empty key with Exists; the value
/// for Equal; the effect, or every effect when empty).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// A node selector term against a node: every expression and field must match, and a
/// term with neither matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeSpec) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node.name.as_str())))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(int), values.first().and_then(|b| int(b)))
            else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Counts of something per topology domain: (topology key, label value) -> count.
pub type DomainCounts = HashMap<(String, String), i64>;
