//! The Endpoints and EndpointSlice controllers: for every Service with a selector, the
//! ready and not-ready addresses of the pods it selects (pods with an IP), with the
//! service's ports resolved against each pod (a named targetPort by the container
//! port's name), written as the Endpoints object of the service's name and one
//! EndpointSlice labelled `kubernetes.io/service-name`, owned by the Service. The
//! Endpoints of a deleted Service are deleted ([`remove_leftovers`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::util;
use crate::Error;

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";

pub struct Ctx {
    pub client: Client,
    pub pods: Store<Pod>,
}

/// Runs both controllers (one reconcile writes both objects) until the process ends.
pub async fn run(client: Client, pods: Store<Pod>, pod_events: crate::Events<Pod>) {
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    // A pod's change can matter to any service of its namespace (its labels may have
    // left a selector), so all of them look again.
    let triggers = crate::stream(pod_events).flat_map(move |pod| {
        let ns = pod.namespace();
        let refs: Vec<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|s| s.namespace() == ns)
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
        futures::stream::iter(refs)
    });
    let leftovers = tokio::spawn(remove_leftovers(client.clone()));
    controller
        .reconcile_on(triggers)
        .reconcile_all_on(crate::resync())
        .run(reconcile, error_policy, Arc::new(Ctx { client, pods }))
        .for_each(|_| futures::future::ready(()))
        .await;
    leftovers.abort();
}

/// Annotation of an Endpoints object used as a leader-election lock (by older
/// controller-managers): it has no Service and is not ours to remove.
const LEADER_RECORD: &str = "control-plane.alpha.kubernetes.io/leader";

/// Deletes the Endpoints of a Service that is deleted, as upstream's endpoints
/// controller does (the EndpointSlice goes with the Service, which owns it). Each time
/// the Service watch (re)lists, Endpoints without a Service are deleted too (upstream's
/// check for leftovers at start), leader-election records aside: deletions a watch
/// missed while reconnecting show up only that way.
async fn remove_leftovers(client: Client) {
    use kube::runtime::watcher::Event;
    // The Services of the list under way.
    let mut listing: std::collections::HashSet<(String, String)> = Default::default();
    let key = |s: &Service| (s.namespace().unwrap_or_default(), s.name_any());
    let mut events = std::pin::pin!(watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default()
    ));
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Apply(_)) => {}
            Ok(Event::Delete(s)) => {
                let (ns, name) = key(&s);
                delete_endpoints(&client, &ns, &name).await;
            }
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(s)) => {
                listing.insert(key(&s));
            }
            Ok(Event::InitDone) => {
                let known = std::mem::take(&mut listing);
                let all = Api::<Endpoints>::all(client.clone())
                    .list(&ListParams::default())
                    .await;
                for ep in all.map(|l| l.items).unwrap_or_default() {
                    let leader = ep.annotations().contains_key(LEADER_RECORD);
                    let (ns, name) = (ep.namespace().unwrap_or_default(), ep.name_any());
                    if leader || known.contains(&(ns.clone(), name.clone())) {
                        continue;
                    }
                    // A Service made since the list above may own these already.
                    let svc = Api::<Service>::namespaced(client.clone(), &ns)
                        .get_opt(&name)
                        .await;
                    if matches!(svc, Ok(None)) {
                        delete_endpoints(&client, &ns, &name).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching services for deleted endpoints");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Deletes `ns/name`'s Endpoints; one already gone is fine.
async fn delete_endpoints(client: &Client, ns: &str, name: &str) {
    let api = Api::<Endpoints>::namespaced(client.clone(), ns);
    match api.delete(name, &Default::default()).await {
        Ok(_) => tracing::info!(
            namespace = ns,
            name,
            "endpoints of a deleted service removed"
        ),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(namespace = ns, name, error = %e, "deleting endpoints"),
    }
}

fn error_policy(svc: Arc<Service>, err: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = svc.namespace().unwrap_or_default(), name = svc.name_any(), error = %err, "endpoints sync failed");
    Action::requeue(Duration::from_secs(1))
}

/// A pod's address with its readiness, and the service's ports resolved for it.
struct Member {
    pod: Arc<Pod>,
    ip: String,
    ready: bool,
    ports: Vec<(Option<String>, i32, String)>,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
        // A service without a selector has its endpoints written by someone else.
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut members: Vec<Member> = Vec::new();
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let labels = pod.labels();
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            continue;
        }
        let st = pod.status.clone().unwrap_or_default();
        let Some(ip) = st.pod_ip.clone().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = match p.target_port.clone().unwrap_or(IntOrString::Int(p.port)) {
                IntOrString::Int(i) => Some(i),
                IntOrString::String(named) => pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(named.as_str()))
                    .map(|cp| cp.container_port)
                    .or_else(|| named.parse().ok()),
            };
            if let Some(port) = port {
                ports.push((p.name.clone(), port, protocol));
            }
        }
        let ready = util::pod_is_ready(&pod);
        members.push(Member {
            pod,
            ip,
            ready,
            ports,
        });
    }
    members.sort_by(|a, b| a.ip.cmp(&b.ip));
    write_endpoints(&ctx, &svc, &members).await?;
    write_slice(&ctx, &svc, &members).await?;
    Ok(Action::await_change())
}

fn target_ref(p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: p.metadata.name.clone(),
        namespace: p.metadata.namespace.clone(),
        uid: p.metadata.uid.clone(),
        ..Default::default()
    }
}

async fn write_endpoints(ctx: &Ctx, svc: &Service, members: &[Member]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    // Pods with the same resolved ports share a subset, as upstream repacks them.
    type PortKey = Vec<(Option<String>, i32, String)>;
    let mut groups: BTreeMap<PortKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for m in members {
        let addr = EndpointAddress {
            ip: m.ip.clone(),
            node_name: m.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(&m.pod)),
            ..Default::default()
        };
        let g = groups.entry(m.ports.clone()).or_default();
        if m.ready {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    let subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .into_iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        ..Default::default()
                    })
                    .collect()
            }),
        })
        .collect();
    let api = Api::<Endpoints>::namespaced(ctx.client.clone(), &ns);
    let want_subsets = (!subsets.is_empty()).then_some(subsets);
    let mut labels = svc.labels().clone();
    labels.insert(
        "endpoints.kubernetes.io/managed-by".into(),
        "endpoint-controller".into(),
    );
    match api.get_opt(&svc.name_any()).await? {
        Some(cur) if cur.subsets == want_subsets => Ok(()),
        Some(mut cur) => {
            cur.subsets = want_subsets;
            api.replace(&svc.name_any(), &PostParams::default(), &cur)
                .await?;
            Ok(())
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(svc.name_any()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets: want_subsets,
            };
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn write_slice(ctx: &Ctx, svc: &Service, members: &[Member]) -> Result<(), Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let ports: Option<Vec<SlicePort>> = members.first().map(|m| {
        m.ports
            .iter()
            .map(|(name, port, protocol)| SlicePort {
                name: name.clone(),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: None,
            })
            .collect()
    });
    let endpoints: Vec<Endpoint> = members
        .iter()
        .map(|m| Endpoint {
            addresses: vec![m.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(m.ready),
                serving: Some(m.ready),
                terminating: Some(false),
            }),
            node_name: m.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(&m.pod)),
            ..Default::default()
        })
        .collect();
    let api = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={MANAGER}"));
    let existing = api.list(&lp).await?.items;
    match existing.into_iter().next() {
        Some(cur) if cur.endpoints == endpoints && cur.ports == ports => Ok(()),
        Some(mut cur) => {
            cur.endpoints = endpoints;
            cur.ports = ports;
            api.replace(&cur.name_any(), &PostParams::default(), &cur)
                .await?;
            Ok(())
        }
        None => {
            let mut labels = BTreeMap::new();
            labels.insert(SERVICE_NAME.to_string(), name.clone());
            labels.insert(MANAGED_BY.to_string(), MANAGER.to_string());
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![util::controller_ref(
                        "v1",
                        "Service",
                        &name,
                        svc.metadata.uid.as_deref().unwrap_or_default(),
                    )]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports,
            };
            api.create(&PostParams::default(), &slice).await?;
            Ok(())
        }
    }
}
