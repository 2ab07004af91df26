//! A personal client as the service knows it, what Create stores, and what Update changes.

use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use super::{CidrList, ClientId, DisplayName, Rejection, RoleSet};

/// A personal client credential as the service knows it: the typed read model every rule
/// works on, values parsed once when read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalClient {
    /// UUID v7: ordering by id is ordering by creation.
    pub id: Uuid,
    pub client_id: ClientId,
    pub user_id: String,
    pub display_name: DisplayName,
    pub allow_source_cidr: CidrList,
    pub scoped_roles: RoleSet,
    /// The roles the owner had when creating it: what its tokens carry when it has no scoped roles.
    pub owner_roles: RoleSet,
    /// The public half of the key pair whose private half is the client's secret, as stored:
    /// only the token exchange needs it as a curve point.
    pub public_key: [u8; 32],
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl PersonalClient {
    /// The key the client's assertions are checked with.
    pub fn verifying_key(&self) -> Result<VerifyingKey, ed25519_dalek::SignatureError> {
        VerifyingKey::from_bytes(&self.public_key)
    }

    /// Whether it may still be used at `now`: not revoked, and not expired or within a second
    /// of it (a token lasts at least a second). Returns how long it has left, if it expires.
    pub fn check_usable(&self, now: DateTime<Utc>) -> Result<Option<TimeDelta>, Rejection> {
        if self.deleted_at.is_some() {
            return Err(Rejection::ClientRevoked);
        }
        if expired(self.expires_at, now) {
            return Err(Rejection::ClientExpired);
        }
        Ok(self.expires_at.map(|at| at - now))
    }

    /// The roles its access tokens carry: its scoped roles, or, when it has none, the roles its
    /// owner had when creating it.
    pub fn token_roles(&self) -> &RoleSet {
        if self.scoped_roles.is_empty() { &self.owner_roles } else { &self.scoped_roles }
    }

    /// The roles its access tokens would carry once `changes` are made, by the same rule as
    /// [`Self::token_roles`].
    pub fn token_roles_after<'a>(&'a self, changes: &'a ClientChanges) -> &'a RoleSet {
        let scoped = changes.scoped_roles.as_ref().unwrap_or(&self.scoped_roles);
        let owner = changes.owner_roles.as_ref().unwrap_or(&self.owner_roles);
        if scoped.is_empty() { owner } else { scoped }
    }

    /// Whether `changes` may be made at `now`: not a new expiry for a credential that has
    /// expired. Its expiry is a bound its owner and auditors rely on, and a secret of it that
    /// leaked must stay dead, so an expired credential is replaced, never renewed.
    pub fn check_renewal(&self, changes: &ClientChanges, now: DateTime<Utc>) -> Result<(), String> {
        match self.expires_at {
            Some(at) if at <= now && changes.expires_at.is_some() => Err(format!(
                "it expired on {}; an expired credential cannot be renewed, create a new one",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )),
            _ => Ok(()),
        }
    }
}

/// What Create stores: validated fields, the owner and the public half of the key pair.
#[derive(Debug, Clone)]
pub struct NewPersonalClient {
    pub user_id: String,
    pub display_name: DisplayName,
    pub allow_source_cidr: CidrList,
    pub scoped_roles: RoleSet,
    /// The roles the owner had when creating the credential.
    pub owner_roles: RoleSet,
    pub expires_at: Option<DateTime<Utc>>,
    pub public_key: [u8; 32],
}

/// The fields an Update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientChanges {
    pub display_name: Option<DisplayName>,
    pub allow_source_cidr: Option<CidrList>,
    pub scoped_roles: Option<RoleSet>,
    /// The owner's roles as they are now: set whenever `scoped_roles` is, so a credential whose
    /// scoped roles are cleared falls back to what its owner holds today, not at creation.
    pub owner_roles: Option<RoleSet>,
    /// `Some(None)` makes the credential never expire.
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

/// Whose clients a lookup may return: one user's, or (for an admin) anyone's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    User(&'a str),
    Anyone,
}

/// Whether a client that expires at `expires_at` is expired at `now`: within a second of its
/// expiry it is, so a token is never issued for less than a second.
pub fn expired(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_some_and(|at| at - now < TimeDelta::seconds(1))
}
