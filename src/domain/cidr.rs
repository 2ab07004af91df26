//! The source networks a personal client may be used from: a list of CIDRs, each one valid.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::{EntryViolation, Rejection, SourceAddress, parse_entries};

/// The source networks a credential may be used from, canonical and without duplicates.
/// Empty means from anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    pub const MAX_ENTRIES: usize = 100;

    /// Parses CIDRs or bare addresses as a caller sent them. `10.1.2.3/8` becomes `10.0.0.0/8`;
    /// an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) becomes its IPv4 form.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, Vec<EntryViolation>> {
        parse_entries(entries, Self::MAX_ENTRIES, parse_network).map(Self)
    }

    /// Networks as stored: made canonical again, never refused.
    pub fn from_networks(networks: impl IntoIterator<Item = IpNet>) -> Self {
        let mut list: Vec<IpNet> = Vec::new();
        for network in networks.into_iter().map(|network| unmap_ipv4(network).trunc()) {
            if !list.contains(&network) {
                list.push(network);
            }
        }
        Self(list)
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether `address` may use the credential. IPv4-mapped IPv6 addresses match as IPv4.
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.is_empty() || self.0.iter().any(|network| network.contains(&address))
    }

    /// Whether a request from `source` may use the credential: any source when the list is
    /// empty; otherwise one inside it, and a source that cannot be told fails closed.
    pub fn check(&self, source: Option<SourceAddress>) -> Result<(), Rejection> {
        match source {
            _ if self.0.is_empty() => Ok(()),
            None => Err(Rejection::UnknownSource),
            Some(source) if self.allows(source.ip()) => Ok(()),
            Some(_) => Err(Rejection::SourceNotAllowed),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

fn parse_network(entry: &str) -> Result<IpNet, String> {
    let trimmed = entry.trim();
    let network = match trimmed.parse::<IpNet>() {
        Ok(network) => network,
        Err(_) => match trimmed.parse::<IpAddr>() {
            Ok(address) => IpNet::from(address),
            Err(_) => {
                return Err(format!(
                    "{} is not an IP network; use CIDR notation (10.0.0.0/8, 2001:db8::/32) or a bare address",
                    super::quote(entry)
                ));
            }
        },
    };
    Ok(unmap_ipv4(network).trunc())
}

/// `::ffff:a.b.c.d/n` with n >= 96 is the IPv4 network `a.b.c.d/(n-96)`.
fn unmap_ipv4(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Ok(net) = Ipv4Net::new(v4, prefix)
    {
        return IpNet::V4(net);
    }
    network
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_and_drops_duplicates() {
        let list = CidrList::parse(&["10.1.2.3/8", "10.0.0.0/8", "192.168.1.7", "2001:db8::1/32", "::1"]).unwrap();
        assert_eq!(list.to_strings(), ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::1/128"]);
    }

    #[test]
    fn ipv4_mapped_networks_and_peers_match_as_ipv4() {
        let list = CidrList::parse(&["::ffff:10.0.0.0/104"]).unwrap();
        assert_eq!(list.to_strings(), ["10.0.0.0/8"]);
        assert!(list.allows("::ffff:10.9.8.7".parse().unwrap()));
        assert!(list.allows("10.9.8.7".parse().unwrap()));
        assert!(!list.allows("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn names_each_bad_entry_and_the_limit() {
        let err = CidrList::parse(&["10.0.0.0/8", "nope", "10.0.0.0/33"]).unwrap_err();
        let indexes: Vec<_> = err.iter().map(|v| v.index).collect();
        assert_eq!(indexes, [Some(1), Some(2)]);
        let too_many: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(CidrList::parse(&too_many).unwrap_err()[0].index, None);
    }
}
