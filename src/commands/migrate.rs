//! `personal-clients migrate`: bring the database schema up to date, create the first signing
//! key, and exit; what `serve` does first, for a deployment that migrates before it rolls out.

use clap::Args;
use personal_clients::{
    config::{DatabaseArgs, KeyArgs},
    server,
};

#[derive(Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    keys: KeyArgs,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    Ok(server::migrate(&args.database.database_url, &args.keys).await?)
}
