//! Spent one-time values of client assertions (`jti` or header `nonce`): the replay guard that
//! holds across replicas, through the table's primary key.

use std::{collections::HashSet, sync::Arc};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect, QueryTrait, TryInsertResult,
    sea_query::{Expr, ExprTrait},
};
use tokio::sync::Mutex;
use tracing::instrument;
use uuid::Uuid;

use super::{Store, entity::assertion_replay, write_turn};
use crate::error::Error;

impl Store {
    /// Marks an assertion's one-time value as used; `false` when it already was, by this
    /// replica or any other. Concurrent exchanges spend theirs in one statement.
    pub async fn spend_one_time_value(
        &self,
        client_pk: Uuid,
        value: &str,
        spent_until: DateTime<Utc>,
    ) -> Result<bool, Error> {
        self.batches.spend.call(OneTimeValue { client_pk, value: value.to_owned(), spent_until }).await
    }

    /// Forgets one-time values whose assertions have expired; returns how many. Deletes
    /// [`PURGE_CHUNK`] at a time through the `spent_until` index, each its own short statement,
    /// so writers waiting behind the purge wait for one chunk, not for all of it.
    #[instrument(skip_all)]
    pub async fn purge_spent_values(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        let mut purged = 0;
        loop {
            let expired = assertion_replay::Entity::find()
                .select_only()
                .column(assertion_replay::Column::ClientPk)
                .column(assertion_replay::Column::OneTimeValue)
                .filter(assertion_replay::Column::SpentUntil.lt(now))
                .limit(PURGE_CHUNK)
                .into_query();
            let _turn = self.write_turn().await;
            let result = assertion_replay::Entity::delete_many()
                .filter(
                    Expr::tuple([
                        Expr::col(assertion_replay::Column::ClientPk),
                        Expr::col(assertion_replay::Column::OneTimeValue),
                    ])
                    .in_subquery(expired),
                )
                .exec(&self.relaxed)
                .await?;
            purged += result.rows_affected;
            if result.rows_affected < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }
}

/// Rows the purge deletes per statement.
const PURGE_CHUNK: u64 = 1000;

/// A one-time value to spend.
#[derive(Debug)]
pub(super) struct OneTimeValue {
    client_pk: Uuid,
    value: String,
    spent_until: DateTime<Utc>,
}

/// Inserts a batch of one-time values in one statement that skips those already present and
/// returns those it inserted: a value is spent by the caller whose row came back. Of two equal
/// values in one batch, the first is written and the second refused.
pub(super) async fn spend_values(
    relaxed: DatabaseConnection,
    writer: Option<Arc<Mutex<()>>>,
    values: Vec<OneTimeValue>,
) -> Result<Vec<Result<bool, Error>>, DbErr> {
    let mut first_seen = HashSet::new();
    let fresh: Vec<bool> = values.iter().map(|v| first_seen.insert((v.client_pk, v.value.as_str()))).collect();
    let rows = values.iter().zip(&fresh).filter(|(_, fresh)| **fresh).map(|(v, _)| assertion_replay::ActiveModel {
        client_pk: Set(v.client_pk),
        one_time_value: Set(v.value.clone()),
        spent_until: Set(v.spent_until),
    });
    let _turn = write_turn(writer.as_ref()).await;
    let inserted = match assertion_replay::Entity::insert_many(rows)
        .on_conflict_do_nothing()
        .exec_with_returning_many(&relaxed)
        .await?
    {
        TryInsertResult::Inserted(inserted) => inserted,
        TryInsertResult::Empty | TryInsertResult::Conflicted => Vec::new(),
    };
    let spent: HashSet<(Uuid, &str)> =
        inserted.iter().map(|row| (row.client_pk, row.one_time_value.as_str())).collect();
    Ok(values
        .iter()
        .zip(fresh)
        .map(|(v, fresh)| Ok(fresh && spent.contains(&(v.client_pk, v.value.as_str()))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OpenMode;

    /// Equal values in one batch are one statement's duplicate rows: the first is spent, the
    /// others are refused, even though the row the statement returns matches them all.
    #[tokio::test]
    async fn equal_values_in_one_batch_are_spent_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/replay.db?mode=rwc", dir.path().display()).parse().unwrap();
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        store.migrate().await.unwrap();
        let (client_pk, spent_until) = (Uuid::now_v7(), Utc::now() + chrono::TimeDelta::minutes(5));
        let value = |value: &str| OneTimeValue { client_pk, value: value.to_owned(), spent_until };
        let batch = vec![value("a"), value("a"), value("b"), value("a")];
        let spent: Vec<bool> =
            spend_values(store.relaxed.clone(), None, batch).await.unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(spent, [true, false, true, false]);
    }
}
