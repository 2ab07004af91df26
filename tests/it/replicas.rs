//! Several replicas on one database: they start together, share keys and data, concurrent
//! writes all succeed, and `updated_at` follows the order in which writes of a row commit.

use std::time::Instant;

use crate::common::{TestDb, TestServer, authed, create_request, oauth};
use personal_clients::pb::iam as pb;
use tonic::Code;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        replicas_share_keys_and_revocations,
        a_revoked_clients_token_is_refused_by_every_replica_at_once,
        a_reported_secret_is_refused_by_every_replica_at_once,
        a_change_by_any_writer_is_seen_on_the_next_call,
        concurrent_writes_all_succeed,
        concurrent_updates_stamp_updated_at_in_commit_order,
    ));
    trials
}

async fn replicas_share_keys_and_revocations(db: TestDb) {
    // Both migrate and create their first signing key on an empty database at the same time.
    let (a, b) = tokio::join!(TestServer::start(db.config()), TestServer::start(db.config()));
    let token = a.token("alice", &[]).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    let pc = ca.create(authed(create_request("shared"), &token)).await.unwrap().into_inner().client.unwrap();
    let seen = cb.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token)).await;
    assert_eq!(seen.expect("a token accepted by every replica").into_inner().client.unwrap(), pc);

    cb.delete(authed(pb::PersonalClientServiceDeleteRequest { id: pc.id.clone() }, &token)).await.unwrap();
    let gone = ca.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "a revocation holds on every replica at once");
    a.stop().await;
    b.stop().await;
}

/// Both replicas have accepted (and remembered) a token the client obtained; one revokes the
/// client, and the very next call with the token is refused by either.
async fn a_revoked_clients_token_is_refused_by_every_replica_at_once(db: TestDb) {
    let (a, b) = tokio::join!(TestServer::start(db.config()), TestServer::start(db.config()));
    let user = a.token("alice", &[]).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let (pc, _, token) = a.client_with_token(&user, "shared").await;
    let get = || authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token);
    for _ in 0..2 {
        ca.get(get()).await.expect("replica a accepts the client's token");
        cb.get(get()).await.expect("replica b accepts the client's token");
    }

    cb.delete(authed(pb::PersonalClientServiceDeleteRequest { id: pc.id.clone() }, &user)).await.unwrap();
    assert_eq!(ca.get(get()).await.unwrap_err().code(), Code::Unauthenticated, "refused by the other replica");
    assert_eq!(cb.get(get()).await.unwrap_err().code(), Code::Unauthenticated, "refused by the revoking replica");
    a.stop().await;
    b.stop().await;
}

/// A leaked secret reported to one replica: the client's tokens, accepted (and remembered) by
/// both before, are refused by either on the very next call, and so is its next assertion.
async fn a_reported_secret_is_refused_by_every_replica_at_once(db: TestDb) {
    let (a, b) = tokio::join!(TestServer::start(db.config()), TestServer::start(db.config()));
    let user = a.token("alice", &[]).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let (pc, secret, token) = b.client_with_token(&user, "leaked").await;
    let key = oauth::key_from_secret(&secret);
    let get = || authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token);
    for _ in 0..2 {
        ca.get(get()).await.expect("replica a accepts the client's token");
        cb.get(get()).await.expect("replica b accepts the client's token");
    }

    let report = serde_json::json!({ "credentials": [secret] }).to_string();
    let headers = [("Content-Type", "application/json")];
    let reported = oauth::http(a.addr, "POST", "/auth/v1/credentials/revoke", &headers, &report).await;
    assert_eq!(reported.status, 202, "{}", reported.body);
    assert_eq!(cb.get(get()).await.unwrap_err().code(), Code::Unauthenticated, "refused by the other replica");
    assert_eq!(ca.get(get()).await.unwrap_err().code(), Code::Unauthenticated, "refused by the replica told");
    let form = oauth::token_form(&pc.client_id, &oauth::sdk_assertion(&key, &pc.client_id));
    assert_eq!(oauth::post_token(b.addr, &form, &[]).await.status, 401, "no new token anywhere");
    a.stop().await;
    b.stop().await;
}

/// Each replica keeps what it read of a usable client while the clients' epoch stays put; the
/// database moves the epoch, so a change made by a writer that is no replica of this service (an
/// operator's SQL) is seen on the very next call too: a revocation, an expiry moved into the
/// past, another owner or client id, a row deleted outright or replaced, a table truncated, a
/// session that replicates, a writer whose search_path finds another epoch table first.
async fn a_change_by_any_writer_is_seen_on_the_next_call(db: TestDb) {
    use sea_orm::ConnectionTrait;
    let server = TestServer::start(db.config()).await;
    let user = server.token("alice", &[]).await;
    let sql = sea_orm::Database::connect(&db.url).await.unwrap();
    let mut api = server.client().await;
    let mut changes = vec![
        "UPDATE personal_clients SET deleted_at = updated_at WHERE client_id = '{client_id}'",
        "UPDATE personal_clients SET expires_at = created_at WHERE client_id = '{client_id}'",
        "UPDATE personal_clients SET user_id = 'mallory' WHERE client_id = '{client_id}'",
        "UPDATE personal_clients SET client_id = 'x' || client_id WHERE client_id = '{client_id}'",
        "DELETE FROM personal_clients WHERE client_id = '{client_id}'",
    ];
    if db.url.starts_with("sqlite:") {
        // REPLACE deletes the row it replaces without firing delete triggers.
        changes.push(
            "INSERT OR REPLACE INTO personal_clients (id, client_id, user_id, display_name, display_name_folded, \
             allow_source_cidr, scoped_roles, owner_roles, public_key, expires_at, last_used_at, created_at, \
             updated_at, deleted_at) SELECT id, client_id, 'mallory', display_name, display_name_folded, \
             allow_source_cidr, scoped_roles, owner_roles, public_key, expires_at, last_used_at, created_at, \
             updated_at, deleted_at FROM personal_clients WHERE client_id = '{client_id}'",
        );
    } else {
        changes.extend([
            // A session that replicates or restores, which fires only triggers enabled ALWAYS.
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE personal_clients SET deleted_at = updated_at WHERE client_id = '{client_id}'; COMMIT",
            // A writer whose search_path finds another table of the same name first.
            "BEGIN; CREATE SCHEMA IF NOT EXISTS elsewhere; \
             CREATE TABLE IF NOT EXISTS elsewhere.client_epoch (id INTEGER PRIMARY KEY, stamp TEXT); \
             SET LOCAL search_path = elsewhere, public; \
             UPDATE public.personal_clients SET deleted_at = updated_at WHERE client_id = '{client_id}'; COMMIT",
            "TRUNCATE personal_clients",
        ]);
    }
    for change in changes {
        let (pc, _, token) = server.client_with_token(&user, "changed").await;
        let list = || authed(pb::PersonalClientServiceListRequest::default(), &token);
        for _ in 0..3 {
            api.list(list()).await.expect("the client's token is accepted, and what was read of it kept");
        }
        sql.execute_unprepared(&change.replace("{client_id}", &pc.client_id)).await.unwrap();
        assert_eq!(api.list(list()).await.unwrap_err().code(), Code::Unauthenticated, "after {change}");
    }
    server.stop().await;
}

async fn concurrent_writes_all_succeed(db: TestDb) {
    let (a, b) = tokio::join!(TestServer::start(db.config()), TestServer::start(db.config()));
    let token = a.token("alice", &[]).await;
    let (ca, cb) = (a.client().await, b.client().await);
    let calls = (0..40).map(|i| {
        let mut client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let token = token.clone();
        tokio::spawn(async move { client.create(authed(create_request(&format!("c{i}")), &token)).await })
    });
    let mut ids = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let created = call.await.unwrap().expect("no write fails under concurrency");
        ids.push(created.into_inner().client.unwrap().id);
    }
    let mut listed = ca.clone();
    let page = listed
        .list(authed(pb::PersonalClientServiceListRequest { page_size: 100, page_token: String::new() }, &token))
        .await
        .unwrap()
        .into_inner();
    let mut listed_ids: Vec<String> = page.list.into_iter().map(|c| c.id).collect();
    assert_eq!(listed_ids.len(), 40);
    let in_order = listed_ids.clone();
    listed_ids.sort_by_key(|id| uuid::Uuid::parse_str(id).unwrap());
    assert_eq!(in_order, listed_ids, "List is in id (creation) order");
    ids.sort();
    listed_ids.sort();
    assert_eq!(ids, listed_ids);
    a.stop().await;
    b.stop().await;
}

/// One acknowledged Update: the name it set, when it was sent and answered, and the
/// `updated_at` it returned as (seconds, nanos).
struct Acknowledged {
    name: String,
    sent: Instant,
    answered: Instant,
    updated_at: (i64, i32),
}

async fn concurrent_updates_stamp_updated_at_in_commit_order(db: TestDb) {
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 20;
    let (a, b) = tokio::join!(TestServer::start(db.config()), TestServer::start(db.config()));
    let token = a.token("alice", &[]).await;
    let (ca, cb) = (a.client().await, b.client().await);
    let id = ca.clone().create(authed(create_request("shared"), &token)).await.unwrap().into_inner().client.unwrap().id;

    // Rounds of concurrent renames through both replicas, each to a name of its own.
    let mut acknowledged = Vec::new();
    for round in 0..ROUNDS {
        let calls: Vec<_> = (0..PER_ROUND)
            .map(|i| {
                let mut client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
                let name = format!("round {round} update {i}");
                let rename = pb::PersonalClientServiceUpdateRequest {
                    client: Some(pb::PersonalClient {
                        id: id.clone(),
                        display_name: name.clone(),
                        ..Default::default()
                    }),
                    update_mask: None,
                };
                let request = authed(rename, &token);
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let updated = client.update(request).await.expect("every Update succeeds").into_inner();
                    let answered = Instant::now();
                    let at = updated.client.unwrap().updated_at.unwrap();
                    Acknowledged { name, sent, answered, updated_at: (at.seconds, at.nanos) }
                })
            })
            .collect();
        for call in calls {
            acknowledged.push(call.await.unwrap());
        }
        // The write that committed last is the one a read sees: its stamp is the latest of all.
        let survivor = ca
            .clone()
            .get(authed(pb::PersonalClientServiceGetRequest { id: id.clone() }, &token))
            .await
            .unwrap()
            .into_inner()
            .client
            .unwrap();
        let latest = acknowledged.iter().max_by_key(|update| update.updated_at).unwrap();
        let survivor_at = survivor.updated_at.unwrap();
        assert_eq!(
            (survivor.display_name.as_str(), (survivor_at.seconds, survivor_at.nanos)),
            (latest.name.as_str(), latest.updated_at),
            "round {round}: the surviving Update carries the latest updated_at any Update returned"
        );
    }

    let mut stamps: Vec<_> = acknowledged.iter().map(|update| update.updated_at).collect();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), acknowledged.len(), "no two acknowledged Updates share an updated_at");
    for earlier in &acknowledged {
        for later in acknowledged.iter().filter(|later| earlier.answered < later.sent) {
            assert!(
                earlier.updated_at < later.updated_at,
                "{:?} was answered before {:?} was sent, yet stamped {:?}, not before {:?}",
                earlier.name,
                later.name,
                earlier.updated_at,
                later.updated_at
            );
        }
    }
    a.stop().await;
    b.stop().await;
}
