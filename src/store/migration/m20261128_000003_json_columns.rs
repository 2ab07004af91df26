//! The list columns of `personal_clients` become JSON on PostgreSQL (`jsonb`), so the database
//! holds what the entity reads: typed JSON, checked on the way in. SQLite keeps JSON as text,
//! which its JSON columns already are.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const COLUMNS: [&str; 3] = ["allow_source_cidr", "scoped_roles", "owner_roles"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        retype(manager, "jsonb").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        retype(manager, "text").await
    }
}

/// Gives the list columns the type `to` on PostgreSQL; nothing to do on SQLite.
async fn retype(manager: &SchemaManager<'_>, to: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    // The schema builder cannot say `USING`, which a cast from text needs.
    for column in COLUMNS {
        let statement = format!("ALTER TABLE personal_clients ALTER COLUMN {column} TYPE {to} USING {column}::{to}");
        manager.get_connection().execute_unprepared(&statement).await?;
    }
    Ok(())
}
