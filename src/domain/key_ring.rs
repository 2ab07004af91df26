//! The life of the service's token signing keys, read from their timestamps alone, so that every
//! replica and every command reaches the same answer without asking another: which key signs
//! now, which keys are published, and when a key may go.
//!
//! A key is *next* before its `activates_at`, *current* while it signs, and *retired* once it
//! stops: when retired by hand (`retired_at`), or when a later key takes over. A later key takes
//! over at its own `activates_at`, unless it was retired by then; a key that has been taken over
//! from never signs again, so retiring its successor cannot bring it back.

use std::{fmt, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};

use super::StoredKey;

/// The longest lifetime of any token the service signs: `--token-ttl` and `mint-token --ttl`
/// are held to it, and a key stays published for this long after it stops signing.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long things take around a change of keys. Every bound on when a key may start signing and
/// when it may leave the JWKS follows from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchedule {
    /// `Cache-Control: max-age` of the JWKS: how long a relying party may keep a copy (whole
    /// seconds are published).
    pub jwks_max_age: Duration,
    /// How often every replica re-reads the keys from the database.
    pub reload_interval: Duration,
    /// How far the clocks of replicas and relying parties may differ, and room for a change to
    /// commit and a JWKS to travel.
    pub clock_skew: Duration,
    /// The longest lifetime of a token signed by the service.
    pub max_token_ttl: Duration,
}

impl Default for KeySchedule {
    /// The JWKS cached for 5 minutes, keys re-read every minute, a minute of clock skew, tokens
    /// of at most a day: a key starts signing 7 minutes after it is added and stays published
    /// for a day and 2 minutes after it stops.
    fn default() -> Self {
        Self {
            jwks_max_age: Duration::from_secs(300),
            reload_interval: Duration::from_secs(60),
            clock_skew: Duration::from_secs(60),
            max_token_ttl: MAX_TOKEN_TTL,
        }
    }
}

impl KeySchedule {
    /// How long after it is written a key may start signing: by then every replica has read it,
    /// every copy of the JWKS cached before that has expired, and clocks that differ by the skew
    /// agree that the time has come.
    pub fn activation_lead(&self) -> Duration {
        self.jwks_max_age + self.reload_interval + self.clock_skew
    }

    /// How long a key stays published after it stops signing by the database's account: a
    /// replica may still sign with it until it next re-reads the keys (or while its clock is
    /// behind), and each token it signs then lives at most `max_token_ttl`.
    pub fn publish_window(&self) -> Duration {
        self.reload_interval + self.clock_skew + self.max_token_ttl
    }
}

/// A signing key's timestamps, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTimes {
    pub kid: String,
    pub created_at: DateTime<Utc>,
    /// When it starts signing.
    pub activates_at: DateTime<Utc>,
    /// When it was retired by hand (it may be a moment to come: a hand-over).
    pub retired_at: Option<DateTime<Utc>>,
}

/// A key of the ring with the time it stops signing, which follows from the other keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLife {
    pub times: KeyTimes,
    /// When it stops signing, if that is known: its `retired_at`, or the moment a later key
    /// takes over, whichever comes first.
    pub signs_until: Option<DateTime<Utc>>,
}

/// Where a key is in its life at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    /// The one key that signs.
    Current,
    /// Signs no more; published until every token it signed has expired.
    Retired,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Retired => "retired",
        })
    }
}

impl KeyLife {
    pub fn kid(&self) -> &str {
        &self.times.kid
    }

    pub fn state(&self, now: DateTime<Utc>) -> KeyState {
        if self.signs_until.is_some_and(|until| until <= now) {
            KeyState::Retired
        } else if self.times.activates_at > now {
            KeyState::Next
        } else {
            KeyState::Current
        }
    }

    /// Whether it is the key that signs at `at`.
    pub fn signs_at(&self, at: DateTime<Utc>) -> bool {
        self.times.activates_at <= at && self.signs_until.is_none_or(|until| at < until)
    }

    /// Until when it is published; `None` while no end of its signing is known.
    pub fn published_until(&self, schedule: &KeySchedule) -> Option<DateTime<Utc>> {
        self.signs_until.map(|until| until + delta(schedule.publish_window()))
    }

    pub fn is_published(&self, now: DateTime<Utc>, schedule: &KeySchedule) -> bool {
        self.published_until(schedule).is_none_or(|until| now < until)
    }

    /// Whether it takes over from the keys before it at its activation: it was not retired by
    /// then.
    fn takes_over(&self) -> bool {
        self.times.retired_at.is_none_or(|retired| retired > self.times.activates_at)
    }
}

/// The keys in the order they sign: by `activates_at`, then by kid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTimeline {
    keys: Vec<KeyLife>,
}

impl KeyTimeline {
    pub fn new(mut keys: Vec<KeyTimes>) -> Self {
        keys.sort_by(|a, b| (a.activates_at, &a.kid).cmp(&(b.activates_at, &b.kid)));
        // From the last key back: each stops at its own retirement or at the first activation
        // of a later key that takes over, whichever comes first.
        let mut successor: Option<DateTime<Utc>> = None;
        let mut lives: Vec<KeyLife> = keys
            .into_iter()
            .rev()
            .map(|times| {
                let signs_until = match (times.retired_at, successor) {
                    (Some(retired), Some(next)) => Some(retired.min(next)),
                    (retired, next) => retired.or(next),
                };
                let life = KeyLife { times, signs_until };
                if life.takes_over() {
                    successor = Some(life.times.activates_at);
                }
                life
            })
            .collect();
        lives.reverse();
        Self { keys: lives }
    }

    pub fn iter(&self) -> impl Iterator<Item = &KeyLife> {
        self.keys.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, kid: &str) -> Option<&KeyLife> {
        self.keys.iter().find(|key| key.kid() == kid)
    }

    /// The key that signs at `at`; at most one does.
    pub fn signing_at(&self, at: DateTime<Utc>) -> Option<&KeyLife> {
        self.keys.iter().find(|key| key.signs_at(at))
    }

    /// The keys that will sign later, earliest first.
    pub fn next(&self, now: DateTime<Utc>) -> impl Iterator<Item = &KeyLife> {
        self.keys.iter().filter(move |key| key.state(now) == KeyState::Next)
    }

    /// The first moment from `now` on at which no key would sign, if there is one.
    pub fn first_gap(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut at = now;
        // Each step moves to a later key's activation, so there are at most as many as keys.
        for _ in 0..=self.keys.len() {
            match self.signing_at(at).map(|key| key.signs_until) {
                None => return Some(at),
                Some(None) => return None,
                Some(Some(until)) => at = until,
            }
        }
        Some(at)
    }
}

/// A change to the stored keys, decided on the keys as read in the same transaction.
#[derive(Debug, Default)]
pub struct KeyRingChange {
    pub add: Option<NewSigningKey>,
    /// New `activates_at` of keys that are to sign sooner.
    pub activate: Vec<(String, DateTime<Utc>)>,
    pub retire: Vec<(String, DateTime<Utc>)>,
    /// Keys past their publication: every token they signed has expired.
    pub remove: Vec<String>,
}

impl KeyRingChange {
    pub fn is_empty(&self) -> bool {
        self.add.is_none() && self.activate.is_empty() && self.retire.is_empty() && self.remove.is_empty()
    }
}

/// A key to store, with its schedule.
#[derive(Debug)]
pub struct NewSigningKey {
    pub stored: StoredKey,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
}

/// A duration as a chrono delta; durations beyond chrono's range (none the service uses)
/// saturate.
pub fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn key(kid: &str, activates: i64, retired: Option<i64>) -> KeyTimes {
        KeyTimes {
            kid: kid.into(),
            created_at: at(activates - 10),
            activates_at: at(activates),
            retired_at: retired.map(at),
        }
    }

    fn states(timeline: &KeyTimeline, now: i64) -> Vec<(String, KeyState)> {
        timeline.iter().map(|key| (key.kid().to_owned(), key.state(at(now)))).collect()
    }

    fn named(pairs: &[(&str, KeyState)]) -> Vec<(String, KeyState)> {
        pairs.iter().map(|(kid, state)| ((*kid).to_owned(), *state)).collect()
    }

    #[test]
    fn a_later_key_takes_over_at_its_activation() {
        let timeline = KeyTimeline::new(vec![key("b", 100, None), key("a", 0, None)]);
        assert_eq!(states(&timeline, 50), named(&[("a", KeyState::Current), ("b", KeyState::Next)]));
        assert_eq!(timeline.signing_at(at(99)).unwrap().kid(), "a");
        assert_eq!(timeline.signing_at(at(100)).unwrap().kid(), "b");
        assert_eq!(states(&timeline, 100), named(&[("a", KeyState::Retired), ("b", KeyState::Current)]));
        assert_eq!(timeline.get("a").unwrap().signs_until, Some(at(100)));
        assert_eq!(timeline.get("b").unwrap().signs_until, None);
    }

    #[test]
    fn a_key_retired_before_its_activation_takes_over_from_no_one() {
        let timeline = KeyTimeline::new(vec![key("a", 0, None), key("b", 100, Some(60))]);
        assert_eq!(states(&timeline, 150), named(&[("a", KeyState::Current), ("b", KeyState::Retired)]));
        assert_eq!(timeline.get("a").unwrap().signs_until, None);
        assert_eq!(timeline.first_gap(at(150)), None);
    }

    #[test]
    fn a_key_taken_over_from_never_signs_again() {
        // b took over at 100 and was retired at 200: a does not come back.
        let timeline = KeyTimeline::new(vec![key("a", 0, None), key("b", 100, Some(200))]);
        assert_eq!(states(&timeline, 250), named(&[("a", KeyState::Retired), ("b", KeyState::Retired)]));
        assert!(timeline.signing_at(at(250)).is_none());
        assert_eq!(timeline.first_gap(at(150)), Some(at(200)));
    }

    #[test]
    fn equal_activations_go_to_the_greater_kid() {
        let timeline = KeyTimeline::new(vec![key("b", 100, None), key("a", 100, None)]);
        assert_eq!(timeline.signing_at(at(100)).unwrap().kid(), "b");
        assert_eq!(timeline.get("a").unwrap().state(at(100)), KeyState::Retired);
    }

    #[test]
    fn a_hand_over_leaves_no_gap() {
        let timeline = KeyTimeline::new(vec![key("a", 0, Some(100)), key("b", 100, None)]);
        assert_eq!(timeline.first_gap(at(50)), None);
        let broken = KeyTimeline::new(vec![key("a", 0, Some(100)), key("b", 100, Some(90))]);
        assert_eq!(broken.first_gap(at(50)), Some(at(100)));
        assert_eq!(KeyTimeline::default().first_gap(at(0)), Some(at(0)));
        let not_yet = KeyTimeline::new(vec![key("a", 100, None)]);
        assert_eq!(not_yet.first_gap(at(0)), Some(at(0)));
    }

    #[test]
    fn a_retired_key_stays_published_for_the_window() {
        let schedule = KeySchedule::default();
        let timeline = KeyTimeline::new(vec![key("a", 0, None), key("b", 100, None)]);
        let a = timeline.get("a").unwrap();
        let until = at(100) + delta(schedule.publish_window());
        assert_eq!(a.published_until(&schedule), Some(until));
        assert!(a.is_published(until - TimeDelta::microseconds(1), &schedule));
        assert!(!a.is_published(until, &schedule));
        assert!(timeline.get("b").unwrap().is_published(at(1_000_000_000), &schedule));
    }

    #[test]
    fn the_default_schedule_publishes_a_key_for_a_cache_lifetime_before_it_signs() {
        let schedule = KeySchedule::default();
        assert_eq!(schedule.activation_lead(), Duration::from_secs(7 * 60));
        assert!(schedule.activation_lead() >= schedule.jwks_max_age + schedule.reload_interval);
        assert_eq!(schedule.publish_window(), Duration::from_secs(24 * 3600 + 120));
    }
}
