//! gRPC services, one file per proto service. Each handler: authenticate, validate, authorise,
//! call the store, build the response.

pub mod convert;
pub mod http;
mod personal_client;
mod token;

use std::sync::Arc;

use tonic::{Request, Status};

pub use personal_client::PersonalClientApi;
pub use token::TokenApi;

use crate::{
    auth::{Authenticator, Principal},
    config::Config,
    store::Store,
};

/// What every handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Arc<Authenticator>,
}

impl AppState {
    /// The caller of `request`, from its `authorization: Bearer` metadata.
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let header = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
        Ok(self.auth.authenticate(header).await?)
    }
}
