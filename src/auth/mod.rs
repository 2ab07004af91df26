//! Who is calling: bearer tokens become a [`Principal`], put into the request's extensions by
//! [`authenticate`] before any handler runs; and the access tokens this service mints.

mod cache;
pub mod external;
mod introspection;
pub mod jws;
pub mod key_admin;
mod keys;
pub mod vault;

use std::{sync::Arc, time::Duration};

use axum::{extract::Request, middleware::Next, response::Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::{Instrument, Span, field::Empty};
use uuid::Uuid;

pub use cache::VerifiedClaims;
pub use introspection::Introspection;
pub use keys::SigningKeys;
pub use vault::KeyVault;

use crate::{
    clients::ClientStatus,
    config::{IssuerArgs, KeyArgs, check_token_ttl},
    domain::{ClientId, Principal, RoleSet},
    error::{Challenge, Error},
    grpc_methods::GrpcMethods,
    store::{DatabaseUrl, Store},
    telemetry::span,
};
use cache::VerifiedTokens;
use external::ExternalIssuers;
use jws::UnverifiedJws;

/// The longest bearer token looked at: far above any this service or an identity provider
/// issues (a few hundred bytes; a few KiB with many group claims).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Claims of the access tokens this service issues: RFC 9068's, and `roles`.
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
    /// The roles again, space-separated, as RFC 9068 §2.2.3 and introspection give them;
    /// absent when there are none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The personal client that obtained the token (RFC 9068 §2.2); absent on a user's own.
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

    fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(aud) => vec![aud.clone()],
            Self::Many(auds) => auds.clone(),
        }
    }
}

/// What a bearer token turned out to be.
enum Checked {
    /// A live access token of this service.
    Own(Arc<VerifiedClaims>),
    /// A token that names another issuer; nothing about it is checked yet.
    Foreign(String),
}

/// Verifies bearer tokens and mints access tokens with the service's keys.
#[derive(Debug)]
pub struct Authenticator {
    keys: SigningKeys,
    issuer: String,
    /// Whether the personal client a token was obtained by is still usable.
    clients: ClientStatus,
    external: ExternalIssuers,
    verified: VerifiedTokens,
}

impl Authenticator {
    pub fn new(keys: SigningKeys, issuer: String, clients: ClientStatus, external: ExternalIssuers) -> Self {
        Self { keys, issuer, clients, external, verified: VerifiedTokens::default() }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Mints an access token; returns it with its lifetime in seconds.
    pub fn mint(&self, user_id: &str, roles: &RoleSet, client_id: Option<&ClientId>, ttl: Duration) -> (String, i64) {
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
            scope: roles.to_strings().join(" "),
            client_id: client_id.map(|id| id.as_str().to_owned()),
        };
        (self.keys.sign_access_token(&claims), ttl)
    }

    /// Turns the request's `Authorization` into the caller, or `UNAUTHENTICATED`.
    pub async fn authenticate(&self, authorization: Authorization<'_>) -> Result<Principal, Error> {
        let token = authorization.bearer()?;
        let claims = match self.check(token).await? {
            Checked::Own(claims) => claims,
            Checked::Foreign(issuer) => return self.authenticate_external(&issuer, token).await,
        };
        Ok(Principal {
            user_id: claims.sub.clone(),
            roles: claims.roles.clone(),
            client_id: claims.client_id.clone().map(ClientId::from_stored),
        })
    }

    /// The claims of `token` if it is an active access token of this service now, by the same
    /// rules as [`Self::authenticate`]; `None` if it is not (a token of any other issuer is not
    /// one). A database that cannot answer is an error, not a verdict: the caller should ask
    /// again, not turn a user away.
    pub async fn active(&self, token: &str) -> Result<Option<Arc<VerifiedClaims>>, Error> {
        match self.check(token).await {
            Ok(Checked::Own(claims)) => Ok(Some(claims)),
            Ok(Checked::Foreign(_)) | Err(Error::Unauthenticated(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// [`Self::check_token`] in a span of its own: the bearer check, and whether the token was
    /// verified already.
    async fn check(&self, token: &str) -> Result<Checked, Error> {
        let span = span!("bearer check", personal_clients.token.cached = Empty);
        self.check_token(token, &span).instrument(span.clone()).await
    }

    async fn check_token(&self, token: &str, span: &Span) -> Result<Checked, Error> {
        // Bounded before anything in it is decoded: over HTTP/1.1 a header is not held to
        // --max-header-bytes as HTTP/2 holds it.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(denied(&format!("token longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let key = VerifiedTokens::key(token);
        let cached = self.verified.get(&key);
        span.record("personal_clients.token.cached", cached.is_some());
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claimed_issuer = untrusted_issuer(token).ok_or_else(|| denied("token has no readable issuer"))?;
                if claimed_issuer != self.issuer {
                    return Ok(Checked::Foreign(claimed_issuer));
                }
                let claims = Arc::new(self.verify_own(token).await?);
                self.verified.insert(key, claims.clone());
                claims
            }
        };
        let now = Utc::now();
        if claims.exp <= now.timestamp() {
            self.verified.remove(&key);
            return Err(denied("token expired"));
        }
        if !self.keys.publishes(&claims.kid) {
            self.verified.remove(&key);
            return Err(denied("token signed by a withdrawn key"));
        }
        // A revoked credential stops working at once, including the tokens it already obtained:
        // asked on every call, whichever replica revoked it.
        if let Some(client_id) = &claims.client_id
            && !self.clients.is_usable(client_id, &claims.sub, now).await?
        {
            return Err(denied("token of a revoked, expired or unknown personal client"));
        }
        Ok(Checked::Own(claims))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims of an access token of this service, from its signature and the rules that
    /// do not depend on time or on the database.
    async fn verify_own(&self, token: &str) -> Result<VerifiedClaims, Error> {
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
        if claims.sub.is_empty() {
            return Err(denied("token has no subject"));
        }
        Ok(VerifiedClaims {
            roles: RoleSet::from_claims(&claims.roles),
            aud: claims.aud.to_vec(),
            sub: claims.sub,
            client_id: claims.client_id,
            exp: claims.exp,
            iat: claims.iat,
            jti: claims.jti,
            kid,
        })
    }

    /// A token of a trusted external issuer, checked against its JWKS.
    async fn authenticate_external(&self, issuer: &str, token: &str) -> Result<Principal, Error> {
        if !self.external.trusts(issuer) {
            return Err(denied("token from an untrusted issuer"));
        }
        let claims = self.external.verify(issuer, token).await.map_err(|reason| denied(&reason))?;
        Ok(Principal {
            user_id: Principal::external_user_id(issuer, &claims.subject),
            roles: RoleSet::from_claims(&claims.roles),
            client_id: None,
        })
    }
}

/// An access token for `user` with `roles`, signed with the service's current key: the
/// bootstrap path for operators and scripts (`mint-token`). The database must be one a server
/// has set up: a token from keys no server uses would be refused everywhere.
pub async fn mint_token(
    database: &DatabaseUrl,
    keys: &KeyArgs,
    issuer: &IssuerArgs,
    user: &str,
    roles: &RoleSet,
    ttl: Duration,
) -> Result<String, Error> {
    check_token_ttl("--ttl", ttl, &keys.schedule)?;
    Principal::check_user_id(user).map_err(|message| Error::config("--user", message, None))?;
    let vault = KeyVault::from_args(keys)?;
    let store = Store::open_set_up(database).await?;
    let signing = SigningKeys::load(store.clone(), vault, keys.schedule).await?;
    let auth = Authenticator::new(signing, issuer.issuer(), ClientStatus::new(store), ExternalIssuers::default());
    Ok(auth.mint(user, roles, None, ttl).0)
}

fn denied(reason: &str) -> Error {
    Error::Unauthenticated(reason.to_owned())
}

/// What a request's `Authorization` headers hold, read the one way every surface reads them:
/// the gRPC gate, the JSON API, introspection over HTTP and the mesh's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// None was sent.
    Absent,
    /// One, as text: a value that is not visible ASCII, which no bearer token is, reads as "".
    One(&'a str),
    /// More than one. Which of them a service behind would read is anyone's guess, so none is
    /// taken: the request is refused.
    Several,
}

impl<'a> Authorization<'a> {
    /// The `Authorization` headers of an HTTP request (gRPC metadata included).
    pub fn of(headers: &'a http::HeaderMap) -> Self {
        Self::of_copies(headers.get_all(http::header::AUTHORIZATION).iter().map(|value| value.to_str().unwrap_or("")))
    }

    /// Each copy of the header a request carried, in order.
    pub fn of_copies(mut copies: impl Iterator<Item = &'a str>) -> Self {
        match (copies.next(), copies.next()) {
            (None, _) => Self::Absent,
            (Some(value), None) => Self::One(value),
            (Some(_), Some(_)) => Self::Several,
        }
    }

    /// One value in which a proxy has joined every copy with commas, as HTTP allows for repeated
    /// headers: a bearer token never holds a comma, so a bearer value with one is several.
    pub fn of_joined(value: &'a str) -> Self {
        match Self::One(value).bearer() {
            Ok(token) if token.contains(',') => Self::Several,
            _ => Self::One(value),
        }
    }

    /// The bearer token: `Bearer <token>`, the scheme in any case.
    pub fn bearer(self) -> Result<&'a str, Error> {
        let value = match self {
            Self::Absent => return Err(denied("no authorization header")),
            Self::Several => return Err(Error::AmbiguousCredentials),
            Self::One(value) => value,
        };
        match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
            _ => Err(denied("authorization is not a bearer token")),
        }
    }

    /// How a request with these headers, refused as unauthenticated, is told so.
    pub fn challenge(self) -> Challenge {
        match self {
            Self::Absent => Challenge::NoToken,
            Self::Several => Challenge::SeveralAuthorizations,
            Self::One(_) if self.bearer().is_err() => Challenge::NotBearer,
            Self::One(_) => Challenge::InvalidToken,
        }
    }
}

/// The gate in front of every gRPC service: which methods anyone may call, and who the caller
/// of the others is.
#[derive(Debug, Clone)]
pub struct Gate {
    auth: Arc<Authenticator>,
    methods: GrpcMethods,
    public_services: Arc<[&'static str]>,
}

impl Gate {
    /// Every method of every service not named in `public_services` requires a bearer token, so
    /// a service or method added later is protected unless it is deliberately made public.
    pub fn new(auth: Arc<Authenticator>, methods: GrpcMethods, public_services: &[&'static str]) -> Self {
        Self { auth, methods, public_services: public_services.into() }
    }

    /// The caller of a call of `path` with `headers`: `None` for a method anyone may call, or
    /// `UNAUTHENTICATED`.
    pub async fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Principal>, Error> {
        if !self.requires_token(path) {
            return Ok(None);
        }
        self.auth.authenticate(Authorization::of(headers)).await.map(Some)
    }

    /// Whether a call of `path` needs a bearer token: a method served here, of a service that is
    /// not public. A path no method answers goes on without one, to be told UNIMPLEMENTED.
    fn requires_token(&self, path: &str) -> bool {
        let service = path.strip_prefix('/').and_then(|rest| rest.split('/').next()).unwrap_or_default();
        self.methods.contains(path) && !self.public_services.contains(&service)
    }
}

/// Middleware for the gRPC services: for a method that needs a token, the caller's
/// [`Principal`] goes into the request's extensions, or the call ends here with
/// `UNAUTHENTICATED`. Handlers read the principal and cannot forget to check it: a request
/// without one never reaches them.
pub async fn require_bearer(
    axum::extract::State(gate): axum::extract::State<Gate>,
    mut request: Request,
    next: Next,
) -> Response {
    match gate.check(request.uri().path(), request.headers()).await {
        Ok(None) => next.run(request).await,
        Ok(Some(principal)) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => tonic::Status::from(err).into_http(),
    }
}

/// The `iss` of a JWT before anything about it is trusted, to pick the keys to check it with.
fn untrusted_issuer(token: &str) -> Option<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}
