//! capstan's etcd-compatible key-value store: MVCC on RocksDB behind the etcd v3 gRPC
//! API. See ARCHITECTURE.md for the layering; in short, gRPC services (`server`) check
//! and propose, the apply path (`apply`) changes state in log order, and `mvcc`,
//! `lease`, `auth` and `watch` hold that state on an [`engine::Engine`].

pub mod apply;
pub mod auth;
pub mod engine;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod watch;

pub use error::{Result, StoreError};
pub use server::{Config, EtcdServer};
