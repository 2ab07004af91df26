//! Compiles the service's wire contract straight from `../../proto` with protox (pure Rust, no
//! `protoc`), so this tool builds without the service crate and follows its protos.

use std::error::Error;

const PROTO: &str = "../../proto";
const FILES: &[&str] =
    &["c1/api/iam/v1/personal_client.proto", "c1/api/auth/v1/token.proto", "envoy/service/auth/v3/external_auth.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    tonic_prost_build::configure().include_file("pb.rs").compile_fds(protox::compile(FILES, [PROTO])?)?;
    Ok(())
}
