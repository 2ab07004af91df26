use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use super::{CidrList, DisplayName, RoleSet};

/// A personal client credential as the service knows it (the public key stays in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalClient {
    pub id: Uuid,
    pub client_id: String,
    pub user_id: String,
    pub display_name: String,
    pub allow_source_cidr: Vec<String>,
    pub scoped_roles: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A personal client with what the token exchange needs: its public key and the roles its
/// owner had when creating it.
#[derive(Debug, Clone)]
pub struct Credential {
    pub client: PersonalClient,
    pub public_key: VerifyingKey,
    pub owner_roles: Vec<String>,
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
    pub public_key: VerifyingKey,
}

/// The fields an Update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientChanges {
    pub display_name: Option<DisplayName>,
    pub allow_source_cidr: Option<CidrList>,
    pub scoped_roles: Option<RoleSet>,
    /// `Some(None)` makes the credential never expire.
    pub expires_at: Option<Option<DateTime<Utc>>>,
}
