//! Why the token exchange refused a client: the reason logs, metrics and audit events name.

use std::fmt;

/// Why a client failed to authenticate: for the log and metrics, never for the caller, who only
/// ever hears `invalid_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    UnsupportedAssertionType,
    MalformedAssertion,
    AlgorithmNotAllowed,
    CriticalHeader,
    UnknownClient,
    ClientIdMismatch,
    BadSignature,
    IssuerMismatch,
    SubjectMismatch,
    AudienceMismatch,
    MissingExpiry,
    AssertionExpired,
    AssertionTooLongLived,
    NotYetValid,
    MissingOneTimeValue,
    Replayed,
    ClientRevoked,
    ClientExpired,
    SourceNotAllowed,
    UnknownSource,
}

impl Rejection {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedAssertionType => "unsupported_assertion_type",
            Self::MalformedAssertion => "malformed_assertion",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::CriticalHeader => "critical_header",
            Self::UnknownClient => "unknown_client",
            Self::ClientIdMismatch => "client_id_mismatch",
            Self::BadSignature => "bad_signature",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::SubjectMismatch => "subject_mismatch",
            Self::AudienceMismatch => "audience_mismatch",
            Self::MissingExpiry => "missing_exp",
            Self::AssertionExpired => "assertion_expired",
            Self::AssertionTooLongLived => "assertion_too_long_lived",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingOneTimeValue => "missing_one_time_value",
            Self::Replayed => "replayed",
            Self::ClientRevoked => "client_revoked",
            Self::ClientExpired => "client_expired",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::UnknownSource => "unknown_source",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
