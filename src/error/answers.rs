//! Every answer an error becomes, one per protocol, and the RFC 6750 challenge: a gRPC
//! `Status`, an OAuth2 error (RFC 6749 §5.2), a `google.rpc.Status` in JSON for the JSON API,
//! and an Envoy ext_authz denial. Nothing else in the service turns an error into an answer or
//! picks an HTTP status for one.

use std::time::Duration;

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use prost_reflect::DynamicMessage;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{Error, log_hidden, summary};
use crate::{
    domain::quote,
    pb::{
        self,
        envoy::{
            config::core::v3::{
                HeaderValue as EnvoyHeader, HeaderValueOption, header_value_option::HeaderAppendAction,
            },
            service::auth::v3::{CheckResponse, DeniedHttpResponse, check_response::HttpResponse},
            r#type::v3::{HttpStatus, StatusCode as EnvoyStatusCode},
        },
        google::rpc,
    },
    protocol::Protocol,
};

/// A request refused before it reached a handler (too large, too slow, no place free), answered
/// in the protocol it spoke.
pub fn refusal(protocol: Protocol, err: Error) -> http::Response<tonic::body::Body> {
    match protocol {
        Protocol::Grpc => Status::from(err).into_http(),
        Protocol::Json => json_refusal(err).map(tonic::body::Body::new),
        Protocol::Http => oauth_response(OAuthError::from(err)).map(tonic::body::Body::new),
    }
}

/// The HTTP status of a request refused for how it arrived, the same over every HTTP surface:
/// a body too large (413) or too slow (408), or a server with every place taken (503, which is
/// no fault of the caller's).
fn arrival_status(err: &Error) -> Option<StatusCode> {
    match err {
        Error::TooLarge(_) => Some(StatusCode::PAYLOAD_TOO_LARGE),
        Error::SlowRequest(_) => Some(StatusCode::REQUEST_TIMEOUT),
        Error::Overloaded { .. } => Some(StatusCode::SERVICE_UNAVAILABLE),
        _ => None,
    }
}

// The RFC 6750 challenge.

/// How a request refused for its bearer token is told so (RFC 6750 §3): the
/// `WWW-Authenticate` challenge and the `error` code, the same on every surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No credentials: a bare challenge, no error code (§3.1).
    NoToken,
    /// Credentials of another scheme, or no token after `Bearer`.
    NotBearer,
    /// A bearer token that is not a live access token here.
    InvalidToken,
    /// More than one `Authorization` header: which to read is not guessed.
    SeveralAuthorizations,
    /// A live token that does not grant what was asked.
    InsufficientScope,
}

impl Challenge {
    /// The `WWW-Authenticate` value.
    pub fn header(self) -> &'static str {
        match self {
            Self::NoToken => "Bearer",
            Self::NotBearer => {
                r#"Bearer error="invalid_request", error_description="the authorization header is not a bearer token""#
            }
            Self::InvalidToken => {
                r#"Bearer error="invalid_token", error_description="the access token is invalid, expired or revoked""#
            }
            Self::SeveralAuthorizations => {
                r#"Bearer error="invalid_request", error_description="more than one Authorization header""#
            }
            Self::InsufficientScope => {
                r#"Bearer error="insufficient_scope", error_description="the access token does not grant this""#
            }
        }
    }

    /// The OAuth `error` of a JSON body: `unauthorized` without credentials, which RFC 6750
    /// gives no code.
    pub fn error(self) -> &'static str {
        match self {
            Self::NoToken => "unauthorized",
            Self::NotBearer | Self::SeveralAuthorizations => "invalid_request",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// Puts the challenge on an HTTP answer.
    pub fn set_on<B>(self, response: &mut http::Response<B>) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(self.header()));
    }
}

/// What a request with more than one `Authorization` header is told, on every surface.
const SEVERAL_AUTHORIZATIONS: &str = "more than one Authorization header";

// OAuth2 errors, for the token and introspection endpoints.

/// An OAuth2 error response (RFC 6749 §5.2) for the HTTP token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub http_status: u16,
    pub error: &'static str,
    pub description: String,
    /// For `Retry-After`, in whole seconds.
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(http_status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self { http_status, error, description: description.into(), retry_after: None }
    }
}

fn slow_request(limit: Duration) -> String {
    format!("the request did not arrive whole within {}, the most this server waits", humantime::format_duration(limit))
}

fn timed_out(limit: Duration) -> String {
    format!(
        "the request was not answered within {}, the most this server allows; retry later",
        humantime::format_duration(limit)
    )
}

fn too_large(limit: usize) -> String {
    format!("the request is larger than {limit} bytes, the most this service accepts")
}

/// Whole seconds to wait, at least one: what `Retry-After` can say.
pub fn retry_seconds(retry_after: Duration) -> u64 {
    (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1)
}

impl From<Error> for OAuthError {
    fn from(err: Error) -> Self {
        log_hidden(&err);
        let retry_after = match &err {
            Error::RateLimited { retry_after, .. } | Error::Overloaded { retry_after, .. } => {
                Some(retry_seconds(*retry_after))
            }
            Error::Unavailable(_) | Error::TimedOut(_) => Some(1),
            _ => None,
        };
        let (http_status, error, description) = match err {
            Error::InvalidArgument(violations) => (400, "invalid_request", summary(&violations)),
            Error::UnsupportedGrantType(grant_type) => (
                400,
                "unsupported_grant_type",
                format!("{} is not supported; use client_credentials", quote(&grant_type)),
            ),
            Error::InvalidClient(_) | Error::Unauthenticated(_) | Error::NotFound | Error::PermissionDenied(_) => {
                (401, "invalid_client", "client authentication failed".to_owned())
            }
            Error::AmbiguousCredentials => (401, "invalid_request", SEVERAL_AUTHORIZATIONS.to_owned()),
            Error::RateLimited { message, .. } => (429, "temporarily_unavailable", message),
            Error::QuotaExceeded(message) => (429, "invalid_request", message),
            Error::FailedPrecondition(message) => (400, "invalid_request", message),
            Error::Overloaded { message, .. } => (503, "temporarily_unavailable", message),
            Error::SlowRequest(limit) => (408, "invalid_request", slow_request(limit)),
            Error::TooLarge(limit) => (413, "invalid_request", too_large(limit)),
            Error::TimedOut(limit) => (503, "temporarily_unavailable", timed_out(limit)),
            Error::Unavailable(_) => {
                (503, "temporarily_unavailable", "the service is unavailable; retry later".to_owned())
            }
            Error::Database(_) | Error::Config { .. } | Error::Internal { .. } => {
                (500, "server_error", "internal error".to_owned())
            }
        };
        Self { http_status, error, description, retry_after }
    }
}

/// An OAuth2 error as JSON, with `Retry-After` when the caller should wait before retrying.
pub fn oauth_response(err: OAuthError) -> Response {
    let status = StatusCode::from_u16(err.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": err.error, "error_description": err.description });
    let mut response = oauth_json(status, &body);
    if let Some(seconds) = err.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An introspection caller refused for its own token: 401 with the challenge (RFC 6750 §3.1),
/// or 403 `insufficient_scope` for a caller without the introspection role; any other error
/// as the token endpoint answers it.
pub fn bearer_refusal(err: Error, challenge: Challenge) -> Response {
    let (status, body) = match err {
        Error::Unauthenticated(_) => {
            log_hidden(&err);
            (StatusCode::UNAUTHORIZED, serde_json::json!({ "error": challenge.error() }))
        }
        Error::AmbiguousCredentials => {
            log_hidden(&err);
            let body = serde_json::json!({ "error": "invalid_request", "error_description": SEVERAL_AUTHORIZATIONS });
            (StatusCode::UNAUTHORIZED, body)
        }
        Error::PermissionDenied(message) => (
            StatusCode::FORBIDDEN,
            serde_json::json!({ "error": Challenge::InsufficientScope.error(), "error_description": message }),
        ),
        err => return oauth_response(OAuthError::from(err)),
    };
    let mut response = oauth_json(status, &body);
    let challenge = if status == StatusCode::FORBIDDEN { Challenge::InsufficientScope } else { challenge };
    challenge.set_on(&mut response);
    response
}

/// A JSON response that no cache keeps (RFC 6749 §5.1).
pub fn oauth_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

// gRPC.

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        log_hidden(&err);
        match err {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in &violations {
                    details.add_bad_request_violation(&violation.field, &violation.description);
                }
                Status::with_error_details(Code::InvalidArgument, summary(&violations), details)
            }
            Error::Unauthenticated(_) => Status::unauthenticated("missing or invalid bearer token"),
            Error::AmbiguousCredentials => Status::unauthenticated(SEVERAL_AUTHORIZATIONS),
            Error::UnsupportedGrantType(grant_type) => {
                let mut details = ErrorDetails::new();
                let description =
                    format!("unsupported_grant_type: {}; only client_credentials is supported", quote(&grant_type));
                details.add_bad_request_violation("grant_type", &description);
                Status::with_error_details(Code::InvalidArgument, format!("grant_type: {description}"), details)
            }
            Error::InvalidClient(_) => Status::unauthenticated("invalid_client: client authentication failed"),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::NotFound => Status::not_found("personal client not found"),
            Error::RateLimited { message, retry_after } | Error::Overloaded { message, retry_after } => {
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::QuotaExceeded(message) => Status::resource_exhausted(message),
            Error::SlowRequest(limit) => Status::deadline_exceeded(slow_request(limit)),
            Error::TooLarge(limit) => Status::resource_exhausted(too_large(limit)),
            Error::TimedOut(limit) => Status::deadline_exceeded(timed_out(limit)),
            Error::Unavailable(_) => Status::unavailable("the database is unavailable or busy; retry later"),
            Error::Database(_) | Error::Config { .. } | Error::Internal { .. } => Status::internal("internal error"),
        }
    }
}

// google.rpc.Status in JSON, for the JSON API.

/// An error as `google.rpc.Status` in JSON, `{"code", "message", "details"}` with `@type` on
/// each detail, under the HTTP status of its gRPC code; `Retry-After` when it says when to retry
/// or is `UNAVAILABLE`; and the RFC 6750 challenge for `UNAUTHENTICATED` (as `challenge` words
/// it) and `PERMISSION_DENIED`.
pub fn json_status(status: &Status, challenge: Option<Challenge>) -> Response {
    let mut response = api_json(http_status(status.code()), status_json(status));
    // For the metrics: the code of a JSON answer, as `grpc-status` is for gRPC.
    response.extensions_mut().insert(status.code());
    let retry_after = match status.get_details_retry_info().and_then(|info| info.retry_delay) {
        Some(delay) => Some(retry_seconds(delay)),
        // A database away or busy: worth another try in a moment, as the token endpoint says.
        None if status.code() == Code::Unavailable => Some(1),
        None => None,
    };
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    let challenge = match status.code() {
        Code::Unauthenticated => challenge,
        Code::PermissionDenied => Some(Challenge::InsufficientScope),
        _ => None,
    };
    if let Some(challenge) = challenge {
        challenge.set_on(&mut response);
    }
    response
}

/// A JSON API request refused before it reached a route: [`json_status`], under the HTTP
/// status that says how it arrived, where that is the reason.
pub fn json_refusal(err: Error) -> Response {
    let arrival = arrival_status(&err);
    let mut response = json_status(&Status::from(err), None);
    if let Some(http) = arrival {
        *response.status_mut() = http;
    }
    response
}

/// `{"code", "message", "details"}`, always all three; the details' own fields as the mapping
/// writes them, those at their defaults left out.
fn status_json(status: &Status) -> Vec<u8> {
    let decoded = pb::descriptor_pool()
        .ok()
        .and_then(|pool| pool.get_message_by_name("google.rpc.Status"))
        .and_then(|descriptor| DynamicMessage::decode(descriptor, status.details()).ok());
    // Each detail written by itself, in its fields' order. A detail of a type not in the pool
    // cannot be written as JSON: the status goes without it.
    let details: Vec<String> = decoded
        .as_ref()
        .and_then(|decoded| decoded.get_field_by_name("details"))
        .and_then(|details| details.as_list().map(<[prost_reflect::Value]>::to_vec))
        .unwrap_or_default()
        .iter()
        .filter_map(|detail| detail.as_message().and_then(|any| serde_json::to_string(any).ok()))
        .collect();
    let details = format!("[{}]", details.join(","));
    let message = serde_json::Value::from(status.message());
    format!(r#"{{"code":{},"message":{message},"details":{details}}}"#, status.code() as i32).into_bytes()
}

/// The HTTP status of a gRPC code, as Google's APIs and grpc-gateway map them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as nginx and grpc-gateway use it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON API answer that no cache keeps: answers carry a user's credentials, and one a secret.
pub fn api_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// The mesh's check: Envoy ext_authz denials, and the answers of forward authorization over HTTP.

/// Why the mesh's check turns a request away.
#[derive(Debug, Clone, Copy)]
pub enum Denial {
    /// For its bearer token, as the challenge says.
    Refused(Challenge),
    /// The database could not say whether the token's client is live: ask again shortly.
    Unavailable,
}

impl Denial {
    /// Why, as the answer's body says it: `invalid_token`, `unauthorized` (no token came),
    /// `invalid_request`, `insufficient_scope`; `unavailable` while the database is away.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Refused(challenge) => challenge.error(),
            Self::Unavailable => "unavailable",
        }
    }
}

/// A denial as RFC 6750 §3 words it: 401 with a challenge, `error` only when a token came; or
/// 503 with `Retry-After` while the database is away.
pub fn ext_authz_denial(denial: Denial) -> CheckResponse {
    let (code, http, challenge, body) = match denial {
        Denial::Refused(challenge) => (
            Code::Unauthenticated,
            EnvoyStatusCode::Unauthorized,
            Some(challenge),
            serde_json::json!({ "error": challenge.error() }).to_string(),
        ),
        Denial::Unavailable => (
            Code::Unavailable,
            EnvoyStatusCode::ServiceUnavailable,
            None,
            serde_json::json!({ "error": "temporarily_unavailable" }).to_string(),
        ),
    };
    let mut headers = vec![envoy_header("content-type", "application/json")];
    match challenge {
        Some(challenge) => headers.push(envoy_header("www-authenticate", challenge.header())),
        None => headers.push(envoy_header("retry-after", "1")),
    }
    CheckResponse {
        status: Some(rpc::Status { code: code as i32, message: body.clone(), details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        })),
    }
}

/// Forward authorization's answer to let a request through: 200, with the identity in `set` as
/// response headers, which the proxy copies onto the request. A name or value a header cannot
/// hold is left out; the check never produces one.
pub fn forward_auth_allowed(set: &[(String, String)]) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    for (name, value) in set {
        if let (Ok(name), Ok(value)) = (header::HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Forward authorization's denial, as RFC 6750 §3 words it: 401 with a challenge, or 503 with
/// `Retry-After` while the database is away; the same body ext_authz denies with.
pub fn forward_auth_denied(denial: Denial) -> Response {
    let (status, body) = match denial {
        Denial::Refused(challenge) => (StatusCode::UNAUTHORIZED, serde_json::json!({ "error": challenge.error() })),
        Denial::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": "temporarily_unavailable" }))
        }
    };
    let mut response = oauth_json(status, &body);
    match denial {
        Denial::Refused(challenge) => challenge.set_on(&mut response),
        Denial::Unavailable => {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
    }
    response
}

/// A header Envoy sets over any copy the request already has; `value` holds no control
/// character (the check never writes one).
pub fn envoy_header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader { key: name.to_owned(), value: value.to_owned(), raw_value: Vec::new() }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_http_status_google_gives_them() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::DeadlineExceeded), StatusCode::GATEWAY_TIMEOUT);
    }
}
