//! The service's surfaces, one file per proto service plus the plain HTTP routes. Translation
//! only: a handler validates the request into domain values, hands them to `clients` or
//! `exchange` with the caller, and builds the response. No rule lives here.

pub mod codec;
pub mod convert;
mod discovery;
mod ext_authz;
pub mod http;
pub mod introspection;
pub mod json;
mod personal_client;
mod search;
mod token;

use tonic::{Request, Status};

pub use ext_authz::{ExtAuthzApi, IdentityHeaders, MeshCheck};
pub use introspection::IntrospectionApi;
pub use personal_client::PersonalClientApi;
pub use search::SearchApi;
pub use token::TokenApi;

use crate::{
    domain::Principal,
    error::Error,
    pb::{
        auth::{introspection_service_server, token_service_server},
        envoy::service::auth::v3::authorization_server,
        iam::{personal_client_search_service_server, personal_client_service_server},
    },
};

/// The contract's services for which callers need a bearer token. The gate in front of the gRPC
/// services protects every service that is not public; these are named for health and metrics.
pub const PROTECTED_SERVICES: [&str; 3] = [
    personal_client_service_server::SERVICE_NAME,
    personal_client_search_service_server::SERVICE_NAME,
    introspection_service_server::SERVICE_NAME,
];

/// The contract's services that anyone may call: the token exchange, and the mesh's check,
/// whose callers are proxies asking about a request's token, not holding one of their own.
pub const PUBLIC_SERVICES: [&str; 2] = [token_service_server::SERVICE_NAME, authorization_server::SERVICE_NAME];

/// The caller, as the authentication layer put it into the request.
fn caller<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Error::internal("a protected method was served without the authentication layer").into())
}
