//! The `personal-clients` binary: `serve` (the default), `migrate` and `mint-token`.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use personal_clients::{Config, Error, config::LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Issues and manages personal client credentials over gRPC")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Print a user access token signed with the service's current key, and nothing else.
    MintToken {
        /// The user id (`sub`).
        #[arg(long, env = "PC_USER")]
        user: String,
        /// Roles, comma-separated.
        #[arg(long, env = "PC_ROLES", value_delimiter = ',')]
        roles: Vec<String>,
        /// Token lifetime.
        #[arg(long, env = "PC_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Measure the API in-process on a loopback port and print throughput and latency.
    Bench(personal_clients::bench::BenchOptions),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => personal_clients::migrate(&cli.config).await,
        Command::MintToken { user, roles, ttl } => {
            personal_clients::mint_token(&cli.config, &user, &roles, ttl).await.map(|token| println!("{token}"))
        }
        Command::Bench(options) => personal_clients::bench::run(cli.config, &options).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("personal-clients: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen)))?;
    personal_clients::serve(config, listener, shutdown_signal()).await
}

fn describe(err: &Error) -> String {
    match err {
        Error::InvalidArgument(violations) => {
            violations.iter().map(|v| format!("--{} {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

/// Logs go to stderr, so `mint-token` prints only the token on stdout.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
