//! Compiles the wire contract in `proto/` with a pure-Rust protobuf compiler, so no `protoc`
//! needs to be installed; and names the commit built, for `--version` and the metrics.

use std::{env, error::Error, fs, path::PathBuf, process::Command};

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

/// The commit built, as `PC_COMMIT`: `PC_BUILD_COMMIT` when set (a build from a source tree
/// without its `.git`, such as a container's), else what git says of the checkout, else
/// `unknown`.
fn name_the_commit() {
    println!("cargo:rerun-if-env-changed=PC_BUILD_COMMIT");
    // Again when the checkout moves to another commit.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if fs::exists(path).unwrap_or(false) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let from_git = || {
        let output = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = env::var("PC_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PC_COMMIT={commit}");
}

fn main() -> Result<(), Box<dyn Error>> {
    name_the_commit();
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
