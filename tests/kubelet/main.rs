//! Integration tests of the real kubelet (`capstan node` without `--simulated`): a real
//! store, a real apiserver, a private containerd (see `containerd.rs`) and the node
//! agent process, observed through the real `kubectl` as a user would, and through
//! containerd itself (`ctr`, the CRI) for what must be gone.

#[path = "../support/mod.rs"]
mod support;

mod containerd;
mod multinode;
mod network;
mod nodeloss;
mod probes;
mod streams;

use std::collections::HashMap;
use std::time::Duration;

use capstan_proto::cri;
use containerd::{Containerd, BUSYBOX};
use support::{eventually, Apiserver, Component, Server};

/// Fields drop in order: the node agent goes first, containerd (which cleans up what
/// the node left) last.
struct Stack {
    node: Component,
    api: Apiserver,
    _store: Server,
    containerd: Containerd,
}

const NODE: &str = "kn1";
const WAIT: Duration = Duration::from_secs(60);

async fn stack() -> Stack {
    let containerd = Containerd::start().await;
    let store = Server::start().await;
    let api = Apiserver::start(&store.endpoint).await;
    // The kubelet server on loopback and a port of its own: stacks run side by side.
    let kubelet_port = support::free_port().to_string();
    let mut args = containerd.agent_args(NODE);
    args.extend(
        [
            "--node-lease-duration-seconds",
            "4",
            "--cluster-dns",
            "10.96.0.10",
            // Parallel stacks share the machine's nftables; services are the
            // network tests' (network.rs), each with its own table.
            "--disable-kube-proxy",
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
            "--port",
            &kubelet_port,
            // Volumes written from the API again every 2 s, not every minute.
            "--sync-frequency",
            "2s",
        ]
        .map(str::to_string),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Component::start(&api, "node", &args);
    Stack {
        node,
        api,
        _store: store,
        containerd,
    }
}

/// Waits until the stack's node registers Ready (failing if its agent exits).
async fn node_ready(s: &mut Stack) {
    eventually("node Ready", WAIT, || {
        s.node.check_running();
        let out = s.api.kubectl(&["get", "nodes", "--no-headers"]);
        let ok = out.ok && out.stdout.split_whitespace().take(2).eq([NODE, "Ready"]);
        async move { ok.then_some(()) }
    })
    .await;
}

/// `kubectl get <args> -o jsonpath=<path>`, or None when kubectl fails.
fn jsonpath(api: &Apiserver, args: &[&str], path: &str) -> Option<String> {
    let jp = format!("jsonpath={path}");
    let mut all = args.to_vec();
    all.extend(["-o", &jp]);
    let out = api.kubectl(&all);
    out.ok.then(|| out.out().to_string())
}

/// `kubectl get pod <name> --no-headers` as columns (NAME READY STATUS RESTARTS AGE).
fn pod_row(api: &Apiserver, name: &str) -> Vec<String> {
    let out = api.kubectl(&["get", "pod", name, "--no-headers"]);
    if !out.ok {
        return Vec::new();
    }
    // RESTARTS may read `1 (2s ago)`; split on runs of two spaces or more.
    out.stdout
        .trim()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits until `kubectl describe pod <pod>` shows every one of `texts` (its events).
async fn described(api: &Apiserver, pod: &str, texts: &[&str]) {
    eventually(&format!("{pod} described with {texts:?}"), WAIT, || {
        let d = api.kubectl(&["describe", "pod", pod]).stdout;
        let ok = texts.iter().all(|t| d.contains(t));
        async move { ok.then_some(()) }
    })
    .await;
}

/// Waits until `pod` shows Completed, and returns its container `c`'s log.
async fn completed_log(api: &Apiserver, logs_dir: &std::path::Path, pod: &str) -> String {
    eventually(&format!("{pod} Completed"), WAIT, || {
        let row = pod_row(api, pod);
        let ok = row.get(2).map(String::as_str) == Some("Completed");
        async move { ok.then_some(()) }
    })
    .await;
    let uid = jsonpath(api, &["get", "pod", pod], "{.metadata.uid}").unwrap_or_default();
    std::fs::read_to_string(logs_dir.join(format!("default_{pod}_{uid}/c/0.log")))
        .unwrap_or_default()
}

/// Waits until `pod`'s first container waits in CreateContainerConfigError with
/// `message`, as `kubectl get` and the pod's status show it.
async fn config_error(node: &mut Component, api: &Apiserver, pod: &str, message: &str) {
    eventually(message, WAIT, || {
        node.check_running();
        let row = pod_row(api, pod);
        let got = jsonpath(
            api,
            &["get", "pod", pod],
            "{.status.containerStatuses[0].state.waiting.message}",
        );
        let ok = row.get(2).map(String::as_str) == Some("CreateContainerConfigError")
            && got.as_deref() == Some(message);
        async move { ok.then_some(()) }
    })
    .await;
}

fn pod_yaml(name: &str, policy: &str, command: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {NODE}
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, '{command}']
---
"#
    )
}

/// Sandboxes and containers the runtime holds for a pod uid, over the CRI.
async fn runtime_objects(c: &Containerd, uid: &str) -> (usize, usize) {
    let mut rt = c.runtime();
    let sel = HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())]);
    let sandboxes = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: sel.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .len();
    let containers = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: sel,
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len();
    (sandboxes, containers)
}

#[tokio::test]
async fn a_real_node_runs_pods_in_containerd() {
    let mut s = stack().await;
    // The node registers Ready, with the machine's facts and the runtime's version.
    node_ready(&mut s).await;
    let api = &s.api;
    let runtime = jsonpath(
        api,
        &["get", "node", NODE],
        "{.status.nodeInfo.containerRuntimeVersion}",
    );
    assert!(
        runtime
            .as_deref()
            .is_some_and(|r| r.starts_with("containerd://")),
        "{runtime:?}"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        jsonpath(api, &["get", "node", NODE], "{.status.capacity.cpu}"),
        Some(cpus.to_string())
    );
    assert_eq!(
        jsonpath(api, &["get", "node", NODE], "{.status.allocatable.pods}"),
        Some("110".to_string())
    );
    assert!(
        api.kubectl(&["get", "lease", "-n", "kube-node-lease", NODE])
            .ok
    );

    // Five pods at once: a server, one that succeeds, one that fails, one that keeps
    // crashing, and one whose image is nowhere.
    let mut manifest = String::new();
    manifest += &format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: prepare
    image: {BUSYBOX}
    command: [sh, -c, 'echo init done']
  containers:
  - name: c
    image: {BUSYBOX}
    env:
    - {{name: GREETING, value: hi}}
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: MESSAGE, value: '$(GREETING) from $(POD_NAME)'}}
    command: [sh, -c]
    args: ['echo $MESSAGE; mkdir /www; echo hello > /www/index.html; exec httpd -f -p 8080 -h /www']
---
"#
    );
    manifest += &pod_yaml("done", "Never", "exit 0");
    manifest += &pod_yaml("fail", "Never", "echo failing; exit 3");
    manifest += &pod_yaml("crash", "Always", "exit 1");
    manifest += &format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: noimage}}
spec:
  nodeName: {NODE}
  containers:
  - {{name: c, image: "nothere.invalid/x:1"}}
"#
    );
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    out.out();

    // web: Running and 1/1 ready, with an IP on the pod network that serves HTTP.
    eventually("web Running 1/1", WAIT, || {
        s.node.check_running();
        let row = pod_row(api, "web");
        let ok = row.get(1).map(String::as_str) == Some("1/1")
            && row.get(2).map(String::as_str) == Some("Running");
        async move { ok.then_some(()) }
    })
    .await;
    let ip = jsonpath(api, &["get", "pod", "web"], "{.status.podIP}").unwrap_or_default();
    assert!(
        ip.starts_with(&s.containerd.subnet_prefix),
        "pod IP {ip} is not on the CNI bridge's subnet {}0/24",
        s.containerd.subnet_prefix
    );
    let body = eventually("web answers HTTP", WAIT, || {
        let r = support::http_get(&format!("{ip}:8080"), "/");
        async move { r.filter(|(code, _)| *code == 200).map(|(_, b)| b) }
    })
    .await;
    assert_eq!(body.trim(), "hello");
    let status: serde_json::Value =
        api.kubectl(&["get", "pod", "web", "-o", "json"]).json()["status"].clone();
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["qosClass"], "BestEffort");
    assert!(status["hostIP"].is_string() && status["startTime"].is_string());
    assert_eq!(
        status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    for cond in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        let c = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == cond))
            .cloned()
            .unwrap_or_default();
        assert_eq!(c["status"], "True", "{cond}: {status}");
    }
    // The container's output, with env expanded, is in its CRI log file.
    let uid = jsonpath(api, &["get", "pod", "web"], "{.metadata.uid}").unwrap_or_default();
    let log_file = s
        .containerd
        .pod_logs_dir
        .join(format!("default_web_{uid}/c/0.log"));
    let log = eventually("web's log", WAIT, || {
        let l = std::fs::read_to_string(&log_file).ok();
        async move { l.filter(|l| l.contains("hi from web")) }
    })
    .await;
    assert!(log.contains(" stdout F hi from web"), "{log}");

    // A restarted agent finds its pods in the runtime: web keeps its one sandbox and
    // its container, not restarted.
    let container_id = jsonpath(
        api,
        &["get", "pod", "web"],
        "{.status.containerStatuses[0].containerID}",
    );
    s.node.restart();
    // A pod created now runs only once the new agent syncs, and every sync covers
    // every pod: by then web has been looked at too.
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&pod_yaml("after", "Never", "sleep 3600")),
    )
    .out();
    eventually("after Running", WAIT, || {
        let row = pod_row(api, "after");
        let ok = row.get(2).map(String::as_str) == Some("Running");
        async move { ok.then_some(()) }
    })
    .await;
    assert_eq!(
        jsonpath(
            api,
            &["get", "pod", "web"],
            "{.status.containerStatuses[0].containerID}"
        ),
        container_id
    );
    assert_eq!(pod_row(api, "web").get(3).map(String::as_str), Some("0"));
    assert_eq!(runtime_objects(&s.containerd, &uid).await, (1, 2));

    // The sandbox dies (its pause process killed): the pod gets a new one and its
    // container is restarted in it, serving again.
    let mut rt = s.containerd.runtime();
    let sandbox = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.clone())]),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .remove(0);
    s.containerd
        .ctr(&["tasks", "kill", "-s", "SIGKILL", &sandbox.id]);
    eventually("web restarted in a new sandbox", WAIT, || {
        s.node.check_running();
        let row = pod_row(api, "web");
        let ok = row.get(1).map(String::as_str) == Some("1/1")
            && row.get(3).and_then(|r| r.split_whitespace().next()) == Some("1");
        async move { ok.then_some(()) }
    })
    .await;
    let ip = jsonpath(api, &["get", "pod", "web"], "{.status.podIP}").unwrap_or_default();
    eventually("web answers HTTP again", WAIT, || {
        let r = support::http_get(&format!("{ip}:8080"), "/");
        async move { r.filter(|(code, _)| *code == 200).map(|_| ()) }
    })
    .await;

    // done: Completed and Succeeded; fail: Error and Failed with its exit code.
    for (name, status, phase) in [
        ("done", "Completed", "Succeeded"),
        ("fail", "Error", "Failed"),
    ] {
        eventually(&format!("{name} {status}"), WAIT, || {
            let row = pod_row(api, name);
            let p = jsonpath(api, &["get", "pod", name], "{.status.phase}");
            let ok = row.get(2).map(String::as_str) == Some(status) && p.as_deref() == Some(phase);
            async move { ok.then_some(()) }
        })
        .await;
    }
    assert_eq!(
        jsonpath(
            api,
            &["get", "pod", "fail"],
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        Some("3".to_string())
    );

    // crash: restarted, then held back in CrashLoopBackOff.
    eventually("crash in CrashLoopBackOff", WAIT, || {
        s.node.check_running();
        let row = pod_row(api, "crash");
        let restarts = row
            .get(3)
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(0);
        let ok = row.get(2).map(String::as_str) == Some("CrashLoopBackOff") && restarts >= 1;
        async move { ok.then_some(()) }
    })
    .await;
    let waiting = jsonpath(
        api,
        &["get", "pod", "crash"],
        "{.status.containerStatuses[0].state.waiting.message}",
    )
    .unwrap_or_default();
    assert!(
        waiting.starts_with("back-off 10s restarting failed container=c pod=crash_default("),
        "{waiting}"
    );
    assert_eq!(
        jsonpath(api, &["get", "pod", "crash"], "{.status.phase}"),
        Some("Running".to_string())
    );
    // What happened is in the pod's events, as `kubectl describe` shows them.
    let described = api.kubectl(&["describe", "pod", "crash"]);
    let described = described.out();
    for line in [
        "Container image \"capstan.local/busybox:1\" already present on machine",
        "Created container: c",
        "Started container c",
        "Back-off restarting failed container c in pod crash_default(",
    ] {
        assert!(described.contains(line), "no {line:?} in:\n{described}");
    }

    // noimage: the pull fails (no registry is reachable) and backs off; Pending.
    eventually("noimage ErrImagePull or ImagePullBackOff", WAIT, || {
        let row = pod_row(api, "noimage");
        let ok = matches!(
            row.get(2).map(String::as_str),
            Some("ErrImagePull" | "ImagePullBackOff")
        );
        async move { ok.then_some(()) }
    })
    .await;
    assert_eq!(
        jsonpath(api, &["get", "pod", "noimage"], "{.status.phase}"),
        Some("Pending".to_string())
    );

    // kubectl delete returns once the kubelet has stopped the pod and deleted it for
    // good; by then containerd holds nothing of it.
    let out = api.kubectl(&["delete", "pod", "web", "--timeout=60s"]);
    out.out();
    assert_eq!(runtime_objects(&s.containerd, &uid).await, (0, 0));
    assert!(
        !s.containerd
            .pod_logs_dir
            .join(format!("default_web_{uid}"))
            .exists(),
        "the pod's log directory is removed with it"
    );
    let out = api.kubectl(&["delete", "pods", "--all", "--timeout=60s"]);
    out.out();
    assert_eq!(
        api.kubectl(&["get", "pods", "--no-headers"]).out().trim(),
        ""
    );
    assert_eq!(s.containerd.ctr_containers(), Vec::<String>::new());
    let mut rt = s.containerd.runtime();
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(left.is_empty(), "sandboxes left: {left:?}");
}

#[tokio::test]
async fn probes_volumes_limits_env_and_dns_work_in_real_containers() {
    let mut s = stack().await;
    let api = &s.api;
    let manifest = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hello-config, log.level: debug}}
---
apiVersion: v1
kind: Service
metadata: {{name: my-svc}}
spec:
  selector: {{app: nothing}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: envs}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'echo host=$MY_SVC_SERVICE_HOST port=$MY_SVC_SERVICE_PORT_HTTP link=$MY_SVC_PORT; cat /etc/resolv.conf']
---
apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: settings}}}}
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'touch /tmp/healthy; echo ready > /data/state; httpd -p 8080 -h /data; sleep 3; rm /tmp/healthy; sleep 3600']
    volumeMounts: [{{name: data, mountPath: /data}}]
    livenessProbe: {{exec: {{command: [cat, /tmp/healthy]}}, periodSeconds: 1, failureThreshold: 1}}
    readinessProbe: {{httpGet: {{path: /state, port: 8080}}, periodSeconds: 1}}
  - name: reader
    image: {BUSYBOX}
    command: [sh, -c, 'while ! [ -f /shared/state ]; do sleep 0.1; done; cat /shared/state /etc/cfg/greeting; echo; sleep 3600']
    volumeMounts: [{{name: data, mountPath: /shared}}, {{name: cfg, mountPath: /etc/cfg, readOnly: true}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: unready}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "3600"]
    readinessProbe: {{tcpSocket: {{port: 9999}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: limited}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares']
    resources: {{limits: {{cpu: 500m, memory: 64Mi}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{PASSWORD: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: refs}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'echo "greeting=$CFG_greeting pw=$PASSWORD url=$URL mem=$MEM_MI opt=${{OPT-unset}}"; tr "\\0" "\\n" < /proc/1/environ | grep "^CFG_log.level=" || echo no CFG_log.level']
    envFrom: [{{configMapRef: {{name: settings}}, prefix: CFG_}}, {{secretRef: {{name: creds}}}}]
    env:
    - {{name: URL, value: "$(CFG_greeting)@$(MY_SVC_SERVICE_HOST)"}}
    - {{name: OPT, valueFrom: {{configMapKeyRef: {{name: absent, key: k, optional: true}}}}}}
    - {{name: MEM_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    resources: {{limits: {{memory: 32Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: projected, labels: {{app: shop, tier: web}}}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  volumes:
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
      - {{path: mem, resourceFieldRef: {{containerName: c, resource: limits.memory, divisor: 1Mi}}}}
  - name: all
    projected:
      defaultMode: 0400
      sources:
      - configMap: {{name: settings, items: [{{key: greeting, path: cfg/greeting}}]}}
      - secret: {{name: creds}}
      - downwardAPI: {{items: [{{path: ns, fieldRef: {{fieldPath: metadata.namespace}}}}]}}
  containers:
  - name: c
    image: {BUSYBOX}
    resources: {{limits: {{memory: 48Mi}}}}
    volumeMounts: [{{name: info, mountPath: /info}}, {{name: all, mountPath: /all}}]
    command: [sh, -c, 'cat /info/labels; echo; echo "name=$(cat /info/name) mem=$(cat /info/mem) greeting=$(cat /all/cfg/greeting) pw=$(cat /all/PASSWORD) ns=$(cat /all/ns) mode=$(stat -Lc %a /all/PASSWORD)"']
---
apiVersion: v1
kind: Pod
metadata: {{name: follows}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  volumes: [{{name: cfg, configMap: {{name: settings}}}}]
  containers:
  - name: c
    image: {BUSYBOX}
    volumeMounts: [{{name: cfg, mountPath: /cfg}}]
    command: [sh, -c, 'while true; do echo "now $(cat /cfg/greeting)"; sleep 0.5; done']
---
apiVersion: v1
kind: Pod
metadata: {{name: later}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'echo "late=$LATE"']
    env: [{{name: LATE, valueFrom: {{configMapKeyRef: {{name: late-config, key: value}}}}}}]
"#
    );
    api.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
        .out();

    // The readiness probe (HTTP, served from the emptyDir) makes probed 2/2 ready.
    eventually("probed 2/2 Running", WAIT, || {
        s.node.check_running();
        let row = pod_row(api, "probed");
        let ok = row.get(1).map(String::as_str) == Some("2/2")
            && row.get(2).map(String::as_str) == Some("Running");
        async move { ok.then_some(()) }
    })
    .await;
    // The second container sees the first one's file (one emptyDir) and the ConfigMap.
    let uid = jsonpath(api, &["get", "pod", "probed"], "{.metadata.uid}").unwrap_or_default();
    let log_file = s
        .containerd
        .pod_logs_dir
        .join(format!("default_probed_{uid}/reader/0.log"));
    eventually("reader's log", Duration::from_secs(20), || {
        let l = std::fs::read_to_string(&log_file).unwrap_or_default();
        async move {
            (l.contains(" stdout F ready") && l.contains(" stdout F hello-config")).then_some(())
        }
    })
    .await;
    // Three seconds in, the liveness probe fails and the container is restarted.
    eventually(
        "probed's container restarted by its liveness probe",
        WAIT,
        || {
            let n = jsonpath(
                api,
                &["get", "pod", "probed"],
                "{.status.containerStatuses[?(@.name==\"c\")].restartCount}",
            );
            let last = jsonpath(
                api,
                &["get", "pod", "probed"],
                "{.status.containerStatuses[?(@.name==\"c\")].lastState.terminated.exitCode}",
            );
            let ok = n
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 1)
                && last.is_some_and(|l| !l.is_empty() && l != "0");
            async move { ok.then_some(()) }
        },
    )
    .await;

    described(
        api,
        "probed",
        &[
            "Liveness probe failed:",
            "Container c failed liveness probe, will be restarted",
        ],
    )
    .await;

    // A readiness probe that never passes: Running but not ready.
    eventually("unready Running 0/1", WAIT, || {
        let row = pod_row(api, "unready");
        let ready = jsonpath(
            api,
            &["get", "pod", "unready"],
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        );
        let ok = row.get(1).map(String::as_str) == Some("0/1")
            && row.get(2).map(String::as_str) == Some("Running")
            && ready.as_deref() == Some("ContainersNotReady");
        async move { ok.then_some(()) }
    })
    .await;

    described(api, "unready", &["Readiness probe failed: dial tcp "]).await;

    // Resources become the container's cgroup limits: memory, CFS quota, shares.
    let log = completed_log(api, &s.containerd.pod_logs_dir, "limited").await;
    assert_eq!(
        jsonpath(api, &["get", "pod", "limited"], "{.status.qosClass}"),
        Some("Guaranteed".to_string())
    );
    let values: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(values, ["67108864", "50000", "512"], "{log}");

    // Services that existed when the container started are in its environment.
    let log = completed_log(api, &s.containerd.pod_logs_dir, "envs").await;
    let cluster_ip =
        jsonpath(api, &["get", "service", "my-svc"], "{.spec.clusterIP}").unwrap_or_default();
    assert!(!cluster_ip.is_empty());
    assert!(
        log.contains(&format!(
            "stdout F host={cluster_ip} port=80 link=tcp://{cluster_ip}:80"
        )),
        "{log}"
    );
    // Its resolver is the cluster DNS (`--cluster-dns`), searching its namespace.
    for line in [
        "stdout F nameserver 10.96.0.10",
        "stdout F search default.svc.cluster.local svc.cluster.local cluster.local",
        "stdout F options ndots:5",
    ] {
        assert!(log.contains(line), "no {line:?} in {log}");
    }

    // ConfigMaps and Secrets become variables: whole (prefixed) and by key, with
    // `$(VAR)` references to them and to service variables; an optional reference to a
    // missing ConfigMap leaves its variable unset; a resourceFieldRef reads the limit.
    let log = completed_log(api, &s.containerd.pod_logs_dir, "refs").await;
    assert!(
        log.contains(&format!(
            "stdout F greeting=hello-config pw=s3cret url=hello-config@{cluster_ip} mem=32 opt=unset"
        )),
        "{log}"
    );
    // A key that is no C-style name is a variable all the same (1.32's relaxed rule).
    assert!(log.contains("stdout F CFG_log.level=debug"), "{log}");

    // downwardAPI and projected volumes: the pod's own fields, and a ConfigMap key, a
    // Secret and a field in one directory.
    let log = completed_log(api, &s.containerd.pod_logs_dir, "projected").await;
    for line in [
        "stdout F app=\"shop\"",
        "stdout F tier=\"web\"",
        "stdout F name=projected mem=48 greeting=hello-config pw=s3cret ns=default mode=400",
    ] {
        assert!(log.contains(line), "no {line:?} in {log}");
    }

    // A container whose ConfigMap does not exist waits in CreateContainerConfigError,
    // saying why, until the ConfigMap (and then its key) is there.
    config_error(
        &mut s.node,
        api,
        "later",
        "configmap \"late-config\" not found",
    )
    .await;
    described(
        api,
        "later",
        &["Error: configmap \"late-config\" not found"],
    )
    .await;
    api.kubectl(&[
        "create",
        "configmap",
        "late-config",
        "--from-literal=other=x",
    ])
    .out();
    config_error(
        &mut s.node,
        api,
        "later",
        "couldn't find key value in ConfigMap default/late-config",
    )
    .await;
    api.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late-config}\ndata: {value: arrived}\n"),
    )
    .out();
    let log = completed_log(api, &s.containerd.pod_logs_dir, "later").await;
    assert!(log.contains("stdout F late=arrived"), "{log}");

    // A running container sees its ConfigMap volume change, without a restart.
    let fuid = jsonpath(api, &["get", "pod", "follows"], "{.metadata.uid}").unwrap_or_default();
    let follows_log = s
        .containerd
        .pod_logs_dir
        .join(format!("default_follows_{fuid}/c/0.log"));
    eventually("follows reads the ConfigMap", WAIT, || {
        let l = std::fs::read_to_string(&follows_log).unwrap_or_default();
        async move { l.contains("stdout F now hello-config").then_some(()) }
    })
    .await;
    api.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"greeting":"hello-again"}}"#,
    ])
    .out();
    eventually("follows reads the changed ConfigMap", WAIT, || {
        let l = std::fs::read_to_string(&follows_log).unwrap_or_default();
        async move { l.contains("stdout F now hello-again").then_some(()) }
    })
    .await;
    assert_eq!(
        jsonpath(
            api,
            &["get", "pod", "follows"],
            "{.status.containerStatuses[0].restartCount}"
        )
        .as_deref(),
        Some("0")
    );

    api.kubectl(&["delete", "pods", "--all", "--timeout=60s"])
        .out();
    assert_eq!(s.containerd.ctr_containers(), Vec::<String>::new());
    assert_eq!(runtime_objects(&s.containerd, &uid).await, (0, 0));
}
