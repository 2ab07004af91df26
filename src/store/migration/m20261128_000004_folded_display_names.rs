//! Search matches display names case-insensitively in every script. Neither database folds
//! case the same way (SQLite's `LOWER` and `LIKE` fold only ASCII, PostgreSQL's `lower` follows
//! the collation), so the service folds in Rust (`SearchFilter::fold_case`) and each row keeps
//! the folded name beside its name, written by Create and Update. Existing rows are folded here,
//! in Rust as well, so both databases hold the same text.
//!
//! No index: Search matches a substring (`LIKE '%...%'`), which no B-tree index serves on
//! either database; it reads rows in id order up to its page, as it did with `LOWER()`.

use sea_orm::prelude::Uuid;
use sea_orm_migration::prelude::*;

use crate::domain::SearchFilter;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PersonalClients {
    Table,
    Id,
    DisplayName,
    DisplayNameFolded,
}

/// Rows folded per read, so a large table is not read into memory at once.
const BATCH: u64 = 500;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Empty until the backfill below, which runs in the same transaction as this statement
        // (the migrator's), so no reader sees a row without its folded name.
        let column = ColumnDef::new(PersonalClients::DisplayNameFolded).string().not_null().default("").to_owned();
        manager.alter_table(Table::alter().table(PersonalClients::Table).add_column(column).to_owned()).await?;
        backfill(manager.get_connection()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let drop =
            Table::alter().table(PersonalClients::Table).drop_column(PersonalClients::DisplayNameFolded).to_owned();
        manager.alter_table(drop).await
    }
}

/// Writes the folded name of every existing row, in keyset-paged batches of [`BATCH`].
async fn backfill(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    let mut after: Option<Uuid> = None;
    loop {
        let mut page = Query::select();
        page.columns([PersonalClients::Id, PersonalClients::DisplayName])
            .from(PersonalClients::Table)
            .order_by(PersonalClients::Id, Order::Asc)
            .limit(BATCH);
        if let Some(after) = after {
            page.and_where(Expr::col(PersonalClients::Id).gt(after));
        }
        let rows = db.query_all(&page).await?;
        for row in &rows {
            let id: Uuid = row.try_get_by_index(0)?;
            let name: String = row.try_get_by_index(1)?;
            let update = Query::update()
                .table(PersonalClients::Table)
                .value(PersonalClients::DisplayNameFolded, SearchFilter::fold_case(&name))
                .and_where(Expr::col(PersonalClients::Id).eq(id))
                .to_owned();
            db.execute(&update).await?;
            after = Some(id);
        }
        if rows.len() < BATCH as usize {
            return Ok(());
        }
    }
}
