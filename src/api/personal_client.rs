use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{caller, convert};
use crate::{
    clients::PersonalClients,
    domain::MaxLifetime,
    pb::iam::{self as pb, personal_client_service_server::PersonalClientService},
};

/// `c1.api.iam.v1.PersonalClientService`: a user's own personal clients.
#[derive(Debug, Clone)]
pub struct PersonalClientApi {
    clients: PersonalClients,
    max_lifetime: MaxLifetime,
}

impl PersonalClientApi {
    pub fn new(clients: PersonalClients, max_lifetime: MaxLifetime) -> Self {
        Self { clients, max_lifetime }
    }
}

#[tonic::async_trait]
impl PersonalClientService for PersonalClientApi {
    async fn create(
        &self,
        request: Request<pb::PersonalClientServiceCreateRequest>,
    ) -> Result<Response<pb::PersonalClientServiceCreateResponse>, Status> {
        let new = convert::create_request(request.get_ref(), &self.max_lifetime, Utc::now())?;
        let (client, secret) = self.clients.create(caller(&request)?, new).await?;
        Ok(Response::new(pb::PersonalClientServiceCreateResponse {
            client: Some(client.into()),
            client_secret: secret.expose().to_owned(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::PersonalClientServiceGetRequest>,
    ) -> Result<Response<pb::PersonalClientServiceGetResponse>, Status> {
        let id = convert::client_uuid("id", &request.get_ref().id)?;
        let client = self.clients.get(caller(&request)?, id).await?;
        Ok(Response::new(pb::PersonalClientServiceGetResponse { client: Some(client.into()) }))
    }

    async fn list(
        &self,
        request: Request<pb::PersonalClientServiceListRequest>,
    ) -> Result<Response<pb::PersonalClientServiceListResponse>, Status> {
        let caller = caller(&request)?;
        let page = convert::list_request(request.get_ref(), &caller.user_id)?;
        let page = self.clients.list(caller, page).await?;
        Ok(Response::new(pb::PersonalClientServiceListResponse {
            list: page.clients.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update(
        &self,
        request: Request<pb::PersonalClientServiceUpdateRequest>,
    ) -> Result<Response<pb::PersonalClientServiceUpdateResponse>, Status> {
        let (id, changes) = convert::update_request(request.get_ref(), &self.max_lifetime, Utc::now())?;
        let client = self.clients.update(caller(&request)?, id, changes).await?;
        Ok(Response::new(pb::PersonalClientServiceUpdateResponse { client: Some(client.into()) }))
    }

    async fn delete(
        &self,
        request: Request<pb::PersonalClientServiceDeleteRequest>,
    ) -> Result<Response<pb::PersonalClientServiceDeleteResponse>, Status> {
        let id = convert::client_uuid("id", &request.get_ref().id)?;
        self.clients.delete(caller(&request)?, id).await?;
        Ok(Response::new(pb::PersonalClientServiceDeleteResponse {}))
    }
}
