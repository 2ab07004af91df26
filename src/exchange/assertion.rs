//! Client assertions (RFC 7523 §2.2, draft-ietf-oauth-rfc7523bis): the signed JWT a personal
//! client sends to trade for an access token.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Map, Value, json};

use crate::{
    auth::jws::{self, Header, JwsError, UnverifiedJws},
    domain::Rejection,
};

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const SKEW_SECS: i64 = 60;
/// How far ahead an assertion's `exp` may be, in seconds.
pub const MAX_LIFETIME_SECS: i64 = 300;
/// Longest `jti` or `nonce` accepted.
const MAX_ONE_TIME_VALUE: usize = 256;

impl From<JwsError> for Rejection {
    fn from(err: JwsError) -> Self {
        match err {
            JwsError::Malformed | JwsError::Claims => Self::MalformedAssertion,
            JwsError::Algorithm => Self::AlgorithmNotAllowed,
            JwsError::Critical => Self::CriticalHeader,
            JwsError::Signature => Self::BadSignature,
        }
    }
}

/// What a valid assertion leaves behind: its one-time value and until when it must stay spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub one_time_value: String,
    /// Unix seconds after which the assertion could not be used anyway.
    pub spent_until: i64,
}

/// An assertion as received: its algorithm checked, nothing else trusted yet.
#[derive(Debug)]
pub struct ClientAssertion<'a> {
    jws: UnverifiedJws<'a>,
    claims: Map<String, Value>,
}

impl ClientAssertion<'_> {
    /// What a personal client sends: an assertion for `client_id`, signed with its secret's
    /// `key`, for `audience`, valid from `now` (Unix seconds) for `lifetime_secs` (at most
    /// [`MAX_LIFETIME_SECS`]), with a fresh `jti`.
    pub fn sign(key: &SigningKey, client_id: &str, audience: &str, lifetime_secs: i64, now: i64) -> String {
        let header = Header { alg: "EdDSA".into(), typ: Some("JWT".into()), ..Header::default() };
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime_secs.clamp(1, MAX_LIFETIME_SECS),
            "jti": uuid::Uuid::now_v7().to_string(),
        });
        jws::sign(&header, &claims, key)
    }
}

impl<'a> ClientAssertion<'a> {
    /// Reads a compact JWS; refuses any algorithm but EdDSA/Ed25519 before a key is looked at.
    pub fn parse(token: &'a str) -> Result<Self, Rejection> {
        let jws = UnverifiedJws::parse(token)?;
        let claims = jws.untrusted_claims()?;
        Ok(Self { jws, claims })
    }

    /// The claimed issuer, to find the key with; not to be trusted before [`Self::verify`].
    pub fn claimed_issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Checks the signature with the client's key, then every claim, at `now` (Unix seconds).
    /// `audiences` are the values `aud` may take.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        client_id: &str,
        audiences: &[&str],
        now: i64,
    ) -> Result<VerifiedAssertion, Rejection> {
        self.jws.verify_signature(key)?;
        let claims = &self.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(client_id) {
            return Err(Rejection::IssuerMismatch);
        }
        if claims.get("sub").and_then(Value::as_str) != Some(client_id) {
            return Err(Rejection::SubjectMismatch);
        }
        let audience = match claims.get("aud") {
            Some(Value::String(aud)) => Some(aud.as_str()),
            Some(Value::Array(auds)) if auds.len() == 1 => auds[0].as_str(),
            _ => None,
        };
        if !audience.is_some_and(|aud| audiences.contains(&aud)) {
            return Err(Rejection::AudienceMismatch);
        }
        let exp = numeric_date(claims, "exp")?.ok_or(Rejection::MissingExpiry)?;
        if exp.saturating_add(SKEW_SECS) <= now {
            return Err(Rejection::AssertionExpired);
        }
        if exp > now + MAX_LIFETIME_SECS + SKEW_SECS {
            return Err(Rejection::AssertionTooLongLived);
        }
        for name in ["nbf", "iat"] {
            if numeric_date(claims, name)?.is_some_and(|at| at > now + SKEW_SECS) {
                return Err(Rejection::NotYetValid);
            }
        }
        let one_time_value = match claims.get("jti") {
            Some(Value::String(jti)) => Some(jti.as_str()),
            Some(_) => return Err(Rejection::MalformedAssertion),
            None => self.jws.header.nonce.as_deref(),
        };
        let one_time_value = one_time_value
            .filter(|value| !value.is_empty() && value.len() <= MAX_ONE_TIME_VALUE)
            .ok_or(Rejection::MissingOneTimeValue)?;
        // Kept as text, which holds no NUL byte.
        if one_time_value.contains('\0') {
            return Err(Rejection::MalformedAssertion);
        }
        Ok(VerifiedAssertion { one_time_value: one_time_value.to_owned(), spent_until: exp.saturating_add(SKEW_SECS) })
    }
}

/// A NumericDate claim (RFC 7519 §2): absent, or a JSON number of seconds.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|v| v.is_finite())
            .map(|v| Some(v.floor() as i64))
            .ok_or(Rejection::MalformedAssertion),
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use rand_core::OsRng;
    use serde_json::json;

    use super::*;
    use crate::auth::jws::sign;

    const CLIENT: &str = "brave-otter-00001@localhost/pcc";
    const NOW: i64 = 1_800_000_000;

    fn assertion(key: &SigningKey, header: Header, claims: Value) -> String {
        sign(&header, &claims, key)
    }

    fn sdk_style(key: &SigningKey) -> String {
        // As ConductorOne's Go SDK builds it: header nonce, no jti, no kid, nbf 2 min back.
        let header =
            Header { alg: "EdDSA".into(), nonce: Some("a1b2c3d4e5f60718293a4b5c6d7e8f90".into()), ..Header::default() };
        assertion(
            key,
            header,
            json!({"iss": CLIENT, "sub": CLIENT, "aud": "localhost", "exp": NOW + 120, "iat": NOW, "nbf": NOW - 120}),
        )
    }

    fn check(token: &str, key: &SigningKey) -> Result<VerifiedAssertion, Rejection> {
        ClientAssertion::parse(token)?.verify(&key.verifying_key(), CLIENT, &["localhost", "http://localhost"], NOW)
    }

    fn with_claims(key: &SigningKey, claims: Value) -> Result<VerifiedAssertion, Rejection> {
        check(&assertion(key, Header { alg: "EdDSA".into(), ..Header::default() }, claims), key)
    }

    #[test]
    fn the_go_sdk_assertion_is_accepted() {
        let key = SigningKey::generate(&mut OsRng);
        let verified = check(&sdk_style(&key), &key).unwrap();
        assert_eq!(verified.one_time_value, "a1b2c3d4e5f60718293a4b5c6d7e8f90");
        assert_eq!(verified.spent_until, NOW + 120 + SKEW_SECS);
    }

    #[test]
    fn every_claim_rule() {
        let key = SigningKey::generate(&mut OsRng);
        let base = json!({"iss": CLIENT, "sub": CLIENT, "aud": "http://localhost", "exp": NOW + 60, "jti": "j1"});
        let with = |patch: Value| {
            let mut claims = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            with_claims(&key, claims)
        };
        assert!(with(json!({})).is_ok());
        assert!(with(json!({"aud": ["localhost"]})).is_ok());
        assert_eq!(with(json!({"iss": "other@localhost/pcc"})), Err(Rejection::IssuerMismatch));
        assert_eq!(with(json!({"sub": "other@localhost/pcc"})), Err(Rejection::SubjectMismatch));
        assert_eq!(with(json!({"aud": "evil.example"})), Err(Rejection::AudienceMismatch));
        assert_eq!(with(json!({"aud": ["localhost", "evil.example"]})), Err(Rejection::AudienceMismatch));
        assert_eq!(with(json!({"aud": null})), Err(Rejection::AudienceMismatch));
        assert_eq!(with(json!({"exp": null})), Err(Rejection::MissingExpiry));
        assert_eq!(with(json!({"exp": "soon"})), Err(Rejection::MalformedAssertion));
        assert_eq!(with(json!({"exp": NOW - 61})), Err(Rejection::AssertionExpired));
        assert!(with(json!({"exp": NOW - 30})).is_ok(), "60 s of skew");
        assert_eq!(with(json!({"exp": NOW + 3600})), Err(Rejection::AssertionTooLongLived));
        assert_eq!(with(json!({"nbf": NOW + 120})), Err(Rejection::NotYetValid));
        assert_eq!(with(json!({"iat": NOW + 120})), Err(Rejection::NotYetValid));
        assert!(with(json!({"iat": NOW + 30, "nbf": NOW + 30})).is_ok());
        assert_eq!(with(json!({"jti": null})), Err(Rejection::MissingOneTimeValue));
        assert_eq!(with(json!({"jti": ""})), Err(Rejection::MissingOneTimeValue));
        assert_eq!(with(json!({"jti": 7})), Err(Rejection::MalformedAssertion));
        assert_eq!(with(json!({"jti": "j\u{0}1"})), Err(Rejection::MalformedAssertion));
    }

    #[test]
    fn what_a_client_signs_verifies() {
        let key = SigningKey::generate(&mut OsRng);
        let token = ClientAssertion::sign(&key, CLIENT, "localhost", 60, NOW);
        let verified = check(&token, &key).unwrap();
        assert_eq!(verified.spent_until, NOW + 60 + SKEW_SECS);
        let long = ClientAssertion::sign(&key, CLIENT, "localhost", 3600, NOW);
        assert!(check(&long, &key).is_ok(), "a lifetime past the limit is cut to it");
    }

    #[test]
    fn signatures_and_algorithms() {
        let key = SigningKey::generate(&mut OsRng);
        let other = SigningKey::generate(&mut OsRng);
        let token = sdk_style(&other);
        assert_eq!(check(&token, &key), Err(Rejection::BadSignature));
        let ed25519 = assertion(
            &key,
            Header { alg: "Ed25519".into(), nonce: Some("n".into()), ..Header::default() },
            json!({"iss": CLIENT, "sub": CLIENT, "aud": "localhost", "exp": NOW + 60}),
        );
        assert!(check(&ed25519, &key).is_ok(), "RFC 9864 name");
        let hs = assertion(&key, Header { alg: "HS256".into(), ..Header::default() }, json!({}));
        assert_eq!(check(&hs, &key), Err(Rejection::AlgorithmNotAllowed));
    }
}
