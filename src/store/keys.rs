//! The service's own token signing keys, shared by every replica, as stored (raw or sealed:
//! `auth::vault` tells them apart).

use chrono::Utc;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use tracing::instrument;

use super::{Store, entity::signing_key};
use crate::{
    Error,
    domain::{StoredKey, round_to_micros},
};

impl Store {
    /// Every signing key, oldest first.
    #[instrument(skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, Error> {
        let rows = signing_key::Entity::find().order_by_asc(signing_key::Column::Kid).all(&self.db).await?;
        Ok(rows.into_iter().map(|row| StoredKey { kid: row.kid, material: row.private_key }).collect())
    }

    /// Stores `make()` as the first signing key unless there is one already; replicas starting
    /// together agree on one key. Returns whether it stored one.
    #[instrument(skip_all)]
    pub async fn ensure_signing_key(&self, make: impl FnOnce() -> Result<StoredKey, Error>) -> Result<bool, Error> {
        let _turn = self.write_turn().await;
        let txn = self.exclusive().await?;
        if signing_key::Entity::find().one(&txn).await?.is_some() {
            txn.commit().await?;
            return Ok(false);
        }
        let StoredKey { kid, material } = make()?;
        let row = signing_key::ActiveModel {
            kid: Set(kid),
            private_key: Set(material),
            created_at: Set(round_to_micros(Utc::now())),
        };
        signing_key::Entity::insert(row).exec_without_returning(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Replaces the stored form of each key for which `restore` gives a new one, all in one
    /// transaction that replicas take in turns. Returns how many were replaced.
    #[instrument(skip_all)]
    pub async fn restore_signing_keys(
        &self,
        restore: impl Fn(&StoredKey) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<usize, Error> {
        let _turn = self.write_turn().await;
        let txn = self.exclusive().await?;
        let rows = signing_key::Entity::find().all(&txn).await?;
        let mut replaced = 0;
        for row in rows {
            let stored = StoredKey { kid: row.kid.clone(), material: row.private_key };
            if let Some(material) = restore(&stored)? {
                signing_key::Entity::update_many()
                    .col_expr(signing_key::Column::PrivateKey, sea_orm::sea_query::Expr::value(material))
                    .filter(signing_key::Column::Kid.eq(row.kid))
                    .exec(&txn)
                    .await?;
                replaced += 1;
            }
        }
        txn.commit().await?;
        Ok(replaced)
    }
}
