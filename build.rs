//! Compiles the wire contract in `proto/` with a pure-Rust protobuf compiler, so no `protoc`
//! needs to be installed.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

/// The contract: Rust code is generated for these.
const CONTRACT: &[&str] = &["c1/api/iam/v1/personal_client.proto", "c1/api/auth/v1/token.proto"];
/// The error details the service sends (`google.rpc.BadRequest` in `grpc-status-details-bin`):
/// served by reflection so dynamic clients can decode them; their Rust types come from
/// `tonic-types`.
const ERROR_MODEL: &[&str] = &["google/rpc/status.proto", "google/rpc/error_details.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for dir in ["proto/c1/api/iam/v1", "proto/c1/api/auth/v1", "proto/google/rpc"] {
        println!("cargo:rerun-if-changed={dir}");
    }
    let served = protox::compile(CONTRACT.iter().chain(ERROR_MODEL), ["proto"])?;
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("descriptors.bin"), served.encode_to_vec())?;
    // A codec of our own, so a malformed request is INVALID_ARGUMENT (src/api/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::api::codec::Codec")
        .compile_fds(protox::compile(CONTRACT, ["proto"])?)?;
    Ok(())
}
