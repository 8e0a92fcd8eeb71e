//! Integration tests of `capstan apiserver`: a real store (capstan, or the reference etcd
//! with `CAPSTAN_TEST_SERVER=etcd`) and a real apiserver process, driven by the real
//! `kubectl` through the kubeconfig the apiserver wrote.

#[path = "../support/mod.rs"]
mod support;

mod apply;
mod dashboard;
mod kube_rs;
mod kubectl;
mod protobuf;
mod rbac;
mod resources;
mod services;

use support::{Apiserver, Server};

/// A store and an apiserver on it.
pub struct Stack {
    pub api: Apiserver,
    pub store: Server,
}

impl Stack {
    pub async fn start() -> Stack {
        let store = Server::start().await;
        let api = Apiserver::start(&store.endpoint).await;
        Stack { api, store }
    }
}
