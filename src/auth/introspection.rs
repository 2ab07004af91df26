//! What the services behind this one may learn about a token: whether it is live now, by the
//! same rules as a call to this service (signature, issuer, expiry, and, for a token a personal
//! client obtained, the client still live in the database).

use std::sync::Arc;

use super::{Authenticator, VerifiedClaims};
use crate::{
    Error,
    domain::{Principal, Role, quote},
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

    /// The claims of `token` if it is live now, `None` if it is not (revoked, expired, of
    /// another issuer, or no token at all). Only a caller with the introspection role may ask:
    /// anyone else would learn whether a token they found still works.
    pub async fn introspect(&self, caller: &Principal, token: &str) -> Result<Option<Arc<VerifiedClaims>>, Error> {
        if !caller.has_role(&self.role) {
            return Err(Error::PermissionDenied(format!(
                "token introspection is for resource servers: the caller needs the role {}",
                quote(self.role.as_str())
            )));
        }
        live(&self.auth, token).await
    }

    pub fn issuer(&self) -> &str {
        self.auth.issuer()
    }
}

/// The claims of `token` if it is live now; `None` if it is not. A database that cannot answer
/// is an error, not a verdict: the caller should ask again, not turn a user away.
pub async fn live(auth: &Authenticator, token: &str) -> Result<Option<Arc<VerifiedClaims>>, Error> {
    match auth.live_token(token).await {
        Ok(claims) => Ok(Some(claims)),
        Err(Error::Unauthenticated(_)) => Ok(None),
        Err(err) => Err(err),
    }
}
