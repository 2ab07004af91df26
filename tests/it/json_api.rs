//! The JSON API on ConductorOne's routes, as curl or an SDK generated from the OpenAPI document
//! calls it: the proto3 JSON mapping of each method, and errors as `google.rpc.Status` under
//! the HTTP status of their code. The answers are checked against the same calls over gRPC.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::common::{
    TestDb, TestServer, authed, create_request,
    oauth::{HttpResponse, http, key_from_secret, post_token, sdk_assertion, token_form},
};
use personal_clients::{config::CountLimit, pb::iam as pb, rate::RateLimit};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        every_method_answers_as_grpc_does,
        updates_take_field_masks_timestamps_and_either_field_name,
        errors_are_statuses_under_the_http_status_of_their_code,
        a_revoked_credentials_token_is_refused_over_json_at_once,
    ));
    trials.extend(tests_on!(Sqlite:
        unknown_fields_are_refused_by_name_with_what_is_allowed,
        echoed_input_is_cut_as_grpc_cuts_it,
        malformed_values_say_what_form_is_expected,
        query_parameters_are_the_request_fields_outside_path_and_body,
        the_path_names_the_client_to_update,
        rate_limits_and_quotas_count_json_and_grpc_calls_together,
        bodies_beyond_the_limit_are_refused_as_statuses,
        json_calls_are_counted_by_method_code_and_protocol,
        the_openapi_document_describes_every_route_from_the_contract,
    ));
    trials
}

const CLIENTS: &str = "/api/v1/iam/personal_clients";
const SEARCH: &str = "/api/v1/search/iam/personal_clients";

/// One JSON call, as curl sends it with `-H 'Content-Type: application/json'`.
pub async fn call(server: &TestServer, method: &str, path: &str, token: Option<&str>, body: &str) -> HttpResponse {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    http(server.addr, method, path, &headers, body).await
}

/// The answer's JSON body, after checking it is a 200 with a JSON content type.
fn ok(response: &HttpResponse) -> Value {
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"), "answers carry credentials");
    response.json()
}

/// The `google.rpc.Status` of an error answer, after checking its HTTP status and gRPC code.
fn status(response: &HttpResponse, http_status: u16, code: i64) -> Value {
    assert_eq!(response.status, http_status, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    let keys: BTreeSet<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["code", "message", "details"]), "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    body
}

/// The field violations of an INVALID_ARGUMENT status, as (field, description).
fn violations(body: &Value) -> Vec<(String, String)> {
    let details = body["details"].as_array().unwrap();
    let bad_request = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap_or_else(|| panic!("no BadRequest detail: {body}"));
    bad_request["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["field"].as_str().unwrap().to_owned(), v["description"].as_str().unwrap().to_owned()))
        .collect()
}

/// An RFC 3339 timestamp in UTC (`Z`), as the mapping writes it.
fn timestamp(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"));
    assert!(text.ends_with('Z'), "timestamps are written in UTC: {text}");
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn from_pb(ts: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.as_ref().map(|ts| DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap()).unwrap())
}

/// A client in JSON is the client over gRPC: every field, by its lowerCamelCase name; repeated
/// fields present even when empty, timestamps present exactly when set.
fn assert_same_client(json: &Value, grpc: &pb::PersonalClient) {
    assert_eq!(json["id"], grpc.id.as_str());
    assert_eq!(json["clientId"], grpc.client_id.as_str());
    assert_eq!(json["displayName"], grpc.display_name.as_str());
    assert_eq!(json["userId"], grpc.user_id.as_str());
    assert_eq!(json["allowSourceCidr"], json!(grpc.allow_source_cidr));
    assert_eq!(json["scopedRoles"], json!(grpc.scoped_roles));
    for (name, value) in [
        ("expiresTime", &grpc.expires_time),
        ("lastUsedAt", &grpc.last_used_at),
        ("createdAt", &grpc.created_at),
        ("updatedAt", &grpc.updated_at),
        ("deletedAt", &grpc.deleted_at),
    ] {
        assert_eq!(json.get(name).map(timestamp), from_pb(value), "{name}: {json}");
    }
    let names: BTreeSet<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    let expected = [
        "id",
        "clientId",
        "displayName",
        "userId",
        "allowSourceCidr",
        "scopedRoles",
        "expiresTime",
        "lastUsedAt",
        "createdAt",
        "updatedAt",
        "deletedAt",
    ];
    assert!(names.iter().all(|name| expected.contains(name)), "only the contract's fields: {json}");
}

async fn every_method_answers_as_grpc_does(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, admin) = (server.token("alice", &["admin"]).await, server.token("root", &["admin"]).await);
    let mut grpc = server.client().await;
    let get = |id: &str| pb::PersonalClientServiceGetRequest { id: id.to_owned() };

    let body = json!({
        "displayName": "laptop",
        "allowSourceCidr": ["10.1.2.3/8", "2001:db8::1"],
        "expires": "86400s",
        "scopedRoles": ["admin"],
    });
    let created = ok(&call(&server, "POST", CLIENTS, Some(&alice), &body.to_string()).await);
    assert!(created["clientSecret"].as_str().unwrap().starts_with("secret-token:personal-clients:v1:"));
    let client = &created["client"];
    let id = client["id"].as_str().unwrap().to_owned();
    let over_grpc = grpc.get(authed(get(&id), &alice)).await.unwrap().into_inner().client.unwrap();
    assert_same_client(client, &over_grpc);
    assert_eq!(client["allowSourceCidr"], json!(["10.0.0.0/8", "2001:db8::1/128"]), "canonical, as over gRPC");
    let lifetime = timestamp(&client["expiresTime"]) - timestamp(&client["createdAt"]);
    assert!((lifetime.num_seconds() - 86_400).abs() <= 1, "expires is a duration in seconds: {lifetime}");
    assert!(client.get("lastUsedAt").is_none() && client.get("deletedAt").is_none(), "unset: left out");

    let fetched = ok(&call(&server, "GET", &format!("{CLIENTS}/{id}"), Some(&alice), "").await);
    assert_same_client(&fetched["client"], &over_grpc);

    for n in 0..4 {
        call(&server, "POST", CLIENTS, Some(&alice), &json!({ "displayName": format!("key {n}") }).to_string()).await;
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page =
            ok(&call(&server, "GET", &format!("{CLIENTS}?pageSize=2&pageToken={token}"), Some(&alice), "").await);
        pages += 1;
        let grpc_page = grpc
            .list(authed(pb::PersonalClientServiceListRequest { page_size: 2, page_token: token.clone() }, &alice))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page["list"].as_array().unwrap().len(), grpc_page.list.len());
        for (json, grpc) in page["list"].as_array().unwrap().iter().zip(&grpc_page.list) {
            assert_same_client(json, grpc);
        }
        assert_eq!(page["nextPageToken"], grpc_page.next_page_token.as_str(), "present even when empty");
        listed.extend(page["list"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        token = grpc_page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!((listed.len(), pages), (5, 3));

    let search = json!({ "query": "lapt", "users": [{ "id": "alice" }], "pageSize": 10 });
    let found = ok(&call(&server, "POST", SEARCH, Some(&admin), &search.to_string()).await);
    assert_eq!(found["list"].as_array().unwrap().len(), 1, "{found}");
    assert_same_client(&found["list"][0], &over_grpc);
    assert_eq!(found["nextPageToken"], "");

    let update = json!({ "client": { "displayName": "old laptop" }, "updateMask": "displayName" });
    let updated = ok(&call(&server, "POST", &format!("{CLIENTS}/{id}"), Some(&alice), &update.to_string()).await);
    let over_grpc = grpc.get(authed(get(&id), &alice)).await.unwrap().into_inner().client.unwrap();
    assert_eq!(over_grpc.display_name, "old laptop");
    assert_same_client(&updated["client"], &over_grpc);

    let deleted = call(&server, "DELETE", &format!("{CLIENTS}/{id}"), Some(&alice), "").await;
    assert_eq!(ok(&deleted), json!({}));
    let gone = grpc.get(authed(get(&id), &alice)).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let search = json!({ "query": "laptop", "includeDeleted": true });
    let found = ok(&call(&server, "POST", SEARCH, Some(&admin), &search.to_string()).await);
    assert!(timestamp(&found["list"][0]["deletedAt"]) <= Utc::now(), "{found}");
    server.stop().await;
}

async fn updates_take_field_masks_timestamps_and_either_field_name(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["a", "b"]).await;
    let created =
        ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "ci", "scopedRoles": ["a"]}"#).await);
    let path = format!("{CLIENTS}/{}", created["client"]["id"].as_str().unwrap());

    // The mask names what changes: scopedRoles is in the body but not in the mask.
    let expires =
        (Utc::now() + chrono::Duration::days(30)).with_timezone(&chrono::FixedOffset::east_opt(7200).unwrap());
    let update = json!({
        "client": { "displayName": "ci runner", "expiresTime": expires.to_rfc3339(), "scopedRoles": [] },
        "updateMask": "displayName,expiresTime",
    });
    let updated = ok(&call(&server, "POST", &path, Some(&alice), &update.to_string()).await)["client"].clone();
    assert_eq!(updated["displayName"], "ci runner");
    assert_eq!(updated["scopedRoles"], json!(["a"]), "not in the mask: unchanged");
    let written = timestamp(&updated["expiresTime"]);
    assert!((written - expires.with_timezone(&Utc)).num_milliseconds().abs() < 1, "{written} vs {expires}");

    // Proto field names are accepted in, as the mapping requires; answers use JSON names.
    let update = json!({ "client": { "display_name": "ci box", "scoped_roles": ["b"] }, "update_mask": "displayName,scopedRoles" });
    let updated = ok(&call(&server, "POST", &path, Some(&alice), &update.to_string()).await)["client"].clone();
    assert_eq!((updated["displayName"].clone(), updated["scopedRoles"].clone()), (json!("ci box"), json!(["b"])));

    let update = json!({ "client": { "displayName": "x" }, "updateMask": "displayName,userId" });
    let refused = call(&server, "POST", &path, Some(&alice), &update.to_string()).await;
    let body = status(&refused, 400, 3);
    assert_eq!(violations(&body)[0].0, "update_mask.paths[1]", "{body}");
    server.stop().await;
}

async fn errors_are_statuses_under_the_http_status_of_their_code(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, bob) = (server.token("alice", &[]).await, server.token("bob", &[]).await);
    let created = ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "mine"}"#).await);
    let mine = format!("{CLIENTS}/{}", created["client"]["id"].as_str().unwrap());

    let anonymous = call(&server, "GET", CLIENTS, None, "").await;
    status(&anonymous, 401, 16);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"), "RFC 6750 §3: a challenge");
    let forged = call(&server, "GET", CLIENTS, Some("e30.e30.c2ln"), "").await;
    status(&forged, 401, 16);
    assert_eq!(
        forged.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token", error_description="the access token is invalid, expired or revoked""#)
    );
    // Credentials of another scheme are not a bearer token (RFC 6750 §3.1).
    let basic = [("Authorization", "Basic Zm9vOmJhcg==")];
    let other_scheme = http(server.addr, "GET", CLIENTS, &basic, "").await;
    status(&other_scheme, 401, 16);
    let challenge = other_scheme.header("www-authenticate").unwrap();
    assert!(challenge.starts_with(r#"Bearer error="invalid_request""#), "{challenge}");

    let body = status(
        &call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "x", "scopedRoles": ["admin"]}"#).await,
        403,
        7,
    );
    assert!(body["message"].as_str().unwrap().contains("you do not hold: admin"), "{body}");
    let refused = call(&server, "POST", SEARCH, Some(&alice), "{}").await;
    let body = status(&refused, 403, 7);
    assert!(body["message"].as_str().unwrap().contains("admin"), "{body}");
    // RFC 6750 §3: a token that does not grant the call is challenged for its scope.
    let challenge = refused.header("www-authenticate").unwrap();
    assert!(challenge.starts_with(r#"Bearer error="insufficient_scope""#), "{challenge}");
    status(&call(&server, "GET", &mine, Some(&bob), "").await, 404, 5);
    status(&call(&server, "DELETE", &mine, Some(&bob), "").await, 404, 5);
    let body = status(&call(&server, "GET", &format!("{CLIENTS}/not-a-uuid"), Some(&alice), "").await, 400, 3);
    assert_eq!(violations(&body)[0].0, "id");

    let bad = json!({ "displayName": "", "allowSourceCidr": ["10.0.0.0/8", "10.0.0.1/33"] });
    let body = status(&call(&server, "POST", CLIENTS, Some(&alice), &bad.to_string()).await, 400, 3);
    let fields: Vec<String> = violations(&body).into_iter().map(|(field, _)| field).collect();
    assert_eq!(fields, ["display_name", "allow_source_cidr[1]"], "every violation, as over gRPC: {body}");

    let wrong_verb = call(&server, "PUT", CLIENTS, Some(&alice), "{}").await;
    status(&wrong_verb, 405, 12);
    assert_eq!(wrong_verb.header("allow"), Some("GET, HEAD, POST"));
    let body = status(&call(&server, "GET", "/api/v1/iam/personal_client", Some(&alice), "").await, 404, 5);
    assert!(body["message"].as_str().unwrap().contains("/openapi.json"), "{body}");

    // As over gRPC, a caller without a valid token learns only that, whatever else is wrong.
    let body = status(&call(&server, "POST", CLIENTS, None, r#"{"nope": 1}"#).await, 401, 16);
    assert!(!body["message"].as_str().unwrap().contains("nope"), "{body}");
    status(&call(&server, "GET", &format!("{CLIENTS}?limit=1"), Some("e30.e30.c2ln"), "").await, 401, 16);

    // Percent-decoded values must be UTF-8, in the path as in the query.
    let body = status(&call(&server, "GET", &format!("{CLIENTS}/%C3"), Some(&alice), "").await, 400, 3);
    assert_eq!(violations(&body)[0].0, "id");
    let body = status(&call(&server, "GET", &format!("{CLIENTS}?pageToken=%FF"), Some(&alice), "").await, 400, 3);
    assert_eq!(violations(&body)[0].0, "pageToken");

    // A body where none is taken is a mistake, not something to ignore.
    let body = status(&call(&server, "GET", &mine, Some(&alice), r#"{"id": "x"}"#).await, 400, 3);
    assert_eq!(violations(&body)[0].0, "body");
    server.stop().await;
}

async fn a_revoked_credentials_token_is_refused_over_json_at_once(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let created = ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "script"}"#).await);
    let client_id = created["client"]["clientId"].as_str().unwrap();
    let key = key_from_secret(created["clientSecret"].as_str().unwrap());
    let issued = post_token(server.addr, &token_form(client_id, &sdk_assertion(&key, client_id)), &[]).await;
    let token = issued.json()["access_token"].as_str().unwrap().to_owned();
    ok(&call(&server, "GET", CLIENTS, Some(&token), "").await);

    // Such a token reads; it may not create, change or revoke.
    let path = format!("{CLIENTS}/{}", created["client"]["id"].as_str().unwrap());
    status(&call(&server, "POST", CLIENTS, Some(&token), r#"{"displayName": "spawned"}"#).await, 403, 7);
    status(&call(&server, "DELETE", &path, Some(&token), "").await, 403, 7);

    ok(&call(&server, "DELETE", &path, Some(&alice), "").await);
    status(&call(&server, "GET", CLIENTS, Some(&token), "").await, 401, 16);
    server.stop().await;
}

async fn unknown_fields_are_refused_by_name_with_what_is_allowed(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let body =
        status(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "x", "name": "y"}"#).await, 400, 3);
    let (field, description) = violations(&body).remove(0);
    assert_eq!(field, "name");
    assert!(description.contains("displayName, allowSourceCidr, expires, scopedRoles"), "{description}");

    let created = ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "x"}"#).await);
    let path = format!("{CLIENTS}/{}", created["client"]["id"].as_str().unwrap());
    let update = r#"{"client": {"displayName": "y", "owner": "bob"}, "updateMask": "displayName"}"#;
    let body = status(&call(&server, "POST", &path, Some(&alice), update).await, 400, 3);
    let (field, description) = violations(&body).remove(0);
    assert_eq!(field, "client.owner");
    assert!(description.contains("c1.api.iam.v1.PersonalClient, which has id, clientId"), "{description}");
    let still = ok(&call(&server, "GET", &path, Some(&alice), "").await);
    assert_eq!(still["client"]["displayName"], "x", "nothing of a refused request is written");
    server.stop().await;
}

async fn echoed_input_is_cut_as_grpc_cuts_it(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let created = ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "x"}"#).await);
    let path = format!("{CLIENTS}/{}", created["client"]["id"].as_str().unwrap());
    let long = "x".repeat(50_000);
    let head = "x".repeat(64);
    let cut = format!("{head}… (50000 characters)");
    // What each answer names or repeats, and what it must say in its place.
    let cases = [
        ("POST", CLIENTS.to_owned(), json!({ &long: 1 }).to_string(), cut.clone()),
        ("POST", path.clone(), json!({ "client": { &long: 1 } }).to_string(), format!("client.{head}")),
        (
            "POST",
            CLIENTS.to_owned(),
            json!({ "displayName": "x", "allowSourceCidr": &long }).to_string(),
            format!("{head}\"… (50000"),
        ),
        // A query within the head's limit, --max-header-bytes.
        ("GET", format!("{CLIENTS}?{}=1", &long[..10_000]), String::new(), format!("{head}… (10000 characters)")),
        ("GET", format!("{CLIENTS}?pageSize={}", &long[..10_000]), String::new(), format!("{head}\"… (10000")),
    ];
    for (method, path, body, says) in cases {
        let answer = call(&server, method, &path, Some(&alice), &body).await;
        let status = status(&answer, 400, 3);
        assert!(answer.body.len() < 1_000, "{} bytes: {}", answer.body.len(), &answer.body[..1_000]);
        let (field, description) = violations(&status).remove(0);
        assert!(field.contains(&says) || description.contains(&says), "{field}: {description}");
    }
    let answer = call(&server, &long[..3_000].to_uppercase(), CLIENTS, Some(&alice), "").await;
    assert_eq!(answer.status, 405, "{}", &answer.body[..200.min(answer.body.len())]);
    assert!(answer.body.len() < 1_000 && answer.body.contains("… (3000 characters)"), "{}", answer.body.len());
    server.stop().await;
}

async fn malformed_values_say_what_form_is_expected(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    let cases = [
        (r#"{"displayName": "x", "expires": "1h"}"#, "expires", "\"3600s\""),
        (r#"{"displayName": "x", "scopedRoles": "admin"}"#, "scopedRoles", "expected a list"),
        (r#"{"displayName": 7}"#, "displayName", "expected a string"),
        ("displayName=x", "body", "read as JSON"),
        (r#"{"displayName": "x""#, "body", "EOF"),
    ];
    for (sent, field, says) in cases {
        let mut headers = vec![("Authorization", format!("Bearer {alice}"))];
        if sent.starts_with('{') {
            headers.push(("Content-Type", "application/json".to_owned()));
        } else {
            headers.push(("Content-Type", "application/x-www-form-urlencoded".to_owned()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = http(server.addr, "POST", CLIENTS, &headers, sent).await;
        let body = status(&answer, 400, 3);
        let violation = violations(&body).remove(0);
        assert_eq!(violation.0, field, "{sent}: {body}");
        assert!(violation.1.contains(says), "{sent}: {body}");
    }
    // curl -d sends a form's content type; a JSON body is read as JSON all the same.
    let headers = [("Authorization", format!("Bearer {alice}"))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let answer = http(server.addr, "POST", CLIENTS, &headers, r#"{"displayName": "from curl"}"#).await;
    assert_eq!(ok(&answer)["client"]["displayName"], "from curl");
    server.stop().await;
}

async fn query_parameters_are_the_request_fields_outside_path_and_body(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    for n in 0..3 {
        call(&server, "POST", CLIENTS, Some(&alice), &json!({ "displayName": format!("k{n}") }).to_string()).await;
    }
    let page = ok(&call(&server, "GET", &format!("{CLIENTS}?page_size=2"), Some(&alice), "").await);
    assert_eq!(page["list"].as_array().unwrap().len(), 2, "proto names too");

    let refusals = [
        (format!("{CLIENTS}?pageSize=2&limit=5"), "limit", "it takes pageSize, pageToken"),
        (format!("{CLIENTS}?pageSize=two"), "pageSize", "\"two\" is not a valid int32"),
        (format!("{CLIENTS}?pageSize=1&page_size=2"), "page_size", "more than once"),
        (format!("{CLIENTS}?pageSize=-1"), "page_size", "1-500"),
        (format!("{CLIENTS}?pageToken=forged"), "page_token", ""),
    ];
    for (path, field, says) in refusals {
        let body = status(&call(&server, "GET", &path, Some(&alice), "").await, 400, 3);
        let violation = violations(&body).remove(0);
        assert_eq!(violation.0, field, "{path}: {body}");
        assert!(violation.1.contains(says), "{path}: {body}");
    }
    // A body carries every field of a Create: the query carries none.
    let body = status(&call(&server, "POST", &format!("{CLIENTS}?displayName=x"), Some(&alice), "{}").await, 400, 3);
    assert!(violations(&body)[0].1.contains("takes none"), "{body}");
    server.stop().await;
}

async fn the_path_names_the_client_to_update(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let (alice, bob) = (server.token("alice", &[]).await, server.token("bob", &[]).await);
    let mine = ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "mine"}"#).await);
    let theirs = ok(&call(&server, "POST", CLIENTS, Some(&bob), r#"{"displayName": "theirs"}"#).await);
    let (mine, theirs) = (mine["client"]["id"].as_str().unwrap(), theirs["client"]["id"].as_str().unwrap());

    let same = json!({ "client": { "id": mine, "displayName": "renamed" } });
    ok(&call(&server, "POST", &format!("{CLIENTS}/{mine}"), Some(&alice), &same.to_string()).await);
    let other = json!({ "client": { "id": theirs, "displayName": "hijacked" } });
    let body =
        status(&call(&server, "POST", &format!("{CLIENTS}/{mine}"), Some(&alice), &other.to_string()).await, 400, 3);
    assert_eq!(violations(&body)[0].0, "client.id");
    let theirs_now = ok(&call(&server, "GET", &format!("{CLIENTS}/{theirs}"), Some(&bob), "").await);
    assert_eq!(theirs_now["client"]["displayName"], "theirs");
    let mine_now = ok(&call(&server, "GET", &format!("{CLIENTS}/{mine}"), Some(&alice), "").await);
    assert_eq!(mine_now["client"]["displayName"], "renamed");
    server.stop().await;
}

async fn rate_limits_and_quotas_count_json_and_grpc_calls_together(db: TestDb) {
    let mut config = db.config();
    config.credentials.create_rate_per_user = "3/min".parse::<RateLimit>().unwrap();
    config.credentials.max_clients_per_user = CountLimit(Some(10));
    let server = TestServer::start(config).await;
    let alice = server.token("alice", &[]).await;
    let mut grpc = server.client().await;
    for n in 0..2 {
        grpc.create(authed(create_request(&format!("grpc {n}")), &alice)).await.unwrap();
    }
    ok(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "json"}"#).await);
    let refused = call(&server, "POST", CLIENTS, Some(&alice), r#"{"displayName": "one too many"}"#).await;
    let body = status(&refused, 429, 8);
    assert!(body["message"].as_str().unwrap().contains("3/min"), "{body}");
    let retry =
        body["details"].as_array().unwrap().iter().find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo");
    let delay = retry.unwrap_or_else(|| panic!("RetryInfo: {body}"))["retryDelay"].as_str().unwrap().to_owned();
    assert!(delay.ends_with('s'), "a Duration in JSON: {delay}");
    let seconds: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    server.stop().await;

    let mut config = db.config();
    config.credentials.max_clients_per_user = CountLimit(Some(2));
    let server = TestServer::start(config).await;
    let bob = server.token("bob", &[]).await;
    let mut grpc = server.client().await;
    grpc.create(authed(create_request("grpc"), &bob)).await.unwrap();
    ok(&call(&server, "POST", CLIENTS, Some(&bob), r#"{"displayName": "json"}"#).await);
    let body = status(&call(&server, "POST", CLIENTS, Some(&bob), r#"{"displayName": "third"}"#).await, 429, 8);
    assert!(body["message"].as_str().unwrap().contains("you hold 2 credentials"), "{body}");
    server.stop().await;
}

async fn bodies_beyond_the_limit_are_refused_as_statuses(db: TestDb) {
    let mut config = db.config();
    config.serving.max_request_bytes = 1024;
    let server = TestServer::start(config).await;
    let alice = server.token("alice", &[]).await;
    let big = json!({ "displayName": "x".repeat(2000) }).to_string();
    let refused = call(&server, "POST", CLIENTS, Some(&alice), &big).await;
    let body = status(&refused, 413, 8);
    assert!(body["message"].as_str().unwrap().contains("1024 bytes"), "{body}");
    assert_eq!(server.calls_over("Create", "RESOURCE_EXHAUSTED", "http").await, 1.0, "refusals are counted too");
    let listed = ok(&call(&server, "GET", CLIENTS, Some(&alice), "").await);
    assert_eq!(listed["list"], json!([]), "nothing written");
    server.stop().await;
}

async fn json_calls_are_counted_by_method_code_and_protocol(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &[]).await;
    ok(&call(&server, "GET", CLIENTS, Some(&alice), "").await);
    ok(&call(&server, "GET", CLIENTS, Some(&alice), "").await);
    status(&call(&server, "GET", CLIENTS, None, "").await, 401, 16);
    status(&call(&server, "POST", CLIENTS, Some(&alice), r#"{"nope": 1}"#).await, 400, 3);
    assert_eq!(server.calls_over("List", "OK", "http").await, 2.0);
    assert_eq!(server.calls_over("List", "UNAUTHENTICATED", "http").await, 1.0);
    assert_eq!(server.calls_over("Create", "INVALID_ARGUMENT", "http").await, 1.0);
    assert_eq!(server.calls_over("List", "OK", "grpc").await, 0.0, "a JSON call is not also a gRPC call");

    // A gRPC client on a JSON path is told UNIMPLEMENTED, as for any path no method has, and
    // counted once, as gRPC.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<pb::PersonalClientServiceListRequest, pb::PersonalClientServiceListResponse>::default(
        );
    let path = http::uri::PathAndQuery::from_static("/api/v1/iam/personal_clients");
    let answer = grpc.unary(authed(pb::PersonalClientServiceListRequest::default(), &alice), path, codec).await;
    assert_eq!(answer.unwrap_err().code(), tonic::Code::Unimplemented);
    let page = server.metrics().await;
    let unknown = r#"personal_clients_grpc_requests_total{code="UNIMPLEMENTED",method="unknown",protocol="grpc"}"#;
    assert_eq!(crate::common::sample(&page, unknown), Some(1.0), "{page}");
    assert_eq!(server.calls_over("List", "OK", "http").await, 2.0);
    let page = server.metrics().await;
    let timed = r#"personal_clients_grpc_request_duration_seconds_count{method="/c1.api.iam.v1.PersonalClientService/List",protocol="http"}"#;
    assert_eq!(crate::common::sample(&page, timed), Some(3.0), "{page}");
    server.stop().await;
}

async fn the_openapi_document_describes_every_route_from_the_contract(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let answer = http(server.addr, "GET", "/openapi.json", &[], "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let document = answer.json();
    assert_eq!(document["openapi"], "3.0.3");
    let operations = [
        ("post", CLIENTS, "c1.api.iam.v1.PersonalClientService.Create"),
        ("get", CLIENTS, "c1.api.iam.v1.PersonalClientService.List"),
        ("get", "/api/v1/iam/personal_clients/{id}", "c1.api.iam.v1.PersonalClientService.Get"),
        // OpenAPI takes paths that differ only in a variable's name for one path: Update's
        // `{client.id}` is written `{id}`, as in ConductorOne's own document.
        ("post", "/api/v1/iam/personal_clients/{id}", "c1.api.iam.v1.PersonalClientService.Update"),
        ("delete", "/api/v1/iam/personal_clients/{id}", "c1.api.iam.v1.PersonalClientService.Delete"),
        ("post", SEARCH, "c1.api.iam.v1.PersonalClientSearchService.Search"),
    ];
    let mut count = 0;
    for (verb, path, id) in operations {
        let operation = &document["paths"][path][verb];
        assert_eq!(operation["operationId"], id, "{path} {verb}: {operation}");
        assert_eq!(operation["security"], json!([{ "bearerAuth": [] }]));
        assert_eq!(
            operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/google.rpc.Status"
        );
        count += 1;
    }
    let total: usize = document["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(total, count, "no route beyond the contract's");

    let list = &document["paths"][CLIENTS]["get"]["parameters"];
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pageSize", "pageToken"]);
    assert_eq!(list[0]["schema"], json!({ "type": "integer", "format": "int32" }));
    let update = &document["paths"]["/api/v1/iam/personal_clients/{id}"]["post"]["parameters"][0];
    assert_eq!(
        (update["name"].as_str(), update["in"].as_str(), update["required"].as_bool()),
        (Some("id"), Some("path"), Some(true))
    );

    let schemas = &document["components"]["schemas"];
    let client = &schemas["c1.api.iam.v1.PersonalClient"];
    assert!(
        client["description"].as_str().unwrap().starts_with("A personal client credential"),
        "from the proto comment"
    );
    assert_eq!(client["properties"]["expiresTime"]["type"], "string");
    assert_eq!(client["properties"]["expiresTime"]["format"], "date-time");
    assert_eq!(client["properties"]["allowSourceCidr"]["type"], "array");
    let create = &schemas["c1.api.iam.v1.PersonalClientServiceCreateRequest"];
    assert_eq!(create["properties"]["expires"]["pattern"], "^-?[0-9]+(\\.[0-9]{1,9})?s$");
    assert_eq!(
        schemas["c1.api.iam.v1.PersonalClientServiceUpdateRequest"]["properties"]["updateMask"]["type"],
        "string"
    );
    assert_eq!(document["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");

    // Every reference leads somewhere.
    let mut refs = Vec::new();
    collect_refs(&document, &mut refs);
    assert!(refs.len() > 10);
    for reference in refs {
        let name = reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{reference}"));
        assert!(schemas.get(name).is_some(), "{reference} is not defined");
    }
    server.stop().await;
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                out.push(reference.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
