//! `last_used_at`, written behind: uses are remembered in memory and written in one batch per
//! interval (and at shutdown), so the token exchange never waits for a database write for it.

use std::{collections::HashMap, sync::Mutex};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    error::Error,
    store::{LAST_USED_CHUNK, Store},
};

#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl UsageRecorder {
    /// Notes that client `id` was used at `at`.
    pub fn record(&self, id: Uuid, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let latest = pending.entry(id).or_insert(at);
        *latest = (*latest).max(at);
    }

    /// Writes every pending use, a statement of [`LAST_USED_CHUNK`] at a time, so other
    /// writers get their turn between statements; what could not be written stays pending for
    /// the next flush.
    pub async fn flush(&self, store: &Store) -> Result<usize, Error> {
        let batch: Vec<(Uuid, DateTime<Utc>)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.drain().collect()
        };
        let mut written = 0;
        for chunk in batch.chunks(LAST_USED_CHUNK) {
            if let Err(err) = store.record_last_used(chunk).await {
                for &(id, at) in &batch[written..] {
                    self.record(id, at);
                }
                return Err(err);
            }
            written += chunk.len();
        }
        Ok(written)
    }
}
