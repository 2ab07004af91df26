use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PersonalClients {
    Table,
    Id,
    ClientId,
    UserId,
    DisplayName,
    AllowSourceCidr,
    ScopedRoles,
    OwnerRoles,
    PublicKey,
    ExpiresAt,
    LastUsedAt,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    PrivateKey,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PersonalClients::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(PersonalClients::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(PersonalClients::ClientId).string().not_null().unique_key())
                    .col(ColumnDef::new(PersonalClients::UserId).string().not_null())
                    .col(ColumnDef::new(PersonalClients::DisplayName).string().not_null())
                    .col(ColumnDef::new(PersonalClients::AllowSourceCidr).text().not_null())
                    .col(ColumnDef::new(PersonalClients::ScopedRoles).text().not_null())
                    .col(ColumnDef::new(PersonalClients::OwnerRoles).text().not_null())
                    .col(ColumnDef::new(PersonalClients::PublicKey).binary().not_null())
                    .col(ColumnDef::new(PersonalClients::ExpiresAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(PersonalClients::LastUsedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(PersonalClients::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PersonalClients::UpdatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PersonalClients::DeletedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        // List pages through one user's live clients in id (creation) order. A partial index
        // matches that query exactly and stays small as revoked rows pile up; its plan holds even
        // before the planner has statistics. The schema builder has no partial indexes, and this
        // one statement is the same on SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_personal_clients_live \
                 ON personal_clients (user_id, id) WHERE deleted_at IS NULL",
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(SigningKeys::Kid).string().not_null().primary_key())
                    .col(ColumnDef::new(SigningKeys::PrivateKey).binary().not_null())
                    .col(ColumnDef::new(SigningKeys::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SigningKeys::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(PersonalClients::Table).to_owned()).await
    }
}
