//! Callers without a valid token of this service learn nothing but UNAUTHENTICATED.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Backend, TestDb, TestServer, authed, create_request};
use personal_clients::pb::iam as pb;
use tonic::{Code, Request, metadata::MetadataValue};

backend_tests!(bad_tokens_are_unauthenticated);

async fn bad_tokens_are_unauthenticated(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let mut client = server.client().await;
    let good = server.token("alice", &[]).await;

    // A token of another deployment: same issuer, different keys.
    let elsewhere = TestDb::new(Backend::Sqlite).await.unwrap();
    let foreign =
        personal_clients::mint_token(&elsewhere.config(), "alice", &[], Duration::from_secs(600)).await.unwrap();
    // A token of this deployment's keys for another issuer.
    let mut other_issuer = db.config();
    other_issuer.issuer = Some("https://idp.example".into());
    let wrong_iss = personal_clients::mint_token(&other_issuer, "alice", &[], Duration::from_secs(600)).await.unwrap();
    let expired = personal_clients::mint_token(&db.config(), "alice", &[], Duration::from_secs(1)).await.unwrap();
    let mut tampered = good.clone();
    tampered.insert_str(good.find('.').unwrap() + 1, "eyJzdWIiOiJtYWxsb3J5In0");
    let parts: Vec<&str> = good.split('.').collect();
    let unsigned = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let headers = [
        None,
        Some("Bearer".to_owned()),
        Some(format!("Basic {good}")),
        Some("Bearer not.a.jwt".to_owned()),
        Some(format!("Bearer {foreign}")),
        Some(format!("Bearer {wrong_iss}")),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {tampered}")),
        Some(format!("Bearer {unsigned}")),
    ];
    for header in headers {
        let mut request = Request::new(pb::PersonalClientServiceListRequest::default());
        if let Some(value) = &header {
            request.metadata_mut().insert("authorization", MetadataValue::try_from(value.as_str()).unwrap());
        }
        let status = client.list(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
        assert_eq!(status.message(), "missing or invalid bearer token", "nothing else is revealed");
    }

    // Authentication comes first, even for a malformed request.
    let status = client.create(Request::new(create_request(""))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(client.list(authed(pb::PersonalClientServiceListRequest::default(), &good)).await.is_ok());
    server.stop().await;
}
