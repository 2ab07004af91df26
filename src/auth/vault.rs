//! The signing keys at rest: sealed with ChaCha20-Poly1305 under a key the operator supplies
//! (`--key-encryption-key-file`), so a copy of the database (a backup, a stolen SQLite file) is
//! not enough to mint tokens. Without that key the signing keys are stored as they are, and the
//! database's file mode or access control is their only protection.

use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::SigningKey;
use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};

use crate::{config::KeyArgs, domain::StoredKey, error::Error};

/// The first byte of a sealed key: its format.
const SEALED_V1: u8 = 1;
const FLAG: &str = "--key-encryption-key-file";

/// Seals and opens the stored signing keys.
pub struct KeyVault {
    key: Option<LessSafeKey>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault").field("sealing", &self.key.is_some()).finish()
    }
}

impl KeyVault {
    /// Keys stored as they are.
    pub fn unsealed() -> Self {
        Self { key: None }
    }

    /// The protection `--key-encryption-key-file` asks for, read before the database is touched.
    pub fn from_args(keys: &KeyArgs) -> Result<Self, Error> {
        keys.key_encryption_key_file.as_deref().map_or_else(|| Ok(Self::unsealed()), Self::from_file)
    }

    /// Seals with the key in `path`: 32 bytes, base64 (`openssl rand -base64 32`).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(FLAG, format!("cannot read {}", path.display()), Some(e.into())))?;
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            Error::config(
                FLAG,
                format!("{} does not hold base64 (make one with `openssl rand -base64 32`)", path.display()),
                None,
            )
        })?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| {
            Error::config(
                FLAG,
                format!("{} holds {} bytes; the key is 32 random bytes, base64", path.display(), bytes.len()),
                None,
            )
        })?;
        Ok(Self { key: Some(LessSafeKey::new(unbound)) })
    }

    /// What to store for `key`: sealed, with its kid bound in, when there is a sealing key.
    pub fn seal(&self, kid: &str, key: &SigningKey) -> Result<Vec<u8>, Error> {
        let Some(sealing) = &self.key else { return Ok(key.to_bytes().to_vec()) };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| Error::internal("no randomness for a nonce"))?;
        let mut sealed = key.to_bytes().to_vec();
        sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(kid.as_bytes()), &mut sealed)
            .map_err(|_| Error::internal("cannot seal a signing key"))?;
        Ok([&[SEALED_V1][..], &nonce, &sealed].concat())
    }

    /// The signing key in `stored`.
    pub fn open(&self, stored: &StoredKey) -> Result<SigningKey, Error> {
        let material = stored.material.as_slice();
        if let Ok(plain) = <[u8; 32]>::try_from(material) {
            return Ok(SigningKey::from_bytes(&plain));
        }
        let Some((&SEALED_V1, rest)) = material.split_first() else {
            return Err(Error::internal(format!("signing key {} is in no format this version reads", stored.kid)));
        };
        let Some(opening) = &self.key else {
            return Err(Error::config(
                FLAG,
                format!("signing key {} is sealed; give the key it was sealed with", stored.kid),
                None,
            ));
        };
        let (nonce, sealed) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or_else(|| Error::internal(format!("signing key {} is cut short", stored.kid)))?;
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::internal("a nonce of the wrong size"))?;
        let mut buffer = sealed.to_vec();
        let plain = opening.open_in_place(nonce, Aad::from(stored.kid.as_bytes()), &mut buffer).map_err(|_| {
            Error::config(FLAG, format!("signing key {} was sealed with another key", stored.kid), None)
        })?;
        let plain: [u8; 32] = plain.try_into().map_err(|_| Error::internal("a sealed key of the wrong size"))?;
        Ok(SigningKey::from_bytes(&plain))
    }

    /// Whether `stored` should be sealed now: there is a sealing key and it is stored as it is.
    pub fn should_seal(&self, stored: &StoredKey) -> bool {
        self.key.is_some() && stored.material.len() == 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(byte: u8) -> KeyVault {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, STANDARD.encode([byte; 32])).unwrap();
        KeyVault::from_file(&path).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_key_and_kid() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let material = vault(1).seal("kid-1", &key).unwrap();
        assert!(!material.windows(32).any(|w| w == key.to_bytes()), "the key is not stored in the clear");
        let stored = StoredKey { kid: "kid-1".into(), material: material.clone() };
        assert_eq!(vault(1).open(&stored).unwrap().to_bytes(), key.to_bytes());
        assert!(vault(2).open(&stored).is_err(), "another sealing key");
        assert!(KeyVault::unsealed().open(&stored).is_err(), "no sealing key");
        assert!(vault(1).open(&StoredKey { kid: "kid-2".into(), material }).is_err(), "moved to another kid");
    }
}
