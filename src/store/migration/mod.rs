//! Schema migrations, written with the schema builder so one set runs on SQLite and PostgreSQL
//! (raw SQL per database only for what the builder cannot say: partial indexes, column types
//! that need `USING`, extensions, operator classes and FTS5).
//! A migration that has been released is never edited; changes come as new migrations.

use sea_orm_migration::prelude::*;

mod m20261128_000001_create_tables;
mod m20261128_000002_assertion_replays;
mod m20261128_000003_json_columns;
mod m20261128_000004_folded_display_names;
mod m20261128_000005_search_indexes;
mod m20261128_000006_signing_key_schedule;
mod m20261207_000007_public_key_index;
mod m20261207_000008_client_epoch;

#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_tables::Migration),
            Box::new(m20261128_000002_assertion_replays::Migration),
            Box::new(m20261128_000003_json_columns::Migration),
            Box::new(m20261128_000004_folded_display_names::Migration),
            Box::new(m20261128_000005_search_indexes::Migration),
            Box::new(m20261128_000006_signing_key_schedule::Migration),
            Box::new(m20261207_000007_public_key_index::Migration),
            Box::new(m20261207_000008_client_epoch::Migration),
        ]
    }
}
