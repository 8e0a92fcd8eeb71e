//! The `default/kubernetes` Service and its endpoints, as kube-apiserver keeps them
//! (its `kubernetesservice` controller and the default "lease" endpoint reconciler):
//! every apiserver ensures the Service (cluster IP the first of the service range, port
//! `https` 443 to its secure port) and, every 10 s, rewrites its own key
//! `/registry/masterleases/<ip>` with a 15 s store lease, then makes the Endpoints and
//! the EndpointSlice `kubernetes` list exactly the addresses whose keys are alive. An
//! apiserver that dies stops renewing, its key expires, and the next reconcile of any
//! survivor drops it, so clients of the Service are only sent to live servers. One
//! that stops cleanly deletes its key and drops itself at once (upstream's
//! `RemoveEndpoints` on shutdown), so its clients move on without waiting for the TTL.
//!
//! The writes go through the registry like any client's (validation, defaults,
//! resourceVersions), under the manager `kube-apiserver`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::{FieldValidation, Registry, WriteOptions};
use crate::resources::{self, ResourceType};

/// The Service's cluster IP: the first address of the service range (10.96.0.0/12,
/// which the allocator never hands out itself).
pub const SERVICE_IP: &str = "10.96.0.1";
/// The Service's port, upstream's.
const SERVICE_PORT: i64 = 443;
/// Where each apiserver's liveness key lives, as upstream's
/// `/registry/masterleases/<ip>`.
const LEASES: &str = "/registry/masterleases/";
/// Upstream's `DefaultEndpointReconcilerInterval` and `...TTL`.
const INTERVAL: Duration = Duration::from_secs(10);
const TTL_SECONDS: i64 = 15;
/// The label that keeps the EndpointSlice mirroring controller off these Endpoints.
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// The address other members of the cluster reach this apiserver at, as
/// kube-apiserver picks its `--advertise-address`: the one given (if it is an IP), else
/// the bind address unless unspecified, else the source address of the default route.
pub fn endpoint_ip(advertise: Option<&str>, bind: IpAddr) -> Option<IpAddr> {
    if let Some(ip) = advertise.and_then(|a| a.parse::<IpAddr>().ok()) {
        return Some(ip);
    }
    if !bind.is_unspecified() {
        return Some(bind);
    }
    // Connecting a UDP socket only picks a route; nothing is sent.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

/// Keeps the Service and its endpoints until the process ends: once at once, then every
/// [`INTERVAL`]. `ip` is this apiserver's endpoint address (None: it publishes none,
/// and only maintains the Service); `port` its secure port.
pub async fn run(reg: Arc<Registry>, ip: Option<IpAddr>, port: u16) {
    if ip.is_none() {
        tracing::warn!(
            "no address to advertise; the kubernetes Service gets no endpoint from this apiserver"
        );
    }
    loop {
        if let Err(e) = ensure_service(&reg, port).await {
            tracing::warn!(namespace = "default", name = "kubernetes", error = %e, "ensuring the kubernetes service");
        }
        if let Some(ip) = ip {
            if let Err(e) = reconcile_endpoints(&reg, ip, port).await {
                tracing::warn!(namespace = "default", name = "kubernetes", error = %e, "reconciling the kubernetes endpoints");
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

fn opts() -> WriteOptions {
    WriteOptions::internal("kube-apiserver", FieldValidation::Strict)
}

fn rt(group: &str, plural: &str) -> Result<&'static ResourceType, ApiError> {
    resources::find(group, "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not served")))
}

/// The Service's ports: `https` 443 to the secure port.
fn service_ports(port: u16) -> Value {
    json!([{"name": "https", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": port}])
}

/// Creates the Service if it is missing and resets its ports and type if someone
/// changed them (upstream's `CreateOrUpdateMasterServiceIfNeeded` with reconcile on).
async fn ensure_service(reg: &Registry, port: u16) -> Result<(), ApiError> {
    let svc_rt = rt("", "services")?;
    let ports = service_ports(port);
    match reg.get(svc_rt, Some("default"), "kubernetes").await {
        Ok(mut cur) => {
            let same_ports =
                cur.pointer("/spec/ports").map(comparable_ports) == Some(ports.clone());
            let same_type = cur.pointer("/spec/type").and_then(Value::as_str) == Some("ClusterIP");
            if same_ports && same_type {
                return Ok(());
            }
            tracing::warn!(
                namespace = "default",
                name = "kubernetes",
                "resetting the kubernetes service's ports and type"
            );
            cur["spec"]["ports"] = ports;
            cur["spec"]["type"] = json!("ClusterIP");
            if let Some(o) = cur.as_object_mut() {
                o.remove("status");
            }
            reg.update(svc_rt, Some("default"), "kubernetes", None, &cur, opts())
                .await?;
            Ok(())
        }
        Err(ApiError::NotFound { .. }) => {
            let body = json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": SERVICE_IP,
                    "clusterIPs": [SERVICE_IP],
                    "sessionAffinity": "None",
                    "ports": ports,
                },
            });
            match reg.create(svc_rt, Some("default"), &body, opts()).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Ports as compared: what the reconciler sets, without fields defaulting may add.
fn comparable_ports(ports: &Value) -> Value {
    let mut ports = ports.clone();
    for p in ports.as_array_mut().into_iter().flatten() {
        if let Some(o) = p.as_object_mut() {
            o.retain(|k, _| matches!(k.as_str(), "name" | "protocol" | "port" | "targetPort"));
        }
    }
    ports
}

/// Renews this apiserver's key, then makes the Endpoints and EndpointSlice list every
/// apiserver whose key is alive (upstream's lease reconciler).
async fn reconcile_endpoints(reg: &Registry, ip: IpAddr, port: u16) -> Result<(), ApiError> {
    let record = json!({
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": {"name": ip.to_string()},
        "subsets": [{"addresses": [{"ip": ip.to_string()}]}],
    });
    reg.store
        .put_with_ttl(
            &format!("{LEASES}{ip}"),
            serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?,
            TTL_SECONDS,
        )
        .await?;
    let ips = live_ips(reg).await?;
    // Our own key was just written: an empty list means the store answered wrongly,
    // and erasing every endpoint on that would cut all clients off.
    if ips.is_empty() {
        return Err(ApiError::Internal(
            "no apiserver addresses were listed in the store, refusing to erase all endpoints for the kubernetes service".into(),
        ));
    }
    sync_endpoints(reg, &ips, port).await?;
    sync_slice(reg, &ips, ip.is_ipv6(), port).await
}

/// Deletes this apiserver's key and lists the others' (a stopping apiserver's last
/// reconcile). With no other apiserver alive the endpoints are left as they are:
/// nothing better can be said of them, and the next apiserver rewrites them.
pub async fn remove_endpoint(reg: &Registry, ip: IpAddr, port: u16) -> Result<(), ApiError> {
    reg.store.delete(&format!("{LEASES}{ip}")).await?;
    let ips = live_ips(reg).await?;
    if ips.is_empty() {
        return Ok(());
    }
    sync_endpoints(reg, &ips, port).await?;
    sync_slice(reg, &ips, ip.is_ipv6(), port).await
}

/// The addresses of every apiserver whose key is alive, sorted.
async fn live_ips(reg: &Registry) -> Result<Vec<String>, ApiError> {
    let mut ips: Vec<String> = reg
        .store
        .list(LEASES, None, 0, 0)
        .await?
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter_map(|v| {
            v.pointer("/subsets/0/addresses/0/ip")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}

async fn sync_endpoints(reg: &Registry, ips: &[String], port: u16) -> Result<(), ApiError> {
    let ep_rt = rt("", "endpoints")?;
    let labels = json!({ SKIP_MIRROR: "true" });
    let subsets = json!([{
        "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }]);
    let cur = match reg.get(ep_rt, Some("default"), "kubernetes").await {
        Ok(cur) => Some(cur),
        Err(ApiError::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(cur) = &cur {
        if cur.get("subsets") == Some(&subsets) && cur.pointer("/metadata/labels") == Some(&labels)
        {
            return Ok(());
        }
    }
    let mut body = cur.unwrap_or_else(
        || json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"}}),
    );
    body["metadata"]["labels"] = labels;
    body["subsets"] = subsets;
    tracing::info!(namespace = "default", name = "kubernetes", addresses = ?ips, "resetting the kubernetes endpoints");
    // An update carrying the resourceVersion read: a concurrent writer (another
    // apiserver) makes it fail, and the next round decides again.
    reg.update(ep_rt, Some("default"), "kubernetes", None, &body, opts())
        .await?;
    Ok(())
}

async fn sync_slice(reg: &Registry, ips: &[String], v6: bool, port: u16) -> Result<(), ApiError> {
    let slice_rt = rt("discovery.k8s.io", "endpointslices")?;
    let labels = json!({"kubernetes.io/service-name": "kubernetes"});
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    let endpoints = json!(endpoints);
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let cur = match reg.get(slice_rt, Some("default"), "kubernetes").await {
        Ok(cur) => Some(cur),
        Err(ApiError::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(cur) = &cur {
        if cur.get("endpoints") == Some(&endpoints)
            && cur.get("ports") == Some(&ports)
            && cur.pointer("/metadata/labels") == Some(&labels)
        {
            return Ok(());
        }
    }
    let mut body = cur.unwrap_or_else(|| {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": if v6 { "IPv6" } else { "IPv4" },
        })
    });
    body["metadata"]["labels"] = labels;
    body["endpoints"] = endpoints;
    body["ports"] = ports;
    reg.update(slice_rt, Some("default"), "kubernetes", None, &body, opts())
        .await?;
    Ok(())
}
