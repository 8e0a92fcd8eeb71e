//! The scheduler's view of the cluster: nodes, and the pods on each node with their
//! summed requests and host ports. Bound pods come from the pod watch; "assumed" pods
//! are the ones this scheduler has chosen a node for whose binding it has not yet seen
//! come back, counted exactly like bound ones so that watch lag never lets two pods
//! take the same room.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::types::{HostPort, NamespaceLabels, NodeSpec, PodInfo, Resources};

/// A node and what is placed on it.
#[derive(Debug, Default)]
pub struct NodeInfo {
    /// `None` while pods name a node whose object the scheduler has not seen.
    pub spec: Option<Arc<NodeSpec>>,
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub requested: Resources,
    pub nonzero_cpu: i64,
    pub nonzero_mem: i64,
    pub ports: HashMap<HostPort, usize>,
}

impl NodeInfo {
    fn add(&mut self, p: Arc<PodInfo>) {
        for (k, v) in &p.requests {
            *self.requested.entry(k.clone()).or_default() += v;
        }
        self.nonzero_cpu += p.nonzero_cpu;
        self.nonzero_mem += p.nonzero_mem;
        for hp in &p.host_ports {
            *self.ports.entry(hp.clone()).or_default() += 1;
        }
        self.pods.insert(p.key(), p);
    }

    fn remove(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let p = self.pods.remove(key)?;
        for (k, v) in &p.requests {
            if let Some(e) = self.requested.get_mut(k) {
                *e -= v;
            }
        }
        self.nonzero_cpu -= p.nonzero_cpu;
        self.nonzero_mem -= p.nonzero_mem;
        for hp in &p.host_ports {
            if let Some(n) = self.ports.get_mut(hp) {
                *n -= 1;
                if *n == 0 {
                    self.ports.remove(hp);
                }
            }
        }
        Some(p)
    }

    /// Whether a pod asking for `hp` conflicts with a port in use here.
    pub fn port_conflict(&self, hp: &HostPort) -> bool {
        self.ports.keys().any(|used| used.conflicts(hp))
    }
}

/// Nodes and placed pods.
#[derive(Debug, Default)]
pub struct Cache {
    pub nodes: HashMap<String, NodeInfo>,
    /// Namespace labels, for affinity terms with a namespace selector.
    pub namespaces: NamespaceLabels,
    /// Names of nodes with an object, in a stable order for round-robin sampling
    /// (shared, so a scheduling cycle takes it without copying every name).
    node_names: Arc<Vec<String>>,
    names_dirty: bool,
    /// Placed pod key -> node name.
    placed: HashMap<String, String>,
    /// Keys of placed pods whose binding the watch has not confirmed yet.
    assumed: HashSet<String>,
    /// Placed pods with pod (anti-)affinity terms: the only ones whose terms can
    /// affect another pod's placement.
    with_affinity: HashSet<String>,
    /// Placed pods by controlling owner uid, for spreading a workload.
    by_owner: HashMap<String, HashSet<String>>,
}

impl Cache {
    /// Adds or replaces a node object.
    pub fn set_node(&mut self, spec: NodeSpec) {
        let name = spec.name.clone();
        let e = self.nodes.entry(name).or_default();
        if e.spec.is_none() {
            self.names_dirty = true;
        }
        e.spec = Some(Arc::new(spec));
    }

    /// Removes a node object (its pods stay accounted until they go).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.spec = None;
            if n.pods.is_empty() {
                self.nodes.remove(name);
            }
            self.names_dirty = true;
        }
    }

    /// Names of every node with an object, in a stable order.
    pub fn node_names(&mut self) -> Arc<Vec<String>> {
        if self.names_dirty {
            let mut names: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.spec.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            names.sort();
            self.node_names = Arc::new(names);
            self.names_dirty = false;
        }
        self.node_names.clone()
    }

    /// Places (or re-places) a pod on `node`; `assumed` when it is this scheduler's
    /// decision not yet seen bound.
    pub fn place(&mut self, pod: Arc<PodInfo>, node: &str, assumed: bool) {
        let key = pod.key();
        self.remove_pod(&key);
        if pod.has_affinity() {
            self.with_affinity.insert(key.clone());
        }
        if let Some(o) = &pod.owner {
            self.by_owner
                .entry(o.clone())
                .or_default()
                .insert(key.clone());
        }
        if assumed {
            self.assumed.insert(key.clone());
        }
        self.placed.insert(key, node.to_string());
        self.nodes.entry(node.to_string()).or_default().add(pod);
    }

    /// Takes a pod out of the accounting (deleted, finished, or its binding failed).
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let node = self.placed.remove(key)?;
        self.assumed.remove(key);
        self.with_affinity.remove(key);
        let n = self.nodes.get_mut(&node)?;
        let p = n.remove(key)?;
        if n.spec.is_none() && n.pods.is_empty() {
            self.nodes.remove(&node);
        }
        if let Some(o) = &p.owner {
            if let Some(set) = self.by_owner.get_mut(o) {
                set.remove(key);
                if set.is_empty() {
                    self.by_owner.remove(o);
                }
            }
        }
        Some(p)
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// The node a placed pod is on.
    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(String::as_str)
    }

    /// A placed pod and its node.
    pub fn placed_pod(&self, key: &str) -> Option<(&NodeInfo, &Arc<PodInfo>)> {
        let n = self.nodes.get(self.placed.get(key)?)?;
        Some((n, n.pods.get(key)?))
    }

    /// Placed pods that have pod (anti-)affinity terms, with their nodes.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<PodInfo>)> {
        self.with_affinity.iter().filter_map(|k| self.placed_pod(k))
    }

    /// Placed pods controlled by `owner`, with their nodes.
    pub fn pods_of_owner<'a>(
        &'a self,
        owner: &str,
    ) -> impl Iterator<Item = (&'a NodeInfo, &'a Arc<PodInfo>)> + 'a {
        self.by_owner
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|k| self.placed_pod(k))
    }

    /// Every placed pod with its node.
    pub fn all_pods(&self) -> impl Iterator<Item = (&NodeInfo, &Arc<PodInfo>)> {
        self.nodes
            .values()
            .flat_map(|n| n.pods.values().map(move |p| (n, p)))
    }

    /// Keys of every placed pod.
    pub fn placed_keys(&self) -> impl Iterator<Item = &String> {
        self.placed.keys()
    }

    pub fn placed_count(&self) -> usize {
        self.placed.len()
    }
}
