//! Test harness: a real server on 127.0.0.1:0 over a real database (a fresh SQLite file, or a
//! fresh PostgreSQL database named by `PC_TEST_DATABASE_URL`), driven by the generated client.
//! Tests see none of the caller's `PC_*` variables: configurations start from the defaults.

pub mod oauth;
pub mod proxy;

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};
use personal_clients::rate::RateLimit;
use personal_clients::{
    auth,
    config::Config,
    domain::{Role, RoleSet, TokenKey},
    pb::iam::{self as pb, personal_client_service_client::PersonalClientServiceClient},
    server,
    store::DatabaseUrl,
    store::{OpenMode, Store},
};
use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use tonic_types::StatusExt;

pub type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The PostgreSQL server tests may create databases on, if any.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("PC_TEST_DATABASE_URL").ok().filter(|url| !url.is_empty())
}

/// PostgreSQL tests run when a server is configured, and in CI (where a missing one fails them);
/// elsewhere they are reported as ignored.
fn postgres_runs() -> bool {
    postgres_admin_url().is_some() || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// One test on one backend.
pub fn trial(name: &str, backend: Backend, test: impl FnOnce(TestDb) -> TestFuture + Send + 'static) -> Trial {
    let name = format!("{}::{}", name.trim_start_matches("it::"), backend.name());
    let ignored = backend == Backend::Postgres && !postgres_runs();
    Trial::test(name, move || run(async move { test(TestDb::new(backend).await).await })).with_ignored_flag(ignored)
}

/// One test that needs no database of its own.
pub fn plain(name: &str, test: impl FnOnce() -> TestFuture + Send + 'static) -> Trial {
    Trial::test(name.trim_start_matches("it::"), move || run(test()))
}

/// One test that attacks a server and measures it: it runs alone, since two at once on two
/// cores would measure each other.
pub fn alone(name: &str, test: impl FnOnce() -> TestFuture + Send + 'static) -> Trial {
    Trial::test(name.trim_start_matches("it::"), move || {
        let _alone = TESTS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        on_runtime(test())
    })
}

/// Held shared by every test, and alone by those that must run alone. A test waiting to run
/// alone keeps new ones from starting.
static TESTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run(test: impl Future<Output = ()>) -> Result<(), Failed> {
    let _shared = TESTS.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    on_runtime(test)
}

fn on_runtime(test: impl Future<Output = ()>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(test);
    Ok(())
}

/// Each named `async fn(TestDb)`, once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {{
        let mut trials = Vec::new();
        $(
            for backend in [$crate::common::Backend::Sqlite, $crate::common::Backend::Postgres] {
                let name = concat!(module_path!(), "::", stringify!($name));
                trials.push($crate::common::trial(name, backend, |db| Box::pin($name(db))));
            }
        )*
        trials
    }};
}

/// Each named `async fn(TestDb)` on one backend.
#[macro_export]
macro_rules! tests_on {
    ($backend:ident: $($name:ident),* $(,)?) => {{
        vec![$(
            $crate::common::trial(
                concat!(module_path!(), "::", stringify!($name)),
                $crate::common::Backend::$backend,
                |db| Box::pin($name(db)),
            )
        ),*]
    }};
}

/// Each named `async fn()`, each run alone.
#[macro_export]
macro_rules! alone_tests {
    ($($name:ident),* $(,)?) => {{
        vec![$($crate::common::alone(concat!(module_path!(), "::", stringify!($name)), || Box::pin($name()))),*]
    }};
}

/// Each named `async fn()`.
#[macro_export]
macro_rules! plain_tests {
    ($($name:ident),* $(,)?) => {{
        vec![$($crate::common::plain(concat!(module_path!(), "::", stringify!($name)), || Box::pin($name()))),*]
    }};
}

/// A database of one test's own, removed when the test ends (also when it fails).
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    /// Held for its `Drop`, which removes the database.
    _dir: Option<TempDir>,
    _postgres: Option<PostgresDatabase>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("personal-clients.db").display());
                Self { url, _dir: Some(dir), _postgres: None }
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url()
                    .expect("PC_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run (CI=true)");
                let database = PostgresDatabase::create(&admin_url).await;
                Self { url: database.url.clone(), _dir: None, _postgres: Some(database) }
            }
        }
    }

    /// The defaults, on this database, without the abuse limits (rate limits and credentials
    /// per user), which tests that hammer one user or client would trip; `limits.rs` tests them.
    pub fn config(&self) -> Config {
        let mut config = Config::defaults(&self.url).expect("config");
        let credentials = &mut config.credentials;
        credentials.max_clients_per_user = personal_clients::config::CountLimit(None);
        credentials.create_rate_per_user = RateLimit(None);
        credentials.exchange_rate_per_client = RateLimit(None);
        credentials.exchange_rate_per_source = RateLimit(None);
        credentials.revoke_rate_per_source = RateLimit(None);
        config
    }

    /// The defaults, on this database, abuse limits included.
    pub fn config_with_abuse_limits(&self) -> Config {
        Config::defaults(&self.url).expect("config")
    }

    pub fn database_url(&self) -> DatabaseUrl {
        self.url.parse().expect("database url")
    }

    /// This database's URL with its host and port replaced by `addr` (PostgreSQL only).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("url has a scheme");
        let (authority, path) = rest.split_at(rest.find('/').expect("url has a database"));
        let userinfo = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        format!("{scheme}://{userinfo}{addr}{path}")
    }

    /// The address of this database's server (PostgreSQL only).
    pub async fn server_addr(&self) -> SocketAddr {
        let rest = self.url.split_once("://").expect("url has a scheme").1;
        let authority = &rest[..rest.find('/').expect("url has a database")];
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
        tokio::net::lookup_host(host_port).await.expect("resolve").next().expect("an address")
    }

    /// The keys the service signs with, as the database holds them.
    pub async fn signing_key(&self) -> TokenKey {
        let store = Store::open(&self.database_url(), OpenMode::MustExist).await.expect("open the store");
        let stored = store.signing_keys().await.expect("signing keys").into_iter().next().expect("a signing key");
        let key = personal_clients::auth::KeyVault::unsealed().open(&stored).expect("a key stored in the clear");
        TokenKey { kid: stored.kid, key }
    }
}

#[derive(Debug)]
struct PostgresDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresDatabase {
    async fn create(admin_url: &str) -> Self {
        let name = format!("pc_test_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(admin_url).await.expect("connect to PC_TEST_DATABASE_URL");
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create test database");
        admin.close().await.ok();
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let (server, _) = base.rsplit_once('/').expect("PC_TEST_DATABASE_URL names a database");
        Self { admin_url: admin_url.to_owned(), url: format!("{server}/{name}{query}"), name }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a thread of its own may block on a new one.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
                    admin.close().await.ok();
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Polls `check` until it holds, failing with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running server.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), personal_clients::error::Error>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::serve(config.clone(), listener, async {
            let _ = rx.await;
        }));
        let mut server = Self { addr, config, shutdown: Some(tx), handle: Some(handle) };
        server.wait_until_ready().await;
        server
    }

    /// A server with TLS: ready once a TLS client trusting `ca_pem` gets a gRPC answer.
    pub async fn start_tls(config: Config, ca_pem: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::serve(config.clone(), listener, async {
            let _ = rx.await;
        }));
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline && !handle.is_finished(), "TLS server did not become ready");
            let endpoint = Channel::from_shared(format!("https://localhost:{}", addr.port())).expect("endpoint");
            if let Ok(channel) = endpoint.tls_config(tls.clone()).expect("tls").connect().await {
                let answer = PersonalClientServiceClient::new(channel)
                    .list(pb::PersonalClientServiceListRequest::default())
                    .await;
                if matches!(answer, Err(status) if status.code() == Code::Unauthenticated) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { addr, config, shutdown: Some(tx), handle: Some(handle) }
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(handle) = self.handle.take_if(|handle| handle.is_finished()) {
                panic!("server on {} exited before it was ready: {:?}", self.addr, handle.await);
            }
            if let Ok(channel) = self.endpoint().connect().await {
                let mut client = PersonalClientServiceClient::new(channel);
                // Any gRPC answer at all (UNAUTHENTICATED here) means the service is up.
                let answer = client.list(pb::PersonalClientServiceListRequest::default()).await;
                if matches!(answer, Err(status) if status.code() == Code::Unauthenticated) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server on {} did not become ready", self.addr);
    }

    fn endpoint(&self) -> tonic::transport::Endpoint {
        Channel::from_shared(format!("http://{}", self.addr)).expect("endpoint")
    }

    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("connect")
    }

    pub async fn client(&self) -> PersonalClientServiceClient<Channel> {
        PersonalClientServiceClient::new(self.channel().await)
    }

    /// A user access token from the service's own keys, as `mint-token` prints it.
    pub async fn token(&self, user: &str, roles: &[&str]) -> String {
        mint(&self.config, user, roles, Duration::from_secs(3600)).await
    }

    /// A personal client created by the caller of `user_token`, its secret, and an access token
    /// it obtained from this server's token endpoint.
    pub async fn client_with_token(&self, user_token: &str, name: &str) -> (pb::PersonalClient, String, String) {
        let created = self.client().await.create(authed(create_request(name), user_token)).await.unwrap().into_inner();
        let client = created.client.unwrap();
        let key = oauth::key_from_secret(&created.client_secret);
        let form = oauth::token_form(&client.client_id, &oauth::sdk_assertion(&key, &client.client_id));
        let issued = oauth::post_token(self.addr, &form, &[]).await;
        assert_eq!(issued.status, 200, "{}", issued.body);
        let token = issued.json()["access_token"].as_str().unwrap().to_owned();
        (client, created.client_secret, token)
    }

    /// The server's `/metrics` page.
    pub async fn metrics(&self) -> String {
        oauth::http(self.addr, "GET", "/metrics", &[], "").await.body
    }

    /// How many token exchanges ended with `outcome` (`issued`, or a refusal reason).
    pub async fn exchanges(&self, outcome: &str) -> f64 {
        let page = self.metrics().await;
        sample(&page, &format!("personal_clients_token_exchanges_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0)
    }

    /// How many gRPC calls of `method` (`Create`, `List`, ...) of `PersonalClientService` ended
    /// with `code` (`OK`, `DEADLINE_EXCEEDED`, ...), as the metrics say.
    pub async fn calls(&self, method: &str, code: &str) -> f64 {
        self.calls_over(method, code, "grpc").await
    }

    /// [`Self::calls`] made over `protocol`: `grpc`, or `http` for JSON.
    pub async fn calls_over(&self, method: &str, code: &str, protocol: &str) -> f64 {
        let name = format!(
            "personal_clients_grpc_requests_total{{code=\"{code}\",method=\"/c1.api.iam.v1.PersonalClientService/{method}\",protocol=\"{protocol}\"}}"
        );
        sample(&self.metrics().await, &name).unwrap_or(0.0)
    }

    /// Stops the server gracefully and waits for it to exit cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server exits cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A user access token minted as `mint-token` does, for the database of `config`.
pub async fn mint(config: &Config, user: &str, roles: &[&str], ttl: Duration) -> String {
    let roles: RoleSet = roles.iter().map(|r| Role::parse(r).expect("role")).collect();
    auth::mint_token(&config.database.database_url, &config.keys, &config.issuer, user, &roles, ttl)
        .await
        .expect("mint token")
}

/// The value of the sample named `name` exactly (with its labels) in a metrics page.
pub fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// The field violations of an `INVALID_ARGUMENT` status, as (field, description).
pub fn violations(status: &Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

/// The fields named by the violations of `status`.
pub fn violated_fields(status: &Status) -> Vec<String> {
    violations(status).into_iter().map(|(field, _)| field).collect()
}

pub fn create_request(name: &str) -> pb::PersonalClientServiceCreateRequest {
    pb::PersonalClientServiceCreateRequest { display_name: name.to_owned(), ..Default::default() }
}
