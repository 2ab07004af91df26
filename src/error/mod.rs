//! The service's one error type, by meaning, and how it is logged; [`answers`] is the only
//! place that turns it into any protocol's answer.

pub mod answers;

use std::{
    fmt::Write as _,
    num::NonZeroU32,
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use sea_orm::{
    DbErr, RuntimeErr,
    sqlx::{self, postgres::PgDatabaseError, sqlite::SqliteError},
};

pub use answers::{Challenge, OAuthError, retry_seconds};

use crate::domain::{FieldViolation, Rejection, cut};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; one violation per bad field.
    #[error("invalid argument: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// No valid credential. The reason is for the log only: the caller learns nothing.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The request carries more than one `Authorization` header. Unlike [`Error::Unauthenticated`]
    /// the caller is told what is wrong: it is the request's form, not its token.
    #[error("unauthenticated: more than one authorization header")]
    AmbiguousCredentials,
    /// A token request names a grant type other than `client_credentials`.
    #[error("unsupported grant type {0:?}")]
    UnsupportedGrantType(String),
    /// A client failed to authenticate at the token endpoint; the reason is for logs and
    /// metrics only, the caller hears `invalid_client`.
    #[error("invalid client: {0}")]
    InvalidClient(Rejection),
    /// Authenticated, but not allowed; the message is for the caller.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is valid, but the client is not in a state that allows it; the message
    /// says why and what to do instead.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No such personal client, or not one the caller may see.
    #[error("not found")]
    NotFound,
    /// The caller has used up a rate limit; it may retry after `retry_after`.
    #[error("rate limited: {message}")]
    RateLimited { message: String, retry_after: Duration },
    /// The caller holds as much of something as one caller may; retrying will not help until
    /// they give some up.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The server has as much work in flight as it takes; the caller may retry shortly.
    #[error("overloaded: {message}")]
    Overloaded { message: String, retry_after: Duration },
    /// The request did not arrive whole within the server's limit.
    #[error("the request did not arrive within {0:?}")]
    SlowRequest(Duration),
    /// The request arrived, but its answer was not ready within the server's limit.
    #[error("the request was not answered within {0:?}")]
    TimedOut(Duration),
    /// The request body is larger than the server takes, in bytes.
    #[error("the request is larger than {0} bytes")]
    TooLarge(usize),
    /// The database cannot be reached or is busy: the caller may retry.
    #[error("the database is unavailable or busy")]
    Unavailable(#[source] DbErr),
    /// The database refused a statement for a reason retrying will not fix.
    #[error("database error")]
    Database(#[source] DbErr),
    /// A configuration value that cannot work, found when it is used (a file missing or
    /// malformed): the operator's mistake, named by its flag.
    #[error("{flag}: {message}")]
    Config {
        flag: &'static str,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Anything else; the detail is logged, never returned.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation { field: field.to_owned(), description: description.into() }])
    }

    /// A configuration mistake in the value of `flag`.
    pub fn config(flag: &'static str, message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Config { flag, message: message.into(), source }
    }

    /// An internal error with what was being done.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal { message: message.into(), source: None }
    }

    /// An internal error with what was being done and what went wrong underneath.
    pub fn internal_with(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Internal { message: message.into(), source: Some(source.into()) }
    }
}

fn summary(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

/// `err` and each of its sources, as one line: `cannot open ...: unable to open database file`.
/// A source already quoted by the message before it is not repeated.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            let _ = write!(text, ": {said}");
        }
        source = cause.source();
    }
    text
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_transient_db_err(&err) {
            Self::Unavailable(err)
        } else if is_nul_in_text(&err) {
            // Every request's text is checked for NUL bytes before it is used; should one get
            // through, it is still the caller's mistake and no fault of the server's.
            if let Some(left_out) = refusal_log() {
                tracing::warn!(left_out, "text with a NUL byte reached the database: a field is not checked for one");
            }
            Self::invalid("request", "contains a NUL byte, which no text stored here can contain")
        } else {
            Self::Database(err)
        }
    }
}

/// PostgreSQL's refusal of text with a NUL byte, which its text cannot hold: SQLSTATE 22021,
/// "invalid byte sequence for encoding "UTF8": 0x00" (Rust strings are UTF-8, so a NUL is the
/// only way to it).
fn is_nul_in_text(err: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return false;
    };
    matches!(e.as_ref(), sqlx::Error::Database(db) if db.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| pg.code() == "22021"))
}

/// The error SQLite gives while another connection holds a lock it needs: SQLITE_BUSY (5) or
/// SQLITE_LOCKED (6), with their extended codes.
pub fn is_sqlite_busy(err: &DbErr) -> bool {
    let (DbErr::Conn(RuntimeErr::SqlxError(e))
    | DbErr::Exec(RuntimeErr::SqlxError(e))
    | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    matches!(e.as_ref(), sqlx::Error::Database(db) if is_sqlite_busy_code(db.as_ref()))
}

fn is_sqlite_busy_code(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.try_downcast_ref::<SqliteError>().is_some()
        && db.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Errors that say "try again": the database is unreachable, restarting or busy.
fn is_transient_db_err(err: &DbErr) -> bool {
    let sqlx_err = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx_err.as_ref() {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.try_downcast_ref::<PgDatabaseError>() {
            Some(postgres) => is_transient_sqlstate(postgres.code()),
            None => is_sqlite_busy_code(db.as_ref()),
        },
        _ => false,
    }
}

/// PostgreSQL: connection exceptions (class 08), serialisation failures and deadlocks, too many
/// connections, and the server shutting down or starting up.
fn is_transient_sqlstate(code: &str) -> bool {
    // 57014 and 55P03: a statement or lock wait cut off by the session's timeouts.
    code.starts_with("08")
        || matches!(code, "40001" | "40P01" | "53300" | "55P03" | "57014" | "57P01" | "57P02" | "57P03")
}

/// Log lines about refused requests, which anyone can cause: at most 20 a second (a burst of
/// 100), so a flood of bad requests cannot flood the log. The metrics count every refusal.
static REFUSAL_LOG: LazyLock<(DefaultDirectRateLimiter, AtomicU64)> = LazyLock::new(|| {
    let rate = Quota::per_second(NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN));
    (RateLimiter::direct(rate), AtomicU64::new(0))
});

/// Whether a refusal may be logged now; if so, how many were left out since the last one.
pub fn refusal_log() -> Option<u64> {
    let (limiter, left_out) = &*REFUSAL_LOG;
    if limiter.check().is_ok() {
        Some(left_out.swap(0, Ordering::Relaxed))
    } else {
        left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Logs what the caller is not told.
fn log_hidden(err: &Error) {
    match err {
        Error::Unauthenticated(reason) => {
            if let Some(left_out) = refusal_log() {
                tracing::info!(reason = cut(reason).as_ref(), left_out, "request rejected: unauthenticated");
            }
        }
        Error::AmbiguousCredentials => {
            if let Some(left_out) = refusal_log() {
                tracing::info!(left_out, "request rejected: more than one authorization header");
            }
        }
        Error::Unavailable(_) => tracing::warn!(error = %chain(err), "database unavailable"),
        Error::Database(_) | Error::Config { .. } | Error::Internal { .. } => {
            tracing::error!(error = %chain(err), "internal error");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_name_every_cause_once() {
        let io = std::io::Error::other("unable to open database file");
        let err = Error::internal_with("cannot open /var/lib/pc/x.db", io);
        assert_eq!(chain(&err), "cannot open /var/lib/pc/x.db: unable to open database file");
    }

    #[test]
    fn sqlstates_are_not_read_as_sqlite_codes() {
        assert!(is_transient_sqlstate("08006"));
        assert!(is_transient_sqlstate("57P01"));
        assert!(is_transient_sqlstate("57014"), "statement timeout");
        // 22021 (invalid byte sequence, a NUL in a string) ends in 5 as a number would.
        assert!(!is_transient_sqlstate("22021"));
    }
}
