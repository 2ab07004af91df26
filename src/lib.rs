//! personal-clients: issues and manages personal client credentials, the per-user OAuth2 API
//! keys of an IAM platform, behind `c1.api.iam.v1.PersonalClientService`.
//!
//! [`serve`] is the whole service on a listener of the caller's choosing; the binary and the
//! integration tests both start it this way.

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod domain;
mod error;
pub mod exchange;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod store;
mod tls;

/// The compiled contract, with the well-known types it imports, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");

/// Code generated from `proto/`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    pub mod iam {
        tonic::include_proto!("c1.api.iam.v1");
    }
    pub mod auth {
        tonic::include_proto!("c1.api.auth.v1");
    }
}

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Notify};
use tonic::{
    service::Routes,
    transport::{Server, server::TcpIncoming},
};

pub use config::Config;
pub use error::Error;

use api::{AppState, PersonalClientApi, SearchApi, TokenApi};
use auth::{Authenticator, SigningKeys, external::ExternalIssuers};
use domain::{Role, RoleSet};
use exchange::TokenExchange;
use health::Health;
use limits::RequestSizeLimitLayer;
use metrics::{Metrics, RecordRpcLayer};
use pb::{
    auth::token_service_server::TokenServiceServer,
    iam::{
        personal_client_search_service_server::PersonalClientSearchServiceServer,
        personal_client_service_server::PersonalClientServiceServer,
    },
};
use store::Store;

/// Connects to the database, brings its schema up to date and loads the signing keys.
async fn open(config: &Config) -> Result<AppState, Error> {
    config.validate().map_err(Error::Internal)?;
    let store = Store::connect(config.database_url.expose()).await?;
    store.migrate().await?;
    let keys = SigningKeys::load_or_create(store.clone()).await?;
    // The JWKS client's TLS; a second install (another server in this process) changes nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let audiences = vec![config.issuer(), config.public_host.clone()];
    let external = ExternalIssuers::load(&config.trusted_jwks, audiences, config.roles_claim.clone())
        .await
        .map_err(Error::Internal)?;
    Ok(AppState {
        auth: Arc::new(Authenticator::new(keys, config.issuer(), store.clone(), external)),
        config: Arc::new(config.clone()),
        store,
    })
}

/// Serves gRPC and HTTP/1.1 on `listener` until `shutdown` resolves, then lets in-flight calls
/// finish for at most `config.shutdown_grace` and writes what is still batched in memory.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = open(&config).await?;
    let address = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    let metrics = Arc::new(Metrics::new(state.store.clone()));
    let exchange = Arc::new(TokenExchange::new(
        state.store.clone(),
        Arc::clone(&state.auth),
        Arc::clone(&state.config),
        Arc::clone(&metrics),
    ));
    let grpc = Routes::new(PersonalClientServiceServer::new(PersonalClientApi::new(state.clone())))
        .add_service(PersonalClientSearchServiceServer::new(SearchApi::new(state.clone())))
        .add_service(TokenServiceServer::new(TokenApi::new(Arc::clone(&exchange))));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::default();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
    let grpc = grpc
        .add_service(health_service)
        .add_service(reflection().build_v1().map_err(reflection_error)?)
        .add_service(reflection().build_v1alpha().map_err(reflection_error)?);
    let routes = grpc
        .into_axum_router()
        .merge(api::http::routes(Arc::clone(&exchange), Arc::clone(&state.auth), health.clone(), Arc::clone(&metrics)))
        .fallback(api::http::not_found);
    tracing::info!(%address, database = %config.database_url, issuer = %config.issuer(), "serving");

    let watcher = tokio::spawn(health.watch(state.store.clone(), reporter, config.health_interval));
    let maintenance = tokio::spawn({
        let exchange = Arc::clone(&exchange);
        let interval = config.usage_flush_interval;
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                exchange.maintain().await;
            }
        }
    });
    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = Arc::clone(&draining);
        async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight calls");
            draining.notify_one();
        }
    };
    let router = Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(RecordRpcLayer::new(metrics))
        .layer(RequestSizeLimitLayer::new(config.max_request_bytes))
        .add_routes(Routes::from(routes));
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let incoming = tls::incoming(listener, tls::server_config(cert, key)?);
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            _ => Box::pin(
                router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal),
            ),
        };
    let served = tokio::select! {
        result = server => result.map_err(|e| Error::Internal(format!("server failed: {e}"))),
        () = async { draining.notified().await; tokio::time::sleep(config.shutdown_grace).await } => {
            tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls still running after the grace period; stopping");
            Ok(())
        }
    };
    maintenance.abort();
    watcher.abort();
    exchange.maintain().await;
    served
}

/// Brings the database schema up to date and creates the first signing key if needed.
pub async fn migrate(config: &Config) -> Result<(), Error> {
    open(config).await.map(drop)
}

/// An access token for `user` with `roles`, signed with the service's current key: the
/// bootstrap path for operators and scripts.
pub async fn mint_token(config: &Config, user: &str, roles: &[String], ttl: Duration) -> Result<String, Error> {
    if user.trim().is_empty() {
        return Err(Error::invalid("user", "is required"));
    }
    // `--roles ""` means no roles.
    let roles: Vec<String> = roles.iter().filter(|role| !role.is_empty()).cloned().collect();
    for role in &roles {
        Role::parse(role).map_err(|e| Error::invalid("roles", e))?;
    }
    let state = open(config).await?;
    let (token, _) = state.auth.mint(user, &RoleSet::from_claims(&roles), None, ttl);
    Ok(token)
}
