//! `last_used_at`, written in batches by the token exchange.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, ExprTrait, QueryFilter, TransactionTrait, sea_query::Expr};
use tracing::instrument;
use uuid::Uuid;

use super::{
    Store,
    entity::personal_client::{self, Column},
};
use crate::Error;

impl Store {
    /// Records the last use of several clients in one transaction. `last_used_at` only moves
    /// forward, whichever replica flushes last.
    #[instrument(skip_all, fields(clients = uses.len()))]
    pub async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<(), Error> {
        let _turn = self.write_turn().await;
        let txn = self.relaxed.begin().await?;
        for (id, at) in uses {
            personal_client::Entity::update_many()
                .col_expr(Column::LastUsedAt, Expr::value(Some(*at)))
                .filter(Column::Id.eq(*id))
                .filter(Column::LastUsedAt.is_null().or(Column::LastUsedAt.lt(*at)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}
