use tonic::{Request, Response, Status};

use super::{AppState, convert, page_of};
use crate::{
    Error,
    pb::iam::{self as pb, personal_client_search_service_server::PersonalClientSearchService},
};

/// `c1.api.iam.v1.PersonalClientSearchService`: personal clients across users, for admins.
#[derive(Debug, Clone)]
pub struct SearchApi {
    state: AppState,
}

impl SearchApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl PersonalClientSearchService for SearchApi {
    async fn search(
        &self,
        request: Request<pb::PersonalClientSearchServiceSearchRequest>,
    ) -> Result<Response<pb::PersonalClientSearchServiceSearchResponse>, Status> {
        let principal = self.state.caller(&request).await?;
        let (filter, page_size, token) = convert::search_spec(request.get_ref(), &principal.user_id)?;
        let admin_role = &self.state.config.admin_role;
        if !principal.has_role(admin_role) {
            return Err(Error::PermissionDenied(format!(
                "searching personal clients requires the {admin_role:?} role"
            ))
            .into());
        }
        let rows = self.state.store.search_clients(&filter, token.map(|t| t.after), page_size.get() + 1).await?;
        let (list, next_page_token) = page_of(rows, page_size, &principal.user_id, &filter.fingerprint());
        Ok(Response::new(pb::PersonalClientSearchServiceSearchResponse { list, next_page_token }))
    }
}
