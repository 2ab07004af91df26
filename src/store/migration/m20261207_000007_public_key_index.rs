//! Live credentials by public key: a leaked secret reported for revocation names no client, only
//! its key, from which the public key follows. Partial, like migration 1's: a revoked row is never
//! looked up by its key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The same statement on SQLite and PostgreSQL; the builder cannot say `WHERE`.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_personal_clients_live_public_key \
                 ON personal_clients (public_key) WHERE deleted_at IS NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_personal_clients_live_public_key")
            .await?;
        Ok(())
    }
}
