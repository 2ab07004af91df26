//! `personal-clients mint-token`: print a user access token signed with the service's current
//! key, and nothing else, so a script can take it from standard output.

use std::time::Duration;

use clap::Args;
use personal_clients::{
    auth,
    config::{DatabaseArgs, IssuerArgs, KeyArgs, parse_local_user},
    domain::{Role, RoleSet},
};

#[derive(Args)]
pub struct MintTokenArgs {
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

pub async fn run(args: MintTokenArgs) -> anyhow::Result<()> {
    let roles: RoleSet = args.roles.into_iter().flatten().collect();
    let database = &args.database.database_url;
    let token = auth::mint_token(database, &args.keys, &args.issuer, &args.user, &roles, args.ttl).await?;
    println!("{token}");
    Ok(())
}
