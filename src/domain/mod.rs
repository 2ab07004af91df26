//! Domain values of personal clients. Every type here validates in its constructor, so a value
//! that exists past the api layer is valid. Nothing here knows about gRPC or the database.

mod cidr;
mod client_id;
mod display_name;
mod expiry;
mod key_ring;
mod page;
mod personal_client;
mod principal;
mod rejection;
mod role;
mod search;
mod secret;
mod source;
mod token_key;

pub use cidr::CidrList;
pub use client_id::ClientId;
pub use display_name::DisplayName;
pub use expiry::MaxLifetime;
pub(crate) use expiry::round_to_micros;
pub use key_ring::{
    KeyLife, KeyRingChange, KeySchedule, KeyState, KeyTimeline, KeyTimes, MAX_TOKEN_TTL, NewSigningKey, delta,
};
pub use page::{Page, PageRequest, PageSize, PageToken};
pub use personal_client::{ClientChanges, NewPersonalClient, Owner, PersonalClient};
pub use principal::Principal;
pub use rejection::Rejection;
pub use role::{Role, RoleSet};
pub use search::SearchFilter;
pub use secret::ClientSecret;
pub use source::SourceAddress;
pub use token_key::{StoredKey, TokenKey};

/// Input quoted for an error message or a log line: escaped (no newline or terminal escape gets
/// through) and cut to 64 characters, so no caller can make a message or a log line long.
pub fn quote(input: &str) -> String {
    const MAX_CHARS: usize = 64;
    let chars = input.chars().count();
    if chars <= MAX_CHARS {
        return format!("{input:?}");
    }
    let head: String = input.chars().take(MAX_CHARS).collect();
    format!("{head:?}… ({chars} characters)")
}

/// One thing wrong with one field of a request, named by its path in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// What is wrong with one entry of a repeated field: `index` is `None` when the field as a
/// whole is wrong (too many entries, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryViolation {
    pub index: Option<usize>,
    pub description: String,
}

impl EntryViolation {
    fn at(index: usize, description: impl Into<String>) -> Self {
        Self { index: Some(index), description: description.into() }
    }

    fn whole(description: impl Into<String>) -> Self {
        Self { index: None, description: description.into() }
    }
}

/// Parses a repeated field: at most `max` entries as sent, each with `parse`, duplicates
/// dropped (the first kept). Names every bad entry by its index.
fn parse_entries<S: AsRef<str>, T: PartialEq>(
    entries: &[S],
    max: usize,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Vec<EntryViolation>> {
    if entries.len() > max {
        return Err(vec![EntryViolation::whole(format!("has {} entries; at most {max} are allowed", entries.len()))]);
    }
    let mut values: Vec<T> = Vec::with_capacity(entries.len());
    let mut violations = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match parse(entry.as_ref()) {
            Ok(value) if !values.contains(&value) => values.push(value),
            Ok(_) => {}
            Err(description) => violations.push(EntryViolation::at(index, description)),
        }
    }
    if violations.is_empty() { Ok(values) } else { Err(violations) }
}

/// Collects the violations of one request, so a caller hears of every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records the error of a scalar field, if any, and passes the value on.
    pub fn field<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(description) => {
                self.push(field, description);
                None
            }
        }
    }

    /// Records the errors of a repeated field as `field[index]`, and passes the value on.
    pub fn list<T>(&mut self, field: &str, result: Result<T, Vec<EntryViolation>>) -> Option<T> {
        self.list_of(field, "", result)
    }

    /// As [`Violations::list`] for repeated messages: `field[index]suffix` (`users[1].id`).
    pub fn list_of<T>(&mut self, field: &str, suffix: &str, result: Result<T, Vec<EntryViolation>>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(entries) => {
                for entry in entries {
                    let path = match entry.index {
                        Some(index) => format!("{field}[{index}]{suffix}"),
                        None => field.to_owned(),
                    };
                    self.push(&path, entry.description);
                }
                None
            }
        }
    }

    pub fn push(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.to_owned(), description: description.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }
}
