//! Values of single flags, each parsed with an error that says what was wrong and what is
//! allowed: host names, header names, counts, durations, external issuers, addresses.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

/// How often `serve` adds a new signing key: a duration, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationInterval(pub Option<Duration>);

impl FromStr for RotationInterval {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        parse_positive_duration(value).map(|every| Self(Some(every))).map_err(|err| format!("{err}, or `off`"))
    }
}

pub(super) fn parse_public_host(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains(['/', '@', ' ', '?', '#']) {
        return Err("must be a host name with an optional port (pc.example.com, localhost:50051)".into());
    }
    Ok(value.to_owned())
}

/// An HTTP header name, lower-cased as HTTP/2 and Envoy write them; not one of the pseudo or
/// hop-by-hop headers, nor `authorization`.
pub(super) fn parse_header_name(value: &str) -> Result<String, String> {
    let name = http::HeaderName::from_bytes(value.as_bytes())
        .map_err(|_| format!("{value:?} is not an HTTP header name"))?
        .as_str()
        .to_owned();
    if ["authorization", "host", "connection", "te", "transfer-encoding", "content-length"].contains(&name.as_str()) {
        return Err(format!("{name} is a header with a meaning of its own; choose another name, like x-user-id"));
    }
    Ok(name)
}

pub(super) fn parse_namespace(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains([':', ' ']) {
        return Err("must be non-empty, without ':' or spaces".into());
    }
    Ok(value.to_owned())
}

/// A bound on how many of something there may be: a positive number, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountLimit(pub Option<u32>);

impl FromStr for CountLimit {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        match value.parse::<u32>() {
            Ok(count) if count > 0 => Ok(Self(Some(count))),
            _ => Err(format!("{value:?} is not a positive whole number or `off`")),
        }
    }
}

/// A local user id, as `mint-token` names one: not blank, and without `#`, which only the ids
/// of external issuers' users hold (`ISSUER#SUBJECT`).
pub fn parse_local_user(value: &str) -> Result<String, String> {
    if value.contains('#') {
        return Err("must not contain '#': ISSUER#SUBJECT names a user of an external issuer".into());
    }
    parse_non_blank(value)
}

/// An issuer identifier (RFC 8414 §2): an `http` or `https` URL with a host, and with no query,
/// fragment or user name, kept as written, since `iss` and the metadata's `issuer` must be
/// exactly it.
pub(super) fn parse_issuer(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value)
        .map_err(|err| format!("{value:?} is not a URL ({err}); use e.g. https://iam.example.com"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{value:?} is not an http or https URL with a host; use e.g. https://iam.example.com"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{value:?} holds a query, fragment or user name, which an issuer may not (RFC 8414 §2)"));
    }
    // Compared as strings by every relying party: only the form a URL library would give it
    // back in (a bare origin may leave out its `/`).
    let normal = url.as_str();
    if normal != value && normal != format!("{value}/") {
        let suggested = if url.path() == "/" && !value.ends_with('/') { normal.trim_end_matches('/') } else { normal };
        return Err(format!(
            "{value:?} is not written as URLs are compared (case, default port, escapes); write it as {suggested:?}"
        ));
    }
    Ok(value.to_owned())
}

/// A value that says something: not empty, not only spaces.
pub fn parse_non_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() { Err("must not be empty".into()) } else { Ok(value.to_owned()) }
}

pub(super) fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("{err}; use a duration like 90s, 15m or 1h")),
    }
}

/// `ISSUER=PATH_OR_URL` of an external identity provider's JWK Set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedJwks {
    pub issuer: String,
    pub source: String,
}

impl FromStr for TrustedJwks {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (issuer, source) = value
            .split_once('=')
            .ok_or("must be ISSUER=PATH_OR_URL, e.g. https://idp.example=https://idp.example/jwks.json")?;
        if issuer.is_empty() || source.is_empty() {
            return Err("both the issuer and the JWKS path or URL are required".into());
        }
        if issuer.contains('#') {
            return Err(format!("the issuer {issuer:?} has a '#'; an issuer identifier has no fragment"));
        }
        if source.starts_with("http://") && !is_loopback_url(source) {
            return Err(format!(
                "{source} is plain HTTP, which anyone on the path could answer; use https:// (http:// only for this host: localhost, 127.0.0.0/8, [::1])"
            ));
        }
        Ok(Self { issuer: issuer.to_owned(), source: source.to_owned() })
    }
}

fn is_loopback_url(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_owned)) else {
        return false;
    };
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || address.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for TrustedJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.issuer, self.source)
    }
}

/// An OTLP collector's base URL: `http://collector:4318`.
pub fn parse_otlp_endpoint(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value)
        .map_err(|err| format!("{value:?} is not a URL ({err}); use e.g. http://otel-collector:4318"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("{value:?} is not an http or https URL with a host; use e.g. http://otel-collector:4318"));
    }
    Ok(value.to_owned())
}

/// A share, from 0 to 1: `0.25`.
pub fn parse_ratio(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .ok_or_else(|| format!("{value:?} is not a ratio from 0 to 1, such as 0.25"))
}

/// Where a command listens: `serve` on a fixed port, `bench` on any free one.
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| "must be an address and port, e.g. 127.0.0.1:50051 or 0.0.0.0:50051".to_owned())
}

/// A memory size: bytes, or with a unit (`512MiB`, `2GiB`, `1.5GB`), at least 16 MiB.
pub(super) fn parse_memory(value: &str) -> Result<u64, String> {
    const LEAST: u64 = 16 << 20;
    let size: bytesize::ByteSize = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a memory size: use bytes or a unit, as in 512MiB or 2GiB"))?;
    if size.as_u64() < LEAST {
        return Err(format!("{value} is less than the least memory budget, 16MiB"));
    }
    Ok(size.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_is_an_http_url_written_as_it_is_compared() {
        for good in ["http://localhost", "https://iam.example.com/", "https://example.com/iam", "http://[::1]:8080"] {
            assert_eq!(parse_issuer(good).as_deref(), Ok(good));
        }
        for (bad, says) in [
            ("personal-clients", "is not a URL"),
            ("urn:example:iam", "not an http or https URL"),
            ("https://example.com/?tenant=1", "query"),
            ("https://user@example.com", "user name"),
            ("https://Example.com", "write it as \"https://example.com\""),
            ("https://example.com:443/iam", "write it as \"https://example.com/iam\""),
            ("https://example.com/a b", "write it as \"https://example.com/a%20b\""),
        ] {
            let err = parse_issuer(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
