//! personal-clients: issues and manages personal client credentials, the per-user OAuth2 API
//! keys of an IAM platform, behind `c1.api.iam.v1.PersonalClientService`.
//!
//! Data flows one way: [`api`] translates the wire into domain values and hands them, with the
//! caller that [`auth`] put into the request, to the rules in [`clients`] and [`exchange`],
//! which work on [`domain`] values through the [`store`]. [`server`] puts it together.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod clients;
pub mod config;
pub mod connections;
pub mod domain;
pub mod error;
pub mod exchange;
pub mod grpc_methods;
pub mod health;
pub mod key_commands;
pub mod limits;
pub mod metrics;
pub mod rate;
pub mod server;
pub mod store;
mod tls;

pub use config::Config;
pub use error::Error;

/// The compiled contract and the error details it sends, with the well-known types they
/// import, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");

/// Code generated from `proto/`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    pub mod iam {
        tonic::include_proto!("c1.api.iam.v1");
    }
    pub mod auth {
        tonic::include_proto!("c1.api.auth.v1");
    }
    /// `google.api.HttpRule`: the HTTP routes of the contract's methods.
    pub mod google_api {
        tonic::include_proto!("google.api");
    }
    /// Envoy's external authorization service; nested as its packages are, which the generated
    /// code refers to.
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }
    /// `google.rpc.Status`, as the external authorization service answers with it.
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}
