//! kube-rs, the Rust Kubernetes client, as a second real client: typed CRUD with
//! optimistic concurrency, the raw watch API's 410, and a `kube::runtime` watcher that
//! keeps going across an apiserver restart.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use crate::Stack;

async fn client(s: &Stack) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&s.api.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".to_string(), "kube-rs".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

fn api_code(e: &kube::Error) -> Option<(u16, String)> {
    match e {
        kube::Error::Api(ae) => Some((ae.code, ae.reason.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_crud_with_conflicts_and_expired_watches() {
    let s = Stack::start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    let created = api
        .create(&PostParams::default(), &cm("one", "1"))
        .await
        .expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    assert!(created.metadata.uid.is_some());
    let dup = api
        .create(&PostParams::default(), &cm("one", "1"))
        .await
        .expect_err("duplicate");
    assert_eq!(api_code(&dup), Some((409, "AlreadyExists".into())));

    // Replace with the current resourceVersion succeeds; with the old one, 409 Conflict.
    let mut next = created.clone();
    next.data = Some(BTreeMap::from([("v".to_string(), "2".to_string())]));
    let replaced = api
        .replace("one", &PostParams::default(), &next)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    let stale = api
        .replace("one", &PostParams::default(), &next)
        .await
        .expect_err("stale");
    assert_eq!(api_code(&stale), Some((409, "Conflict".into())));

    let patch = serde_json::json!({"data": {"w": "x"}});
    let patched = api
        .patch("one", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("w"))
            .map(String::as_str),
        Some("x")
    );
    let listed = api
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1);
    let missing = api.get("nope").await.expect_err("missing");
    assert_eq!(api_code(&missing), Some((404, "NotFound".into())));

    // A raw watch from a resourceVersion older than the server keeps: one 410 event.
    let mut stream = api
        .watch(&WatchParams::default(), "1")
        .await
        .expect("watch")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 event, got {other:?}"),
    }

    api.delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = api.get("one").await.expect_err("deleted");
    assert_eq!(api_code(&gone), Some((404, "NotFound".into())));
}

/// A `kube::runtime` watcher of `api` in a task, reporting each applied object's name.
fn watch_names(
    api: &Api<ConfigMap>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = api.clone();
    let task = tokio::spawn(async move {
        let mut objects = watcher(watched, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = objects.next().await {
            if let Ok(o) = item {
                let _ = tx.send(o.metadata.name.unwrap_or_default());
            }
        }
    });
    (task, rx)
}

/// Waits (at most 60 s) until the watcher reports an object named `want`.
async fn wait_for(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) {
    wait_for_or(rx, want, String::new).await
}

/// [`wait_for`], with `context` (a log) in the failure message.
async fn wait_for_or(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    want: &str,
    context: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(name)) if name == want => return,
            Ok(Some(_)) => continue,
            _ => panic!("the watcher never saw {want}\n{}", context()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_watcher_survives_an_apiserver_restart() {
    let mut s = Stack::start().await;
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    api.create(&PostParams::default(), &cm("before", "1"))
        .await
        .expect("create");
    let (task, mut rx) = watch_names(&api);
    wait_for(&mut rx, "before").await;

    s.api.restart().await;
    api.create(&PostParams::default(), &cm("after", "1"))
        .await
        .expect("create after restart");
    wait_for(&mut rx, "after").await;
    task.abort();
}

/// The apiserver on a three-member store: its store connections and watches move to the
/// surviving members when the leader dies, so a kube-rs watcher keeps seeing writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_watcher_survives_a_store_leader_kill() {
    let mut cluster = crate::support::Cluster::start(3).await;
    let apiserver = crate::support::Apiserver::start(&cluster.endpoints().join(",")).await;
    let kc = kube::config::Kubeconfig::read_from(&apiserver.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(cfg).expect("client"), "default");
    api.create(&PostParams::default(), &cm("before", "1"))
        .await
        .expect("create");
    let (task, mut rx) = watch_names(&api);
    wait_for(&mut rx, "before").await;

    // Every member dies once in turn (the leader first), so whichever member carries
    // the apiserver's store watch is killed at some point; quorum holds throughout.
    let leader = cluster.leader().await;
    let order: Vec<usize> = (0..3).map(|k| (leader + k) % 3).collect();
    for (round, victim) in order.into_iter().enumerate() {
        cluster.kill9(victim);
        let name = format!("after-{round}");
        // Writes fail while the survivors elect; a client retries, and the write lands
        // once there is a leader.
        crate::support::eventually(&format!("write {name}"), Duration::from_secs(30), || {
            let api = api.clone();
            let obj = cm(&name, "1");
            async move { api.create(&PostParams::default(), &obj).await.ok() }
        })
        .await;
        wait_for_or(&mut rx, &name, || apiserver.log()).await;
        cluster.restart(victim).await;
    }
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        ["before", "after-0", "after-1", "after-2"]
            .iter()
            .all(|n| names.iter().any(|m| m == n)),
        "{names:?}"
    );
    task.abort();
}

/// Services created at the same moment never share a cluster IP or a node port (the
/// allocations are claimed atomically in the store, not picked from a list).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_services_get_distinct_ips_and_node_ports() {
    use k8s_openapi::api::core::v1::Service;
    let s = Stack::start().await;
    let api: Api<Service> = Api::namespaced(client(&s).await, "default");
    let creates = (0..12).map(|i| {
        let api = api.clone();
        async move {
            let svc: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("np{i}")},
                "spec": {"type": "NodePort", "selector": {"app": "x"},
                         "ports": [{"port": 80}, {"port": 443}]},
            }))
            .expect("service");
            api.create(&PostParams::default(), &svc)
                .await
                .expect("create")
        }
    });
    let made = futures::future::join_all(creates).await;
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for svc in &made {
        let spec = svc.spec.as_ref().expect("spec");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        assert!(ips.insert(ip.clone()), "cluster IP {ip} given twice");
        for p in spec.ports.iter().flatten() {
            let port = p.node_port.unwrap_or(0);
            assert!((30000..=32767).contains(&port), "node port {port}");
            assert!(ports.insert(port), "node port {port} given twice");
        }
    }
    // A port or IP freed by a delete can be asked for again.
    let first = &made[0];
    let name = first.metadata.name.clone().unwrap_or_default();
    let spec = first.spec.clone().expect("spec");
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    let again: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "again"},
        "spec": {"type": "NodePort", "clusterIP": spec.cluster_ip,
                 "ports": [{"port": 80, "nodePort": spec.ports.as_ref().and_then(|p| p[0].node_port)}]},
    }))
    .expect("service");
    crate::support::eventually(
        "the freed IP and port reused",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            let again = again.clone();
            async move { api.create(&PostParams::default(), &again).await.ok() }
        },
    )
    .await;
}
