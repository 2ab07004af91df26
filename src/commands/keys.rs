//! `personal-clients keys`: list, add, retire and withdraw the token signing keys, on the database
//! alone, while servers run on it. The rules are the service's own (`auth::key_admin`); this is
//! what an operator types and reads of them.

use std::{fmt::Write as _, time::Duration};

use clap::{Args, Subcommand};
use personal_clients::{
    auth::key_admin::{self, KeyListing, time},
    config::{DatabaseArgs, KeyArgs},
    domain::KeySchedule,
};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Every stored key: its kid, state (next, current or retired), when it was created, starts
    /// signing, stops signing, and leaves the JWKS.
    List(ListArgs),
    /// Add a key and print its kid. It is published at once and signs after --activate-in,
    /// taking over from the current key.
    Add(AddArgs),
    /// Retire a key. One that has not signed yet is retired at once. The current key hands over to
    /// the next one as soon as that one may sign; without a next key it is refused. A retired key
    /// stays in the JWKS until every token it signed has expired.
    Retire(RetireArgs),
    /// Withdraw a key that may have leaked: it is removed now, and every server stops publishing
    /// it, signing with it and accepting its tokens when it next re-reads the keys (within a
    /// minute). If it was the key that signs, the next key takes over at once or, without one, a
    /// new key that signs at once. Unlike retire, the tokens it signed stop working.
    Withdraw(WithdrawArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Args)]
pub struct AddArgs {
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
pub struct RetireArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// The key's kid, as `keys list` shows it.
    kid: String,
}

#[derive(Args)]
pub struct WithdrawArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The key's kid, as `keys list` shows it.
    kid: String,
}

/// Runs one `keys` command, printing what it did; a refusal is an error that says why.
pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List(args) => {
            print!("{}", table(&key_admin::list(&args.database.database_url, &KeySchedule::default()).await?));
        }
        KeysCommand::Add(args) => {
            let added = key_admin::add(&args.database.database_url, &args.keys, args.activate_in).await?;
            println!("{}", added.kid);
        }
        KeysCommand::Retire(args) => {
            let done = key_admin::retire(&args.database.database_url, &KeySchedule::default(), &args.kid).await?;
            println!("{}", done.map_err(|why| anyhow::anyhow!("{why}"))?);
        }
        KeysCommand::Withdraw(args) => {
            let done = key_admin::withdraw(&args.database.database_url, &args.keys, &args.kid).await?;
            println!("{}", done.map_err(|why| anyhow::anyhow!("{why}"))?);
        }
    }
    Ok(())
}

fn table(keys: &[KeyListing]) -> String {
    let mut out = String::new();
    let header = ["KID", "STATE", "CREATED", "ACTIVATES", "RETIRED", "PUBLISHED UNTIL"];
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|key| {
            [
                key.times.kid.clone(),
                key.state.to_string(),
                time(key.times.created_at),
                time(key.times.activates_at),
                key.signs_until.map_or_else(|| "-".to_owned(), time),
                key.published_until.map_or_else(|| "-".to_owned(), time),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| rows.iter().map(|row| row[column].len()).chain([header[column].len()]).max().unwrap_or(0))
        .collect();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
