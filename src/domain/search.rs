use sha2::{Digest, Sha256};

use super::EntryViolation;

/// What an admin searches for: text matched against display names (substring) and client ids
/// (prefix), case-insensitively; a set of owners; and whether revoked clients count.
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

    /// User ids to filter on: at most 100, none empty; duplicates dropped.
    pub fn parse_users<S: AsRef<str>>(ids: &[S]) -> Result<Vec<String>, Vec<EntryViolation>> {
        super::parse_entries(ids, Self::MAX_USERS, |id| {
            if id.is_empty() || id.len() > 256 {
                Err("must be a user id of 1-256 bytes".to_owned())
            } else {
                Ok(id.to_owned())
            }
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
