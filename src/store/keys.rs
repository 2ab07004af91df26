//! The service's own token signing keys, shared by every replica, as stored (raw or sealed:
//! `auth::vault` tells them apart), each with its schedule.

use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};
use tracing::instrument;

use super::{Store, entity::signing_key};
use crate::{
    domain::{KeyRingChange, KeyTimes, StoredKey},
    error::Error,
};

impl Store {
    /// Every signing key, oldest first.
    #[instrument(skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, Error> {
        let rows = signing_key::Entity::find().order_by_asc(signing_key::Column::Kid).all(&self.db).await?;
        Ok(rows.into_iter().map(|row| StoredKey { kid: row.kid, material: row.private_key }).collect())
    }

    /// Every signing key with its schedule, in no particular order.
    #[instrument(skip_all)]
    pub async fn key_ring(&self) -> Result<Vec<(KeyTimes, StoredKey)>, Error> {
        let rows = signing_key::Entity::find().all(&self.db).await?;
        Ok(rows.into_iter().map(split).collect())
    }

    /// The schedule of every signing key, without the keys.
    #[instrument(skip_all)]
    pub async fn key_times(&self) -> Result<Vec<KeyTimes>, Error> {
        Ok(self.key_ring().await?.into_iter().map(|(times, _)| times).collect())
    }

    /// Reads the keys' schedules and writes the change `decide` makes of them, in one transaction
    /// that replicas and commands take in turns, so two of them never both act on what they read
    /// (two replicas adding a key for the same rotation). What `decide` returns beside the change
    /// is handed back; an error from it changes nothing.
    #[instrument(skip_all)]
    pub async fn change_key_ring<T>(
        &self,
        decide: impl FnOnce(Vec<KeyTimes>) -> Result<(KeyRingChange, T), Error>,
    ) -> Result<T, Error> {
        let _turn = self.write_turn().await;
        let txn = self.exclusive().await?;
        let rows = signing_key::Entity::find().all(&txn).await?;
        let (change, answer) = decide(rows.into_iter().map(|row| split(row).0).collect())?;
        if change.is_empty() {
            txn.commit().await?;
            return Ok(answer);
        }
        if let Some(new) = change.add {
            let row = signing_key::ActiveModel {
                kid: Set(new.stored.kid),
                private_key: Set(new.stored.material),
                created_at: Set(new.created_at),
                activates_at: Set(new.activates_at),
                retired_at: Set(None),
            };
            signing_key::Entity::insert(row).exec_without_returning(&txn).await?;
        }
        for (kid, at) in change.activate {
            signing_key::Entity::update_many()
                .col_expr(signing_key::Column::ActivatesAt, Expr::value(at))
                .filter(signing_key::Column::Kid.eq(kid))
                .exec(&txn)
                .await?;
        }
        for (kid, at) in change.retire {
            signing_key::Entity::update_many()
                .col_expr(signing_key::Column::RetiredAt, Expr::value(at))
                .filter(signing_key::Column::Kid.eq(kid))
                .exec(&txn)
                .await?;
        }
        if !change.remove.is_empty() {
            signing_key::Entity::delete_many().filter(signing_key::Column::Kid.is_in(change.remove)).exec(&txn).await?;
        }
        txn.commit().await?;
        Ok(answer)
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
                    .col_expr(signing_key::Column::PrivateKey, Expr::value(material))
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

fn split(row: signing_key::Model) -> (KeyTimes, StoredKey) {
    let times = KeyTimes {
        kid: row.kid.clone(),
        created_at: row.created_at,
        activates_at: row.activates_at,
        retired_at: row.retired_at,
    };
    (times, StoredKey { kid: row.kid, material: row.private_key })
}
