//! Compiles the .proto files with protox (pure Rust, no system `protoc`) and feeds the
//! descriptors to tonic's code generator.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "drover/v1/tenant.proto",
        "drover/agent/v1/agent.proto",
        "drover/admin/v1/admin.proto",
        "drover/raft/v1/raft.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
