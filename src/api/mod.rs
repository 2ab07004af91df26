//! gRPC services, one file per proto service. Each handler: authenticate, validate, authorise,
//! call the store, build the response.

pub mod convert;
pub mod http;
mod personal_client;
mod search;
mod token;

use std::sync::Arc;

use tonic::{Request, Status};

pub use personal_client::PersonalClientApi;
pub use search::SearchApi;
pub use token::TokenApi;

use crate::{
    auth::{Authenticator, Principal},
    config::Config,
    domain::{PageSize, PageToken, PersonalClient},
    pb::iam as pb,
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

/// One page of a listing. `rows` holds up to one row more than `size`: that row, when present,
/// says another page follows, and the token points after the last row returned.
fn page_of(
    mut rows: Vec<PersonalClient>,
    size: PageSize,
    user: &str,
    query: &str,
) -> (Vec<pb::PersonalClient>, String) {
    let size = usize::try_from(size.get()).unwrap_or(usize::MAX);
    let next_page_token = if rows.len() > size {
        rows.truncate(size);
        rows.last().map(|last| PageToken::new(user, query, last.id).encode()).unwrap_or_default()
    } else {
        String::new()
    };
    (rows.into_iter().map(Into::into).collect(), next_page_token)
}
