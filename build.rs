//! Compiles the wire contract in `proto/` with a pure-Rust protobuf compiler, so no `protoc`
//! needs to be installed.

use std::error::Error;

const PROTOS: &[&str] = &["c1/api/iam/v1/personal_client.proto", "c1/api/auth/v1/token.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/c1/api/iam/v1");
    println!("cargo:rerun-if-changed=proto/c1/api/auth/v1");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
