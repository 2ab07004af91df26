//! `personal-clients bench`: starts the service in-process on a loopback port over a database of
//! its own and measures the API as a client sees it (Create, Get, List, Search and the token
//! exchange, and Get and the exchange again while Searches run), printing throughput and latency
//! per call.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use personal_clients::{
    auth,
    config::{
        Config, CountLimit, CredentialArgs, DatabaseArgs, IssuerArgs, KeyArgs, MeshArgs, ServingArgs, TracingArgs,
        TrustArgs, parse_listen,
    },
    domain::{ClientSecret, Role, RoleSet},
    error::Error,
    exchange::assertion::ClientAssertion,
    pb::{
        auth::{TokenRequest, token_service_client::TokenServiceClient},
        iam::{
            self as pb, personal_client_search_service_client::PersonalClientSearchServiceClient,
            personal_client_service_client::PersonalClientServiceClient,
        },
    },
    rate::RateLimit,
    server,
    store::DatabaseUrl,
};

/// What to measure, and the service to measure: the same options as `serve`, but for the
/// database, which is a scratch one unless named.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent callers.
    #[arg(long, env = "PC_BENCH_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Searches running beside the Get and token phases measured with them.
    #[arg(long, env = "PC_BENCH_SEARCHERS", default_value_t = 16)]
    pub searchers: usize,
    /// How long each phase runs.
    #[arg(long, env = "PC_BENCH_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Database to measure on [default: a new SQLite file in the temporary directory, removed
    /// afterwards]. Never point this at a database in use: it fills it with test clients.
    #[arg(long, env = "PC_BENCH_DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Address the measured service listens on [default: a free loopback port].
    #[arg(long, env = "PC_BENCH_LISTEN", default_value = "127.0.0.1:0", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub issuer: IssuerArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub serving: ServingArgs,
}

/// Runs Create, Get, List and token phases against a fresh service.
pub async fn run(args: BenchArgs) -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("personal-clients-bench-{}.db", uuid::Uuid::now_v7()));
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", scratch.display())
            .parse()
            .map_err(|e: String| Error::internal(format!("scratch database: {e}")))?,
    };
    // One user creating and exchanging as fast as it can is what the abuse limits stop: the
    // benchmark measures the service without them.
    let mut credentials = args.credentials.clone();
    credentials.max_clients_per_user = CountLimit(None);
    credentials.create_rate_per_user = RateLimit(None);
    credentials.exchange_rate_per_client = RateLimit(None);
    credentials.exchange_rate_per_source = RateLimit(None);
    println!(
        "abuse limits off for the benchmark: --max-clients-per-user, --create-rate-per-user, --exchange-rate-per-client, --exchange-rate-per-source"
    );
    let config = Config {
        database: DatabaseArgs { database_url },
        issuer: args.issuer.clone(),
        keys: args.keys.clone(),
        credentials,
        trust: args.trust.clone(),
        mesh: args.mesh.clone(),
        serving: args.serving.clone(),
        // Spans are the binary's to export; the benchmark measures the service without them.
        tracing: TracingArgs::default(),
    };
    let result = measure(config, &args).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
    }
    result
}

async fn measure(config: Config, options: &BenchArgs) -> Result<(), Error> {
    let internal = |e: &dyn std::fmt::Display| Error::internal(e.to_string());
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::internal_with(format!("cannot listen on {}", options.listen), e))?;
    let address = listener.local_addr().map_err(|e| internal(&e))?;
    let database = &config.database.database_url;
    server::migrate(database, &config.keys).await?;
    let (keys, issuer) = (&config.keys, &config.issuer);
    let mint = |user: &'static str, role: Role| async move {
        let roles: RoleSet = [role].into_iter().collect();
        auth::mint_token(database, keys, issuer, user, &roles, Duration::from_secs(3600)).await
    };
    let token = mint("bench-user", Role::parse("bench").map_err(Error::internal)?).await?;
    let admin_token = mint("bench-admin", config.credentials.admin_role.clone()).await?;
    let audience = config.issuer.public_host.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(config.clone(), listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| internal(&e))?
        .connect()
        .await
        .map_err(|e| internal(&e))?;
    let clients = PersonalClientServiceClient::new(channel.clone());
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|e| internal(&e))?;
    let admin: MetadataValue<Ascii> = format!("Bearer {admin_token}").parse().map_err(|e| internal(&e))?;
    let search = PersonalClientSearchServiceClient::new(channel.clone());

    println!(
        "database {}, {} callers, {:?} per phase, {} cores",
        config.database.database_url,
        options.concurrency,
        options.duration,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let (c, a) = (clients.clone(), bearer.clone());
    let created = phase("Create", options, move |i| {
        let (mut c, a) = (c.clone(), a.clone());
        async move {
            let request = pb::PersonalClientServiceCreateRequest {
                display_name: format!("bench {i}"),
                allow_source_cidr: vec!["127.0.0.0/8".into()],
                ..Default::default()
            };
            c.create(authed(&a, request)).await.map(|r| r.into_inner())
        }
    })
    .await?;
    let ids: Arc<Vec<String>> =
        Arc::new(created.iter().filter_map(|r| r.client.as_ref().map(|c| c.id.clone())).collect());
    let (c, a, get_ids) = (clients.clone(), bearer.clone(), Arc::clone(&ids));
    let get = move |i: usize| {
        let (mut c, a, id) = (c.clone(), a.clone(), get_ids[i % get_ids.len()].clone());
        async move { c.get(authed(&a, pb::PersonalClientServiceGetRequest { id })).await.map(drop) }
    };
    phase("Get", options, get.clone()).await?;
    // A text query that matches a handful of clients: "bench 1234" is also in "bench 12345".
    let (s, a) = (search.clone(), admin.clone());
    let searching = move |i: usize| {
        let (mut s, a) = (s.clone(), a.clone());
        let query = format!("bench {}", 1000 + i % 1000);
        async move {
            let request = pb::PersonalClientSearchServiceSearchRequest { query, page_size: 50, ..Default::default() };
            s.search(authed(&a, request)).await.map(drop)
        }
    };
    phase("Search (text)", options, searching.clone()).await?;
    let background = Background::start(options.searchers, searching.clone());
    phase(&format!("Get, {} Searching", options.searchers), options, get).await?;
    background.stop().await;
    let (c, a) = (clients, bearer);
    phase("List (50 per page)", options, move |_| {
        let (mut c, a) = (c.clone(), a.clone());
        async move {
            c.list(authed(&a, pb::PersonalClientServiceListRequest { page_size: 50, page_token: String::new() }))
                .await
                .map(drop)
        }
    })
    .await?;

    let credential = created.first().ok_or_else(|| Error::internal("no client was created"))?;
    let client_id = credential.client.as_ref().map(|c| c.client_id.clone()).unwrap_or_default();
    let key = Arc::new(
        ClientSecret::parse(&credential.client_secret)
            .and_then(|secret| secret.signing_key())
            .map_err(|e| Error::internal(format!("the secret Create returned {e}")))?,
    );
    let tokens = TokenServiceClient::new(channel);
    let exchange = move |_| {
        let (mut tokens, key, client_id, audience) =
            (tokens.clone(), Arc::clone(&key), client_id.clone(), audience.clone());
        async move {
            let assertion = ClientAssertion::sign(&key, &client_id, &audience, 60, chrono::Utc::now().timestamp());
            let request = TokenRequest {
                grant_type: personal_clients::exchange::CLIENT_CREDENTIALS.into(),
                client_id,
                client_assertion_type: personal_clients::exchange::JWT_BEARER.into(),
                client_assertion: assertion,
            };
            tokens.token(request).await.map(drop)
        }
    };
    phase("Token (gRPC)", options, exchange.clone()).await?;
    let background = Background::start(options.searchers, searching);
    phase(&format!("Token, {} Searching", options.searchers), options, exchange).await?;
    background.stop().await;

    let _ = stop.send(());
    server.await.map_err(|e| internal(&e))??;
    Ok(())
}

/// Callers that keep calling until stopped, as a load beside a measured phase.
struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn start<F, Fut>(callers: usize, call: F) -> Self
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<(), tonic::Status>> + Send,
    {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let workers = (0..callers)
            .map(|worker| {
                let (call, stopped) = (call.clone(), stopped.clone());
                tokio::spawn(async move {
                    let mut i = worker;
                    while !*stopped.borrow() {
                        let _ = call(i).await;
                        i += callers;
                    }
                })
            })
            .collect();
        Self { stop, workers }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

fn authed<T>(bearer: &MetadataValue<Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

/// Runs `call` from `options.concurrency` callers for `options.duration`, prints the figures and
/// returns what the calls returned.
async fn phase<T, F, Fut>(name: &str, options: &BenchArgs, call: F) -> Result<Vec<T>, Error>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, tonic::Status>> + Send,
{
    let started = Instant::now();
    let deadline = started + options.duration;
    let workers: Vec<_> = (0..options.concurrency)
        .map(|worker| {
            let call = call.clone();
            let callers = options.concurrency;
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut latencies = Vec::new();
                let mut i = worker;
                while Instant::now() < deadline {
                    let at = Instant::now();
                    results.push(call(i).await);
                    latencies.push(at.elapsed());
                    i += callers;
                }
                (results, latencies)
            })
        })
        .collect();
    let mut values = Vec::new();
    let mut latencies = Vec::new();
    for worker in workers {
        let (results, worker_latencies) = worker.await.map_err(|e| Error::internal_with("a bench worker failed", e))?;
        for result in results {
            values.push(result.map_err(|status| Error::internal_with(format!("{name} failed"), status))?);
        }
        latencies.extend(worker_latencies);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    println!(
        "{name:<20} {:>7} calls {:>9.0}/s   p50 {:>8.2?}   p99 {:>8.2?}   max {:>8.2?}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
    Ok(values)
}
