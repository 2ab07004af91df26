//! Who may do what with whose personal client: every such rule of the service, in one place.
//!
//! | caller | create | get | list | update | delete | search |
//! |---|---|---|---|---|---|---|
//! | a user | own, with roles they hold | own | own | own, leaving it roles they hold | own | no |
//! | an admin (`--admin-role`) | as a user | anyone's | own | as a user | anyone's | yes |
//! | a personal client's token | no | as its owner | as its owner | no | no | as its owner |
//!
//! Someone else's client is `NOT_FOUND`, exactly like a missing one, so nothing tells a caller
//! that it exists.

use crate::{
    domain::{Owner, Principal, Role, RoleSet},
    error::Error,
};

/// What one caller may do.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    caller: &'a Principal,
    admin_role: &'a Role,
    is_admin: bool,
}

impl<'a> Access<'a> {
    pub fn of(caller: &'a Principal, admin_role: &'a Role) -> Self {
        Self { caller, admin_role, is_admin: caller.has_role(admin_role) }
    }

    /// Whose clients Get may return: the caller's own; an admin's, anyone's.
    pub fn readable(&self) -> Owner<'a> {
        if self.is_admin { Owner::Anyone } else { Owner::User(&self.caller.user_id) }
    }

    /// Whose clients List returns: always the caller's own, admins included.
    pub fn listable(&self) -> &'a str {
        &self.caller.user_id
    }

    /// Create: a user token, and scoped roles the caller holds. Returns the new client's owner.
    pub fn may_create(&self, scoped_roles: &RoleSet) -> Result<&'a str, Error> {
        self.ensure_user_token()?;
        self.ensure_holds(scoped_roles)?;
        Ok(&self.caller.user_id)
    }

    /// Update: a user token, only the caller's own clients (admins revoke, they do not edit),
    /// and scoped roles the caller holds. Returns whose clients may change.
    pub fn changeable(&self, new_roles: Option<&RoleSet>) -> Result<&'a str, Error> {
        self.ensure_user_token()?;
        if let Some(roles) = new_roles {
            self.ensure_holds(roles)?;
        }
        Ok(&self.caller.user_id)
    }

    /// Update, as the client stands under the lock of its change: whichever field the Update
    /// names, the client is left with roles its owner holds now (`roles`, what its tokens would
    /// carry). A credential made with roles since lost is neither kept alive with them nor
    /// revived with them: its owner narrows its scoped roles in the same Update.
    pub fn may_leave(&self, roles: &RoleSet) -> Result<(), Error> {
        let missing = roles.missing_from(&self.caller.roles);
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|role| role.as_str()).collect();
        Err(Error::PermissionDenied(format!(
            "this credential's tokens carry roles you no longer hold: {}; name scoped_roles in the same Update, set to roles you hold (or to none, for the roles you hold now)",
            names.join(", ")
        )))
    }

    /// Delete: a user token; the caller's own clients, an admin's anyone's.
    pub fn revocable(&self) -> Result<Owner<'a>, Error> {
        self.ensure_user_token()?;
        Ok(self.readable())
    }

    /// Search across users: admins only.
    pub fn may_search(&self) -> Result<(), Error> {
        if self.is_admin {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "searching personal clients requires the {:?} role",
                self.admin_role.as_str()
            )))
        }
    }

    /// Tokens of personal clients may read personal clients but never change them: no
    /// credential may be used to mint, widen or revoke another.
    fn ensure_user_token(&self) -> Result<(), Error> {
        match &self.caller.client_id {
            Some(client_id) => Err(Error::PermissionDenied(format!(
                "a token issued to personal client {client_id} may read personal clients but not create, update or delete them; use a user token"
            ))),
            None => Ok(()),
        }
    }

    /// Scoped roles must be roles the caller holds: a credential never has more than its owner.
    fn ensure_holds(&self, roles: &RoleSet) -> Result<(), Error> {
        let missing = roles.missing_from(&self.caller.roles);
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|role| role.as_str()).collect();
        Err(Error::PermissionDenied(format!(
            "scoped_roles may only name roles you hold; you do not hold: {}",
            names.join(", ")
        )))
    }
}
