//! What a real node says about itself: capacity read from the machine (CPUs, memory,
//! the root filesystem's size), its address, and node info (kernel, OS image, machine
//! and boot IDs, the container runtime's version from CRI `Version`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};

use serde_json::{json, Value};

use crate::registration::{self, NodeSource};

/// The Node a real kubelet registers.
pub struct Machine {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    pub max_pods: u32,
    pub node_ip: IpAddr,
    /// `<runtime name>://<runtime version>`, e.g. `containerd://1.6.20~ds1`.
    pub runtime_version: String,
    /// The kubelet server's port (`--port`).
    pub kubelet_port: u16,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Total memory in KiB, from /proc/meminfo.
pub fn memory_kib() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Size of the filesystem holding the runtime's data, in KiB (what the kubelet reports
/// as `ephemeral-storage`).
fn disk_kib() -> u64 {
    // `df` rather than statvfs(2): the workspace has no unsafe code.
    std::process::Command::new("df")
        .args(["-k", "--output=size", "/var/lib"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".to_string())
}

/// The address other machines reach this one at: the source address of the default
/// route (found by connecting a UDP socket, which sends nothing), else loopback.
pub fn default_node_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

impl NodeSource for Machine {
    fn node_object(&self, name: &str) -> Value {
        let mut spec = json!({});
        if !self.taints.is_empty() {
            spec["taints"] = json!(self.taints);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": registration::node_labels(name, &self.labels),
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec,
            "status": self.node_status(name),
        })
    }

    fn node_status(&self, name: &str) -> Value {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let facts = registration::Facts {
            cpu: cpus.to_string(),
            memory: format!("{}Ki", memory_kib()),
            ephemeral_storage: format!("{}Ki", disk_kib()),
            max_pods: self.max_pods,
            runtime_version: &self.runtime_version,
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            machine_id: read("/etc/machine-id"),
            system_uuid: read("/sys/class/dmi/id/product_uuid"),
            kubelet_port: self.kubelet_port,
        };
        registration::node_status(name, &self.node_ip.to_string(), facts)
    }
}
