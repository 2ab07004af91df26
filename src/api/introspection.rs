//! `c1.api.auth.v1.IntrospectionService`: token introspection (RFC 7662) over gRPC; the HTTP
//! endpoint answers from the same response.

use tonic::{Request, Response, Status};

use super::caller;
use crate::{
    auth::{Introspection, VerifiedClaims},
    error::Error,
    pb::auth::{IntrospectRequest, IntrospectResponse, introspection_service_server::IntrospectionService},
};

#[derive(Debug, Clone)]
pub struct IntrospectionApi {
    introspection: Introspection,
}

impl IntrospectionApi {
    pub fn new(introspection: Introspection) -> Self {
        Self { introspection }
    }
}

#[tonic::async_trait]
impl IntrospectionService for IntrospectionApi {
    async fn introspect(&self, request: Request<IntrospectRequest>) -> Result<Response<IntrospectResponse>, Status> {
        if request.get_ref().token.is_empty() {
            return Err(Error::invalid("token", "is empty; give the access token to look at").into());
        }
        let live = self.introspection.introspect(caller(&request)?, &request.get_ref().token).await?;
        Ok(Response::new(response(live.as_deref(), self.introspection.issuer())))
    }
}

/// What introspection says of a token: its claims if it is live, only `active: false` if not.
pub fn response(live: Option<&VerifiedClaims>, issuer: &str) -> IntrospectResponse {
    let Some(claims) = live else {
        return IntrospectResponse::default();
    };
    IntrospectResponse {
        active: true,
        sub: claims.sub.clone(),
        client_id: claims.client_id.clone().unwrap_or_default(),
        roles: claims.roles.to_strings(),
        exp: claims.exp,
        iat: claims.iat,
        iss: issuer.to_owned(),
        aud: claims.aud.clone(),
        token_type: "Bearer".to_owned(),
        jti: claims.jti.clone(),
    }
}

/// The response as RFC 7662 §2.2 writes it in JSON: `scope` beside `roles`, `client_id` only
/// for a token a personal client obtained, nothing but `active` for a token that is not live.
pub fn response_json(response: &IntrospectResponse) -> serde_json::Value {
    if !response.active {
        return serde_json::json!({ "active": false });
    }
    let mut json = serde_json::json!({
        "active": true,
        "sub": response.sub,
        "roles": response.roles,
        "scope": response.roles.join(" "),
        "exp": response.exp,
        "iat": response.iat,
        "iss": response.iss,
        "aud": response.aud,
        "token_type": response.token_type,
        "jti": response.jti,
    });
    if !response.client_id.is_empty()
        && let Some(map) = json.as_object_mut()
    {
        map.insert("client_id".to_owned(), response.client_id.clone().into());
    }
    json
}
