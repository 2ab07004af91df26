//! Who is calling: bearer tokens become a [`Principal`].

pub mod assertion;
pub mod external;
pub mod jws;
mod keys;

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use keys::SigningKeys;

use crate::{Error, domain::RoleSet, store::Store};
use external::ExternalIssuers;
use jws::UnverifiedJws;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: RoleSet,
    /// Set when the token was issued to a personal client rather than to the user directly.
    pub client_id: Option<String>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.as_str() == role)
    }

    /// Tokens of personal clients may read personal clients but never change them.
    pub fn ensure_may_manage_clients(&self) -> Result<(), Error> {
        match &self.client_id {
            Some(client_id) => Err(Error::PermissionDenied(format!(
                "a token issued to personal client {client_id} may read personal clients but not create, update or delete them; use a user token"
            ))),
            None => Ok(()),
        }
    }
}

/// Claims of the access tokens this service issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// `aud`: a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, value: &str) -> bool {
        match self {
            Self::One(aud) => aud == value,
            Self::Many(auds) => auds.iter().any(|aud| aud == value),
        }
    }
}

/// Verifies bearer tokens and mints access tokens with the service's keys.
#[derive(Debug)]
pub struct Authenticator {
    keys: SigningKeys,
    issuer: String,
    store: Store,
    external: ExternalIssuers,
}

impl Authenticator {
    pub fn new(keys: SigningKeys, issuer: String, store: Store, external: ExternalIssuers) -> Self {
        Self { keys, issuer, store, external }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Mints an access token; returns it with its lifetime in seconds.
    pub fn mint(&self, user_id: &str, roles: &RoleSet, client_id: Option<&str>, ttl: Duration) -> (String, i64) {
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2).max(1);
        let claims = AccessTokenClaims {
            iss: self.issuer.clone(),
            sub: user_id.to_owned(),
            aud: Audience::One(self.issuer.clone()),
            iat: now,
            exp: now.saturating_add(ttl),
            jti: Uuid::now_v7().to_string(),
            roles: roles.to_strings(),
            client_id: client_id.map(str::to_owned),
        };
        (self.keys.sign(&claims), ttl)
    }

    /// Turns the `authorization` header value into the caller, or `UNAUTHENTICATED`.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        let denied = |reason: &str| Error::Unauthenticated(reason.to_owned());
        let header = authorization.ok_or_else(|| denied("no authorization header"))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(denied("authorization is not a bearer token")),
        };
        let claimed_issuer = untrusted_issuer(token).ok_or_else(|| denied("token has no readable issuer"))?;
        if claimed_issuer != self.issuer {
            if !self.external.trusts(&claimed_issuer) {
                return Err(denied("token from an untrusted issuer"));
            }
            let claims = self.external.verify(&claimed_issuer, token).await.map_err(|reason| denied(&reason))?;
            return Ok(Principal {
                user_id: claims.subject,
                roles: RoleSet::from_claims(&claims.roles),
                client_id: None,
            });
        }
        let jws = UnverifiedJws::parse(token).map_err(|e| denied(&e.to_string()))?;
        let kid = jws.header.kid.clone().ok_or_else(|| denied("token has no kid"))?;
        let key = self.keys.verifying_key(&kid).await?.ok_or_else(|| denied("token signed by an unknown key"))?;
        let claims: AccessTokenClaims = jws.verify(&key).map_err(|e| denied(&e.to_string()))?;
        if claims.iss != self.issuer {
            return Err(denied("token from another issuer"));
        }
        if !claims.aud.contains(&self.issuer) {
            return Err(denied("token for another audience"));
        }
        if claims.exp <= Utc::now().timestamp() {
            return Err(denied("token expired"));
        }
        if claims.sub.is_empty() {
            return Err(denied("token has no subject"));
        }
        // A revoked credential stops working at once, including the tokens it already obtained.
        if let Some(client_id) = &claims.client_id {
            let now = Utc::now();
            let live = self.store.find_credential(client_id).await?.is_some_and(|credential| {
                let client = credential.client;
                client.deleted_at.is_none()
                    && client.user_id == claims.sub
                    && client.expires_at.is_none_or(|at| at > now)
            });
            if !live {
                return Err(denied("token of a revoked, expired or unknown personal client"));
            }
        }
        Ok(Principal { user_id: claims.sub, roles: RoleSet::from_claims(&claims.roles), client_id: claims.client_id })
    }
}

/// The `iss` of a JWT before anything about it is trusted, to pick the keys to check it with.
fn untrusted_issuer(token: &str) -> Option<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}
