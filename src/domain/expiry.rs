//! When a personal client expires: the longest lifetime the service allows, and the expiry a
//! request asks for, checked against it.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};

/// The longest lifetime a credential may have (`--max-lifetime`); `None` lets credentials that
/// ask for no expiry live until revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLifetime(Option<Duration>);

/// The longest `--max-lifetime`: a century.
const LONGEST_LIMIT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The latest expiry a protobuf `Timestamp` can carry: 9999-12-31T23:59:59Z.
const LATEST_EXPIRY_SECS: i64 = 253_402_300_799;

impl MaxLifetime {
    /// Expiry of a credential created at `now` that asked for `lifetime` (seconds, nanos as in
    /// `google.protobuf.Duration`); no lifetime means the longest allowed.
    pub fn expiry_for_lifetime(
        &self,
        lifetime: Option<(i64, i32)>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, String> {
        let Some((seconds, nanos)) = lifetime else {
            let Some(limit) = self.0 else { return Ok(None) };
            return now
                .checked_add_signed(delta(limit))
                .filter(|at| at.timestamp() <= LATEST_EXPIRY_SECS)
                .map(|at| Some(round_to_micros(at)))
                .ok_or_else(|| "is needed: the longest lifetime would end after the year 9999".to_owned());
        };
        if !(-999_999_999..=999_999_999).contains(&nanos) || (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
            return Err("is not a valid duration: nanos must be within ±999999999 and have the sign of seconds".into());
        }
        if seconds < 0 || nanos < 0 || (seconds == 0 && nanos == 0) {
            return Err(format!("must be positive{}", self.allowed()));
        }
        let requested = Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs());
        if self.0.is_some_and(|limit| requested > limit) {
            return Err(format!("is {}{}", compact(requested), self.allowed()));
        }
        let expiry = now.checked_add_signed(delta(requested)).filter(|at| at.timestamp() <= LATEST_EXPIRY_SECS);
        expiry
            .map(|at| Some(round_to_micros(at)))
            .ok_or_else(|| "is too long: a credential must expire before the year 10000".to_owned())
    }

    /// Checks an absolute expiry set by Update: in the future and within the limit from `now`;
    /// `None` (never expires) only when there is no limit.
    pub fn check_expiry(
        &self,
        expiry: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, String> {
        match (expiry, self.0) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(format!("is required{}", self.allowed())),
            (Some(at), _) if at <= now => Err(format!("{at} is not in the future{}", self.allowed())),
            (Some(at), _) if at.timestamp() > LATEST_EXPIRY_SECS => {
                Err(format!("{at} is too far ahead: a credential must expire before the year 10000"))
            }
            (Some(at), Some(limit)) if at > now + delta(limit) => {
                Err(format!("{at} is too far ahead{}", self.allowed()))
            }
            (Some(at), _) => Ok(Some(round_to_micros(at))),
        }
    }

    fn allowed(&self) -> String {
        match self.0 {
            Some(limit) => format!("; credentials may live at most {}", compact(limit)),
            None => String::new(),
        }
    }
}

impl FromStr for MaxLifetime {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.eq_ignore_ascii_case("none") {
            return Ok(Self(None));
        }
        let limit = humantime::parse_duration(input).map_err(|e| format!("{e}; use a duration like 365d or `none`"))?;
        if limit.is_zero() || limit > LONGEST_LIMIT {
            return Err("must be positive and at most 36500d, or `none`".into());
        }
        Ok(Self(Some(limit)))
    }
}

impl fmt::Display for MaxLifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(limit) => write!(f, "{}", compact(limit)),
            None => f.write_str("none"),
        }
    }
}

/// `365d`, `12h`, `90s`: the way operators write durations, where humantime would print
/// `11months 30days 3h 50m 24s` for a year of days.
fn compact(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        _ if duration.subsec_nanos() != 0 => humantime::format_duration(duration).to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// Timestamps are kept to the microsecond, the precision both databases store.
pub(crate) fn round_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    // Truncating the nanoseconds works for every date, where chrono's duration rounding stops
    // in 2262.
    at.with_nanosecond(at.nanosecond() / 1_000 * 1_000).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn year() -> MaxLifetime {
        "365d".parse().unwrap()
    }

    #[test]
    fn lifetime_defaults_to_the_limit_and_must_fit_it() {
        let now = round_to_micros(Utc::now());
        let default = year().expiry_for_lifetime(None, now).unwrap().unwrap();
        assert_eq!((default - now).num_days(), 365);
        assert!(year().expiry_for_lifetime(Some((3600, 0)), now).unwrap().is_some());
        assert!(year().expiry_for_lifetime(Some((366 * 86400, 0)), now).is_err());
        assert!(year().expiry_for_lifetime(Some((0, 0)), now).is_err());
        assert!(year().expiry_for_lifetime(Some((-5, 0)), now).is_err());
        assert!(year().expiry_for_lifetime(Some((5, -1)), now).is_err());
        let unlimited: MaxLifetime = "none".parse().unwrap();
        assert_eq!(unlimited.expiry_for_lifetime(None, now).unwrap(), None);
    }

    #[test]
    fn no_lifetime_reaches_past_what_a_timestamp_can_say() {
        let now = round_to_micros(Utc::now());
        let unlimited: MaxLifetime = "none".parse().unwrap();
        for seconds in [10_i64.pow(13), i64::MAX, 9_000 * 365 * 86_400] {
            let err = unlimited.expiry_for_lifetime(Some((seconds, 0)), now).unwrap_err();
            assert!(err.contains("year 10000"), "{seconds}: {err}");
        }
        let far = DateTime::from_timestamp(LATEST_EXPIRY_SECS + 1, 0).unwrap();
        assert!(unlimited.check_expiry(Some(far), now).is_err());
        assert!("300000y".parse::<MaxLifetime>().is_err(), "a limit past a century is refused");
        assert!("36500d".parse::<MaxLifetime>().is_ok());
    }

    #[test]
    fn absolute_expiry_must_be_ahead_and_within_the_limit() {
        let now = Utc::now();
        assert!(year().check_expiry(Some(now - TimeDelta::seconds(1)), now).is_err());
        assert!(year().check_expiry(Some(now + TimeDelta::days(400)), now).is_err());
        assert!(year().check_expiry(None, now).is_err());
        assert!(year().check_expiry(Some(now + TimeDelta::days(30)), now).is_ok());
    }
}
