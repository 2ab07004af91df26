//! The services behind this one: token introspection (RFC 7662) over HTTP and gRPC for resource
//! servers, and Envoy's external authorization, called with a client generated from Envoy's own
//! protos. A revoked credential's token is refused by both at once.

use std::{collections::HashMap, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context, authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
};
use serde_json::{Value, json};
use tonic::Code;

use crate::common::{
    TestDb, TestServer, authed, create_request, eventually, mint,
    oauth::{HttpResponse as Http, http, key_from_secret, now, post_token, sdk_assertion, sign, token_form},
};
use personal_clients::pb::{
    auth::{IntrospectRequest, introspection_service_client::IntrospectionServiceClient},
    iam as pb,
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        introspection_tells_a_live_token_from_every_other,
        the_mesh_lets_live_tokens_through_with_the_callers_identity,
        an_identity_that_is_no_header_value_is_denied_not_written,
    ));
    trials.extend(tests_on!(Sqlite:
        introspection_is_for_resource_servers,
        identity_header_names_are_configurable,
    ));
    trials
}

/// A well-formed token of another issuer, signed by a key this service never had.
fn foreign_token() -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let claims = json!({"iss": "https://idp.example", "sub": "alice", "aud": "http://localhost", "iat": now(), "exp": now() + 600});
    sign(&key, &json!({"alg": "EdDSA", "kid": "k1"}), &claims)
}

async fn introspect(server: &TestServer, caller: Option<&str>, form: &str) -> Http {
    let bearer = caller.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    http(server.addr, "POST", "/auth/v1/introspect", &headers, form).await
}

async fn active(server: &TestServer, caller: &str, token: &str) -> Value {
    let answer = introspect(server, Some(caller), &format!("token={token}&token_type_hint=access_token")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    answer.json()
}

async fn introspection_tells_a_live_token_from_every_other(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let gateway = server.token("orders-api", &["resource-server"]).await;
    let alice = server.token("alice", &["reader"]).await;

    let answer = active(&server, &gateway, &alice).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!((answer["sub"].as_str(), answer["token_type"].as_str()), (Some("alice"), Some("Bearer")));
    assert_eq!(answer["roles"], json!(["reader"]));
    assert_eq!(answer["scope"], "reader");
    assert_eq!(
        (answer["iss"].as_str(), answer["aud"].clone()),
        (Some("http://localhost"), json!(["http://localhost"]))
    );
    let (iat, exp) = (answer["iat"].as_i64().unwrap(), answer["exp"].as_i64().unwrap());
    assert!(iat <= now() && exp - iat == 3600, "{answer}");
    assert!(answer.get("client_id").is_none(), "a user's own token: {answer}");

    let (client, _, token) = server.client_with_token(&alice, "mesh").await;
    let answer = active(&server, &gateway, &token).await;
    assert_eq!(
        (answer["active"].as_bool(), answer["client_id"].as_str()),
        (Some(true), Some(client.client_id.as_str()))
    );
    assert_eq!(answer["sub"], "alice");

    // Revoked a moment ago: inactive at once, and nothing else said.
    let mut api = server.client().await;
    api.delete(authed(pb::PersonalClientServiceDeleteRequest { id: client.id.clone() }, &alice)).await.unwrap();
    assert_eq!(active(&server, &gateway, &token).await, json!({ "active": false }));

    let short = mint(&server.config, "bob", &[], Duration::from_secs(3)).await;
    assert_eq!(active(&server, &gateway, &short).await["active"], true);
    eventually(Duration::from_secs(8), "the three-second token to expire", || async {
        active(&server, &gateway, &short).await == json!({ "active": false })
    })
    .await;
    for other in [foreign_token(), "not-a-token".to_owned(), format!("{alice}x")] {
        assert_eq!(active(&server, &gateway, &other).await, json!({ "active": false }), "{other}");
    }

    // The gRPC twin says the same.
    let mut grpc = IntrospectionServiceClient::new(server.channel().await);
    let ask =
        |token: &str| authed(IntrospectRequest { token: token.to_owned(), token_type_hint: String::new() }, &gateway);
    let live = grpc.introspect(ask(&alice)).await.unwrap().into_inner();
    assert!(live.active && live.sub == "alice" && live.roles == ["reader"] && live.exp > now(), "{live:?}");
    let revoked = grpc.introspect(ask(&token)).await.unwrap().into_inner();
    assert_eq!(revoked, Default::default(), "inactive, and nothing else");
    assert!(!grpc.introspect(ask(&foreign_token())).await.unwrap().into_inner().active);
    server.stop().await;
}

async fn introspection_is_for_resource_servers(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader"]).await;
    let answer = introspect(&server, Some(&alice), &format!("token={alice}")).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.json()["error"], "insufficient_scope");
    assert!(answer.header("www-authenticate").unwrap().starts_with(r#"Bearer error="insufficient_scope""#));
    let answer = introspect(&server, None, &format!("token={alice}")).await;
    assert_eq!((answer.status, answer.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(answer.json()["error"], "unauthorized", "RFC 6750 §3.1: no error code without credentials");
    let answer = introspect(&server, Some("e30.e30.c2ln"), &format!("token={alice}")).await;
    assert_eq!(answer.status, 401);
    assert!(answer.header("www-authenticate").unwrap().starts_with(r#"Bearer error="invalid_token""#));

    let gateway = server.token("orders-api", &["resource-server"]).await;
    let answer = introspect(&server, Some(&gateway), "token_type_hint=access_token").await;
    assert_eq!((answer.status, answer.json()["error"].as_str()), (400, Some("invalid_request")));

    let mut grpc = IntrospectionServiceClient::new(server.channel().await);
    let ask = |caller: &str| authed(IntrospectRequest { token: alice.clone(), token_type_hint: String::new() }, caller);
    assert_eq!(grpc.introspect(ask(&alice)).await.unwrap_err().code(), Code::PermissionDenied);
    let anonymous = tonic::Request::new(IntrospectRequest { token: alice.clone(), token_type_hint: String::new() });
    assert_eq!(grpc.introspect(anonymous).await.unwrap_err().code(), Code::Unauthenticated);
    server.stop().await;
}

/// A Check of a request with these headers, as Envoy sends it.
pub fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    host: "orders.internal".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The headers an allowing answer sets, and those it removes.
pub fn allowed(answer: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    assert_eq!(answer.status.as_ref().map(|s| s.code), Some(0), "{answer:?}");
    let Some(HttpResponse::OkResponse(ok)) = &answer.http_response else { panic!("no OK response: {answer:?}") };
    let set = ok
        .headers
        .iter()
        .map(|option| {
            // Set over any copy the caller sent, never beside it.
            assert_eq!(option.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD: {option:?}");
            let header = option.header.as_ref().unwrap();
            (header.key.clone(), header.value.clone())
        })
        .collect();
    let mut removed = ok.headers_to_remove.clone();
    removed.sort();
    (set, removed)
}

/// The HTTP status and `WWW-Authenticate` of a denial.
pub fn denied(answer: &CheckResponse) -> (i32, Option<String>) {
    assert_ne!(answer.status.as_ref().map(|s| s.code), Some(0), "{answer:?}");
    let Some(HttpResponse::DeniedResponse(denial)) = &answer.http_response else { panic!("no denial: {answer:?}") };
    let challenge = denial
        .headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .find(|header| header.key == "www-authenticate")
        .map(|header| header.value.clone());
    (denial.status.as_ref().unwrap().code, challenge)
}

async fn the_mesh_lets_live_tokens_through_with_the_callers_identity(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader", "writer"]).await;
    let mut mesh = AuthorizationClient::new(server.channel().await);
    let mut check = async |headers: &[(&str, &str)]| mesh.check(check_request(headers)).await.unwrap().into_inner();

    // The caller's own identity headers do not reach the service behind.
    let bearer = format!("Bearer {alice}");
    let answer = check(&[("authorization", &bearer), ("x-user-id", "root"), ("x-client-id", "forged")]).await;
    let (set, removed) = allowed(&answer);
    assert_eq!(
        set,
        HashMap::from([("x-user-id".into(), "alice".into()), ("x-user-roles".into(), "reader,writer".into())])
    );
    assert_eq!(removed, ["x-client-id"]);

    let (client, _, token) = server.client_with_token(&alice, "mesh").await;
    let client_bearer = format!("Bearer {token}");
    let (set, removed) = allowed(&check(&[("authorization", &client_bearer)]).await);
    assert_eq!(set["x-client-id"], client.client_id);
    assert_eq!(set["x-user-id"], "alice");
    assert!(removed.is_empty(), "{removed:?}");

    let (status, challenge) = denied(&check(&[]).await);
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")), "no token: a bare challenge");
    assert_eq!(
        denied(&check(&[("authorization", "Basic YWxpY2U6cHc=")]).await).1.unwrap(),
        r#"Bearer error="invalid_request", error_description="the authorization header is not a bearer token""#
    );
    let short = mint(&server.config, "bob", &[], Duration::from_secs(3)).await;
    let short_bearer = format!("Bearer {short}");
    allowed(&check(&[("authorization", &short_bearer)]).await);
    for token in [foreign_token(), "garbage".to_owned(), format!("{alice}x")] {
        let (status, challenge) = denied(&check(&[("authorization", &format!("Bearer {token}"))]).await);
        assert_eq!(status, 401);
        assert!(challenge.unwrap().starts_with(r#"Bearer error="invalid_token""#));
    }

    // Revoked a moment ago: the very next Check is a denial.
    let mut api = server.client().await;
    api.delete(authed(pb::PersonalClientServiceDeleteRequest { id: client.id.clone() }, &alice)).await.unwrap();
    assert_eq!(denied(&check(&[("authorization", &client_bearer)]).await).0, 401);

    // Envoy told to encode raw headers sends them as a list.
    let mut raw = check_request(&[]);
    let http = raw.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "authorization".into(),
            value: String::new(),
            raw_value: bearer.clone().into_bytes(),
        }],
    });
    allowed(&mesh.check(raw.clone()).await.unwrap().into_inner());
    // Two copies: a service behind might read the other one.
    let mut two = raw;
    let http = two.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    let forged = format!("Bearer {}", foreign_token());
    http.header_map.as_mut().unwrap().headers.push(HeaderValue {
        key: "Authorization".into(),
        value: forged,
        raw_value: Vec::new(),
    });
    assert_eq!(denied(&mesh.check(two).await.unwrap().into_inner()).0, 401);

    eventually(Duration::from_secs(8), "the three-second token to expire", || async {
        let answer = mesh.clone().check(check_request(&[("authorization", &short_bearer)])).await.unwrap().into_inner();
        matches!(answer.http_response, Some(HttpResponse::DeniedResponse(_)))
    })
    .await;
    server.stop().await;
}

/// An owner stored with a control character (written before such subjects were refused, or by
/// hand) exchanges live tokens, but its identity is never written into a header, where a CR LF
/// would end `x-user-id` and begin a header of its choosing: the check denies instead.
async fn an_identity_that_is_no_header_value_is_denied_not_written(db: TestDb) {
    use personal_clients::store::entity::personal_client::{self, Column};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};

    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader"]).await;
    let mut api = server.client().await;
    let created = api.create(authed(create_request("mesh"), &alice)).await.unwrap().into_inner();
    let (client, key) = (created.client.unwrap(), key_from_secret(&created.client_secret));
    let database = sea_orm::Database::connect(&db.url).await.unwrap();
    personal_client::Entity::update_many()
        .col_expr(Column::UserId, Expr::value("alice\r\nx-user-id: root"))
        .filter(Column::Id.eq(client.id.parse::<uuid::Uuid>().unwrap()))
        .exec(&database)
        .await
        .unwrap();
    let issued =
        post_token(server.addr, &token_form(&client.client_id, &sdk_assertion(&key, &client.client_id)), &[]).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let bearer = format!("Bearer {}", issued.json()["access_token"].as_str().unwrap());

    let mut mesh = AuthorizationClient::new(server.channel().await);
    let answer = mesh.check(check_request(&[("authorization", &bearer)])).await.unwrap().into_inner();
    let (status, challenge) = denied(&answer);
    assert_eq!(status, 401);
    assert!(challenge.unwrap().starts_with(r#"Bearer error="invalid_token""#));
    let written = format!("{answer:?}");
    assert!(!written.contains("x-user-id: root") && !written.contains("\\r\\n"), "{written}");
    server.stop().await;
}

async fn identity_header_names_are_configurable(db: TestDb) {
    let mut config = db.config();
    config.mesh.identity_user_header = "x-auth-subject".into();
    config.mesh.identity_client_header = "x-auth-client".into();
    config.mesh.identity_roles_header = "x-auth-roles".into();
    let server = TestServer::start(config).await;
    let alice = server.token("alice", &[]).await;
    let mut mesh = AuthorizationClient::new(server.channel().await);
    let bearer = format!("Bearer {alice}");
    let request = check_request(&[("authorization", &bearer), ("x-auth-roles", "admin")]);
    let (set, removed) = allowed(&mesh.check(request).await.unwrap().into_inner());
    assert_eq!(set, HashMap::from([("x-auth-subject".into(), "alice".into())]));
    assert_eq!(removed, ["x-auth-client", "x-auth-roles"], "a token without roles: the caller's copy goes");
    server.stop().await;
}
