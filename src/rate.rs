//! Rate limits: how often one key (a client, a source address, a user) may do something. Each
//! server process keeps its own counts, so with N replicas behind a load balancer a key gets up
//! to N times the rate in all.

use std::{fmt, hash::Hash, num::NonZeroU32, str::FromStr, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::error::Error;

/// A rate such as `10/s`, `30/min` or `1000/h`: that many at once, refilled evenly over the
/// period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    period: Duration,
    unit: &'static str,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{value:?} is not a rate; use COUNT/UNIT with a unit of s, min or h (10/s, 30/min)");
        let (count, unit) = value.split_once('/').ok_or_else(usage)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| usage())?;
        let (period, unit) = match unit.trim() {
            "s" => (Duration::from_secs(1), "s"),
            "min" => (Duration::from_secs(60), "min"),
            "h" => (Duration::from_secs(3600), "h"),
            _ => return Err(usage()),
        };
        Ok(Self { count, period, unit })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit)
    }
}

/// A configured limit: a [`Rate`], or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub Option<Rate>);

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.eq_ignore_ascii_case("off") { Ok(Self(None)) } else { value.parse().map(|rate| Self(Some(rate))) }
    }
}

impl Rate {
    fn quota(self) -> Quota {
        let interval = self.period / self.count.get();
        Quota::with_period(interval.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

/// A rate limit per key, or none.
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: Option<(DefaultKeyedRateLimiter<K>, Rate)>,
    /// What is being limited, for the refusal: "token requests per client".
    what: &'static str,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn new(limit: RateLimit, what: &'static str) -> Self {
        Self { limiter: limit.0.map(|rate| (RateLimiter::keyed(rate.quota()), rate)), what }
    }

    /// Counts one use by `key`, or refuses it with how long to wait.
    pub fn check(&self, key: &K) -> Result<(), Error> {
        let Some((limiter, rate)) = &self.limiter else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(DefaultClock::default().now());
            Error::RateLimited {
                message: format!("more than {rate} {}; retry in {} ms", self.what, retry_after.as_millis().max(1)),
                retry_after,
            }
        })
    }

    /// Forgets keys whose allowance is full again, so the table holds only recent users.
    pub fn forget_idle(&self) {
        if let Some((limiter, _)) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        for text in ["10/s", "30/min", "1000/h"] {
            assert_eq!(text.parse::<Rate>().unwrap().to_string(), text);
        }
        for bad in ["", "10", "0/s", "-1/s", "10/day", "ten/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("off".parse::<RateLimit>(), Ok(RateLimit(None)));
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_while_others_go_on() {
        let limit = KeyedLimit::new("3/min".parse().unwrap(), "things per user");
        for _ in 0..3 {
            assert!(limit.check(&"alice").is_ok());
        }
        let Err(Error::RateLimited { message, retry_after }) = limit.check(&"alice") else { panic!("limited") };
        assert!(retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20), "{retry_after:?}");
        assert!(message.contains("more than 3/min things per user"), "{message}");
        assert!(limit.check(&"bob").is_ok());
        assert!(KeyedLimit::new(RateLimit(None), "x").check(&"alice").is_ok());
    }
}
