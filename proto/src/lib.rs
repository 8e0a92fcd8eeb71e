//! The etcd v3 API as Rust types: `etcdserverpb` (the KV, Watch, Lease, Cluster,
//! Maintenance and Auth services), `mvccpb` and `authpb`. Generated at build time from
//! the `.proto` files beside this crate; this crate holds no logic.
#![allow(clippy::all, missing_docs)]

/// Keys, values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The etcd v3 client API services and their messages.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
    // Re-exported because the services' messages embed them everywhere.
    pub use super::mvccpb::{Event, KeyValue};
}

/// capstan's peer protocol: the Raft RPCs between members, plus Forward and ReadIndex.
pub mod raftpb {
    tonic::include_proto!("raftpb");
}

/// Kubernetes' own protobuf definitions (`generated.proto` of k8s.io/api core, apps,
/// batch, coordination, discovery, networking and autoscaling v1, with apimachinery's
/// meta/v1, runtime, schema, intstr and resource), vendored from the v0.32.13 tags (the
/// Kubernetes 1.32 line) under `k8s.io/`.
pub mod k8s {
    /// The encoded `FileDescriptorSet` of every Kubernetes message, imports included.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s.bin"));

    /// What the `.proto` files cannot say about the JSON form of a message, derived from
    /// upstream's Go struct tags by `scripts/k8s-proto-fields`: one
    /// `<message>.<field> inline|keepzero|json=<name>` per line (`#` starts a comment).
    /// `inline`: the field's members appear flattened in JSON (`json:",inline"`);
    /// `keepzero`: a scalar whose zero value is meaningful (a Go pointer, or no
    /// omitempty), as the Go marshaller writes every other scalar even when it is zero;
    /// `json=`: the JSON name, where it is not the field's.
    pub const FIELD_NOTES: &str = include_str!("../k8s.io/fields.txt");
}

/// The Container Runtime Interface (`runtime.v1`, cri-api v0.32.13): the
/// RuntimeService and ImageService clients the node agent talks to containerd with.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}
