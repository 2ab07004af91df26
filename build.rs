//! Compiles the wire contract in `proto/` with a pure-Rust protobuf compiler, so no `protoc`
//! needs to be installed.

use std::{env, error::Error, fs, path::PathBuf};

/// The contract: Rust code is generated for these.
const CONTRACT: &[&str] = &[
    "c1/api/iam/v1/personal_client.proto",
    "c1/api/auth/v1/token.proto",
    "c1/api/auth/v1/introspection.proto",
    "envoy/service/auth/v3/external_auth.proto",
];
/// The error details the service sends (`google.rpc.BadRequest` in `grpc-status-details-bin`):
/// served by reflection so dynamic clients can decode them; their Rust types come from
/// `tonic-types`.
const ERROR_MODEL: &[&str] = &["google/rpc/status.proto", "google/rpc/error_details.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for dir in [
        "proto/c1/api/iam/v1",
        "proto/c1/api/auth/v1",
        "proto/google/api",
        "proto/google/rpc",
        "proto/envoy/service/auth/v3",
        "proto/envoy/config/core/v3",
        "proto/envoy/type/v3",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    // Encoded by the compiler itself: a FileDescriptorSet decoded into Rust types would lose
    // the custom options (the google.api.http routes).
    let served = protox::Compiler::new(["proto"])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(CONTRACT.iter().chain(ERROR_MODEL))?
        .encode_file_descriptor_set();
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("descriptors.bin"), served)?;
    // A codec of our own, so a malformed request is INVALID_ARGUMENT (src/api/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::api::codec::Codec")
        .compile_fds(protox::compile(CONTRACT, ["proto"])?)?;
    Ok(())
}
