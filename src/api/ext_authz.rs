//! The mesh's check, and `envoy.service.auth.v3.Authorization`: Envoy's external authorization,
//! which Envoy, Istio (`CUSTOM` action) or any sidecar asks about each request to the services it
//! fronts (proxies that ask over plain HTTP get the same decision from `forward_auth`). A live
//! access token of this service lets the request through with the caller's identity as request
//! headers; anything else is denied with the HTTP status and challenge RFC 6750 gives.

use std::{collections::HashMap, sync::Arc};

use tonic::{Code, Request, Response, Status};

use crate::{
    auth::{self, Authenticator, VerifiedClaims},
    domain::cut,
    error::{
        Error,
        answers::{Challenge, Denial, envoy_header as header, ext_authz_denial as deny},
    },
    pb::{
        envoy::service::auth::v3::{
            CheckRequest, CheckResponse, OkHttpResponse, attribute_context::HttpRequest,
            authorization_server::Authorization, check_response::HttpResponse,
        },
        google::rpc,
    },
    telemetry,
};

/// The request headers that carry the caller's identity upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: String,
    pub client: String,
    pub roles: String,
}

/// The mesh's check, whichever way a proxy asks: whether a request's bearer token is live, and
/// the identity it passes on if so.
#[derive(Debug, Clone)]
pub struct MeshCheck {
    auth: Arc<Authenticator>,
    headers: IdentityHeaders,
}

/// What the check decided about a request.
#[derive(Debug)]
pub enum Decision {
    /// Through, with these identity headers set over any copy the caller sent, and these removed.
    Allow {
        set: Vec<(String, String)>,
        remove: Vec<String>,
    },
    Deny(Denial),
}

impl MeshCheck {
    pub fn new(auth: Arc<Authenticator>, headers: IdentityHeaders) -> Self {
        Self { auth, headers }
    }

    /// The decision for a request with `authorization`. A database that cannot say whether the
    /// token's client is live is a denial to retry; any other failure is an error. A denial is
    /// the call's refusal, in the words of its answer (`invalid_token`).
    pub async fn decide(&self, authorization: auth::Authorization<'_>) -> Result<Decision, Error> {
        let decision = self.decision(authorization).await;
        if let Ok(Decision::Deny(denial)) = &decision {
            telemetry::refused(denial.reason());
        }
        decision
    }

    async fn decision(&self, authorization: auth::Authorization<'_>) -> Result<Decision, Error> {
        let Ok(token) = authorization.bearer() else {
            return Ok(Decision::Deny(Denial::Refused(authorization.challenge())));
        };
        match self.auth.active(token).await {
            Ok(Some(claims)) => Ok(self.allow(&claims).unwrap_or_else(|| Self::unwritable(&claims))),
            Ok(None) => Ok(Decision::Deny(Denial::Refused(Challenge::InvalidToken))),
            Err(Error::Unavailable(_)) => Ok(Decision::Deny(Denial::Unavailable)),
            Err(err) => Err(err),
        }
    }

    /// The identity headers of `claims`: the user, the client (removed for a user's own token)
    /// and the roles (removed when there are none); `None` when a value cannot be written into a
    /// header as it is: a CR or LF would end the header and begin another of the value's choosing.
    fn allow(&self, claims: &VerifiedClaims) -> Option<Decision> {
        let writable = |name: &str, value: &str| {
            (!value.chars().any(char::is_control)).then(|| (name.to_owned(), value.to_owned()))
        };
        let mut set = vec![writable(&self.headers.user, &claims.sub)?];
        let mut remove = Vec::new();
        match &claims.client_id {
            Some(client_id) => set.push(writable(&self.headers.client, client_id)?),
            None => remove.push(self.headers.client.clone()),
        }
        let roles = claims.roles.to_strings().join(",");
        if roles.is_empty() {
            remove.push(self.headers.roles.clone());
        } else {
            set.push(writable(&self.headers.roles, &roles)?);
        }
        Some(Decision::Allow { set, remove })
    }

    /// A live token whose identity holds a control character (an owner stored before such
    /// subjects were refused): denied, since the identity cannot be passed on as it is, and
    /// never passed on in part.
    fn unwritable(claims: &VerifiedClaims) -> Decision {
        if let Some(left_out) = crate::error::refusal_log() {
            tracing::warn!(
                user_id = cut(&claims.sub).as_ref(),
                client_id = cut(claims.client_id.as_deref().unwrap_or_default()).as_ref(),
                left_out,
                "the mesh's check denied a live token: its identity holds a control character, which no header may"
            );
        }
        Decision::Deny(Denial::Refused(Challenge::InvalidToken))
    }
}

/// Envoy's ext_authz over gRPC.
#[derive(Debug, Clone)]
pub struct ExtAuthzApi {
    check: MeshCheck,
}

impl ExtAuthzApi {
    pub fn new(check: MeshCheck) -> Self {
        Self { check }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let http = request.get_ref().attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        // The decision is part of the request it is about: its trace, if it carries one.
        if let Some(http) = http {
            adopt_trace(http);
        }
        let answer = match self.check.decide(http.map_or(auth::Authorization::Absent, authorization)).await? {
            Decision::Allow { set, remove } => CheckResponse {
                status: Some(rpc::Status { code: Code::Ok as i32, ..Default::default() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: set.iter().map(|(name, value)| header(name, value)).collect(),
                    headers_to_remove: remove,
                })),
            },
            Decision::Deny(denial) => deny(denial),
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

/// Makes the trace of the request being checked the parent of this call's span, when it
/// carries one: from the header map, or from the raw header list.
fn adopt_trace(http: &HttpRequest) {
    if !telemetry::exporting() {
        return;
    }
    if http.headers.is_empty() {
        let copies = http.header_map.as_ref().map(|map| map.headers.as_slice()).unwrap_or_default();
        let headers: HashMap<String, String> = copies
            .iter()
            .filter_map(|h| {
                let value = if h.value.is_empty() { std::str::from_utf8(&h.raw_value).ok()? } else { h.value.as_str() };
                Some((h.key.to_ascii_lowercase(), value.to_owned()))
            })
            .collect();
        telemetry::adopt_parent(&headers);
    } else {
        telemetry::adopt_parent(&http.headers);
    }
}
