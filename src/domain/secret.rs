//! The secret of a personal client: an Ed25519 private key, as the caller receives it once.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

/// `secret-token:<namespace>:v1:` + base64url-no-pad of the JWK of an Ed25519 private key: what
/// a caller receives, once, when creating a personal client. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

#[derive(Serialize, Deserialize)]
struct PrivateJwk<'a> {
    kty: &'a str,
    crv: &'a str,
    x: String,
    d: String,
}

impl ClientSecret {
    /// A new secret from the operating system's random number generator, with the public key
    /// the service keeps to verify what the secret signs.
    pub fn generate(namespace: &str) -> (Self, VerifyingKey) {
        let signing_key = SigningKey::generate(&mut OsRng);
        let jwk = PrivateJwk {
            kty: "OKP",
            crv: "Ed25519",
            x: URL_SAFE_NO_PAD.encode(signing_key.verifying_key().as_bytes()),
            d: URL_SAFE_NO_PAD.encode(signing_key.as_bytes()),
        };
        // A struct of plain strings always serialises.
        let json = serde_json::to_vec(&jwk).unwrap_or_default();
        let secret = format!("secret-token:{namespace}:v1:{}", URL_SAFE_NO_PAD.encode(json));
        (Self(secret), signing_key.verifying_key())
    }

    /// Reads a secret as a client does: `secret-token:<namespace>:v1:<base64url JWK>`, whose
    /// `d` is the Ed25519 private key (and `x`, when it is there, its public key).
    pub fn parse(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        Self(secret.to_owned()).signing_key().map(|_| Self(secret.to_owned()))
    }

    /// The private key inside, to sign client assertions with.
    pub fn signing_key(&self) -> Result<SigningKey, String> {
        let malformed = |what: &str| {
            format!("is not a personal client secret ({what}); expected secret-token:<namespace>:v1:<key>")
        };
        let mut parts = self.0.splitn(4, ':');
        if parts.next() != Some("secret-token") || parts.next().is_none_or(str::is_empty) || parts.next() != Some("v1")
        {
            return Err(malformed("prefix"));
        }
        let encoded = parts.next().ok_or_else(|| malformed("no key"))?;
        let json = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed("not base64url"))?;
        let jwk: PrivateJwk<'_> = serde_json::from_slice(&json).map_err(|_| malformed("not a JWK"))?;
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(malformed("not an Ed25519 key"));
        }
        let d: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&jwk.d)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| malformed("bad private key"))?;
        let key = SigningKey::from_bytes(&d);
        if URL_SAFE_NO_PAD.decode(&jwk.x).ok().as_deref() != Some(key.verifying_key().as_bytes().as_slice()) {
            return Err(malformed("public and private key disagree"));
        }
        Ok(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer;
    use serde_json::Value;

    use super::*;

    /// Reads a secret the way a client library does: four parts split on `:`, the last one a
    /// base64url JWK holding the Ed25519 private key.
    fn signing_key_from_secret(secret: &str) -> SigningKey {
        let parts: Vec<&str> = secret.splitn(4, ':').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "secret-token");
        assert_eq!(parts[2], "v1");
        let jwk: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[3]).unwrap()).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        let d: [u8; 32] = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap().try_into().unwrap();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let key = SigningKey::from_bytes(&d);
        assert_eq!(key.verifying_key().as_bytes().as_slice(), x.as_slice());
        key
    }

    #[test]
    fn secret_parses_like_a_client_and_matches_the_stored_public_key() {
        let (secret, public_key) = ClientSecret::generate("personal-clients");
        assert!(secret.expose().starts_with("secret-token:personal-clients:v1:"));
        let key = signing_key_from_secret(secret.expose());
        assert_eq!(key.verifying_key(), public_key);
        let signature = key.sign(b"assertion");
        assert!(public_key.verify_strict(b"assertion", &signature).is_ok());
    }

    #[test]
    fn a_secret_reads_back_as_its_key_and_garbage_is_refused() {
        let (secret, public_key) = ClientSecret::generate("personal-clients");
        let parsed = ClientSecret::parse(secret.expose()).unwrap();
        assert_eq!(parsed.signing_key().unwrap().verifying_key(), public_key);
        for bad in ["", "secret-token:ns:v2:abc", "secret-token:ns:v1:!!!", "token:ns:v1:e30", "secret-token:ns:v1:e30"]
        {
            assert!(ClientSecret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_credential_has_its_own_key_and_debug_hides_the_secret() {
        let (a, a_public) = ClientSecret::generate("personal-clients");
        let (_, b_public) = ClientSecret::generate("personal-clients");
        assert_ne!(a_public, b_public);
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
