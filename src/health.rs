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

use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{PersonalClientApi, SearchApi, TokenApi},
    pb::{
        auth::token_service_server::TokenServiceServer,
        iam::{
            personal_client_search_service_server::PersonalClientSearchServiceServer,
            personal_client_service_server::PersonalClientServiceServer,
        },
    },
    store::Store,
};

/// Longest a health ping may take before the database counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Every name the health service answers for: the server as a whole and each service.
pub const SERVICE_NAMES: [&str; 4] = [
    "",
    <PersonalClientServiceServer<PersonalClientApi> as NamedService>::NAME,
    <PersonalClientSearchServiceServer<SearchApi> as NamedService>::NAME,
    <TokenServiceServer<TokenApi> as NamedService>::NAME,
];

/// Whether the service can do its work, as last seen.
#[derive(Debug, Clone, Default)]
pub struct Health {
    serving: Arc<AtomicBool>,
}

impl Health {
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Pings the database every `interval` and reports changes until the task is dropped.
    pub async fn watch(self, store: Store, reporter: HealthReporter, interval: Duration) {
        let mut known: Option<bool> = None;
        loop {
            let up = tokio::time::timeout(PING_TIMEOUT, store.ping()).await.is_ok_and(|pinged| pinged.is_ok());
            if known != Some(up) {
                let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
                for name in SERVICE_NAMES {
                    reporter.set_service_status(name, status).await;
                }
                self.serving.store(up, Ordering::Relaxed);
                if known.is_some() || !up {
                    tracing::warn!(serving = up, "database health changed");
                }
                known = Some(up);
            }
            tokio::time::sleep(interval).await;
        }
    }
}
