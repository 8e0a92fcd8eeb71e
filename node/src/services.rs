//! The node's view of Services and their endpoints, shared by the service proxy
//! ([`crate::proxy`]) and the cluster DNS ([`crate::dns`]).
//!
//! One watch of Services and one of EndpointSlices (kube-rs reflectors, as every
//! component above the apiserver reads the cluster) feed a [`Snapshot`]: per Service
//! its cluster IP, ports and the endpoints of its slices, joined by the
//! `kubernetes.io/service-name` label. A new snapshot is published on a `watch`
//! channel after every change (not per object of an initial list, which would make a
//! relist quadratic), so readers always see one consistent picture and the proxy can
//! tell a change from nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }

    /// The name nftables and SRV records use (`tcp`, `udp`, `sctp`).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The port's name (empty for the single unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// One endpoint (a pod address) of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// `conditions.ready` (unset means ready, as upstream reads it).
    pub ready: bool,
    /// `hostname` (a pod's `spec.hostname` under a headless Service), for DNS.
    pub hostname: Option<String>,
    /// The node the endpoint runs on (`externalTrafficPolicy: Local`).
    pub node_name: Option<String>,
    /// The endpoint's port number per (port name, protocol), from its slice.
    pub ports: BTreeMap<(String, Protocol), u16>,
}

/// A Service as the proxy and DNS need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// The cluster IP; `None` for a headless Service (`clusterIP: None`) and for an
    /// ExternalName one.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.type`.
    pub kind: String,
    /// `spec.externalName` of an ExternalName Service.
    pub external_name: Option<String>,
    pub ports: Vec<Port>,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// A LoadBalancer Service's `status.loadBalancer.ingress[].ip` whose `ipMode` is
    /// VIP (or unset): the proxy routes them as kube-proxy does. Proxy-mode addresses
    /// are left to the load balancer.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// Every endpoint of every slice of the Service, ready or not, in a stable order.
    pub endpoints: Vec<Endpoint>,
}

impl ServiceInfo {
    /// The endpoints traffic may go to: the ready ones.
    pub fn ready(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }
}

/// Every Service by (namespace, name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: BTreeMap<(String, String), ServiceInfo>,
    /// Both initial lists are in: an empty map then means "no Services", not "not
    /// known yet".
    pub synced: bool,
}

impl Snapshot {
    /// Builds the view from the objects the apiserver holds.
    pub fn build(
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        synced: bool,
    ) -> Snapshot {
        let mut by_service: BTreeMap<(String, String), Vec<Endpoint>> = BTreeMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME))
            else {
                continue;
            };
            let mut ports = BTreeMap::new();
            for p in slice.ports.iter().flatten() {
                let Some(n) = p.port.and_then(|n| u16::try_from(n).ok()) else {
                    continue;
                };
                ports.insert(
                    (
                        p.name.clone().unwrap_or_default(),
                        Protocol::parse(p.protocol.as_deref()),
                    ),
                    n,
                );
            }
            let list = by_service.entry((ns, svc.clone())).or_default();
            for e in &slice.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                for a in &e.addresses {
                    let Ok(ip) = a.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    list.push(Endpoint {
                        ip,
                        ready,
                        hostname: e.hostname.clone(),
                        node_name: e.node_name.clone(),
                        ports: ports.clone(),
                    });
                }
            }
        }
        let mut out = BTreeMap::new();
        for s in services {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            let name = s.metadata.name.clone().unwrap_or_default();
            let spec = s.spec.clone().unwrap_or_default();
            let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let cluster_ip = spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .filter(|_| kind != "ExternalName");
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: Protocol::parse(p.protocol.as_deref()),
                        port: u16::try_from(p.port).ok()?,
                        node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                    })
                })
                .collect();
            let affinity_timeout =
                (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                    spec.session_affinity_config
                        .as_ref()
                        .and_then(|c| c.client_ip.as_ref())
                        .and_then(|c| c.timeout_seconds)
                        .and_then(|t| u32::try_from(t).ok())
                        // Upstream's default: three hours.
                        .unwrap_or(10800)
                });
            let load_balancer_ips: Vec<Ipv4Addr> = if kind == "LoadBalancer" {
                s.status
                    .iter()
                    .filter_map(|st| st.load_balancer.as_ref())
                    .filter_map(|lb| lb.ingress.as_ref())
                    .flatten()
                    .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
                    .filter_map(|i| i.ip.as_deref()?.parse().ok())
                    .collect()
            } else {
                Vec::new()
            };
            let mut endpoints = by_service
                .remove(&(ns.clone(), name.clone()))
                .unwrap_or_default();
            endpoints.sort_by_key(|e| e.ip);
            endpoints.dedup_by_key(|e| e.ip);
            out.insert(
                (ns.clone(), name.clone()),
                ServiceInfo {
                    namespace: ns,
                    name,
                    cluster_ip,
                    headless,
                    external_name: spec
                        .external_name
                        .clone()
                        .filter(|_| kind == "ExternalName"),
                    kind,
                    ports,
                    affinity_timeout,
                    external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                    load_balancer_ips,
                    endpoints,
                },
            );
        }
        Snapshot {
            services: out,
            synced,
        }
    }
}

/// Watches Services and EndpointSlices and publishes a [`Snapshot`] after each change.
/// Runs until the receivers are all gone.
pub async fn watch(client: kube::Client, tx: tokio::sync::watch::Sender<Arc<Snapshot>>) {
    let (svc_reader, svc_writer) = kube::runtime::reflector::store::<Service>();
    let (eps_reader, eps_writer) = kube::runtime::reflector::store::<EndpointSlice>();
    let svcs = kube::runtime::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|e| {
        (
            true,
            e.map(|e| matches!(e, Event::InitApply(_) | Event::Init)),
        )
    });
    let slices = kube::runtime::reflector(
        eps_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|e| {
        (
            false,
            e.map(|e| matches!(e, Event::InitApply(_) | Event::Init)),
        )
    });
    let mut events = std::pin::pin!(futures::stream::select(svcs, slices));
    let (mut svc_synced, mut eps_synced) = (false, false);
    while let Some((is_svc, ev)) = events.next().await {
        match ev {
            // Objects of a list in progress: the snapshot is built once it is done.
            Ok(true) => continue,
            Ok(false) => {
                if is_svc {
                    svc_synced = true;
                } else {
                    eps_synced = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, services = is_svc, "service watch failed; retrying");
                continue;
            }
        }
        let snap = Snapshot::build(
            &svc_reader.state(),
            &eps_reader.state(),
            svc_synced && eps_synced,
        );
        tx.send_if_modified(|cur| {
            if **cur == snap {
                false
            } else {
                *cur = Arc::new(snap);
                true
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

/// Starts the watch in a task of its own and returns the channel it publishes on.
pub fn spawn(client: kube::Client) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(watch(client, tx));
    rx
}
