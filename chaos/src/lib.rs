//! `capstan-chaos`: a chaos and failover suite for etcd-compatible clusters, in the
//! manner of etcd's robustness tests and Jepsen.
//!
//! A run starts a cluster of real member processes (capstan or etcd) whose peer links
//! pass through fault-injecting proxies ([`proxy`], [`cluster`]), drives a recorded
//! client workload at every member while a seeded fault schedule kills, pauses,
//! isolates and slows members ([`schedule`], [`workload`]), then checks what was
//! recorded: linearizability per key ([`linearize`]), the watch guarantees
//! ([`watchcheck`]), revisions per session and every acknowledged write in the history
//! and on every member ([`checks`]), and `HashKV` across members ([`runner`]). A
//! failing run's history is saved as JSON; the seed replays the schedule and workload.

pub mod checks;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod history;
pub mod linearize;
pub mod proxy;
pub mod runner;
pub mod schedule;
pub mod watchcheck;
pub mod workload;

pub use error::{ChaosError, Result};
