//! The authenticated caller.

use super::{ClientId, Role, RoleSet};

/// The authenticated caller, as the bearer token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: RoleSet,
    /// Set when the token was issued to a personal client rather than to the user directly.
    pub client_id: Option<ClientId>,
}

impl Principal {
    /// The user id of `subject` at an external issuer: `ISSUER#SUBJECT`. A `sub` is unique only
    /// within its issuer (OpenID Connect Core §2), so two issuers' "alice" are two users, and
    /// neither is the "alice" of a token this service minted: local user ids never hold `#`,
    /// and an issuer identifier has no fragment.
    pub fn external_user_id(issuer: &str, subject: &str) -> String {
        format!("{issuer}#{subject}")
    }

    /// Whether `user_id` may name a user: not if it holds a control character, which would end
    /// a header it is written into (`x-user-id`) and begin another, or break a line of the log.
    pub fn check_user_id(user_id: &str) -> Result<(), String> {
        match user_id.chars().find(|c| c.is_control()) {
            Some(c) => Err(format!("contains a control character (U+{:04X}), which no user id may hold", u32::from(c))),
            None => Ok(()),
        }
    }

    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}
