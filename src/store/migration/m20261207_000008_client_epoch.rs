//! The clients' epoch: sixteen random stamps, one per shard of the clients (the last hex digit of
//! a client's id), each drawn anew whenever a client of its shard is revoked, deleted, or changes
//! its owner, expiry, id or client id. A replica may keep what it read of a client while the
//! stamp of its shard is the one it read before the client. Random, not counted: a database
//! restored to an earlier state, with replicas still running, never shows again a stamp that
//! meant another state. Shards, not one stamp: concurrent revocations of different clients
//! rarely wait for each other, and a change leaves most of what replicas keep in place.
//!
//! It is the database that draws them, by triggers on `personal_clients`, so every writer counts:
//! this service's replicas of any version and an operator's own SQL, including SQLite's `REPLACE`
//! and PostgreSQL's `TRUNCATE`, and PostgreSQL's replication sessions (`ENABLE ALWAYS`).

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A client's shard: the last hex digit of its id (random in a UUID v7).
const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS client_epoch (id INTEGER PRIMARY KEY CHECK (id BETWEEN 0 AND 15), stamp TEXT NOT NULL)",
    "WITH RECURSIVE shard(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM shard WHERE n < 15) \
     INSERT INTO client_epoch (id, stamp) SELECT n, hex(randomblob(16)) FROM shard WHERE true \
     ON CONFLICT (id) DO NOTHING",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_epoch_on_update \
     AFTER UPDATE OF id, client_id, user_id, expires_at, deleted_at ON personal_clients \
     WHEN OLD.id IS NOT NEW.id OR OLD.client_id IS NOT NEW.client_id OR OLD.user_id IS NOT NEW.user_id \
       OR OLD.expires_at IS NOT NEW.expires_at OR OLD.deleted_at IS NOT NEW.deleted_at \
     BEGIN UPDATE client_epoch SET stamp = hex(randomblob(16)) \
       WHERE id IN (instr('0123456789ABCDEF', substr(hex(OLD.id), 32, 1)) - 1, \
                    instr('0123456789ABCDEF', substr(hex(NEW.id), 32, 1)) - 1); END",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_epoch_on_delete AFTER DELETE ON personal_clients \
     BEGIN UPDATE client_epoch SET stamp = hex(randomblob(16)) \
       WHERE id = instr('0123456789ABCDEF', substr(hex(OLD.id), 32, 1)) - 1; END",
    // REPLACE deletes the row it replaces without firing delete triggers.
    "CREATE TRIGGER IF NOT EXISTS personal_clients_epoch_on_replace BEFORE INSERT ON personal_clients \
     WHEN EXISTS (SELECT 1 FROM personal_clients WHERE id = NEW.id OR client_id = NEW.client_id) \
     BEGIN UPDATE client_epoch SET stamp = hex(randomblob(16)); END",
];

const POSTGRES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS client_epoch (id INTEGER PRIMARY KEY CHECK (id BETWEEN 0 AND 15), stamp TEXT NOT NULL)",
    "INSERT INTO client_epoch (id, stamp) SELECT n, md5(random()::text || clock_timestamp()::text) \
     FROM generate_series(0, 15) AS n ON CONFLICT (id) DO NOTHING",
    "CREATE OR REPLACE FUNCTION personal_clients_bump_epoch() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN \
       IF TG_OP = 'TRUNCATE' THEN \
         UPDATE client_epoch SET stamp = md5(random()::text || clock_timestamp()::text); \
       ELSIF TG_OP = 'DELETE' THEN \
         UPDATE client_epoch SET stamp = md5(random()::text || clock_timestamp()::text) \
           WHERE id = get_byte(uuid_send(OLD.id), 15) & 15; \
       ELSE \
         UPDATE client_epoch SET stamp = md5(random()::text || clock_timestamp()::text) \
           WHERE id IN (get_byte(uuid_send(OLD.id), 15) & 15, get_byte(uuid_send(NEW.id), 15) & 15); \
       END IF; \
       RETURN NULL; \
     END $$",
    // The table is found in this schema whatever the writer's search_path.
    "DO $$ BEGIN EXECUTE format('ALTER FUNCTION personal_clients_bump_epoch() SET search_path = %I', current_schema()); END $$",
    "DROP TRIGGER IF EXISTS personal_clients_epoch_on_update ON personal_clients",
    "CREATE TRIGGER personal_clients_epoch_on_update \
     AFTER UPDATE OF id, client_id, user_id, expires_at, deleted_at ON personal_clients FOR EACH ROW \
     WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.client_id IS DISTINCT FROM NEW.client_id \
       OR OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.expires_at IS DISTINCT FROM NEW.expires_at \
       OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) \
     EXECUTE FUNCTION personal_clients_bump_epoch()",
    "DROP TRIGGER IF EXISTS personal_clients_epoch_on_delete ON personal_clients",
    "CREATE TRIGGER personal_clients_epoch_on_delete AFTER DELETE ON personal_clients FOR EACH ROW \
     EXECUTE FUNCTION personal_clients_bump_epoch()",
    "DROP TRIGGER IF EXISTS personal_clients_epoch_on_truncate ON personal_clients",
    "CREATE TRIGGER personal_clients_epoch_on_truncate AFTER TRUNCATE ON personal_clients \
     FOR EACH STATEMENT EXECUTE FUNCTION personal_clients_bump_epoch()",
    // Also in sessions that replicate or restore (session_replication_role = replica).
    "ALTER TABLE personal_clients ENABLE ALWAYS TRIGGER personal_clients_epoch_on_update",
    "ALTER TABLE personal_clients ENABLE ALWAYS TRIGGER personal_clients_epoch_on_delete",
    "ALTER TABLE personal_clients ENABLE ALWAYS TRIGGER personal_clients_epoch_on_truncate",
];

const TRIGGERS: [&str; 4] = [
    "personal_clients_epoch_on_update",
    "personal_clients_epoch_on_delete",
    "personal_clients_epoch_on_replace",
    "personal_clients_epoch_on_truncate",
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
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        for trigger in TRIGGERS {
            let on = if postgres { " ON personal_clients" } else { "" };
            db.execute_unprepared(&format!("DROP TRIGGER IF EXISTS {trigger}{on}")).await?;
        }
        if postgres {
            db.execute_unprepared("DROP FUNCTION IF EXISTS personal_clients_bump_epoch()").await?;
        }
        db.execute_unprepared("DROP TABLE IF EXISTS client_epoch").await?;
        Ok(())
    }
}
