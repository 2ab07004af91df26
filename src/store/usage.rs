//! `last_used_at`, written in batches by the token exchange.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use tracing::instrument;
use uuid::Uuid;

use super::Store;
use crate::error::Error;

/// Rows per statement: each statement is its own short transaction, so a writer waiting for the
/// flush (on SQLite, any writer; on PostgreSQL, an Update of one of these rows) waits for one
/// statement's worth, a millisecond or two, never for the whole flush.
pub const LAST_USED_CHUNK: usize = 256;

impl Store {
    /// Records the last use of up to [`LAST_USED_CHUNK`] clients in one statement.
    /// `last_used_at` only moves forward, whichever replica flushes last.
    #[instrument(skip_all, fields(clients = uses.len()))]
    pub async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<(), Error> {
        if uses.is_empty() {
            return Ok(());
        }
        let backend = self.relaxed.get_database_backend();
        let mut rows = Vec::with_capacity(uses.len());
        let mut values: Vec<Value> = Vec::with_capacity(uses.len() * 2);
        for (id, at) in uses {
            rows.push(match backend {
                DbBackend::Postgres => format!("(${}, ${})", values.len() + 1, values.len() + 2),
                _ => "(?, ?)".to_owned(),
            });
            values.push((*id).into());
            values.push((*at).into());
        }
        // `UPDATE ... FROM` a list of values, which both databases take in this form (the
        // columns of a VALUES list are named column1, column2 on both).
        let sql = format!(
            "UPDATE personal_clients SET last_used_at = used.at \
             FROM (SELECT column1 AS id, column2 AS at FROM (VALUES {}) AS list) AS used \
             WHERE personal_clients.id = used.id \
             AND (personal_clients.last_used_at IS NULL OR personal_clients.last_used_at < used.at)",
            rows.join(", ")
        );
        let _turn = self.write_turn().await;
        self.relaxed.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
        Ok(())
    }
}
