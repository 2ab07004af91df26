//! Spent one-time values of client assertions (`jti` or header `nonce`): the replay guard that
//! holds across replicas, through the table's primary key.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr};
use tracing::instrument;
use uuid::Uuid;

use super::{Store, entity::assertion_replay};
use crate::Error;

impl Store {
    /// Marks an assertion's one-time value as used; `false` when it already was, by this
    /// replica or any other.
    #[instrument(skip_all, fields(%client_pk))]
    pub async fn spend_one_time_value(
        &self,
        client_pk: Uuid,
        value: &str,
        spent_until: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let row = assertion_replay::ActiveModel {
            client_pk: Set(client_pk),
            one_time_value: Set(value.to_owned()),
            spent_until: Set(spent_until),
        };
        let _turn = self.write_turn().await;
        match assertion_replay::Entity::insert(row).exec_without_returning(&self.relaxed).await {
            Ok(_) => Ok(true),
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Forgets one-time values whose assertions have expired; returns how many.
    #[instrument(skip_all)]
    pub async fn purge_spent_values(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        let _turn = self.write_turn().await;
        let result = assertion_replay::Entity::delete_many()
            .filter(assertion_replay::Column::SpentUntil.lt(now))
            .exec(&self.relaxed)
            .await?;
        Ok(result.rows_affected)
    }
}
