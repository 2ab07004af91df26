//! The service's own signing keys. They live in the database so every replica signs and
//! verifies with the same keys. Which key signs and which keys are published follows from the
//! keys' timestamps and the clock ([`KeyTimeline`]), so replicas agree without talking to each
//! other: a key added for a rotation is published for the activation lead before it signs, and
//! a key that stopped signing stays published until every token it signed has expired.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::Serialize;
use uuid::Uuid;

use super::{
    jws::{self, Header},
    vault::KeyVault,
};
use crate::{
    audit::{self, Action},
    domain::{KeyLife, KeyRingChange, KeySchedule, KeyTimeline, NewSigningKey, StoredKey, delta, round_to_micros},
    error::Error,
    error::chain,
    store::Store,
    telemetry::span,
};

/// The `typ` of the access tokens this service signs (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// A key id unknown to this replica makes it re-read the keys at most this often.
const UNKNOWN_KID_RELOAD: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct RingKey {
    signing: SigningKey,
    verifying: VerifyingKey,
}

/// The keys as this replica last read them.
#[derive(Debug)]
struct KeyRing {
    timeline: KeyTimeline,
    keys: HashMap<String, RingKey>,
    /// Signs when no key does by the timeline, which only keys changed by hand can cause (the
    /// commands and the rotation always leave one): the key activated last when the ring was
    /// read.
    fallback: (String, SigningKey),
    /// When the read began: the ring holds every key committed before then.
    read_at: Instant,
}

impl KeyRing {
    /// The kid and key that sign at `now`.
    fn signing(&self, now: DateTime<Utc>) -> (&str, &SigningKey) {
        match self.timeline.signing_at(now).and_then(|life| self.keys.get_key_value(life.kid())) {
            Some((kid, key)) => (kid, &key.signing),
            None => (&self.fallback.0, &self.fallback.1),
        }
    }
}

/// Signs and verifies the service's tokens.
#[derive(Debug)]
pub struct SigningKeys {
    store: Store,
    vault: KeyVault,
    schedule: KeySchedule,
    ring: RwLock<KeyRing>,
    last_unknown_reload: tokio::sync::Mutex<Option<Instant>>,
}

impl SigningKeys {
    /// Makes sure a key can sign now, creating one that signs at once if none can (the first
    /// key, at `serve` and `migrate`), and seals any stored in the clear when `vault` has a
    /// sealing key.
    pub async fn prepare(store: &Store, vault: &KeyVault) -> Result<(), Error> {
        let created = store
            .change_key_ring(|keys| {
                let now = round_to_micros(Utc::now());
                let timeline = KeyTimeline::new(keys);
                if timeline.signing_at(now).is_some() {
                    return Ok((KeyRingChange::default(), None));
                }
                let stored = new_key(vault)?;
                let made = (stored.kid.clone(), timeline.is_empty());
                let add = NewSigningKey { stored, created_at: now, activates_at: now };
                Ok((KeyRingChange { add: Some(add), ..KeyRingChange::default() }, Some(made)))
            })
            .await?;
        match created {
            Some((kid, true)) => {
                audit::key_change(
                    Action::AddSigningKey,
                    "server",
                    &kid,
                    "created the first token signing key, which signs at once",
                    None,
                );
            }
            Some((kid, false)) => {
                tracing::warn!(%kid, "no stored key could sign tokens; created one that signs at once");
                audit::key_change(
                    Action::AddSigningKey,
                    "server",
                    &kid,
                    "no stored key could sign; signing at once",
                    None,
                );
            }
            None => {}
        }
        let sealed = store
            .restore_signing_keys(|stored| {
                if !vault.should_seal(stored) {
                    return Ok(None);
                }
                vault.seal(&stored.kid, &vault.open(stored)?).map(Some)
            })
            .await?;
        if sealed > 0 {
            tracing::info!(sealed, "sealed the token signing keys stored in the clear");
        }
        Ok(())
    }

    /// Loads the keys the database holds.
    pub async fn load(store: Store, vault: KeyVault, schedule: KeySchedule) -> Result<Self, Error> {
        let ring = Self::read_ring(&store, &vault).await?;
        Ok(Self { store, vault, schedule, ring: RwLock::new(ring), last_unknown_reload: tokio::sync::Mutex::new(None) })
    }

    async fn read_ring(store: &Store, vault: &KeyVault) -> Result<KeyRing, Error> {
        // What the read returns is the database as of its start, or later.
        let read_at = Instant::now();
        let stored = store.key_ring().await?;
        if stored.is_empty() {
            return Err(Error::internal(
                "the database holds no token signing key: run `personal-clients migrate` or start the server first",
            ));
        }
        let mut keys = HashMap::with_capacity(stored.len());
        let mut times = Vec::with_capacity(stored.len());
        for (schedule, key) in stored {
            let signing = vault.open(&key)?;
            keys.insert(key.kid, RingKey { verifying: signing.verifying_key(), signing });
            times.push(schedule);
        }
        let timeline = KeyTimeline::new(times);
        let now = Utc::now();
        let fallback = timeline
            .iter()
            .filter(|key| key.times.activates_at <= now)
            .last()
            .or_else(|| timeline.iter().next())
            .and_then(|key| keys.get_key_value(key.kid()))
            .map(|(kid, key)| (kid.clone(), key.signing.clone()))
            .ok_or_else(|| Error::internal("the signing keys read do not match their schedules"))?;
        Ok(KeyRing { timeline, keys, fallback, read_at })
    }

    /// Re-reads the keys from the database. Of two reads at once, the one begun later is kept,
    /// whichever ends last.
    pub async fn reload(&self) -> Result<(), Error> {
        let ring = Self::read_ring(&self.store, &self.vault).await?;
        let mut kept = self.ring.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ring.read_at >= kept.read_at {
            *kept = ring;
        }
        Ok(())
    }

    /// Signs the claims of an access token with the key that signs now: its kid in the header,
    /// and the type RFC 9068 gives JWT access tokens (`at+jwt`), which validators that follow it
    /// require.
    pub fn sign_access_token<C: Serialize>(&self, claims: &C) -> String {
        let _span = span!("sign access token").entered();
        let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (kid, key) = ring.signing(Utc::now());
        let header = Header {
            alg: "EdDSA".into(),
            typ: Some(ACCESS_TOKEN_TYPE.into()),
            kid: Some(kid.to_owned()),
            ..Header::default()
        };
        jws::sign(&header, claims, key)
    }

    /// The kid of the key that signs now.
    pub fn signing_kid(&self) -> String {
        let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.signing(Utc::now()).0.to_owned()
    }

    /// The public key for `kid` while it is published, re-reading the database (rate-limited)
    /// when it is unknown here.
    pub async fn verifying_key(&self, kid: &str) -> Result<Option<VerifyingKey>, Error> {
        if let Some(key) = self.published(kid) {
            return Ok(Some(key));
        }
        // Callers that arrive during a reload wait for it and see its result.
        let mut last = self.last_unknown_reload.lock().await;
        if let Some(key) = self.published(kid) {
            return Ok(Some(key));
        }
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_RELOAD) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        self.reload().await?;
        Ok(self.published(kid))
    }

    /// The published public keys as a JWK Set (RFC 7517), for `/.well-known/jwks.json`: the
    /// keys that will sign, the one that signs, and those that stopped signing while tokens
    /// they signed may still be alive.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Utc::now();
        let mut kids: Vec<&str> =
            ring.timeline.iter().filter(|key| key.is_published(now, &self.schedule)).map(KeyLife::kid).collect();
        kids.sort_unstable();
        let keys: Vec<serde_json::Value> = kids
            .into_iter()
            .filter_map(|kid| ring.keys.get(kid).map(|key| (kid, key)))
            .map(|(kid, key)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(key.verifying.as_bytes()),
                    "kid": kid,
                    "use": "sig",
                    "alg": "EdDSA",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// How long a relying party may keep a copy of the JWKS: a key is published at least this
    /// long (with the reload and skew margins) before it signs. A key this replica has not read
    /// was added after its last read began, so it signs no sooner than a lead after that: a
    /// replica late with its re-read (the database away, the process starved) shortens the
    /// max-age by as much as it is late, so no copy outlives that moment, down to zero (no copy
    /// kept at all).
    pub fn jwks_max_age(&self) -> Duration {
        let read_at = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner()).read_at;
        let late = read_at.elapsed().saturating_sub(self.schedule.reload_interval);
        self.schedule.jwks_max_age.saturating_sub(late)
    }

    /// Whether `kid` is published here now: a token it signed is good only while it is.
    pub fn publishes(&self, kid: &str) -> bool {
        self.published(kid).is_some()
    }

    fn published(&self, kid: &str) -> Option<VerifyingKey> {
        let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.timeline.get(kid).filter(|key| key.is_published(Utc::now(), &self.schedule))?;
        ring.keys.get(kid).map(|key| key.verifying)
    }

    /// Every replica's key upkeep, for as long as it serves: re-reads the keys every
    /// `reload_interval` (so it publishes a new key well before it signs, and sees keys retired
    /// by hand), adds the next key when `rotation` says one is due, and removes keys past their
    /// publication. Replicas take turns at the changes, so a rotation adds one key.
    pub async fn keep_up(&self, rotation: Option<Duration>) {
        let mut ticks = tokio::time::interval(self.schedule.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signing = self.signing_kid();
        tracing::info!(kid = %signing, "signing tokens");
        loop {
            ticks.tick().await;
            if let Err(err) = self.maintain(rotation).await {
                tracing::warn!(error = %chain(&err), "cannot re-read or change the token signing keys; keeping those read before");
            }
            let now_signing = self.signing_kid();
            if now_signing != signing {
                tracing::info!(kid = %now_signing, previous = %signing, "signing tokens with the next key");
                signing = now_signing;
            }
        }
    }

    /// One round of [`Self::keep_up`]: re-reads the keys, then adds the next key if `rotation`
    /// says one is due and removes keys past their publication, deciding again under the
    /// database's write lock.
    pub async fn maintain(&self, rotation: Option<Duration>) -> Result<(), Error> {
        self.reload().await?;
        let due = {
            let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (add, remove) = due_upkeep(&ring.timeline, Utc::now(), rotation, &self.schedule);
            add.is_some() || !remove.is_empty()
        };
        if !due {
            return Ok(());
        }
        let (added, removed) = self
            .store
            .change_key_ring(|keys| {
                // Decided again on the keys as they are now: another replica may have done it.
                let now = round_to_micros(Utc::now());
                let (add, remove) = due_upkeep(&KeyTimeline::new(keys), now, rotation, &self.schedule);
                let add = match add {
                    Some(activates_at) => {
                        Some(NewSigningKey { stored: new_key(&self.vault)?, created_at: now, activates_at })
                    }
                    None => None,
                };
                let added = add.as_ref().map(|new| (new.stored.kid.clone(), new.activates_at));
                let change = KeyRingChange { add, remove: remove.clone(), ..KeyRingChange::default() };
                Ok((change, (added, remove)))
            })
            .await?;
        if let Some((kid, activates_at)) = &added {
            // The lead counts from the decision; the skew is what covers the commit.
            let committed_in = Utc::now() - (*activates_at - delta(self.schedule.activation_lead()));
            if committed_in > delta(self.schedule.clock_skew / 2) {
                tracing::warn!(
                    %kid,
                    committed_in_ms = committed_in.num_milliseconds(),
                    clock_skew_ms = self.schedule.clock_skew.as_millis(),
                    "the next signing key took over half the clock-skew margin to commit; \
                     relying parties may miss it when it signs if its commits take longer"
                );
            }
            let detail = format!("the next key, signing from {activates_at}");
            audit::key_change(Action::AddSigningKey, "rotation schedule", kid, &detail, None);
        }
        for kid in &removed {
            let detail = "retired, and every token it signed has expired";
            audit::key_change(Action::RemoveSigningKey, "rotation schedule", kid, detail, None);
        }
        if added.is_some() || !removed.is_empty() {
            self.reload().await?;
        }
        Ok(())
    }
}

/// The upkeep due at `now`: when a new key should activate, if one is to be added, and the keys
/// to remove.
fn due_upkeep(
    timeline: &KeyTimeline,
    now: DateTime<Utc>,
    rotation: Option<Duration>,
    schedule: &KeySchedule,
) -> (Option<DateTime<Utc>>, Vec<String>) {
    let remove = timeline
        .iter()
        .filter(|key| key.published_until(schedule).is_some_and(|until| until <= now))
        .map(|key| key.kid().to_owned())
        .collect();
    let add = rotation.and_then(|every| next_rotation(timeline, now, every, schedule.activation_lead()));
    (add, remove)
}

/// When the key rotating out the current one should activate, if it is time to add it: its turn
/// comes `every` after the current key's activation, and it is added a lead ahead of that (or
/// now, activating a lead from now, if that is later). Nothing while a next key waits.
fn next_rotation(timeline: &KeyTimeline, now: DateTime<Utc>, every: Duration, lead: Duration) -> Option<DateTime<Utc>> {
    if timeline.next(now).next().is_some() {
        return None;
    }
    let current = timeline.signing_at(now)?;
    let turn = current.times.activates_at + delta(every);
    let earliest = now + delta(lead);
    (earliest >= turn).then_some(turn.max(earliest))
}

pub(super) fn new_key(vault: &KeyVault) -> Result<StoredKey, Error> {
    let kid = Uuid::now_v7().to_string();
    let material = vault.seal(&kid, &SigningKey::generate(&mut OsRng))?;
    Ok(StoredKey { kid, material })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyTimes;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn key(kid: &str, activates: i64) -> KeyTimes {
        KeyTimes { kid: kid.into(), created_at: at(activates), activates_at: at(activates), retired_at: None }
    }

    #[test]
    fn a_rotation_adds_a_key_a_lead_before_its_turn_and_only_one() {
        let (every, lead) = (Duration::from_secs(1000), Duration::from_secs(100));
        let timeline = KeyTimeline::new(vec![key("a", 0)]);
        assert_eq!(next_rotation(&timeline, at(899), every, lead), None, "not yet");
        assert_eq!(next_rotation(&timeline, at(900), every, lead), Some(at(1000)));
        assert_eq!(next_rotation(&timeline, at(5000), every, lead), Some(at(5100)), "late: a full lead still");
        let with_next = KeyTimeline::new(vec![key("a", 0), key("b", 1000)]);
        assert_eq!(next_rotation(&with_next, at(950), every, lead), None, "a next key waits already");
    }

    #[test]
    fn keys_past_their_publication_are_removed() {
        let schedule = KeySchedule::default();
        let timeline = KeyTimeline::new(vec![key("a", 0), key("b", 100)]);
        let gone = at(100) + delta(schedule.publish_window());
        assert!(due_upkeep(&timeline, gone - chrono::TimeDelta::seconds(1), None, &schedule).1.is_empty());
        assert_eq!(due_upkeep(&timeline, gone, None, &schedule).1, vec!["a".to_owned()]);
    }
}
