use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{AppState, convert, page_of};
use crate::{
    Error,
    auth::Principal,
    domain::{ClientCredential, NewPersonalClient, PageSize, PageToken, RoleSet},
    pb::iam::{self as pb, personal_client_service_server::PersonalClientService},
};

/// The query a List page token is bound to.
const LIST_QUERY: &str = "list";

/// `c1.api.iam.v1.PersonalClientService`: a user's own personal clients.
#[derive(Debug, Clone)]
pub struct PersonalClientApi {
    state: AppState,
}

impl PersonalClientApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Admins may read and revoke any user's clients; everyone else only their own.
    fn owner_filter<'a>(&self, principal: &'a Principal) -> Option<&'a str> {
        if principal.has_role(&self.state.config.admin_role) { None } else { Some(&principal.user_id) }
    }
}

/// Scoped roles must be roles the caller holds: a credential never has more than its owner.
fn ensure_holds(principal: &Principal, roles: &RoleSet) -> Result<(), Error> {
    let missing = roles.missing_from(&principal.roles);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|role| role.as_str()).collect();
    Err(Error::PermissionDenied(format!(
        "scoped_roles may only name roles you hold; you do not hold: {}",
        names.join(", ")
    )))
}

#[tonic::async_trait]
impl PersonalClientService for PersonalClientApi {
    async fn create(
        &self,
        request: Request<pb::PersonalClientServiceCreateRequest>,
    ) -> Result<Response<pb::PersonalClientServiceCreateResponse>, Status> {
        let principal = self.state.caller(&request).await?;
        let config = &self.state.config;
        let spec = convert::create_spec(request.get_ref(), &config.max_lifetime, Utc::now())?;
        principal.ensure_may_manage_clients()?;
        ensure_holds(&principal, &spec.scoped_roles)?;

        let credential = ClientCredential::generate(&config.secret_namespace);
        let new = NewPersonalClient {
            user_id: principal.user_id.clone(),
            display_name: spec.display_name,
            allow_source_cidr: spec.allow_source_cidr,
            scoped_roles: spec.scoped_roles,
            owner_roles: principal.roles.clone(),
            expires_at: spec.expires_at,
            public_key: credential.public_key,
        };
        let client = self.state.store.create_client(&new, &config.public_host).await?;
        tracing::info!(user_id = %client.user_id, client_id = %client.client_id, id = %client.id, "personal client created");
        Ok(Response::new(pb::PersonalClientServiceCreateResponse {
            client: Some(client.into()),
            client_secret: credential.secret.expose().to_owned(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::PersonalClientServiceGetRequest>,
    ) -> Result<Response<pb::PersonalClientServiceGetResponse>, Status> {
        let principal = self.state.caller(&request).await?;
        let id = convert::client_uuid("id", &request.get_ref().id)?;
        let client = self.state.store.get_client(id, self.owner_filter(&principal)).await?;
        Ok(Response::new(pb::PersonalClientServiceGetResponse { client: Some(client.into()) }))
    }

    async fn list(
        &self,
        request: Request<pb::PersonalClientServiceListRequest>,
    ) -> Result<Response<pb::PersonalClientServiceListResponse>, Status> {
        let principal = self.state.caller(&request).await?;
        let req = request.get_ref();
        let page_size = PageSize::parse(req.page_size).map_err(|e| Error::invalid("page_size", e))?;
        let token = PageToken::decode(&req.page_token, &principal.user_id, LIST_QUERY)
            .map_err(|e| Error::invalid("page_token", e))?;

        let rows =
            self.state.store.list_clients(&principal.user_id, token.map(|t| t.after), page_size.get() + 1).await?;
        let (list, next_page_token) = page_of(rows, page_size, &principal.user_id, LIST_QUERY);
        Ok(Response::new(pb::PersonalClientServiceListResponse { list, next_page_token }))
    }

    async fn update(
        &self,
        request: Request<pb::PersonalClientServiceUpdateRequest>,
    ) -> Result<Response<pb::PersonalClientServiceUpdateResponse>, Status> {
        let principal = self.state.caller(&request).await?;
        let (id, changes) = convert::update_spec(request.get_ref(), &self.state.config.max_lifetime, Utc::now())?;
        principal.ensure_may_manage_clients()?;
        if let Some(roles) = &changes.scoped_roles {
            ensure_holds(&principal, roles)?;
        }
        let client = self.state.store.update_client(id, &principal.user_id, &changes).await?;
        tracing::info!(user_id = %client.user_id, client_id = %client.client_id, %id, "personal client updated");
        Ok(Response::new(pb::PersonalClientServiceUpdateResponse { client: Some(client.into()) }))
    }

    async fn delete(
        &self,
        request: Request<pb::PersonalClientServiceDeleteRequest>,
    ) -> Result<Response<pb::PersonalClientServiceDeleteResponse>, Status> {
        let principal = self.state.caller(&request).await?;
        let id = convert::client_uuid("id", &request.get_ref().id)?;
        principal.ensure_may_manage_clients()?;
        let client = self.state.store.delete_client(id, self.owner_filter(&principal)).await?;
        if client.user_id == principal.user_id {
            tracing::info!(user_id = %client.user_id, client_id = %client.client_id, %id, "personal client deleted");
        } else {
            tracing::warn!(
                admin = %principal.user_id, owner = %client.user_id, client_id = %client.client_id, %id,
                "personal client revoked by an admin"
            );
        }
        Ok(Response::new(pb::PersonalClientServiceDeleteResponse {}))
    }
}
