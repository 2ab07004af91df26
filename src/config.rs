//! The service's configuration, in argument groups that each command takes only as it needs:
//! the database, the names the service issues under, the rules for credentials, whom it
//! trusts, and how it serves. Every flag has a `PC_*` environment twin; a value that cannot
//! work is refused as a usage error that names its flag.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use ipnet::IpNet;

use crate::{
    Error,
    domain::{KeySchedule, MaxLifetime, Role},
    rate::RateLimit,
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

    /// `iss` of the access tokens this service mints [default: http://<public-host>].
    #[arg(long, env = "PC_ISSUER", value_parser = parse_non_blank)]
    pub issuer: Option<String>,
}

impl IssuerArgs {
    pub fn issuer(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| format!("http://{}", self.public_host))
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

impl Config {
    /// The rules between flags and the key schedule: no token outlives the publication of the
    /// key that signed it, and a rotation leaves each key time to be published before it signs.
    pub fn check(&self) -> Result<(), Error> {
        let schedule = &self.keys.schedule;
        check_token_ttl("--token-ttl", self.credentials.token_ttl, schedule)?;
        if let RotationInterval(Some(every)) = self.serving.key_rotation_interval
            && every < schedule.activation_lead()
        {
            return Err(Error::config(
                "--key-rotation-interval",
                format!(
                    "must be at least {} (or `off`): a new key is published that long before it signs",
                    humantime::format_duration(schedule.activation_lead())
                ),
                None,
            ));
        }
        let mesh = &self.mesh;
        let names = [&mesh.identity_user_header, &mesh.identity_client_header, &mesh.identity_roles_header];
        if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
            return Err(Error::config(
                "--identity-user-header",
                "--identity-user-header, --identity-client-header and --identity-roles-header must name three different headers",
                None,
            ));
        }
        Ok(())
    }
}

/// A token lifetime (`flag`) within the longest the key schedule allows: a key stops being
/// published that long after it stops signing, so a longer-lived token would outlive its key.
pub fn check_token_ttl(flag: &'static str, ttl: Duration, schedule: &KeySchedule) -> Result<(), Error> {
    if ttl > schedule.max_token_ttl {
        return Err(Error::config(
            flag,
            format!(
                "must be at most {}: a signing key stays published that long after it stops signing, and a token must not outlive its key",
                humantime::format_duration(schedule.max_token_ttl)
            ),
            None,
        ));
    }
    Ok(())
}

/// How often `serve` adds a new signing key: a duration, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationInterval(pub Option<Duration>);

impl FromStr for RotationInterval {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        parse_positive_duration(value).map(|every| Self(Some(every))).map_err(|err| format!("{err}, or `off`"))
    }
}

fn parse_public_host(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains(['/', '@', ' ', '?', '#']) {
        return Err("must be a host name with an optional port (pc.example.com, localhost:50051)".into());
    }
    Ok(value.to_owned())
}

/// An HTTP header name, lower-cased as HTTP/2 and Envoy write them; not one of the pseudo or
/// hop-by-hop headers, nor `authorization`.
fn parse_header_name(value: &str) -> Result<String, String> {
    let name = http::HeaderName::from_bytes(value.as_bytes())
        .map_err(|_| format!("{value:?} is not an HTTP header name"))?
        .as_str()
        .to_owned();
    if ["authorization", "host", "connection", "te", "transfer-encoding", "content-length"].contains(&name.as_str()) {
        return Err(format!("{name} is a header with a meaning of its own; choose another name, like x-user-id"));
    }
    Ok(name)
}

fn parse_namespace(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains([':', ' ']) {
        return Err("must be non-empty, without ':' or spaces".into());
    }
    Ok(value.to_owned())
}

/// A bound on how many of something there may be: a positive number, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountLimit(pub Option<u32>);

impl FromStr for CountLimit {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        match value.parse::<u32>() {
            Ok(count) if count > 0 => Ok(Self(Some(count))),
            _ => Err(format!("{value:?} is not a positive whole number or `off`")),
        }
    }
}

/// A local user id, as `mint-token` names one: not blank, and without `#`, which only the ids
/// of external issuers' users hold (`ISSUER#SUBJECT`).
pub fn parse_local_user(value: &str) -> Result<String, String> {
    if value.contains('#') {
        return Err("must not contain '#': ISSUER#SUBJECT names a user of an external issuer".into());
    }
    parse_non_blank(value)
}

/// A value that says something: not empty, not only spaces.
pub fn parse_non_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() { Err("must not be empty".into()) } else { Ok(value.to_owned()) }
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("{err}; use a duration like 90s, 15m or 1h")),
    }
}

/// `ISSUER=PATH_OR_URL` of an external identity provider's JWK Set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedJwks {
    pub issuer: String,
    pub source: String,
}

impl FromStr for TrustedJwks {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (issuer, source) = value
            .split_once('=')
            .ok_or("must be ISSUER=PATH_OR_URL, e.g. https://idp.example=https://idp.example/jwks.json")?;
        if issuer.is_empty() || source.is_empty() {
            return Err("both the issuer and the JWKS path or URL are required".into());
        }
        if issuer.contains('#') {
            return Err(format!("the issuer {issuer:?} has a '#'; an issuer identifier has no fragment"));
        }
        if source.starts_with("http://") && !is_loopback_url(source) {
            return Err(format!(
                "{source} is plain HTTP, which anyone on the path could answer; use https:// (http:// only for this host: localhost, 127.0.0.0/8, [::1])"
            ));
        }
        Ok(Self { issuer: issuer.to_owned(), source: source.to_owned() })
    }
}

fn is_loopback_url(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_owned)) else {
        return false;
    };
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for TrustedJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.issuer, self.source)
    }
}

/// Where a command listens: `serve` on a fixed port, `bench` on any free one.
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| "must be an address and port, e.g. 127.0.0.1:50051 or 0.0.0.0:50051".to_owned())
}

/// A database URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// The file of a SQLite URL: `sqlite://data/pc.db?mode=rwc` is `data/pc.db`.
    pub fn sqlite_path(&self) -> Option<&str> {
        let rest = self.0.strip_prefix("sqlite://").or_else(|| self.0.strip_prefix("sqlite:"))?;
        Some(rest.split('?').next().unwrap_or(rest))
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) {
            return Err("in-memory SQLite is not supported: every connection would see a database of its own; use a file (sqlite://FILE?mode=rwc)".into());
        }
        let supported = ["sqlite:", "postgres://", "postgresql://"];
        if supported.iter().any(|prefix| url.starts_with(prefix)) {
            Ok(Self(url.to_owned()))
        } else {
            Err("must start with sqlite:, postgres:// or postgresql://".into())
        }
    }
}

impl fmt::Display for DatabaseUrl {
    /// `postgres://user:secret@host/db?sslpassword=x` shows as
    /// `postgres://user:***@host/db?sslpassword=***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (url, query) = match self.0.split_once('?') {
            Some((url, query)) => (url, Some(query)),
            None => (self.0.as_str(), None),
        };
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find('/').unwrap_or(rest.len());
                let userinfo_end = rest[..authority_end].rfind('@');
                match userinfo_end.and_then(|at| rest[..at].split_once(':').map(|(user, _)| (user, at))) {
                    Some((user, at)) => write!(f, "{scheme}://{user}:***{}", &rest[at..])?,
                    None => f.write_str(url)?,
                }
            }
            None => f.write_str(url)?,
        }
        let Some(query) = query else { return Ok(()) };
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("password") => format!("{name}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        write!(f, "?{}", parameters.join("&"))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_password_never_prints() {
        let url: DatabaseUrl = "postgres://pc:hunter2@db:5432/pc?sslmode=require".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://pc:***@db:5432/pc?sslmode=require");
        assert!(!format!("{url:?}").contains("hunter2"));
        let no_password: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/test".parse().unwrap();
        assert_eq!(no_password.to_string(), "postgres://postgres@127.0.0.1:5432/test");
        let sqlite: DatabaseUrl = "sqlite://personal-clients.db?mode=rwc".parse().unwrap();
        assert_eq!(sqlite.to_string(), "sqlite://personal-clients.db?mode=rwc");
        let in_query: DatabaseUrl = "postgres://db/pc?user=pc&password=hunter2&sslpassword=x".parse().unwrap();
        assert_eq!(in_query.to_string(), "postgres://db/pc?user=pc&password=***&sslpassword=***");
        assert_eq!(sqlite.sqlite_path(), Some("personal-clients.db"));
    }

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
