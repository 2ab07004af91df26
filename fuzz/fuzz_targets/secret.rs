//! `ClientSecret::parse` on arbitrary text. A secret that parses must keep its trimmed text,
//! parse again to the same secret and key, never show itself in `Debug`, and its key must sign
//! a client assertion that verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use personal_clients::{domain::ClientSecret, exchange::assertion::ClientAssertion};

const CLIENT: &str = "fuzz-otter-00001@localhost/pcc";
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Ok(secret) = ClientSecret::parse(input) else { return };
    assert_eq!(secret.expose(), input.trim(), "parse keeps the trimmed text");
    assert!(!format!("{secret:?}").contains(secret.expose()), "Debug shows the secret");

    let key = secret.signing_key().expect("a parsed secret has a key");
    let again = ClientSecret::parse(secret.expose()).expect("a parsed secret parses again");
    assert_eq!(again, secret);
    assert_eq!(again.signing_key().expect("key").to_bytes(), key.to_bytes());

    let token = ClientAssertion::sign(&key, CLIENT, "localhost", 60, NOW);
    let verified = ClientAssertion::parse(&token)
        .expect("what a client signs parses")
        .verify(&key.verifying_key(), CLIENT, &["localhost"], NOW)
        .expect("what a client signs verifies");
    assert_eq!(verified.spent_until, NOW + 60 + personal_clients::exchange::assertion::SKEW_SECS);
});
