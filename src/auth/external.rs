//! User tokens of external identity providers (`--trusted-jwks ISSUER=PATH_OR_URL`), verified
//! against each provider's JWK Set: EdDSA, ES256 and RS256, the key found by `kid`. A JWKS at a
//! URL is fetched at start, re-fetched when a token names a `kid` it does not hold (at most once
//! per [`REFETCH_INTERVAL`]) and every [`MAX_AGE`].

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{Jwk, JwkSet},
};
use serde_json::Value;

use crate::{config::TrustedJwks, domain::Principal};

/// Least time between two fetches of one provider's JWKS.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// A JWKS fetched from a URL is fetched again after this long, even without an unknown `kid`.
const MAX_AGE: Duration = Duration::from_secs(600);
/// Longest a JWKS fetch may take, and the largest document accepted.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Algorithms accepted from external providers.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// What an external token says about its bearer, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalClaims {
    pub subject: String,
    pub roles: Vec<String>,
}

#[derive(Debug)]
struct KeySet {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
}

/// One trusted provider and its cached keys.
#[derive(Debug)]
pub struct TrustedIssuer {
    issuer: String,
    source: String,
    keys: RwLock<KeySet>,
    refetch: tokio::sync::Mutex<Option<Instant>>,
}

/// Every trusted provider, by issuer.
#[derive(Debug, Default)]
pub struct ExternalIssuers {
    issuers: HashMap<String, TrustedIssuer>,
    /// Values `aud` must include one of.
    audiences: Vec<String>,
    roles_claim: String,
    http: Option<reqwest::Client>,
}

impl ExternalIssuers {
    /// Loads every provider's JWKS; a URL that cannot be fetched now is tried again on first use.
    pub async fn load(trusted: &[TrustedJwks], audiences: Vec<String>, roles_claim: String) -> Result<Self, String> {
        let http = if trusted.iter().any(|t| is_url(&t.source)) {
            Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    // A redirect could point anywhere, an address inside the network included;
                    // the configured URL is the only one trusted.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?,
            )
        } else {
            None
        };
        let mut issuers = HashMap::new();
        for entry in trusted {
            let issuer = TrustedIssuer {
                issuer: entry.issuer.clone(),
                source: entry.source.clone(),
                keys: RwLock::new(KeySet { keys: Vec::new(), fetched: None }),
                refetch: tokio::sync::Mutex::new(None),
            };
            match fetch(http.as_ref(), &entry.source).await {
                Ok(keys) => issuer.replace(keys),
                Err(err) if is_url(&entry.source) => {
                    tracing::warn!(issuer = %entry.issuer, error = %err, "JWKS not fetched; will retry on first use");
                }
                Err(err) => return Err(format!("{entry}: {err}")),
            }
            issuers.insert(entry.issuer.clone(), issuer);
        }
        Ok(Self { issuers, audiences, roles_claim, http })
    }

    pub fn trusts(&self, issuer: &str) -> bool {
        self.issuers.contains_key(issuer)
    }

    /// Verifies `token` from `issuer`: algorithm, signature, `iss`, `aud`, `exp`, `nbf`.
    pub async fn verify(&self, issuer: &str, token: &str) -> Result<ExternalClaims, String> {
        let trusted = self.issuers.get(issuer).ok_or("untrusted issuer")?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!("algorithm {:?} not accepted from external issuers", header.alg));
        }
        let key = match trusted.key(header.kid.as_deref(), header.alg) {
            Some(key) => key,
            None => {
                trusted.refetch(self.http.as_ref()).await;
                trusted.key(header.kid.as_deref(), header.alg).ok_or("no key in the issuer's JWKS matches the token")?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 60;
        validation.validate_nbf = true;
        let claims =
            jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| format!("token refused: {e}"))?.claims;
        let subject =
            claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or("token has no subject")?;
        // It becomes a user id: an owner of credentials, and a header behind the mesh.
        Principal::check_user_id(subject).map_err(|why| format!("the subject {why}"))?;
        Ok(ExternalClaims { subject: subject.to_owned(), roles: roles_at(&claims, &self.roles_claim) })
    }
}

impl TrustedIssuer {
    fn replace(&self, keys: Vec<(Option<String>, Algorithm, DecodingKey)>) {
        let mut set = self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *set = KeySet { keys, fetched: Some(Instant::now()) };
    }

    /// The key for `kid` (or, for a token without one, the only key of its algorithm), unless
    /// a JWKS from a URL has grown too old.
    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let set = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if is_url(&self.source) && set.fetched.is_none_or(|at| at.elapsed() > MAX_AGE) {
            return None;
        }
        let mut candidates = set.keys.iter().filter(|(key_kid, key_alg, _)| {
            *key_alg == alg
                && match kid {
                    Some(kid) => key_kid.as_deref() == Some(kid),
                    None => true,
                }
        });
        match (candidates.next(), candidates.next()) {
            (Some((_, _, key)), None) => Some(key.clone()),
            _ => None,
        }
    }

    /// Fetches the JWKS again, at most once per [`REFETCH_INTERVAL`]; callers arriving during
    /// a fetch wait for it.
    async fn refetch(&self, http: Option<&reqwest::Client>) {
        let mut last = self.refetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        match fetch(http, &self.source).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "JWKS refreshed");
                self.replace(keys);
            }
            Err(err) => tracing::warn!(issuer = %self.issuer, error = %err, "JWKS refresh failed"),
        }
    }
}

fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

/// Reads a JWKS from a file or a URL; keys of other types or algorithms are skipped.
async fn fetch(
    http: Option<&reqwest::Client>,
    source: &str,
) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let body = match http.filter(|_| is_url(source)) {
        Some(client) => {
            let mut response = client.get(source).send().await.map_err(|e| format!("fetching {source}: {e}"))?;
            if response.status().is_redirection() {
                return Err(format!("fetching {source}: HTTP {}; redirects are not followed", response.status()));
            }
            if !response.status().is_success() {
                return Err(format!("fetching {source}: HTTP {}", response.status()));
            }
            let too_large = || format!("{source} is larger than {MAX_JWKS_BYTES} bytes, the most accepted");
            if response.content_length().is_some_and(|length| length > MAX_JWKS_BYTES as u64) {
                return Err(too_large());
            }
            // Read as it arrives, and stop at the bound rather than buffer whatever is sent.
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading {source}: {e}"))? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            body
        }
        None => tokio::fs::read(source).await.map_err(|e| format!("reading {source}: {e}"))?,
    };
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{source} is not a JWK Set: {e}"))?;
    Ok(set.keys.iter().filter_map(usable_key).collect())
}

fn usable_key(jwk: &Jwk) -> Option<(Option<String>, Algorithm, DecodingKey)> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    let alg = match (&jwk.algorithm, &jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKeyPair(okp), _) if okp.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        (AlgorithmParameters::EllipticCurve(ec), _) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((jwk.common.key_id.clone(), alg, key))
}

/// Roles under `claim`, a dotted path (`realm_access.roles`): an array of strings, or one
/// string of space-separated roles.
fn roles_at(claims: &Value, claim: &str) -> Vec<String> {
    let found = claim.split('.').try_fold(claims, |value, part| value.get(part));
    match found {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_dotted_path() {
        let claims = serde_json::json!({"roles": ["a"], "realm_access": {"roles": ["b", "c"]}, "scope": "x y"});
        assert_eq!(roles_at(&claims, "roles"), ["a"]);
        assert_eq!(roles_at(&claims, "realm_access.roles"), ["b", "c"]);
        assert_eq!(roles_at(&claims, "scope"), ["x", "y"]);
        assert!(roles_at(&claims, "missing.path").is_empty());
    }
}
