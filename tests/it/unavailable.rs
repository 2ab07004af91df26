//! A database that cannot be reached gives UNAVAILABLE, writes nothing half-way, and the
//! service recovers on its own when the database returns.

use std::time::{Duration, Instant};

use personal_clients::{config::Config, pb::iam as pb};
use sea_orm::{Database, SqliteTransactionMode, TransactionOptions, TransactionTrait};
use tonic::Code;

use crate::{
    common::{TestDb, TestServer, authed, create_request, eventually, oauth::http, proxy::TcpProxy},
    json_api::call,
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(tests_on!(Postgres:
        postgres_out_of_reach_is_unavailable_and_recovers,
        a_replica_that_cannot_reread_its_keys_lets_no_one_keep_its_jwks,
        a_postgres_gone_silent_mid_query_holds_no_call_past_the_request_timeout,
    ));
    trials.extend(tests_on!(Sqlite: a_locked_sqlite_database_is_unavailable_and_deadlines_hold));
    trials
}

/// Another process holding SQLite's write lock (a second replica in a long write) is, for this
/// one, a busy database: writes wait for it up to the busy timeout, then answer UNAVAILABLE;
/// a caller's deadline ends the call sooner, and it is counted.
async fn a_locked_sqlite_database_is_unavailable_and_deadlines_hold(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let kept = client.create(authed(create_request("before"), &token)).await.unwrap().into_inner().client.unwrap();

    let other = Database::connect(&db.url).await.unwrap();
    let immediate = TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    };
    let lock = other.begin_with_options(immediate).await.unwrap();

    let mut hurried = authed(create_request("hurried"), &token);
    hurried.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.create(hurried).await.unwrap_err();
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the deadline, not the busy timeout: {:?}", started.elapsed());
    // DEADLINE_EXCEEDED when the server's timer for the deadline ends it, CANCELLED when the
    // caller's own timer wins and its reset arrives first: counted either way, once.
    eventually(Duration::from_secs(10), "the cut-off Create in the metrics", || async {
        server.calls("Create", "DEADLINE_EXCEEDED").await + server.calls("Create", "CANCELLED").await == 1.0
    })
    .await;

    let patient = client.create(authed(create_request("patient"), &token)).await.unwrap_err();
    assert_eq!(patient.code(), Code::Unavailable, "busy is a retry, never INTERNAL: {patient:?}");
    let listed = client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap();
    assert_eq!(listed.into_inner().list, std::slice::from_ref(&kept), "reads go on beside a writer (WAL)");

    lock.rollback().await.unwrap();
    client.create(authed(create_request("after"), &token)).await.expect("writes again once the lock is gone");
    let listed = client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap();
    let names: Vec<String> = listed.into_inner().list.into_iter().map(|c| c.display_name).collect();
    assert_eq!(names, ["before", "after"], "nothing half-written while the database was locked");
    server.stop().await;
}

async fn postgres_out_of_reach_is_unavailable_and_recovers(db: TestDb) {
    let proxy = TcpProxy::start(db.server_addr().await).await;
    let config = Config::defaults(&db.url_via(proxy.addr)).unwrap();
    let server = TestServer::start(config).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let kept = client.create(authed(create_request("before"), &token)).await.unwrap().into_inner().client.unwrap();

    proxy.cut();
    let create = client.create(authed(create_request("during"), &token)).await.unwrap_err();
    assert_eq!(create.code(), Code::Unavailable, "{create:?}");
    assert!(
        !create.message().contains("5432") && !create.message().contains("sqlx"),
        "no internals: {}",
        create.message()
    );
    let list = client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap_err();
    assert_eq!(list.code(), Code::Unavailable);
    let json =
        call(&server, "POST", "/api/v1/iam/personal_clients", Some(&token), r#"{"displayName": "during"}"#).await;
    assert_eq!((json.status, json.json()["code"].as_i64()), (503, Some(14)), "{}", json.body);
    assert_eq!(json.header("retry-after"), Some("1"), "a retry, and when");

    proxy.restore();
    let mut listed = None;
    for _ in 0..50 {
        match client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await {
            Ok(response) => {
                listed = Some(response.into_inner());
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let listed = listed.expect("the service recovers without a restart");
    assert_eq!(listed.list, [kept], "nothing half-written while the database was away");
    server.stop().await;
}

/// A replica cut off from the database cannot learn of a key the others will soon sign with:
/// its JWKS must not be kept past the moment it should have re-read the keys.
async fn a_replica_that_cannot_reread_its_keys_lets_no_one_keep_its_jwks(db: TestDb) {
    let proxy = TcpProxy::start(db.server_addr().await).await;
    let mut config = Config::defaults(&db.url_via(proxy.addr)).unwrap();
    config.keys.schedule = personal_clients::domain::KeySchedule {
        jwks_max_age: Duration::from_secs(3),
        reload_interval: Duration::from_millis(200),
        clock_skew: Duration::from_millis(200),
        max_token_ttl: Duration::from_secs(3600),
    };
    let server = TestServer::start(config).await;
    let cache_control = || async {
        let answer = http(server.addr, "GET", "/.well-known/jwks.json", &[], "").await;
        answer.header("cache-control").unwrap_or_default().to_owned()
    };
    let fresh = |cache: &str| cache == "public, max-age=3" || cache == "public, max-age=2";
    assert!(fresh(&cache_control().await));
    proxy.cut();
    eventually(Duration::from_secs(10), "the JWKS no longer to be kept", || async {
        cache_control().await == "no-store"
    })
    .await;
    proxy.restore();
    eventually(Duration::from_secs(20), "the JWKS to be cacheable again", || async { fresh(&cache_control().await) })
        .await;
    server.stop().await;
}

async fn a_postgres_gone_silent_mid_query_holds_no_call_past_the_request_timeout(db: TestDb) {
    let proxy = TcpProxy::start(db.server_addr().await).await;
    let mut config = Config::defaults(&db.url_via(proxy.addr)).unwrap();
    config.serving.request_timeout = std::time::Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let kept = client.create(authed(create_request("before"), &token)).await.unwrap().into_inner().client.unwrap();

    proxy.silence();
    let started = std::time::Instant::now();
    // The caller's own deadline is far off: the server's bound must end the call first.
    let mut request = authed(pb::PersonalClientServiceGetRequest { id: kept.id.clone() }, &token);
    request.set_timeout(std::time::Duration::from_secs(10));
    let get = client.get(request).await;
    let status = get.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("within 2s"), "{}", status.message());
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "ended by the server after {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let json = call(&server, "GET", &format!("/api/v1/iam/personal_clients/{}", kept.id), Some(&token), "").await;
    assert_eq!((json.status, json.json()["code"].as_i64()), (504, Some(4)), "{}", json.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "ended by the server after {:?}", started.elapsed());
    assert_eq!(server.calls_over("Get", "DEADLINE_EXCEEDED", "http").await, 1.0, "counted with its code");

    proxy.restore();
    let mut recovered = false;
    for _ in 0..100 {
        let get = client.get(authed(pb::PersonalClientServiceGetRequest { id: kept.id.clone() }, &token)).await;
        if get.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the service recovers without a restart");
    server.stop().await;
}
