//! The service's own signing keys. They live in the database so every replica signs and
//! verifies with the same keys; the oldest key signs, every key verifies.

use std::{
    collections::HashMap,
    sync::RwLock,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::Serialize;
use uuid::Uuid;

use super::{
    jws::{self, Header},
    vault::KeyVault,
};
use crate::{Error, domain::StoredKey, store::Store};

/// A key id unknown to this replica makes it re-read the keys at most this often.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct KeyRing {
    signing_kid: String,
    signing_key: SigningKey,
    verifying: HashMap<String, VerifyingKey>,
}

/// Signs and verifies the service's tokens.
#[derive(Debug)]
pub struct SigningKeys {
    store: Store,
    vault: KeyVault,
    ring: RwLock<KeyRing>,
    last_reload: tokio::sync::Mutex<Option<Instant>>,
}

impl SigningKeys {
    /// Creates the first key if the database has none (at `serve` and `migrate`), and seals any
    /// stored in the clear when `vault` has a sealing key.
    pub async fn prepare(store: &Store, vault: &KeyVault) -> Result<(), Error> {
        let created = store
            .ensure_signing_key(|| {
                let kid = Uuid::now_v7().to_string();
                let material = vault.seal(&kid, &SigningKey::generate(&mut OsRng))?;
                Ok(StoredKey { kid, material })
            })
            .await?;
        if created {
            tracing::info!("created the first token signing key");
        }
        let sealed = store
            .restore_signing_keys(|stored| {
                if !vault.should_seal(stored) {
                    return Ok(None);
                }
                vault.seal(&stored.kid, &vault.open(stored)?).map(Some)
            })
            .await?;
        if sealed > 0 {
            tracing::info!(sealed, "sealed the token signing keys stored in the clear");
        }
        Ok(())
    }

    /// Loads the keys the database holds.
    pub async fn load(store: Store, vault: KeyVault) -> Result<Self, Error> {
        let ring = Self::read_ring(&store, &vault).await?;
        Ok(Self { store, vault, ring: RwLock::new(ring), last_reload: tokio::sync::Mutex::new(None) })
    }

    async fn read_ring(store: &Store, vault: &KeyVault) -> Result<KeyRing, Error> {
        let stored = store.signing_keys().await?;
        let mut keys = Vec::with_capacity(stored.len());
        for key in &stored {
            keys.push((key.kid.clone(), vault.open(key)?));
        }
        let verifying = keys.iter().map(|(kid, key)| (kid.clone(), key.verifying_key())).collect();
        // The oldest key signs.
        let (signing_kid, signing_key) = keys.into_iter().next().ok_or_else(|| {
            Error::internal(
                "the database holds no token signing key: run `personal-clients migrate` or start the server first",
            )
        })?;
        Ok(KeyRing { signing_kid, signing_key, verifying })
    }

    /// Signs `claims` with the current key, its kid in the header.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let header = Header {
            alg: "EdDSA".into(),
            typ: Some("JWT".into()),
            kid: Some(ring.signing_kid.clone()),
            ..Header::default()
        };
        jws::sign(&header, claims, &ring.signing_key)
    }

    /// The public key for `kid`, re-reading the database (rate-limited) when it is unknown here.
    pub async fn verifying_key(&self, kid: &str) -> Result<Option<VerifyingKey>, Error> {
        if let Some(key) = self.cached(kid) {
            return Ok(Some(key));
        }
        // Callers that arrive during a reload wait for it and see its result.
        let mut last = self.last_reload.lock().await;
        if let Some(key) = self.cached(kid) {
            return Ok(Some(key));
        }
        if last.is_some_and(|at| at.elapsed() < RELOAD_INTERVAL) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        let ring = Self::read_ring(&self.store, &self.vault).await?;
        *self.ring.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = ring;
        Ok(self.cached(kid))
    }

    /// The public keys as a JWK Set (RFC 7517), for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut kids: Vec<&String> = ring.verifying.keys().collect();
        kids.sort();
        let keys: Vec<serde_json::Value> = kids
            .into_iter()
            .map(|kid| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(ring.verifying[kid].as_bytes()),
                    "kid": kid,
                    "use": "sig",
                    "alg": "EdDSA",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    fn cached(&self, kid: &str) -> Option<VerifyingKey> {
        self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner()).verifying.get(kid).copied()
    }
}
