//! What standard OAuth machinery reads and sends: the authorization server metadata (RFC 8414)
//! and OpenID Connect discovery, RFC 9068 access tokens, forward authorization for proxies that
//! ask over HTTP, and leaked secrets reported for revocation, with the scanning rule the README
//! gives for them.

use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tonic::Code;

use crate::common::{
    TestDb, TestServer, authed, create_request,
    oauth::{HttpResponse as Http, http, key_from_secret, post_token, sdk_assertion, token_form, verify_with_jwks},
    sample,
};
use personal_clients::{pb::iam as pb, rate::RateLimit};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        forward_auth_answers_as_the_mesh_check_does,
        a_leaked_secret_revokes_its_credential_and_nothing_else,
    ));
    trials.extend(tests_on!(Sqlite:
        discovery_documents_point_at_the_endpoints,
        an_issuer_with_a_path_has_its_metadata_where_rfc_8414_puts_it,
        an_issuer_that_is_no_url_is_refused_before_the_server_starts,
        access_tokens_are_rfc_9068_jwts,
        reports_of_leaked_secrets_are_bounded_and_rate_limited,
        the_readmes_scanning_rule_finds_every_secret_and_nothing_else,
    ));
    trials
}

/// The header and claims of a compact JWS, unverified.
fn parts_of(token: &str) -> (Value, Value) {
    let mut parts = token.split('.').map(|part| URL_SAFE_NO_PAD.decode(part).unwrap());
    let header = serde_json::from_slice(&parts.next().unwrap()).unwrap();
    (header, serde_json::from_slice(&parts.next().unwrap()).unwrap())
}

async fn discovery_documents_point_at_the_endpoints(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let oauth = http(server.addr, "GET", "/.well-known/oauth-authorization-server", &[], "").await;
    let oidc = http(server.addr, "GET", "/.well-known/openid-configuration", &[], "").await;
    for answer in [&oauth, &oidc] {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("cache-control"), Some("public, max-age=3600"), "cacheable");
    }
    let metadata = oauth.json();
    assert_eq!(metadata, oidc.json(), "one document under both names");
    assert_eq!(metadata["issuer"], "http://localhost");
    assert_eq!(metadata["token_endpoint"], "http://localhost/auth/v1/token");
    assert_eq!(metadata["jwks_uri"], "http://localhost/.well-known/jwks.json");
    assert_eq!(metadata["introspection_endpoint"], "http://localhost/auth/v1/introspect");
    assert_eq!(metadata["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(metadata["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
    assert_eq!(metadata["token_endpoint_auth_signing_alg_values_supported"], json!(["EdDSA", "Ed25519"]));
    assert!(metadata["response_types_supported"].is_array());

    // The endpoints it names are the ones served (the host is the issuer's, the port this one).
    let path = |url: &Value| url.as_str().unwrap().strip_prefix("http://localhost").unwrap().to_owned();
    let user = server.token("alice", &[]).await;
    let mut api = server.client().await;
    let created = api.create(authed(create_request("discovered"), &user)).await.unwrap().into_inner();
    let client = created.client.unwrap();
    let assertion = sdk_assertion(&key_from_secret(&created.client_secret), &client.client_id);
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(token_form(&client.client_id, &assertion).iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let issued = http(server.addr, "POST", &path(&metadata["token_endpoint"]), &form_type, &form).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let token = issued.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(parts_of(&token).1["iss"], metadata["issuer"], "the issuer exactly as in iss");
    let jwks = http(server.addr, "GET", &path(&metadata["jwks_uri"]), &[], "").await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.json()["keys"].as_array().is_some_and(|keys| !keys.is_empty()));
    server.stop().await;
}

async fn an_issuer_with_a_path_has_its_metadata_where_rfc_8414_puts_it(db: TestDb) {
    let mut config = db.config();
    config.issuer.issuer = Some("https://iam.example.com/tenant/".into());
    let server = TestServer::start(config).await;
    let inserted = http(server.addr, "GET", "/.well-known/oauth-authorization-server/tenant", &[], "").await;
    assert_eq!(inserted.status, 200, "RFC 8414 §3.1: {}", inserted.body);
    let metadata = inserted.json();
    assert_eq!(metadata["issuer"], "https://iam.example.com/tenant/", "exactly as configured");
    assert_eq!(metadata["token_endpoint"], "https://iam.example.com/tenant/auth/v1/token");
    assert_eq!(metadata["jwks_uri"], "https://iam.example.com/tenant/.well-known/jwks.json");
    // Behind a proxy that strips the prefix, the appended forms arrive without it.
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"] {
        assert_eq!(http(server.addr, "GET", path, &[], "").await.json(), metadata, "{path}");
    }
    assert_eq!(parts_of(&server.token("alice", &[]).await).1["iss"], "https://iam.example.com/tenant/");
    server.stop().await;
}

async fn an_issuer_that_is_no_url_is_refused_before_the_server_starts(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let refused = crate::common::oauth::binary(dir.path())
        .args(["serve", "--database-url", &db.url, "--issuer", "personal-clients"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--issuer") && stderr.contains("is not a URL"), "{stderr}");

    // The default issuer is made of --public-host, and held to the same rule.
    let mut config = db.config();
    config.issuer.public_host = "a:b".into();
    let err = config.check().unwrap_err().to_string();
    assert!(err.contains("--public-host") && err.contains("set --issuer"), "{err}");
    config.issuer.public_host = "::1".into();
    assert_eq!(config.issuer.issuer(), "http://[::1]", "a bare IPv6 address in brackets");
    config.check().unwrap();

    // An issuer path that would read as a route pattern is served as written.
    let mut config = db.config();
    config.issuer.issuer = Some("https://example.com/:tenant/*".into());
    let server = TestServer::start(config).await;
    let inserted = http(server.addr, "GET", "/.well-known/oauth-authorization-server/:tenant/*", &[], "").await;
    assert_eq!(inserted.status, 200, "{}", inserted.body);
    assert_eq!(inserted.json()["issuer"], "https://example.com/:tenant/*");
    let other = http(server.addr, "GET", "/.well-known/oauth-authorization-server/other", &[], "").await;
    assert_eq!(other.status, 404);
    server.stop().await;
}

async fn access_tokens_are_rfc_9068_jwts(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let user = server.token("alice", &["reader", "writer"]).await;
    let (client, _, client_token) = server.client_with_token(&user, "typed").await;

    let (header, claims) = parts_of(&user);
    assert_eq!(header["typ"], "at+jwt", "RFC 9068 §2.1");
    assert_eq!(verify_with_jwks(server.addr, &user).await, claims);
    for name in ["iss", "sub", "aud", "exp", "iat", "jti"] {
        assert!(!claims[name].is_null(), "{name} in {claims}");
    }
    assert_eq!(claims["scope"], "reader writer", "space-separated, as introspection says");
    assert_eq!(claims["roles"], json!(["reader", "writer"]), "kept for the clients that read it");
    assert!(claims.get("client_id").is_none(), "a user's own token has no client: {claims}");

    let (header, claims) = parts_of(&client_token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(claims["client_id"], client.client_id.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "http://localhost");
    assert_eq!(claims["scope"], "reader writer", "no scoped roles: its owner's");
    server.stop().await;
}

/// The check as a proxy asks: `method` on `path` with `headers`.
async fn forward(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)]) -> Http {
    http(server.addr, method, path, headers, "").await
}

async fn forward_auth_answers_as_the_mesh_check_does(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader", "writer"]).await;
    let bearer = format!("Bearer {alice}");
    // Whatever a proxy sends along, with any method, under any path below the check's.
    let along: [(&str, &str); 5] = [
        ("Authorization", &bearer),
        ("X-Forwarded-Method", "DELETE"),
        ("X-Forwarded-Uri", "/admin/../%00?a=\"'<>"),
        ("X-Original-URI", "*"),
        ("x-user-id", "mallory"),
    ];
    for (method, path) in [
        ("GET", "/auth/v1/check"),
        ("POST", "/auth/v1/check"),
        ("DELETE", "/auth/v1/check/orders/7"),
        ("PATCH", "/auth/v1/check/"),
    ] {
        let answer = forward(&server, method, path, &along).await;
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
        assert_eq!(answer.header("x-user-id"), Some("alice"));
        assert_eq!(answer.header("x-user-roles"), Some("reader,writer"));
        assert_eq!(answer.header("x-client-id"), None, "a user's own token names no client");
        assert_eq!(answer.header("cache-control"), Some("no-store"));
    }

    // A body a proxy sends along is never read: not its size, nor one announced and never sent.
    let large = http(server.addr, "POST", "/auth/v1/check", &[("Authorization", &bearer)], &"x".repeat(200_000)).await;
    assert_eq!(large.status, 200, "{}", large.body);
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head =
        format!("POST /auth/v1/check HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nContent-Length: 10\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    let read = tokio::io::AsyncReadExt::read_exact(&mut socket, &mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("answered without the body").unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    let (client, _, token) = server.client_with_token(&alice, "proxied").await;
    let client_bearer = format!("Bearer {token}");
    for _ in 0..2 {
        let answer = forward(&server, "GET", "/auth/v1/check", &[("Authorization", &client_bearer)]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("x-client-id"), Some(client.client_id.as_str()));
        assert_eq!(answer.header("x-user-roles"), Some("reader,writer"));
    }

    let challenge = |answer: &Http| (answer.status, answer.header("www-authenticate").map(str::to_owned));
    let invalid_token = Some(
        r#"Bearer error="invalid_token", error_description="the access token is invalid, expired or revoked""#.into(),
    );
    assert_eq!(challenge(&forward(&server, "GET", "/auth/v1/check", &[]).await), (401, Some("Bearer".into())));
    let garbage = forward(&server, "GET", "/auth/v1/check", &[("Authorization", "Bearer not.a.token")]).await;
    assert_eq!(challenge(&garbage), (401, invalid_token.clone()));
    assert_eq!(garbage.json()["error"], "invalid_token");
    let basic = forward(&server, "GET", "/auth/v1/check", &[("Authorization", "Basic YTpi")]).await;
    assert_eq!(basic.status, 401);
    assert!(basic.header("www-authenticate").unwrap().contains("invalid_request"));
    let twice =
        forward(&server, "GET", "/auth/v1/check", &[("Authorization", &bearer), ("Authorization", &bearer)]).await;
    assert_eq!(twice.status, 401, "several Authorization headers are refused, as everywhere");
    assert!(twice.header("www-authenticate").unwrap().contains("more than one Authorization header"));

    // Revoked a moment ago: refused on the next request, though accepted (and remembered) before.
    let mut api = server.client().await;
    api.delete(authed(pb::PersonalClientServiceDeleteRequest { id: client.id.clone() }, &alice)).await.unwrap();
    let revoked = forward(&server, "GET", "/auth/v1/check", &[("Authorization", &client_bearer)]).await;
    assert_eq!(challenge(&revoked), (401, invalid_token));
    assert_eq!(revoked.header("x-user-id"), None, "no identity with a denial");
    let metrics = server.metrics().await;
    let checks = |outcome: &str| {
        sample(&metrics, &format!("personal_clients_forward_auth_checks_total{{outcome=\"{outcome}\"}}"))
    };
    assert_eq!((checks("allowed"), checks("denied")), (Some(8.0), Some(5.0)), "{metrics}");
    server.stop().await;
}

/// `POST /auth/v1/credentials/revoke` with `body`.
async fn report(server: &TestServer, body: &str) -> Http {
    let headers = [("Content-Type", "application/json"), ("User-Agent", "secret-scanner/1.0")];
    http(server.addr, "POST", "/auth/v1/credentials/revoke", &headers, body).await
}

/// A secret in the service's format whose key no credential has.
fn made_up_secret() -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()), "d": URL_SAFE_NO_PAD.encode(key.as_bytes()),
    });
    format!("secret-token:personal-clients:v1:{}", URL_SAFE_NO_PAD.encode(jwk.to_string()))
}

async fn a_leaked_secret_revokes_its_credential_and_nothing_else(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader"]).await;
    let (leaked, leaked_secret, leaked_token) = server.client_with_token(&alice, "leaked").await;
    let (kept, _, kept_token) = server.client_with_token(&alice, "kept").await;
    let mut api = server.client().await;
    let get = |id: &str, token: &str| authed(pb::PersonalClientServiceGetRequest { id: id.to_owned() }, token);
    api.get(get(&leaked.id, &leaked_token)).await.expect("the leaked secret's token works until reported");

    // Nothing but junk and secrets of no credential: the same answer, and nothing changes. The
    // public key alone is no proof: a secret with the leaked one's public key and another
    // private key revokes nothing.
    let jwk = |secret: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(secret.rsplit(':').next().unwrap()).unwrap()).unwrap()
    };
    let mut public_only = jwk(&made_up_secret());
    public_only["x"] = jwk(&leaked_secret)["x"].clone();
    let public_only = format!("secret-token:personal-clients:v1:{}", URL_SAFE_NO_PAD.encode(public_only.to_string()));
    let junk = json!({"credentials": [
        made_up_secret(), public_only, "secret-token:personal-clients:v1:AAAA", "hello", "\u{0}",
    ]});
    let nothing = report(&server, &junk.to_string()).await;
    assert_eq!((nothing.status, nothing.json()), (202, json!({})));
    api.get(get(&leaked.id, &leaked_token)).await.expect("a made-up secret revokes nothing");

    let reported =
        report(&server, &json!({"credentials": [leaked_secret, made_up_secret(), leaked_secret]}).to_string()).await;
    assert_eq!((reported.status, reported.body.as_str()), (202, nothing.body.as_str()), "reveals nothing");
    assert_eq!(reported.headers.get("content-length"), nothing.headers.get("content-length"));

    // Revoked at once, as Delete revokes: its tokens, its assertions and the credential itself.
    let refused = api.get(get(&leaked.id, &leaked_token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "its token is refused on the next call");
    let check =
        forward(&server, "GET", "/auth/v1/check", &[("Authorization", &format!("Bearer {leaked_token}"))]).await;
    assert_eq!(check.status, 401);
    let key = key_from_secret(&leaked_secret);
    let exchange =
        post_token(server.addr, &token_form(&leaked.client_id, &sdk_assertion(&key, &leaked.client_id)), &[]).await;
    assert_eq!(exchange.status, 401, "{}", exchange.body);
    assert_eq!(api.get(get(&leaked.id, &alice)).await.unwrap_err().code(), Code::NotFound);
    api.get(get(&kept.id, &kept_token)).await.expect("the other credential is untouched");

    let again = report(&server, &json!({"credentials": [leaked_secret]}).to_string()).await;
    assert_eq!((again.status, again.body), (202, nothing.body), "already revoked: the same answer");
    let metrics = server.metrics().await;
    assert_eq!(sample(&metrics, "personal_clients_leaked_secret_revocations_total"), Some(1.0), "{metrics}");
    server.stop().await;
}

async fn reports_of_leaked_secrets_are_bounded_and_rate_limited(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let many: Vec<String> = (0..101).map(|_| made_up_secret()).collect();
    for (body, says) in [
        ("not json".to_owned(), "the body is not a report"),
        ("{}".to_owned(), "missing field"),
        (r#"{"credentials": "secret-token:a:v1:b"}"#.to_owned(), "invalid type"),
        (r#"{"credentials": []}"#.to_owned(), "names 0 secrets; a report names 1 to 100"),
        (json!({ "credentials": many }).to_string(), "names 101 secrets; a report names 1 to 100"),
        (format!(r#"{{"credentials": ["{}"]}}"#, "a".repeat(40_000)), "larger than 32768 bytes"),
    ] {
        let answer = report(&server, &body).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.json()["error"], "invalid_request");
        let description = answer.json()["error_description"].as_str().unwrap().to_owned();
        assert!(description.contains(says), "{description:?} should say {says:?}");
    }
    server.stop().await;

    // Every report counts against its source, before its body is read: a malformed one too.
    let mut config = db.config();
    config.credentials.revoke_rate_per_source = "2/min".parse::<RateLimit>().unwrap();
    let server = TestServer::start(config).await;
    assert_eq!(report(&server, "not json").await.status, 400);
    assert_eq!(report(&server, &json!({"credentials": [made_up_secret()]}).to_string()).await.status, 202);
    let limited = report(&server, "not json").await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.header("retry-after").is_some());
    server.stop().await;
}

/// The scanning rule between the README's markers.
fn readme_scanning_rule() -> regex::Regex {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("<!-- scanning rule: begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- scanning rule: end -->").next())
        .expect("the README's Security section holds the scanning rule between its markers");
    let rule = block.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with("```")).unwrap();
    regex::Regex::new(rule).unwrap()
}

async fn the_readmes_scanning_rule_finds_every_secret_and_nothing_else(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let alice = server.token("alice", &["reader"]).await;
    let mut api = server.client().await;
    let mut secrets = BTreeSet::new();
    for n in 0..24 {
        let created = api.create(authed(create_request(&format!("scan {n}")), &alice)).await.unwrap().into_inner();
        secrets.insert(created.client_secret);
    }
    let (client, _, token) = server.client_with_token(&alice, "scan token").await;
    let other_namespace = made_up_secret().replace(":personal-clients:", ":other-service:");
    let one = secrets.first().unwrap().clone();
    let mut text = vec![
        format!("client {} got {token}", client.client_id),
        format!("assertion {}", sdk_assertion(&key_from_secret(&one), &client.client_id)),
        format!("another service's {other_namespace}"),
        format!("cut short {}", &one[..one.len() - 1]),
        format!("run on {}xyz", one.trim_end_matches("J9")),
        format!("longer {one}A"),
        "secret-token:personal-clients:v1:eyJhbGciOiJFZERTQSJ9 and the JWKS {\"kty\":\"OKP\"}".to_owned(),
    ];
    for (n, secret) in secrets.iter().enumerate() {
        text.push(match n % 4 {
            0 => format!("PC_CLIENT_SECRET={secret}"),
            1 => format!("{{\"clientSecret\": \"{secret}\", \"n\": {n}}}"),
            2 => format!("<{secret}>"),
            _ => secret.clone(),
        });
    }
    let text = text.join("\n");
    let rule = readme_scanning_rule();
    let found: BTreeSet<String> =
        rule.captures_iter(&text).map(|captures| captures.get(1).unwrap().as_str().to_owned()).collect();
    assert_eq!(found, secrets, "every secret Create made, and nothing else, in:\n{text}");
    server.stop().await;
}
