//! Signing keys get a schedule: `activates_at`, when a key starts signing, and `retired_at`,
//! when it was retired by hand. Which key signs and which keys are published follows from these
//! and the time (`domain::KeyTimeline`).
//!
//! Until now the oldest key signed and the others (replicas of early versions, starting together,
//! could each make one) never did. The oldest keeps signing: its `activates_at` is its
//! `created_at`. The others are marked retired from their creation: they signed nothing, so they
//! leave the JWKS.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    CreatedAt,
    ActivatesAt,
    RetiredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds a NOT NULL column only with a default. Each existing row gets its own value
        // below, in the migration's transaction, and every insert names the column.
        let activates_at = ColumnDef::new(SigningKeys::ActivatesAt)
            .timestamp_with_time_zone()
            .not_null()
            .default("1970-01-01 00:00:00+00:00")
            .to_owned();
        manager.alter_table(Table::alter().table(SigningKeys::Table).add_column(activates_at).to_owned()).await?;
        // One column per statement: SQLite's ALTER TABLE takes one change at a time.
        let retired_at = ColumnDef::new(SigningKeys::RetiredAt).timestamp_with_time_zone().null().to_owned();
        manager.alter_table(Table::alter().table(SigningKeys::Table).add_column(retired_at).to_owned()).await?;

        let db = manager.get_connection();
        let from_creation = Query::update()
            .table(SigningKeys::Table)
            .value(SigningKeys::ActivatesAt, Expr::col(SigningKeys::CreatedAt))
            .to_owned();
        db.execute(&from_creation).await?;
        let oldest_first = Query::select()
            .column(SigningKeys::Kid)
            .from(SigningKeys::Table)
            .order_by(SigningKeys::Kid, Order::Asc)
            .to_owned();
        let rows = db.query_all(&oldest_first).await?;
        for row in rows.iter().skip(1) {
            let kid: String = row.try_get_by_index(0)?;
            let never_signed = Query::update()
                .table(SigningKeys::Table)
                .value(SigningKeys::RetiredAt, Expr::col(SigningKeys::CreatedAt))
                .and_where(Expr::col(SigningKeys::Kid).eq(kid))
                .to_owned();
            db.execute(&never_signed).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [SigningKeys::RetiredAt, SigningKeys::ActivatesAt] {
            manager.alter_table(Table::alter().table(SigningKeys::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
