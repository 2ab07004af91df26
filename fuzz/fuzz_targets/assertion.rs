//! `ClientAssertion::parse` then `verify` against a fixed Ed25519 key, audience and time.
//!
//! The first byte picks the mode:
//! - `0`: the rest is the assertion as sent (arbitrary UTF-8);
//! - anything else: the rest is `header JSON 0xFF claims JSON`, signed here with the fixed key,
//!   so the claim rules past the signature check are reached too.
//!
//! Never panics; an assertion that verifies has the client as issuer, a one-time value of 1-256
//! bytes and is spent until after `NOW`.
#![no_main]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use personal_clients::exchange::assertion::ClientAssertion;

const CLIENT: &str = "fuzz-otter-00001@localhost/pcc";
const AUDIENCES: &[&str] = &["localhost", "https://localhost:8443"];
const NOW: i64 = 1_800_000_000;
const KEY: [u8; 32] = [7; 32];

fn check(token: &str, key: &SigningKey) {
    let Ok(assertion) = ClientAssertion::parse(token) else { return };
    let _ = assertion.claimed_issuer();
    let _ = format!("{assertion:?}");
    if let Ok(verified) = assertion.verify(&key.verifying_key(), CLIENT, AUDIENCES, NOW) {
        assert_eq!(assertion.claimed_issuer(), Some(CLIENT));
        assert!(!verified.one_time_value.is_empty() && verified.one_time_value.len() <= 256);
        assert!(verified.spent_until > NOW);
    }
    // Another client's key never verifies it.
    let other = SigningKey::from_bytes(&[8; 32]);
    assert!(assertion.verify(&other.verifying_key(), CLIENT, AUDIENCES, NOW).is_err());
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
            let (header, claims) = match rest.iter().position(|&b| b == 0xFF) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let signature = key.sign(input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
            check(&token, &key);
        }
        None => {}
    }
});
