//! The clients' epoch: one number that grows whenever any personal client becomes unusable or
//! changes its owner or its expiry, so a replica may keep what it read of a client as long as the
//! epoch has not moved. It is the database that moves it, by triggers on `personal_clients`, so
//! every writer counts: this service's replicas of any version, and an operator's own SQL.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// What moves the epoch: a change of `deleted_at`, `expires_at` or `user_id`, or a row deleted.
const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS client_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL)",
    "INSERT INTO client_epoch (id, value) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_epoch_on_update \
     AFTER UPDATE OF deleted_at, expires_at, user_id ON personal_clients \
     WHEN OLD.deleted_at IS NOT NEW.deleted_at OR OLD.expires_at IS NOT NEW.expires_at \
       OR OLD.user_id IS NOT NEW.user_id \
     BEGIN UPDATE client_epoch SET value = value + 1 WHERE id = 1; END",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_epoch_on_delete AFTER DELETE ON personal_clients \
     BEGIN UPDATE client_epoch SET value = value + 1 WHERE id = 1; END",
];

const POSTGRES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS client_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL)",
    "INSERT INTO client_epoch (id, value) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    "CREATE OR REPLACE FUNCTION personal_clients_bump_epoch() RETURNS trigger LANGUAGE plpgsql AS \
     $$ BEGIN UPDATE client_epoch SET value = value + 1 WHERE id = 1; RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS personal_clients_epoch_on_update ON personal_clients",
    "CREATE TRIGGER personal_clients_epoch_on_update \
     AFTER UPDATE OF deleted_at, expires_at, user_id ON personal_clients FOR EACH ROW \
     WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at \
       OR OLD.user_id IS DISTINCT FROM NEW.user_id) \
     EXECUTE FUNCTION personal_clients_bump_epoch()",
    "DROP TRIGGER IF EXISTS personal_clients_epoch_on_delete ON personal_clients",
    "CREATE TRIGGER personal_clients_epoch_on_delete AFTER DELETE ON personal_clients FOR EACH ROW \
     EXECUTE FUNCTION personal_clients_bump_epoch()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements = if manager.get_database_backend() == DbBackend::Postgres { POSTGRES } else { SQLITE };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in [
            "DROP TRIGGER IF EXISTS personal_clients_epoch_on_update",
            "DROP TRIGGER IF EXISTS personal_clients_epoch_on_delete",
        ] {
            let statement = if manager.get_database_backend() == DbBackend::Postgres {
                format!("{statement} ON personal_clients")
            } else {
                statement.to_owned()
            };
            db.execute_unprepared(&statement).await?;
        }
        db.execute_unprepared("DROP TABLE IF EXISTS client_epoch").await?;
        Ok(())
    }
}
