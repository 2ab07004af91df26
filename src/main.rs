//! The `personal-clients` binary: `serve` (the default) and the [`commands`] `migrate`,
//! `mint-token`, `keys`, `client-assertion`, `bench`, `completions` and `man`, each with only the
//! options it uses.

mod commands;

use std::{io::IsTerminal, net::SocketAddr, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use personal_clients::{
    config::{Config, parse_listen},
    error::{Error, chain},
    server,
    telemetry::{
        SPAN_TARGET,
        export::{Exporter, Settings as ExportSettings},
        logs::WithTraceIds,
    },
};
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt::format, layer::SubscriberExt, util::SubscriberInitExt,
};

/// `--version`: the version and the commit built.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PC_COMMIT"), ")");

#[derive(Parser)]
#[command(version = VERSION, about = "Issues and manages personal client credentials over gRPC")]
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
    Migrate(commands::migrate::MigrateArgs),
    /// Print a user access token signed with the service's current key, and nothing else.
    MintToken(commands::mint_token::MintTokenArgs),
    /// List, add, retire and withdraw the token signing keys.
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Print a client assertion signed with a personal client's secret, for the token exchange.
    /// The secret comes from PC_CLIENT_SECRET or, without it, from standard input.
    ClientAssertion(commands::client_assertion::ClientAssertionArgs),
    /// Measure the API in-process on a loopback port and print throughput and latency.
    Bench(commands::bench::BenchArgs),
    /// Print a shell completion script: `personal-clients completions bash > ~/.local/share/bash-completion/completions/personal-clients`.
    Completions(commands::completions::CompletionsArgs),
    /// Print the manual page (roff): `personal-clients man > personal-clients.1; man ./personal-clients.1`.
    Man,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "PC_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    listen: SocketAddr,
    #[command(flatten)]
    config: Config,
}

/// mimalloc: the service allocates and frees small buffers on several threads at once (the
/// runtime's and the database connections'), where the system allocator's locks showed up in
/// profiles. Built without transparent huge pages (`no_thp`): with them, a page touched in a
/// fresh area of the heap brought in 2 MiB, and the process held a quarter more memory at a
/// million clients (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors (exit 2) come from here, before anything starts.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("personal-clients: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    // Spans are exported by `serve` alone; the exporter runs on the runtime.
    let traces = match &command {
        Command::Serve(args) => Some(args.config.tracing.settings()),
        _ => None,
    };
    let exporter = match runtime.block_on(async { init_logging(cli.log_format, traces) }) {
        Ok(exporter) => exporter,
        Err(message) => {
            eprintln!("personal-clients: {message}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(command));
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("personal-clients: {}", chain(err.as_ref()));
            // A configuration mistake found at start-up is a usage error, like one clap finds.
            let usage = err.downcast_ref::<Error>().is_some_and(|e| matches!(e, Error::Config { .. }));
            if usage { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            Ok(server::serve(args.config, server::Listen::At(args.listen), shutdown_signal()).await?)
        }
        Command::Migrate(args) => commands::migrate::run(args).await,
        Command::MintToken(args) => commands::mint_token::run(args).await,
        Command::Keys(command) => commands::keys::run(command).await,
        Command::ClientAssertion(args) => commands::client_assertion::run(&args),
        Command::Bench(args) => Ok(commands::bench::run(args).await?),
        Command::Completions(args) => {
            commands::completions::completions(args.shell, Cli::command());
            Ok(())
        }
        Command::Man => commands::completions::man(Cli::command()),
    }
}

/// Logs go to stderr, so `mint-token` prints only the token on stdout; colour only on a
/// terminal, and never with `NO_COLOR` set. With `traces`, spans go to an OTLP collector if one
/// is named, and each JSON log line written in a traced call carries its trace's ids.
fn init_logging(format: LogFormat, traces: Option<ExportSettings>) -> Result<Option<Exporter>, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Spans are for the exporter alone, never a log line's.
    let filter = filter.add_directive(format!("{SPAN_TARGET}=off").parse().map_err(|e| format!("{e}"))?);
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (exporter, tracer) = match traces.map(|settings| Exporter::start(&settings)).transpose()?.flatten() {
        Some((tracer, exporter)) => (Some(exporter), Some(tracer)),
        None => (None, None),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().event_format(WithTraceIds(format::format().json())).with_filter(filter).boxed(),
    };
    // The service's spans only: not a library's, and no log line as a span event.
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // A span starts when it first has a child or a log line, not when entered: a call may
            // still adopt its parent (ext_authz's, from the request it checks).
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(SPAN_TARGET, Level::INFO))
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    if let Some(exporter) = &exporter {
        tracing::info!(to = %exporter.destination, "exporting spans");
    }
    Ok(exporter)
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
