//! A page of one user's live clients from SQLite in one row: SQLite builds the page as one JSON
//! array, so it crosses from the connection's thread to the runtime in one hand-off, not one
//! per row, and each row is decoded from that text in one pass. A page whose text cannot be
//! read back exactly is read the ordinary way instead. (The same page from PostgreSQL with
//! `json_agg` cost the service a quarter less CPU but PostgreSQL more, and Lists a second fell:
//! PostgreSQL reads its pages the ordinary way.)

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use serde::Deserialize;
use uuid::Uuid;

use super::entity::personal_client::{Model, Networks, RoleNames};
use crate::{domain::PersonalClient, error::Error};

/// One row, as the statement below writes it: a JSON array of the columns in this order.
#[derive(Deserialize)]
struct Row {
    id: String,
    client_id: String,
    user_id: String,
    display_name: String,
    display_name_folded: String,
    allow_source_cidr: Networks,
    scoped_roles: RoleNames,
    owner_roles: RoleNames,
    public_key: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    created_at: String,
    updated_at: String,
    deleted_at: Option<String>,
}

/// Up to `limit` live clients of `user` with ids after `after`, in id order; `None` when a row
/// holds what this reading does not expect (the caller then reads the page the ordinary way).
pub(super) async fn live_page(
    db: &DatabaseConnection,
    user: &str,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Option<Vec<PersonalClient>>, Error> {
    let mut values = vec![Value::from(user.to_owned())];
    values.extend(after.map(Value::from));
    values.push(Value::from(i64::try_from(limit).unwrap_or(i64::MAX)));
    let statement = Statement::from_sql_and_values(DbBackend::Sqlite, page_sql(after.is_some()), values);
    let row = db.query_one_raw(statement).await?;
    let Some(text) = row.map(|row| row.try_get_by_index::<String>(0)).transpose()? else { return Ok(Some(Vec::new())) };
    let Ok(rows) = serde_json::from_str::<Vec<Row>>(&text) else { return Ok(None) };
    let mut models = match rows.into_iter().map(model).collect::<Option<Vec<Model>>>() {
        Some(models) => models,
        None => return Ok(None),
    };
    // An aggregate's order is not the subquery's by any promise of SQLite's.
    models.sort_unstable_by_key(|model| model.id);
    Ok(Some(models.into_iter().map(PersonalClient::try_from).collect::<Result<_, _>>()?))
}

/// The statement: the ordinary page's query (on the index of live rows by `(user_id, id)`)
/// inside an aggregate that writes each row as a JSON array of [`Row`]'s fields, in order.
fn page_sql(after: bool) -> String {
    format!(
        "SELECT json_group_array(json_array(lower(hex(id)), client_id, user_id, display_name, \
         display_name_folded, json(allow_source_cidr), json(scoped_roles), json(owner_roles), \
         lower(hex(public_key)), expires_at, last_used_at, created_at, updated_at, deleted_at)) \
         FROM (SELECT * FROM personal_clients WHERE user_id = ? AND deleted_at IS NULL{} ORDER BY id LIMIT ?)",
        if after { " AND id > ?" } else { "" }
    )
}

fn model(row: Row) -> Option<Model> {
    let time = |text: &str| DateTime::parse_from_rfc3339(text).ok().map(|at| at.with_timezone(&Utc));
    let maybe_time = |text: Option<String>| match text {
        None => Some(None),
        Some(text) => time(&text).map(Some),
    };
    Some(Model {
        id: Uuid::try_parse(&row.id).ok()?,
        client_id: row.client_id,
        user_id: row.user_id,
        display_name: row.display_name,
        display_name_folded: row.display_name_folded,
        allow_source_cidr: row.allow_source_cidr,
        scoped_roles: row.scoped_roles,
        owner_roles: row.owner_roles,
        public_key: from_hex(&row.public_key)?,
        expires_at: maybe_time(row.expires_at)?,
        last_used_at: maybe_time(row.last_used_at)?,
        created_at: time(&row.created_at)?,
        updated_at: time(&row.updated_at)?,
        deleted_at: maybe_time(row.deleted_at)?,
    })
}

/// Bytes from lower-case hex, as SQLite's `lower(hex(...))` writes them.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    text.as_bytes().chunks(2).map(|pair| Some(digit(*pair.first()?)? * 16 + digit(*pair.get(1)?)?)).collect()
}
