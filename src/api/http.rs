//! Plain HTTP on the gRPC port: `POST /auth/v1/token` (RFC 6749 §4.4 with RFC 7523 client
//! assertions, form-encoded), `POST /auth/v1/introspect` (RFC 7662), forward authorization for
//! proxies at `/auth/v1/check`, leaked secrets at `POST /auth/v1/credentials/revoke`, the
//! metadata (RFC 8414) and `GET /.well-known/jwks.json`, `GET /healthz` and `GET /metrics`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::{any, get, post},
};
use serde::Deserialize;

use super::ext_authz::{Decision, MeshCheck};
use crate::{
    auth::{Authenticator, Authorization, Introspection},
    clients::{MAX_REPORTED_SECRETS, PersonalClients, Reporter},
    domain::{RequestOrigin, echo},
    error::{
        Error, OAuthError,
        answers::{
            Denial, bearer_refusal, forward_auth_allowed, forward_auth_denied, oauth_json as json, oauth_response,
        },
    },
    exchange::{ExchangeRequest, TokenExchange},
    health::Health,
    metrics::{self, Metrics},
    protocol::{self, Protocol},
};

/// Token requests are a few hundred bytes; anything near this is not one.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// A report of leaked secrets: room for the most secrets one may name (under 200 bytes each).
const MAX_REPORT_BYTES: usize = 32 * 1024;

/// What the plain HTTP endpoints answer with.
#[derive(Debug, Clone)]
pub struct HttpEndpoints {
    pub exchange: Arc<TokenExchange>,
    pub auth: Arc<Authenticator>,
    pub introspection: Introspection,
    pub check: MeshCheck,
    pub clients: PersonalClients,
    pub health: Health,
    pub metrics: Arc<Metrics>,
}

pub fn routes(endpoints: HttpEndpoints) -> Router {
    Router::new()
        .route("/auth/v1/token", post(token))
        .route("/auth/v1/introspect", post(introspect))
        // Envoy's `http_service` appends the request's path to the check's.
        .route("/auth/v1/check", any(forward_auth))
        .route("/auth/v1/check/", any(forward_auth))
        .route("/auth/v1/check/{*path}", any(forward_auth))
        .route("/auth/v1/credentials/revoke", post(revoke_leaked))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(super::discovery::routes(endpoints.auth.issuer()))
        .with_state(endpoints)
}

/// What no route matched: gRPC callers get `UNIMPLEMENTED` as gRPC expects, anyone else a 404.
pub async fn not_found(request: Request) -> Response {
    match Protocol::of(request.headers(), request.uri().path()) {
        Protocol::Grpc => tonic::Status::unimplemented(format!("no method {}", echo(request.uri().path()))).into_http(),
        Protocol::Json => super::json::not_found(request.method(), request.uri().path()),
        Protocol::Http => json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": "not_found" })),
    }
}

/// The Prometheus text format 0.0.4.
async fn metrics_text(State(state): State<HttpEndpoints>) -> Response {
    let mut response = Response::new(Body::from(state.metrics.render()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    response
}

/// 200 while the database answers, 503 while it does not.
async fn healthz(State(state): State<HttpEndpoints>) -> Response {
    if state.health.is_serving() {
        json(StatusCode::OK, &serde_json::json!({ "status": "SERVING" }))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "status": "NOT_SERVING" }))
    }
}

async fn token(State(state): State<HttpEndpoints>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let origin = origin(&parts);
    let form = match read_form(&parts.headers, body).await {
        Ok(form) => form,
        Err(description) => return oauth_response(OAuthError::new(400, "invalid_request", description)),
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let request = ExchangeRequest {
        grant_type: field("grant_type"),
        client_id: field("client_id"),
        client_assertion_type: field("client_assertion_type"),
        client_assertion: field("client_assertion"),
    };
    match state.exchange.exchange(request, &origin).await {
        Ok(issued) => json(
            StatusCode::OK,
            &serde_json::json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
            }),
        ),
        Err(err) => oauth_response(OAuthError::from(err)),
    }
}

/// Token introspection (RFC 7662 §2): the caller, a resource server, authenticates with its own
/// bearer token and names the token to look at in the form's `token`.
async fn introspect(State(state): State<HttpEndpoints>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let authorization = Authorization::of(&parts.headers);
    let caller = match state.auth.authenticate(authorization).await {
        Ok(caller) => caller,
        Err(err) => return bearer_refusal(err, authorization.challenge()),
    };
    let form = match read_form(&parts.headers, body).await {
        Ok(form) => form,
        Err(description) => return oauth_response(OAuthError::new(400, "invalid_request", description)),
    };
    let Some(token) = form.get("token").filter(|token| !token.is_empty()) else {
        return oauth_response(OAuthError::new(400, "invalid_request", "the token parameter is missing"));
    };
    match state.introspection.introspect(&caller, token).await {
        Ok(live) => {
            let answer = super::introspection::response(live.as_deref(), state.introspection.issuer());
            json(StatusCode::OK, &super::introspection::response_json(&answer))
        }
        Err(err) => bearer_refusal(err, authorization.challenge()),
    }
}

/// Forward authorization, for proxies that ask over HTTP (nginx `auth_request`, Caddy
/// `forward_auth`, Traefik `ForwardAuth`, Envoy's `http_service`): the decision of the mesh's
/// check for the request's `Authorization`. 200 with the identity as headers, for the proxy to
/// copy onto the request; else 401 with a challenge, or 503. Nothing else of the request, its
/// method, path, forwarded headers or body, counts.
async fn forward_auth(State(state): State<HttpEndpoints>, headers: HeaderMap) -> Response {
    let (outcome, answer) = match state.check.decide(Authorization::of(&headers)).await {
        Ok(Decision::Allow { set, .. }) => ("allowed", forward_auth_allowed(&set)),
        Ok(Decision::Deny(denial @ Denial::Refused(_))) => ("denied", forward_auth_denied(denial)),
        Ok(Decision::Deny(denial @ Denial::Unavailable)) => ("unavailable", forward_auth_denied(denial)),
        Err(err) => ("error", oauth_response(OAuthError::from(err))),
    };
    state.metrics.forward_auth(outcome);
    answer
}

/// A report of leaked secrets, in the shape of GitHub's credential revocation API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeakReport {
    credentials: Vec<String>,
}

/// `POST /auth/v1/credentials/revoke` with `{"credentials": ["secret-token:…", …]}` and no
/// other credential: each secret of a live credential revokes it. 202 with `{}` whatever the
/// secrets were; 400 for a body that is not such a report, 429 past the source's rate.
async fn revoke_leaked(State(state): State<HttpEndpoints>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let origin = origin(&parts);
    let reporter = Reporter {
        origin: &origin,
        user_agent: parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default(),
    };
    let report = match state.clients.admit_report(reporter) {
        Ok(report) => report,
        Err(err) => return oauth_response(OAuthError::from(err)),
    };
    let malformed = |description: String| oauth_response(OAuthError::from(Error::invalid("credentials", description)));
    let Ok(bytes) = to_bytes(body, MAX_REPORT_BYTES).await else {
        return malformed(format!("the body is larger than {MAX_REPORT_BYTES} bytes or could not be read"));
    };
    let secrets: LeakReport = match serde_json::from_slice(&bytes) {
        Ok(secrets) => secrets,
        Err(err) => {
            return malformed(format!(
                "the body is not a report ({}); send {{\"credentials\": [\"secret-token:…\"]}} with 1 to {MAX_REPORTED_SECRETS} secrets",
                echo(&err.to_string())
            ));
        }
    };
    match report.revoke(&secrets.credentials).await {
        Ok(revoked) => {
            state.metrics.leaked_secrets_revoked(revoked);
            json(StatusCode::ACCEPTED, &serde_json::json!({}))
        }
        Err(err) => oauth_response(OAuthError::from(err)),
    }
}

/// Where a request came from: its TCP peer and its `X-Forwarded-For` values.
fn origin(parts: &http::request::Parts) -> RequestOrigin {
    let peer = protocol::peer(&parts.extensions).map(|addr| addr.ip());
    RequestOrigin::new(peer, parts.headers.get_all("x-forwarded-for").iter().map(|value| value.to_str().ok()))
}

/// The parameters of an `application/x-www-form-urlencoded` body; a parameter sent twice is
/// malformed (RFC 6749 §3.2).
async fn read_form(headers: &HeaderMap, body: Body) -> Result<HashMap<String, String>, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(format!("content type {content_type:?} is not supported; send application/x-www-form-urlencoded"));
    }
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| format!("the body is larger than {MAX_FORM_BYTES} bytes or could not be read"))?;
    let mut form = HashMap::new();
    for (name, value) in form_urlencoded::parse(&bytes) {
        if form.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(format!("parameter {name:?} is sent more than once"));
        }
    }
    Ok(form)
}

/// The published keys, which relying parties may cache for the max-age: a key is published at
/// least that long before it signs.
async fn jwks(State(state): State<HttpEndpoints>) -> Response {
    let keys = state.auth.keys();
    let mut response = json(StatusCode::OK, &keys.jwks());
    let max_age = keys.jwks_max_age();
    // Whole seconds, rounded down: a copy is never kept longer than allowed.
    let cache = match max_age.as_secs() {
        0 => "no-store".to_owned(),
        seconds => format!("public, max-age={seconds}"),
    };
    let headers = response.headers_mut();
    headers.remove(header::PRAGMA);
    if let Ok(value) = HeaderValue::try_from(cache) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    response
}
