//! `c1.api.iam.v1.PersonalClientService`: Create, Get, List, Update and Delete of a user's own
//! personal clients, translated to and from `clients`.

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{caller, convert};
use crate::{
    audit::{self, Action},
    clients::PersonalClients,
    domain::{MaxLifetime, Principal, quote},
    metrics::code_name,
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
        let caller = caller(&request)?;
        let answer = async {
            let new = convert::create_request(request.get_ref(), &self.max_lifetime, Utc::now())?;
            let (client, secret) = self.clients.create(caller, new).await?;
            Ok(Response::new(pb::PersonalClientServiceCreateResponse {
                client: Some(client.into()),
                client_secret: secret.expose().to_owned(),
            }))
        }
        .await;
        let created = answer.as_ref().ok().and_then(|r| r.get_ref().client.as_ref());
        let (id, client_id) = created.map(|c| (c.id.as_str(), c.client_id.as_str())).unwrap_or_default();
        audit(Action::CreateClient, &request, caller, id, client_id, &answer);
        answer
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
        let caller = caller(&request)?;
        let answer = async {
            let (id, changes) = convert::update_request(request.get_ref(), &self.max_lifetime, Utc::now())?;
            let client = self.clients.update(caller, id, changes).await?;
            Ok(Response::new(pb::PersonalClientServiceUpdateResponse { client: Some(client.into()) }))
        }
        .await;
        let target = request.get_ref().client.as_ref().map(|c| target(&c.id)).unwrap_or_default();
        let updated = answer.as_ref().ok().and_then(|r| r.get_ref().client.as_ref());
        audit(Action::UpdateClient, &request, caller, &target, updated.map_or("", |c| c.client_id.as_str()), &answer);
        answer
    }

    async fn delete(
        &self,
        request: Request<pb::PersonalClientServiceDeleteRequest>,
    ) -> Result<Response<pb::PersonalClientServiceDeleteResponse>, Status> {
        let caller = caller(&request)?;
        let answer = async {
            let id = convert::client_uuid("id", &request.get_ref().id)?;
            self.clients.delete(caller, id).await?;
            Ok(Response::new(pb::PersonalClientServiceDeleteResponse {}))
        }
        .await;
        audit(Action::DeleteClient, &request, caller, &target(&request.get_ref().id), "", &answer);
        answer
    }
}

/// The client a request names, as audit events name it: an id as the server writes ids, or,
/// when it is not one, quoted as the caller sent it.
fn target(id: &str) -> String {
    uuid::Uuid::parse_str(id).map_or_else(|_| quote(id), |id| id.to_string())
}

/// The audit event of a change the caller made or tried.
fn audit<T, R>(
    action: Action,
    request: &Request<T>,
    caller: &Principal,
    target: &str,
    client_id: &str,
    answer: &Result<R, Status>,
) {
    let refusal = answer.as_ref().err().map(|status| code_name(status.code()));
    audit::call(action, caller, request.remote_addr().map(|addr| addr.ip()), target, client_id, refusal.as_deref());
}
