//! Leaked secrets, reported by whoever found them (a secret scanner, a colleague reading a log),
//! as GitHub's credential revocation API takes its tokens: possession of a secret is the proof,
//! so a report needs no other credential, and each secret that belongs to a live credential
//! revokes it at once, as Delete does. What a reporter hears is the same whatever the secrets
//! were: nothing tells them whether one was live.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
};

use super::PersonalClients;
use crate::{
    audit,
    domain::{ClientSecret, SourceAddress, Violations},
    error::Error,
};

/// The most secrets one report may name.
pub const MAX_SECRETS: usize = 100;
/// The longest entry looked at: a secret is under 200 characters.
const MAX_SECRET_CHARS: usize = 1024;

/// Who reported: the TCP peer and the `X-Forwarded-For` values, from which the trusted proxies
/// resolve their address, and their `User-Agent`.
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    pub peer: Option<IpAddr>,
    pub forwarded_for: &'a [String],
    pub user_agent: &'a str,
}

impl PersonalClients {
    /// Revokes every live credential whose secret is among `secrets`. Entries that are no secret
    /// of this service, or of no live credential, change nothing and are not told apart.
    pub async fn revoke_leaked(&self, secrets: &[String], reporter: Reporter<'_>) -> Result<(), Error> {
        let source = SourceAddress::resolve(reporter.peer, reporter.forwarded_for, &self.settings.trusted_proxies);
        // Before any work: a reporter without a credential can only spend its own allowance.
        let sender = source.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), SourceAddress::sender_network);
        self.reports.check(&sender)?;
        let mut v = Violations::default();
        if secrets.is_empty() || secrets.len() > MAX_SECRETS {
            v.push("credentials", format!("names {} secrets; a report names 1 to {MAX_SECRETS}", secrets.len()));
            return Err(Error::InvalidArgument(v.into_vec()));
        }
        let mut public_keys = HashSet::new();
        for secret in secrets.iter().filter(|secret| secret.len() <= MAX_SECRET_CHARS) {
            if let Ok(key) = ClientSecret::parse(secret).and_then(|secret| secret.signing_key()) {
                public_keys.insert(key.verifying_key().to_bytes());
            }
        }
        for public_key in public_keys {
            for client in self.store.revoke_by_public_key(&public_key).await? {
                audit::leaked_secret_revoked(&client, source.map(SourceAddress::ip), reporter.user_agent);
            }
        }
        Ok(())
    }
}
