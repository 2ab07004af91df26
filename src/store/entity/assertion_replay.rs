//! `assertion_replays`: one-time values (`jti` or header `nonce`) of client assertions already
//! used, kept until the assertion could no longer be used anyway. The primary key makes a second
//! use fail in the database, whichever replica sees it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "assertion_replays")]
pub struct Model {
    /// `personal_clients.id` of the client that signed the assertion.
    #[sea_orm(primary_key, auto_increment = false)]
    pub client_pk: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub one_time_value: String,
    pub spent_until: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
