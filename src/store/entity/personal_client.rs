//! `personal_clients`: one row per credential; deleted rows stay, with `deleted_at` set.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "personal_clients")]
pub struct Model {
    /// UUID v7: ordering by id is ordering by creation.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub client_id: String,
    pub user_id: String,
    pub display_name: String,
    /// JSON array of canonical CIDRs.
    pub allow_source_cidr: String,
    /// JSON array of role names.
    pub scoped_roles: String,
    /// JSON array of the roles the owner had at creation.
    pub owner_roles: String,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    pub expires_at: Option<DateTimeUtc>,
    pub last_used_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
