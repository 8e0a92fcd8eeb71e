//! End-to-end tests of `capstan controller-manager`: a real store, a real apiserver and
//! real controller-manager processes, driven by the real `kubectl` (YAML through
//! `apply -f -`) and kube-rs, observing what a user would see.

#[path = "../support/mod.rs"]
mod support;

mod deployment;
mod endpoints;
mod gc;
mod job;
mod leader;
mod namespace;
mod nodelifecycle;
mod replicaset;
mod serviceaccount;
mod servicelb;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use support::{Apiserver, Component, Server};

/// Leader election quick enough for a failover test: lease 3 s, renew deadline 2 s,
/// retry 250 ms.
pub const QUICK_ELECTION: &[&str] = &[
    "--leader-elect-lease-duration",
    "3s",
    "--leader-elect-renew-deadline",
    "2s",
    "--leader-elect-retry-period",
    "250ms",
];

/// The simulated node the tests' pods are bound to (there is no scheduler here).
pub const NODE: &str = "sim-0";

/// A store, an apiserver on it, one controller-manager and one simulated node.
pub struct Stack {
    pub cm: Component,
    pub node: Component,
    pub api: Apiserver,
    pub store: Server,
}

impl Stack {
    pub async fn start() -> Stack {
        let store = Server::start().await;
        let api = Apiserver::start(&store.endpoint).await;
        let pki = api.pki_dir();
        let (key, ca) = (pki.join("sa.key"), pki.join("ca.crt"));
        let mut args = QUICK_ELECTION.to_vec();
        let (key, ca) = (key.display().to_string(), ca.display().to_string());
        args.extend([
            "--service-account-private-key-file",
            &key,
            "--root-ca-file",
            &ca,
        ]);
        let cm = Component::start(&api, "controller-manager", &args);
        let node = Component::start(&api, "node", &["--simulated", "--hostname-override", NODE]);
        Stack {
            cm,
            node,
            api,
            store,
        }
    }

    /// A kube-rs client through the apiserver's admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.api.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kube config");
        kube::Client::try_from(cfg).expect("kube client")
    }

    /// `kubectl apply -f -` of a YAML manifest, asserting success.
    #[track_caller]
    pub fn apply(&self, yaml: &str) {
        self.api
            .kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
            .out();
    }

    /// Creates a namespace for one test.
    pub fn namespace(&self, ns: &str) {
        // `kubectl create namespace` sends protobuf, which the apiserver does not take.
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ));
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // What the controllers did is the first thing a failure needs.
        if std::thread::panicking() {
            let log = self.cm.log();
            let tail: Vec<&str> = log.lines().rev().take(4000).collect();
            eprintln!("controller-manager log (last 400 lines):");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The pods of a namespace matching a label selector, as kube-rs lists them.
pub async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

/// How long a controller has to reach a state on a busy 2-core CI machine.
pub const SETTLE: Duration = Duration::from_secs(60);
