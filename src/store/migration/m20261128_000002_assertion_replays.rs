use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AssertionReplays {
    Table,
    ClientPk,
    OneTimeValue,
    SpentUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AssertionReplays::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(AssertionReplays::ClientPk).uuid().not_null())
                    .col(ColumnDef::new(AssertionReplays::OneTimeValue).string_len(256).not_null())
                    .col(ColumnDef::new(AssertionReplays::SpentUntil).timestamp_with_time_zone().not_null())
                    .primary_key(Index::create().col(AssertionReplays::ClientPk).col(AssertionReplays::OneTimeValue))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_assertion_replays_spent_until")
                    .table(AssertionReplays::Table)
                    .col(AssertionReplays::SpentUntil)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(AssertionReplays::Table).to_owned()).await
    }
}
