fn main() -> Result<(), Box<dyn std::error::Error>> {
    // PROTOC points at tools/protoc (see .cargo/config.toml), which runs the binary that
    // the protoc-bin-vendored crate ships. Checking the crate's path here keeps that
    // crate in the dependency graph, so cargo always downloads it before any build script.
    let vendored = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        return Err(format!("PROTOC is not set; expected tools/protoc ({})", vendored.display()).into());
    }

    // `bytes` fields as `bytes::Bytes`: body chunks move from the HTTP body to every
    // replica's gRPC stream (and from disk to the client) without a copy.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_protos(&["blob/v1/blob.proto", "raft/v1/raft.proto"], &["."])?;

    tonic_prost_build::configure().build_client(false).build_server(true).generate_default_stubs(true).compile_protos(
        &["etcd/etcd/api/etcdserverpb/rpc.proto", "etcd/etcd/api/mvccpb/kv.proto", "etcd/etcd/api/authpb/auth.proto"],
        &["etcd"],
    )?;
    println!("cargo:rerun-if-changed=blob");
    println!("cargo:rerun-if-changed=raft");
    println!("cargo:rerun-if-changed=etcd");
    Ok(())
}
