//! Compiles the wire contract in `proto/` with a pure-Rust protobuf compiler, so no `protoc`
//! needs to be installed.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["c1/api/iam/v1/personal_client.proto", "c1/api/auth/v1/token.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/c1/api/iam/v1");
    println!("cargo:rerun-if-changed=proto/c1/api/auth/v1");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // Served by gRPC reflection, with the well-known types the contract imports.
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("descriptors.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
