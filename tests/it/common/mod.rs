//! Test harness: a real server on 127.0.0.1:0 over a real database (a fresh SQLite file, or a
//! fresh PostgreSQL database when `PC_TEST_DATABASE_URL` is set), driven by the generated client.
#![allow(dead_code)]

pub mod oauth;
pub mod proxy;

use std::{
    io::Write,
    net::SocketAddr,
    time::{Duration, Instant},
};

use personal_clients::{
    Config,
    pb::iam::{self as pb, personal_client_service_client::PersonalClientServiceClient},
};
use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use tonic_types::StatusExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(TestDb)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::new($crate::common::Backend::Sqlite).await.expect("sqlite");
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::Postgres).await else { return };
                    super::$name(db).await;
                }
            )*
        }
    };
}

/// A database of one test's own, removed when the test ends (also when it fails).
#[derive(Debug)]
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<TempDir>,
    postgres: Option<PostgresDatabase>,
}

impl TestDb {
    /// `None` when PostgreSQL is not configured outside CI; in CI (`CI=true`) that is a failure.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("personal-clients.db").display());
                Some(Self { backend, url, _dir: Some(dir), postgres: None })
            }
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var("PC_TEST_DATABASE_URL") else {
                    if std::env::var("CI").is_ok_and(|v| v == "true") {
                        panic!("CI=true but PC_TEST_DATABASE_URL is not set: the PostgreSQL tests cannot run");
                    }
                    // Written past the test harness's capture, so a plain `cargo test` says so.
                    let _ = writeln!(
                        std::io::stderr(),
                        "skipped PostgreSQL: set PC_TEST_DATABASE_URL=postgres://... to run this test on it too"
                    );
                    return None;
                };
                let database = PostgresDatabase::create(&admin_url).await;
                Some(Self { backend, url: database.url.clone(), _dir: None, postgres: Some(database) })
            }
        }
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

    pub fn config(&self) -> Config {
        Config::with_database_url(&self.url).expect("config")
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

/// A running server.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), personal_clients::Error>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(personal_clients::serve(config.clone(), listener, async {
            let _ = rx.await;
        }));
        let mut server = Self { addr, config, shutdown: Some(tx), handle: Some(handle) };
        server.wait_until_ready().await;
        server
    }

    /// A server with TLS on: ready once it is serving (its first answer needs a TLS client).
    pub async fn start_tls(config: Config, ca_pem: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(personal_clients::serve(config.clone(), listener, async {
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

    pub async fn client(&self) -> PersonalClientServiceClient<Channel> {
        PersonalClientServiceClient::new(self.endpoint().connect().await.expect("connect"))
    }

    /// A user access token from the service's own keys, as `mint-token` prints it.
    pub async fn token(&self, user: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        personal_clients::mint_token(&self.config, user, &roles, Duration::from_secs(3600)).await.expect("mint token")
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
