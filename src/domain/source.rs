//! The address a request came from, as trusted proxies report it: for the token exchange and
//! for reports of leaked secrets.

use std::net::IpAddr;

use ipnet::IpNet;

/// Where a request came from, before `--trusted-proxies` are applied.
#[derive(Debug, Clone, Default)]
pub struct RequestOrigin {
    pub peer: Option<IpAddr>,
    /// Every `X-Forwarded-For` value, in the order received.
    pub forwarded_for: Vec<String>,
}

impl RequestOrigin {
    /// The origin of a request from its TCP peer and its `X-Forwarded-For` values (`None` for a
    /// value that is not text: kept as empty, it cannot be an address and fails closed).
    pub fn new<'a>(peer: Option<IpAddr>, forwarded_for: impl Iterator<Item = Option<&'a str>>) -> Self {
        Self { peer, forwarded_for: forwarded_for.map(|value| value.unwrap_or_default().to_owned()).collect() }
    }

    /// The source address `trusted_proxies` make of this origin ([`SourceAddress::resolve`]).
    pub fn source(&self, trusted_proxies: &[IpNet]) -> Option<SourceAddress> {
        SourceAddress::resolve(self.peer, &self.forwarded_for, trusted_proxies)
    }
}

/// The address a token request comes from: the TCP peer, or, when the peer is a trusted proxy,
/// the right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddress(IpAddr);

impl SourceAddress {
    /// The network one sender controls, for counting its requests: the address itself for
    /// IPv4, its /64 for IPv6 (one host often holds a whole /64).
    pub fn sender_network(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        }
    }

    /// `forwarded_for` holds every `X-Forwarded-For` value in the order received. `None` when
    /// the source cannot be told: no peer, or a proxy chain with a malformed entry where the
    /// client should be.
    pub fn resolve<S: AsRef<str>>(
        peer: Option<IpAddr>,
        forwarded_for: &[S],
        trusted_proxies: &[IpNet],
    ) -> Option<Self> {
        let mut current = peer?.to_canonical();
        let trusted = |address: &IpAddr| trusted_proxies.iter().any(|net| net.contains(address));
        let hops: Vec<&str> = forwarded_for.iter().flat_map(|value| value.as_ref().split(',')).map(str::trim).collect();
        let mut hops = hops.into_iter().rev();
        while trusted(&current) {
            match hops.next() {
                // The proxies' chain ends here: the left-most hop is the client.
                None => break,
                Some(hop) => current = parse_hop(hop)?.to_canonical(),
            }
        }
        Some(Self(current))
    }

    pub fn ip(self) -> IpAddr {
        self.0
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).and_then(|h| h.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(peer: &str, xff: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        SourceAddress::resolve(Some(ip(peer)), xff, &trusted).map(SourceAddress::ip)
    }

    #[test]
    fn untrusted_peers_cannot_forward() {
        assert_eq!(resolve("203.0.113.9", &["10.0.0.1"], &[]), Some(ip("203.0.113.9")));
        assert_eq!(resolve("203.0.113.9", &["10.0.0.1"], &["10.0.0.0/8"]), Some(ip("203.0.113.9")));
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = ["10.0.0.0/8"];
        // client, spoofed by the client itself, then two of our proxies
        let chain = ["198.51.100.1, 192.0.2.44", "10.0.0.2"];
        assert_eq!(resolve("10.0.0.3", &chain, &trusted), Some(ip("192.0.2.44")));
        assert_eq!(resolve("10.0.0.3", &[], &trusted), Some(ip("10.0.0.3")));
        assert_eq!(resolve("10.0.0.3", &["10.0.0.9"], &trusted), Some(ip("10.0.0.9")));
        assert_eq!(resolve("10.0.0.3", &["garbage"], &trusted), None, "fails closed");
        assert_eq!(resolve("10.0.0.3", &["[2001:db8::1]:443"], &trusted), Some(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_peers_are_ipv4() {
        assert_eq!(resolve("::ffff:192.0.2.1", &[], &[]), Some(ip("192.0.2.1")));
        assert_eq!(SourceAddress::resolve::<&str>(None, &[], &[]), None);
    }
}
