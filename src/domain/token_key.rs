//! The service's own token signing keys, as stored and as published.

use std::fmt;

use ed25519_dalek::SigningKey;

/// One of the service's own keys for access tokens, by the `kid` it is published under.
#[derive(Clone)]
pub struct TokenKey {
    pub kid: String,
    pub key: SigningKey,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// A signing key as the database holds it: the raw key, or the key sealed under the operator's
/// key-encryption key.
#[derive(Clone)]
pub struct StoredKey {
    pub kid: String,
    pub material: Vec<u8>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}
