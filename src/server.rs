//! Composition: open the store, build the services, and serve them on one listener until told
//! to stop. Also the two commands that touch only the database: `migrate` and `mint-token`.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Notify};
use tonic::{service::Routes, transport::Server};

use crate::{
    Error, FILE_DESCRIPTOR_SET,
    api::{self, ExtAuthzApi, IdentityHeaders, IntrospectionApi, PersonalClientApi, SearchApi, TokenApi},
    auth::{self, Authenticator, Gate, Introspection, KeyVault, SigningKeys, external::ExternalIssuers},
    clients::{ClientSettings, PersonalClients},
    config::{Config, DatabaseUrl, IssuerArgs, KeyArgs, MeshArgs, check_token_ttl},
    connections::{self, ConnectionLimits, Connections},
    domain::RoleSet,
    exchange::{ExchangeSettings, TokenExchange},
    grpc_methods::GrpcMethods,
    health::Health,
    limits::{AdmissionLayer, AdmissionLimits},
    metrics::{JsonRoute, JsonRoutes, Metrics, RecordRpcLayer},
    pb::{
        auth::{introspection_service_server::IntrospectionServiceServer, token_service_server::TokenServiceServer},
        envoy::service::auth::v3::authorization_server::AuthorizationServer,
        iam::{
            personal_client_search_service_server::PersonalClientSearchServiceServer,
            personal_client_service_server::PersonalClientServiceServer,
        },
    },
    store::{OpenMode, Store},
    tls,
};

/// Health and reflection: public, like the token exchange.
const OPERATIONS_SERVICES: [&str; 3] = [
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// Every name the health service answers for: the server as a whole and each service.
pub fn health_names() -> Vec<&'static str> {
    [""].into_iter().chain(api::PROTECTED_SERVICES).chain(api::PUBLIC_SERVICES).collect()
}

/// Where [`serve`] listens: a socket bound already, or an address it binds once it is ready.
#[derive(Debug)]
pub enum Listen {
    Bound(TcpListener),
    At(std::net::SocketAddr),
}

impl From<TcpListener> for Listen {
    fn from(listener: TcpListener) -> Self {
        Self::Bound(listener)
    }
}

impl Listen {
    async fn bind(self) -> Result<TcpListener, Error> {
        match self {
            Self::Bound(listener) => Ok(listener),
            Self::At(address) => TcpListener::bind(address)
                .await
                .map_err(|e| Error::internal_with(format!("cannot listen on {address} (--listen)"), e)),
        }
    }
}

/// Serves gRPC and HTTP/1.1 on `listen` until `shutdown` resolves, then lets in-flight calls
/// finish for at most `--shutdown-grace` and writes what is still batched in memory.
pub async fn serve(
    config: Config,
    listen: impl Into<Listen>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // Flags and files first: a mistake in them should stop the start before the database is
    // touched.
    config.check()?;
    let tls = match (&config.serving.tls_cert, &config.serving.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    // The JWKS client's TLS; a second install (another server in this process) changes nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let issuer = config.issuer.issuer();
    let audiences = vec![issuer.clone(), config.issuer.public_host.clone()];
    let external = ExternalIssuers::load(&config.trust.trusted_jwks, audiences, config.trust.roles_claim.clone())
        .await
        .map_err(|message| Error::config("--trusted-jwks", message, None))?;
    let database = &config.database.database_url;
    let vault = key_vault(&config.keys)?;
    let searches = config.serving.max_concurrent_searches;
    let store = Store::open_with_searches(database, OpenMode::CreateIfMissing, searches).await?;
    store.migrate().await?;
    SigningKeys::prepare(&store, &vault).await?;
    let keys = SigningKeys::load(store.clone(), vault, config.keys.schedule).await?;
    let auth = Arc::new(Authenticator::new(keys, issuer.clone(), store.clone(), external));
    // The port opens once the database is ready: whoever finds it open (a readiness probe, a
    // script running `mint-token`) finds the schema and the keys there.
    let listener = listen.into().bind().await?;
    let address = listener.local_addr().map_err(|e| Error::internal_with("cannot read the listening address", e))?;

    let names = health_names();
    let methods = GrpcMethods::from_descriptor_sets(&[
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
    .map_err(|e| Error::internal_with("cannot read the served descriptors", e))?;
    let json_routes = api::json::contract_routes()?;
    let json_targets = json_routes
        .iter()
        .map(|route| JsonRoute {
            verb: route.verb.clone(),
            template: route.template.clone(),
            method: route.grpc_path.clone(),
        })
        .collect();
    let metrics = Arc::new(
        Metrics::new(store.clone(), methods.clone(), JsonRoutes::new(json_targets))
            .map_err(|e| Error::internal_with("cannot set up the metrics", e))?,
    );
    let exchange = Arc::new(TokenExchange::new(
        store.clone(),
        Arc::clone(&auth),
        ExchangeSettings {
            public_host: config.issuer.public_host.clone(),
            issuer: issuer.clone(),
            token_ttl: config.credentials.token_ttl,
            trusted_proxies: config.trust.trusted_proxies.clone(),
            rate_per_client: config.credentials.exchange_rate_per_client,
            rate_per_source: config.credentials.exchange_rate_per_source,
        },
        Arc::clone(&metrics),
    ));
    let clients = PersonalClients::new(
        store.clone(),
        ClientSettings {
            admin_role: config.credentials.admin_role.clone(),
            public_host: config.issuer.public_host.clone(),
            secret_namespace: config.credentials.secret_namespace.clone(),
            max_clients_per_user: config.credentials.max_clients_per_user.0,
            create_rate_per_user: config.credentials.create_rate_per_user,
        },
    );

    let introspection = Introspection::new(Arc::clone(&auth), config.mesh.introspection_role.clone());

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e: tonic_reflection::server::Error| Error::internal_with("cannot build reflection", e);
    let public: Vec<&'static str> = api::PUBLIC_SERVICES.into_iter().chain(OPERATIONS_SERVICES).collect();
    let gate = Gate::new(Arc::clone(&auth), methods, &public);
    let grpc = Routes::new(PersonalClientServiceServer::new(PersonalClientApi::new(
        clients.clone(),
        config.credentials.max_lifetime,
    )))
    .add_service(PersonalClientSearchServiceServer::new(SearchApi::new(clients.clone())))
    .add_service(TokenServiceServer::new(TokenApi::new(Arc::clone(&exchange))))
    .add_service(IntrospectionServiceServer::new(IntrospectionApi::new(introspection.clone())))
    .add_service(AuthorizationServer::new(ExtAuthzApi::new(Arc::clone(&auth), identity_headers(&config.mesh))))
    .add_service(health_service)
    .add_service(reflection().build_v1().map_err(reflection_error)?)
    .add_service(reflection().build_v1alpha().map_err(reflection_error)?)
    .into_axum_router()
    // Every gRPC service but the public ones requires a bearer token, checked before any
    // handler runs. Paths no service serves fall through to `not_found`.
    .route_layer(axum::middleware::from_fn_with_state(gate.clone(), auth::require_bearer));
    let json = api::json::routes(json_routes, grpc.clone(), gate)?;
    let health = Health::default();
    let routes = grpc
        .merge(json)
        .merge(api::http::routes(
            Arc::clone(&exchange),
            Arc::clone(&auth),
            introspection,
            health.clone(),
            Arc::clone(&metrics),
        ))
        .fallback(api::http::not_found);
    tracing::info!(%address, database = %database, %issuer, "serving");

    let watcher = health.watch(store.clone(), reporter, names, config.serving.health_interval).await;
    let maintenance = tokio::spawn({
        let (exchange, clients) = (Arc::clone(&exchange), clients.clone());
        let interval = config.serving.usage_flush_interval;
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                exchange.maintain().await;
                clients.maintain();
            }
        }
    });
    let key_upkeep = tokio::spawn({
        let (auth, rotation) = (Arc::clone(&auth), config.serving.key_rotation_interval.0);
        async move { auth.keys().keep_up(rotation).await }
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
    let serving = &config.serving;
    let connections = Connections::new(ConnectionLimits {
        max_connections: connection_slots(serving.max_connections as usize),
        idle_timeout: serving.idle_timeout,
    });
    // Pings often enough that a live HTTP/2 client is never idle.
    let keepalive = KEEPALIVE_INTERVAL.min(serving.idle_timeout / 3);
    let router = Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT.min(keepalive)))
        .max_concurrent_streams(serving.max_concurrent_streams)
        .http2_max_header_list_size(serving.max_header_bytes)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .layer(RecordRpcLayer::new(metrics))
        .layer(AdmissionLayer::new(
            AdmissionLimits {
                max_concurrent_requests: serving.max_concurrent_requests as usize,
                max_request_bytes: serving.max_request_bytes,
                request_timeout: serving.request_timeout,
            },
            Arc::clone(&connections),
        ))
        .add_routes(Routes::from(routes));
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(acceptor) => {
            let incoming =
                connections::incoming(listener, connections, move |tcp| tls::handshake(acceptor.clone(), tcp));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
        None => {
            let incoming = connections::incoming(listener, connections, |tcp| std::future::ready(Ok(tcp)));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };
    let grace = config.serving.shutdown_grace;
    let served = tokio::select! {
        result = server => result.map_err(|e| Error::internal_with("the server failed", e)),
        () = async { draining.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "in-flight calls still running after the grace period; stopping");
            Ok(())
        }
    };
    maintenance.abort();
    key_upkeep.abort();
    watcher.abort();
    exchange.maintain().await;
    served
}

/// The server pings each HTTP/2 client this often (more often with a short `--idle-timeout`),
/// and drops one that has not answered within the timeout: a peer that has gone away does not
/// keep its connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 flow-control windows: how much a client may send before the server has read it. Every
/// request this service takes fits in one stream window.
const STREAM_WINDOW: u32 = 128 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// File descriptors kept for the database, TLS files and the JWKS client, beyond connections.
const RESERVED_DESCRIPTORS: usize = 256;

/// `--max-connections`, lowered if the process may not open that many files.
fn connection_slots(wanted: usize) -> usize {
    // Raise the soft limit on open files to the hard limit, as servers do; keep what there is if
    // the system says no.
    let available = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
        Err(_) => return wanted,
    };
    let fits = available.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    if wanted > fits {
        tracing::warn!(
            wanted,
            open_files_limit = available,
            using = fits,
            "--max-connections is more than this process may open files for; raise `ulimit -n` to hold more"
        );
        return fits;
    }
    wanted
}

fn identity_headers(mesh: &MeshArgs) -> IdentityHeaders {
    IdentityHeaders {
        user: mesh.identity_user_header.clone(),
        client: mesh.identity_client_header.clone(),
        roles: mesh.identity_roles_header.clone(),
    }
}

/// The signing keys' protection at rest, read before the database is touched.
pub fn key_vault(keys: &KeyArgs) -> Result<KeyVault, Error> {
    keys.key_encryption_key_file.as_deref().map_or_else(|| Ok(KeyVault::unsealed()), KeyVault::from_file)
}

/// Brings the database schema up to date, creates the first signing key if needed, and seals
/// the signing keys when given a key-encryption key.
pub async fn migrate(database: &DatabaseUrl, keys: &KeyArgs) -> Result<(), Error> {
    let vault = key_vault(keys)?;
    let store = Store::open(database, OpenMode::CreateIfMissing).await?;
    store.migrate().await?;
    SigningKeys::prepare(&store, &vault).await
}

/// The database of a server or `migrate`, for the commands that only use one: refused when it
/// does not exist or its schema is not up to date.
pub async fn open_set_up(database: &DatabaseUrl) -> Result<Store, Error> {
    let store = Store::open(database, OpenMode::MustExist).await?;
    if !store.is_migrated().await? {
        return Err(Error::internal(format!(
            "the database {database} is not set up: run `personal-clients migrate` (or start the server) with this --database-url first"
        )));
    }
    Ok(store)
}

/// An access token for `user` with `roles`, signed with the service's current key: the
/// bootstrap path for operators and scripts. The database must be one a server has set up: a
/// token from keys no server uses would be refused everywhere.
pub async fn mint_token(
    database: &DatabaseUrl,
    keys: &KeyArgs,
    issuer: &IssuerArgs,
    user: &str,
    roles: &RoleSet,
    ttl: Duration,
) -> Result<String, Error> {
    check_token_ttl("--ttl", ttl, &keys.schedule)?;
    let vault = key_vault(keys)?;
    let store = open_set_up(database).await?;
    let keys = SigningKeys::load(store.clone(), vault, keys.schedule).await?;
    let auth = Authenticator::new(keys, issuer.issuer(), store, ExternalIssuers::default());
    Ok(auth.mint(user, roles, None, ttl).0)
}
