//! The service's configuration, in argument groups that each command takes only as it needs:
//! the database, the names the service issues under, the rules for credentials, whom it
//! trusts, how it serves, and where its spans go. Every flag has a `PC_*` environment twin; a value that cannot
//! work is refused as a usage error that names its flag: [`values`] parses each value alone,
//! [`rules`] checks the flags against each other.

mod rules;
mod values;

use std::{path::PathBuf, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use ipnet::IpNet;

pub use rules::check_token_ttl;
pub use values::{CountLimit, RotationInterval, TrustedJwks, parse_listen, parse_local_user, parse_non_blank};

use crate::{
    domain::{KeySchedule, MaxLifetime, Role},
    rate::RateLimit,
    store::DatabaseUrl,
    telemetry::export::{MAX_QUEUE_SIZE, OtlpProtocol, Settings as ExportSettings},
};
use values::{
    parse_header_name, parse_issuer, parse_memory, parse_namespace, parse_otlp_endpoint, parse_positive_duration,
    parse_public_host, parse_ratio,
};

/// The embedded default: a SQLite file in the working directory, created at first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://personal-clients.db?mode=rwc";

/// Which database: every command takes this.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database: `sqlite://FILE?mode=rwc` (embedded) or `postgres://USER:PASS@HOST/DB`.
    #[arg(long, env = "PC_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: DatabaseUrl,
}

/// The names the service issues under: in client ids and in the tokens it mints.
#[derive(Debug, Clone, Args)]
pub struct IssuerArgs {
    /// Host name used in client ids and expected as the audience of client assertions.
    #[arg(long, env = "PC_PUBLIC_HOST", default_value = "localhost", value_parser = parse_public_host)]
    pub public_host: String,

    /// `iss` of the access tokens this service mints, and the URL its metadata, token endpoint
    /// and keys are published under (it may carry a path, as behind a proxy's prefix)
    /// [default: http://<public-host>].
    #[arg(long, env = "PC_ISSUER", value_parser = parse_issuer)]
    pub issuer: Option<String>,
}

impl IssuerArgs {
    pub fn issuer(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| {
            // A bare IPv6 address is bracketed in a URL.
            let host = &self.public_host;
            if host.matches(':').count() > 1 && !host.starts_with('[') {
                format!("http://[{host}]")
            } else {
                format!("http://{host}")
            }
        })
    }

    /// The names this service answers to as an audience, of client assertions and of external
    /// issuers' tokens alike: the public host (with and without its port; ConductorOne's SDKs
    /// send the host) and the issuer (draft-ietf-oauth-rfc7523bis).
    pub fn audiences(&self) -> Vec<String> {
        let host = &self.public_host;
        let mut audiences = vec![host.clone(), self.issuer()];
        if let Some((without_port, port)) = host.rsplit_once(':')
            && port.chars().all(|c| c.is_ascii_digit())
            && !without_port.contains(':')
        {
            audiences.push(without_port.to_owned());
        }
        audiences
    }
}

/// How the service's own signing keys are kept in the database.
#[derive(Debug, Clone, Default, Args)]
pub struct KeyArgs {
    /// File holding a key-encryption key (32 random bytes, base64: `openssl rand -base64 32`):
    /// the token signing keys are stored sealed under it, and keys stored in the clear are sealed
    /// at start. Every replica and `mint-token` then need it.
    #[arg(long, env = "PC_KEY_ENCRYPTION_KEY_FILE")]
    pub key_encryption_key_file: Option<PathBuf>,

    /// How long a JWKS may be cached, how often replicas re-read the keys, the clock skew and
    /// the longest token lifetime: fixed for the command line ([`KeySchedule::default`]);
    /// shorter only for tests, which set it in code.
    #[arg(skip)]
    pub schedule: KeySchedule,
}

/// The rules for credentials and the tokens they obtain.
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// Role that may search and revoke any user's personal clients.
    #[arg(long, env = "PC_ADMIN_ROLE", default_value = "admin", value_parser = Role::parse)]
    pub admin_role: Role,

    /// Longest credential lifetime (`365d`, `90d`, ...), or `none` for no limit.
    #[arg(long, env = "PC_MAX_LIFETIME", default_value = "365d")]
    pub max_lifetime: MaxLifetime,

    /// Lifetime of the access tokens the token exchange issues, at most 24h.
    #[arg(long, env = "PC_TOKEN_TTL", default_value = "1h", value_parser = parse_positive_duration)]
    pub token_ttl: Duration,

    /// Namespace in issued secrets: `secret-token:<namespace>:v1:...`.
    #[arg(long, env = "PC_SECRET_NAMESPACE", default_value = "personal-clients", value_parser = parse_namespace)]
    pub secret_namespace: String,

    /// Most credentials one user may hold that are not revoked (or `off`); Create past it is
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "PC_MAX_CLIENTS_PER_USER", default_value = "100")]
    pub max_clients_per_user: CountLimit,

    /// How often one user may call Create (`30/min`, `10/s`, or `off`), per server process.
    #[arg(long, env = "PC_CREATE_RATE_PER_USER", default_value = "30/min")]
    pub create_rate_per_user: RateLimit,

    /// How often one personal client may ask for a token (`10/s`, or `off`), per server process.
    #[arg(long, env = "PC_EXCHANGE_RATE_PER_CLIENT", default_value = "10/s")]
    pub exchange_rate_per_client: RateLimit,

    /// How often one source address (IPv6: one /64) may ask for a token, whatever the client,
    /// per server process.
    #[arg(long, env = "PC_EXCHANGE_RATE_PER_SOURCE", default_value = "100/s")]
    pub exchange_rate_per_source: RateLimit,

    /// How often one source address (IPv6: one /64) may report leaked secrets to
    /// `/auth/v1/credentials/revoke` (`60/min`, or `off`), per server process; each report names
    /// up to 100.
    #[arg(long, env = "PC_REVOKE_RATE_PER_SOURCE", default_value = "60/min")]
    pub revoke_rate_per_source: RateLimit,
}

/// Whom the service believes: other identity providers and proxies.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// An external identity provider whose user tokens are accepted: `ISSUER=PATH_OR_URL` of its
    /// JWK Set (EdDSA, ES256, RS256). Repeat for several.
    #[arg(long = "trusted-jwks", env = "PC_TRUSTED_JWKS", value_delimiter = ',')]
    pub trusted_jwks: Vec<TrustedJwks>,

    /// Claim of external tokens that holds the user's roles; a dotted path reaches into objects
    /// (`realm_access.roles`).
    #[arg(long, env = "PC_ROLES_CLAIM", default_value = "roles", value_parser = parse_non_blank)]
    pub roles_claim: String,

    /// Proxies (CIDRs, comma-separated) whose `X-Forwarded-For` is believed for the source
    /// address of token requests. Default: none; the TCP peer is the source.
    #[arg(long, env = "PC_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
}

/// What the services behind this one may ask: token introspection and the mesh's check.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// Role a caller of token introspection (`POST /auth/v1/introspect`, `IntrospectionService`)
    /// must hold: the resource servers' role.
    #[arg(long, env = "PC_INTROSPECTION_ROLE", default_value = "resource-server", value_parser = Role::parse)]
    pub introspection_role: Role,

    /// Request header that carries the caller's user id upstream when an ext_authz Check allows
    /// a request; a copy the caller sent is removed.
    #[arg(long, env = "PC_IDENTITY_USER_HEADER", default_value = "x-user-id", value_parser = parse_header_name)]
    pub identity_user_header: String,

    /// Request header that carries the personal client's id upstream (none for a user's own
    /// token); a copy the caller sent is removed.
    #[arg(long, env = "PC_IDENTITY_CLIENT_HEADER", default_value = "x-client-id", value_parser = parse_header_name)]
    pub identity_client_header: String,

    /// Request header that carries the token's roles upstream, comma-separated; a copy the
    /// caller sent is removed.
    #[arg(long, env = "PC_IDENTITY_ROLES_HEADER", default_value = "x-user-roles", value_parser = parse_header_name)]
    pub identity_roles_header: String,
}

/// How the service serves: transport, limits and background work.
#[derive(Debug, Clone, Args)]
pub struct ServingArgs {
    /// PEM certificate chain: with `--tls-key`, serve TLS (gRPC and HTTP) on the same port.
    /// Without both, plaintext, for meshes whose sidecar terminates TLS.
    #[arg(long, env = "PC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "PC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest request body accepted; a larger gRPC request is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PC_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// Largest block of request headers accepted on HTTP/2 (gRPC), in bytes.
    #[arg(long, env = "PC_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_header_bytes: u32,

    /// Most connections held open at once. When all are taken, the connection whose peer has been
    /// silent longest is closed to make room; new ones wait in the listen backlog meanwhile.
    #[arg(long, env = "PC_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most connections held open at once from one address; more from it are closed at once.
    /// Addresses in `--trusted-proxies` may hold any number.
    #[arg(long, env = "PC_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,

    /// Memory that peers may make the server hold, all told: connections' buffers and windows,
    /// request headers and bodies, answers not yet read (`512MiB`, `2GiB`, ...) [default: half
    /// the cgroup's memory limit, or of the machine's memory].
    #[arg(long, env = "PC_MEMORY_BUDGET", value_parser = parse_memory)]
    pub memory_budget: Option<u64>,

    /// A connection whose peer sends nothing for this long is closed (a live HTTP/2 client always
    /// answers the server's keep-alive pings, sent every 30 s).
    #[arg(long, env = "PC_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Most requests in flight on one HTTP/2 connection.
    #[arg(long, env = "PC_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Most requests in flight in the whole server; more are refused at once with
    /// RESOURCE_EXHAUSTED (HTTP 503), health checks excepted.
    #[arg(long, env = "PC_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// Most Searches running at once in this process, each on a database connection of its own;
    /// more wait their turn within the request timeout [default: half the cores, at least 1].
    #[arg(long, env = "PC_MAX_CONCURRENT_SEARCHES", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_concurrent_searches: Option<u32>,

    /// Time for a request to arrive whole, body included, and be answered; a caller's shorter
    /// `grpc-timeout` wins.
    #[arg(long, env = "PC_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// How often `last_used_at` is written; uses in between are batched in memory. 30 s keeps it
    /// accurate to well within a minute.
    #[arg(long, env = "PC_USAGE_FLUSH_INTERVAL", default_value = "30s", value_parser = parse_positive_duration)]
    pub usage_flush_interval: Duration,

    /// How often the database is pinged for the health service and `/healthz`.
    #[arg(long, env = "PC_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_positive_duration)]
    pub health_interval: Duration,

    /// Add a new token signing key this often (`30d`, ...), or `off`: it is published for 7m
    /// before it signs, and the key it replaces stays published until its tokens have expired.
    #[arg(long, env = "PC_KEY_ROTATION_INTERVAL", default_value = "off")]
    pub key_rotation_interval: RotationInterval,

    /// How long in-flight calls may run on after SIGTERM/SIGINT before the server stops.
    #[arg(long, env = "PC_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where spans go: OpenTelemetry over OTLP. Off unless a collector is named, here or in the
/// `OTEL_*` variables, which fill in what these flags leave out.
#[derive(Debug, Clone, Default, Args)]
pub struct TracingArgs {
    /// OpenTelemetry collector to export spans to, as a base URL (`http://collector:4318`, or
    /// port 4317 with `--otlp-protocol grpc`) [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_ENDPOINT; without any, no spans are exported].
    #[arg(long, env = "PC_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// How spans go to the collector [default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf].
    #[arg(long, env = "PC_OTLP_PROTOCOL", value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,

    /// Share of new traces sampled, from 0 to 1; a call in a caller's trace follows the caller's
    /// choice [default: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else every trace].
    #[arg(long, env = "PC_TRACE_SAMPLE_RATIO", value_parser = parse_ratio)]
    pub trace_sample_ratio: Option<f64>,

    /// Ended spans that may wait for export, at most 65536; more are dropped, and counted in
    /// /metrics [default: OTEL_BSP_MAX_QUEUE_SIZE, else 2048].
    #[arg(long, env = "PC_TRACE_QUEUE_SIZE", value_parser = clap::value_parser!(u32).range(1..=MAX_QUEUE_SIZE as i64))]
    pub trace_queue_size: Option<u32>,
}

impl TracingArgs {
    /// What the flags say, for the exporter.
    pub fn settings(&self) -> ExportSettings {
        ExportSettings {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol,
            sample_ratio: self.trace_sample_ratio,
            queue_size: self.trace_queue_size.map(|size| size as usize),
        }
    }
}

/// Everything the running service uses, but where it listens.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseArgs,
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
    #[command(flatten)]
    pub tracing: TracingArgs,
}

#[derive(Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The defaults with another database, whatever the environment holds: what tests and
    /// `bench` start from.
    pub fn defaults(database_url: &str) -> Result<Self, clap::Error> {
        let command = ConfigOnly::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(["personal-clients", "--database-url", database_url])?;
        ConfigOnly::from_arg_matches(&matches).map(|parsed| parsed.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let config = Config::defaults("sqlite://x.db?mode=rwc").unwrap();
        assert_eq!(config.issuer.public_host, "localhost");
        assert_eq!(config.issuer.issuer(), "http://localhost");
        assert_eq!(config.credentials.max_lifetime.to_string(), "365d");
        assert_eq!(config.credentials.token_ttl, Duration::from_secs(3600));
        assert_eq!(config.credentials.admin_role.as_str(), "admin");
    }
}
