//! Users see and touch only their own personal clients; admins may read and revoke any.

use crate::common::{TestDb, TestServer, authed, create_request};
use personal_clients::pb::iam as pb;
use prost_types::FieldMask;
use tonic::Code;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(users_cannot_see_or_touch_each_others_clients, admins_may_read_and_revoke_any_client));
    trials
}

async fn users_cannot_see_or_touch_each_others_clients(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let bob = server.token("bob", &[]).await;
    let mut client = server.client().await;
    let theirs = client.create(authed(create_request("alice's"), &alice)).await.unwrap().into_inner().client.unwrap();
    let mine = client.create(authed(create_request("bob's"), &bob)).await.unwrap().into_inner().client.unwrap();
    let unknown = uuid::Uuid::now_v7().to_string();

    for id in [theirs.id.clone(), unknown] {
        let get = client.get(authed(pb::PersonalClientServiceGetRequest { id: id.clone() }, &bob)).await.unwrap_err();
        let update = client
            .update(authed(
                pb::PersonalClientServiceUpdateRequest {
                    client: Some(pb::PersonalClient {
                        id: id.clone(),
                        display_name: "hijacked".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
                },
                &bob,
            ))
            .await
            .unwrap_err();
        let delete = client.delete(authed(pb::PersonalClientServiceDeleteRequest { id }, &bob)).await.unwrap_err();
        // Someone else's client and a missing one get the very same answer.
        for status in [get, update, delete] {
            assert_eq!(status.code(), Code::NotFound);
            assert_eq!(status.message(), "personal client not found");
        }
    }
    let bobs = client.list(authed(pb::PersonalClientServiceListRequest::default(), &bob)).await.unwrap().into_inner();
    assert_eq!(bobs.list, [mine]);
    let still =
        client.get(authed(pb::PersonalClientServiceGetRequest { id: theirs.id.clone() }, &alice)).await.unwrap();
    assert_eq!(still.into_inner().client.unwrap(), theirs, "alice's client is untouched");
    server.stop().await;
}

async fn admins_may_read_and_revoke_any_client(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let admin = server.token("root", &["admin"]).await;
    let mut client = server.client().await;
    let pc = client.create(authed(create_request("alice's"), &alice)).await.unwrap().into_inner().client.unwrap();

    let seen = client.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &admin)).await.unwrap();
    assert_eq!(seen.into_inner().client.unwrap(), pc);
    let admins_own = client.list(authed(pb::PersonalClientServiceListRequest::default(), &admin)).await.unwrap();
    assert!(admins_own.into_inner().list.is_empty(), "List stays the caller's own, even for an admin");
    let update = client
        .update(authed(
            pb::PersonalClientServiceUpdateRequest {
                client: Some(pb::PersonalClient { id: pc.id.clone(), display_name: "x".into(), ..Default::default() }),
                update_mask: None,
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound, "admins revoke; they do not edit others' credentials");

    client.delete(authed(pb::PersonalClientServiceDeleteRequest { id: pc.id.clone() }, &admin)).await.expect("revoke");
    let gone = client.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &alice)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await;
}
