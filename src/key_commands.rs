//! `personal-clients keys`: list, add, retire and withdraw the token signing keys, on the database alone,
//! while servers run on it. The rules are the service's own (`auth::SigningKeys`); this is what
//! an operator reads of them.

use std::{fmt::Write as _, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{
    Error,
    audit::{self, Action},
    auth::{KeyListing, Retirement, SigningKeys, Successor, Withdrawal},
    config::{DatabaseUrl, KeyArgs},
    domain::{KeySchedule, KeyTimes},
    server::{key_vault, open_set_up},
};

/// Every stored key as a table: kid, state, and when it was created, activates, stops signing
/// and leaves the JWKS.
pub async fn list(database: &DatabaseUrl, schedule: &KeySchedule) -> Result<String, Error> {
    let store = open_set_up(database).await?;
    Ok(table(&SigningKeys::list(&store, schedule).await?))
}

/// Stores a new key that signs `activate_in` from now (`None`: the activation lead).
pub async fn add(database: &DatabaseUrl, keys: &KeyArgs, activate_in: Option<Duration>) -> Result<KeyTimes, Error> {
    let lead = keys.schedule.activation_lead();
    let activate_in = activate_in.unwrap_or(lead);
    let vault = key_vault(keys)?;
    let store = open_set_up(database).await?;
    let added = SigningKeys::add(&store, &vault, activate_in).await?;
    let detail = format!("signs from {}", time(added.activates_at));
    audit::key_change(Action::AddSigningKey, "keys add", &added.kid, &detail, None);
    if activate_in < lead {
        tracing::warn!(
            kid = %added.kid,
            "the key signs before it has been published for {}: relying parties holding an older copy of the JWKS refuse its tokens until they fetch it again",
            humantime::format_duration(lead)
        );
    }
    Ok(added)
}

/// Retires `kid`, or says why not; returns what was done, in words.
pub async fn retire(
    database: &DatabaseUrl,
    schedule: &KeySchedule,
    kid: &str,
) -> Result<Result<String, String>, Error> {
    let store = open_set_up(database).await?;
    let outcome = SigningKeys::retire(&store, schedule, kid).await?;
    let until = |published: Option<DateTime<Utc>>| published.map_or_else(|| "-".to_owned(), time);
    Ok(match outcome {
        Retirement::Retired { at, successor, published_until } => {
            let detail = format!("stops signing at {}", time(at));
            audit::key_change(Action::RetireSigningKey, "keys retire", kid, &detail, None);
            let handover = successor.map(|next| format!(", when {next} takes over,")).unwrap_or_default();
            Ok(format!(
                "{kid} stops signing at {}{handover} and stays in the JWKS until {}",
                time(at),
                until(published_until)
            ))
        }
        Retirement::Already { since, published_until } => Ok(format!(
            "{kid} stopped signing at {} already; it stays in the JWKS until {}",
            time(since),
            until(published_until)
        )),
        Retirement::Refused(why) => {
            audit::key_change(Action::RetireSigningKey, "keys retire", kid, "", Some(&why));
            Err(why)
        }
    })
}

/// Withdraws `kid` at once, or says why not; returns what was done, in words.
pub async fn withdraw(database: &DatabaseUrl, keys: &KeyArgs, kid: &str) -> Result<Result<String, String>, Error> {
    let vault = key_vault(keys)?;
    let store = open_set_up(database).await?;
    let reread = humantime::format_duration(keys.schedule.reload_interval);
    Ok(match SigningKeys::withdraw(&store, &vault, &keys.schedule, kid).await? {
        Withdrawal::Withdrawn { was, successor } => {
            let detail = match &successor {
                Some(Successor { kid: next, made: true, .. }) => {
                    format!("was {was}; {next}, made for it, signs in its place")
                }
                Some(Successor { kid: next, made: false, .. }) => {
                    format!("was {was}; {next}, the next key, signs in its place")
                }
                None => format!("was {was}"),
            };
            audit::key_change(Action::WithdrawSigningKey, "keys withdraw", kid, &detail, None);
            if let Some(Successor { kid: next, early: true, .. }) = &successor {
                tracing::warn!(
                    kid = %next,
                    "the key signing in its place has not been published for {}: relying parties holding an older copy of the JWKS refuse its tokens until they fetch it again",
                    humantime::format_duration(keys.schedule.activation_lead())
                );
            }
            Ok(format!(
                "{kid} ({detail}) is withdrawn: every server stops publishing it, signing with it and accepting its tokens within {reread}, when it re-reads the keys; relying parties refuse its tokens once their copy of the JWKS expires"
            ))
        }
        Withdrawal::Refused(why) => {
            audit::key_change(Action::WithdrawSigningKey, "keys withdraw", kid, "", Some(&why));
            Err(why)
        }
    })
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

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}
