//! Every validation rule: its status code and the field violation that names it.

use crate::common::{TestDb, TestServer, authed, create_request, violated_fields, violations};
use chrono::Utc;
use personal_clients::pb::iam as pb;
use prost_types::{Duration as PbDuration, FieldMask, Timestamp};
use tonic::Code;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        create_rules,
        get_and_list_rules,
        update_rules,
        validation_comes_before_authorisation
    ));
    trials.extend(tests_on!(Sqlite: malformed_protobuf_is_invalid_argument));
    trials
}

fn create(name: &str, cidrs: &[&str], roles: &[&str], expires: Option<i64>) -> pb::PersonalClientServiceCreateRequest {
    pb::PersonalClientServiceCreateRequest {
        display_name: name.into(),
        allow_source_cidr: cidrs.iter().map(|s| s.to_string()).collect(),
        scoped_roles: roles.iter().map(|s| s.to_string()).collect(),
        expires: expires.map(|seconds| PbDuration { seconds, nanos: 0 }),
    }
}

async fn create_rules(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &["reader"]).await;
    let mut client = server.client().await;
    let mut refused = async |req| {
        let status = client.create(authed(req, &token)).await.expect_err("refused");
        (status.clone(), violations(&status))
    };

    let cases: Vec<(pb::PersonalClientServiceCreateRequest, &str, &str)> = vec![
        (create("", &[], &[], None), "display_name", "required"),
        (create("   ", &[], &[], None), "display_name", "required"),
        (create(&"x".repeat(201), &[], &[], None), "display_name", "at most 200"),
        (create("tab\there", &[], &[], None), "display_name", "control character"),
        (create("laptop\u{202E}gpj", &[], &[], None), "display_name", "direction-changing"),
        (create("ci\u{200B}bot", &[], &[], None), "display_name", "invisible"),
        (create("n", &["10.0.0.0/8", "not-an-ip"], &[], None), "allow_source_cidr[1]", "CIDR notation"),
        (create("n", &["10.0.0.0/33"], &[], None), "allow_source_cidr[0]", "CIDR notation"),
        (create("n", &[], &["reader", "bad role"], None), "scoped_roles[1]", "A-Z a-z 0-9"),
        (create("n", &[], &[&"r".repeat(129)], None), "scoped_roles[0]", "1-128"),
        (create("n", &[], &[], Some(0)), "expires", "positive"),
        (create("n", &[], &[], Some(-60)), "expires", "positive"),
        (create("n", &[], &[], Some(366 * 86_400)), "expires", "at most 365d"),
    ];
    for (req, field, hint) in cases {
        let (status, found) = refused(req.clone()).await;
        assert_eq!(found.len(), 1, "{req:?}: {found:?}");
        assert_eq!(found[0].0, field, "{req:?}");
        assert!(found[0].1.contains(hint), "{field}: {:?} should mention {hint:?}", found[0].1);
        assert!(status.message().contains(field), "the message names the field too: {}", status.message());
    }

    let many_cidrs: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
    let many_cidrs: Vec<&str> = many_cidrs.iter().map(String::as_str).collect();
    let (_, found) = refused(create("n", &many_cidrs, &[], None)).await;
    assert_eq!(found, [("allow_source_cidr".to_owned(), "has 101 entries; at most 100 are allowed".to_owned())]);
    let many_roles: Vec<String> = (0..51).map(|i| format!("r{i}")).collect();
    let many_roles: Vec<&str> = many_roles.iter().map(String::as_str).collect();
    let (_, found) = refused(create("n", &[], &many_roles, None)).await;
    assert_eq!(found[0].0, "scoped_roles");

    // Every bad field at once.
    let (_, found) = refused(create("", &["nope"], &["no way"], Some(-1))).await;
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["display_name", "allow_source_cidr[0]", "scoped_roles[0]", "expires"]);

    // Limits are inclusive, and duplicates count towards the limit only as sent.
    let ok = client
        .create(authed(create(&"é".repeat(200), &["10.0.0.1"; 100], &["reader"], Some(365 * 86_400)), &token))
        .await
        .expect("at the limits")
        .into_inner();
    assert_eq!(ok.client.unwrap().allow_source_cidr, ["10.0.0.1/32"]);

    let denied = client.create(authed(create("n", &[], &["reader", "admin"], None), &token)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("admin") && !denied.message().contains("reader,"), "{}", denied.message());
    server.stop().await;
}

async fn get_and_list_rules(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let bob = server.token("bob", &[]).await;
    let mut client = server.client().await;

    for (id, hint) in [("", "required"), ("not-a-uuid", "UUID")] {
        let status =
            client.get(authed(pb::PersonalClientServiceGetRequest { id: id.into() }, &alice)).await.unwrap_err();
        let found = violations(&status);
        assert_eq!(found[0].0, "id");
        assert!(found[0].1.contains(hint), "{found:?}");
        let status = client.delete(authed(pb::PersonalClientServiceDeleteRequest { id: id.into() }, &alice)).await;
        assert_eq!(violated_fields(&status.unwrap_err()), ["id"]);
    }
    // Input is quoted short: a huge id cannot make the answer huge.
    let huge = "x".repeat(10_000);
    let status = client.get(authed(pb::PersonalClientServiceGetRequest { id: huge }, &alice)).await.unwrap_err();
    let found = violations(&status);
    assert!(found[0].1.contains("10000 characters") && found[0].1.len() < 300, "{found:?}");
    assert!(status.message().len() < 300, "{}", status.message());
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = client.get(authed(pb::PersonalClientServiceGetRequest { id: unknown }, &alice)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let list =
        |page_size, page_token: &str| pb::PersonalClientServiceListRequest { page_size, page_token: page_token.into() };
    let status = client.list(authed(list(-1, ""), &alice)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = client.list(authed(list(0, "garbage"), &alice)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);

    for i in 0..3 {
        client.create(authed(create_request(&format!("c{i}")), &alice)).await.unwrap();
    }
    let page = client.list(authed(list(1, ""), &alice)).await.unwrap().into_inner();
    assert!(!page.next_page_token.is_empty());
    let stolen = client.list(authed(list(1, &page.next_page_token), &bob)).await.unwrap_err();
    let found = violations(&stolen);
    assert_eq!(found[0].0, "page_token");
    assert!(found[0].1.contains("another listing"), "{found:?}");
    server.stop().await;
}

async fn update_rules(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &["reader"]).await;
    let mut client = server.client().await;
    let pc = client.create(authed(create_request("target"), &token)).await.unwrap().into_inner().client.unwrap();
    let base = pb::PersonalClient { id: pc.id.clone(), ..Default::default() };
    let req = |client: Option<pb::PersonalClient>, paths: &[&str]| pb::PersonalClientServiceUpdateRequest {
        client,
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    };
    let now = Utc::now().timestamp();
    let cases: Vec<(pb::PersonalClientServiceUpdateRequest, &[&str], &str)> = vec![
        (req(None, &["display_name"]), &["client"], "required"),
        (
            req(Some(pb::PersonalClient { id: "x".into(), ..base.clone() }), &["display_name"]),
            &["client.id", "client.display_name"],
            "UUID",
        ),
        (req(Some(base.clone()), &["colour"]), &["update_mask.paths[0]"], "updatable paths"),
        (
            req(Some(base.clone()), &["display_name", "client_id"]),
            &["update_mask.paths[1]", "client.display_name"],
            "immutable",
        ),
        (req(Some(base.clone()), &["created_at"]), &["update_mask.paths[0]"], "immutable"),
        (req(Some(base.clone()), &[]), &["update_mask"], "no updatable field"),
        (
            req(
                Some(pb::PersonalClient { allow_source_cidr: vec!["10.0.0.0/8".into(), "bad".into()], ..base.clone() }),
                &["allow_source_cidr"],
            ),
            &["client.allow_source_cidr[1]"],
            "CIDR",
        ),
        (
            req(Some(pb::PersonalClient { scoped_roles: vec!["no spaces".into()], ..base.clone() }), &["scoped_roles"]),
            &["client.scoped_roles[0]"],
            "only A-Z",
        ),
        (
            req(
                Some(pb::PersonalClient {
                    expires_time: Some(Timestamp { seconds: now - 10, nanos: 0 }),
                    ..base.clone()
                }),
                &["expires_time"],
            ),
            &["client.expires_time"],
            "not in the future",
        ),
        (
            req(
                Some(pb::PersonalClient {
                    expires_time: Some(Timestamp { seconds: now + 400 * 86_400, nanos: 0 }),
                    ..base.clone()
                }),
                &["expires_time"],
            ),
            &["client.expires_time"],
            "at most 365d",
        ),
        (req(Some(base.clone()), &["expires_time"]), &["client.expires_time"], "required"),
    ];
    for (request, fields, hint) in cases {
        let status = client.update(authed(request.clone(), &token)).await.expect_err("refused");
        let found = violations(&status);
        let names: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, fields, "{request:?}");
        assert!(found[0].1.contains(hint), "{:?} should mention {hint:?}", found[0].1);
    }

    let denied = client
        .update(authed(
            req(Some(pb::PersonalClient { scoped_roles: vec!["admin".into()], ..base.clone() }), &["scoped_roles"]),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "a credential never gets a role its owner lacks");

    let unchanged =
        client.get(authed(pb::PersonalClientServiceGetRequest { id: pc.id.clone() }, &token)).await.unwrap();
    assert_eq!(unchanged.into_inner().client.unwrap(), pc, "refused updates change nothing");
    server.stop().await;
}

async fn validation_comes_before_authorisation(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &[]).await;
    let mut client = server.client().await;
    let status = client.create(authed(create("", &[], &["admin"], None), &token)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["display_name"], "malformed beats denied");

    // With no maximum lifetime, a credential that asks for none never expires.
    let mut config = db.config();
    config.credentials.max_lifetime = "none".parse().unwrap();
    server.stop().await;
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let pc = client.create(authed(create_request("forever"), &token)).await.unwrap().into_inner().client.unwrap();
    assert_eq!(pc.expires_time, None);
    // Without a limit, a lifetime still ends before what a Timestamp can say (year 10000).
    let status = client.create(authed(create("huge", &[], &[], Some(10_i64.pow(13))), &token)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["expires"]);
    let far = pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient {
            id: pc.id.clone(),
            expires_time: Some(Timestamp { seconds: 253_402_300_800, nanos: 0 }),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths: vec!["expires_time".into()] }),
    };
    let status = client.update(authed(far, &token)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["client.expires_time"]);
    server.stop().await;
}

/// A message whose field 1 is a number where the contract has a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    display_name: u64,
}

async fn malformed_protobuf_is_invalid_argument(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &[]).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/c1.api.iam.v1.PersonalClientService/Create");
    let codec = tonic_prost::ProstCodec::<WrongWireType, pb::PersonalClientServiceCreateResponse>::default();
    let status = grpc.unary(authed(WrongWireType { display_name: 7 }, &token), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["request"]);
    assert!(!status.message().contains("wire type"), "no decoder internals: {}", status.message());
    server.stop().await;
}
