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
    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }
}
