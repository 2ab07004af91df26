//! Key administration, as the `keys` commands do it on the database alone, while servers run on
//! it: list the keys, add one, retire one, withdraw one that may have leaked. Each change is one
//! transaction that leaves a key able to sign at every moment, and an audit event; retire and
//! withdraw say what they did, or why not, in an operator's words. The running servers see a
//! change when they next re-read the keys ([`super::SigningKeys`]).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{keys::new_key, vault::KeyVault};
use crate::{
    audit::{self, Action},
    config::KeyArgs,
    domain::{
        KeyRingChange, KeySchedule, KeyState, KeyTimeline, KeyTimes, NewSigningKey, StoredKey, delta, round_to_micros,
    },
    error::Error,
    store::DatabaseUrl,
    store::Store,
};

/// `keys list`: every stored key with its state now.
pub async fn list(database: &DatabaseUrl, schedule: &KeySchedule) -> Result<Vec<KeyListing>, Error> {
    let store = Store::open_set_up(database).await?;
    listing(&store, schedule).await
}

/// Stores a new key that signs `activate_in` from now (`None`: the activation lead).
pub async fn add(database: &DatabaseUrl, keys: &KeyArgs, activate_in: Option<Duration>) -> Result<KeyTimes, Error> {
    let lead = keys.schedule.activation_lead();
    let activate_in = activate_in.unwrap_or(lead);
    let vault = KeyVault::from_args(keys)?;
    let store = Store::open_set_up(database).await?;
    let added = add_key(&store, &vault, activate_in).await?;
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
    let store = Store::open_set_up(database).await?;
    let outcome = retire_key(&store, schedule, kid).await?;
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
    let vault = KeyVault::from_args(keys)?;
    let store = Store::open_set_up(database).await?;
    let reread = humantime::format_duration(keys.schedule.reload_interval);
    Ok(match withdraw_key(&store, &vault, &keys.schedule, kid).await? {
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

/// `keys list`: every stored key with its state at `now`.
async fn listing(store: &Store, schedule: &KeySchedule) -> Result<Vec<KeyListing>, Error> {
    let timeline = KeyTimeline::new(store.key_times().await?);
    let now = Utc::now();
    Ok(timeline
        .iter()
        .map(|key| KeyListing {
            times: key.times.clone(),
            state: key.state(now),
            signs_until: key.signs_until,
            published_until: key.published_until(schedule),
        })
        .collect())
}

/// `keys add`: stores a new key that signs `activate_in` from now. The vault must open the
/// stored keys, and seals the new one as they are sealed, so every replica can read it.
async fn add_key(store: &Store, vault: &KeyVault, activate_in: Duration) -> Result<KeyTimes, Error> {
    check_vault(&store.key_ring().await?, vault)?;
    store
        .change_key_ring(|_| {
            let now = round_to_micros(Utc::now());
            let stored = new_key(vault)?;
            let times = KeyTimes {
                kid: stored.kid.clone(),
                created_at: now,
                activates_at: round_to_micros(now + delta(activate_in)),
                retired_at: None,
            };
            let add = NewSigningKey { stored, created_at: now, activates_at: times.activates_at };
            Ok((KeyRingChange { add: Some(add), ..KeyRingChange::default() }, times))
        })
        .await
}

/// `keys retire KID`. A key that will sign is retired at once. The key that signs hands over
/// to the next key as soon as that key has been published for the activation lead; without a
/// next key it is refused, since no key would sign. Nothing that would leave a moment without
/// a signing key is done.
async fn retire_key(store: &Store, schedule: &KeySchedule, kid: &str) -> Result<Retirement, Error> {
    store
        .change_key_ring(|keys| {
            let now = round_to_micros(Utc::now());
            let timeline = KeyTimeline::new(keys);
            let Some(key) = timeline.get(kid) else {
                return Ok((KeyRingChange::default(), Retirement::Refused(format!("there is no signing key {kid}"))));
            };
            let mut change = KeyRingChange::default();
            match key.state(now) {
                KeyState::Retired => {
                    let since = key.signs_until.unwrap_or(now);
                    return Ok((change, Retirement::Already { since, published_until: key.published_until(schedule) }));
                }
                KeyState::Next => change.retire.push((kid.to_owned(), now)),
                KeyState::Current => {
                    let Some(next) = timeline.next(now).next() else {
                        return Ok((
                            change,
                            Retirement::Refused(format!(
                                "{kid} is the key that signs tokens, and no key is waiting to take over: add one with `personal-clients keys add`, then retire {kid}; it hands over once the new key has been published for {}",
                                humantime::format_duration(schedule.activation_lead())
                            )),
                        ));
                    };
                    // Not before the next key has been published for the lead.
                    let ready = next.times.created_at + delta(schedule.activation_lead());
                    let at = next.times.activates_at.min(ready.max(now));
                    if at < next.times.activates_at {
                        change.activate.push((next.kid().to_owned(), at));
                    }
                    change.retire.push((kid.to_owned(), at));
                }
            }
            let changed = KeyTimeline::new(apply(timeline.iter().map(|key| key.times.clone()).collect(), &change));
            if let Some(gap) = changed.first_gap(now) {
                return Ok((
                    KeyRingChange::default(),
                    Retirement::Refused(format!(
                        "retiring {kid} would leave no key to sign tokens from {}",
                        gap.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )),
                ));
            }
            let retired = changed.get(kid).map(|key| (key.signs_until.unwrap_or(now), key.published_until(schedule)));
            let successor = changed.signing_at(retired.map_or(now, |(at, _)| at)).map(|key| key.kid().to_owned());
            let (at, published_until) = retired.unwrap_or((now, None));
            Ok((change, Retirement::Retired { at, successor, published_until }))
        })
        .await
}

/// `keys withdraw KID`, for a key that may have leaked: removes it now, so that each replica
/// stops publishing it, signing with it and accepting its tokens at its next re-read. The
/// other keys keep the lives they had: those it took over from stay retired. When it was the
/// key that signs, the next key takes over now, or, without one, a new key that signs at
/// once, which relying parties holding an older copy of the JWKS do not know yet. The vault
/// must open the stored keys when a new key is needed (see [`add_key`]).
async fn withdraw_key(store: &Store, vault: &KeyVault, schedule: &KeySchedule, kid: &str) -> Result<Withdrawal, Error> {
    let needs_new_key = |timeline: &KeyTimeline, now| {
        timeline.signing_at(now).is_some_and(|key| key.kid() == kid) && timeline.next(now).all(|key| key.kid() == kid)
    };
    let ring = store.key_ring().await?;
    let times = ring.iter().map(|(times, _)| times.clone()).collect();
    if needs_new_key(&KeyTimeline::new(times), Utc::now()) {
        check_vault(&ring, vault)?;
    }
    store
        .change_key_ring(|keys| {
            let now = round_to_micros(Utc::now());
            let timeline = KeyTimeline::new(keys);
            let Some(key) = timeline.get(kid) else {
                return Ok((KeyRingChange::default(), Withdrawal::Refused(format!("there is no signing key {kid}"))));
            };
            let was = key.state(now);
            let mut change = KeyRingChange { remove: vec![kid.to_owned()], ..KeyRingChange::default() };
            // Keys that stopped signing keep their end, which may have been this key's activation.
            for other in timeline.iter().filter(|other| other.kid() != kid) {
                if let Some(until) = other.signs_until.filter(|until| *until <= now)
                    && other.times.retired_at != Some(until)
                {
                    change.retire.push((other.kid().to_owned(), until));
                }
            }
            let mut successor = None;
            if was == KeyState::Current {
                if let Some(next) = timeline.next(now).find(|next| next.kid() != kid) {
                    change.activate.push((next.kid().to_owned(), now));
                    let early = next.times.created_at + delta(schedule.activation_lead()) > now;
                    successor = Some(Successor { kid: next.kid().to_owned(), made: false, early });
                } else {
                    let stored = new_key(vault)?;
                    successor = Some(Successor { kid: stored.kid.clone(), made: true, early: true });
                    change.add = Some(NewSigningKey { stored, created_at: now, activates_at: now });
                }
            }
            let after = KeyTimeline::new(apply(timeline.iter().map(|key| key.times.clone()).collect(), &change));
            if let Some(gap) = after.first_gap(now) {
                return Ok((
                    KeyRingChange::default(),
                    Withdrawal::Refused(format!(
                        "withdrawing {kid} would leave no key to sign tokens from {}: add a key with `personal-clients keys add --activate-in 0s` first",
                        gap.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )),
                ));
            }
            Ok((change, Withdrawal::Withdrawn { was, successor }))
        })
        .await
}

/// What `keys withdraw` did, or why it did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// Removed, in the state it was in; `successor` is the key that signs in its place, when it
    /// was the one that signed.
    Withdrawn { was: KeyState, successor: Option<Successor> },
    /// Nothing was changed, for this reason.
    Refused(String),
}

/// The key that signs in place of a withdrawn one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Successor {
    pub kid: String,
    /// Made for that, rather than the next key.
    pub made: bool,
    /// Signing before it has been published for the activation lead.
    pub early: bool,
}

/// Checks that `vault` opens every key of `ring`, as stored, and would seal a new one as they are sealed, so
/// every replica can read a key added with it.
fn check_vault(ring: &[(KeyTimes, StoredKey)], vault: &KeyVault) -> Result<(), Error> {
    for (_, stored) in ring {
        vault.open(stored)?;
    }
    if let Some((_, clear)) = ring.iter().find(|(_, stored)| vault.should_seal(stored)) {
        return Err(Error::config(
            "--key-encryption-key-file",
            format!(
                "signing key {} is stored in the clear, so the servers run without a key-encryption key and could not open a sealed key: start them with it first (they seal the stored keys), or add the key without it",
                clear.kid
            ),
            None,
        ));
    }
    Ok(())
}

/// What `keys retire` did, or why it did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retirement {
    /// It stops signing at `at` (now, or when `successor` takes over) and leaves the JWKS at
    /// `published_until`.
    Retired { at: DateTime<Utc>, successor: Option<String>, published_until: Option<DateTime<Utc>> },
    /// It stopped signing at `since` already.
    Already { since: DateTime<Utc>, published_until: Option<DateTime<Utc>> },
    /// Nothing was changed, for this reason.
    Refused(String),
}

/// A stored key as `keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    pub times: KeyTimes,
    pub state: KeyState,
    /// When it stops (or stopped) signing, if that is known.
    pub signs_until: Option<DateTime<Utc>>,
    pub published_until: Option<DateTime<Utc>>,
}

/// `keys` with `change` applied, as they would be stored.
fn apply(mut keys: Vec<KeyTimes>, change: &KeyRingChange) -> Vec<KeyTimes> {
    keys.retain(|key| !change.remove.contains(&key.kid));
    for key in &mut keys {
        if let Some((_, at)) = change.activate.iter().find(|(kid, _)| *kid == key.kid) {
            key.activates_at = *at;
        }
        if let Some((_, at)) = change.retire.iter().find(|(kid, _)| *kid == key.kid) {
            key.retired_at = Some(*at);
        }
    }
    keys.extend(change.add.as_ref().map(|new| KeyTimes {
        kid: new.stored.kid.clone(),
        created_at: new.created_at,
        activates_at: new.activates_at,
        retired_at: None,
    }));
    keys
}

pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}
