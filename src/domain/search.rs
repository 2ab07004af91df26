//! What an admin searches for: text, owners and whether revoked clients count.

use sha2::{Digest, Sha256};

use super::EntryViolation;

/// What an admin searches for: text matched against display names (substring) and client ids
/// (prefix), case-insensitively in every script (see [`SearchFilter::fold_case`]); a set of
/// owners; and whether revoked clients count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchFilter {
    pub text: Option<String>,
    pub users: Vec<String>,
    pub include_deleted: bool,
}

impl SearchFilter {
    pub const MAX_TEXT_CHARS: usize = 200;
    pub const MAX_USERS: usize = 100;

    pub fn parse_text(query: &str) -> Result<Option<String>, String> {
        let text = query.trim();
        if text.chars().count() > Self::MAX_TEXT_CHARS {
            return Err(format!("is longer than {} characters", Self::MAX_TEXT_CHARS));
        }
        if text.chars().any(char::is_control) {
            return Err("has control characters; only printable text is allowed".into());
        }
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }

    /// The text as Search compares it: [`SearchFilter::fold_case`] of the query.
    pub fn folded_text(&self) -> Option<String> {
        self.text.as_deref().map(Self::fold_case)
    }

    /// The case-folded form in which Search compares display names with the query. The store
    /// keeps this form of each name beside it, because neither database can be relied on to fold
    /// beyond ASCII the same way (SQLite's `LOWER` and `LIKE` fold only ASCII; PostgreSQL's
    /// `lower` follows the database's collation).
    ///
    /// Unicode's default lower case, applied character by character, so a substring of a name
    /// folds to a substring of the folded name: `É` is `é`, `Ü` is `ü`. On top of that, the
    /// differences between lower case and case folding that matter for search: Greek final
    /// `ς` is `σ` (so `Σ`, `σ` and `ς` all match each other wherever they stand), and a dot
    /// above directly after `i` is dropped, so the Turkish `İ` (lower case `i̇`) is matched by
    /// `i`, `I`, `i̇` and `İ`. Turkish dotless `ı` stays a letter of its own, as in every
    /// language-independent folding.
    pub fn fold_case(text: &str) -> String {
        let mut folded = String::with_capacity(text.len());
        for c in text.chars().flat_map(char::to_lowercase) {
            match c {
                'ς' => folded.push('σ'),
                '\u{307}' if folded.ends_with('i') => {}
                c => folded.push(c),
            }
        }
        folded
    }

    /// User ids to filter on: at most 100, none empty or with a NUL byte; duplicates dropped.
    pub fn parse_users<S: AsRef<str>>(ids: &[S]) -> Result<Vec<String>, Vec<EntryViolation>> {
        super::parse_entries(ids, Self::MAX_USERS, |id| {
            if id.is_empty() || id.len() > 256 {
                return Err("must be a user id of 1-256 bytes".to_owned());
            }
            super::refuse_nul(id, "user id")?;
            Ok(id.to_owned())
        })
    }

    /// A short, stable digest of the query, to bind page tokens to it.
    pub fn fingerprint(&self) -> String {
        let mut users = self.users.clone();
        users.sort();
        let canonical = serde_json::json!(["search", self.text, users, self.include_deleted]);
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_beyond_ascii() {
        assert_eq!(SearchFilter::fold_case("Équipe Ünïcode"), "équipe ünïcode");
        for sigma in ["ΟΔΟΣ", "οδοσ", "οδος", "ΟΔΟς"] {
            assert_eq!(SearchFilter::fold_case(sigma), "οδοσ", "{sigma}");
        }
        for istanbul in ["İSTANBUL", "İstanbul", "i\u{307}stanbul", "istanbul", "ISTANBUL"] {
            assert_eq!(SearchFilter::fold_case(istanbul), "istanbul", "{istanbul}");
        }
        assert_eq!(SearchFilter::fold_case("ırmak"), "ırmak", "dotless ı is a letter of its own");
        assert_eq!(SearchFilter::fold_case("100% ü_x"), "100% ü_x", "LIKE wildcards are left for the store");
    }
}
