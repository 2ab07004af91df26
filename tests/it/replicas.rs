//! Several replicas on one database: they start together, share keys and data, and concurrent
//! writes all succeed.

use crate::common::{TestDb, TestServer, authed, create_request};
use personal_clients::pb::iam as pb;
use tonic::Code;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(replicas_share_keys_and_revocations, concurrent_writes_all_succeed));
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
