//! The service's one error type, by meaning, and the only place that turns it into a
//! `tonic::Status`.

use sea_orm::{DbErr, RuntimeErr, sqlx};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{auth::assertion::Rejection, domain::FieldViolation};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; one violation per bad field.
    #[error("invalid argument: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    /// No valid credential. The reason is for the log only: the caller learns nothing.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A token request names a grant type other than `client_credentials`.
    #[error("unsupported grant type")]
    UnsupportedGrantType(String),
    /// A client failed to authenticate at the token endpoint; the reason is for logs and
    /// metrics only, the caller hears `invalid_client`.
    #[error("invalid client: {0}")]
    InvalidClient(Rejection),
    /// Authenticated, but not allowed; the message is for the caller.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No such personal client, or not one the caller may see.
    #[error("not found")]
    NotFound,
    /// The database cannot be reached or is busy: the caller may retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the detail is logged, never returned.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation { field: field.to_owned(), description: description.into() }])
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_transient(&err) { Self::Unavailable(err.to_string()) } else { Self::Internal(err.to_string()) }
    }
}

/// Errors that say "try again": the database is unreachable, restarting or busy.
fn is_transient(err: &DbErr) -> bool {
    let sqlx_err = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx_err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_code(&code)),
        _ => false,
    }
}

/// SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes. PostgreSQL:
/// connection exceptions (class 08), serialisation failures and deadlocks, too many
/// connections, and the server shutting down or starting up.
fn is_transient_code(code: &str) -> bool {
    let sqlite_primary = code.parse::<i32>().ok().map(|c| c & 0xff);
    matches!(sqlite_primary, Some(5 | 6))
        || code.starts_with("08")
        || matches!(code, "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03")
}

/// An OAuth2 error response (RFC 6749 §5.2) for the HTTP token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub http_status: u16,
    pub error: &'static str,
    pub description: String,
}

impl From<Error> for OAuthError {
    fn from(err: Error) -> Self {
        let (http_status, error, description) = match err {
            Error::InvalidArgument(violations) => (
                400,
                "invalid_request",
                violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "),
            ),
            Error::UnsupportedGrantType(grant_type) => {
                (400, "unsupported_grant_type", format!("{grant_type:?} is not supported; use client_credentials"))
            }
            Error::InvalidClient(_) | Error::Unauthenticated(_) | Error::NotFound | Error::PermissionDenied(_) => {
                (401, "invalid_client", "client authentication failed".to_owned())
            }
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                (503, "temporarily_unavailable", "the service is unavailable; retry later".to_owned())
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (500, "server_error", "internal error".to_owned())
            }
        };
        Self { http_status, error, description }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in &violations {
                    details.add_bad_request_violation(&violation.field, &violation.description);
                }
                let summary =
                    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
                Status::with_error_details(Code::InvalidArgument, summary, details)
            }
            Error::Unauthenticated(reason) => {
                tracing::info!(%reason, "request rejected: unauthenticated");
                Status::unauthenticated("missing or invalid bearer token")
            }
            Error::UnsupportedGrantType(grant_type) => {
                let mut details = ErrorDetails::new();
                let description =
                    format!("unsupported_grant_type: {grant_type:?}; only client_credentials is supported");
                details.add_bad_request_violation("grant_type", &description);
                Status::with_error_details(Code::InvalidArgument, format!("grant_type: {description}"), details)
            }
            Error::InvalidClient(_) => Status::unauthenticated("invalid_client: client authentication failed"),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::NotFound => Status::not_found("personal client not found"),
            Error::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Status::unavailable("the database is unavailable or busy; retry later")
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
