//! Indexes that let Search find a few clients among millions without reading the table.
//!
//! - Every row, revoked ones too, by `(user_id, id)`: Search by owners with `include_deleted`
//!   reads each owner's rows from it (the index of migration 1 holds live rows only).
//! - The folded display name by trigrams, which serve a substring match of three or more
//!   characters: on PostgreSQL a GIN index of `pg_trgm`, on SQLite an FTS5 table with the
//!   `trigram` tokenizer, kept in step with the table by triggers. Case-sensitive: the name is
//!   folded already, and so is the query.
//! - `lower(client_id)`, ordered by code point, which serves the client id prefix match.
//!
//! PostgreSQL needs the `pg_trgm` extension. It is trusted since PostgreSQL 13, so the database's
//! owner may create it; if the service's user may not, the migration fails and says what to run,
//! rather than leave Search reading the whole table. Writes to the table wait while the indexes
//! build (5 to 15 s at a million clients); an operator can build them beforehand with
//! `CREATE INDEX CONCURRENTLY` under the same names, which this migration then keeps.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PersonalClients {
    Table,
    Id,
    UserId,
}

const OWNER_INDEX: &str = "idx_personal_clients_owner";
const NAME_INDEX: &str = "idx_personal_clients_name_trigrams";
const CLIENT_ID_INDEX: &str = "idx_personal_clients_client_id_prefix";

/// The FTS5 table of folded names on SQLite, and the triggers that keep it in step.
const SQLITE_UP: [&str; 5] = [
    // External content: the FTS table keeps only the index and reads names from
    // `personal_clients` by rowid. VACUUM keeps the rowids of a table that has an index, as this
    // one has.
    "CREATE VIRTUAL TABLE IF NOT EXISTS personal_clients_fts USING fts5(\
        display_name_folded, content='personal_clients', tokenize='trigram case_sensitive 1')",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_fts_insert AFTER INSERT ON personal_clients BEGIN \
        INSERT INTO personal_clients_fts (rowid, display_name_folded) VALUES (new.rowid, new.display_name_folded); \
     END",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_fts_delete AFTER DELETE ON personal_clients BEGIN \
        INSERT INTO personal_clients_fts (personal_clients_fts, rowid, display_name_folded) \
            VALUES ('delete', old.rowid, old.display_name_folded); \
     END",
    "CREATE TRIGGER IF NOT EXISTS personal_clients_fts_update AFTER UPDATE OF display_name_folded ON personal_clients BEGIN \
        INSERT INTO personal_clients_fts (personal_clients_fts, rowid, display_name_folded) \
            VALUES ('delete', old.rowid, old.display_name_folded); \
        INSERT INTO personal_clients_fts (rowid, display_name_folded) VALUES (new.rowid, new.display_name_folded); \
     END",
    // Indexes the rows already there.
    "INSERT INTO personal_clients_fts (personal_clients_fts) VALUES ('rebuild')",
];

const SQLITE_DOWN: [&str; 4] = [
    "DROP TRIGGER IF EXISTS personal_clients_fts_update",
    "DROP TRIGGER IF EXISTS personal_clients_fts_delete",
    "DROP TRIGGER IF EXISTS personal_clients_fts_insert",
    "DROP TABLE IF EXISTS personal_clients_fts",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let owner = Index::create()
            .name(OWNER_INDEX)
            .table(PersonalClients::Table)
            .col(PersonalClients::UserId)
            .col(PersonalClients::Id)
            .if_not_exists()
            .to_owned();
        manager.create_index(owner).await?;
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                let trigram_ops = trigram_operator_class(db).await?;
                // The schema builder has neither operator classes nor indexes on expressions.
                db.execute_unprepared(&format!(
                    "CREATE INDEX IF NOT EXISTS {NAME_INDEX} ON personal_clients \
                     USING gin (display_name_folded {trigram_ops})"
                ))
                .await?;
                // text_pattern_ops orders by code point, whatever the database's collation, so a
                // `LIKE 'prefix%'` becomes a range scan.
                db.execute_unprepared(&format!(
                    "CREATE INDEX IF NOT EXISTS {CLIENT_ID_INDEX} ON personal_clients \
                     (lower(client_id) text_pattern_ops)"
                ))
                .await?;
                // Statistics for the new expression, so the planner weighs the indexes against
                // reading in id order from the start rather than after the next autovacuum.
                db.execute_unprepared("ANALYZE personal_clients").await?;
            }
            DbBackend::Sqlite => {
                for statement in SQLITE_UP {
                    db.execute_unprepared(statement).await?;
                }
                // SQLite's default collation is by code point already.
                db.execute_unprepared(&format!(
                    "CREATE INDEX IF NOT EXISTS {CLIENT_ID_INDEX} ON personal_clients (lower(client_id))"
                ))
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut indexes = vec![CLIENT_ID_INDEX, OWNER_INDEX];
        match manager.get_database_backend() {
            DbBackend::Sqlite => {
                for statement in SQLITE_DOWN {
                    manager.get_connection().execute_unprepared(statement).await?;
                }
            }
            // pg_trgm stays: other schemas may use it, and dropping it may take more than this
            // user may do.
            DbBackend::Postgres => indexes.push(NAME_INDEX),
            _ => {}
        }
        for index in indexes {
            manager.drop_index(Index::drop().name(index).table(PersonalClients::Table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// `pg_trgm`'s GIN operator class, named by the schema the extension is in (an operator may
/// have installed it outside the search path). Creates the extension if it is missing; a user
/// who may not is told what to run.
async fn trigram_operator_class(db: &SchemaManagerConnection<'_>) -> Result<String, DbErr> {
    if let Err(err) = db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_trgm").await {
        return Err(DbErr::Migration(format!(
            "Search needs the PostgreSQL extension pg_trgm, and creating it failed ({err}). As a \
             superuser or the database's owner, run `CREATE EXTENSION pg_trgm;` in this database \
             (on Debian and Ubuntu it comes with the postgresql-contrib package), then start again"
        )));
    }
    let schema = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'",
        ))
        .await?
        .ok_or_else(|| DbErr::Migration("pg_trgm is not installed after CREATE EXTENSION".into()))?
        .try_get_by_index::<String>(0)?;
    Ok(format!("{schema}.gin_trgm_ops"))
}
