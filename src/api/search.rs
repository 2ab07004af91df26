//! `c1.api.iam.v1.PersonalClientSearchService`: Search across users, for admins, translated to
//! and from `clients`.

use tonic::{Request, Response, Status};

use super::{caller, convert};
use crate::{
    clients::PersonalClients,
    pb::iam::{self as pb, personal_client_search_service_server::PersonalClientSearchService},
};

/// `c1.api.iam.v1.PersonalClientSearchService`: personal clients across users, for admins.
#[derive(Debug, Clone)]
pub struct SearchApi {
    clients: PersonalClients,
}

impl SearchApi {
    pub fn new(clients: PersonalClients) -> Self {
        Self { clients }
    }
}

#[tonic::async_trait]
impl PersonalClientSearchService for SearchApi {
    async fn search(
        &self,
        request: Request<pb::PersonalClientSearchServiceSearchRequest>,
    ) -> Result<Response<pb::PersonalClientSearchServiceSearchResponse>, Status> {
        let caller = caller(&request)?;
        let (filter, page) = convert::search_request(request.get_ref(), &caller.user_id)?;
        let page = self.clients.search(caller, &filter, page).await?;
        Ok(Response::new(pb::PersonalClientSearchServiceSearchResponse {
            list: page.clients.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
