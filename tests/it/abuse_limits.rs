//! The limits on what one caller may do: token requests per client and per source address,
//! Create calls per user, and credentials held per user. Refusals say what the limit is and,
//! for rates, when to come back (`RetryInfo` over gRPC, `Retry-After` over HTTP).

use std::time::Duration;

use crate::common::{
    TestDb, TestServer, authed, create_request,
    oauth::{key_from_secret, post_token, sdk_assertion, token_form},
};
use personal_clients::{
    config::CountLimit,
    pb::{
        auth::{TokenRequest, token_service_client::TokenServiceClient},
        iam as pb,
    },
    rate::RateLimit,
};
use tonic::{Code, Request, Status, metadata::MetadataValue};
use tonic_types::StatusExt;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(credentials_held_per_user_are_bounded));
    trials.extend(tests_on!(Sqlite:
        token_requests_are_rate_limited_per_client,
        token_requests_are_rate_limited_per_source_network,
        creates_are_rate_limited_per_user,
        the_defaults_limit_abuse,
    ));
    trials
}

fn rate(text: &str) -> RateLimit {
    text.parse().unwrap()
}

fn token_request(client_id: &str, assertion: &str) -> TokenRequest {
    TokenRequest {
        grant_type: "client_credentials".into(),
        client_id: client_id.into(),
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        client_assertion: assertion.into(),
    }
}

async fn exchange(server: &TestServer, created: &pb::PersonalClientServiceCreateResponse) -> Result<(), Status> {
    let client = created.client.as_ref().unwrap();
    let assertion = sdk_assertion(&key_from_secret(&created.client_secret), &client.client_id);
    let mut tokens = TokenServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    tokens.token(token_request(&client.client_id, &assertion)).await.map(|_| ())
}

/// The wait a rate-limited refusal asks for.
fn retry_delay(status: &Status) -> Duration {
    status.get_details_retry_info().and_then(|info| info.retry_delay).expect("RetryInfo with a delay")
}

async fn token_requests_are_rate_limited_per_client(db: TestDb) {
    let mut config = db.config();
    config.credentials.exchange_rate_per_client = rate("2/min");
    let server = TestServer::start(config).await;
    let token = server.token("alice", &[]).await;
    let mut api = server.client().await;
    let busy = api.create(authed(create_request("busy"), &token)).await.unwrap().into_inner();
    let quiet = api.create(authed(create_request("quiet"), &token)).await.unwrap().into_inner();

    exchange(&server, &busy).await.expect("first");
    exchange(&server, &busy).await.expect("second");
    let status = exchange(&server, &busy).await.expect_err("a third within the minute");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("more than 2/min token requests per client"), "{}", status.message());
    let delay = retry_delay(&status);
    assert!(delay > Duration::from_secs(20) && delay <= Duration::from_secs(30), "{delay:?}");

    let client = busy.client.as_ref().unwrap();
    let assertion = sdk_assertion(&key_from_secret(&busy.client_secret), &client.client_id);
    let http = post_token(server.addr, &token_form(&client.client_id, &assertion), &[]).await;
    assert_eq!(http.status, 429, "{}", http.body);
    let retry_after: u64 = http.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((20..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(http.json()["error"], "temporarily_unavailable");

    exchange(&server, &quiet).await.expect("another client has its own allowance");
    assert_eq!(server.exchanges("rate_limited").await, 2.0);
    server.stop().await;
}

async fn token_requests_are_rate_limited_per_source_network(db: TestDb) {
    let mut config = db.config();
    config.credentials.exchange_rate_per_source = rate("3/min");
    config.trust.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = TestServer::start(config).await;
    let mut tokens = TokenServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let from = |source: &str| {
        let mut request = Request::new(token_request("nobody@localhost/pcc", "a.b.c"));
        request.metadata_mut().insert("x-forwarded-for", MetadataValue::try_from(source).unwrap());
        request
    };
    // No credential needed to spend an allowance: each of these is refused as a client, then
    // the fourth from the same sender is refused before any work.
    for source in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        let status = tokens.token(from(source)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{source}: {status:?}");
    }
    let status = tokens.token(from("2001:db8:1:2::4")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "one /64 is one sender: {status:?}");
    assert!(status.message().contains("token requests per source address"), "{}", status.message());
    assert!(retry_delay(&status) > Duration::ZERO);

    let status = tokens.token(from("2001:db8:1:3::1")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "another /64 has its own allowance: {status:?}");
    let status = tokens.token(from("192.0.2.7")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    server.stop().await;
}

async fn creates_are_rate_limited_per_user(db: TestDb) {
    let mut config = db.config();
    config.credentials.create_rate_per_user = rate("2/min");
    let server = TestServer::start(config).await;
    let (alice, bob) = (server.token("alice", &[]).await, server.token("bob", &[]).await);
    let mut api = server.client().await;
    for n in 0..2 {
        api.create(authed(create_request(&format!("ok {n}")), &alice)).await.unwrap();
    }
    let status = api.create(authed(create_request("one too many"), &alice)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("more than 2/min Create calls per user"), "{}", status.message());
    assert!(retry_delay(&status) > Duration::from_secs(20));
    api.create(authed(create_request("bob's own"), &bob)).await.expect("another user has her own allowance");
    server.stop().await;
}

async fn credentials_held_per_user_are_bounded(db: TestDb) {
    let mut config = db.config();
    config.credentials.max_clients_per_user = CountLimit(Some(3));
    let server = TestServer::start(config).await;
    let (alice, bob) = (server.token("alice", &[]).await, server.token("bob", &[]).await);
    let mut api = server.client().await;
    let mut held = Vec::new();
    for n in 0..3 {
        let created = api.create(authed(create_request(&format!("key {n}")), &alice)).await.unwrap();
        held.push(created.into_inner().client.unwrap().id);
    }
    let status = api.create(authed(create_request("a fourth"), &alice)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("you hold 3 credentials"), "{}", status.message());
    let listed = api.list(authed(pb::PersonalClientServiceListRequest::default(), &alice)).await.unwrap();
    assert_eq!(listed.into_inner().list.len(), 3, "nothing half-written");

    api.create(authed(create_request("bob's"), &bob)).await.expect("the bound is per user");
    let revoke = pb::PersonalClientServiceDeleteRequest { id: held[0].clone() };
    api.delete(authed(revoke, &alice)).await.unwrap();
    api.create(authed(create_request("a replacement"), &alice)).await.expect("a revoked credential frees its place");
    server.stop().await;
}

async fn the_defaults_limit_abuse(db: TestDb) {
    let credentials = db.config_with_abuse_limits().credentials;
    assert_eq!(credentials.max_clients_per_user, CountLimit(Some(100)));
    assert_eq!(credentials.create_rate_per_user, rate("30/min"));
    assert_eq!(credentials.exchange_rate_per_client, rate("10/s"));
    assert_eq!(credentials.exchange_rate_per_source, rate("100/s"));
}
