//! Compiles the etcd v3 protobufs and the CRI (`runtime.v1`) with protox (a pure-Rust protobuf compiler), so a
//! build needs no `protoc` on the machine, then generates prost types and tonic
//! clients and servers from the descriptor set.
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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    // The CRI (kubelet to container runtime): the node agent is only ever its client.
    let cri = "cri/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={cri}");
    let fds = protox::compile([cri], ["cri"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
