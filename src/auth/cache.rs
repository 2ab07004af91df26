//! Bearer tokens this service has verified, so a caller presenting the same token again costs a
//! hash and a lookup instead of a JSON parse and an Ed25519 verification.
//!
//! What is kept is only what the signature proved and cannot change: the claims. Whatever can
//! change is checked on every call as before: the expiry against the clock, and, for a token a
//! personal client obtained, that the client is still live as the database says now (`ClientStatus`:
//! a revocation on any replica refuses the token on the next call), and that the key that signed it is still
//! published (so a withdrawn key's tokens stop working). Only tokens whose signature was verified
//! are kept, keyed by the SHA-256 of the token, so nothing a caller without a valid token sends
//! takes a place, and the cache never holds a token itself.

use std::sync::Arc;

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::domain::RoleSet;

/// How many verified tokens are kept (about 200 bytes each); the least used make room.
pub const CAPACITY: usize = 16_384;

/// The claims of a verified access token of this service.
#[derive(Debug)]
pub struct VerifiedClaims {
    pub sub: String,
    pub roles: RoleSet,
    pub client_id: Option<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub aud: Vec<String>,
    /// The key that signed it, which may be withdrawn while the token lives.
    pub kid: String,
}

/// Verified tokens by their SHA-256.
#[derive(Debug)]
pub struct VerifiedTokens {
    cache: Cache<[u8; 32], Arc<VerifiedClaims>>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self { cache: Cache::new(CAPACITY) }
    }
}

impl VerifiedTokens {
    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<VerifiedClaims>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: [u8; 32], claims: Arc<VerifiedClaims>) {
        self.cache.insert(key, claims);
    }

    pub fn remove(&self, key: &[u8; 32]) {
        self.cache.remove(key);
    }
}
