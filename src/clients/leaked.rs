//! Leaked secrets, reported by whoever found them (a secret scanner, a colleague reading a log),
//! as GitHub's credential revocation API takes its tokens: possession of a secret is the proof,
//! so a report needs no other credential, and each secret that belongs to a live credential
//! revokes it at once, as Delete does. What a reporter hears is the same whatever the secrets
//! were: nothing tells them whether one was live.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
};

use tracing::Instrument;

use super::PersonalClients;
use crate::{
    audit,
    domain::{ClientSecret, Owner, RequestOrigin, SourceAddress, Violations},
    error::Error,
};

/// The most secrets one report may name.
pub const MAX_SECRETS: usize = 100;
/// The longest entry looked at: a secret is under 200 characters.
const MAX_SECRET_CHARS: usize = 1024;

/// Who reports: where the request came from, of which the trusted proxies make their address,
/// and their `User-Agent`.
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    pub origin: &'a RequestOrigin,
    pub user_agent: &'a str,
}

/// A report its source's rate admitted: the one way to revoke by secret.
#[derive(Debug)]
pub struct Report {
    clients: PersonalClients,
    source: Option<IpAddr>,
    user_agent: String,
}

impl PersonalClients {
    /// Admits a report from `reporter`, or refuses it past its source's rate: before anything of
    /// the report is read, so a reporter without a credential can only spend its own allowance.
    pub fn admit_report(&self, reporter: Reporter<'_>) -> Result<Report, Error> {
        let source = reporter.origin.source(&self.settings.trusted_proxies);
        self.reports.check(&source.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), SourceAddress::sender_network))?;
        Ok(Report {
            clients: self.clone(),
            source: source.map(SourceAddress::ip),
            user_agent: reporter.user_agent.to_owned(),
        })
    }
}

impl Report {
    /// Revokes every live credential whose secret is among `secrets`, and says how many, for the
    /// metrics: never for the reporter, who hears the same whatever the secrets were. Entries
    /// that are no secret of this service, or of no live credential, change nothing. Once begun,
    /// the revocations and their audit events run to the end, even if the reporter goes.
    pub async fn revoke(self, secrets: &[String]) -> Result<u64, Error> {
        if secrets.is_empty() || secrets.len() > MAX_SECRETS {
            let mut v = Violations::default();
            v.push("credentials", format!("names {} secrets; a report names 1 to {MAX_SECRETS}", secrets.len()));
            return Err(Error::InvalidArgument(v.into_vec()));
        }
        // The public key follows from the private key, which is the proof: a report that holds
        // only a credential's public key revokes nothing.
        let public_keys: HashSet<[u8; 32]> = secrets
            .iter()
            .filter(|secret| secret.len() <= MAX_SECRET_CHARS)
            .filter_map(|secret| ClientSecret::parse(secret).and_then(|secret| secret.signing_key()).ok())
            .map(|key| key.verifying_key().to_bytes())
            .collect();
        if public_keys.is_empty() {
            return Ok(0);
        }
        let Self { clients, source, user_agent } = self;
        // In the call's span: its statements and audit events belong to its trace.
        let work = tokio::spawn(
            async move {
                let store = &clients.store;
                let mut revoked = 0;
                for id in store.live_clients_with_keys(&public_keys.into_iter().collect::<Vec<_>>()).await? {
                    match store.delete_client(id, Owner::Anyone).await {
                        Ok(client) => {
                            audit::leaked_secret_revoked(&client, source, &user_agent);
                            revoked += 1;
                        }
                        // Revoked meanwhile, by its owner or another report.
                        Err(Error::NotFound) => {}
                        Err(err) => return Err(err),
                    }
                }
                Ok(revoked)
            }
            .in_current_span(),
        );
        work.await.map_err(|err| Error::internal_with("the revocation of reported secrets stopped", err))?
    }
}
