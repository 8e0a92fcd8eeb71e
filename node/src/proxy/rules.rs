//! The nftables ruleset for a [`Snapshot`], as kube-proxy's nftables mode lays it out:
//! a `services` chain with one verdict map from `daddr . l4proto . dport` (cluster IPs
//! and node ports) to a per-service-port chain, which picks a ready endpoint with
//! `numgen random mod N` (after the ClientIP affinity sets, when the Service has
//! affinity) and jumps to the endpoint's chain, which DNATs. Packets that need
//! masquerading get a mark, and the postrouting chain masquerades marked packets.
//! Service ports without a ready endpoint are rejected (ICMP port unreachable, so a
//! client sees "connection refused") from the filter hooks.
//!
//! Pure: a function from the snapshot to the text `nft -f -` reads, so every rule is
//! unit-tested without a kernel.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::services::{Endpoint, Port, ServiceInfo, Snapshot};

/// The mark bit of packets to masquerade (kube-proxy's).
const MASQ_MARK: &str = "0x4000";

/// What the rules depend on besides the Services.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The nftables table (family `ip`).
    pub table: String,
    /// This node's name (endpoints of `externalTrafficPolicy: Local` services).
    pub node_name: String,
    /// The addresses NodePorts are served on (kube-proxy's `--nodeport-addresses
    /// primary`, its default in nftables mode: the node's IPs).
    pub node_ips: Vec<Ipv4Addr>,
    /// kube-proxy's `--cluster-cidr`: traffic to a cluster IP from outside it is
    /// masqueraded (so replies come back through this node).
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
}

/// One transaction's worth of nftables text, and the chains and sets it defines (the
/// next transaction deletes those it no longer has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub script: String,
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// The chains every ruleset has, with their hooks.
const BASE_CHAINS: &[(&str, &str)] = &[
    (
        "nat-prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "nat-output",
        "type nat hook output priority -100; policy accept;",
    ),
    (
        "nat-postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    // Before DNAT would change the destination (-100), as upstream's.
    (
        "filter-input",
        "type filter hook input priority -110; policy accept;",
    ),
    (
        "filter-forward",
        "type filter hook forward priority -110; policy accept;",
    ),
    (
        "filter-output",
        "type filter hook output priority -110; policy accept;",
    ),
    // After DNAT (-100): what still goes to a cluster IP matched no service port.
    (
        "filter-output-post-dnat",
        "type filter hook output priority -90; policy accept;",
    ),
    ("services", ""),
    ("no-endpoints", ""),
    ("cluster-ips-check", ""),
    ("mark-for-masquerade", ""),
    ("reject-chain", ""),
];

/// `ns/name/proto/port`: names chains after the service port, readable in
/// `nft list table` as upstream's are.
fn port_id(svc: &ServiceInfo, p: &Port) -> String {
    let port = if p.name.is_empty() {
        format!("p{}", p.port)
    } else {
        p.name.clone()
    };
    format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        p.protocol.lower(),
        port
    )
}

/// The ClientIP affinity set of an endpoint. The timeout is part of the name: a set's
/// timeout cannot be changed by declaring it again, so a new timeout is a new set.
fn affinity_set(endpoint: &str, timeout: u32) -> String {
    format!("affinity-{endpoint}/{timeout}s")
}

/// The endpoint's port for the service port, matched by name and protocol.
fn endpoint_port(e: &Endpoint, p: &Port) -> Option<u16> {
    e.ports.get(&(p.name.clone(), p.protocol)).copied()
}

struct Builder<'a> {
    settings: &'a Settings,
    chains: BTreeSet<String>,
    sets: Vec<(String, u32)>,
    rules: String,
    /// `daddr . proto . port : verdict` entries of the services map.
    services: Vec<String>,
    /// The same for service ports without endpoints.
    rejects: Vec<String>,
}

impl Builder<'_> {
    fn rule(&mut self, chain: &str, rule: &str) {
        let _ = writeln!(
            self.rules,
            "add rule ip {} {chain} {rule}",
            self.settings.table
        );
    }

    fn chain(&mut self, name: String) -> String {
        self.chains.insert(name.clone());
        name
    }

    /// The chains of one endpoint; returns its chain's name.
    fn endpoint(&mut self, id: &str, svc: &ServiceInfo, p: &Port, e: &Endpoint, to: u16) -> String {
        let ep = format!("{id}__{}/{to}", e.ip);
        let chain = self.chain(format!("endpoint-{ep}"));
        // Hairpin: a pod reaching itself through its service must not see its own
        // address as the source, or it would answer itself directly.
        self.rule(
            &chain,
            &format!("ip saddr {} jump mark-for-masquerade", e.ip),
        );
        if let Some(timeout) = svc.affinity_timeout {
            let set = affinity_set(&ep, timeout);
            if !self.sets.iter().any(|(s, _)| *s == set) {
                self.sets.push((set.clone(), timeout));
            }
            self.rule(&chain, &format!("update @{set} {{ ip saddr }}"));
        }
        self.rule(
            &chain,
            &format!("meta l4proto {} dnat to {}:{to}", p.protocol.lower(), e.ip),
        );
        chain
    }

    /// The load-balancing rules over `endpoints` in `chain`.
    fn balance(&mut self, chain: &str, targets: &[(String, Option<String>)]) {
        for (ep_chain, set) in targets {
            if let Some(set) = set {
                self.rule(chain, &format!("ip saddr @{set} goto {ep_chain}"));
            }
        }
        let map: Vec<String> = targets
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{i} : goto {c}"))
            .collect();
        self.rule(
            chain,
            &format!(
                "numgen random mod {} vmap {{ {} }}",
                targets.len(),
                map.join(", ")
            ),
        );
    }

    fn service(&mut self, svc: &ServiceInfo) {
        let Some(cluster_ip) = svc.cluster_ip else {
            return;
        };
        if svc.kind == "ExternalName" {
            return;
        }
        for p in &svc.ports {
            let id = port_id(svc, p);
            let proto = p.protocol.lower();
            let ready: Vec<(&Endpoint, u16)> = svc
                .ready()
                .filter_map(|e| Some((e, endpoint_port(e, p)?)))
                .collect();
            let mut node_ports: Vec<String> = match p.node_port {
                Some(np) => self
                    .settings
                    .node_ips
                    .iter()
                    .map(|ip| format!("{ip} . {proto} . {np}"))
                    .collect(),
                None => Vec::new(),
            };
            // Load-balancer addresses are external traffic like node ports (upstream's
            // `external-` chain serves both), on the Service's own port.
            node_ports.extend(
                svc.load_balancer_ips
                    .iter()
                    .map(|ip| format!("{ip} . {proto} . {}", p.port)),
            );
            if ready.is_empty() {
                self.rejects.push(format!(
                    "{cluster_ip} . {proto} . {} : goto reject-chain",
                    p.port
                ));
                for k in &node_ports {
                    self.rejects.push(format!("{k} : goto reject-chain"));
                }
                continue;
            }
            let mut targets = Vec::new();
            let mut local = Vec::new();
            for (e, to) in &ready {
                let c = self.endpoint(&id, svc, p, e, *to);
                let set = svc
                    .affinity_timeout
                    .map(|t| affinity_set(&format!("{id}__{}/{to}", e.ip), t));
                if e.node_name.as_deref() == Some(self.settings.node_name.as_str()) {
                    local.push((c.clone(), set.clone()));
                }
                targets.push((c, set));
            }
            let chain = self.chain(format!("service-{id}"));
            if let Some((net, bits)) = self.settings.cluster_cidr {
                self.rule(
                    &chain,
                    &format!(
                        "ip daddr {cluster_ip} ip saddr != {net}/{bits} jump mark-for-masquerade"
                    ),
                );
            }
            self.balance(&chain, &targets);
            self.services.push(format!(
                "{cluster_ip} . {proto} . {} : goto {chain}",
                p.port
            ));
            if node_ports.is_empty() {
                continue;
            }
            let ext = self.chain(format!("external-{id}"));
            if svc.external_local {
                // The client's address is kept: only this node's endpoints serve, and
                // only the node's own traffic is masqueraded (it has no other way back).
                if local.is_empty() {
                    for k in &node_ports {
                        self.rejects.push(format!("{k} : goto reject-chain"));
                    }
                    continue;
                }
                self.rule(&ext, "fib saddr type local jump mark-for-masquerade");
                self.balance(&ext, &local);
            } else {
                // Cluster policy: the endpoint may be on another node, whose reply must
                // come back through this one.
                self.rule(&ext, "jump mark-for-masquerade");
                self.rule(&ext, &format!("goto {chain}"));
            }
            for k in node_ports {
                self.services.push(format!("{k} : goto {ext}"));
            }
        }
    }
}

/// The transaction that makes the table what `snap` calls for, given what the previous
/// one defined (`previous`; empty on the first sync, after the table was deleted).
pub fn build(settings: &Settings, snap: &Snapshot, previous: &Ruleset) -> Ruleset {
    let mut b = Builder {
        settings,
        chains: BTreeSet::new(),
        sets: Vec::new(),
        rules: String::new(),
        services: Vec::new(),
        rejects: Vec::new(),
    };
    for svc in snap.services.values() {
        b.service(svc);
    }
    let t = &settings.table;
    let mut s = String::new();
    // Declarations first ("add" semantics: existing chains and sets stay, so the
    // affinity sets keep their clients across syncs).
    let _ = writeln!(s, "table ip {t} {{");
    for (name, hook) in BASE_CHAINS {
        let _ = writeln!(s, "\tchain {name} {{ {hook} }}");
    }
    for c in &b.chains {
        let _ = writeln!(s, "\tchain {c} {{ }}");
    }
    for (set, timeout) in &b.sets {
        let _ = writeln!(
            s,
            "\tset {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
        );
    }
    let _ = writeln!(s, "}}");
    let chains: BTreeSet<String> = BASE_CHAINS
        .iter()
        .map(|(c, _)| c.to_string())
        .chain(b.chains.iter().cloned())
        .collect();
    // Every chain is emptied before anything is deleted, so no rule still refers to
    // a chain or set being deleted.
    for c in chains.union(&previous.chains) {
        let _ = writeln!(s, "flush chain ip {t} {c}");
    }
    for c in previous.chains.difference(&chains) {
        let _ = writeln!(s, "delete chain ip {t} {c}");
    }
    let sets: BTreeSet<String> = b.sets.iter().map(|(n, _)| n.clone()).collect();
    for set in previous.sets.difference(&sets) {
        let _ = writeln!(s, "delete set ip {t} {set}");
    }
    let rules = std::mem::take(&mut b.rules);
    let _ = writeln!(s, "add rule ip {t} nat-prerouting jump services");
    let _ = writeln!(s, "add rule ip {t} nat-output jump services");
    let _ = writeln!(
        s,
        "add rule ip {t} nat-postrouting meta mark & {MASQ_MARK} == 0 return"
    );
    let _ = writeln!(
        s,
        "add rule ip {t} nat-postrouting meta mark set meta mark xor {MASQ_MARK}"
    );
    let _ = writeln!(s, "add rule ip {t} nat-postrouting masquerade fully-random");
    let _ = writeln!(
        s,
        "add rule ip {t} mark-for-masquerade meta mark set meta mark or {MASQ_MARK}"
    );
    for c in ["filter-input", "filter-forward", "filter-output"] {
        let _ = writeln!(s, "add rule ip {t} {c} ct state new jump no-endpoints");
    }
    // Traffic to a cluster IP on a port no Service has is refused here rather than
    // sent down the default route (upstream's cluster-ips-check). In forward the
    // packet has been through DNAT already; locally sent ones are checked after it.
    for c in ["filter-forward", "filter-output-post-dnat"] {
        let _ = writeln!(s, "add rule ip {t} {c} ct state new jump cluster-ips-check");
    }
    let _ = writeln!(s, "add rule ip {t} reject-chain reject");
    let cluster_ips: BTreeSet<String> = snap
        .services
        .values()
        .filter(|svc| svc.kind != "ExternalName")
        .filter_map(|svc| svc.cluster_ip)
        .map(|ip| ip.to_string())
        .collect();
    if !cluster_ips.is_empty() {
        let _ = writeln!(
            s,
            "add rule ip {t} cluster-ips-check ip daddr {{ {} }} reject",
            cluster_ips.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if !b.services.is_empty() {
        let _ = writeln!(
            s,
            "add rule ip {t} services ip daddr . meta l4proto . th dport vmap {{ {} }}",
            b.services.join(", ")
        );
    }
    if !b.rejects.is_empty() {
        let _ = writeln!(
            s,
            "add rule ip {t} no-endpoints ip daddr . meta l4proto . th dport vmap {{ {} }}",
            b.rejects.join(", ")
        );
    }
    s.push_str(&rules);
    Ruleset {
        script: s,
        chains,
        sets,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::services::Protocol;

    fn settings() -> Settings {
        Settings {
            table: "capstan".into(),
            node_name: "n1".into(),
            node_ips: vec![Ipv4Addr::new(192, 0, 2, 2)],
            cluster_cidr: Some((Ipv4Addr::new(10, 88, 0, 0), 16)),
        }
    }

    fn ep(ip: [u8; 4], ready: bool, node: &str) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            ready,
            hostname: None,
            node_name: Some(node.into()),
            ports: BTreeMap::from([(("http".to_string(), Protocol::Tcp), 8080)]),
        }
    }

    fn svc(name: &str, endpoints: Vec<Endpoint>) -> ServiceInfo {
        ServiceInfo {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 20)),
            headless: false,
            kind: "ClusterIP".into(),
            external_name: None,
            ports: vec![Port {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            load_balancer_ips: Vec::new(),
            endpoints,
        }
    }

    fn snap(svcs: Vec<ServiceInfo>) -> Snapshot {
        Snapshot {
            services: svcs
                .into_iter()
                .map(|s| ((s.namespace.clone(), s.name.clone()), s))
                .collect(),
            synced: true,
        }
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints_only() {
        let s = snap(vec![svc(
            "web",
            vec![
                ep([10, 88, 0, 5], true, "n1"),
                ep([10, 88, 0, 6], false, "n1"),
                ep([10, 88, 0, 7], true, "n2"),
            ],
        )]);
        let r = build(&settings(), &s, &Ruleset::default());
        let t = &r.script;
        assert!(t.contains(
            "services ip daddr . meta l4proto . th dport vmap { 10.96.0.20 . tcp . 80 : goto service-default/web/tcp/http }"
        ), "{t}");
        assert!(t.contains("numgen random mod 2 vmap { 0 : goto endpoint-default/web/tcp/http__10.88.0.5/8080, 1 : goto endpoint-default/web/tcp/http__10.88.0.7/8080 }"), "{t}");
        assert!(t.contains("add rule ip capstan endpoint-default/web/tcp/http__10.88.0.5/8080 ip saddr 10.88.0.5 jump mark-for-masquerade"), "{t}");
        assert!(t.contains("meta l4proto tcp dnat to 10.88.0.5:8080"), "{t}");
        assert!(!t.contains("10.88.0.6"), "{t}");
        assert!(
            t.contains("ip daddr 10.96.0.20 ip saddr != 10.88.0.0/16 jump mark-for-masquerade"),
            "{t}"
        );
        assert!(!t.contains("no-endpoints ip daddr"), "{t}");
        // Other ports of the cluster IP are refused after DNAT, not routed away.
        assert!(
            t.contains("add rule ip capstan cluster-ips-check ip daddr { 10.96.0.20 } reject"),
            "{t}"
        );
        assert!(
            t.contains(
                "add rule ip capstan filter-output-post-dnat ct state new jump cluster-ips-check"
            ),
            "{t}"
        );
        assert!(
            t.contains("add rule ip capstan filter-forward ct state new jump cluster-ips-check"),
            "{t}"
        );
    }

    #[test]
    fn a_service_without_ready_endpoints_is_rejected_on_every_address() {
        let mut s = svc("down", vec![ep([10, 88, 0, 6], false, "n1")]);
        s.kind = "NodePort".into();
        s.ports[0].node_port = Some(30080);
        let r = build(&settings(), &snap(vec![s]), &Ruleset::default());
        assert!(r.script.contains("no-endpoints ip daddr . meta l4proto . th dport vmap { 10.96.0.20 . tcp . 80 : goto reject-chain, 192.0.2.2 . tcp . 30080 : goto reject-chain }"), "{}", r.script);
        assert!(!r.script.contains("service-default"), "{}", r.script);
    }

    #[test]
    fn node_ports_masquerade_and_go_to_the_service_chain() {
        let mut s = svc("np", vec![ep([10, 88, 0, 5], true, "n2")]);
        s.kind = "NodePort".into();
        s.ports[0].node_port = Some(30080);
        let r = build(&settings(), &snap(vec![s.clone()]), &Ruleset::default());
        let t = &r.script;
        assert!(
            t.contains("192.0.2.2 . tcp . 30080 : goto external-default/np/tcp/http"),
            "{t}"
        );
        assert!(t.contains("add rule ip capstan external-default/np/tcp/http jump mark-for-masquerade\nadd rule ip capstan external-default/np/tcp/http goto service-default/np/tcp/http"), "{t}");
        // Local policy: the only endpoint is on another node, so the node port refuses.
        s.external_local = true;
        let r = build(&settings(), &snap(vec![s]), &Ruleset::default());
        assert!(
            r.script
                .contains("192.0.2.2 . tcp . 30080 : goto reject-chain"),
            "{}",
            r.script
        );
    }

    #[test]
    fn load_balancer_ips_route_like_node_ports_on_the_service_port() {
        let mut s = svc("lb", vec![ep([10, 88, 0, 5], true, "n2")]);
        s.kind = "LoadBalancer".into();
        s.ports[0].node_port = Some(30081);
        s.load_balancer_ips = vec![Ipv4Addr::new(10, 200, 0, 1)];
        let r = build(&settings(), &snap(vec![s.clone()]), &Ruleset::default());
        let t = &r.script;
        assert!(
            t.contains("10.200.0.1 . tcp . 80 : goto external-default/lb/tcp/http"),
            "{t}"
        );
        assert!(
            t.contains("192.0.2.2 . tcp . 30081 : goto external-default/lb/tcp/http"),
            "{t}"
        );
        // No ready endpoint: the address refuses, as the cluster IP does.
        s.endpoints[0].ready = false;
        let r = build(&settings(), &snap(vec![s]), &Ruleset::default());
        assert!(
            r.script
                .contains("10.200.0.1 . tcp . 80 : goto reject-chain"),
            "{}",
            r.script
        );
    }

    #[test]
    fn client_ip_affinity_keeps_a_set_per_endpoint_with_the_timeout() {
        let mut s = svc("sticky", vec![ep([10, 88, 0, 5], true, "n1")]);
        s.affinity_timeout = Some(60);
        let r = build(&settings(), &snap(vec![s]), &Ruleset::default());
        let set = "affinity-default/sticky/tcp/http__10.88.0.5/8080/60s";
        assert!(
            r.script.contains(&format!(
                "set {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 60s; }}"
            )),
            "{}",
            r.script
        );
        assert!(
            r.script.contains(&format!(
                "ip saddr @{set} goto endpoint-default/sticky/tcp/http__10.88.0.5/8080"
            )),
            "{}",
            r.script
        );
        assert!(
            r.script.contains(&format!("update @{set} {{ ip saddr }}")),
            "{}",
            r.script
        );
        assert!(r.sets.contains(set));
    }

    #[test]
    fn chains_and_sets_no_longer_needed_are_deleted_after_every_chain_is_flushed() {
        let mut s = svc("sticky", vec![ep([10, 88, 0, 5], true, "n1")]);
        s.affinity_timeout = Some(60);
        let first = build(&settings(), &snap(vec![s]), &Ruleset::default());
        let second = build(&settings(), &snap(vec![]), &first);
        let t = &second.script;
        let flush = t
            .find("flush chain ip capstan endpoint-default/sticky/tcp/http__10.88.0.5/8080")
            .expect("flushed");
        let delete = t
            .find("delete chain ip capstan endpoint-default/sticky/tcp/http__10.88.0.5/8080")
            .expect("deleted");
        let last_flush = t.rfind("flush chain").expect("flushes");
        assert!(flush < delete && last_flush < delete, "{t}");
        assert!(
            t.contains(
                "delete set ip capstan affinity-default/sticky/tcp/http__10.88.0.5/8080/60s"
            ),
            "{t}"
        );
        assert!(second.sets.is_empty() && !second.chains.iter().any(|c| c.contains("sticky")));
    }
}
