//! The etcd v3 API as Rust types: `etcdserverpb` (the KV, Watch, Lease, Cluster,
//! Maintenance and Auth services), `mvccpb` and `authpb`. Generated at build time from
//! the `.proto` files beside this crate; this crate holds no logic.
#![allow(clippy::all, missing_docs)]

/// Keys, values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API services and their messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    // Re-exported because the services' messages embed them everywhere.
    pub use super::mvccpb::{Event, KeyValue};
}

/// capstan's peer protocol: the Raft RPCs between members, plus Forward and ReadIndex.
pub mod raftpb {
    tonic::include_proto!("raftpb");
}

/// The Container Runtime Interface (`runtime.v1`, cri-api v0.32.13): the
/// RuntimeService and ImageService clients the node agent talks to containerd with.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}
