//! Compiles the protobufs with protox (a pure-Rust protobuf compiler), so a build needs
//! no `protoc` on the machine: etcd's v3 API and capstan's Raft protocol become prost
//! types and tonic clients and servers (the etcd messages also get serde in the proto3
//! JSON form, with pbjson), the CRI (`runtime.v1`) a tonic client;
//! Kubernetes' `generated.proto` files become an encoded file descriptor set
//! (`k8s.bin`), read at run time by the apiserver, which decodes protobuf request
//! bodies by reflection rather than with generated types.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "etcd/etcdserverpb/rpc.proto",
        "etcd/mvccpb/kv.proto",
        "etcd/authpb/auth.proto",
        "raft/raftpb.proto",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let descriptors = prost::Message::encode_to_vec(&fds);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    // serde for the etcd messages in the proto3 JSON form etcd's gRPC gateway speaks:
    // field names as in the .proto (grpc-gateway's `OrigName`), 64-bit integers as
    // strings, bytes as base64, unknown fields ignored.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    // The CRI (kubelet to container runtime): the node agent is only ever its client.
    let cri = "cri/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={cri}");
    let fds = protox::compile([cri], ["cri"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed=k8s.io");
    let k8s = [
        "k8s.io/api/core/v1/generated.proto",
        "k8s.io/api/apps/v1/generated.proto",
        "k8s.io/api/batch/v1/generated.proto",
        "k8s.io/api/coordination/v1/generated.proto",
        "k8s.io/api/discovery/v1/generated.proto",
        "k8s.io/api/networking/v1/generated.proto",
        "k8s.io/api/autoscaling/v1/generated.proto",
        "k8s.io/api/rbac/v1/generated.proto",
        "k8s.io/api/authorization/v1/generated.proto",
    ];
    let set = protox::Compiler::new(["."])?
        .include_imports(true)
        .open_files(k8s)?
        .encode_file_descriptor_set();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.bin");
    std::fs::write(out, set)?;
    Ok(())
}
