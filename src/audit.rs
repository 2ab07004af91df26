//! Audit events: one structured event for each Create, Update and Delete of a personal client
//! (allowed or refused), each refused token exchange, and each signing key change, all on the
//! tracing target `audit`, so operators can send them somewhere of their own (a `tracing`
//! filter on the target; with `--log-format json` each is one JSON line with a `target` field).
//!
//! Each says who (`actor`, and `via_client` for a personal client's token), what (`action`,
//! `target`), when (the event's timestamp), from where (`source`), and the `outcome`, with a
//! `reason` for a refusal. Never a secret, an assertion or a token: only ids and reasons.

use std::net::IpAddr;

use crate::domain::{PersonalClient, Principal, cut};

/// The tracing target of every audit event.
pub const TARGET: &str = "audit";

/// What was done, or tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateClient,
    UpdateClient,
    DeleteClient,
    RevokeLeakedClient,
    TokenExchange,
    AddSigningKey,
    RetireSigningKey,
    RemoveSigningKey,
    WithdrawSigningKey,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateClient => "personal_client.create",
            Self::UpdateClient => "personal_client.update",
            Self::DeleteClient => "personal_client.delete",
            Self::RevokeLeakedClient => "personal_client.revoke_leaked",
            Self::TokenExchange => "token.exchange",
            Self::AddSigningKey => "signing_key.add",
            Self::RetireSigningKey => "signing_key.retire",
            Self::RemoveSigningKey => "signing_key.remove",
            Self::WithdrawSigningKey => "signing_key.withdraw",
        }
    }
}

/// A call of the API by an authenticated caller: `target` is the personal client's id, when
/// known, and `client_id` its OAuth client id, when the answer gave it; `refusal` the reason it
/// was refused (a gRPC code's name), `None` when it was done.
pub fn call(
    action: Action,
    caller: &Principal,
    source: Option<IpAddr>,
    target: &str,
    client_id: &str,
    refusal: Option<&str>,
) {
    let via_client = caller.client_id.as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default();
    tracing::info!(
        target: "audit",
        action = action.as_str(),
        actor = cut(&caller.user_id).as_ref(),
        via_client = %via_client,
        source = %source.map(|ip| ip.to_string()).unwrap_or_default(),
        target = %target,
        client_id,
        outcome = if refusal.is_some() { "refused" } else { "done" },
        reason = refusal.unwrap_or_default(),
        "{} {}",
        action.as_str(),
        if refusal.is_some() { "refused" } else { "done" }
    );
}

/// A personal client revoked because its secret was reported as leaked, by whoever held it:
/// from `source`, with that reporter's `User-Agent` (cut: anyone may send one). Only
/// revocations are written, one per credential at most, so reporters cannot fill the log.
pub fn leaked_secret_revoked(client: &PersonalClient, source: Option<IpAddr>, user_agent: &str) {
    tracing::warn!(
        target: "audit",
        action = Action::RevokeLeakedClient.as_str(),
        actor = "leaked secret report",
        owner = cut(&client.user_id).as_ref(),
        source = %source.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent = cut(user_agent).as_ref(),
        target = %client.id,
        client_id = %client.client_id,
        outcome = "done",
        "personal client revoked: its secret was reported as leaked"
    );
}

/// A refused token exchange: `client_id` as the caller claimed it (cut: it is unverified),
/// from `source`, for `reason`. The caller is not authenticated, so these are written at most
/// at the rate of the refusal log; `left_out` says how many were not.
pub fn exchange_refused(client_id: &str, source: Option<IpAddr>, reason: &str, left_out: u64) {
    tracing::warn!(
        target: "audit",
        action = Action::TokenExchange.as_str(),
        actor = cut(client_id).as_ref(),
        source = %source.map(|ip| ip.to_string()).unwrap_or_default(),
        outcome = "refused",
        reason,
        left_out,
        "token exchange refused"
    );
}

/// A change to the signing keys, by an operator's command (`actor` names it: `keys add`) or by
/// the server (`server`, `rotation schedule`), with what it means (`detail`) or why it was
/// refused (`refusal`).
pub fn key_change(action: Action, actor: &str, kid: &str, detail: &str, refusal: Option<&str>) {
    let outcome = if refusal.is_some() { "refused" } else { "done" };
    tracing::info!(
        target: "audit",
        action = action.as_str(),
        actor,
        target = cut(kid).as_ref(),
        outcome,
        detail,
        reason = refusal.unwrap_or_default(),
        "{} {outcome}",
        action.as_str()
    );
}
