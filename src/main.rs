//! The `personal-clients` binary: `serve` (the default), `migrate`, `mint-token`, `keys`,
//! `client-assertion` and `bench`, each with only the options it uses.

use std::{io::IsTerminal, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use personal_clients::{
    Config, bench,
    config::{DatabaseArgs, IssuerArgs, KeyArgs, parse_listen, parse_local_user, parse_non_blank},
    domain::KeySchedule,
    domain::{ClientSecret, Role, RoleSet},
    error::chain,
    exchange::assertion::ClientAssertion,
    key_commands, server,
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
    Migrate(MigrateArgs),
    /// Print a user access token signed with the service's current key, and nothing else.
    MintToken(MintTokenArgs),
    /// List, add, retire and withdraw the token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a client assertion signed with a personal client's secret, for the token exchange.
    /// The secret comes from PC_CLIENT_SECRET or, without it, from standard input.
    ClientAssertion(ClientAssertionArgs),
    /// Measure the API in-process on a loopback port and print throughput and latency.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every stored key: its kid, state (next, current or retired), when it was created, starts
    /// signing, stops signing, and leaves the JWKS.
    List(KeysListArgs),
    /// Add a key and print its kid. It is published at once and signs after --activate-in,
    /// taking over from the current key.
    Add(KeysAddArgs),
    /// Retire a key. One that has not signed yet is retired at once. The current key hands over to
    /// the next one as soon as that one may sign; without a next key it is refused. A retired key
    /// stays in the JWKS until every token it signed has expired.
    Retire(KeysRetireArgs),
    /// Withdraw a key that may have leaked: it is removed now, and every server stops publishing
    /// it, signing with it and accepting its tokens when it next re-reads the keys (within a
    /// minute). If it was the key that signs, the next key takes over at once or, without one, a
    /// new key that signs at once. Unlike retire, the tokens it signed stop working.
    Withdraw(KeysWithdrawArgs),
}

#[derive(Args)]
struct KeysListArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
struct KeysAddArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// When the key starts signing [default: 7m, as long as it takes every replica to publish it
    /// and every cached JWKS to expire]. A shorter time is allowed, with a warning.
    #[arg(long, value_parser = humantime::parse_duration)]
    activate_in: Option<Duration>,
}

#[derive(Args)]
struct KeysRetireArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// The key's kid, as `keys list` shows it.
    kid: String,
}

#[derive(Args)]
struct KeysWithdrawArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The key's kid, as `keys list` shows it.
    kid: String,
}

#[derive(Args)]
struct ClientAssertionArgs {
    /// The personal client's id, as Create returned it.
    #[arg(long, env = "PC_CLIENT_ID", value_parser = parse_non_blank)]
    client_id: String,
    /// The audience: the service's --public-host (or its --issuer).
    #[arg(long, env = "PC_AUDIENCE", default_value = "localhost", value_parser = parse_non_blank)]
    audience: String,
    /// How long the assertion may be used, at most 5m.
    #[arg(long, default_value = "60s", value_parser = parse_assertion_lifetime)]
    lifetime: Duration,
}

fn parse_assertion_lifetime(value: &str) -> Result<Duration, String> {
    let limit = Duration::from_secs(300);
    match humantime::parse_duration(value) {
        Ok(lifetime) if lifetime.is_zero() || lifetime > limit => Err("must be between 1s and 5m".into()),
        Ok(lifetime) => Ok(lifetime),
        Err(err) => Err(format!("{err}; use a duration like 60s")),
    }
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
    keys: KeyArgs,
    #[command(flatten)]
    issuer: IssuerArgs,
    /// The user id (`sub`).
    #[arg(long, env = "PC_USER", value_parser = parse_local_user)]
    user: String,
    /// Roles, comma-separated; `--roles ""` for none.
    #[arg(long, env = "PC_ROLES", value_delimiter = ',', value_parser = parse_role)]
    roles: Vec<Option<Role>>,
    /// Token lifetime, at most 24h.
    #[arg(long, env = "PC_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

fn parse_role(value: &str) -> Result<Option<Role>, String> {
    if value.is_empty() { Ok(None) } else { Role::parse(value).map(Some) }
}

/// mimalloc: the service allocates and frees small buffers on several threads at once (the
/// runtime's and the database connections'), where the system allocator's locks showed up in
/// profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            eprintln!("personal-clients: {}", chain(err.as_ref()));
            // A configuration mistake found at start-up is a usage error, like one clap finds.
            let usage = err
                .downcast_ref::<personal_clients::Error>()
                .is_some_and(|e| matches!(e, personal_clients::Error::Config { .. }));
            if usage { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            Ok(server::serve(args.config, server::Listen::At(args.listen), shutdown_signal()).await?)
        }
        Command::Migrate(args) => Ok(server::migrate(&args.database.database_url, &args.keys).await?),
        Command::MintToken(args) => {
            let roles: RoleSet = args.roles.into_iter().flatten().collect();
            let token =
                server::mint_token(&args.database.database_url, &args.keys, &args.issuer, &args.user, &roles, args.ttl)
                    .await?;
            println!("{token}");
            Ok(())
        }
        Command::Keys(KeysCommand::List(args)) => {
            print!("{}", key_commands::list(&args.database.database_url, &KeySchedule::default()).await?);
            Ok(())
        }
        Command::Keys(KeysCommand::Add(args)) => {
            let added = key_commands::add(&args.database.database_url, &args.keys, args.activate_in).await?;
            println!("{}", added.kid);
            Ok(())
        }
        Command::Keys(KeysCommand::Retire(args)) => {
            match key_commands::retire(&args.database.database_url, &KeySchedule::default(), &args.kid).await? {
                Ok(done) => {
                    println!("{done}");
                    Ok(())
                }
                Err(why) => anyhow::bail!("{why}"),
            }
        }
        Command::Keys(KeysCommand::Withdraw(args)) => {
            match key_commands::withdraw(&args.database.database_url, &args.keys, &args.kid).await? {
                Ok(done) => {
                    println!("{done}");
                    Ok(())
                }
                Err(why) => anyhow::bail!("{why}"),
            }
        }
        Command::ClientAssertion(args) => {
            let secret = match std::env::var("PC_CLIENT_SECRET") {
                Ok(secret) => secret,
                Err(_) if std::io::stdin().is_terminal() => {
                    anyhow::bail!("no secret: set PC_CLIENT_SECRET, or pass the secret on standard input")
                }
                Err(_) => {
                    std::io::read_to_string(std::io::stdin()).context("cannot read the secret from standard input")?
                }
            };
            let key = ClientSecret::parse(&secret)
                .and_then(|secret| secret.signing_key())
                .map_err(|e| anyhow::anyhow!("the secret {e}"))?;
            let lifetime = i64::try_from(args.lifetime.as_secs()).unwrap_or(60);
            let now = chrono::Utc::now().timestamp();
            println!("{}", ClientAssertion::sign(&key, &args.client_id, &args.audience, lifetime, now));
            Ok(())
        }
        Command::Bench(args) => Ok(bench::run(args).await?),
    }
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
