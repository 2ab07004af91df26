//! The token exchange (SPEC §6): a personal client trades a signed assertion for an access token.

pub mod assertion;
mod usage;

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};

pub use usage::UsageRecorder;

use crate::{
    auth::Authenticator,
    domain::{PersonalClient, Rejection, RequestOrigin, SourceAddress, Violations, refuse_nul, round_to_micros},
    error::Error,
    error::chain,
    metrics::Metrics,
    rate::{KeyedLimit, RateLimit},
    store::Store,
    telemetry::{self, span},
};
use assertion::ClientAssertion;

/// The only grant type served.
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
/// RFC 7523 §2.2 client authentication.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A token request as both transports carry it.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeRequest<'a> {
    pub grant_type: &'a str,
    pub client_id: &'a str,
    pub client_assertion_type: &'a str,
    pub client_assertion: &'a str,
}

/// An access token issued to a personal client.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: i64,
}

/// What the service's configuration says about the exchange.
#[derive(Debug, Clone)]
pub struct ExchangeSettings {
    /// Values an assertion's `aud` may take ([`crate::config::IssuerArgs::audiences`]).
    pub audiences: Vec<String>,
    /// Lifetime of the access tokens issued.
    pub token_ttl: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often one personal client may ask for a token.
    pub rate_per_client: RateLimit,
    /// How often one source network may ask for a token.
    pub rate_per_source: RateLimit,
}

/// Validates assertions and issues access tokens.
#[derive(Debug)]
pub struct TokenExchange {
    store: Store,
    auth: Arc<Authenticator>,
    settings: ExchangeSettings,
    usage: UsageRecorder,
    metrics: Arc<Metrics>,
    per_client: KeyedLimit<uuid::Uuid>,
    per_source: KeyedLimit<IpAddr>,
    /// Checks assertions for client ids that do not exist; it matches no client's key.
    stand_in_key: ed25519_dalek::VerifyingKey,
    /// Public keys of clients that have exchanged lately, decoded.
    decoded_keys: quick_cache::sync::Cache<[u8; 32], ed25519_dalek::VerifyingKey>,
}

/// How many decoded client keys are kept (about 200 bytes each).
const DECODED_KEYS: usize = 16_384;

impl TokenExchange {
    pub fn new(store: Store, auth: Arc<Authenticator>, settings: ExchangeSettings, metrics: Arc<Metrics>) -> Self {
        let per_client = KeyedLimit::new(settings.rate_per_client, "token requests per client");
        let per_source = KeyedLimit::new(settings.rate_per_source, "token requests per source address");
        let stand_in_key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng).verifying_key();
        Self {
            store,
            auth,
            settings,
            usage: UsageRecorder::default(),
            metrics,
            per_client,
            per_source,
            stand_in_key,
            decoded_keys: quick_cache::sync::Cache::new(DECODED_KEYS),
        }
    }

    /// Runs one exchange. Client authentication failures are logged here with their reason and
    /// come back as [`Error::InvalidClient`].
    pub async fn exchange(&self, request: ExchangeRequest<'_>, origin: &RequestOrigin) -> Result<IssuedToken, Error> {
        let result = self.run(request, origin).await;
        let outcome = match &result {
            Ok(_) => "issued",
            Err(Error::InvalidClient(reason)) => reason.as_str(),
            Err(Error::InvalidArgument(_)) => "invalid_request",
            Err(Error::UnsupportedGrantType(_)) => "unsupported_grant_type",
            Err(Error::RateLimited { .. }) => "rate_limited",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "internal",
        };
        self.metrics.token_exchange(outcome);
        if result.is_err() {
            telemetry::refused(outcome);
        }
        result
    }

    async fn run(&self, request: ExchangeRequest<'_>, origin: &RequestOrigin) -> Result<IssuedToken, Error> {
        let mut v = Violations::default();
        for (field, value) in [
            ("grant_type", request.grant_type),
            ("client_assertion_type", request.client_assertion_type),
            ("client_assertion", request.client_assertion),
        ] {
            if value.is_empty() {
                v.push(field, "is required");
            }
        }
        v.field("client_id", refuse_nul(request.client_id, "client id"));
        let source = origin.source(&self.settings.trusted_proxies);
        let result =
            if v.is_empty() { self.admit(&request, source).await } else { Err(Error::InvalidArgument(v.into_vec())) };
        let refused = match &result {
            Err(Error::InvalidClient(reason)) => Some(reason.as_str()),
            Err(Error::RateLimited { .. }) => Some("rate_limited"),
            Err(Error::InvalidArgument(_)) => Some("invalid_request"),
            _ => None,
        };
        // Anyone may send these, so they are logged at the refusal log's rate.
        if let Some(reason) = refused
            && let Some(left_out) = crate::error::refusal_log()
        {
            // RFC 7523 makes the form's client_id optional: without it, the client the assertion
            // claims to be (libraries such as authlib send none).
            let claimed = ClientAssertion::parse(request.client_assertion).ok();
            let actor = match claimed.as_ref().and_then(ClientAssertion::claimed_issuer) {
                Some(issuer) if request.client_id.is_empty() => issuer,
                _ => request.client_id,
            };
            crate::audit::exchange_refused(actor, source.map(SourceAddress::ip), reason, left_out);
        }
        result
    }

    /// A well-formed request: its grant type, the sender's allowance, then its client.
    async fn admit(&self, request: &ExchangeRequest<'_>, source: Option<SourceAddress>) -> Result<IssuedToken, Error> {
        if request.grant_type != CLIENT_CREDENTIALS {
            return Err(Error::UnsupportedGrantType(request.grant_type.to_owned()));
        }
        // Before any work: a sender without a credential can only spend its own allowance.
        self.per_source.check(&source.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), SourceAddress::sender_network))?;
        self.authenticate(request, source).await
    }

    async fn authenticate(
        &self,
        request: &ExchangeRequest<'_>,
        source: Option<SourceAddress>,
    ) -> Result<IssuedToken, Error> {
        let refuse = |reason| Err(Error::InvalidClient(reason));
        if request.client_assertion_type != JWT_BEARER {
            return refuse(Rejection::UnsupportedAssertionType);
        }
        let assertion = ClientAssertion::parse(request.client_assertion).map_err(Error::InvalidClient)?;
        let claimed = assertion.claimed_issuer().unwrap_or_default();
        let client_id = if request.client_id.is_empty() { claimed } else { request.client_id };
        if client_id.is_empty() {
            return refuse(Rejection::IssuerMismatch);
        }
        if client_id != claimed {
            return refuse(Rejection::ClientIdMismatch);
        }
        // An issuer no client id can be (the request's own client_id was checked before).
        if refuse_nul(client_id, "client id").is_err() {
            return refuse(Rejection::MalformedAssertion);
        }
        let Some(client) = self.store.find_client(client_id).await? else {
            // The same work as for a known client, so the time of the answer does not tell
            // whether a client id exists.
            let now = Utc::now().timestamp();
            let _ = span!("verify assertion")
                .in_scope(|| assertion.verify(&self.stand_in_key, client_id, &[client_id], now));
            return refuse(Rejection::UnknownClient);
        };
        let verifying_key = self.verifying_key(&client)?;
        let now = round_to_micros(Utc::now());
        let audiences: Vec<&str> = self.settings.audiences.iter().map(String::as_str).collect();
        let verified = span!("verify assertion")
            .in_scope(|| assertion.verify(&verifying_key, client_id, &audiences, now.timestamp()))
            .map_err(Error::InvalidClient)?;
        // Counted only for assertions its key signed: anyone could spend a client's allowance,
        // or learn that it exists, with junk. Junk is bounded per source address instead.
        self.per_client.check(&client.id)?;
        let lifetime_left = client.check_usable(now).map_err(Error::InvalidClient)?;
        client.allow_source_cidr.check(source).map_err(Error::InvalidClient)?;
        let spent_until = DateTime::from_timestamp(verified.spent_until, 0).unwrap_or(now);
        if !self.store.spend_one_time_value(client.id, &verified.one_time_value, spent_until).await? {
            return refuse(Rejection::Replayed);
        }

        let ttl = lifetime_left
            .and_then(|left| left.to_std().ok())
            .map_or(self.settings.token_ttl, |left| self.settings.token_ttl.min(Duration::from_secs(left.as_secs())));
        let (access_token, expires_in) =
            self.auth.mint(&client.user_id, client.token_roles(), Some(&client.client_id), ttl);
        self.usage.record(client.id, now);
        tracing::debug!(client_id = %client.client_id, user_id = %client.user_id, expires_in, "access token issued");
        Ok(IssuedToken { access_token, expires_in })
    }

    /// The client's public key as a curve point. A key never changes, but decoding it costs as
    /// much as a third of a signature check, so decoded keys are kept, by the stored bytes.
    fn verifying_key(&self, client: &PersonalClient) -> Result<ed25519_dalek::VerifyingKey, Error> {
        if let Some(key) = self.decoded_keys.get(&client.public_key) {
            return Ok(key);
        }
        let key = client.verifying_key().map_err(|e| {
            let message = format!("the stored public key of personal client {} is not an Ed25519 point", client.id);
            Error::internal_with(message, e)
        })?;
        self.decoded_keys.insert(client.public_key, key);
        Ok(key)
    }

    /// Writes the batched `last_used_at` values, forgets expired one-time values and the rate
    /// counts of quiet clients and sources.
    pub async fn maintain(&self) {
        self.per_client.forget_idle();
        self.per_source.forget_idle();
        if let Err(err) = self.usage.flush(&self.store).await {
            tracing::warn!(error = %chain(&err), "could not write last_used_at; will retry");
        }
        if let Err(err) = self.store.purge_spent_values(Utc::now()).await {
            tracing::warn!(error = %chain(&err), "could not purge spent assertion ids; will retry");
        }
    }
}
