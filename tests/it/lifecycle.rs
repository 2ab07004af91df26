//! The life of a personal client: create, read, list across pages, update, delete; and a
//! restart that loses nothing.

use std::collections::HashSet;

use crate::common::{TestDb, TestServer, authed, create_request, oauth};
use chrono::Utc;
use personal_clients::pb::iam as pb;
use prost_types::{Duration as PbDuration, FieldMask, Timestamp};
use tonic::Code;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        full_lifecycle,
        list_pages_stay_consistent_while_rows_are_inserted,
        update_each_mask_path,
        restart_loses_nothing,
        a_listed_client_is_the_client_get_reads,
    ));
    trials
}

async fn full_lifecycle(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &["reader", "writer"]).await;
    let mut client = server.client().await;

    let before = Utc::now().timestamp();
    let created = client
        .create(authed(
            pb::PersonalClientServiceCreateRequest {
                display_name: "ci deploy bot".into(),
                allow_source_cidr: vec!["10.1.2.3/8".into(), "192.0.2.7".into(), "10.0.0.0/8".into()],
                expires: Some(PbDuration { seconds: 86_400, nanos: 0 }),
                scoped_roles: vec!["reader".into(), "reader".into()],
            },
            &token,
        ))
        .await
        .expect("create")
        .into_inner();
    let pc = created.client.expect("client");
    assert!(created.client_secret.starts_with("secret-token:personal-clients:v1:"));
    assert_eq!(pc.user_id, "alice");
    assert_eq!(pc.display_name, "ci deploy bot");
    assert_eq!(pc.allow_source_cidr, ["10.0.0.0/8", "192.0.2.7/32"]);
    assert_eq!(pc.scoped_roles, ["reader"]);
    assert!(pc.client_id.ends_with("@localhost/pcc"), "{}", pc.client_id);
    uuid::Uuid::parse_str(&pc.id).expect("id is a UUID");
    let expires = pc.expires_time.expect("expires_time").seconds;
    assert!((before + 86_400..=Utc::now().timestamp() + 86_400).contains(&expires));
    assert!(pc.last_used_at.is_none() && pc.deleted_at.is_none());
    assert_eq!(pc.created_at, pc.updated_at);

    let got = client.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token)).await.unwrap();
    assert_eq!(got.into_inner().client.as_ref(), Some(&pc), "Get returns what Create returned");

    let listed =
        client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap().into_inner();
    assert_eq!(listed.list, std::slice::from_ref(&pc));
    assert!(listed.next_page_token.is_empty());

    let updated = client
        .update(authed(
            pb::PersonalClientServiceUpdateRequest {
                client: Some(pb::PersonalClient {
                    id: pc.id.clone(),
                    display_name: "renamed".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    assert_eq!(updated.display_name, "renamed");
    assert_eq!(updated.allow_source_cidr, pc.allow_source_cidr, "fields outside the mask are kept");
    let stamp = |t: &Option<Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(stamp(&updated.updated_at) > stamp(&pc.updated_at), "updated_at moves forward");

    client.delete(authed(pb::PersonalClientServiceDeleteRequest { id: pc.id.clone() }, &token)).await.expect("delete");
    let after =
        client.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token)).await.unwrap_err();
    assert_eq!(after.code(), Code::NotFound);
    let again =
        client.delete(authed(pb::PersonalClientServiceDeleteRequest { id: pc.id.clone() }, &token)).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "deleting twice is NOT_FOUND");
    let listed =
        client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap().into_inner();
    assert!(listed.list.is_empty(), "deleted clients are not listed");
    let update = client
        .update(authed(
            pb::PersonalClientServiceUpdateRequest {
                client: Some(pb::PersonalClient {
                    id: pc.id.clone(),
                    display_name: "zombie".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound, "a deleted client cannot be updated");
    server.stop().await;
}

async fn list_pages_stay_consistent_while_rows_are_inserted(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let mut created = Vec::new();
    for i in 0..7 {
        let pc = client.create(authed(create_request(&format!("c{i}")), &token)).await.unwrap().into_inner();
        created.push(pc.client.unwrap().id);
    }

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    let mut inserted = Vec::new();
    loop {
        let page = client
            .list(authed(pb::PersonalClientServiceListRequest { page_size: 3, page_token: page_token.clone() }, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.list.len() <= 3);
        seen.extend(page.list.iter().map(|c| c.id.clone()));
        pages += 1;
        if pages <= 2 {
            // Rows arriving mid-listing are newer than everything seen, so they come on later pages.
            let pc = client.create(authed(create_request(&format!("late{pages}")), &token)).await.unwrap();
            inserted.push(pc.into_inner().client.unwrap().id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let expected: Vec<String> = created.iter().chain(inserted.iter()).cloned().collect();
    assert_eq!(seen, expected, "oldest first, nothing skipped or repeated");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    assert_eq!(pages, 3);

    // page_size 0 means 50; a huge page size is capped rather than refused.
    let all = client
        .list(authed(pb::PersonalClientServiceListRequest { page_size: 0, page_token: String::new() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.list.len(), 9);
    assert!(all.next_page_token.is_empty());
    let capped = client
        .list(authed(pb::PersonalClientServiceListRequest { page_size: 100_000, page_token: String::new() }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.list.len(), 9);
    server.stop().await;
}

async fn update_each_mask_path(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &["reader", "writer"]).await;
    let mut client = server.client().await;
    let pc = client.create(authed(create_request("original"), &token)).await.unwrap().into_inner().client.unwrap();

    let update = |client: pb::PersonalClient, paths: &[&str]| pb::PersonalClientServiceUpdateRequest {
        client: Some(client),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    };
    let base = pb::PersonalClient { id: pc.id.clone(), ..Default::default() };
    let send = |req| {
        let token = token.clone();
        let mut svc = client.clone();
        async move { svc.update(authed(req, &token)).await.map(|r| r.into_inner().client.unwrap()) }
    };

    let r = send(update(pb::PersonalClient { display_name: "new name".into(), ..base.clone() }, &["display_name"]))
        .await
        .unwrap();
    assert_eq!(r.display_name, "new name");

    let r = send(update(
        pb::PersonalClient { allow_source_cidr: vec!["2001:db8::1/32".into()], ..base.clone() },
        &["allowSourceCidr"],
    ))
    .await
    .unwrap();
    assert_eq!(r.allow_source_cidr, ["2001:db8::/32"]);
    assert_eq!(r.display_name, "new name");

    let r = send(update(pb::PersonalClient { scoped_roles: vec!["writer".into()], ..base.clone() }, &["scoped_roles"]))
        .await
        .unwrap();
    assert_eq!(r.scoped_roles, ["writer"]);

    let at = Utc::now().timestamp() + 3600;
    let r = send(update(
        pb::PersonalClient { expires_time: Some(Timestamp { seconds: at, nanos: 0 }), ..base.clone() },
        &["expiresTime"],
    ))
    .await
    .unwrap();
    assert_eq!(r.expires_time, Some(Timestamp { seconds: at, nanos: 0 }));

    // A mask path with an empty value clears the field: no CIDRs means from anywhere.
    let r = send(update(base.clone(), &["allow_source_cidr", "scoped_roles"])).await.unwrap();
    assert!(r.allow_source_cidr.is_empty() && r.scoped_roles.is_empty());
    assert_eq!(r.display_name, "new name");

    // No mask: every field set in the request.
    let r = send(pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient {
            display_name: "by presence".into(),
            allow_source_cidr: vec!["10.0.0.1".into()],
            ..base.clone()
        }),
        update_mask: None,
    })
    .await
    .unwrap();
    assert_eq!(r.display_name, "by presence");
    assert_eq!(r.allow_source_cidr, ["10.0.0.1/32"]);
    assert_eq!(r.expires_time, Some(Timestamp { seconds: at, nanos: 0 }), "unset fields are kept without a mask");

    let got = client.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token)).await.unwrap();
    assert_eq!(got.into_inner().client.unwrap(), r, "updates are stored");
    server.stop().await;
}

async fn restart_loses_nothing(db: TestDb) {
    let config = db.config();
    let server = TestServer::start(config.clone()).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let pc = client.create(authed(create_request(&format!("kept {i}")), &token)).await.unwrap().into_inner();
        ids.push(pc.client.unwrap());
    }
    client.delete(authed(pb::PersonalClientServiceDeleteRequest { id: ids[1].id.clone() }, &token)).await.unwrap();
    let before =
        client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap().into_inner();
    server.stop().await;

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    // The token minted before the restart still verifies: the signing keys live in the database.
    let after =
        client.list(authed(pb::PersonalClientServiceListRequest::default(), &token)).await.unwrap().into_inner();
    assert_eq!(after.list, before.list);
    assert_eq!(after.list.len(), 4);
    let gone = client.get(authed(pb::PersonalClientServiceGetRequest { id: ids[1].id.clone() }, &token)).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound, "a revocation survives a restart");
    server.stop().await;
}

/// List reads its pages its own way on SQLite (the page as one JSON text): every field of every
/// listed client, of every shape a field takes, is what Get reads of it.
async fn a_listed_client_is_the_client_get_reads(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader", "writer", "ops:on-call"]).await;
    let mut api = server.client().await;
    let names = [
        "plain",
        "Mixed CASE Name",
        "\"quoted\" \\ back",
        "naïve café 名前 🦀",
        "two  spaces, a ∕ slash",
        "</script>'",
    ];
    for (n, name) in names.iter().enumerate() {
        let mut request = create_request(name);
        if n % 2 == 0 {
            request.allow_source_cidr = vec!["10.0.0.0/8".into(), "2001:db8::/32".into(), "192.0.2.7".into()];
            request.scoped_roles = vec!["reader".into(), "ops:on-call".into()];
            request.expires = Some(PbDuration { seconds: 86_400 + n as i64, nanos: 0 });
        }
        let created = api.create(authed(request, &alice)).await;
        created.unwrap_or_else(|status| panic!("{name:?}: {status:?}"));
    }
    // One that has been used (last_used_at) and one revoked, which List leaves out.
    let used = api.create(authed(create_request("used"), &alice)).await.unwrap().into_inner();
    let used_client = used.client.unwrap();
    let key = oauth::key_from_secret(&used.client_secret);
    let form = oauth::token_form(&used_client.client_id, &oauth::sdk_assertion(&key, &used_client.client_id));
    assert_eq!(oauth::post_token(server.addr, &form, &[]).await.status, 200);
    let revoked = api.create(authed(create_request("revoked"), &alice)).await.unwrap().into_inner().client.unwrap();
    api.delete(authed(pb::PersonalClientServiceDeleteRequest { id: revoked.id.clone() }, &alice)).await.unwrap();

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::PersonalClientServiceListRequest { page_size: 3, page_token: page_token.clone() };
        let page = api.list(authed(request, &alice)).await.unwrap().into_inner();
        listed.extend(page.list);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(listed.len(), names.len() + 1, "every live client, the revoked one left out");
    assert!(listed.windows(2).all(|pair| pair[0].id < pair[1].id), "in creation order");
    for client in listed {
        let got = api.get(authed(pb::PersonalClientServiceGetRequest { id: client.id.clone() }, &alice)).await;
        assert_eq!(got.unwrap().into_inner().client.unwrap(), client);
    }
    server.stop().await;
}
