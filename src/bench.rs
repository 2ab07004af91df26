//! `personal-clients bench`: starts the service in-process on a loopback port over a database of
//! its own and measures the API as a client sees it, printing throughput and latency per call.

use std::time::{Duration, Instant};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::{
    Config, Error,
    pb::iam::{self as pb, personal_client_service_client::PersonalClientServiceClient},
};

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Concurrent callers.
    #[arg(long, env = "PC_BENCH_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// How long each phase runs.
    #[arg(long, env = "PC_BENCH_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Database to measure on [default: a new SQLite file in the temporary directory, removed
    /// afterwards]. Never point this at a database in use: it fills it with test clients.
    #[arg(long, env = "PC_BENCH_DATABASE_URL")]
    pub bench_database_url: Option<String>,
}

/// Runs Create, Get and List phases against a fresh service.
pub async fn run(mut config: Config, options: &BenchOptions) -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("personal-clients-bench-{}.db", uuid::Uuid::now_v7()));
    let url = match &options.bench_database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}?mode=rwc", scratch.display()),
    };
    config.database_url = url.parse().map_err(|e| Error::invalid("bench-database-url", e))?;
    let result = measure(config, options).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
    }
    result
}

async fn measure(config: Config, options: &BenchOptions) -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::Internal(e.to_string()))?;
    let address = listener.local_addr().map_err(|e| Error::Internal(e.to_string()))?;
    let token = crate::mint_token(&config, "bench-user", &["bench".into()], Duration::from_secs(3600)).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve(config.clone(), listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| Error::Internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let client = PersonalClientServiceClient::new(channel);
    let bearer: MetadataValue<_> =
        format!("Bearer {token}").parse().map_err(|_| Error::Internal("token is not ASCII".into()))?;

    println!(
        "database {}, {} callers, {:?} per phase, {} cores",
        config.database_url,
        options.concurrency,
        options.duration,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let created = phase("Create", options, &client, &bearer, |mut c, req_meta, i| async move {
        let mut request = Request::new(pb::PersonalClientServiceCreateRequest {
            display_name: format!("bench {i}"),
            allow_source_cidr: vec!["10.0.0.0/8".into()],
            ..Default::default()
        });
        request.metadata_mut().insert("authorization", req_meta);
        c.create(request).await.map(|r| r.into_inner().client.map(|c| c.id).unwrap_or_default())
    })
    .await?;
    let ids = std::sync::Arc::new(created);
    let get_ids = std::sync::Arc::clone(&ids);
    phase("Get", options, &client, &bearer, move |mut c, req_meta, i| {
        let id = get_ids[i % get_ids.len()].clone();
        async move {
            let mut request = Request::new(pb::PersonalClientServiceGetRequest { id });
            request.metadata_mut().insert("authorization", req_meta);
            c.get(request).await.map(|_| String::new())
        }
    })
    .await?;
    phase("List (50 per page)", options, &client, &bearer, |mut c, req_meta, _| async move {
        let mut request =
            Request::new(pb::PersonalClientServiceListRequest { page_size: 50, page_token: String::new() });
        request.metadata_mut().insert("authorization", req_meta);
        c.list(request).await.map(|_| String::new())
    })
    .await?;

    let _ = stop.send(());
    server.await.map_err(|e| Error::Internal(e.to_string()))??;
    Ok(())
}

/// Runs `call` from `options.concurrency` callers for `options.duration`; prints the figures and
/// returns what the calls returned.
async fn phase<F, Fut>(
    name: &str,
    options: &BenchOptions,
    client: &PersonalClientServiceClient<Channel>,
    bearer: &MetadataValue<tonic::metadata::Ascii>,
    call: F,
) -> Result<Vec<String>, Error>
where
    F: Fn(PersonalClientServiceClient<Channel>, MetadataValue<tonic::metadata::Ascii>, usize) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: Future<Output = Result<String, tonic::Status>> + Send,
{
    let started = Instant::now();
    let deadline = started + options.duration;
    let workers: Vec<_> = (0..options.concurrency)
        .map(|worker| {
            let (client, bearer, call) = (client.clone(), bearer.clone(), call.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut latencies = Vec::new();
                let mut i = worker;
                while Instant::now() < deadline {
                    let at = Instant::now();
                    let result = call(client.clone(), bearer.clone(), i).await;
                    latencies.push(at.elapsed());
                    results.push(result);
                    i += 1;
                }
                (results, latencies)
            })
        })
        .collect();
    let mut values = Vec::new();
    let mut latencies = Vec::new();
    for worker in workers {
        let (results, worker_latencies) = worker.await.map_err(|e| Error::Internal(e.to_string()))?;
        for result in results {
            values.push(result.map_err(|status| Error::Internal(format!("{name} failed: {status}")))?);
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
