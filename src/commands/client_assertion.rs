//! `personal-clients client-assertion`: print a client assertion signed with a personal client's
//! secret, for the token exchange. The secret comes from PC_CLIENT_SECRET or, without it, from
//! standard input; never from the command line, where other users of the machine could read it.

use std::{io::IsTerminal, time::Duration};

use anyhow::Context as _;
use clap::Args;
use personal_clients::{config::parse_non_blank, domain::ClientSecret, exchange::assertion::ClientAssertion};

#[derive(Args)]
pub struct ClientAssertionArgs {
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

pub fn run(args: &ClientAssertionArgs) -> anyhow::Result<()> {
    let secret = match std::env::var("PC_CLIENT_SECRET") {
        Ok(secret) => secret,
        Err(_) if std::io::stdin().is_terminal() => {
            anyhow::bail!("no secret: set PC_CLIENT_SECRET, or pass the secret on standard input")
        }
        Err(_) => std::io::read_to_string(std::io::stdin()).context("cannot read the secret from standard input")?,
    };
    let key = ClientSecret::parse(&secret)
        .and_then(|secret| secret.signing_key())
        .map_err(|e| anyhow::anyhow!("the secret {e}"))?;
    let lifetime = i64::try_from(args.lifetime.as_secs()).unwrap_or(60);
    let now = chrono::Utc::now().timestamp();
    println!("{}", ClientAssertion::sign(&key, &args.client_id, &args.audience, lifetime, now));
    Ok(())
}
