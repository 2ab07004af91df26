//! Client assertions for the `token` scenario: the Ed25519 key inside a personal client's
//! secret (`secret-token:<namespace>:v1:<base64url JWK>`), and compact EdDSA JWS assertions
//! (RFC 7523) with iss = sub = the client id and a `jti` never used before.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey};

use crate::Error;

/// `exp - iat` of each assertion, in seconds: the service accepts at most five minutes.
const LIFETIME_S: u64 = 300;

/// The private key of a secret, `secret-token:<namespace>:v1:<base64url-no-pad JWK>`.
pub fn signing_key(secret: &str) -> Result<SigningKey, Error> {
    let bad = "expected secret-token:<namespace>:v1:<base64url JWK>";
    let mut parts = secret.trim().splitn(4, ':');
    let (Some("secret-token"), Some(ns), Some("v1"), Some(jwk)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad.into());
    };
    if ns.is_empty() {
        return Err(bad.into());
    }
    let jwk: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwk)?)?;
    if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
        return Err("the secret's JWK is not an Ed25519 key".into());
    }
    let d = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().ok_or("the JWK has no \"d\"")?)?;
    let seed: [u8; 32] = d.try_into().map_err(|_| "\"d\" is not 32 bytes")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs assertions for one client.
pub struct Signer {
    key: SigningKey,
    pub client_id: String,
    aud: String,
    jti_prefix: String,
    next: AtomicU64,
}

impl Signer {
    pub fn new(key: SigningKey, client_id: String, aud: String) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let jti_prefix = format!("pcl-{:x}-{}", now.as_micros(), std::process::id());
        Self { key, client_id, aud, jti_prefix, next: AtomicU64::new(0) }
    }

    /// One assertion: header `{"alg":"EdDSA","typ":"JWT"}`, claims iss, sub, aud, iat, exp, jti.
    pub fn sign(&self) -> String {
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let jti = format!("{}-{}", self.jti_prefix, self.next.fetch_add(1, Ordering::Relaxed));
        let claims = serde_json::json!({
            "iss": self.client_id, "sub": self.client_id, "aud": self.aud,
            "iat": iat, "exp": iat + LIFETIME_S, "jti": jti,
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.key.sign(jwt.as_bytes());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        jwt
    }
}

/// Assertions signed before a run, on every core, so that signing does not compete with the
/// measured load; each is handed out once. When they run out, more are signed on the spot and
/// counted. `reuse` cycles through them instead: only for the baseline, which checks nothing.
pub struct Assertions {
    signer: std::sync::Arc<Signer>,
    signed: Vec<String>,
    next: AtomicUsize,
    reuse: bool,
    pub signed_late: AtomicU64,
}

impl Assertions {
    pub fn presign(signer: std::sync::Arc<Signer>, n: usize, reuse: bool) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let signed = std::thread::scope(|s| {
            let parts: Vec<_> = (0..threads)
                .map(|i| {
                    let signer = &signer;
                    let count = n / threads + usize::from(i < n % threads);
                    s.spawn(move || (0..count).map(|_| signer.sign()).collect::<Vec<_>>())
                })
                .collect();
            parts.into_iter().flat_map(|p| p.join().unwrap_or_default()).collect()
        });
        Self { signer, signed, next: AtomicUsize::new(0), reuse, signed_late: AtomicU64::new(0) }
    }

    pub fn client_id(&self) -> &str {
        &self.signer.client_id
    }

    pub fn take(&self) -> String {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.signed.get(i) {
            Some(a) => a.clone(),
            None if self.reuse && !self.signed.is_empty() => self.signed[i % self.signed.len()].clone(),
            None => {
                self.signed_late.fetch_add(1, Ordering::Relaxed);
                self.signer.sign()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn reads_a_secret_and_signs_verifiable_assertions_with_unique_jti() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            "d": URL_SAFE_NO_PAD.encode(key.as_bytes())});
        let secret = format!("secret-token:personal-clients:v1:{}", URL_SAFE_NO_PAD.encode(jwk.to_string()));
        assert_eq!(signing_key(&secret).unwrap().to_bytes(), key.to_bytes());
        assert!(signing_key("secret-token:pc:v2:e30").is_err());
        let signer = Signer::new(key.clone(), "calm-otter-1@localhost/pcc".into(), "localhost".into());
        let pool = Assertions::presign(std::sync::Arc::new(signer), 2, false);
        let (a, b, c) = (pool.take(), pool.take(), pool.take());
        assert_eq!(pool.signed_late.load(Ordering::Relaxed), 1);
        let mut jtis = std::collections::HashSet::new();
        for jwt in [a, b, c] {
            let (input, sig) = jwt.rsplit_once('.').unwrap();
            let sig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
            key.verifying_key().verify(input.as_bytes(), &sig).unwrap();
            let claims = URL_SAFE_NO_PAD.decode(input.split_once('.').unwrap().1).unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
            assert_eq!((&claims["iss"], &claims["sub"]), (&claims["sub"], &"calm-otter-1@localhost/pcc".into()));
            assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), LIFETIME_S);
            assert!(jtis.insert(claims["jti"].as_str().unwrap().to_owned()));
        }
    }
}
