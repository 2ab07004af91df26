//! The compact JWS parser behind bearer tokens and client assertions (`auth::jws`):
//! `UnverifiedJws::parse`, then `verify_signature`, `untrusted_claims` and `verify` with a
//! fixed Ed25519 key. Never panics.
//!
//! The first byte picks the mode:
//! - `0`: the rest is the token as sent (arbitrary UTF-8);
//! - anything else: the rest is `header JSON 0xFF payload`, signed here with the fixed key; such a
//!   token, if it parses, must verify with that key and with no other.
#![no_main]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use personal_clients::auth::{AccessTokenClaims, jws::UnverifiedJws};
use serde_json::Value;

const KEY: [u8; 32] = [7; 32];

/// Returns whether the signature held with `key`.
fn check(token: &str, key: &SigningKey) -> Option<bool> {
    let jws = UnverifiedJws::parse(token).ok()?;
    assert!(jws.header.alg == "EdDSA" || jws.header.alg == "Ed25519");
    assert!(jws.header.crit.is_none());
    let signed = jws.verify_signature(&key.verifying_key()).is_ok();
    let _ = jws.untrusted_claims::<Value>();
    let claims = jws.untrusted_claims::<AccessTokenClaims>();
    if let Ok(claims) = &claims {
        let _ = claims.aud.contains("https://localhost");
    }
    let verified = jws.verify::<AccessTokenClaims>(&key.verifying_key());
    assert_eq!(verified.is_ok(), signed && claims.is_ok());
    Some(signed)
}

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&KEY);
    match data.split_first() {
        Some((0, rest)) => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check(token, &key);
            }
        }
        Some((_, rest)) => {
            let (header, payload) = match rest.iter().position(|&b| b == 0xFF) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).to_bytes()));
            if let Some(signed) = check(&token, &key) {
                assert!(signed, "a token signed with the key does not verify with it");
                let other = SigningKey::from_bytes(&[8; 32]);
                assert_eq!(check(&token, &other), Some(false), "verified with another key");
            }
        }
        None => {}
    }
});
