//! Storage with SeaORM, the same code on SQLite and PostgreSQL: the connection and the work
//! replicas must do one at a time here, one file per aggregate beside it (`clients`, with its
//! `search`; `replay`, `keys`, `usage`), each returning domain types.
//!
//! Writes are single statements wherever they can be, so no write reads first and holds a read
//! lock it must later upgrade: a busy SQLite database answers "retry", never a deadlock. Work
//! that must read first takes the write lock up front ([`Store::exclusive`]).

mod batch;
mod clients;
mod database_url;
pub mod entity;
mod keys;
pub mod migration;
mod replay;
mod search;
mod sqlite_page;
mod usage;
mod wal_index;

pub use clients::{ClientEpoch, Precondition};
pub use database_url::DatabaseUrl;
pub use usage::LAST_USED_CHUNK;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
    sqlx::{
        Connection,
        postgres::PgConnection,
        sqlite::{SqliteJournalMode, SqliteSynchronous},
    },
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};
use tracing::instrument;

use crate::{
    domain::PersonalClient,
    error::Error,
    error::{chain, is_sqlite_busy},
};
use batch::{Batcher, Statement};
use migration::Migrator;

/// Key of the PostgreSQL advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x7063_6d69_6772; // "pcmigr"

/// How long opening the database may keep retrying a busy SQLite file (another process
/// switching a new file to WAL mode holds a lock that SQLite's busy handler does not wait on).
const OPEN_RETRY_FOR: Duration = Duration::from_secs(10);

/// Searches that may run at once unless `--max-concurrent-searches` says otherwise: half the
/// cores, at least one. A Search of a text many names share keeps a core busy for milliseconds;
/// with more of them at once, Get and the token exchange lost over half their throughput in
/// `bench` at a million clients, with one at a time about a quarter.
fn default_concurrent_searches() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    u32::try_from(cores / 2).unwrap_or(u32::MAX).max(1)
}

/// Whether opening may create the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// A SQLite file that does not exist yet is created (`serve`, `migrate`).
    CreateIfMissing,
    /// The database must exist already (`mint-token`: a token for a database no server uses
    /// would be refused by every server).
    MustExist,
}

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
    batches: Arc<Batches>,
    /// SQLite: the clients' epoch as last read, kept while nothing commits.
    known_epoch: Option<Arc<wal_index::KnownEpoch>>,
    /// Search, which may read many rows, has a pool of its own, so the admins who search cannot
    /// hold the connections every other call needs.
    searches: Searches,
}

/// Search's connections, and turns to use them: one turn per connection, so a Search waits
/// here, for as long as its request may run, and never in the pool (which gives up after 5 s).
#[derive(Debug, Clone)]
struct Searches {
    db: DatabaseConnection,
    turns: Arc<Semaphore>,
}

/// The statements of the hot paths, each run for many concurrent callers at once (see
/// [`batch`]).
#[derive(Debug)]
struct Batches {
    by_id: Batcher<clients::Visible, Option<PersonalClient>>,
    by_client_id: Batcher<String, Option<PersonalClient>>,
    epoch: Batcher<(), clients::ClientEpoch>,
    spend: Batcher<replay::OneTimeValue, bool>,
    create: Batcher<clients::NewRow, Option<PersonalClient>>,
}

/// Most calls one batch serves.
const MAX_BATCH: usize = 64;

/// Most callers one read of the clients' epoch answers: as many as may wait.
const MAX_EPOCH_BATCH: usize = 4096;

/// Prepared statements a SQLite connection keeps: the hot statements at the batch sizes that
/// come most often.
const SQLITE_PREPARED_STATEMENTS: usize = 24;

/// Rows a SQLite connection's thread may hand over before the reader takes them: more than a
/// batch or the largest page.
const ROW_CHANNEL: usize = 512;

impl Store {
    /// Opens `url` (`sqlite://...` or `postgres://...`). SQLite runs in WAL mode with
    /// `synchronous=FULL`, so an answered write survives a power loss. The error says which
    /// database could not be opened, why, and what to check.
    pub async fn open(url: &DatabaseUrl, mode: OpenMode) -> Result<Self, Error> {
        Self::open_with_searches(url, mode, None).await
    }

    /// [`Store::open`], with at most `max_concurrent_searches` Searches running at once (by
    /// default: half the cores, at least one).
    #[instrument(skip_all)]
    pub async fn open_with_searches(
        url: &DatabaseUrl,
        mode: OpenMode,
        max_concurrent_searches: Option<u32>,
    ) -> Result<Self, Error> {
        if let Some(path) = url.sqlite_path() {
            protect_sqlite_file(Path::new(path), mode)?;
        }
        // SQLite: every statement is work for this process's cores, and one writer at a time;
        // connections beyond the batches' slots and a few others only add thread switches.
        // PostgreSQL: two batches in flight keep the server busy while the next ones fill; the
        // pool's other connections serve List, Update, Delete and the rest.
        let (pool, relaxed_pool, read_slots, write_slots) = if url.is_sqlite() { (6, 1, 2, 1) } else { (16, 4, 2, 2) };
        let db = connect(url, mode, pool, SqliteSynchronous::Full, &[]).await?;
        let relaxed =
            connect(url, mode, relaxed_pool, SqliteSynchronous::Normal, &[("synchronous_commit", "off")]).await?;
        let backend = db.get_database_backend();
        let sqlite_writer = (backend == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let concurrent_searches = max_concurrent_searches.unwrap_or_else(default_concurrent_searches).max(1);
        // PostgreSQL plans each Search for its own text and page: a prepared statement's generic
        // plan, which it would switch to after five runs, cannot tell a name held by three clients
        // from one held by a million, and would read the table in id order for both.
        let custom_plans = &[("plan_cache_mode", "force_custom_plan")];
        let searches = Searches {
            db: connect(url, mode, concurrent_searches, SqliteSynchronous::Full, custom_plans).await?,
            turns: Arc::new(Semaphore::new(concurrent_searches as usize)),
        };
        let batches = Arc::new(Batches::start(&db, &relaxed, sqlite_writer.as_ref(), read_slots, write_slots));
        let known_epoch = wal_index::KnownEpoch::open(&db).await.map(Arc::new);
        Ok(Self { db, relaxed, sqlite_writer, batches, known_epoch, searches })
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

    /// Whether the schema is fully migrated: a database that is not is refused by the commands
    /// that do not migrate.
    pub async fn is_migrated(&self) -> Result<bool, Error> {
        Ok(Migrator::get_pending_migrations_read_only(&self.db).await?.is_empty())
    }

    /// The database of a server or `migrate`, for the commands that only use one: refused when
    /// it does not exist or its schema is not up to date.
    pub async fn open_set_up(database: &DatabaseUrl) -> Result<Self, Error> {
        let store = Self::open(database, OpenMode::MustExist).await?;
        if !store.is_migrated().await? {
            return Err(Error::internal(format!(
                "the database {database} is not set up: run `personal-clients migrate` (or start the server) with this --database-url first"
            )));
        }
        Ok(store)
    }

    /// A transaction that holds the database's write lock from its first statement, for work
    /// that replicas must do one at a time: SQLite `BEGIN IMMEDIATE` (waiting in the busy
    /// handler), PostgreSQL a transaction-scoped advisory lock.
    async fn exclusive(&self) -> Result<DatabaseTransaction, Error> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let txn = self.db.begin().await?;
                // Migrations may run long and replicas wait their turn: the session's
                // statement and lock bounds do not apply here.
                txn.execute_unprepared("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0").await?;
                txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await?;
                Ok(txn)
            }
            _ => Ok(begin_immediate(&self.db).await?),
        }
    }

    /// Waits for this process's turn to write (SQLite only).
    async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        write_turn(self.sqlite_writer.as_ref()).await
    }

    /// A statement this call runs, for its span.
    fn statement(&self, operation: &'static str, collection: &'static str) -> Statement {
        Statement { system: system_name(&self.db), operation, collection }
    }

    /// Waits for a turn to search, and gives the connection to search on.
    async fn search_turn(&self) -> Result<(SemaphorePermit<'_>, &DatabaseConnection), Error> {
        let turn = self.searches.turns.acquire().await.map_err(|_| Error::internal("the search turns are closed"))?;
        Ok((turn, &self.searches.db))
    }

    /// Size and idle connections of the durable, relaxed and search pools.
    pub fn pool_stats(&self) -> [(&'static str, PoolStats); 3] {
        [
            ("durable", pool_stats(&self.db)),
            ("relaxed", pool_stats(&self.relaxed)),
            ("search", pool_stats(&self.searches.db)),
        ]
    }

    /// Answers when the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await?;
        Ok(())
    }
}

/// A transaction that on SQLite holds the write lock from its first statement (`BEGIN
/// IMMEDIATE`, waiting in the busy handler), so nothing it reads must later be upgraded to a
/// write; on PostgreSQL, whose writes lock rows, a plain transaction.
async fn begin_immediate(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let immediate = TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    };
    db.begin_with_options(immediate).await
}

/// Waits for this process's turn to write on `writer`'s SQLite file; no wait on PostgreSQL.
async fn write_turn(writer: Option<&Arc<Mutex<()>>>) -> Option<MutexGuard<'_, ()>> {
    match writer {
        Some(writer) => Some(writer.lock().await),
        None => None,
    }
}

/// The database as OpenTelemetry names it.
fn system_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Postgres => "postgresql",
        _ => "sqlite",
    }
}

impl Batches {
    /// Starts the batchers: reads with `read_slots` batches at once, writes with `write_slots`.
    fn start(
        db: &DatabaseConnection,
        relaxed: &DatabaseConnection,
        writer: Option<&Arc<Mutex<()>>>,
        read_slots: usize,
        write_slots: usize,
    ) -> Self {
        let system = system_name(db);
        let statement = |operation, collection| Statement { system, operation, collection };
        let by_id = {
            let db = db.clone();
            let run = move |ids| Box::pin(clients::clients_by_id(db.clone(), ids)) as _;
            Batcher::spawn(MAX_BATCH, read_slots, statement("SELECT", "personal_clients"), Arc::new(run))
        };
        let by_client_id = {
            let db = db.clone();
            let run = move |ids| Box::pin(clients::clients_by_client_id(db.clone(), ids)) as _;
            Batcher::spawn(MAX_BATCH, read_slots, statement("SELECT", "personal_clients"), Arc::new(run))
        };
        // One read of the epoch at a time: it is one number, so every caller that arrives while
        // it is read waits for the next read, which answers them all in one round trip.
        let epoch = {
            let db = db.clone();
            let run = move |callers| Box::pin(clients::client_epoch(db.clone(), callers)) as _;
            Batcher::spawn(MAX_EPOCH_BATCH, 1, statement("SELECT", "client_epoch"), Arc::new(run))
        };
        let create = {
            let (db, writer) = (db.clone(), writer.cloned());
            let run = move |rows| Box::pin(clients::insert_clients(db.clone(), writer.clone(), rows)) as _;
            Batcher::spawn(MAX_BATCH, write_slots, statement("INSERT", "personal_clients"), Arc::new(run))
        };
        let spend = {
            let (relaxed, writer) = (relaxed.clone(), writer.cloned());
            let run = move |values| Box::pin(replay::spend_values(relaxed.clone(), writer.clone(), values)) as _;
            Batcher::spawn(MAX_BATCH, write_slots, statement("INSERT", "assertion_replays"), Arc::new(run))
        };
        Self { by_id, by_client_id, epoch, spend, create }
    }
}

/// The SQLite file holds the keys that sign access tokens: it is created readable by its owner
/// alone (SQLite gives its `-wal` and `-shm` files the same mode), and a file that others may
/// read is reported.
#[cfg(unix)]
fn protect_sqlite_file(path: &Path, mode: OpenMode) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if mode == OpenMode::CreateIfMissing && !path.exists() {
        // An empty file is an empty database. Another process creating it first is fine.
        let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
        match created {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            // SQLite's own attempt will say what is wrong, with the path and a hint.
            Err(_) => return Ok(()),
        }
    }
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "the database holds the token signing keys and other users may read it; chmod 600 it (and its -wal and -shm files)"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn protect_sqlite_file(_path: &Path, _mode: OpenMode) -> Result<(), Error> {
    Ok(())
}

/// Connections of one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

fn pool_stats(db: &DatabaseConnection) -> PoolStats {
    let (size, idle) = match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => return PoolStats::default(),
    };
    PoolStats { size, idle: u32::try_from(idle).unwrap_or(u32::MAX) }
}

/// Bounds PostgreSQL itself enforces on every session, so no statement or forgotten
/// transaction holds a connection and its locks for long: no statement this service sends takes
/// more than milliseconds. A server that stops answering altogether is bounded by the
/// request timeout instead.
const POSTGRES_LIMITS: [(&str, &str); 3] =
    [("statement_timeout", "10s"), ("lock_timeout", "5s"), ("idle_in_transaction_session_timeout", "30s")];

async fn connect(
    url: &DatabaseUrl,
    mode: OpenMode,
    max_connections: u32,
    sqlite_synchronous: SqliteSynchronous,
    postgres_settings: &'static [(&'static str, &'static str)],
) -> Result<DatabaseConnection, Error> {
    let mut options = ConnectOptions::new(url.expose());
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
                // A whole page (or batch) of rows fits, so the connection's thread never stops
                // mid-query to wait for the reader to take rows.
                .row_buffer_size(ROW_CHANNEL)
                // Each batch size is a statement of its own, and a prepared statement for 64
                // callers is large: sqlx's 100 a connection held 20 MB at a million clients.
                .statement_cache_capacity(SQLITE_PREPARED_STATEMENTS)
                .create_if_missing(mode == OpenMode::CreateIfMissing)
        })
        .map_sqlx_postgres_opts(move |opts| opts.options(POSTGRES_LIMITS.iter().chain(postgres_settings).copied()));
    let started = Instant::now();
    loop {
        match Database::connect(options.clone()).await {
            Ok(db) => return Ok(db),
            Err(err) if url.is_sqlite() && is_sqlite_busy(&err) && started.elapsed() < OPEN_RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(err) => return Err(open_error(url, mode, err).await),
        }
    }
}

/// Why a database could not be opened, where, and what to do about it.
async fn open_error(url: &DatabaseUrl, mode: OpenMode, err: DbErr) -> Error {
    if let Some(path) = url.sqlite_path() {
        let hint = if mode == OpenMode::MustExist && !Path::new(path).exists() {
            "it does not exist yet: run `personal-clients migrate` (or start the server) with this --database-url first"
        } else {
            "check that the file's directory exists and that this user may read and write both"
        };
        return Error::internal_with(format!("cannot open the SQLite database {path} ({hint})"), err);
    }
    let context = format!("cannot connect to PostgreSQL at {url}");
    let hint = "check that the server runs and that --database-url is right";
    // A pool that could not connect says only that it timed out; one direct attempt says why.
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url.expose())).await {
        Ok(Err(direct)) => Error::internal(format!("{context}: {} ({hint})", chain(&direct))),
        _ => Error::internal_with(format!("{context} ({hint})"), err),
    }
}
