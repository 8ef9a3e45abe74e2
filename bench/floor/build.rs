//! Generates the Greeter server from `proto/helloworld.proto` with protox (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/helloworld.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(false).emit_rerun_if_changed(false).compile_fds(fds)?;
    Ok(())
}
