//! The CRI side: a client of containerd's RuntimeService and ImageService over its unix
//! socket, and the translation of a pod into the CRI's sandbox and container configs
//! (labels the kubelet puts on them, log paths, namespaces, `$(VAR)` expansion of
//! command and args, resources as cgroup limits).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use capstan_proto::cri;
use capstan_proto::cri::image_service_client::ImageServiceClient;
use capstan_proto::cri::runtime_service_client::RuntimeServiceClient;
use k8s_openapi::api::core::v1::{Container, Pod};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::NodeError;

pub type Runtime = RuntimeServiceClient<Channel>;
pub type Images = ImageServiceClient<Channel>;

/// Labels the kubelet sets on sandboxes and containers, so a relist maps them back.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Connects to a runtime endpoint (`unix:///run/containerd/containerd.sock`, or a bare
/// path). The connection is lazy, so the runtime may come up after the agent.
pub fn connect(endpoint: &str) -> Result<(Runtime, Images), NodeError> {
    let path = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
    // The URI is a placeholder: the connector below dials the socket.
    let ep = Endpoint::try_from("http://[::1]:0").map_err(|e| NodeError::Runtime {
        endpoint: endpoint.to_string(),
        message: e.to_string(),
    })?;
    let channel = ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let s = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    }));
    Ok((
        RuntimeServiceClient::new(channel.clone()),
        ImageServiceClient::new(channel),
    ))
}

/// How a gRPC error reads in the API, as grpc-go prints it (the kubelet passes runtime
/// errors through verbatim).
pub fn grpc_message(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

fn meta(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let (name, ns, uid) = meta(pod);
    let mut l: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    l.insert(POD_NAME.into(), name);
    l.insert(POD_NAMESPACE.into(), ns);
    l.insert(POD_UID.into(), uid);
    l
}

/// The pod's log directory, `<pod logs dir>/<namespace>_<name>_<uid>` (the pod logs
/// dir is `/var/log/pods` by default).
pub fn log_directory(root: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{ns}_{name}_{uid}"))
}

fn namespaces(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.clone().unwrap_or_default();
    let mode = |host: Option<bool>, otherwise: cri::NamespaceMode| {
        if host == Some(true) {
            cri::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: if spec.share_process_namespace == Some(true) {
            cri::NamespaceMode::Pod as i32
        } else {
            mode(spec.host_pid, cri::NamespaceMode::Container)
        },
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The node's DNS settings: `--cluster-dns`, `--cluster-domain`, and the host's
/// resolv.conf (`--resolv-conf`) for `dnsPolicy: Default`.
#[derive(Clone, Debug, Default)]
pub struct Dns {
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub host_servers: Vec<String>,
    pub host_searches: Vec<String>,
    pub host_options: Vec<String>,
}

impl Dns {
    /// Reads the host's resolver settings from a resolv.conf.
    pub fn with_host_file(mut self, path: &Path) -> Dns {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => self.host_servers.extend(f.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    self.host_searches = f.map(str::to_string).collect()
                }
                Some("options") => self.host_options = f.map(str::to_string).collect(),
                _ => {}
            }
        }
        self
    }

    /// The pod's resolver config by its `dnsPolicy` and `dnsConfig`, as the kubelet
    /// builds it: ClusterFirst points at the cluster DNS with the namespace's search
    /// path and `ndots:5` (falling back to the host's settings when no `--cluster-dns`
    /// is set, or for a host-network pod); Default is the host's; None only what
    /// `dnsConfig` says.
    pub fn for_pod(&self, pod: &Pod) -> cri::DnsConfig {
        let spec = pod.spec.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
        let host_net = spec.host_network == Some(true);
        let cluster = !self.cluster_dns.is_empty()
            && match policy {
                "ClusterFirstWithHostNet" => true,
                "ClusterFirst" => !host_net,
                _ => false,
            };
        let mut c = if cluster {
            let d = &self.cluster_domain;
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            searches.extend(self.host_searches.iter().cloned());
            cri::DnsConfig {
                servers: self.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        } else if policy == "None" {
            cri::DnsConfig::default()
        } else {
            cri::DnsConfig {
                servers: self.host_servers.clone(),
                searches: self.host_searches.clone(),
                options: self.host_options.clone(),
            }
        };
        if let Some(extra) = &spec.dns_config {
            c.servers
                .extend(extra.nameservers.iter().flatten().cloned());
            c.searches.extend(extra.searches.iter().flatten().cloned());
            for o in extra.options.iter().flatten() {
                let opt = match &o.value {
                    Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                    None => o.name.clone().unwrap_or_default(),
                };
                let key = opt.split(':').next().unwrap_or_default().to_string();
                c.options
                    .retain(|x| x.split(':').next().unwrap_or_default() != key);
                c.options.push(opt);
            }
        }
        c
    }
}

/// The sandbox config (the same one is sent with every CreateContainer).
pub fn sandbox_config(pod: &Pod, attempt: u32, logs: &Path, dns: &Dns) -> cri::PodSandboxConfig {
    let (name, ns, uid) = meta(pod);
    let log_directory = log_directory(logs, &ns, &name, &uid)
        .to_string_lossy()
        .into_owned();
    let spec = pod.spec.clone().unwrap_or_default();
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid,
            namespace: ns,
            attempt,
        }),
        // A pod on the host's network keeps the host's name, as the kubelet leaves it
        // unset: it has no UTS namespace of its own to name (runc refuses).
        hostname: if spec.host_network == Some(true) {
            String::new()
        } else {
            spec.hostname.clone().unwrap_or(name)
        },
        log_directory,
        dns_config: Some(dns.for_pod(pod)),
        port_mappings,
        labels: pod_labels(pod),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(pod)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A resource quantity in base units (cores for `cpu` as millicores), or None if it
/// does not parse.
pub fn quantity(q: &str, milli: bool) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    let v = n * mult * if milli { 1000.0 } else { 1.0 };
    Some(v.ceil() as i64)
}

/// Container resources as the kubelet maps them to cgroups: CPU shares from the
/// request, a CFS quota from the limit, the memory limit.
fn resources(c: &Container) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let req = r.requests.unwrap_or_default();
    let lim = r.limits.unwrap_or_default();
    let cpu_req = req
        .get("cpu")
        .or(lim.get("cpu"))
        .and_then(|q| quantity(&q.0, true));
    let cpu_lim = lim.get("cpu").and_then(|q| quantity(&q.0, true));
    let mem_lim = lim.get("memory").and_then(|q| quantity(&q.0, false));
    const PERIOD: i64 = 100_000;
    cri::LinuxContainerResources {
        // Shares: 1024 per core, at least 2 (the kernel's minimum), as the kubelet.
        cpu_shares: cpu_req.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2),
        cpu_period: if cpu_lim.is_some() { PERIOD } else { 0 },
        cpu_quota: cpu_lim.map(|m| (m * PERIOD / 1000).max(1000)).unwrap_or(0),
        memory_limit_in_bytes: mem_lim.unwrap_or(0),
        ..Default::default()
    }
}

/// The container config for attempt `attempt` of container `c`, with the environment
/// [`super::env::resolve`] made (its `command` and `args` are expanded against it).
pub fn container_config(
    pod: &Pod,
    c: &Container,
    image_id: &str,
    attempt: u32,
    env: Vec<(String, String)>,
) -> cri::ContainerConfig {
    let (name, ns, uid) = meta(pod);
    let known: HashMap<String, String> = env.iter().cloned().collect();
    let exp = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|s| super::env::expand(s, &known))
            .collect()
    };
    let labels = HashMap::from([
        (POD_NAME.to_string(), name),
        (POD_NAMESPACE.to_string(), ns),
        (POD_UID.to_string(), uid),
        (CONTAINER_NAME.to_string(), c.name.clone()),
    ]);
    let annotations = HashMap::from([(
        "io.kubernetes.container.restartCount".to_string(),
        attempt.to_string(),
    )]);
    let sc = c.security_context.clone().unwrap_or_default();
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: image_id.to_string(),
            user_specified_image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: exp(&c.command),
        args: exp(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        labels,
        annotations,
        // Relative to the sandbox's log directory: <container>/<restart count>.log.
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(pod)),
                privileged: sc.privileged.unwrap_or(false),
                run_as_user: sc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: sc.run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_first_pods_resolve_through_the_cluster_dns() {
        let dns = Dns {
            cluster_dns: vec!["10.96.0.10".into()],
            cluster_domain: "cluster.local".into(),
            host_servers: vec!["192.0.2.53".into()],
            host_searches: vec!["example.org".into()],
            host_options: vec![],
        };
        let pod = |spec: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "shop"}, "spec": spec,
            }))
            .expect("pod")
        };
        let c = dns.for_pod(&pod(serde_json::json!({"containers": []})));
        assert_eq!(c.servers, ["10.96.0.10"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.org"
            ]
        );
        assert_eq!(c.options, ["ndots:5"]);
        let c = dns.for_pod(&pod(
            serde_json::json!({"containers": [], "hostNetwork": true}),
        ));
        assert_eq!(c.servers, ["192.0.2.53"]);
        let c = dns.for_pod(&pod(serde_json::json!({"containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.1.1.1"], "options": [{"name": "ndots", "value": "2"}]}})));
        assert_eq!(c.servers, ["1.1.1.1"]);
        assert_eq!(c.options, ["ndots:2"]);
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity("100m", true), Some(100));
        assert_eq!(quantity("2", true), Some(2000));
        assert_eq!(quantity("0.5", true), Some(500));
        assert_eq!(quantity("64Mi", false), Some(64 * 1024 * 1024));
        assert_eq!(quantity("1G", false), Some(1_000_000_000));
        assert_eq!(quantity("1X", false), None);
    }
}
