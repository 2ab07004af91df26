//! `personal_clients`: one row per credential; deleted rows stay, with `deleted_at` set.

use ipnet::IpNet;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

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
    /// `display_name` as Search compares it (`SearchFilter::fold_case`), kept in step with it.
    pub display_name_folded: String,
    /// Canonical CIDRs.
    #[sea_orm(column_type = "JsonBinary")]
    pub allow_source_cidr: Networks,
    #[sea_orm(column_type = "JsonBinary")]
    pub scoped_roles: RoleNames,
    /// The roles the owner had at creation.
    #[sea_orm(column_type = "JsonBinary")]
    pub owner_roles: RoleNames,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    pub expires_at: Option<DateTimeUtc>,
    pub last_used_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
}

/// A JSON array of networks: `["10.0.0.0/8", "2001:db8::/32"]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct Networks(pub Vec<IpNet>);

/// A JSON array of role names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
pub struct RoleNames(pub Vec<String>);

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
