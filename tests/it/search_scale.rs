//! How Search scales: a database filled with synthetic clients, and the store's search timed on
//! it. Ignored by default (it takes minutes at a million rows); run it in release, one backend at
//! a time:
//!
//! ```sh
//! PC_SEARCH_SCALE_ROWS=1000000 PC_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --release --test it -- --ignored --test-threads 1 search_at_scale
//! ```
//!
//! The database is the test's own and is removed when it ends.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use personal_clients::{
    domain::{ClientId, SearchFilter},
    store::{
        OpenMode, Store,
        entity::personal_client::{self, Networks, RoleNames},
        migration::Migrator,
    },
};
use sea_orm::{ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, EntityTrait, TransactionTrait};
use sea_orm_migration::MigratorTrait;
use uuid::{NoContext, Timestamp, Uuid};

use crate::common::TestDb;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    backend_tests!(search_at_scale).into_iter().map(|trial| trial.with_ignored_flag(true)).collect()
}

/// Owners of the synthetic clients.
pub const USERS: u64 = 1000;
/// The text of the synthetic names that are rare: ten of them at any size.
pub const RARE_TEXT: &str = "zebra";
/// The text every synthetic name holds.
pub const COMMON_TEXT: &str = "load";

/// The display name of synthetic client `i` of `rows`: `load-000123`, but for ten spread over
/// the table that are `Zebra Payments 3` and the like.
pub fn synthetic_name(i: u64, rows: u64) -> String {
    let every = (rows / 10).max(1);
    if i % every == every / 2 { format!("Zebra Payments {}", i / every) } else { format!("load-{i:06}") }
}

/// The owner of synthetic client `i`.
pub fn synthetic_user(i: u64) -> String {
    format!("user-{:04}", (i * 2_654_435_761) % USERS)
}

/// Whether synthetic client `i` is revoked: one in ten.
pub fn synthetic_deleted(i: u64) -> bool {
    i % 10 == 3
}

/// Inserts `rows` clients shaped like real ones straight into the table, in id (creation) order,
/// a thousand per statement: names from [`synthetic_name`], owners from [`synthetic_user`], one
/// in ten revoked, client ids as Create makes them. Returns their ids in order.
pub async fn insert_synthetic_clients(db: &DatabaseConnection, rows: u64) -> Vec<Uuid> {
    let start = Utc::now() - TimeDelta::days(400);
    let mut client_ids = HashSet::new();
    let mut ids = Vec::new();
    let mut i = 0;
    while i < rows {
        let txn = db.begin().await.unwrap();
        for _ in 0..50 {
            let batch: Vec<_> = (i..rows.min(i + 1000))
                .map(|i| {
                    let created = start + TimeDelta::milliseconds((i * 10) as i64);
                    let id = uuid_at(created);
                    ids.push(id);
                    let client_id = loop {
                        let candidate = ClientId::generate("localhost").into_string();
                        if client_ids.insert(candidate.clone()) {
                            break candidate;
                        }
                    };
                    let name = synthetic_name(i, rows);
                    personal_client::ActiveModel {
                        id: Set(id),
                        client_id: Set(client_id),
                        user_id: Set(synthetic_user(i)),
                        display_name_folded: Set(SearchFilter::fold_case(&name)),
                        display_name: Set(name),
                        allow_source_cidr: Set(Networks(vec!["10.0.0.0/8".parse().unwrap()])),
                        scoped_roles: Set(RoleNames(vec!["reader".into()])),
                        owner_roles: Set(RoleNames(vec!["reader".into(), "writer".into()])),
                        public_key: Set(id.as_bytes().repeat(2)),
                        expires_at: Set(Some(created + TimeDelta::days(365))),
                        last_used_at: Set(None),
                        created_at: Set(created),
                        updated_at: Set(created),
                        deleted_at: Set(synthetic_deleted(i).then(|| created + TimeDelta::days(1))),
                    }
                })
                .collect();
            i += batch.len() as u64;
            if batch.is_empty() {
                break;
            }
            personal_client::Entity::insert_many(batch).exec(&txn).await.unwrap();
        }
        txn.commit().await.unwrap();
    }
    ids
}

/// A UUID v7 of the instant `at`.
fn uuid_at(at: DateTime<Utc>) -> Uuid {
    let seconds = u64::try_from(at.timestamp()).unwrap();
    Uuid::new_v7(Timestamp::from_unix(NoContext, seconds, at.timestamp_subsec_nanos()))
}

/// The schema as the migrations up to the folded names leave it: what the synthetic rows fill.
pub async fn migrate_to_folded_names(db: &DatabaseConnection) {
    let migrations = Migrator::migrations();
    let folded = migrations.iter().position(|m| m.name() == "m20261128_000004_folded_display_names").unwrap();
    Migrator::up(db, Some(folded as u32 + 1)).await.unwrap();
}

async fn search_at_scale(db: TestDb) {
    let rows: u64 = std::env::var("PC_SEARCH_SCALE_ROWS").ok().map_or(1_000_000, |rows| rows.parse().unwrap());
    let max_runs: usize = std::env::var("PC_SEARCH_SCALE_RUNS").ok().map_or(200, |runs| runs.parse().unwrap());
    let backend = if db.url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" };

    // Filled before the later migrations, so what they do to a large table is timed too.
    let connection = Database::connect(&db.url).await.unwrap();
    migrate_to_folded_names(&connection).await;
    let started = Instant::now();
    insert_synthetic_clients(&connection, rows).await;
    let filled = started.elapsed();
    if !db.url.starts_with("sqlite") {
        // A table that has been in use has statistics; a fresh bulk load has none yet.
        connection.execute_unprepared("VACUUM ANALYZE personal_clients").await.unwrap();
    }
    connection.close().await.unwrap();
    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();
    let started = Instant::now();
    store.migrate().await.unwrap();
    println!("{backend}, {rows} clients: filled in {filled:.1?}, later migrations took {:.1?}", started.elapsed());

    let one_user = vec![synthetic_user(42)];
    let three_users: Vec<_> = (42..45).map(synthetic_user).collect();
    // Names are `load-` and six digits: a prefix of the digits that leaves the last ones free
    // matches a hundredth of them.
    let free_digits = (rows / 100).max(1).ilog10();
    let one_percent = format!("load-{:06}", 12 * 10u64.pow(free_digits));
    let one_percent = &one_percent[..one_percent.len() - free_digits as usize];
    let scenarios = [
        ("text, few matches", filter(Some(RARE_TEXT), &[], false)),
        ("text, few matches, revoked too", filter(Some(RARE_TEXT), &[], true)),
        ("users + include_deleted", filter(None, &one_user, true)),
        ("users, live only", filter(None, &one_user, false)),
        ("common text + 1 user", filter(Some("load-0"), &one_user, true)),
        ("rare text + 3 users", filter(Some(RARE_TEXT), &three_users, false)),
        ("text, many matches", filter(Some(COMMON_TEXT), &[], false)),
        ("text, ~1% matches", filter(Some(one_percent), &[], false)),
        ("2 characters, many matches", filter(Some("lo"), &[], false)),
        ("2 characters, no match", filter(Some("qz"), &[], false)),
        ("no text", filter(None, &[], false)),
    ];
    println!("{:<32} {:>5} {:>5} {:>10} {:>10}", "query (page of 50)", "found", "runs", "p50", "p99");
    for (name, filter) in scenarios {
        let search = || store.search_clients(&filter, None, 51);
        let started = Instant::now();
        let found = search().await.unwrap().len();
        // A query that reads the whole table is timed for about 20 s, but at least 20 times.
        let runs = (20.0 / started.elapsed().as_secs_f64()) as usize;
        let runs = runs.min(max_runs).max(max_runs.min(20));
        for _ in 0..runs.div_ceil(10) {
            search().await.unwrap();
        }
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            search().await.unwrap();
            times.push(started.elapsed());
        }
        times.sort();
        let p50 = times[runs / 2];
        let p99 = times[(runs * 99).div_ceil(100) - 1];
        println!("{name:<32} {found:>5} {runs:>5} {:>10} {:>10}", millis(p50), millis(p99));
    }
}

fn filter(text: Option<&str>, users: &[String], include_deleted: bool) -> SearchFilter {
    SearchFilter { text: text.map(str::to_owned), users: users.to_vec(), include_deleted }
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
