//! Compact JWS (RFC 7515) signed with Ed25519 (RFC 8037 `EdDSA`, RFC 9864 `Ed25519`).
//!
//! Verification is strict: the algorithm is checked before any key is touched, signatures are
//! verified with `verify_strict` (no small-order keys, no malleable signatures), and a header
//! with `crit` extensions this code does not understand is refused.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The protected header fields this service reads or writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// One-time value ConductorOne's SDKs put in the header of client assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing)]
    pub crit: Option<serde_json::Value>,
}

/// Why a JWS was refused; for logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("algorithm not allowed (only EdDSA / Ed25519)")]
    Algorithm,
    #[error("unsupported critical header")]
    Critical,
    #[error("bad signature")]
    Signature,
    #[error("claims are not a valid JSON object of the expected shape")]
    Claims,
}

/// Signs `claims` as a compact JWS with alg `EdDSA`.
pub fn sign<C: Serialize>(header: &Header, claims: &C, key: &SigningKey) -> String {
    // Plain structs of strings and numbers always serialise.
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap_or_default());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// A JWS whose header has been read and whose algorithm is allowed, but whose signature has
/// not been checked yet.
#[derive(Debug)]
pub struct UnverifiedJws<'a> {
    pub header: Header,
    signing_input: &'a str,
    payload: &'a str,
    signature: Signature,
}

impl<'a> UnverifiedJws<'a> {
    pub fn parse(token: &'a str) -> Result<Self, JwsError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed);
        };
        let header_bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwsError::Malformed)?;
        let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| JwsError::Malformed)?;
        if header.alg != "EdDSA" && header.alg != "Ed25519" {
            return Err(JwsError::Algorithm);
        }
        if header.crit.is_some() {
            return Err(JwsError::Critical);
        }
        let signature_bytes: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwsError::Malformed)?
            .try_into()
            .map_err(|_| JwsError::Malformed)?;
        let signing_input = &token[..token.len() - signature.len() - 1];
        Ok(Self { header, signing_input, payload, signature: Signature::from_bytes(&signature_bytes) })
    }

    /// Checks the signature with `key` and returns the claims.
    pub fn verify<C: DeserializeOwned>(self, key: &VerifyingKey) -> Result<C, JwsError> {
        self.verify_signature(key)?;
        self.untrusted_claims()
    }

    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), JwsError> {
        key.verify_strict(self.signing_input.as_bytes(), &self.signature).map_err(|_| JwsError::Signature)
    }

    /// The claims, whether or not the signature holds: only for finding which key to check it
    /// with, never for a decision.
    pub fn untrusted_claims<C: DeserializeOwned>(&self) -> Result<C, JwsError> {
        let payload = URL_SAFE_NO_PAD.decode(self.payload).map_err(|_| JwsError::Claims)?;
        serde_json::from_slice(&payload).map_err(|_| JwsError::Claims)
    }
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;
    use serde_json::{Value, json};

    use super::*;

    fn header() -> Header {
        Header { alg: "EdDSA".into(), kid: Some("k1".into()), ..Header::default() }
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = SigningKey::generate(&mut OsRng);
        let token = sign(&header(), &json!({"sub": "alice"}), &key);
        let claims: Value = UnverifiedJws::parse(&token).unwrap().verify(&key.verifying_key()).unwrap();
        assert_eq!(claims["sub"], "alice");

        let other = SigningKey::generate(&mut OsRng);
        let err = UnverifiedJws::parse(&token).unwrap().verify::<Value>(&other.verifying_key()).unwrap_err();
        assert_eq!(err, JwsError::Signature);

        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#);
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            UnverifiedJws::parse(&tampered).unwrap().verify::<Value>(&key.verifying_key()).unwrap_err(),
            JwsError::Signature
        );
    }

    #[test]
    fn only_ed25519_algorithms_are_accepted() {
        for alg in ["none", "HS256", "RS256", "ES256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let token = format!("{header}.e30.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
            assert_eq!(UnverifiedJws::parse(&token).unwrap_err(), JwsError::Algorithm, "{alg}");
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"Ed25519"}"#);
        let token = format!("{header}.e30.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
        assert!(UnverifiedJws::parse(&token).is_ok());
    }
}
