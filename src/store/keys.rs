//! The service's own token signing keys, shared by every replica.

use chrono::Utc;
use ed25519_dalek::SigningKey;
use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};
use tracing::instrument;

use super::{Store, entity::signing_key};
use crate::{
    Error,
    domain::{TokenKey, round_to_micros},
};

impl Store {
    /// Every signing key, oldest first.
    #[instrument(skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<TokenKey>, Error> {
        let rows = signing_key::Entity::find().order_by_asc(signing_key::Column::Kid).all(&self.db).await?;
        rows.into_iter()
            .map(|row| {
                let bytes: [u8; 32] = row
                    .private_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::internal(format!("signing key {} is not 32 bytes", row.kid)))?;
                Ok(TokenKey { kid: row.kid, key: SigningKey::from_bytes(&bytes) })
            })
            .collect()
    }

    /// Stores `make()` as the first signing key unless there is one already; replicas starting
    /// together agree on one key. Returns whether it stored one.
    #[instrument(skip_all)]
    pub async fn ensure_signing_key(&self, make: impl FnOnce() -> TokenKey) -> Result<bool, Error> {
        let _turn = self.write_turn().await;
        let txn = self.exclusive().await?;
        if signing_key::Entity::find().one(&txn).await?.is_some() {
            txn.commit().await?;
            return Ok(false);
        }
        let TokenKey { kid, key } = make();
        let row = signing_key::ActiveModel {
            kid: Set(kid),
            private_key: Set(key.to_bytes().to_vec()),
            created_at: Set(round_to_micros(Utc::now())),
        };
        signing_key::Entity::insert(row).exec_without_returning(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }
}
