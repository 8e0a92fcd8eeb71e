//! The service load-balancer controller (cloud-controller-manager's `service`
//! controller, named `service-lb-controller` as in kube-controller-manager) for a
//! machine without a cloud: each `type: LoadBalancer` Service gets an address from a
//! configured local pool (`--service-lb-pool`, like MetalLB's address pools and
//! kube-vip's ranges) in `status.loadBalancer.ingress[].ip`; the node agents' service
//! proxy then routes that address like the cluster IP. Nothing is announced (no ARP or
//! BGP): the pool must be routed to the nodes.
//!
//! An address is held by one Service (by uid) at a time. The holdings live in memory
//! only and are rebuilt from the Services' statuses when the controller starts, so a
//! restart (or a new leader) never hands out an address a Service still shows. A
//! Service that is deleted or stops being a LoadBalancer gives its address back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::events::{self, Type};
use crate::Error;

/// The component events are recorded under (upstream's service controller's).
const COMPONENT: &str = "service-controller";
/// How soon a Service left without an address tries again (upstream's first retry
/// delay); an address given back meanwhile is then taken.
const RETRY: Duration = Duration::from_secs(5);

/// The addresses the controller may hand out: IPv4 ranges, inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool(Vec<(u32, u32)>);

impl Pool {
    /// Parses comma-separated CIDRs (`10.200.0.0/24`: every host address, without the
    /// network and broadcast addresses of a prefix shorter than /31) and ranges
    /// (`10.200.0.10-10.200.0.20`, both ends included).
    pub fn parse(s: &str) -> Result<Pool, String> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || {
                format!("invalid address pool entry {item:?}: want a CIDR (10.200.0.0/24) or a range (10.200.0.10-10.200.0.20)")
            };
            let range = if let Some((ip, len)) = item.split_once('/') {
                let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
                let len: u32 = len.parse().map_err(|_| bad())?;
                if len > 32 {
                    return Err(bad());
                }
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let (first, last) = (u32::from(ip) & mask, u32::from(ip) | !mask);
                if len < 31 {
                    (first + 1, last - 1)
                } else {
                    (first, last)
                }
            } else if let Some((a, b)) = item.split_once('-') {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
                if u32::from(a) > u32::from(b) {
                    return Err(bad());
                }
                (u32::from(a), u32::from(b))
            } else {
                let ip: Ipv4Addr = item.parse().map_err(|_| bad())?;
                (u32::from(ip), u32::from(ip))
            };
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("the address pool is empty".into());
        }
        Ok(Pool(ranges))
    }

    fn contains(&self, ip: u32) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&ip))
    }

    fn addresses(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().flat_map(|(a, b)| *a..=*b)
    }
}

/// Who holds each address: the Service's uid and `namespace/name`.
#[derive(Default)]
struct Holdings(BTreeMap<u32, (String, String)>);

/// Services (by uid) already told the pool is full: retried every [`RETRY`], warned
/// once until they get an address (upstream's recorder would fold the repeats into a
/// count, which ours does not do yet).
type Warned = Mutex<std::collections::HashSet<String>>;

struct Ctx {
    client: Client,
    pool: Pool,
    held: Mutex<Holdings>,
    warned: Warned,
    services: Store<Service>,
}

fn is_lb(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        // A class names another implementation; upstream's controller leaves those be.
        && spec.and_then(|s| s.load_balancer_class.as_deref()).is_none()
}

/// The IPv4 addresses a Service's status shows.
fn ingress_ips(svc: &Service) -> Vec<u32> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .collect()
}

fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Runs the controller until the process ends.
pub async fn run(client: Client, pool: Pool) {
    let api = Api::<Service>::all(client.clone());
    // Rebuild who holds what before any Service is looked at: the oldest Service
    // showing an address keeps it.
    let mut held = Holdings::default();
    let existing = loop {
        match api.list(&ListParams::default()).await {
            Ok(l) => break l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing services; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut lbs: Vec<&Service> = existing.iter().filter(|s| is_lb(s)).collect();
    lbs.sort_by_key(|s| s.metadata.creation_timestamp.as_ref().map(|t| t.0));
    for svc in lbs {
        for ip in ingress_ips(svc) {
            if pool.contains(ip) {
                held.0
                    .entry(ip)
                    .or_insert_with(|| (svc.uid().unwrap_or_default(), key(svc)));
            }
        }
    }
    tracing::info!(
        held = held.0.len(),
        "service load balancer addresses recovered"
    );
    let controller = Controller::new(api, watcher::Config::default());
    let services = controller.store();
    let ctx = Arc::new(Ctx {
        client,
        pool,
        held: Mutex::new(held),
        warned: Warned::default(),
        services,
    });
    controller
        .reconcile_all_on(crate::resync())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(svc: Arc<Service>, err: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = svc.namespace().unwrap_or_default(), name = svc.name_any(), error = %err, "load balancer sync failed");
    Action::requeue(RETRY)
}

/// What one reconcile decided, under the holdings' lock (no await inside).
enum Plan {
    /// The status already shows the address held for the Service.
    Done,
    /// Write this address into the status.
    Assign(u32),
    /// No free address.
    Exhausted,
    /// Not (or no longer) a LoadBalancer: clear the addresses the status shows.
    Clear,
    /// Nothing to do.
    Nothing,
}

impl Ctx {
    /// Gives back addresses whose holder is gone from the cache, or no longer a
    /// LoadBalancer with that uid.
    fn prune(&self, held: &mut Holdings) {
        held.0.retain(|_, (uid, key)| {
            let Some((ns, name)) = key.split_once('/') else {
                return false;
            };
            self.services
                .get(&ObjectRef::new(name).within(ns))
                .is_some_and(|s| is_lb(&s) && s.uid().as_deref() == Some(uid.as_str()))
        });
    }

    fn plan(&self, svc: &Service) -> Plan {
        let uid = svc.uid().unwrap_or_default();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut held);
        let mine: Vec<u32> = held
            .0
            .iter()
            .filter(|(_, (u, _))| *u == uid)
            .map(|(ip, _)| *ip)
            .collect();
        if !is_lb(svc) || svc.metadata.deletion_timestamp.is_some() {
            held.0.retain(|_, (u, _)| *u != uid);
            let shown = ingress_ips(svc);
            // Only what this controller gave out is taken back from the status.
            return if shown.iter().any(|ip| self.pool.contains(*ip)) && !is_lb(svc) {
                Plan::Clear
            } else {
                Plan::Nothing
            };
        }
        let shown = ingress_ips(svc);
        if let Some(ip) = mine.first() {
            return if shown == [*ip] {
                Plan::Done
            } else {
                Plan::Assign(*ip)
            };
        }
        // An address the status shows and nobody holds (a status from before a pool
        // change, or one the rebuild gave to an older Service) is kept when free.
        let wanted = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .map(u32::from);
        let candidates: Vec<u32> = match wanted {
            Some(ip) => vec![ip],
            None => shown.into_iter().chain(self.pool.addresses()).collect(),
        };
        for ip in candidates {
            if self.pool.contains(ip) && !held.0.contains_key(&ip) {
                held.0.insert(ip, (uid, key(svc)));
                return Plan::Assign(ip);
            }
        }
        Plan::Exhausted
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    let uid = svc.uid().unwrap_or_default();
    // Pruning judges holders by the cache: never on a partial one.
    let _ = ctx.services.wait_until_ready().await;
    match ctx.plan(&svc) {
        Plan::Done | Plan::Nothing => Ok(Action::await_change()),
        Plan::Assign(ip) => {
            ctx.warned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid);
            let ip = Ipv4Addr::from(ip).to_string();
            events::record(
                &ctx.client,
                COMPONENT,
                svc.as_ref(),
                Type::Normal,
                "EnsuringLoadBalancer",
                "Ensuring load balancer".into(),
            );
            let patch =
                json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                events::record(
                    &ctx.client,
                    COMPONENT,
                    svc.as_ref(),
                    Type::Warning,
                    "SyncLoadBalancerFailed",
                    format!(
                        "Error syncing load balancer: failed to update load balancer status: {e}"
                    ),
                );
                return Err(e.into());
            }
            tracing::info!(namespace = %ns, name = %name, ip = %ip, "load balancer address assigned");
            events::record(
                &ctx.client,
                COMPONENT,
                svc.as_ref(),
                Type::Normal,
                "EnsuredLoadBalancer",
                "Ensured load balancer".into(),
            );
            Ok(Action::await_change())
        }
        Plan::Exhausted => {
            let first = ctx
                .warned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid);
            if !first {
                return Ok(Action::requeue(RETRY));
            }
            events::record(
                &ctx.client,
                COMPONENT,
                svc.as_ref(),
                Type::Warning,
                "SyncLoadBalancerFailed",
                "Error syncing load balancer: failed to ensure load balancer: no available IP address in the service load balancer pool".into(),
            );
            tracing::info!(namespace = %ns, name = %name, "no free load balancer address");
            Ok(Action::requeue(RETRY))
        }
        Plan::Clear => {
            events::record(
                &ctx.client,
                COMPONENT,
                svc.as_ref(),
                Type::Normal,
                "DeletingLoadBalancer",
                "Deleting load balancer".into(),
            );
            let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(namespace = %ns, name = %name, "load balancer address released");
            events::record(
                &ctx.client,
                COMPONENT,
                svc.as_ref(),
                Type::Normal,
                "DeletedLoadBalancer",
                "Deleted load balancer".into(),
            );
            Ok(Action::await_change())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_cidrs_and_ranges() {
        let p = Pool::parse("10.200.0.0/30, 10.201.0.7-10.201.0.8,10.202.0.1").expect("valid");
        let all: Vec<String> = p
            .addresses()
            .map(|a| Ipv4Addr::from(a).to_string())
            .collect();
        assert_eq!(
            all,
            [
                "10.200.0.1",
                "10.200.0.2",
                "10.201.0.7",
                "10.201.0.8",
                "10.202.0.1"
            ]
        );
        assert!(Pool::parse("10.0.0.9-10.0.0.1").is_err());
        assert!(Pool::parse("10.0.0.0/33").is_err());
        assert!(Pool::parse("nope").is_err());
        assert!(Pool::parse("").is_err());
    }
}
