//! What the services behind this one may learn about a token: whether it is active now, by the
//! same rules as a call to this service (signature, issuer, expiry, and, for a token a personal
//! client obtained, the client not revoked or expired).

use std::sync::Arc;

use super::{Authenticator, VerifiedClaims};
use crate::{
    domain::{Principal, Role, quote},
    error::Error,
};

/// Token introspection (RFC 7662) for resource servers: callers holding the introspection role.
#[derive(Debug, Clone)]
pub struct Introspection {
    auth: Arc<Authenticator>,
    role: Role,
}

impl Introspection {
    pub fn new(auth: Arc<Authenticator>, role: Role) -> Self {
        Self { auth, role }
    }

    /// The claims of `token` if it is active now, `None` if it is not (revoked, expired, of
    /// another issuer, or no token at all). Only a caller with the introspection role may ask:
    /// anyone else would learn whether a token they found still works.
    pub async fn introspect(&self, caller: &Principal, token: &str) -> Result<Option<Arc<VerifiedClaims>>, Error> {
        if !caller.has_role(&self.role) {
            return Err(Error::PermissionDenied(format!(
                "token introspection is for resource servers: the caller needs the role {}",
                quote(self.role.as_str())
            )));
        }
        self.auth.active(token).await
    }

    pub fn issuer(&self) -> &str {
        self.auth.issuer()
    }
}
