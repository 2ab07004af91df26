//! Callers without a valid token of this service learn nothing but UNAUTHENTICATED. Each rule
//! of bearer verification is tested alone: a token that breaks only that rule, signed with the
//! service's real key, so a check that is skipped lets the call through and turns a test red.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use personal_clients::{
    auth,
    pb::iam::{self as pb, personal_client_search_service_client::PersonalClientSearchServiceClient},
    server,
};
use prost_types::FieldMask;
use serde_json::{Value, json};
use tonic::{Code, Request, metadata::MetadataValue};

use crate::common::{Backend, TestDb, TestServer, authed, create_request, mint, oauth};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = backend_tests!(
        bad_tokens_are_unauthenticated,
        each_bearer_rule_holds_alone,
        every_protected_method_needs_a_token,
        a_client_token_is_only_good_for_its_own_owner,
        signing_keys_can_be_sealed_at_rest,
        a_token_accepted_before_is_refused_once_expired,
    );
    trials.extend(tests_on!(Sqlite: several_authorization_headers_are_refused_on_every_surface));
    trials
}

/// Claims of a user token as this service mints them, for tests to break one at a time.
fn user_claims(sub: &str) -> Value {
    let now = oauth::now();
    json!({"iss": "http://localhost", "sub": sub, "aud": "http://localhost", "iat": now, "exp": now + 600,
           "jti": uuid::Uuid::now_v7().to_string(), "roles": ["reader"]})
}

fn signed(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
    let header = match kid {
        Some(kid) => json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
        None => json!({"alg": "EdDSA", "typ": "JWT"}),
    };
    oauth::sign(key, &header, claims)
}

async fn list_with(server: &TestServer, token: &str) -> Result<(), tonic::Status> {
    let mut client = server.client().await;
    client.list(authed(pb::PersonalClientServiceListRequest::default(), token)).await.map(drop)
}

async fn assert_unauthenticated(server: &TestServer, token: &str, why: &str) {
    let status = list_with(server, token).await.expect_err(why);
    assert_eq!(status.code(), Code::Unauthenticated, "{why}: {status:?}");
    assert_eq!(status.message(), "missing or invalid bearer token", "{why}: nothing else is revealed");
}

async fn bad_tokens_are_unauthenticated(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let mut client = server.client().await;
    let good = server.token("alice", &[]).await;

    // A token of another deployment: same issuer, different keys.
    let elsewhere = TestDb::new(Backend::Sqlite).await;
    server::migrate(&elsewhere.database_url(), &Default::default()).await.unwrap();
    let foreign = mint(&elsewhere.config(), "alice", &[], Duration::from_secs(600)).await;
    // A token of this deployment's keys for another issuer.
    let mut other_issuer = db.config();
    other_issuer.issuer.issuer = Some("https://idp.example".into());
    let wrong_iss = mint(&other_issuer, "alice", &[], Duration::from_secs(600)).await;
    let mut tampered = good.clone();
    tampered.insert_str(good.find('.').unwrap() + 1, "eyJzdWIiOiJtYWxsb3J5In0");
    let parts: Vec<&str> = good.split('.').collect();
    let unsigned = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);

    let headers = [
        None,
        Some("Bearer".to_owned()),
        Some(format!("Basic {good}")),
        Some("Bearer not.a.jwt".to_owned()),
        Some(format!("Bearer {foreign}")),
        Some(format!("Bearer {wrong_iss}")),
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

async fn each_bearer_rule_holds_alone(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let key = db.signing_key().await;
    let kid = key.kid.as_str();

    // The baseline passes: whatever is refused below is refused for the one thing changed.
    list_with(&server, &signed(&key.key, Some(kid), &user_claims("alice"))).await.expect("a well-made token");

    let stranger = SigningKey::from_bytes(&[9; 32]);
    assert_unauthenticated(&server, &signed(&stranger, Some(kid), &user_claims("alice")), "known kid, bad signature")
        .await;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = user_claims("alice");
        edit(&mut claims);
        signed(&key.key, Some(kid), &claims)
    };
    let now = oauth::now();
    let cases = [
        ("expired", with(&|c| c["exp"] = json!(now - 5))),
        ("another issuer", with(&|c| c["iss"] = json!("http://elsewhere"))),
        ("another audience", with(&|c| c["aud"] = json!("http://elsewhere"))),
        ("no subject", with(&|c| c["sub"] = json!(""))),
        ("no expiry", with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))),
    ];
    for (why, token) in cases {
        assert_unauthenticated(&server, &token, why).await;
    }
    assert_unauthenticated(&server, &signed(&key.key, Some("no-such-kid"), &user_claims("alice")), "unknown kid").await;
    assert_unauthenticated(&server, &signed(&key.key, None, &user_claims("alice")), "no kid").await;
    let parts: Vec<String> = signed(&key.key, Some(kid), &user_claims("alice")).split('.').map(str::to_owned).collect();
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        json!({"alg": "HS256", "kid": kid}).to_string(),
    );
    assert_unauthenticated(&server, &format!("{header}.{}.{}", parts[1], parts[2]), "another algorithm").await;
    let critical = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid, "crit": ["b64"], "b64": true});
    assert_unauthenticated(&server, &oauth::sign(&key.key, &critical, &user_claims("alice")), "a critical extension")
        .await;
    server.stop().await;
}

async fn every_protected_method_needs_a_token(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let mut api = server.client().await;
    let id = uuid::Uuid::now_v7().to_string();
    let update = pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient { id: id.clone(), display_name: "x".into(), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
    };
    let answers = [
        api.create(create_request("x")).await.map(drop),
        api.get(pb::PersonalClientServiceGetRequest { id: id.clone() }).await.map(drop),
        api.list(pb::PersonalClientServiceListRequest::default()).await.map(drop),
        api.update(update).await.map(drop),
        api.delete(pb::PersonalClientServiceDeleteRequest { id }).await.map(drop),
        PersonalClientSearchServiceClient::new(server.channel().await)
            .search(pb::PersonalClientSearchServiceSearchRequest::default())
            .await
            .map(drop),
    ];
    for (index, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap_err().code(), Code::Unauthenticated, "method {index}");
    }
    server.stop().await;
}

async fn a_client_token_is_only_good_for_its_own_owner(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let key = db.signing_key().await;
    let alice = server.token("alice", &["reader"]).await;
    let mut api = server.client().await;
    let created = api.create(authed(create_request("alice's"), &alice)).await.unwrap().into_inner();
    let client_id = created.client.unwrap().client_id;

    let mut claims = user_claims("alice");
    claims["client_id"] = json!(client_id);
    list_with(&server, &signed(&key.key, Some(&key.kid), &claims)).await.expect("alice's client, for alice");
    claims["sub"] = json!("bob");
    assert_unauthenticated(&server, &signed(&key.key, Some(&key.kid), &claims), "alice's client, claimed for bob")
        .await;
    claims["client_id"] = json!("quiet-moon-12345@localhost/pcc");
    assert_unauthenticated(&server, &signed(&key.key, Some(&key.kid), &claims), "a client that does not exist").await;
    server.stop().await;
}

/// Starting the service on `config` fails, naming `flag`.
async fn refused_start(config: personal_clients::config::Config, flag: &str) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = server::serve(config, listener, std::future::pending()).await.expect_err("the start is refused");
    assert!(err.to_string().contains(flag), "{err}");
}

async fn signing_keys_can_be_sealed_at_rest(db: TestDb) {
    // Keys made without a key-encryption key are stored as they are...
    let server = TestServer::start(db.config()).await;
    let before = server.token("alice", &[]).await;
    server.stop().await;
    let clear = db.signing_key().await;

    // ...and sealed at the next start with one.
    let dir = tempfile::tempdir().unwrap();
    let (kek, other) = (dir.path().join("kek"), dir.path().join("other"));
    std::fs::write(&kek, "7Jb4mQ0q3cY6zO4+6W8a4Xf6s2k0m3K9f9b1cQd8GkU=\n").unwrap();
    std::fs::write(&other, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let mut sealed_config = db.config();
    sealed_config.keys.key_encryption_key_file = Some(kek.clone());
    let server = TestServer::start(sealed_config.clone()).await;
    let store = personal_clients::store::Store::open(&db.database_url(), personal_clients::store::OpenMode::MustExist)
        .await
        .unwrap();
    let stored = store.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].material.windows(32).any(|w| w == clear.key.to_bytes()), "no longer in the clear");
    let mut api = server.client().await;
    let list = || pb::PersonalClientServiceListRequest::default();
    api.list(authed(list(), &before)).await.expect("tokens signed before still verify");
    let after = server.token("alice", &[]).await;
    api.list(authed(list(), &after)).await.expect("the sealed key signs");
    server.stop().await;

    // Without the key, or with another, nothing starts or mints.
    refused_start(db.config(), "--key-encryption-key-file").await;
    let mut wrong = db.config();
    wrong.keys.key_encryption_key_file = Some(other);
    refused_start(wrong, "--key-encryption-key-file").await;
    let config = db.config();
    let minted = auth::mint_token(
        &config.database.database_url,
        &config.keys,
        &config.issuer,
        "alice",
        &Default::default(),
        Duration::from_secs(60),
    )
    .await;
    assert!(minted.is_err_and(|err| err.to_string().contains("--key-encryption-key-file")));

    // With it, the service starts again and still accepts what it signed.
    let server = TestServer::start(sealed_config).await;
    server.client().await.list(authed(list(), &after)).await.expect("the same keys after a restart");
    server.stop().await;
}

/// A token verified once is remembered, but its expiry is checked on every call: accepted
/// until its `exp`, refused from then on.
async fn a_token_accepted_before_is_refused_once_expired(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let key = db.signing_key().await;
    let mut claims = user_claims("alice");
    let exp = oauth::now() + 2;
    claims["exp"] = json!(exp);
    let token = signed(&key.key, Some(&key.kid), &claims);
    list_with(&server, &token).await.expect("accepted before its expiry");
    list_with(&server, &token).await.expect("accepted again, as remembered");
    while oauth::now() < exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_unauthenticated(&server, &token, "expired after it was accepted").await;
    server.stop().await;
}

/// Two `Authorization` headers, each with a good token: which one a service behind would read is
/// anyone's guess, so the API over gRPC and JSON, introspection and the mesh's check all refuse
/// the request alike, and say why.
async fn several_authorization_headers_are_refused_on_every_surface(db: TestDb) {
    use crate::mesh::{allowed, check_request, denied};
    use envoy_types::pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::authorization_client::AuthorizationClient,
    };

    const SAID: &str = "more than one Authorization header";
    const CHALLENGE: &str = r#"Bearer error="invalid_request", error_description="more than one Authorization header""#;
    let server = TestServer::start(db.config()).await;
    let (alice, gateway) = (server.token("alice", &[]).await, server.token("orders-api", &["resource-server"]).await);
    let (one, other) = (format!("Bearer {alice}"), format!("Bearer {gateway}"));

    // gRPC.
    let mut client = server.client().await;
    let mut request = Request::new(pb::PersonalClientServiceListRequest::default());
    for value in [&one, &other] {
        request.metadata_mut().append("authorization", MetadataValue::try_from(value.as_str()).unwrap());
    }
    let status = client.list(request).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unauthenticated, SAID));
    assert!(list_with(&server, &alice).await.is_ok(), "one is enough");

    // The JSON API.
    let path = "/api/v1/iam/personal_clients";
    let answer = oauth::http(server.addr, "GET", path, &[("Authorization", &one), ("Authorization", &other)], "").await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.header("www-authenticate"), Some(CHALLENGE));
    assert_eq!((answer.json()["code"].as_i64(), answer.json()["message"].as_str()), (Some(16), Some(SAID)));
    assert_eq!(oauth::http(server.addr, "GET", path, &[("Authorization", &one)], "").await.status, 200);

    // Introspection over HTTP.
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let body = format!("token={alice}");
    let introspect = |headers: Vec<(&'static str, String)>| {
        let (addr, body) = (server.addr, body.clone());
        async move {
            let mut all: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            all.push(form);
            oauth::http(addr, "POST", "/auth/v1/introspect", &all, &body).await
        }
    };
    let answer = introspect(vec![("Authorization", other.clone()), ("Authorization", one.clone())]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.json(), json!({"error": "invalid_request", "error_description": SAID}));
    assert_eq!(answer.header("www-authenticate"), Some(CHALLENGE));
    assert_eq!(introspect(vec![("Authorization", other.clone())]).await.json()["active"], true);

    // The mesh's check: copies joined by commas in Envoy's header map, or listed raw.
    let mut mesh = AuthorizationClient::new(server.channel().await);
    let joined = format!("{one},{other}");
    let answer = mesh.check(check_request(&[("authorization", &joined)])).await.unwrap().into_inner();
    assert_eq!(denied(&answer), (401, Some(CHALLENGE.to_owned())));
    let mut raw = check_request(&[]);
    let http = raw.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    let copy = |value: &str| HeaderValue { key: "Authorization".into(), value: value.into(), raw_value: Vec::new() };
    http.header_map = Some(HeaderMap { headers: vec![copy(&one), copy(&other)] });
    assert_eq!(denied(&mesh.check(raw).await.unwrap().into_inner()), (401, Some(CHALLENGE.to_owned())));
    allowed(&mesh.check(check_request(&[("authorization", &one)])).await.unwrap().into_inner());
    server.stop().await;
}
