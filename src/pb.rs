//! Code generated from `proto/` at build time, and the descriptor set it was compiled from.

/// The compiled contract and the error details it sends, with the well-known types they
/// import, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");

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

/// [`FILE_DESCRIPTOR_SET`] decoded, for what reads messages by their descriptors: the JSON
/// routes, their OpenAPI document and `google.rpc.Status` in JSON. Decoded once; the server
/// refuses to start if it cannot be.
pub fn descriptor_pool() -> Result<&'static prost_reflect::DescriptorPool, String> {
    static POOL: std::sync::LazyLock<Result<prost_reflect::DescriptorPool, String>> = std::sync::LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("cannot read the served descriptors: {e}"))
    });
    POOL.as_ref().map_err(Clone::clone)
}
