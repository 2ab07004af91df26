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

use std::borrow::Cow;

pub use cidr::CidrList;
pub use client_id::ClientId;
pub use display_name::DisplayName;
pub use expiry::MaxLifetime;
pub(crate) use expiry::round_to_micros;
pub use key_ring::{
    KeyLife, KeyRingChange, KeySchedule, KeyState, KeyTimeline, KeyTimes, MAX_TOKEN_TTL, NewSigningKey, delta,
};
pub use page::{Page, PageRequest, PageSize, PageToken};
pub use personal_client::{ClientChanges, NewPersonalClient, Owner, PersonalClient, expired};
pub use principal::Principal;
pub use rejection::Rejection;
pub use role::{Role, RoleSet};
pub use search::SearchFilter;
pub use secret::ClientSecret;
pub use source::{RequestOrigin, SourceAddress};
pub use token_key::{StoredKey, TokenKey};

/// The most characters of a caller's input that an answer or a log line repeats.
const ECHO_CHARS: usize = 64;

/// Input quoted for an error message or a log line: escaped (no newline or terminal escape gets
/// through) and cut to 64 characters, so no caller can make a message or a log line long.
pub fn quote(input: &str) -> String {
    let chars = input.chars().count();
    if chars <= ECHO_CHARS {
        return format!("{input:?}");
    }
    let head: String = input.chars().take(ECHO_CHARS).collect();
    format!("{head:?}… ({chars} characters)")
}

/// Input as a log field's value: cut to 64 characters as [`quote`] cuts it, and otherwise as it
/// came. The log format escapes it: the text format writes a string field quoted and escaped,
/// JSON escapes it as JSON strings are, so the value shipped is the plain text.
pub fn cut(input: &str) -> Cow<'_, str> {
    let chars = input.chars().count();
    if chars <= ECHO_CHARS {
        return Cow::Borrowed(input);
    }
    let head: String = input.chars().take(ECHO_CHARS).collect();
    Cow::Owned(format!("{head}… ({chars} characters)"))
}

/// Input repeated where it stands as a name, as in a field's path (`client.<name>`): escaped
/// and cut as [`quote`] does, without the quotes.
pub fn echo(input: &str) -> String {
    let quoted = quote(input);
    // `"head"`, or `"head"… (N characters)`: the suffix holds no quote.
    match quoted.strip_prefix('"').and_then(|rest| rest.rsplit_once('"')) {
        Some((head, suffix)) => format!("{head}{suffix}"),
        None => quoted,
    }
}

/// A library's error message, which may repeat input between double quotes or backticks
/// (serde's `invalid type: string "…"`), with each such run cut as [`quote`] cuts input.
pub fn cut_quoted(message: &str) -> String {
    let mut cut = String::with_capacity(message.len().min(512));
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let mark = if rest[open..].starts_with('"') { '"' } else { '`' };
        cut.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        let close = closing(inner, mark);
        let run = &inner[..close.unwrap_or(inner.len())];
        let chars = run.chars().count();
        if chars <= ECHO_CHARS {
            cut.push_str(run);
        } else {
            let head: String = run.chars().take(ECHO_CHARS).collect();
            // An escape cut in half would escape the closing quote.
            cut.push_str(head.trim_end_matches('\\'));
        }
        if close.is_some() {
            cut.push(mark);
        }
        if chars > ECHO_CHARS {
            cut.push_str(&format!("… ({chars} characters)"));
        }
        rest = close.map_or("", |at| &inner[at + 1..]);
    }
    cut.push_str(rest);
    cut
}

/// Where the run opened by `mark` ends in `text`: the next `mark` not escaped by a backslash
/// (double quotes only; a backtick has no escape).
fn closing(text: &str, mark: char) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if mark == '"' => escaped = true,
            c if c == mark => return Some(at),
            _ => {}
        }
    }
    None
}

/// Refuses text with a NUL byte where it names something stored (a client id, a user id): no
/// stored text holds one (PostgreSQL's cannot), so such a value is the caller's mistake, said
/// before any query is made with it.
pub fn refuse_nul(input: &str, what: &str) -> Result<(), String> {
    if input.contains('\0') { Err(format!("contains a NUL byte, which no {what} can contain")) } else { Ok(()) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_input_is_cut_to_the_same_length_everywhere() {
        let long = "x".repeat(50_000);
        assert_eq!(quote("a\nb"), r#""a\nb""#);
        assert_eq!(cut("a\nb"), "a\nb", "a log field is escaped by its format, not here");
        assert_eq!(cut(&"x".repeat(50_000)), format!("{}… (50000 characters)", "x".repeat(64)));
        assert_eq!(echo("a\nb"), r"a\nb");
        assert_eq!(echo(&long), format!("{}… (50000 characters)", "x".repeat(64)));
        assert_eq!(quote(&long), format!("\"{}\"… (50000 characters)", "x".repeat(64)));
        let message = format!("invalid type: string {long:?}, expected a list at line 1 column 9");
        assert_eq!(
            cut_quoted(&message),
            format!(
                "invalid type: string \"{}\"… (50000 characters), expected a list at line 1 column 9",
                "x".repeat(64)
            )
        );
        assert_eq!(cut_quoted(r#"string "a\"b", expected `x`"#), r#"string "a\"b", expected `x`"#);
        let escapes = format!("string {:?} here", "\n".repeat(100));
        assert_eq!(cut_quoted(&escapes), format!("string \"{}\"… (200 characters) here", r"\n".repeat(32)));
        assert_eq!(cut_quoted("unclosed \"abc"), "unclosed \"abc");
    }
}
