//! The service's configuration: every flag has a `PC_*` environment twin.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, ValueEnum};
use ipnet::IpNet;

use crate::{auth::external::TrustedJwks, domain::MaxLifetime};

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Database: `sqlite://FILE?mode=rwc` (embedded) or `postgres://USER:PASS@HOST/DB`.
    #[arg(long, env = "PC_DATABASE_URL", default_value = "sqlite://personal-clients.db?mode=rwc", global = true)]
    pub database_url: DatabaseUrl,

    /// Address to serve gRPC and HTTP on.
    #[arg(long, env = "PC_LISTEN", default_value = "127.0.0.1:50051", global = true)]
    pub listen: SocketAddr,

    /// Host name used in client ids and expected as the audience of client assertions.
    #[arg(long, env = "PC_PUBLIC_HOST", default_value = "localhost", global = true)]
    pub public_host: String,

    /// `iss` of the access tokens this service mints [default: http://<public-host>].
    #[arg(long, env = "PC_ISSUER", global = true)]
    pub issuer: Option<String>,

    /// Role that may search and revoke any user's personal clients.
    #[arg(long, env = "PC_ADMIN_ROLE", default_value = "admin", global = true)]
    pub admin_role: String,

    /// Longest credential lifetime (`365d`, `90d`, ...), or `none` for no limit.
    #[arg(long, env = "PC_MAX_LIFETIME", default_value = "365d", global = true)]
    pub max_lifetime: MaxLifetime,

    /// Lifetime of the access tokens the token exchange issues.
    #[arg(long, env = "PC_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub token_ttl: Duration,

    /// Namespace in issued secrets: `secret-token:<namespace>:v1:...`.
    #[arg(long, env = "PC_SECRET_NAMESPACE", default_value = "personal-clients", global = true)]
    pub secret_namespace: String,

    /// An external identity provider whose user tokens are accepted: `ISSUER=PATH_OR_URL` of its
    /// JWK Set (EdDSA, ES256, RS256). Repeat for several.
    #[arg(long = "trusted-jwks", env = "PC_TRUSTED_JWKS", value_delimiter = ',', global = true)]
    pub trusted_jwks: Vec<TrustedJwks>,

    /// Claim of external tokens that holds the user's roles; a dotted path reaches into objects
    /// (`realm_access.roles`).
    #[arg(long, env = "PC_ROLES_CLAIM", default_value = "roles", global = true)]
    pub roles_claim: String,

    /// Proxies (CIDRs, comma-separated) whose `X-Forwarded-For` is believed for the source
    /// address of token requests. Default: none; the TCP peer is the source.
    #[arg(long, env = "PC_TRUSTED_PROXIES", value_delimiter = ',', global = true)]
    pub trusted_proxies: Vec<IpNet>,

    /// How often `last_used_at` is written; uses in between are batched in memory. 30 s keeps it
    /// accurate to well within a minute.
    #[arg(long, env = "PC_USAGE_FLUSH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub usage_flush_interval: Duration,

    /// PEM certificate chain: with `--tls-key`, serve TLS (gRPC and HTTP) on the same port.
    /// Without both, plaintext, for meshes whose sidecar terminates TLS.
    #[arg(long, env = "PC_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "PC_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Largest request body accepted; a larger gRPC request is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PC_MAX_REQUEST_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_request_bytes: usize,

    /// How often the database is pinged for the health service and `/healthz`.
    #[arg(long, env = "PC_HEALTH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub health_interval: Duration,

    /// How long in-flight calls may run on after SIGTERM/SIGINT before the server stops.
    #[arg(long, env = "PC_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "PC_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// The defaults (and any `PC_*` variables) with another database; what tests start from.
    pub fn with_database_url(url: &str) -> Result<Self, clap::Error> {
        Defaults::try_parse_from(["personal-clients", "--database-url", url]).map(|d| d.config)
    }

    pub fn issuer(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| format!("http://{}", self.public_host))
    }

    /// Checks what clap cannot: values that would produce unusable client ids or secrets.
    pub fn validate(&self) -> Result<(), String> {
        if self.public_host.is_empty() || self.public_host.contains(['/', '@', ' ']) {
            return Err(format!("--public-host {:?} must be a host name (with an optional port)", self.public_host));
        }
        if self.secret_namespace.is_empty() || self.secret_namespace.contains([':', ' ']) {
            return Err(format!(
                "--secret-namespace {:?} must be non-empty without ':' or spaces",
                self.secret_namespace
            ));
        }
        if self.admin_role.is_empty() {
            return Err("--admin-role must not be empty".into());
        }
        if self.usage_flush_interval.is_zero() {
            return Err("--usage-flush-interval must be positive".into());
        }
        if self.token_ttl.is_zero() {
            return Err("--token-ttl must be positive".into());
        }
        Ok(())
    }
}

/// A database URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
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
    /// `postgres://user:secret@host/db` shows as `postgres://user:***@host/db`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str(&self.0);
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let userinfo_end = rest[..authority_end].rfind('@');
        match userinfo_end.and_then(|at| rest[..at].split_once(':').map(|(user, _)| (user, at))) {
            Some((user, at)) => write!(f, "{scheme}://{user}:***{}", &rest[at..]),
            None => f.write_str(&self.0),
        }
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
    }

    #[test]
    fn defaults_follow_the_spec() {
        let config = Config::with_database_url("sqlite://x.db?mode=rwc").unwrap();
        assert_eq!(config.public_host, "localhost");
        assert_eq!(config.issuer(), "http://localhost");
        assert_eq!(config.max_lifetime.to_string(), "365d");
        assert_eq!(config.token_ttl, Duration::from_secs(3600));
        assert!(config.validate().is_ok());
    }
}
