//! Plain HTTP/1.1 on the gRPC port: `POST /auth/v1/token` (RFC 6749 §4.4 with RFC 7523 client
//! assertions, form-encoded), `POST /auth/v1/introspect` (RFC 7662), `GET /.well-known/jwks.json`,
//! `GET /healthz` and `GET /metrics`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::{get, post},
};

use crate::{
    auth::{Authenticator, Authorization, Introspection},
    domain::echo,
    error::{
        OAuthError,
        answers::{bearer_refusal, oauth_json as json, oauth_response},
    },
    exchange::{ExchangeRequest, RequestOrigin, TokenExchange},
    health::Health,
    metrics::{self, Metrics},
    protocol::{self, Protocol},
};

/// Token requests are a few hundred bytes; anything near this is not one.
const MAX_FORM_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone)]
struct HttpState {
    exchange: Arc<TokenExchange>,
    auth: Arc<Authenticator>,
    introspection: Introspection,
    health: Health,
    metrics: Arc<Metrics>,
}

pub fn routes(
    exchange: Arc<TokenExchange>,
    auth: Arc<Authenticator>,
    introspection: Introspection,
    health: Health,
    metrics: Arc<Metrics>,
) -> Router {
    Router::new()
        .route("/auth/v1/token", post(token))
        .route("/auth/v1/introspect", post(introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { exchange, auth, introspection, health, metrics })
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
async fn metrics_text(State(state): State<HttpState>) -> Response {
    let mut response = Response::new(Body::from(state.metrics.render()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
    response
}

/// 200 while the database answers, 503 while it does not.
async fn healthz(State(state): State<HttpState>) -> Response {
    if state.health.is_serving() {
        json(StatusCode::OK, &serde_json::json!({ "status": "SERVING" }))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "status": "NOT_SERVING" }))
    }
}

async fn token(State(state): State<HttpState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let peer = protocol::peer(&parts.extensions).map(|addr| addr.ip());
    let origin =
        RequestOrigin::new(peer, parts.headers.get_all("x-forwarded-for").iter().map(|value| value.to_str().ok()));
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
async fn introspect(State(state): State<HttpState>, request: Request) -> Response {
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
async fn jwks(State(state): State<HttpState>) -> Response {
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
