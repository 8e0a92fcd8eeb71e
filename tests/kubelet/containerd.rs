//! A private containerd for one test stack: its own config, root, state, socket, runc
//! root, CNI network (its own bridge, subnet and IPAM dir) and image archive built from
//! Debian's static busybox by `scripts/busybox-image`. Nothing system-wide is used
//! but the installed binaries and CNI plugins. On drop every pod sandbox is stopped and
//! removed over the CRI (so CNI tears the network down), containerd is stopped, any
//! mount left under its dirs is detached and the bridge deleted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_proto::cri;
use capstan_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub type Runtime = RuntimeServiceClient<Channel>;

/// The images the archive holds.
pub const BUSYBOX: &str = "capstan.local/busybox:1";

pub struct Containerd {
    pub socket: PathBuf,
    /// `10.x.y.0/24`: the pod network's subnet.
    pub subnet_prefix: String,
    pub image_archive: PathBuf,
    pub pod_logs_dir: PathBuf,
    /// The kubelet's `--root-dir` (pod volumes).
    pub root_dir: PathBuf,
    bridge: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// A CRI runtime client on a containerd socket.
pub fn connect(socket: &Path) -> Runtime {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::1]:0")
        .expect("endpoint")
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }));
    RuntimeServiceClient::new(channel)
}

/// Pids of the containerd shims started for the containerd at `socket` (their command
/// line names it, and it is unique to one fixture).
fn shims_of(socket: &Path) -> Vec<u32> {
    let want = socket.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.contains("containerd-shim")) && args.contains(&want) {
            out.push(pid);
        }
    }
    out
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// overlayfs cannot stack on overlayfs (a container's /tmp); native works anywhere.
fn snapshotter(dir: &Path) -> &'static str {
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if fs == "overlayfs" {
        "native"
    } else {
        "overlayfs"
    }
}

impl Containerd {
    /// The `capstan node` flags that put an agent on this containerd: the node name,
    /// the runtime socket, the image archive, and the log and root dirs.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        [
            "--hostname-override",
            node,
            "--container-runtime-endpoint",
            &format!("unix://{}", self.socket.display()),
            "--image-archive",
            &self.image_archive.display().to_string(),
            "--pod-logs-dir",
            &self.pod_logs_dir.display().to_string(),
            "--root-dir",
            &self.root_dir.display().to_string(),
        ]
        .map(str::to_string)
        .to_vec()
    }

    pub async fn start() -> Containerd {
        Self::start_in(None).await
    }

    /// A containerd in the network namespace `netns` (of `ip netns add`): its pods' bridge
    /// and routes live there, as on a machine of their own.
    pub async fn start_in(netns: Option<&str>) -> Containerd {
        for tool in ["containerd", "runc", "ctr"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is not installed; run scripts/setup"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // A subnet and bridge of our own, so parallel stacks do not collide.
        let n: u32 = rand::random::<u32>() % 60_000;
        let subnet_prefix = format!("10.{}.{}.", 150 + n / 250 % 100, n % 250);
        let bridge = format!("capt{n}");
        let cni_conf = d.join("cni");
        std::fs::create_dir_all(&cni_conf).expect("cni dir");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "capstan-test",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local",
                          "ranges": [[{"subnet": format!("{subnet_prefix}0/24")}]],
                          // Cluster IPs are reached through the default route (the
                          // node's proxy DNATs them on the way).
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": d.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(cni_conf.join("10-test.conflist"), conflist.to_string())
            .expect("cni config");
        let socket = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{ttrpc}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "capstan.local/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snap}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            socket = socket.display(),
            ttrpc = d.join("ttrpc.sock").display(),
            opt = d.join("opt").display(),
            snap = snapshotter(d),
            runc = d.join("runc").display(),
            cni = cni_conf.display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("containerd config");
        let image_archive = d.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-image");
        let built = Command::new(&script)
            .arg(&image_archive)
            .output()
            .expect("scripts/busybox-image runs");
        assert!(
            built.status.success(),
            "building the busybox image: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let mut cmd = match netns {
            Some(ns) => {
                // nsenter, not `ip netns exec`: that one also remounts /sys, which
                // hides the cgroup hierarchy from runc.
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let mut c = Containerd {
            socket,
            subnet_prefix,
            image_archive,
            pod_logs_dir: d.join("pods"),
            root_dir: d.join("kubelet"),
            bridge,
            child: Some(child),
            dir,
        };
        c.wait_ready().await;
        c
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited with {status}; log:\n{}", self.log());
            }
            if self.socket.exists() {
                let mut rt = connect(&self.socket);
                if rt.version(cri::VersionRequest::default()).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd not ready in 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn runtime(&self) -> Runtime {
        connect(&self.socket)
    }

    /// Runs `ctr -n k8s.io <args>` on this containerd, as an operator would; its
    /// stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr runs");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr containers ls -q`: every container containerd holds, sandboxes included.
    pub fn ctr_containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Stops and removes every sandbox over the CRI (tearing the pod networks down).
    async fn remove_all(socket: PathBuf) {
        let mut rt = connect(&socket);
        let Ok(list) = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
        else {
            return;
        };
        for s in list.into_inner().items {
            let _ = rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: s.id.clone(),
                })
                .await;
            let _ = rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: s.id,
                })
                .await;
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, which cannot be blocked on: the CRI
        // calls get a runtime of their own on another thread.
        let socket = self.socket.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(30), Self::remove_all(socket))
                        .await;
                });
            }
        })
        .join();
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // A container created while the sandboxes were being removed (a node agent's
        // request still in flight) keeps its shim alive after containerd is gone: kill
        // the shims serving our socket, their container processes first.
        for shim in shims_of(&self.socket) {
            for child in children_of(shim) {
                let _ = Command::new("kill")
                    .args(["-KILL", &child.to_string()])
                    .status();
            }
            let _ = Command::new("kill")
                .args(["-KILL", &shim.to_string()])
                .status();
        }
        // Anything still mounted under our dirs (a snapshot, a netns, a shm) would keep
        // the temp dir from being removed.
        let prefix = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}
