//! `PageToken::decode(token, user, query)`. Input: `token \0 user \0 other_user \0 query`
//! (missing parts are empty; an empty query means `PageToken::LIST_QUERY`).
//!
//! Never panics; a token that decodes for (user, query) never decodes for another user or
//! another query, and re-encodes to a token that decodes to the same value; and a token made
//! for (user, query) always decodes for them, and only for them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use personal_clients::domain::PageToken;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let mut parts = input.splitn(4, '\0');
    let token = parts.next().unwrap_or_default();
    let user = parts.next().unwrap_or_default();
    let other_user = parts.next().unwrap_or_default();
    let query = match parts.next().unwrap_or_default() {
        "" => PageToken::LIST_QUERY,
        query => query,
    };
    let other_query = if query == PageToken::LIST_QUERY { "search:x" } else { PageToken::LIST_QUERY };

    match PageToken::decode(token, user, query) {
        Ok(None) => assert!(token.is_empty()),
        Ok(Some(decoded)) => {
            assert_eq!(decoded, PageToken::new(user, query, decoded.after));
            if other_user != user {
                assert!(
                    !matches!(PageToken::decode(token, other_user, query), Ok(Some(_))),
                    "a token of {user:?} decodes for {other_user:?}"
                );
            }
            assert!(!matches!(PageToken::decode(token, user, other_query), Ok(Some(_))));
            let again = PageToken::decode(&decoded.encode(), user, query);
            assert_eq!(again, Ok(Some(decoded)));
        }
        Err(_) => assert!(!token.is_empty()),
    }

    // A token this service issues for (user, query) comes back for them only.
    let mut bytes = [0u8; 16];
    for (i, b) in token.bytes().take(16).enumerate() {
        bytes[i] = b;
    }
    let issued = PageToken::new(user, query, Uuid::from_bytes(bytes));
    let encoded = issued.encode();
    assert_eq!(PageToken::decode(&encoded, user, query), Ok(Some(issued)));
    if other_user != user {
        assert!(PageToken::decode(&encoded, other_user, query).is_err());
    }
    assert!(PageToken::decode(&encoded, user, other_query).is_err());
});
