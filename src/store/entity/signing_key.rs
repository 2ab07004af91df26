//! `signing_keys`: the service's own Ed25519 keys for access tokens, shared by every replica.

use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    /// The `kid` published in the JWKS and put in token headers (a UUID v7 string).
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    /// The Ed25519 private key: raw (32 bytes) or sealed by `auth::vault`.
    pub private_key: Vec<u8>,
    pub created_at: DateTimeUtc,
    /// When it starts signing.
    pub activates_at: DateTimeUtc,
    /// When it was retired by hand; it also stops signing when a later key takes over.
    pub retired_at: Option<DateTimeUtc>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
