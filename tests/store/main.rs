//! Integration tests of `capstan store`: one test binary, real server processes on free
//! ports, driven by the real `etcdctl` and the `etcd-client` crate. Set
//! `CAPSTAN_TEST_SERVER=etcd` to run the very same tests against the reference etcd.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod client;
mod etcdctl;
mod http;
mod lease;
mod maintenance;
mod watch;
