//! One scheduling decision: kube-scheduler's default profile as plain functions over
//! the cache. Filters run per node in upstream's order and a node fails on the first
//! one that rejects it, with upstream's reason strings (they end up in the
//! FailedScheduling event); feasible nodes are scored by the default score plugins
//! with their default weights, and the best wins (ties broken at random).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use rand::Rng;

use crate::cache::{Cache, NodeInfo};
use crate::types::{
    selector_matches, term_matches, tolerates, DomainCounts, NodeSpec, PodInfo, SpreadConstraint,
    SpreadSelector,
};

/// Best score a plugin gives a node (upstream's `MaxNodeScore`).
pub const MAX_SCORE: i64 = 100;

/// Upstream's default-profile score weights.
const W_TAINT: i64 = 3;
const W_NODE_AFFINITY: i64 = 2;
const W_FIT: i64 = 1;
const W_SPREAD: i64 = 2;
const W_INTER_POD: i64 = 2;
const W_BALANCED: i64 = 1;

/// Why a node was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub reasons: Vec<String>,
    /// Upstream's UnschedulableAndUnresolvable: evicting pods would not help.
    pub unresolvable: bool,
}

impl NodeStatus {
    fn new(reason: impl Into<String>, unresolvable: bool) -> NodeStatus {
        NodeStatus {
            reasons: vec![reason.into()],
            unresolvable,
        }
    }
}

/// Why a pod fits no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cluster has no nodes.
    NoNodes,
    /// Every node was rejected.
    Fit(FitError),
}

/// Every node's rejection, for upstream's "0/N nodes are available: ..." message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    pub statuses: Vec<NodeStatus>,
    /// The preemption step's own verdict (this scheduler does not preempt, so it says
    /// what upstream's says when there is nothing to preempt).
    pub post_filter: String,
}

/// "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) were unschedulable."
fn histogram(num_nodes: usize, statuses: &[NodeStatus]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in statuses {
        for r in &s.reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    // Upstream sorts the "count reason" strings themselves.
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut msg = format!("0/{num_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push_str(&format!(" {}.", parts.join(", ")));
    }
    msg
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::NoNodes => f.write_str("no nodes available to schedule pods"),
            ScheduleError::Fit(e) => {
                write!(f, "{}", histogram(e.num_nodes, &e.statuses))?;
                if !e.post_filter.is_empty() {
                    write!(f, " {}.", e.post_filter)?;
                }
                Ok(())
            }
        }
    }
}

/// How many feasible nodes to look for before scoring (upstream's adaptive
/// percentageOfNodesToScore: all of them up to 100 nodes, then a shrinking share, never
/// under 5% or 100 nodes).
pub fn nodes_to_find(n: usize) -> usize {
    if n < 100 {
        return n;
    }
    let pct = 50usize.saturating_sub(n / 125).max(5);
    (n * pct / 100).max(100)
}

/// Per-cycle state computed once before the node loop (upstream's PreFilter).
struct Pre<'a> {
    /// Domains forbidden by placed pods' required anti-affinity against this pod.
    existing_anti: HashSet<(String, String)>,
    /// Matches of this pod's required affinity terms per domain.
    affinity_counts: DomainCounts,
    /// Whether this pod may be the first of its group (no pod matches its affinity
    /// terms anywhere, and it matches them itself).
    affinity_self_ok: bool,
    anti_counts: DomainCounts,
    /// Hard spread constraints: (constraint, counts per domain, min count, self match).
    spread: Vec<(&'a SpreadConstraint, HashMap<String, i64>, i64, i64)>,
}

fn label<'a>(n: &'a NodeSpec, key: &str) -> Option<&'a str> {
    n.labels.get(key).map(String::as_str)
}

fn node_affinity_ok(pod: &PodInfo, node: &NodeSpec) -> bool {
    if pod
        .node_selector
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        return false;
    }
    match &pod.required_node_affinity {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

/// Whether a placed pod counts for a spread constraint of `pod`.
fn spread_counts(c: &SpreadConstraint, pod: &PodInfo, other: &PodInfo) -> bool {
    if other.terminating {
        return false;
    }
    match &c.selector {
        SpreadSelector::Owner(o) => other.owner.as_deref() == Some(o.as_str()),
        SpreadSelector::Labels(sel) => {
            other.namespace == pod.namespace && selector_matches(sel, &other.labels)
        }
    }
}

/// Placed pods a spread constraint may count, with their nodes.
fn spread_candidates<'a>(
    cache: &'a Cache,
    c: &'a SpreadConstraint,
) -> Box<dyn Iterator<Item = (&'a NodeInfo, &'a std::sync::Arc<PodInfo>)> + 'a> {
    match &c.selector {
        SpreadSelector::Owner(o) => Box::new(cache.pods_of_owner(o)),
        SpreadSelector::Labels(_) => Box::new(cache.all_pods()),
    }
}

/// Counts of matching pods per domain of `c`'s key over nodes eligible for `pod` (those
/// its node affinity allows, upstream's nodeAffinityPolicy Honor), every eligible
/// domain present.
fn domain_counts(cache: &Cache, pod: &PodInfo, c: &SpreadConstraint) -> HashMap<String, i64> {
    let mut counts: HashMap<String, i64> = HashMap::new();
    for n in cache.nodes.values() {
        let Some(spec) = &n.spec else { continue };
        if let (Some(v), true) = (label(spec, &c.topology_key), node_affinity_ok(pod, spec)) {
            counts.entry(v.to_string()).or_default();
        }
    }
    for (n, other) in spread_candidates(cache, c) {
        let Some(spec) = &n.spec else { continue };
        let Some(v) = label(spec, &c.topology_key) else {
            continue;
        };
        if !spread_counts(c, pod, other) {
            continue;
        }
        if let Some(e) = counts.get_mut(v) {
            *e += 1;
        }
    }
    counts
}

fn self_match(c: &SpreadConstraint, pod: &PodInfo) -> i64 {
    match &c.selector {
        SpreadSelector::Owner(o) => i64::from(pod.owner.as_deref() == Some(o.as_str())),
        SpreadSelector::Labels(sel) => i64::from(selector_matches(sel, &pod.labels)),
    }
}

fn pre_filter<'a>(cache: &Cache, pod: &'a PodInfo) -> Pre<'a> {
    let mut pre = Pre {
        existing_anti: HashSet::new(),
        affinity_counts: DomainCounts::new(),
        affinity_self_ok: false,
        anti_counts: DomainCounts::new(),
        spread: Vec::new(),
    };
    for (n, other) in cache.pods_with_affinity() {
        let Some(spec) = &n.spec else { continue };
        for t in &other.required_anti_affinity {
            if t.matches(pod, &cache.namespaces) {
                if let Some(v) = label(spec, &t.topology_key) {
                    pre.existing_anti
                        .insert((t.topology_key.clone(), v.to_string()));
                }
            }
        }
    }
    if !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty() {
        for (n, other) in cache.all_pods() {
            let Some(spec) = &n.spec else { continue };
            if other.key() == pod.key() {
                continue;
            }
            if !pod.required_affinity.is_empty()
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(other, &cache.namespaces))
            {
                for t in &pod.required_affinity {
                    if let Some(v) = label(spec, &t.topology_key) {
                        *pre.affinity_counts
                            .entry((t.topology_key.clone(), v.to_string()))
                            .or_default() += 1;
                    }
                }
            }
            for t in &pod.required_anti_affinity {
                if t.matches(other, &cache.namespaces) {
                    if let Some(v) = label(spec, &t.topology_key) {
                        *pre.anti_counts
                            .entry((t.topology_key.clone(), v.to_string()))
                            .or_default() += 1;
                    }
                }
            }
        }
        pre.affinity_self_ok = pre.affinity_counts.is_empty()
            && pod
                .required_affinity
                .iter()
                .all(|t| t.matches(pod, &cache.namespaces));
    }
    for c in pod.spread.iter().filter(|c| c.hard) {
        let counts = domain_counts(cache, pod, c);
        let min = counts.values().copied().min().unwrap_or(0);
        pre.spread.push((c, counts, min, self_match(c, pod)));
    }
    pre
}

const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Runs the filters on one node; `None` when it fits.
fn filter(pod: &PodInfo, pre: &Pre<'_>, n: &NodeInfo, spec: &NodeSpec) -> Option<NodeStatus> {
    // NodeUnschedulable
    if spec.unschedulable {
        let taint = k8s_openapi::api::core::v1::Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !pod.tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Some(NodeStatus::new("node(s) were unschedulable", true));
        }
    }
    // TaintToleration
    if let Some(t) = spec.taints.iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute")
            && !pod.tolerations.iter().any(|tol| tolerates(tol, t))
    }) {
        return Some(NodeStatus::new(
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ),
            true,
        ));
    }
    // NodeAffinity (nodeSelector and required node affinity)
    if !node_affinity_ok(pod, spec) {
        return Some(NodeStatus::new(
            "node(s) didn't match Pod's node affinity/selector",
            true,
        ));
    }
    // NodePorts
    if pod.host_ports.iter().any(|hp| n.port_conflict(hp)) {
        return Some(NodeStatus::new(
            "node(s) didn't have free ports for the requested pod ports",
            false,
        ));
    }
    // NodeResourcesFit
    let mut reasons = Vec::new();
    if n.pods.len() as i64 + 1 > spec.max_pods {
        reasons.push("Too many pods".to_string());
    }
    for (res, want) in &pod.requests {
        if *want <= 0 {
            continue;
        }
        let alloc = spec.allocatable.get(res).copied().unwrap_or(0);
        let used = n.requested.get(res).copied().unwrap_or(0);
        if *want > alloc - used {
            reasons.push(format!("Insufficient {res}"));
        }
    }
    if !reasons.is_empty() {
        return Some(NodeStatus {
            reasons,
            unresolvable: false,
        });
    }
    // PodTopologySpread (DoNotSchedule constraints)
    for (c, counts, min, me) in &pre.spread {
        let Some(v) = label(spec, &c.topology_key) else {
            return Some(NodeStatus::new(
                "node(s) didn't match pod topology spread constraints (missing required label)",
                true,
            ));
        };
        let here = counts.get(v).copied().unwrap_or(0);
        if here + me - min > i64::from(c.max_skew) {
            return Some(NodeStatus::new(
                "node(s) didn't match pod topology spread constraints",
                false,
            ));
        }
    }
    // InterPodAffinity
    if !pod.required_affinity.is_empty() {
        let all_present = pod.required_affinity.iter().all(|t| {
            label(spec, &t.topology_key).is_some_and(|v| {
                pre.affinity_counts
                    .get(&(t.topology_key.clone(), v.to_string()))
                    .is_some_and(|c| *c > 0)
            })
        });
        let first_of_group = pre.affinity_self_ok
            && pod
                .required_affinity
                .iter()
                .all(|t| label(spec, &t.topology_key).is_some());
        if !all_present && !first_of_group {
            return Some(NodeStatus::new(
                "node(s) didn't match pod affinity rules",
                true,
            ));
        }
    }
    if pod.required_anti_affinity.iter().any(|t| {
        label(spec, &t.topology_key).is_some_and(|v| {
            pre.anti_counts
                .get(&(t.topology_key.clone(), v.to_string()))
                .is_some_and(|c| *c > 0)
        })
    }) {
        return Some(NodeStatus::new(
            "node(s) didn't match pod anti-affinity rules",
            false,
        ));
    }
    if !pre.existing_anti.is_empty()
        && spec
            .labels
            .iter()
            .any(|(k, v)| pre.existing_anti.contains(&(k.clone(), v.clone())))
    {
        return Some(NodeStatus::new(
            "node(s) didn't satisfy existing pods anti-affinity rules",
            false,
        ));
    }
    None
}

/// Upstream's preemption verdict for a pod no node fits, given that nothing here is
/// ever preempted: a node rejected for a reason eviction cannot fix is "not helpful";
/// otherwise, with no lower-priority pod on it there are no victims, and with some,
/// the node's own reasons stand (preemption is not implemented).
fn post_filter(cache: &Cache, pod: &PodInfo, rejected: &[(String, NodeStatus)]) -> String {
    if pod.preempt_never {
        return "preemption: not eligible due to preemptionPolicy=Never.".into();
    }
    let statuses: Vec<NodeStatus> = rejected
        .iter()
        .map(|(name, s)| {
            if s.unresolvable {
                return NodeStatus::new("Preemption is not helpful for scheduling", true);
            }
            let lower = cache
                .nodes
                .get(name)
                .is_some_and(|n| n.pods.values().any(|p| p.priority < pod.priority));
            if lower {
                s.clone()
            } else {
                NodeStatus::new("No preemption victims found for incoming pod", true)
            }
        })
        .collect();
    format!("preemption: {}", histogram(rejected.len(), &statuses))
}

/// Picks a node for `pod`, or says why none fits. `start` is the round-robin position
/// where the search for feasible nodes begins (advanced past the nodes looked at).
pub fn schedule(
    cache: &mut Cache,
    pod: &PodInfo,
    start: &mut usize,
    rng: &mut impl Rng,
) -> Result<String, ScheduleError> {
    let names = cache.node_names();
    let cache: &Cache = cache;
    let total = names.len();
    if total == 0 {
        return Err(ScheduleError::NoNodes);
    }
    let want = nodes_to_find(total);
    let pre = pre_filter(cache, pod);
    let mut feasible: Vec<(&NodeInfo, &NodeSpec)> = Vec::new();
    let mut rejected: Vec<(String, NodeStatus)> = Vec::new();
    let mut looked = 0;
    for i in 0..total {
        if feasible.len() >= want {
            break;
        }
        looked += 1;
        let name = &names[(*start + i) % total];
        let Some(n) = cache.nodes.get(name) else {
            continue;
        };
        let Some(spec) = &n.spec else { continue };
        match filter(pod, &pre, n, spec) {
            None => feasible.push((n, spec)),
            Some(st) => rejected.push((name.clone(), st)),
        }
    }
    *start = (*start + looked) % total;
    if feasible.is_empty() {
        let post = post_filter(cache, pod, &rejected);
        return Err(ScheduleError::Fit(FitError {
            num_nodes: total,
            statuses: rejected.into_iter().map(|(_, s)| s).collect(),
            post_filter: post,
        }));
    }
    if feasible.len() == 1 {
        return Ok(feasible[0].1.name.clone());
    }
    let scores = score(cache, pod, &feasible);
    // Reservoir sampling among the best, as upstream's selectHost.
    let mut best = i64::MIN;
    let mut chosen = 0;
    let mut ties = 0u32;
    for (i, s) in scores.iter().enumerate() {
        if *s > best {
            best = *s;
            chosen = i;
            ties = 1;
        } else if *s == best {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                chosen = i;
            }
        }
    }
    Ok(feasible[chosen].1.name.clone())
}

/// The weighted sum of every default score plugin for each feasible node.
pub fn score(cache: &Cache, pod: &PodInfo, nodes: &[(&NodeInfo, &NodeSpec)]) -> Vec<i64> {
    let mut total = vec![0i64; nodes.len()];
    let mut add = |w: i64, s: Vec<i64>| {
        for (t, s) in total.iter_mut().zip(s) {
            *t += w * s;
        }
    };
    add(W_TAINT, taint_scores(pod, nodes));
    add(W_NODE_AFFINITY, node_affinity_scores(pod, nodes));
    add(
        W_FIT,
        nodes
            .iter()
            .map(|(n, s)| least_allocated(pod, n, s))
            .collect(),
    );
    add(
        W_BALANCED,
        nodes.iter().map(|(n, s)| balanced(pod, n, s)).collect(),
    );
    add(W_SPREAD, spread_scores(cache, pod, nodes));
    add(W_INTER_POD, inter_pod_scores(cache, pod, nodes));
    total
}

/// TaintToleration: fewer untolerated PreferNoSchedule taints is better, normalised
/// and reversed so the cleanest node gets 100.
fn taint_scores(pod: &PodInfo, nodes: &[(&NodeInfo, &NodeSpec)]) -> Vec<i64> {
    let prefer: Vec<_> = pod
        .tolerations
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    let raw: Vec<i64> = nodes
        .iter()
        .map(|(_, s)| {
            s.taints
                .iter()
                .filter(|t| {
                    t.effect == "PreferNoSchedule" && !prefer.iter().any(|p| tolerates(p, t))
                })
                .count() as i64
        })
        .collect();
    normalize(&raw, true)
}

/// Upstream's DefaultNormalizeScore: scaled so the highest is 100 (or reversed).
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|s| {
            if max == 0 {
                if reverse {
                    MAX_SCORE
                } else {
                    0
                }
            } else {
                let v = MAX_SCORE * s / max;
                if reverse {
                    MAX_SCORE - v
                } else {
                    v
                }
            }
        })
        .collect()
}

/// NodeAffinity: the summed weights of the preferred terms a node matches, normalised.
fn node_affinity_scores(pod: &PodInfo, nodes: &[(&NodeInfo, &NodeSpec)]) -> Vec<i64> {
    if pod.preferred_node_affinity.is_empty() {
        return vec![0; nodes.len()];
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|(_, s)| {
            pod.preferred_node_affinity
                .iter()
                .filter(|(w, t)| *w != 0 && term_matches(t, s))
                .map(|(w, _)| i64::from(*w))
                .sum()
        })
        .collect();
    normalize(&raw, false)
}

fn alloc_of(spec: &NodeSpec, res: &str) -> i64 {
    spec.allocatable.get(res).copied().unwrap_or(0)
}

/// NodeResourcesFit's LeastAllocated over cpu and memory (weight 1 each), with the
/// defaults for containers that request nothing.
pub fn least_allocated(pod: &PodInfo, n: &NodeInfo, spec: &NodeSpec) -> i64 {
    let one = |requested: i64, alloc: i64| -> i64 {
        if alloc <= 0 || requested > alloc {
            return 0;
        }
        // In i128: milli-bytes times 100 can pass i64 on large nodes.
        (i128::from(alloc - requested) * i128::from(MAX_SCORE) / i128::from(alloc)) as i64
    };
    let cpu = one(n.nonzero_cpu + pod.nonzero_cpu, alloc_of(spec, "cpu"));
    let mem = one(n.nonzero_mem + pod.nonzero_mem, alloc_of(spec, "memory"));
    (cpu + mem) / 2
}

/// NodeResourcesBalancedAllocation: how evenly cpu and memory would be used, 100 when
/// their requested fractions are equal.
pub fn balanced(pod: &PodInfo, n: &NodeInfo, spec: &NodeSpec) -> i64 {
    let frac = |res: &str| -> Option<f64> {
        let alloc = alloc_of(spec, res);
        if alloc <= 0 {
            return None;
        }
        let req = n.requested.get(res).copied().unwrap_or(0)
            + pod.requests.get(res).copied().unwrap_or(0);
        Some((req as f64 / alloc as f64).min(1.0))
    };
    let fs: Vec<f64> = ["cpu", "memory"].iter().filter_map(|r| frac(r)).collect();
    let std = match fs.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX_SCORE as f64) as i64
}

/// PodTopologySpread (ScheduleAnyway constraints, or the system defaults over the
/// pod's workload): fewer matching pods in a node's domains is better. Upstream's
/// formula: per constraint, count x ln(domains + 2) + (maxSkew - 1), then
/// `100 x (max + min - s) / max`; nodes missing a constraint's key score 0.
fn spread_scores(cache: &Cache, pod: &PodInfo, nodes: &[(&NodeInfo, &NodeSpec)]) -> Vec<i64> {
    let soft: Vec<&SpreadConstraint> = pod.spread.iter().filter(|c| !c.hard).collect();
    if soft.is_empty() {
        return vec![0; nodes.len()];
    }
    // Default constraints only apply to keys the nodes have (upstream skips a default
    // zone constraint in a cluster without zones).
    let mut raw: Vec<Option<f64>> = vec![Some(0.0); nodes.len()];
    for c in soft {
        let domains: HashSet<&str> = nodes
            .iter()
            .filter_map(|(_, s)| label(s, &c.topology_key))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let weight = ((domains.len() + 2) as f64).ln();
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for (n, other) in spread_candidates(cache, c) {
            let Some(spec) = &n.spec else { continue };
            if let Some(v) = label(spec, &c.topology_key) {
                if domains.contains(v) && spread_counts(c, pod, other) {
                    *counts.entry(v).or_default() += 1;
                }
            }
        }
        for (r, (_, s)) in raw.iter_mut().zip(nodes) {
            match (r.as_mut(), label(s, &c.topology_key)) {
                (Some(acc), Some(v)) => {
                    let cnt = counts.get(v).copied().unwrap_or(0) as f64;
                    *acc += cnt * weight + f64::from(c.max_skew - 1);
                }
                _ => *r = None,
            }
        }
    }
    let ints: Vec<Option<i64>> = raw.iter().map(|r| r.map(|v| v.round() as i64)).collect();
    let max = ints.iter().flatten().copied().max().unwrap_or(0);
    let min = ints.iter().flatten().copied().min().unwrap_or(0);
    ints.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX_SCORE,
            Some(s) => MAX_SCORE * (max + min - s) / max,
        })
        .collect()
}

/// InterPodAffinity: the incoming pod's preferred (anti-)affinity to placed pods, and
/// placed pods' preferred terms and required affinity (weight 1, upstream's
/// hardPodAffinityWeight) towards it, summed per topology domain, then scaled min-max.
fn inter_pod_scores(cache: &Cache, pod: &PodInfo, nodes: &[(&NodeInfo, &NodeSpec)]) -> Vec<i64> {
    let mut domains: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut add = |spec: &NodeSpec, key: &str, w: i64| {
        if let Some(v) = label(spec, key) {
            *domains.entry((key.to_string(), v.to_string())).or_default() += w;
        }
    };
    let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
    let placed: Box<dyn Iterator<Item = _>> = if own {
        Box::new(cache.all_pods())
    } else {
        Box::new(cache.pods_with_affinity())
    };
    for (n, other) in placed {
        let Some(spec) = &n.spec else { continue };
        for (w, t) in &pod.preferred_affinity {
            if t.matches(other, &cache.namespaces) {
                add(spec, &t.topology_key, i64::from(*w));
            }
        }
        for (w, t) in &pod.preferred_anti_affinity {
            if t.matches(other, &cache.namespaces) {
                add(spec, &t.topology_key, -i64::from(*w));
            }
        }
        for (w, t) in &other.preferred_affinity {
            if t.matches(pod, &cache.namespaces) {
                add(spec, &t.topology_key, i64::from(*w));
            }
        }
        for (w, t) in &other.preferred_anti_affinity {
            if t.matches(pod, &cache.namespaces) {
                add(spec, &t.topology_key, -i64::from(*w));
            }
        }
        for t in &other.required_affinity {
            if t.matches(pod, &cache.namespaces) {
                add(spec, &t.topology_key, 1);
            }
        }
    }
    if domains.is_empty() {
        return vec![0; nodes.len()];
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|(_, s)| {
            domains
                .iter()
                .filter(|((k, v), _)| s.labels.get(k) == Some(v))
                .map(|(_, w)| *w)
                .sum()
        })
        .collect();
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.iter()
        .map(|s| {
            if max > min {
                MAX_SCORE * (s - min) / (max - min)
            } else {
                0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use serde_json::{json, Value};

    use super::*;
    use crate::types::NodeSpec;

    fn pod(v: Value) -> Arc<PodInfo> {
        let mut v = v;
        if v["metadata"]["namespace"].is_null() {
            v["metadata"]["namespace"] = json!("default");
        }
        Arc::new(PodInfo::new(Arc::new(
            serde_json::from_value(v).expect("a valid pod"),
        )))
    }

    fn simple_pod(name: &str, cpu: &str) -> Arc<PodInfo> {
        pod(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
        }))
    }

    fn node(name: &str, cpu: &str, extra: Value) -> NodeSpec {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "10"}},
        });
        if let Value::Object(m) = extra {
            for (k, val) in m {
                match k.as_str() {
                    "labels" => {
                        for (lk, lv) in val.as_object().into_iter().flatten() {
                            v["metadata"]["labels"][lk] = lv.clone();
                        }
                    }
                    _ => v["spec"][k] = val,
                }
            }
        }
        NodeSpec::new(Arc::new(serde_json::from_value(v).expect("a valid node")))
    }

    fn run(cache: &mut Cache, p: &PodInfo) -> Result<String, ScheduleError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        schedule(cache, p, &mut 0, &mut rng)
    }

    #[test]
    fn message_format_matches_upstream() {
        let mut c = Cache::default();
        c.set_node(node("a", "1", json!({})));
        c.set_node(node("b", "1", json!({"unschedulable": true})));
        c.set_node(node(
            "c",
            "4",
            json!({"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}),
        ));
        let err = run(&mut c, &simple_pod("p", "2")).expect_err("nothing fits");
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {k: v}, \
             1 node(s) were unschedulable. preemption: 0/3 nodes are available: \
             1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.."
        );
        let mut never = simple_pod("p", "2").pod.as_ref().clone();
        never.spec.as_mut().expect("spec").preemption_policy = Some("Never".into());
        let never = PodInfo::new(Arc::new(never));
        assert!(run(&mut c, &never)
            .expect_err("nothing fits")
            .to_string()
            .ends_with(" preemption: not eligible due to preemptionPolicy=Never.."));
        assert_eq!(
            run(&mut Cache::default(), &simple_pod("p", "1"))
                .expect_err("no nodes")
                .to_string(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn requests_count_init_containers_sidecars_and_overhead() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "300m"}}},
                ],
                "initContainers": [
                    {"name": "big-init", "resources": {"requests": {"cpu": "2"}}},
                    {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                ],
                "overhead": {"cpu": "50m"},
            },
        }));
        // max(containers 500m + sidecar 100m, init 2000m) + overhead 50m.
        assert_eq!(p.requests.get("cpu"), Some(&2050));
        assert_eq!(p.requests.get("memory"), Some(&((1i64 << 30) * 1000)));
        let mut c = Cache::default();
        c.set_node(node("small", "2", json!({})));
        let err = run(&mut c, &p).expect_err("2050m > 2");
        assert!(err
            .to_string()
            .starts_with("0/1 nodes are available: 1 Insufficient cpu."));
    }

    #[test]
    fn assumed_pods_count_and_too_many_pods() {
        let mut c = Cache::default();
        c.set_node(node("a", "1", json!({})));
        let p1 = simple_pod("p1", "600m");
        let n = run(&mut c, &p1).expect("fits");
        c.place(p1, &n, true);
        let err = run(&mut c, &simple_pod("p2", "600m")).expect_err("the assumed pod holds 600m");
        assert!(err.to_string().contains("1 Insufficient cpu"));
        c.remove_pod("default/p1");
        assert_eq!(
            run(&mut c, &simple_pod("p2", "600m")).expect("fits again"),
            "a"
        );
        // The pods limit.
        let mut c = Cache::default();
        c.set_node(node("tiny", "8", json!({})));
        for i in 0..10 {
            c.place(simple_pod(&format!("x{i}"), "1m"), "tiny", false);
        }
        let err = run(&mut c, &simple_pod("one-more", "1m")).expect_err("10 pods max");
        assert!(err.to_string().contains("1 Too many pods"), "{err}");
    }

    #[test]
    fn least_allocated_and_balanced_prefer_the_emptier_node() {
        let mut c = Cache::default();
        c.set_node(node("busy", "4", json!({})));
        c.set_node(node("idle", "4", json!({})));
        c.place(simple_pod("load", "3"), "busy", false);
        for i in 0..5 {
            assert_eq!(
                run(&mut c, &simple_pod(&format!("p{i}"), "100m")).expect("fits"),
                "idle"
            );
        }
        let n = c.nodes.get("idle").expect("idle");
        let spec = n.spec.clone().expect("spec");
        let p = simple_pod("q", "1");
        // cpu (100m nonzero default? no: 1 cpu requested) 1/4 used -> 75; memory: 200Mi
        // default of 4Gi -> 95; average 85.
        assert_eq!(least_allocated(&p, n, &spec), 85);
        // Requested fractions: cpu 1/4, memory 0 -> std 0.125 -> 87.
        assert_eq!(balanced(&p, n, &spec), 87);
    }

    #[test]
    fn taints_tolerations_and_prefer_no_schedule() {
        let mut c = Cache::default();
        c.set_node(node(
            "soft",
            "4",
            json!({"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}),
        ));
        c.set_node(node("clean", "4", json!({})));
        for i in 0..3 {
            let p = simple_pod(&format!("p{i}"), "10m");
            let n = run(&mut c, &p).expect("fits");
            assert_eq!(n, "clean", "PreferNoSchedule steers away");
            c.place(p, &n, false);
        }
        let tolerant = pod(json!({
            "metadata": {"name": "t"},
            "spec": {"containers": [{"name": "c"}], "tolerations": [{"operator": "Exists"}]},
        }));
        // Tolerating everything, the emptier node wins.
        assert_eq!(run(&mut c, &tolerant).expect("fits"), "soft");
    }

    #[test]
    fn node_affinity_operators() {
        let mut c = Cache::default();
        c.set_node(node("a", "4", json!({"labels": {"gen": "3", "zone": "x"}})));
        c.set_node(node("b", "4", json!({"labels": {"gen": "5", "zone": "y"}})));
        let p = |exprs: Value| {
            pod(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]},
                }}},
            }))
        };
        assert_eq!(
            run(
                &mut c,
                &p(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}]))
            )
            .expect("b"),
            "b"
        );
        assert_eq!(
            run(
                &mut c,
                &p(json!([{"key": "gen", "operator": "Lt", "values": ["4"]}]))
            )
            .expect("a"),
            "a"
        );
        assert_eq!(
            run(
                &mut c,
                &p(json!([{"key": "zone", "operator": "NotIn", "values": ["y"]}]))
            )
            .expect("a"),
            "a"
        );
        let err = run(
            &mut c,
            &p(json!([{"key": "missing", "operator": "Exists"}])),
        )
        .expect_err("none");
        assert!(err
            .to_string()
            .contains("2 node(s) didn't match Pod's node affinity/selector"));
        let by_name = pod(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]},
            }}},
        }));
        assert_eq!(run(&mut c, &by_name).expect("b"), "b");
    }

    #[test]
    fn hard_topology_spread() {
        let mut c = Cache::default();
        c.set_node(node("a1", "8", json!({"labels": {"zone": "a"}})));
        c.set_node(node("b1", "8", json!({"labels": {"zone": "b"}})));
        c.set_node(node("nozone", "8", json!({})));
        let spread = |name: &str| {
            pod(json!({
                "metadata": {"name": name, "labels": {"app": "w"}},
                "spec": {"containers": [{"name": "c"}], "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "w"}},
                }]},
            }))
        };
        c.place(spread("w0"), "a1", false);
        // Zone a has 1, b has 0: another in a would make the skew 2.
        let p = spread("w1");
        assert_eq!(run(&mut c, &p).expect("b"), "b1");
        c.place(p, "b1", false);
        c.place(spread("w2"), "a1", false);
        // Zone b still counts as a domain while its node is cordoned (upstream's
        // nodeTaintsPolicy Ignore): a at 2 against b at 1 is at the skew.
        c.set_node(node(
            "b1",
            "8",
            json!({"labels": {"zone": "b"}, "unschedulable": true}),
        ));
        let err = run(&mut c, &spread("w3")).expect_err("zone a is at the skew, b1 cordoned");
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) didn't match pod topology spread constraints, \
             1 node(s) didn't match pod topology spread constraints (missing required label), \
             1 node(s) were unschedulable. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
             2 Preemption is not helpful for scheduling.."
        );
    }

    #[test]
    fn existing_pods_anti_affinity_and_preferred_pod_affinity() {
        let mut c = Cache::default();
        for n in ["a", "b", "c"] {
            c.set_node(node(n, "8", json!({})));
        }
        let loner = pod(json!({
            "metadata": {"name": "loner", "labels": {"role": "loner"}},
            "spec": {"containers": [{"name": "c"}], "affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": {"app": "noisy"}},
                    "topologyKey": "kubernetes.io/hostname",
                }],
            }}},
        }));
        c.place(loner, "a", false);
        let noisy = pod(json!({
            "metadata": {"name": "noisy", "labels": {"app": "noisy"}},
            "spec": {"containers": [{"name": "c"}], "nodeSelector": {"kubernetes.io/hostname": "a"}},
        }));
        let err = run(&mut c, &noisy).expect_err("the loner forbids a");
        assert!(
            err.to_string()
                .contains("1 node(s) didn't satisfy existing pods anti-affinity rules"),
            "{err}"
        );
        c.place(simple_pod("friend", "10m"), "c", false);
        let social = pod(json!({
            "metadata": {"name": "social"},
            "spec": {"containers": [{"name": "c"}], "affinity": {"podAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app": "friend"}},
                    "topologyKey": "kubernetes.io/hostname",
                }}],
            }}},
        }));
        assert_eq!(run(&mut c, &social).expect("fits"), "c");
    }

    #[test]
    fn namespace_selectors_in_affinity_terms() {
        let mut c = Cache::default();
        c.set_node(node("a", "8", json!({})));
        c.set_node(node("b", "8", json!({})));
        c.namespaces.insert(
            "team-a".into(),
            [("team".to_string(), "a".to_string())].into(),
        );
        c.namespaces.insert("other".into(), Default::default());
        let db = |ns: &str, name: &str| {
            pod(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c"}]},
            }))
        };
        c.place(db("team-a", "db-a"), "a", false);
        c.place(db("other", "db-other"), "b", false);
        let anti = |sel: Value| {
            pod(json!({
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [{"name": "c"}], "affinity": {"podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": "db"}},
                        "namespaceSelector": sel,
                        "topologyKey": "kubernetes.io/hostname",
                    }],
                }}},
            }))
        };
        // Only team=a namespaces count: node a is out, b is fine.
        assert_eq!(
            run(&mut c, &anti(json!({"matchLabels": {"team": "a"}}))).expect("b"),
            "b"
        );
        // {} is every namespace: both nodes are out.
        let err = run(&mut c, &anti(json!({}))).expect_err("db pods everywhere");
        assert!(
            err.to_string()
                .contains("2 node(s) didn't match pod anti-affinity rules"),
            "{err}"
        );
    }

    #[test]
    fn heartbeats_are_not_scheduling_changes() {
        let a = node("a", "4", json!({}));
        let mut beat = a.node.as_ref().clone();
        beat.status.as_mut().expect("status").conditions =
            Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]);
        assert!(a.same_for_scheduling(&NodeSpec::new(Arc::new(beat))));
        let tainted = node(
            "a",
            "4",
            json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
        );
        assert!(!a.same_for_scheduling(&tainted));
        assert!(!a.same_for_scheduling(&node("a", "8", json!({}))));
    }

    #[test]
    fn sampling_looks_at_a_share_of_large_clusters() {
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(100_000), 5000);
    }
}
