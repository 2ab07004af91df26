//! Search across users, and how each database is led to the way that reads fewest rows.
//!
//! A Search with text matches the clients whose folded display name holds the text, or whose
//! client id in lower case starts with it. There are three ways to find them (migration 5 made
//! the indexes):
//! - the table in id order, keeping matching rows until the page is full: quick when many rows
//!   match, a read of the whole table when none do;
//! - the trigram index of the names and the index of `lower(client_id)`, their rows then sorted
//!   by id: quick when few rows match, however large the table;
//! - the `(user_id, id)` indexes, when the Search names its users: a user holds few clients, and
//!   the text is checked on theirs only.
//!
//! PostgreSQL's planner chooses from its statistics, each Search planned for its own values (see
//! [`Store::open_with_searches`]). SQLite's planner knows nothing of how many rows an FTS5 match
//! yields, so the store counts them first (see [`SqliteCandidates::worth_reading`]). Either way a
//! text that many clients hold is read in id order, which is slow only if those clients were all
//! created together, long after the page's start.
//!
//! A trigram index cannot serve a text of one or two characters: such a Search reads in id order
//! until its page is full, as every Search with text did before the indexes.

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, ExprTrait, QueryFilter,
    Statement, Value,
    sea_query::{Expr, Func, LikeExpr, SimpleExpr, extension::postgres::PgExpr},
};
use tracing::{Instrument, instrument};
use uuid::Uuid;

use super::{
    Store,
    clients::{not_revoked, page_after},
    entity::personal_client::{self, Column},
};
use crate::{
    domain::{PersonalClient, SearchFilter},
    error::Error,
};

/// On SQLite, the most candidates a Search with text reads through the trigram index; with more
/// it reads the table in id order. Reading and sorting 10,000 candidates takes about 15 ms at a
/// million clients; a text held by more than 1% of them fills a page of 50 within a few thousand
/// rows read in id order, if its holders are spread over time.
const SQLITE_INDEX_CANDIDATES: u64 = 10_000;

impl Store {
    /// Up to `limit` clients matching `filter` with ids after `after`, oldest first.
    ///
    /// Runs on the search pool, at most as many at once as it has connections; the others wait
    /// their turn, as long as their request may run.
    #[instrument(skip_all)]
    pub async fn search_clients(
        &self,
        filter: &SearchFilter,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        let span = self.statement("SELECT", "personal_clients").span();
        self.search_page(filter, after, limit).instrument(span).await
    }

    /// [`Self::search_clients`], in its statement's span: the wait for a turn included.
    async fn search_page(
        &self,
        filter: &SearchFilter,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        let (_turn, db) = self.search_turn().await?;
        let mut query = personal_client::Entity::find();
        if !filter.include_deleted {
            query = query.filter(not_revoked());
        }
        if !filter.users.is_empty() {
            query = query.filter(Column::UserId.is_in(filter.users.iter().cloned()));
        }
        if let Some(text) = filter.folded_text() {
            let text = SearchText(text);
            let backend = db.get_database_backend();
            // With users named, their index is the short way: a user holds few clients.
            let name_index = filter.users.is_empty()
                && text.has_trigrams()
                && (backend != DbBackend::Postgres || text.pg_trgm_draws_trigrams(db).await?);
            query = query.filter(text.matches(backend, name_index));
            if backend == DbBackend::Sqlite
                && name_index
                && text.count_sqlite_candidates(db).await?.worth_reading(limit)
            {
                query = query.filter(text.sqlite_candidates());
            }
        }
        page_after(db, query, after, limit).await
    }
}

/// The text of a Search, folded as the names it is compared with are.
struct SearchText(String);

/// SQLite: how many rows the indexes offer a Search's text, and how many the table has.
#[derive(Debug, Clone, Copy)]
struct SqliteCandidates {
    /// Counted up to one past [`SQLITE_INDEX_CANDIDATES`].
    offered: u64,
    /// The largest rowid: the table's rows, or a few more.
    table_rows: u64,
}

impl SqliteCandidates {
    /// Whether to read the candidates rather than the table in id order, for a page of `limit`
    /// rows: when they are at most [`SQLITE_INDEX_CANDIDATES`], unless they are more than four
    /// pages and an eighth of the table, whose page then fills within some `8 * limit` rows
    /// read in id order.
    fn worth_reading(self, limit: u64) -> bool {
        self.offered <= SQLITE_INDEX_CANDIDATES && (self.offered <= 4 * limit || self.offered <= self.table_rows / 8)
    }
}

/// The rows of the FTS5 table of folded names that hold a phrase.
const SQLITE_NAME_CANDIDATES: &str = "SELECT rowid FROM personal_clients_fts WHERE personal_clients_fts MATCH ?";

impl SearchText {
    /// Whether a trigram index can serve the text: it has three characters or more.
    fn has_trigrams(&self) -> bool {
        self.0.chars().nth(2).is_some()
    }

    /// What every match meets: the folded display name holds the text (its `%`, `_` and `\`
    /// literal), or the client id in lower case starts with it. Names are compared in the form
    /// Rust folded them to, since neither database's `lower` folds beyond ASCII alike; client ids
    /// are ASCII, which `lower` folds the same on both.
    ///
    /// On PostgreSQL the trigram index is offered the name's `LIKE` only with `name_index`;
    /// otherwise the `LIKE` is on `display_name_folded || ''`, the same text, which no index
    /// holds. A `LIKE` without trigrams makes the index return every row to be checked again,
    /// slower than reading the table; and with users named, the planner would join the index to
    /// theirs, underestimating what a common trigram costs to read. It foresees neither.
    fn matches(&self, backend: DbBackend, name_index: bool) -> Condition {
        let escaped = escape_like(&self.0);
        let pattern = LikeExpr::new(format!("%{escaped}%")).escape('\\');
        let name = if backend == DbBackend::Postgres && !name_index {
            Expr::col(Column::DisplayNameFolded).concat("").like(pattern)
        } else {
            Column::DisplayNameFolded.like(pattern)
        };
        let client_id = Expr::expr(Func::lower(Expr::col(Column::ClientId)));
        Condition::any().add(name).add(client_id.like(LikeExpr::new(format!("{escaped}%")).escape('\\')))
    }

    /// PostgreSQL: whether pg_trgm draws a trigram from the text's `LIKE` pattern. Which
    /// characters beyond ASCII are letters or digits is the database's locale's to say: a text
    /// with such characters asks it, in one statement.
    async fn pg_trgm_draws_trigrams(&self, db: &DatabaseConnection) -> Result<bool, Error> {
        let letters_and_digits: Option<Vec<bool>> = if self.0.is_ascii() {
            None
        } else {
            // PostgreSQL's regular expressions class characters as pg_trgm does, by the locale.
            let sql = "SELECT string_agg(CASE WHEN c ~ '^[[:alnum:]]$' THEN 'w' ELSE '-' END, '' ORDER BY n) \
                       FROM unnest(string_to_array($1, NULL)) WITH ORDINALITY AS t (c, n)";
            let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, [Value::from(self.0.clone())]);
            let row = db.query_one_raw(statement).await?;
            let classes: String =
                row.ok_or_else(|| Error::internal("classing characters returned no row"))?.try_get_by_index(0)?;
            Some(classes.chars().map(|class| class == 'w').collect())
        };
        Ok(pg_trgm_extracts_trigrams(&self.0, |i, c| {
            if c.is_ascii() { Some(c.is_ascii_alphanumeric()) } else { letters_and_digits.as_ref()?.get(i).copied() }
        }))
    }

    /// SQLite: only rows the trigram index or the client id index offer. [`SearchText::matches`]
    /// still decides which of them match.
    fn sqlite_candidates(&self) -> SimpleExpr {
        let (client_ids, bounds) = self.sqlite_client_id_candidates();
        let values = std::iter::once(self.fts5_phrase()).chain(bounds);
        Expr::cust_with_values(
            format!("personal_clients.rowid IN ({SQLITE_NAME_CANDIDATES} UNION ALL {client_ids})"),
            values,
        )
    }

    /// SQLite: how many candidates [`SearchText::sqlite_candidates`] offers, whether they match
    /// the rest of the Search or not, and how many rows the table has, in one statement.
    async fn count_sqlite_candidates(&self, db: &DatabaseConnection) -> Result<SqliteCandidates, Error> {
        let (client_ids, bounds) = self.sqlite_client_id_candidates();
        let sql = format!(
            "SELECT (SELECT count(*) FROM ({SQLITE_NAME_CANDIDATES} LIMIT ?)) \
                  + (SELECT count(*) FROM ({client_ids} LIMIT ?)), \
                  (SELECT coalesce(max(rowid), 0) FROM personal_clients)"
        );
        let enough = Value::from(SQLITE_INDEX_CANDIDATES + 1);
        let mut values = vec![self.fts5_phrase(), enough.clone()];
        values.extend(bounds);
        values.push(enough);
        let row = db.query_one_raw(Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)).await?;
        let row = row.ok_or_else(|| Error::internal("counting search candidates returned no row"))?;
        let count = |column| row.try_get_by_index::<i64>(column).map(|n| u64::try_from(n).unwrap_or_default());
        Ok(SqliteCandidates { offered: count(0)?, table_rows: count(1)? })
    }

    /// The text as an FTS5 phrase. With the trigram tokenizer a phrase is the sequence of its
    /// trigrams, so it matches the names that hold the text.
    fn fts5_phrase(&self) -> Value {
        Value::from(format!("\"{}\"", self.0.replace('"', "\"\"")))
    }

    /// SQLite: the rows whose `lower(client_id)` starts with the text, as a range of its index
    /// (SQLite turns no `LIKE` on an expression into one), and the range's bounds.
    fn sqlite_client_id_candidates(&self) -> (String, Vec<Value>) {
        let mut sql = "SELECT rowid FROM personal_clients WHERE lower(client_id) >= ?".to_owned();
        let mut bounds = vec![Value::from(self.0.clone())];
        if let Some(above) = prefix_successor(&self.0) {
            sql.push_str(" AND lower(client_id) < ?");
            bounds.push(Value::from(above));
        }
        (sql, bounds)
    }
}

/// The least string above every string that starts with `prefix`, in code point order (as both
/// databases' indexes here order them), if there is one.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Whether pg_trgm draws a trigram from `LIKE '%text%'`, given which of its characters (by
/// position) are letters or digits: `word` says yes, no, or `None` for not known.
///
/// pg_trgm splits the pattern into words of letters and digits, and pads a word with blanks where
/// it meets another character (two before, one after), but not where it meets the pattern's `%`.
/// A word yields trigrams when, padded, it is three characters long. A word next to a character
/// not known to be a letter or digit or not is counted without padding on that side: this may
/// say no where pg_trgm finds a trigram, never the other way round.
fn pg_trgm_extracts_trigrams(text: &str, word: impl Fn(usize, char) -> Option<bool>) -> bool {
    let words: Vec<Option<bool>> = text.chars().enumerate().map(|(i, c)| word(i, c)).collect();
    let separator = |i: usize| words.get(i).copied().flatten() == Some(false);
    let mut start = 0;
    while start < words.len() {
        if words[start] != Some(true) {
            start += 1;
            continue;
        }
        let end = (start..words.len()).find(|&i| words[i] != Some(true)).unwrap_or(words.len());
        let before = if start > 0 && separator(start - 1) { 2 } else { 0 };
        let after = if separator(end) { 1 } else { 0 };
        if end - start + before + after >= 3 {
            return true;
        }
        start = end;
    }
    false
}

/// `text` as a literal inside a LIKE pattern with `\` as the escape character.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_successor_is_above_every_string_with_the_prefix() {
        assert_eq!(prefix_successor("brave-o").as_deref(), Some("brave-p"));
        assert_eq!(prefix_successor("az").as_deref(), Some("a{"));
        assert_eq!(prefix_successor("a\u{d7ff}").as_deref(), Some("a\u{e000}"), "surrogates are no characters");
        assert_eq!(prefix_successor("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10ffff}"), None);
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn pg_trgm_trigrams_are_foreseen_only_where_surely_drawn() {
        // ASCII letters and digits are known; other characters are not, unless the locale says.
        let ascii = |_, c: char| c.is_ascii().then(|| c.is_ascii_alphanumeric());
        for text in ["zebra", "abc", "a b", "ab-", "ab ", "x-y", "-a", "a_b", "a\\%b", "é-a", "é-ab", "οδοσ abc"]
        {
            assert!(pg_trgm_extracts_trigrams(text, ascii), "{text:?}");
        }
        // One or two letters at the pattern's edges, or next to characters the locale classes.
        for text in ["a", "ab", "a-", "a%", "%%%", "---", "a..", "οδοσ", "éab", "abé", "éa", "-é-"] {
            assert!(!pg_trgm_extracts_trigrams(text, ascii), "{text:?}");
        }
        let greek_letters = |_, c: char| Some(c.is_alphanumeric());
        assert!(pg_trgm_extracts_trigrams("οδοσ", greek_letters));
        assert!(pg_trgm_extracts_trigrams("éab", greek_letters));
        assert!(!pg_trgm_extracts_trigrams("οδ", greek_letters));
        assert!(!pg_trgm_extracts_trigrams("-·-", greek_letters));
    }

    #[test]
    fn sqlite_reads_candidates_unless_they_are_too_many_or_the_table_is_full_of_them() {
        let candidates = |offered, table_rows| SqliteCandidates { offered, table_rows };
        assert!(candidates(10, 1_000_000).worth_reading(51));
        assert!(candidates(10_000, 1_000_000).worth_reading(51));
        assert!(!candidates(10_001, 1_000_000).worth_reading(51), "too many to read and sort");
        assert!(!candidates(1_000, 1_000).worth_reading(51), "every row holds the text");
        assert!(!candidates(300, 1_000).worth_reading(51));
        assert!(candidates(300, 10_000).worth_reading(51));
        assert!(candidates(200, 200).worth_reading(51), "no more than four pages");
    }

    #[test]
    fn phrases_quote_their_quotes() {
        assert_eq!(SearchText("say \"hi\"".into()).fts5_phrase(), Value::from("\"say \"\"hi\"\"\""));
    }
}
