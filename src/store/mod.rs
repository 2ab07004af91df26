//! Storage of personal clients and signing keys with SeaORM, the same code on SQLite and
//! PostgreSQL. Every write is a single statement, so no write ever reads first and holds a
//! read lock it must later upgrade: a busy SQLite database answers "retry", never a deadlock.

pub mod entity;
pub mod migration;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, SqlErr, TransactionTrait,
    sea_query::{Expr, Func, LikeExpr, SimpleExpr},
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, MutexGuard};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    Error,
    domain::{ClientChanges, ClientId, Credential, NewPersonalClient, PersonalClient, SearchFilter},
};
use entity::{assertion_replay, personal_client, signing_key};
use migration::Migrator;

/// How many random client ids Create tries before giving up (a collision is already rare).
const CLIENT_ID_ATTEMPTS: usize = 8;

/// Key of the PostgreSQL advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x7063_6d69_6772; // "pcmigr"

/// Handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    /// Every write that must survive a power loss once answered: Create, Update, Delete.
    db: DatabaseConnection,
    /// The token exchange's bookkeeping (spent assertion ids, `last_used_at`), committed without
    /// waiting for an fsync: SQLite `synchronous=NORMAL` in WAL mode, PostgreSQL
    /// `synchronous_commit=off`. A crash may lose the last moments of it, never a revocation.
    relaxed: DatabaseConnection,
    /// SQLite has one writer at a time. Writers of this process queue here, in order, instead
    /// of polling the database's lock in SQLite's busy handler, whose sleeps grow to 100 ms.
    /// Other processes on the same file still wait in the busy handler.
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`). SQLite runs in WAL mode with
    /// `synchronous=FULL`, so an answered write survives a power loss.
    #[instrument(skip_all)]
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let db = Database::connect(pool_options(url, 16, SqliteSynchronous::Full, None)).await?;
        let relaxed =
            Database::connect(pool_options(url, 4, SqliteSynchronous::Normal, Some(("synchronous_commit", "off"))))
                .await?;
        let sqlite_writer = (db.get_database_backend() == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        Ok(Self { db, relaxed, sqlite_writer })
    }

    /// Brings the schema up to date. Replicas starting together take turns (see
    /// [`Store::exclusive`]).
    #[instrument(skip_all)]
    pub async fn migrate(&self) -> Result<(), Error> {
        let txn = self.exclusive().await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await?;
        Ok(())
    }

    /// A transaction that holds the database's write lock from its first statement, for work
    /// that replicas must do one at a time: PostgreSQL takes an advisory lock, SQLite writes to
    /// a lock table (which takes the RESERVED lock at once, waiting in the busy handler).
    async fn exclusive(&self) -> Result<DatabaseTransaction, Error> {
        let backend = self.db.get_database_backend();
        if backend == DbBackend::Sqlite {
            self.db.execute_unprepared("CREATE TABLE IF NOT EXISTS pc_migration_lock (held INTEGER)").await?;
        }
        let txn = self.db.begin().await?;
        let take_lock = match backend {
            DbBackend::Postgres => format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"),
            _ => "DELETE FROM pc_migration_lock".to_owned(),
        };
        txn.execute_unprepared(&take_lock).await?;
        Ok(txn)
    }

    /// Waits for this process's turn to write (SQLite only).
    async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(writer) => Some(writer.lock().await),
            None => None,
        }
    }

    /// Size and idle connections of the durable and the relaxed pool.
    pub fn pool_stats(&self) -> [(&'static str, PoolStats); 2] {
        [("durable", pool_stats(&self.db)), ("relaxed", pool_stats(&self.relaxed))]
    }

    /// Answers when the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await?;
        Ok(())
    }

    /// Stores a new credential under a fresh random client id.
    #[instrument(skip_all, fields(user_id = %new.user_id))]
    pub async fn create_client(&self, new: &NewPersonalClient, public_host: &str) -> Result<PersonalClient, Error> {
        let now = crate::domain::round_to_micros(Utc::now());
        for _ in 0..CLIENT_ID_ATTEMPTS {
            let row = personal_client::ActiveModel {
                id: Set(Uuid::now_v7()),
                client_id: Set(ClientId::generate(public_host).into_string()),
                user_id: Set(new.user_id.clone()),
                display_name: Set(new.display_name.as_str().to_owned()),
                allow_source_cidr: Set(to_json(&new.allow_source_cidr.to_strings())),
                scoped_roles: Set(to_json(&new.scoped_roles.to_strings())),
                owner_roles: Set(to_json(&new.owner_roles.to_strings())),
                public_key: Set(new.public_key.as_bytes().to_vec()),
                expires_at: Set(new.expires_at),
                last_used_at: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
                deleted_at: Set(None),
            };
            let inserted = {
                let _turn = self.write_turn().await;
                personal_client::Entity::insert(row).exec_with_returning(&self.db).await
            };
            match inserted {
                Ok(model) => return model.try_into(),
                Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Internal(format!("no free client id after {CLIENT_ID_ATTEMPTS} attempts")))
    }

    /// A live (not deleted) client; `owner` restricts the lookup to that user's clients.
    #[instrument(skip_all, fields(%id))]
    pub async fn get_client(&self, id: Uuid, owner: Option<&str>) -> Result<PersonalClient, Error> {
        personal_client::Entity::find_by_id(id)
            .filter(live(owner))
            .one(&self.db)
            .await?
            .ok_or(Error::NotFound)?
            .try_into()
    }

    /// Up to `limit` live clients of `user` with ids after `after`, oldest first.
    #[instrument(skip_all, fields(%user))]
    pub async fn list_clients(
        &self,
        user: &str,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        self.page_after(personal_client::Entity::find().filter(live(Some(user))), after, limit).await
    }

    /// Up to `limit` clients matching `filter` with ids after `after`, oldest first.
    #[instrument(skip_all)]
    pub async fn search_clients(
        &self,
        filter: &SearchFilter,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        use personal_client::Column;
        let mut query = personal_client::Entity::find();
        if !filter.include_deleted {
            query = query.filter(Column::DeletedAt.is_null());
        }
        if !filter.users.is_empty() {
            query = query.filter(Column::UserId.is_in(filter.users.iter().cloned()));
        }
        if let Some(text) = &filter.text {
            let escaped = escape_like(&text.to_lowercase());
            let lower = |column: Column| Expr::expr(Func::lower(Expr::col(column)));
            query = query.filter(
                Condition::any()
                    .add(lower(Column::DisplayName).like(LikeExpr::new(format!("%{escaped}%")).escape('\\')))
                    .add(lower(Column::ClientId).like(LikeExpr::new(format!("{escaped}%")).escape('\\'))),
            );
        }
        self.page_after(query, after, limit).await
    }

    /// Keyset paging: up to `limit` rows of `query` with ids after `after`, in id (creation)
    /// order.
    async fn page_after(
        &self,
        mut query: Select<personal_client::Entity>,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PersonalClient>, Error> {
        if let Some(after) = after {
            query = query.filter(personal_client::Column::Id.gt(after));
        }
        query
            .order_by_asc(personal_client::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(PersonalClient::try_from)
            .collect()
    }

    /// Applies `changes` to a live client of `owner` in one statement.
    #[instrument(skip_all, fields(%id))]
    pub async fn update_client(&self, id: Uuid, owner: &str, changes: &ClientChanges) -> Result<PersonalClient, Error> {
        use personal_client::Column;
        let mut update = personal_client::Entity::update_many()
            .col_expr(Column::UpdatedAt, Expr::value(crate::domain::round_to_micros(Utc::now())));
        if let Some(name) = &changes.display_name {
            update = update.col_expr(Column::DisplayName, Expr::value(name.as_str()));
        }
        if let Some(cidrs) = &changes.allow_source_cidr {
            update = update.col_expr(Column::AllowSourceCidr, Expr::value(to_json(&cidrs.to_strings())));
        }
        if let Some(roles) = &changes.scoped_roles {
            update = update.col_expr(Column::ScopedRoles, Expr::value(to_json(&roles.to_strings())));
        }
        if let Some(expires_at) = changes.expires_at {
            update = update.col_expr(Column::ExpiresAt, Expr::value(expires_at));
        }
        self.update_returning(update.filter(Column::Id.eq(id)).filter(live(Some(owner)))).await
    }

    /// Revokes a live client (of `owner`, when given) at once; returns it as it now is.
    #[instrument(skip_all, fields(%id))]
    pub async fn delete_client(&self, id: Uuid, owner: Option<&str>) -> Result<PersonalClient, Error> {
        use personal_client::Column;
        let now = crate::domain::round_to_micros(Utc::now());
        let update = personal_client::Entity::update_many()
            .col_expr(Column::DeletedAt, Expr::value(Some(now)))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.eq(id))
            .filter(live(owner));
        self.update_returning(update).await
    }

    /// Runs an update of at most one row as `UPDATE ... RETURNING *` (SQLite and PostgreSQL
    /// both have it), so the row comes back from the same statement that changed it.
    async fn update_returning(
        &self,
        update: sea_orm::UpdateMany<personal_client::Entity>,
    ) -> Result<PersonalClient, Error> {
        let mut statement = update.into_query();
        statement.returning_all();
        let statement = self.db.get_database_backend().build(&statement);
        let _turn = self.write_turn().await;
        personal_client::Entity::find().from_raw_sql(statement).one(&self.db).await?.ok_or(Error::NotFound)?.try_into()
    }

    /// The credential with OAuth2 client id `client_id`, deleted or not.
    #[instrument(skip_all)]
    pub async fn find_credential(&self, client_id: &str) -> Result<Option<Credential>, Error> {
        let Some(row) = personal_client::Entity::find()
            .filter(personal_client::Column::ClientId.eq(client_id))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let key: [u8; 32] = row
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| Error::Internal(format!("public key of {} is not 32 bytes", row.id)))?;
        let public_key = VerifyingKey::from_bytes(&key)
            .map_err(|_| Error::Internal(format!("public key of {} is not an Ed25519 point", row.id)))?;
        let owner_roles = from_json("owner_roles", &row.owner_roles)?;
        Ok(Some(Credential { client: row.try_into()?, public_key, owner_roles }))
    }

    /// Marks an assertion's one-time value as used; `false` when it already was, by this
    /// replica or any other.
    #[instrument(skip_all, fields(%client_pk))]
    pub async fn spend_one_time_value(
        &self,
        client_pk: Uuid,
        value: &str,
        spent_until: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let row = assertion_replay::ActiveModel {
            client_pk: Set(client_pk),
            one_time_value: Set(value.to_owned()),
            spent_until: Set(spent_until),
        };
        let _turn = self.write_turn().await;
        match assertion_replay::Entity::insert(row).exec_without_returning(&self.relaxed).await {
            Ok(_) => Ok(true),
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Forgets one-time values whose assertions have expired; returns how many.
    #[instrument(skip_all)]
    pub async fn purge_spent_values(&self, now: DateTime<Utc>) -> Result<u64, Error> {
        let _turn = self.write_turn().await;
        let result = assertion_replay::Entity::delete_many()
            .filter(assertion_replay::Column::SpentUntil.lt(now))
            .exec(&self.relaxed)
            .await?;
        Ok(result.rows_affected)
    }

    /// Records the last use of several clients in one transaction. `last_used_at` only moves
    /// forward, whichever replica flushes last.
    #[instrument(skip_all, fields(clients = uses.len()))]
    pub async fn record_last_used(&self, uses: &[(Uuid, DateTime<Utc>)]) -> Result<(), Error> {
        use personal_client::Column;
        let _turn = self.write_turn().await;
        let txn = self.relaxed.begin().await?;
        for (id, at) in uses {
            personal_client::Entity::update_many()
                .col_expr(Column::LastUsedAt, Expr::value(Some(*at)))
                .filter(Column::Id.eq(*id))
                .filter(Column::LastUsedAt.is_null().or(Column::LastUsedAt.lt(*at)))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Every signing key, oldest first.
    #[instrument(skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<signing_key::Model>, Error> {
        Ok(signing_key::Entity::find().order_by_asc(signing_key::Column::Kid).all(&self.db).await?)
    }

    /// Stores `make()` as the first signing key unless there is one already; replicas starting
    /// together agree on one key.
    #[instrument(skip_all)]
    pub async fn ensure_signing_key(&self, make: impl FnOnce() -> (String, Vec<u8>)) -> Result<bool, Error> {
        let _turn = self.write_turn().await;
        let txn = self.exclusive().await?;
        if signing_key::Entity::find().one(&txn).await?.is_some() {
            txn.commit().await?;
            return Ok(false);
        }
        let (kid, private_key) = make();
        let row = signing_key::ActiveModel {
            kid: Set(kid),
            private_key: Set(private_key),
            created_at: Set(crate::domain::round_to_micros(Utc::now())),
        };
        signing_key::Entity::insert(row).exec_without_returning(&txn).await?;
        txn.commit().await?;
        Ok(true)
    }
}

/// Connections of one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

fn pool_stats(db: &DatabaseConnection) -> PoolStats {
    match db {
        DatabaseConnection::SqlxPostgresPoolConnection(_) => {
            let pool = db.get_postgres_connection_pool();
            PoolStats { size: pool.size(), idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX) }
        }
        DatabaseConnection::SqlxSqlitePoolConnection(_) => {
            let pool = db.get_sqlite_connection_pool();
            PoolStats { size: pool.size(), idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX) }
        }
        _ => PoolStats::default(),
    }
}

fn pool_options(
    url: &str,
    max_connections: u32,
    sqlite_synchronous: SqliteSynchronous,
    postgres_setting: Option<(&'static str, &'static str)>,
) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(sqlite_synchronous)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        })
        .map_sqlx_postgres_opts(move |opts| match postgres_setting {
            Some(setting) => opts.options([setting]),
            None => opts,
        });
    options
}

/// Not deleted, and (when `owner` is given) belonging to that user.
fn live(owner: Option<&str>) -> SimpleExpr {
    let not_deleted = personal_client::Column::DeletedAt.is_null();
    match owner {
        Some(user) => not_deleted.and(personal_client::Column::UserId.eq(user)),
        None => not_deleted,
    }
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

fn to_json(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

fn from_json(column: &str, text: &str) -> Result<Vec<String>, Error> {
    serde_json::from_str(text).map_err(|e| Error::Internal(format!("column {column} holds malformed JSON: {e}")))
}

impl TryFrom<personal_client::Model> for PersonalClient {
    type Error = Error;

    fn try_from(row: personal_client::Model) -> Result<Self, Error> {
        Ok(Self {
            allow_source_cidr: from_json("allow_source_cidr", &row.allow_source_cidr)?,
            scoped_roles: from_json("scoped_roles", &row.scoped_roles)?,
            id: row.id,
            client_id: row.client_id,
            user_id: row.user_id,
            display_name: row.display_name,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted_at: row.deleted_at,
        })
    }
}
