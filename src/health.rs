//! Health that follows the database: `grpc.health.v1` for `""` and every service, and the
//! flag behind `GET /healthz`. SERVING while the database answers a ping, NOT_SERVING while it
//! does not, and back again without a restart.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::Store;

/// Longest a health ping may take before the database counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the service can do its work, as last seen.
#[derive(Debug, Clone, Default)]
pub struct Health {
    serving: Arc<AtomicBool>,
}

impl Health {
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Reports the database's health for each of `names` now, then watches it: a ping every
    /// `interval`, changes reported, until the returned task is aborted.
    pub async fn watch(
        self,
        store: Store,
        reporter: HealthReporter,
        names: Vec<&'static str>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let mut known = self.check(&store, &reporter, &names, None).await;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                known = self.check(&store, &reporter, &names, Some(known)).await;
            }
        })
    }

    /// One ping; reports the outcome if it differs from `known`, and returns it.
    async fn check(&self, store: &Store, reporter: &HealthReporter, names: &[&str], known: Option<bool>) -> bool {
        let up = tokio::time::timeout(PING_TIMEOUT, store.ping()).await.is_ok_and(|pinged| pinged.is_ok());
        if known != Some(up) {
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            for name in names {
                reporter.set_service_status(name, status).await;
            }
            self.serving.store(up, Ordering::Relaxed);
            if known.is_some() || !up {
                tracing::warn!(serving = up, "database health changed");
            }
        }
        up
    }
}
