//! Paging: page sizes, and page tokens bound to the caller and the query.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::PersonalClient;

/// Rows per page: 0 means 50, more than 500 means 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u64);

impl PageSize {
    pub const DEFAULT: u64 = 50;
    pub const MAX: u64 = 500;

    pub fn parse(requested: i32) -> Result<Self, String> {
        match u64::try_from(requested) {
            Err(_) => Err(format!("is {requested}; use 0 for the default of {} or 1-{}", Self::DEFAULT, Self::MAX)),
            Ok(0) => Ok(Self(Self::DEFAULT)),
            Ok(size) => Ok(Self(size.min(Self::MAX))),
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// Where the next page starts: after the row with id `after`. A token is bound to the user that
/// listed and to the query, so it cannot be replayed against another listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    #[serde(rename = "u")]
    user: String,
    #[serde(rename = "q")]
    query: String,
    #[serde(rename = "a")]
    pub after: Uuid,
}

impl PageToken {
    /// The query a List page token is bound to.
    pub const LIST_QUERY: &str = "list";

    pub fn new(user: &str, query: &str, after: Uuid) -> Self {
        Self { user: user.to_owned(), query: query.to_owned(), after }
    }

    pub fn encode(&self) -> String {
        // Serialising plain strings and a UUID cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a token sent back by `user` for `query`; an empty token is the first page.
    pub fn decode(token: &str, user: &str, query: &str) -> Result<Option<Self>, String> {
        if token.is_empty() {
            return Ok(None);
        }
        let malformed = || "is not a page token this service issued; send next_page_token unchanged".to_owned();
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        let decoded: Self = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        if decoded.user != user || decoded.query != query {
            return Err("belongs to another listing; use it with the same caller and query that returned it".into());
        }
        Ok(Some(decoded))
    }
}

/// Which page a listing asks for, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub size: PageSize,
    /// The id of the last row of the previous page.
    pub after: Option<Uuid>,
}

impl PageRequest {
    /// How many rows to read: one more than the page holds, to learn whether another follows.
    pub fn rows_to_read(&self) -> u64 {
        self.size.get() + 1
    }
}

/// One page of a listing, and the token of the next one (empty on the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub clients: Vec<PersonalClient>,
    pub next_page_token: String,
}

impl Page {
    /// The page in `rows`, read with [`PageRequest::rows_to_read`]; the next page's token is
    /// bound to `user` and `query`.
    pub fn from_rows(mut rows: Vec<PersonalClient>, request: PageRequest, user: &str, query: &str) -> Self {
        let size = usize::try_from(request.size.get()).unwrap_or(usize::MAX);
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|last| PageToken::new(user, query, last.id).encode()).unwrap_or_default()
        } else {
            String::new()
        };
        Self { clients: rows, next_page_token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_rules() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 50);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(10_000).unwrap().get(), 500);
        assert!(PageSize::parse(-1).is_err());
    }

    #[test]
    fn tokens_are_bound_to_user_and_query() {
        let token = PageToken::new("alice", "list", Uuid::now_v7()).encode();
        assert!(PageToken::decode(&token, "alice", "list").unwrap().is_some());
        assert!(PageToken::decode(&token, "bob", "list").is_err());
        assert!(PageToken::decode(&token, "alice", "search:x").is_err());
        assert!(PageToken::decode("garbage!", "alice", "list").is_err());
        assert_eq!(PageToken::decode("", "alice", "list").unwrap(), None);
    }
}
