//! Composition: open the store, build the services, and serve them on one listener until told
//! to stop. `serve` reads top to bottom: the parts, the routes, the transport, the background
//! work; each is built by a function below it.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;

use crate::{
    api::{
        self, ExtAuthzApi, IdentityHeaders, IntrospectionApi, MeshCheck, PersonalClientApi, SearchApi, TokenApi,
        http::HttpEndpoints,
    },
    auth::{self, Authenticator, Gate, Introspection, KeyVault, SigningKeys, external::ExternalIssuers},
    clients::{ClientSettings, ClientStatus, PersonalClients},
    config::{Config, KeyArgs, MeshArgs},
    edge::{
        admission::{AdmissionLayer, AdmissionLimits},
        budget::{self, Held, MemoryBudget},
        connections::{ConnectionLimits, Connections},
        metrics::{JsonRoute, JsonRoutes, RecordRpcLayer},
        tls,
        trace::{self, TraceLayer},
        transport::{self, HttpSettings},
    },
    error::Error,
    exchange::{ExchangeSettings, TokenExchange},
    grpc_methods::GrpcMethods,
    health::Health,
    metrics::Metrics,
    pb::{
        FILE_DESCRIPTOR_SET,
        auth::{introspection_service_server::IntrospectionServiceServer, token_service_server::TokenServiceServer},
        envoy::service::auth::v3::authorization_server::AuthorizationServer,
        iam::{
            personal_client_search_service_server::PersonalClientSearchServiceServer,
            personal_client_service_server::PersonalClientServiceServer,
        },
    },
    store::{DatabaseUrl, OpenMode, Store},
    telemetry,
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
    let parts = Parts::open(&config).await?;
    // The port opens once the database is ready: whoever finds it open (a readiness probe, a
    // script running `mint-token`) finds the schema and the keys there.
    let listener = listen.into().bind().await?;
    let address = listener.local_addr().map_err(|e| Error::internal_with("cannot read the listening address", e))?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::default();
    let (routes, json_routes) = routes(&config, &parts, health_service, health.clone())?;
    tracing::info!(%address, database = %config.database.database_url, issuer = %parts.auth.issuer(), "serving");
    let background = Background::start(&config, &parts, health, reporter).await;
    transport(&config, &parts, json_routes, routes, listener, tls, shutdown).await;
    background.stop(&parts).await;
    Ok(())
}

/// What the services are made of: the store, the authenticator and the rules.
struct Parts {
    store: Store,
    auth: Arc<Authenticator>,
    methods: GrpcMethods,
    metrics: Arc<Metrics>,
    exchange: Arc<TokenExchange>,
    clients: PersonalClients,
}

impl Parts {
    /// Opens and migrates the database, loads the signing keys and the external issuers, and
    /// builds the rules on them.
    async fn open(config: &Config) -> Result<Self, Error> {
        // The JWKS client's TLS; a second install (another server in this process) changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let audiences = config.issuer.audiences();
        let trust = &config.trust;
        let external = ExternalIssuers::load(&trust.trusted_jwks, audiences.clone(), trust.roles_claim.clone())
            .await
            .map_err(|message| Error::config("--trusted-jwks", message, None))?;
        let vault = KeyVault::from_args(&config.keys)?;
        let searches = config.serving.max_concurrent_searches;
        let store =
            Store::open_with_searches(&config.database.database_url, OpenMode::CreateIfMissing, searches).await?;
        store.migrate().await?;
        SigningKeys::prepare(&store, &vault).await?;
        let keys = SigningKeys::load(store.clone(), vault, config.keys.schedule).await?;
        let issuer = config.issuer.issuer();
        let auth = Arc::new(Authenticator::new(keys, issuer, ClientStatus::new(store.clone()), external));
        let methods = GrpcMethods::from_descriptor_sets(&[
            FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .map_err(|e| Error::internal_with("cannot read the served descriptors", e))?;
        let metrics =
            Arc::new(Metrics::new(store.clone()).map_err(|e| Error::internal_with("cannot set up the metrics", e))?);
        let credentials = &config.credentials;
        let exchange = Arc::new(TokenExchange::new(
            store.clone(),
            Arc::clone(&auth),
            ExchangeSettings {
                audiences,
                token_ttl: credentials.token_ttl,
                trusted_proxies: trust.trusted_proxies.clone(),
                rate_per_client: credentials.exchange_rate_per_client,
                rate_per_source: credentials.exchange_rate_per_source,
            },
            Arc::clone(&metrics),
        ));
        let clients = PersonalClients::new(
            store.clone(),
            ClientSettings {
                admin_role: credentials.admin_role.clone(),
                public_host: config.issuer.public_host.clone(),
                secret_namespace: credentials.secret_namespace.clone(),
                max_clients_per_user: credentials.max_clients_per_user.0,
                create_rate_per_user: credentials.create_rate_per_user,
                revoke_rate_per_source: credentials.revoke_rate_per_source,
                trusted_proxies: trust.trusted_proxies.clone(),
            },
        );
        Ok(Self { store, auth, methods, metrics, exchange, clients })
    }
}

/// Every route on the one port: the gRPC services behind their authentication gate, the JSON
/// routes of the same methods, and the plain HTTP endpoints; and the JSON routes' methods, for
/// the metrics.
fn routes(
    config: &Config,
    parts: &Parts,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    health: Health,
) -> Result<(Router, JsonRoutes), Error> {
    let introspection = Introspection::new(Arc::clone(&parts.auth), config.mesh.introspection_role.clone());
    let check = MeshCheck::new(Arc::clone(&parts.auth), identity_headers(&config.mesh));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e: tonic_reflection::server::Error| Error::internal_with("cannot build reflection", e);
    let public: Vec<&'static str> = api::PUBLIC_SERVICES.into_iter().chain(OPERATIONS_SERVICES).collect();
    let gate = Gate::new(Arc::clone(&parts.auth), parts.methods.clone(), &public);
    let clients = &parts.clients;
    let grpc = Routes::new(PersonalClientServiceServer::new(PersonalClientApi::new(
        clients.clone(),
        config.credentials.max_lifetime,
    )))
    .add_service(PersonalClientSearchServiceServer::new(SearchApi::new(clients.clone())))
    .add_service(TokenServiceServer::new(TokenApi::new(Arc::clone(&parts.exchange))))
    .add_service(IntrospectionServiceServer::new(IntrospectionApi::new(introspection.clone())))
    .add_service(AuthorizationServer::new(ExtAuthzApi::new(check.clone())))
    .add_service(health_service)
    .add_service(reflection().build_v1().map_err(reflection_error)?)
    .add_service(reflection().build_v1alpha().map_err(reflection_error)?)
    .into_axum_router()
    // Every gRPC service but the public ones requires a bearer token, checked before any
    // handler runs. Paths no service serves fall through to `not_found`.
    .route_layer(axum::middleware::from_fn_with_state(gate.clone(), auth::require_bearer));
    let json_routes = api::json::routes::contract_routes()?;
    let json_targets = json_routes
        .iter()
        .map(|route| JsonRoute {
            verb: route.verb.clone(),
            template: route.template.clone(),
            method: route.grpc_path.clone(),
        })
        .collect();
    let json = api::json::router(json_routes, grpc.clone(), gate)?;
    let http = api::http::routes(HttpEndpoints {
        exchange: Arc::clone(&parts.exchange),
        auth: Arc::clone(&parts.auth),
        introspection,
        check,
        clients: parts.clients.clone(),
        health,
        metrics: Arc::clone(&parts.metrics),
    });
    let mut router = grpc.merge(json).merge(http);
    if telemetry::exporting() {
        router = router.route_layer(axum::middleware::from_fn(trace::record_route));
    }
    Ok((router.fallback(api::http::not_found), JsonRoutes::new(json_targets)))
}

/// The work a server does besides answering: following the database's health, writing
/// `last_used_at` and forgetting idle rate counts, and keeping up the signing keys.
struct Background {
    tasks: [JoinHandle<()>; 3],
}

impl Background {
    async fn start(
        config: &Config,
        parts: &Parts,
        health: Health,
        reporter: tonic_health::server::HealthReporter,
    ) -> Self {
        let watcher = health.watch(parts.store.clone(), reporter, health_names(), config.serving.health_interval).await;
        let maintenance = tokio::spawn({
            let (exchange, clients) = (Arc::clone(&parts.exchange), parts.clients.clone());
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
            let (auth, rotation) = (Arc::clone(&parts.auth), config.serving.key_rotation_interval.0);
            async move { auth.keys().keep_up(rotation).await }
        });
        Self { tasks: [maintenance, key_upkeep, watcher] }
    }

    /// Stops it, and writes what the exchange still holds in memory.
    async fn stop(self, parts: &Parts) {
        for task in self.tasks {
            task.abort();
        }
        parts.exchange.maintain().await;
    }
}

/// Serves `routes` on `listener` behind the edge (connections, the memory budget, admission,
/// metrics, and each call's span when spans are exported), until `shutdown`, then for at most
/// the grace period.
async fn transport(
    config: &Config,
    parts: &Parts,
    json_routes: JsonRoutes,
    routes: Router,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let serving = &config.serving;
    let limit =
        serving.memory_budget.map_or_else(budget::default_limit, |bytes| usize::try_from(bytes).unwrap_or(usize::MAX));
    let bodies = (serving.max_concurrent_requests as usize).saturating_mul(serving.max_request_bytes);
    let budget = MemoryBudget::new(limit, bodies, parts.metrics.memory_budget(limit, Held::ALL.map(Held::label)));
    let connections = Connections::new(
        ConnectionLimits {
            max_connections: connection_slots(serving.max_connections as usize),
            max_per_address: serving.max_connections_per_address as usize,
            exempt: config.trust.trusted_proxies.clone(),
            idle_timeout: serving.idle_timeout,
            answer_timeout: serving.request_timeout,
            connection_bytes: CONNECTION_BUFFERS + CONNECTION_WINDOW as usize + serving.max_header_bytes as usize,
        },
        budget,
        parts.metrics.connections_open(),
    );
    // Pings often enough that a live HTTP/2 client is never idle.
    let keepalive = KEEPALIVE_INTERVAL.min(serving.idle_timeout / 3);
    let http = HttpSettings {
        max_header_bytes: serving.max_header_bytes,
        max_concurrent_streams: serving.max_concurrent_streams,
        keepalive,
        keepalive_timeout: KEEPALIVE_TIMEOUT.min(keepalive),
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        head_timeout: serving.request_timeout,
    };
    let service = tower::ServiceBuilder::new()
        .option_layer(telemetry::exporting().then(|| TraceLayer::new(parts.methods.clone(), json_routes.clone())))
        .layer(RecordRpcLayer::new(Arc::clone(&parts.metrics), parts.methods.clone(), json_routes))
        .layer(AdmissionLayer::new(
            AdmissionLimits {
                max_concurrent_requests: serving.max_concurrent_requests as usize,
                max_concurrent_streams: serving.max_concurrent_streams as usize,
                max_request_bytes: serving.max_request_bytes,
                request_timeout: serving.request_timeout,
            },
            Arc::clone(&connections),
        ))
        .map_response(|answer: http::Response<axum::body::Body>| answer.map(tonic::body::Body::new))
        .service(routes);
    transport::serve(listener, connections, tls, http, service, shutdown, serving.shutdown_grace).await;
}

/// The server pings each HTTP/2 client this often (more often with a short `--idle-timeout`),
/// and drops one that has not answered within the timeout: a peer that has gone away does not
/// keep its connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 flow-control windows: how much a client may send before the server has read it. Every
/// request this service takes fits in one stream window; the connection window is what a peer
/// can make the server hold unread, and each connection holds it in the memory budget.
const STREAM_WINDOW: u32 = 128 * 1024;
const CONNECTION_WINDOW: u32 = 128 * 1024;

/// What a connection's own buffers take (reading, writing, HPACK tables, TLS), beyond its window
/// and its head: its place in the memory budget with them.
const CONNECTION_BUFFERS: usize = 64 * 1024;

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

/// Brings the database schema up to date, creates the first signing key if needed, and seals
/// the signing keys when given a key-encryption key: what `serve` does first, and `migrate`
/// alone.
pub async fn migrate(database: &DatabaseUrl, keys: &KeyArgs) -> Result<(), Error> {
    let vault = KeyVault::from_args(keys)?;
    let store = Store::open(database, OpenMode::CreateIfMissing).await?;
    store.migrate().await?;
    SigningKeys::prepare(&store, &vault).await
}
