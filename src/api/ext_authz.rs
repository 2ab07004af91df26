//! `envoy.service.auth.v3.Authorization`: Envoy's external authorization, which Envoy, Istio
//! (`CUSTOM` action) or any sidecar asks about each request to the services it fronts. A live
//! access token of this service lets the request through with the caller's identity as request
//! headers; anything else is denied with the HTTP status and challenge RFC 6750 gives.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::{
    auth::{self, Authenticator, VerifiedClaims},
    domain::quote,
    error::answers::{Challenge, Denial, envoy_header as header, ext_authz_denial as deny},
    pb::{
        envoy::service::auth::v3::{
            CheckRequest, CheckResponse, OkHttpResponse, attribute_context::HttpRequest,
            authorization_server::Authorization, check_response::HttpResponse,
        },
        google::rpc,
    },
};

/// The request headers that carry the caller's identity upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: String,
    pub client: String,
    pub roles: String,
}

#[derive(Debug, Clone)]
pub struct ExtAuthzApi {
    auth: Arc<Authenticator>,
    headers: IdentityHeaders,
}

impl ExtAuthzApi {
    pub fn new(auth: Arc<Authenticator>, headers: IdentityHeaders) -> Self {
        Self { auth, headers }
    }

    /// Through, with the identity headers set over any the caller sent, and those without a
    /// value here removed; `None` when an identity cannot be written into a header as it is.
    fn allow(&self, claims: &VerifiedClaims) -> Option<CheckResponse> {
        let mut set = vec![header(&self.headers.user, &claims.sub)?];
        let mut remove = Vec::new();
        match &claims.client_id {
            Some(client_id) => set.push(header(&self.headers.client, client_id)?),
            None => remove.push(self.headers.client.clone()),
        }
        let roles = claims.roles.to_strings().join(",");
        if roles.is_empty() {
            remove.push(self.headers.roles.clone());
        } else {
            set.push(header(&self.headers.roles, &roles)?);
        }
        Some(CheckResponse {
            status: Some(rpc::Status { code: Code::Ok as i32, ..Default::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse { headers: set, headers_to_remove: remove })),
        })
    }

    /// A live token whose identity holds a control character (an owner stored before such
    /// subjects were refused): denied, since the identity cannot be passed on as it is, and
    /// never passed on in part.
    fn unwritable(claims: &VerifiedClaims) -> CheckResponse {
        if let Some(left_out) = crate::error::refusal_log() {
            tracing::warn!(
                user_id = %quote(&claims.sub),
                client_id = %quote(claims.client_id.as_deref().unwrap_or_default()),
                left_out,
                "the mesh's check denied a live token: its identity holds a control character, which no header may"
            );
        }
        deny(Denial::Refused(Challenge::InvalidToken))
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let http = request.get_ref().attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let authorization = http.map_or(auth::Authorization::Absent, authorization);
        let Ok(token) = authorization.bearer() else {
            return Ok(Response::new(deny(Denial::Refused(authorization.challenge()))));
        };
        let answer = match self.auth.active(token).await {
            Ok(Some(claims)) => self.allow(&claims).unwrap_or_else(|| Self::unwritable(&claims)),
            Ok(None) => deny(Denial::Refused(Challenge::InvalidToken)),
            Err(err) => {
                let status = Status::from(err);
                if status.code() == Code::Unavailable { deny(Denial::Unavailable) } else { return Err(status) }
            }
        };
        Ok(Response::new(answer))
    }
}

/// The request's `Authorization`: from the header map Envoy sends by default, where it has
/// joined several copies with commas, or from the raw header list it sends when told to encode
/// raw headers, where each copy is an entry of its own. Several copies are refused, as every
/// surface of this service refuses them: a service behind may read another copy than the one
/// checked here.
fn authorization(http: &HttpRequest) -> auth::Authorization<'_> {
    if let Some(value) = http.headers.get("authorization") {
        return auth::Authorization::of_joined(value);
    }
    let copies = http.header_map.as_ref().map(|map| map.headers.as_slice()).unwrap_or_default();
    auth::Authorization::of_copies(
        copies.iter().filter(|h| h.key.eq_ignore_ascii_case("authorization")).map(|h| {
            if h.value.is_empty() { std::str::from_utf8(&h.raw_value).unwrap_or("") } else { h.value.as_str() }
        }),
    )
}
