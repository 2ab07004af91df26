//! The `personal-clients` binary: `serve` (the default), `migrate`, `mint-token` and `bench`,
//! each with only the options it uses.

use std::{io::IsTerminal, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use personal_clients::{
    Config, bench,
    config::{DatabaseArgs, IssuerArgs, parse_listen},
    domain::{Role, RoleSet},
    error::chain,
    server,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Issues and manages personal client credentials over gRPC")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    /// Log format; logs go to stderr, filtered by RUST_LOG (default `info`).
    #[arg(long, env = "PC_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: `serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default): migrates the database, then serves gRPC and HTTP.
    Serve(ServeArgs),
    /// Bring the database schema up to date, create the first signing key, and exit.
    Migrate(DatabaseArgs),
    /// Print a user access token signed with the service's current key, and nothing else.
    MintToken(MintTokenArgs),
    /// Measure the API in-process on a loopback port and print throughput and latency.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "PC_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    listen: SocketAddr,
    #[command(flatten)]
    config: Config,
}

#[derive(Args)]
struct MintTokenArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The user id (`sub`).
    #[arg(long, env = "PC_USER", value_parser = parse_user)]
    user: String,
    /// Roles, comma-separated; `--roles ""` for none.
    #[arg(long, env = "PC_ROLES", value_delimiter = ',', value_parser = parse_role)]
    roles: Vec<Option<Role>>,
    /// Token lifetime.
    #[arg(long, env = "PC_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

fn parse_user(value: &str) -> Result<String, String> {
    if value.trim().is_empty() { Err("must not be empty".into()) } else { Ok(value.to_owned()) }
}

fn parse_role(value: &str) -> Result<Option<Role>, String> {
    if value.is_empty() { Ok(None) } else { Role::parse(value).map(Some) }
}

fn main() -> ExitCode {
    // Usage errors (exit 2) come from here, before anything starts.
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("personal-clients: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve(cli.serve)))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let causes: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("personal-clients: {}", dedup_chain(&causes));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
            server::serve(args.config, listener, shutdown_signal()).await.map_err(lib_error)
        }
        Command::Migrate(database) => server::migrate(&database.database_url).await.map_err(lib_error),
        Command::MintToken(args) => {
            let roles: Vec<Role> = args.roles.into_iter().flatten().collect();
            let roles = RoleSet::from_claims(&roles.iter().map(Role::as_str).collect::<Vec<_>>());
            let token = server::mint_token(&args.database.database_url, &args.issuer, &args.user, &roles, args.ttl)
                .await
                .map_err(lib_error)?;
            println!("{token}");
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await.map_err(lib_error),
    }
}

/// The service's error with every cause it carries, for the operator.
fn lib_error(err: personal_clients::Error) -> anyhow::Error {
    anyhow::anyhow!(chain(&err))
}

/// The causes of an error as one line, each said once.
fn dedup_chain(causes: &[String]) -> String {
    let mut line = String::new();
    for cause in causes {
        if !line.contains(cause.as_str()) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(cause);
        }
    }
    line
}

/// Logs go to stderr, so `mint-token` prints only the token on stdout; colour only on a
/// terminal, and never with `NO_COLOR` set.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
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
