//! The token exchange over gRPC and HTTP: what a personal client does with its secret, and every
//! way it is refused.

use std::time::Duration;

use chrono::{TimeDelta, Utc};

use crate::common::{
    TestDb, TestServer, authed, create_request, eventually,
    oauth::{
        self, ServerProcess, claims, key_from_secret, post_token, sdk_assertion, sign, token_form, verify_with_jwks,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use personal_clients::{
    config::Config,
    pb::{
        auth::{TokenRequest, TokenResponse, token_service_client::TokenServiceClient},
        iam as pb,
    },
};
use prost_types::Duration as PbDuration;
use serde_json::{Value, json};
use tonic::{Code, Request, Status, metadata::MetadataValue};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        happy_path_over_grpc_and_http,
        token_roles_default_to_the_owners_roles_and_stop_at_the_clients_expiry,
        a_demoted_owner_does_not_get_lost_roles_back,
        a_demoted_owner_keeps_lost_roles_through_no_field,
        an_expired_credential_is_not_renewed,
        wrong_key,
        tampered_payload,
        alg_none,
        alg_hs256_signed_with_the_public_key,
        wrong_iss_or_sub,
        wrong_aud,
        missing_exp,
        exp_too_far,
        expired_assertion,
        nbf_in_the_future,
        critical_header,
        no_one_time_value,
        replayed_assertion,
        replay_against_a_second_server_process,
        fifty_concurrent_uses_one_success,
        deleted_client,
        expired_client,
        source_outside_the_cidrs,
        spoofed_forwarded_for_from_an_untrusted_peer,
        unknown_client_id,
        a_nul_byte_in_a_client_id_is_a_malformed_request,
        an_unknown_client_id_takes_as_long_to_refuse_as_a_bad_signature,
        malformed_form_body,
        wrong_grant_type,
        last_used_at_is_batched_and_flushed_on_shutdown,
        last_used_at_never_moves_backwards,
        a_flush_of_many_clients_writes_each_ones_last_use,
        spent_assertion_ids_are_forgotten_once_expired_and_not_before,
    ));
    trials
}

/// A running server, a user, and one personal client with its key.
struct Fixture {
    server: TestServer,
    user_token: String,
    client: pb::PersonalClient,
    key: SigningKey,
}

impl Fixture {
    async fn new(db: &TestDb) -> Self {
        Self::with(db.config(), create_request("automation")).await
    }

    async fn with(config: Config, create: pb::PersonalClientServiceCreateRequest) -> Self {
        let server = TestServer::start(config).await;
        let user_token = server.token("alice", &["reader", "writer"]).await;
        let created = server.client().await.create(authed(create, &user_token)).await.unwrap().into_inner();
        Self { key: key_from_secret(&created.client_secret), client: created.client.unwrap(), server, user_token }
    }

    fn client_id(&self) -> &str {
        &self.client.client_id
    }

    /// A valid assertion with `edit` applied to its claims.
    fn assertion_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = claims(self.client_id());
        edit(&mut claims);
        sign(&self.key, &json!({"alg": "EdDSA", "typ": "JWT"}), &claims)
    }

    async fn grpc(&self, assertion: &str, forwarded_for: Option<&str>) -> Result<TokenResponse, Status> {
        let mut client = TokenServiceClient::connect(format!("http://{}", self.server.addr)).await.unwrap();
        let mut request = Request::new(TokenRequest {
            grant_type: "client_credentials".into(),
            client_id: self.client_id().into(),
            client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            client_assertion: assertion.into(),
        });
        if let Some(xff) = forwarded_for {
            request.metadata_mut().insert("x-forwarded-for", MetadataValue::try_from(xff).unwrap());
        }
        client.token(request).await.map(|r| r.into_inner())
    }

    /// Refused over both transports for `reason`, with nothing but `invalid_client` said: the
    /// reason is only in the log and the outcome metric, which is where it is checked.
    async fn assert_refused(&self, assertion: &str, reason: &str) {
        let before = self.server.exchanges(reason).await;
        let status = self.grpc(assertion, None).await.expect_err("refused over gRPC");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "invalid_client: client authentication failed");
        let http = post_token(self.server.addr, &token_form(self.client_id(), assertion), &[]).await;
        assert_eq!(http.status, 401, "{}", http.body);
        assert_eq!(
            http.json(),
            json!({"error": "invalid_client", "error_description": "client authentication failed"})
        );
        assert_eq!(http.header("cache-control"), Some("no-store"));
        assert_eq!(self.server.exchanges(reason).await, before + 2.0, "refused twice for {reason}");
    }

    async fn list_with(&self, token: &str) -> Result<Vec<pb::PersonalClient>, Status> {
        let mut client = self.server.client().await;
        client.list(authed(pb::PersonalClientServiceListRequest::default(), token)).await.map(|r| r.into_inner().list)
    }
}

fn create_with(f: impl FnOnce(&mut pb::PersonalClientServiceCreateRequest)) -> pb::PersonalClientServiceCreateRequest {
    let mut request = create_request("automation");
    f(&mut request);
    request
}

async fn happy_path_over_grpc_and_http(db: TestDb) {
    let f = Fixture::with(db.config(), create_with(|r| r.scoped_roles = vec!["reader".into()])).await;

    // Over gRPC, with the assertion exactly as ConductorOne's Go SDK makes it.
    let issued = f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.expect("token over gRPC");
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(issued.expires_in, 3600);
    let listed = f.list_with(&issued.access_token).await.expect("the token lists the owner's clients");
    assert_eq!(listed.iter().map(|c| &c.id).collect::<Vec<_>>(), [&f.client.id]);

    // A token from a personal client reads but never manages personal clients.
    let mut client = f.server.client().await;
    let get = client.get(authed(pb::PersonalClientServiceGetRequest { id: f.client.id.clone() }, &issued.access_token));
    assert!(get.await.is_ok());
    let create = client.create(authed(create_request("child"), &issued.access_token)).await.unwrap_err();
    assert_eq!(create.code(), Code::PermissionDenied);
    let delete =
        client.delete(authed(pb::PersonalClientServiceDeleteRequest { id: f.client.id.clone() }, &issued.access_token));
    assert_eq!(delete.await.unwrap_err().code(), Code::PermissionDenied);
    let update = client
        .update(authed(
            pb::PersonalClientServiceUpdateRequest {
                client: Some(pb::PersonalClient {
                    id: f.client.id.clone(),
                    display_name: "x".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &issued.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::PermissionDenied);

    // Over HTTP, form-encoded, with a jti and the issuer as audience.
    let assertion = f.assertion_with(|c| c["aud"] = json!(["http://localhost"]));
    let http = post_token(f.server.addr, &token_form(f.client_id(), &assertion), &[]).await;
    assert_eq!(http.status, 200, "{}", http.body);
    assert_eq!(http.header("cache-control"), Some("no-store"));
    let body = http.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    let claims = verify_with_jwks(f.server.addr, token).await;
    assert_eq!(claims["iss"], "http://localhost");
    assert_eq!(claims["aud"], "http://localhost");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], f.client_id());
    assert_eq!(claims["roles"], json!(["reader"]), "the client's scoped roles");
    assert!(claims["jti"].is_string());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    assert!(f.list_with(token).await.is_ok());

    // Revoking the client ends its tokens at once.
    let mut client = f.server.client().await;
    client
        .delete(authed(pb::PersonalClientServiceDeleteRequest { id: f.client.id.clone() }, &f.user_token))
        .await
        .unwrap();
    assert_eq!(f.list_with(token).await.unwrap_err().code(), Code::Unauthenticated);
    f.server.stop().await;
}

async fn token_roles_default_to_the_owners_roles_and_stop_at_the_clients_expiry(db: TestDb) {
    let f = Fixture::with(db.config(), create_with(|r| r.expires = Some(PbDuration { seconds: 600, nanos: 0 }))).await;
    let issued = f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.unwrap();
    assert!((598..=600).contains(&issued.expires_in), "never past the client's expiry: {}", issued.expires_in);
    let claims = verify_with_jwks(f.server.addr, &issued.access_token).await;
    assert_eq!(claims["roles"], json!(["reader", "writer"]), "the owner's roles at creation");
    f.server.stop().await;
}

async fn a_demoted_owner_does_not_get_lost_roles_back(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let as_admin = server.token("alice", &["admin", "reader"]).await;
    let mut api = server.client().await;
    let mut narrow = create_request("narrowed");
    narrow.scoped_roles = vec!["reader".into()];
    let created = api.create(authed(narrow, &as_admin)).await.unwrap().into_inner();
    let (client, key) = (created.client.unwrap(), key_from_secret(&created.client_secret));
    let roles_now = |server: &TestServer| {
        let (addr, client_id, key) = (server.addr, client.client_id.clone(), key.clone());
        async move {
            let http = post_token(addr, &token_form(&client_id, &sdk_assertion(&key, &client_id)), &[]).await;
            assert_eq!(http.status, 200, "{}", http.body);
            verify_with_jwks(addr, http.json()["access_token"].as_str().unwrap()).await["roles"].clone()
        }
    };
    assert_eq!(roles_now(&server).await, json!(["reader"]));

    // Alice loses admin, then clears the scoped roles: the credential acts with what she holds now.
    let as_reader = server.token("alice", &["reader"]).await;
    let clear = pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient { id: client.id.clone(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["scoped_roles".into()] }),
    };
    api.update(authed(clear.clone(), &as_reader)).await.unwrap();
    assert_eq!(roles_now(&server).await, json!(["reader"]), "admin is not given back");

    // Clearing them again while holding admin gives what she holds then, as a scoped list could.
    api.update(authed(clear, &as_admin)).await.unwrap();
    assert_eq!(roles_now(&server).await, json!(["admin", "reader"]));
    server.stop().await;
}

/// The roles the tokens of `client` carry now, from an exchange over HTTP.
async fn roles_now(server: &TestServer, client: &pb::PersonalClient, key: &SigningKey) -> Value {
    let http =
        post_token(server.addr, &token_form(&client.client_id, &sdk_assertion(key, &client.client_id)), &[]).await;
    assert_eq!(http.status, 200, "{}", http.body);
    verify_with_jwks(server.addr, http.json()["access_token"].as_str().unwrap()).await["roles"].clone()
}

/// An Update of `id` that sets `fields` (named in the mask) from `client`.
fn update_of(id: &str, client: pb::PersonalClient, fields: &[&str]) -> pb::PersonalClientServiceUpdateRequest {
    pb::PersonalClientServiceUpdateRequest {
        client: Some(pb::PersonalClient { id: id.to_owned(), ..client }),
        update_mask: Some(prost_types::FieldMask { paths: fields.iter().map(|f| (*f).to_owned()).collect() }),
    }
}

/// Whichever field an Update names, it leaves the credential with no role its owner has lost:
/// not with the roles she had when creating it (no scoped roles), nor with scoped roles she no
/// longer holds. Narrowing the scoped roles in the same Update is the way out.
async fn a_demoted_owner_keeps_lost_roles_through_no_field(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let as_admin = server.token("alice", &["admin", "reader"]).await;
    let mut api = server.client().await;
    let created = api.create(authed(create_request("made as admin"), &as_admin)).await.unwrap().into_inner();
    let (client, key) = (created.client.unwrap(), key_from_secret(&created.client_secret));
    let mut scoped = create_request("scoped as admin");
    scoped.scoped_roles = vec!["admin".into()];
    let scoped = api.create(authed(scoped, &as_admin)).await.unwrap().into_inner().client.unwrap();
    assert_eq!(roles_now(&server, &client, &key).await, json!(["admin", "reader"]));

    // Alice is now only a reader.
    let as_reader = server.token("alice", &["reader"]).await;
    let later = Utc::now() + TimeDelta::days(300);
    let changes = [
        (pb::PersonalClient { display_name: "renamed".into(), ..Default::default() }, "display_name"),
        (
            pb::PersonalClient { allow_source_cidr: vec!["127.0.0.0/8".into()], ..Default::default() },
            "allow_source_cidr",
        ),
        (pb::PersonalClient { expires_time: Some(convert_timestamp(later)), ..Default::default() }, "expires_time"),
    ];
    for target in [&client, &scoped] {
        for (change, field) in &changes {
            let refused = api.update(authed(update_of(&target.id, change.clone(), &[field]), &as_reader)).await;
            let status = refused.expect_err(field);
            assert_eq!(status.code(), Code::PermissionDenied, "{field}: {status:?}");
            assert!(status.message().contains("no longer hold: admin"), "{field}: {}", status.message());
            assert!(status.message().contains("scoped_roles in the same Update"), "{}", status.message());
        }
        let now = api.get(authed(pb::PersonalClientServiceGetRequest { id: target.id.clone() }, &as_reader)).await;
        assert_eq!(&now.unwrap().into_inner().client.unwrap(), target, "nothing of a refused Update is written");
    }
    // The JSON API gives the same answer: it is the same call.
    let body = json!({"client": {"displayName": "renamed"}, "updateMask": "displayName"}).to_string();
    let path = format!("/api/v1/iam/personal_clients/{}", client.id);
    let answer = crate::json_api::call(&server, "POST", &path, Some(&as_reader), &body).await;
    assert_eq!((answer.status, answer.json()["code"].as_i64()), (403, Some(7)), "{}", answer.body);
    assert_eq!(roles_now(&server, &client, &key).await, json!(["admin", "reader"]), "kept only as it was");

    // Narrowed in the same Update, the change goes through.
    let narrowed = pb::PersonalClient {
        display_name: "renamed".into(),
        scoped_roles: vec!["reader".into()],
        ..Default::default()
    };
    api.update(authed(update_of(&client.id, narrowed, &["display_name", "scoped_roles"]), &as_reader)).await.unwrap();
    assert_eq!(roles_now(&server, &client, &key).await, json!(["reader"]));
    let extended = pb::PersonalClient { expires_time: Some(convert_timestamp(later)), ..Default::default() };
    let cleared = update_of(&scoped.id, extended, &["scoped_roles", "expires_time"]);
    let updated = api.update(authed(cleared, &as_reader)).await.unwrap().into_inner().client.unwrap();
    assert!(updated.scoped_roles.is_empty(), "no scoped roles: the roles she holds now");
    server.stop().await;
}

/// An expired credential stays expired: moving its expiry forward is refused, with what to do
/// instead, whoever asks and whatever else the Update names. Alice, demoted to reader, cannot
/// bring back the credential she made as an admin 300 days on.
async fn an_expired_credential_is_not_renewed(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let as_admin = server.token("alice", &["admin", "reader"]).await;
    let mut api = server.client().await;
    let mut short = create_request("short-lived");
    short.expires = Some(PbDuration { seconds: 1, nanos: 0 });
    let created = api.create(authed(short, &as_admin)).await.unwrap().into_inner();
    let (client, key) = (created.client.unwrap(), key_from_secret(&created.client_secret));
    let expires = instant(client.expires_time.as_ref().unwrap());
    eventually(Duration::from_secs(5), "the client expires", || async { Utc::now() > expires }).await;

    let later = pb::PersonalClient {
        expires_time: Some(convert_timestamp(Utc::now() + TimeDelta::days(300))),
        scoped_roles: vec!["reader".into()],
        ..Default::default()
    };
    let as_reader = server.token("alice", &["reader"]).await;
    for (token, fields) in [
        (&as_reader, &["expires_time"][..]),
        (&as_reader, &["expires_time", "scoped_roles"][..]),
        (&as_admin, &["expires_time"][..]),
    ] {
        let status = api.update(authed(update_of(&client.id, later.clone(), fields), token)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{fields:?}: {status:?}");
        let said = format!(
            "it expired on {}; an expired credential cannot be renewed, create a new one",
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        assert_eq!(status.message(), said);
    }
    let in_300_days = (Utc::now() + TimeDelta::days(300)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({"client": {"expiresTime": in_300_days}, "updateMask": "expiresTime"}).to_string();
    let path = format!("/api/v1/iam/personal_clients/{}", client.id);
    let answer = crate::json_api::call(&server, "POST", &path, Some(&as_admin), &body).await;
    assert_eq!((answer.status, answer.json()["code"].as_i64()), (400, Some(9)), "{}", answer.body);

    let still = api.get(authed(pb::PersonalClientServiceGetRequest { id: client.id.clone() }, &as_admin)).await;
    assert_eq!(still.unwrap().into_inner().client.unwrap().expires_time, client.expires_time);
    let http =
        post_token(server.addr, &token_form(&client.client_id, &sdk_assertion(&key, &client.client_id)), &[]).await;
    assert_eq!(http.status, 401, "still expired: {}", http.body);
    // Anything else may still change, by the same rule on roles as ever.
    let renamed = pb::PersonalClient { display_name: "expired".into(), ..Default::default() };
    api.update(authed(update_of(&client.id, renamed, &["display_name"]), &as_admin)).await.unwrap();
    server.stop().await;
}

fn convert_timestamp(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }
}

async fn wrong_key(db: TestDb) {
    let f = Fixture::new(&db).await;
    let stranger = SigningKey::from_bytes(&[7; 32]);
    f.assert_refused(&sign(&stranger, &json!({"alg": "EdDSA"}), &claims(f.client_id())), "bad_signature").await;
    f.server.stop().await;
}

async fn tampered_payload(db: TestDb) {
    let f = Fixture::new(&db).await;
    let good = f.assertion_with(|_| {});
    let parts: Vec<&str> = good.split('.').collect();
    let mut altered = claims(f.client_id());
    altered["exp"] = json!(oauth::now() + 120);
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(altered.to_string()), parts[2]);
    f.assert_refused(&tampered, "bad_signature").await;
    f.server.stop().await;
}

async fn alg_none(db: TestDb) {
    let f = Fixture::new(&db).await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
    let unsigned = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims(f.client_id()).to_string()));
    f.assert_refused(&unsigned, "algorithm_not_allowed").await;
    f.server.stop().await;
}

async fn alg_hs256_signed_with_the_public_key(db: TestDb) {
    let f = Fixture::new(&db).await;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(f.client_id()).to_string())
    );
    // The classic confusion attack: the public key (raw, and as the JWK's x) used as an HMAC key.
    let public = f.key.verifying_key().to_bytes();
    for secret in [public.to_vec(), URL_SAFE_NO_PAD.encode(public).into_bytes()] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input.as_bytes());
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        f.assert_refused(&forged, "algorithm_not_allowed").await;
    }
    f.server.stop().await;
}

async fn wrong_iss_or_sub(db: TestDb) {
    let f = Fixture::new(&db).await;
    let other = "brave-otter-00000@localhost/pcc";
    f.assert_refused(&f.assertion_with(|c| c["iss"] = json!(other)), "client_id_mismatch").await;
    f.assert_refused(&f.assertion_with(|c| c["sub"] = json!(other)), "subject_mismatch").await;
    f.assert_refused(&f.assertion_with(|c| c["sub"] = json!("alice")), "subject_mismatch").await;
    f.server.stop().await;
}

async fn wrong_aud(db: TestDb) {
    let f = Fixture::new(&db).await;
    f.assert_refused(&f.assertion_with(|c| c["aud"] = json!("https://evil.example")), "audience_mismatch").await;
    f.assert_refused(
        &f.assertion_with(|c| c["aud"] = json!(["localhost", "https://evil.example"])),
        "audience_mismatch",
    )
    .await;
    f.assert_refused(&f.assertion_with(|c| c["aud"] = json!([])), "audience_mismatch").await;
    f.server.stop().await;
}

async fn missing_exp(db: TestDb) {
    let f = Fixture::new(&db).await;
    f.assert_refused(&f.assertion_with(|c| drop(c.as_object_mut().unwrap().remove("exp"))), "missing_exp").await;
    f.assert_refused(&f.assertion_with(|c| c["exp"] = json!("tomorrow")), "malformed_assertion").await;
    f.server.stop().await;
}

async fn exp_too_far(db: TestDb) {
    let f = Fixture::new(&db).await;
    f.assert_refused(&f.assertion_with(|c| c["exp"] = json!(oauth::now() + 3600)), "assertion_too_long_lived").await;
    f.server.stop().await;
}

async fn expired_assertion(db: TestDb) {
    let f = Fixture::new(&db).await;
    f.assert_refused(&f.assertion_with(|c| c["exp"] = json!(oauth::now() - 120)), "assertion_expired").await;
    f.server.stop().await;
}

async fn nbf_in_the_future(db: TestDb) {
    let f = Fixture::new(&db).await;
    f.assert_refused(&f.assertion_with(|c| c["nbf"] = json!(oauth::now() + 180)), "not_yet_valid").await;
    f.assert_refused(&f.assertion_with(|c| c["iat"] = json!(oauth::now() + 180)), "not_yet_valid").await;
    f.server.stop().await;
}

async fn critical_header(db: TestDb) {
    let f = Fixture::new(&db).await;
    // RFC 7515 §4.1.11: an extension the recipient does not understand makes the JWS invalid.
    let header = json!({"alg": "EdDSA", "crit": ["exp"], "exp": 1});
    f.assert_refused(&sign(&f.key, &header, &claims(f.client_id())), "critical_header").await;
    f.server.stop().await;
}

async fn no_one_time_value(db: TestDb) {
    let f = Fixture::new(&db).await;
    // Neither `jti` nor a header `nonce`: nothing to spend, so it could be replayed. Refused.
    f.assert_refused(&f.assertion_with(|c| drop(c.as_object_mut().unwrap().remove("jti"))), "missing_one_time_value")
        .await;
    f.server.stop().await;
}

async fn replayed_assertion(db: TestDb) {
    let f = Fixture::new(&db).await;
    let assertion = sdk_assertion(&f.key, f.client_id());
    f.grpc(&assertion, None).await.expect("first use");
    f.assert_refused(&assertion, "replayed").await;
    let with_jti = f.assertion_with(|_| {});
    let http = post_token(f.server.addr, &token_form(f.client_id(), &with_jti), &[]).await;
    assert_eq!(http.status, 200);
    f.assert_refused(&with_jti, "replayed").await;
    f.server.stop().await;
}

async fn replay_against_a_second_server_process(db: TestDb) {
    let f = Fixture::new(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let other = ServerProcess::spawn(dir.path(), Some(&db.url), &[]);
    let assertion = sdk_assertion(&f.key, f.client_id());
    f.grpc(&assertion, None).await.expect("first use, on this replica");
    let http = post_token(other.addr, &token_form(f.client_id(), &assertion), &[]).await;
    assert_eq!(http.status, 401, "the other replica knows it was spent: {}", http.body);
    let other_metrics = oauth::http(other.addr, "GET", "/metrics", &[], "").await.body;
    let replayed = r#"personal_clients_token_exchanges_total{outcome="replayed"}"#;
    assert_eq!(crate::common::sample(&other_metrics, replayed), Some(1.0), "refused as a replay");
    let fresh = sdk_assertion(&f.key, f.client_id());
    let http = post_token(other.addr, &token_form(f.client_id(), &fresh), &[]).await;
    assert_eq!(http.status, 200, "{}", http.body);
    f.assert_refused(&fresh, "replayed").await;
    let (status, _) = other.terminate();
    assert!(status.success());
    f.server.stop().await;
}

async fn fifty_concurrent_uses_one_success(db: TestDb) {
    let f = Fixture::new(&db).await;
    let assertion = sdk_assertion(&f.key, f.client_id());
    let fixture = std::sync::Arc::new(f);
    let uses: Vec<_> = (0..50)
        .map(|_| {
            let (f, assertion) = (std::sync::Arc::clone(&fixture), assertion.clone());
            tokio::spawn(async move { f.grpc(&assertion, None).await })
        })
        .collect();
    let mut successes = 0;
    for handle in uses {
        match handle.await.unwrap() {
            Ok(_) => successes += 1,
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        }
    }
    assert_eq!(successes, 1);
    assert_eq!(fixture.server.exchanges("replayed").await, 49.0, "every other use refused as a replay");
}

async fn deleted_client(db: TestDb) {
    let f = Fixture::new(&db).await;
    let mut client = f.server.client().await;
    client
        .delete(authed(pb::PersonalClientServiceDeleteRequest { id: f.client.id.clone() }, &f.user_token))
        .await
        .unwrap();
    f.assert_refused(&sdk_assertion(&f.key, f.client_id()), "client_revoked").await;
    f.server.stop().await;
}

async fn expired_client(db: TestDb) {
    let f = Fixture::with(db.config(), create_with(|r| r.expires = Some(PbDuration { seconds: 1, nanos: 0 }))).await;
    let expires = instant(f.client.expires_time.as_ref().unwrap());
    // Good until its expiry (less than the one second a token lasts at least), refused from then on.
    eventually(Duration::from_secs(5), "the client expires", || async {
        f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.is_err()
    })
    .await;
    assert!(Utc::now() + TimeDelta::seconds(1) >= expires, "refused too early: {} before {expires}", Utc::now());
    f.assert_refused(&sdk_assertion(&f.key, f.client_id()), "client_expired").await;
    f.server.stop().await;
}

async fn source_outside_the_cidrs(db: TestDb) {
    let f = Fixture::with(
        db.config(),
        create_with(|r| r.allow_source_cidr = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]),
    )
    .await;
    f.assert_refused(&sdk_assertion(&f.key, f.client_id()), "source_not_allowed").await;
    let inside = Fixture::with(db.config(), create_with(|r| r.allow_source_cidr = vec!["127.0.0.0/8".into()])).await;
    inside.grpc(&sdk_assertion(&inside.key, inside.client_id()), None).await.expect("inside the CIDRs");
    f.server.stop().await;
    inside.server.stop().await;
}

async fn spoofed_forwarded_for_from_an_untrusted_peer(db: TestDb) {
    let create = create_with(|r| r.allow_source_cidr = vec!["10.0.0.0/8".into()]);
    let f = Fixture::with(db.config(), create.clone()).await;
    let spoofed = f.grpc(&sdk_assertion(&f.key, f.client_id()), Some("10.1.2.3")).await.unwrap_err();
    assert_eq!(spoofed.code(), Code::Unauthenticated);
    let xff = [("X-Forwarded-For", "10.1.2.3")];
    let http = post_token(f.server.addr, &token_form(f.client_id(), &sdk_assertion(&f.key, f.client_id())), &xff).await;
    assert_eq!(http.status, 401);
    assert_eq!(f.server.exchanges("source_not_allowed").await, 2.0, "the TCP peer counted, not the header");
    f.server.stop().await;

    // Behind a trusted proxy the forwarded address counts, and only the right-most untrusted one.
    let mut config = db.config();
    config.trust.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let f = Fixture::with(config, create).await;
    f.grpc(&sdk_assertion(&f.key, f.client_id()), Some("10.1.2.3")).await.expect("via a trusted proxy");
    let http = post_token(f.server.addr, &token_form(f.client_id(), &sdk_assertion(&f.key, f.client_id())), &xff).await;
    assert_eq!(http.status, 200, "{}", http.body);
    let chain = [("X-Forwarded-For", "10.1.2.3, 198.51.100.7")];
    let http =
        post_token(f.server.addr, &token_form(f.client_id(), &sdk_assertion(&f.key, f.client_id())), &chain).await;
    assert_eq!(http.status, 401, "the client cannot prepend an address of its choosing");
    assert_eq!(f.server.exchanges("source_not_allowed").await, 1.0);
    // A forwarded address that cannot be read fails closed.
    let garbage = [("X-Forwarded-For", "10.1.2.3, not-an-address")];
    let http =
        post_token(f.server.addr, &token_form(f.client_id(), &sdk_assertion(&f.key, f.client_id())), &garbage).await;
    assert_eq!(http.status, 401, "{}", http.body);
    assert_eq!(f.server.exchanges("unknown_source").await, 1.0);
    f.server.stop().await;
}

async fn unknown_client_id(db: TestDb) {
    let f = Fixture::new(&db).await;
    let ghost = "quiet-moon-12345@localhost/pcc";
    let assertion = sign(&f.key, &json!({"alg": "EdDSA"}), &claims(ghost));
    let http = post_token(f.server.addr, &token_form(ghost, &assertion), &[]).await;
    assert_eq!(http.status, 401);
    assert_eq!(http.json()["error"], "invalid_client");
    assert_eq!(f.server.exchanges("unknown_client").await, 1.0);
    // A client_id parameter that disagrees with the assertion's issuer.
    let http = post_token(f.server.addr, &token_form(ghost, &f.assertion_with(|_| {})), &[]).await;
    assert_eq!(http.status, 401);
    assert_eq!(f.server.exchanges("client_id_mismatch").await, 1.0);
    f.server.stop().await;
}

/// No client id holds a NUL byte, and PostgreSQL's text cannot: a request that names one is
/// malformed, the same on both databases, never an internal error.
async fn a_nul_byte_in_a_client_id_is_a_malformed_request(db: TestDb) {
    let f = Fixture::new(&db).await;
    let nul_id = format!("{}\0", f.client_id());
    let assertion = f.assertion_with(|c| {
        c["iss"] = json!(nul_id);
        c["sub"] = json!(nul_id);
    });
    let said = "contains a NUL byte, which no client id can contain";
    let http = post_token(f.server.addr, &token_form(&nul_id, &assertion), &[]).await;
    assert_eq!(http.status, 400, "{}", http.body);
    assert_eq!(http.json(), json!({"error": "invalid_request", "error_description": format!("client_id: {said}")}));
    let mut tokens = TokenServiceClient::connect(format!("http://{}", f.server.addr)).await.unwrap();
    let request = TokenRequest {
        grant_type: "client_credentials".into(),
        client_id: nul_id.clone(),
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        client_assertion: assertion.clone(),
    };
    let status = tokens.token(request).await.unwrap_err();
    assert_eq!(crate::common::violations(&status), [("client_id".to_owned(), said.to_owned())]);
    assert_eq!(f.server.exchanges("invalid_request").await, 2.0);

    // Without a client_id beside it, the assertion's issuer is the client id: one no client can
    // have is a malformed assertion. So is a one-time value with a NUL byte, even one the
    // client's own key signed.
    let http = post_token(f.server.addr, &token_form("", &assertion), &[]).await;
    assert_eq!((http.status, http.json()["error"].as_str()), (401, Some("invalid_client")), "{}", http.body);
    assert_eq!(f.server.exchanges("malformed_assertion").await, 1.0);
    f.assert_refused(&f.assertion_with(|c| c["jti"] = json!("j\0")), "malformed_assertion").await;
    assert!(f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.is_ok(), "the client itself still works");
    f.server.stop().await;
}

/// Whether a client id exists must not show in how fast a bad assertion is refused. Medians of
/// interleaved tries; in a debug build the signature check is most of the work, so answering an
/// unknown id without one would take a fraction of the time.
async fn an_unknown_client_id_takes_as_long_to_refuse_as_a_bad_signature(db: TestDb) {
    let f = Fixture::new(&db).await;
    let ghost = "quiet-moon-12345@localhost/pcc";
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let mut tokens = TokenServiceClient::connect(format!("http://{}", f.server.addr)).await.unwrap();
    let mut time = async |client_id: &str| {
        let assertion = sign(&stranger, &json!({"alg": "EdDSA"}), &claims(client_id));
        let request = TokenRequest {
            grant_type: "client_credentials".into(),
            client_id: client_id.into(),
            client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            client_assertion: assertion,
        };
        let started = std::time::Instant::now();
        let status = tokens.token(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        started.elapsed()
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..120 {
        known.push(time(f.client_id()).await);
        unknown.push(time(ghost).await);
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[known.len() / 2], unknown[unknown.len() / 2]);
    eprintln!("median refusal: known client with a bad signature {known:?}, unknown client {unknown:?}");
    assert!(unknown.as_secs_f64() > 0.75 * known.as_secs_f64(), "unknown {unknown:?} vs known {known:?}");
    f.server.stop().await;
}

async fn malformed_form_body(db: TestDb) {
    let f = Fixture::new(&db).await;
    let addr = f.server.addr;
    let json_body = oauth::http(addr, "POST", "/auth/v1/token", &[("Content-Type", "application/json")], "{}").await;
    assert_eq!(json_body.status, 400);
    assert_eq!(json_body.json()["error"], "invalid_request");
    assert!(json_body.json()["error_description"].as_str().unwrap().contains("application/x-www-form-urlencoded"));

    let mut twice = token_form(f.client_id(), &f.assertion_with(|_| {}));
    twice.push(("grant_type", "client_credentials".into()));
    let repeated = post_token(addr, &twice, &[]).await;
    assert_eq!(repeated.status, 400);
    assert!(repeated.json()["error_description"].as_str().unwrap().contains("grant_type"));

    let missing = post_token(addr, &token_form(f.client_id(), "")[..3], &[]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"], "invalid_request");
    assert!(missing.json()["error_description"].as_str().unwrap().contains("client_assertion"));

    let status = f.grpc("", None).await.unwrap_err();
    assert_eq!(crate::common::violated_fields(&status), ["client_assertion"]);
    let garbage = post_token(addr, &token_form(f.client_id(), "not-a-jwt"), &[]).await;
    assert_eq!(garbage.status, 401, "a malformed assertion is a failed client authentication");
    assert_eq!(f.server.exchanges("malformed_assertion").await, 1.0);
    f.server.stop().await;
}

async fn wrong_grant_type(db: TestDb) {
    let f = Fixture::new(&db).await;
    let mut form = token_form(f.client_id(), &f.assertion_with(|_| {}));
    form[0].1 = "password".into();
    let http = post_token(f.server.addr, &form, &[]).await;
    assert_eq!(http.status, 400);
    assert_eq!(http.json()["error"], "unsupported_grant_type");

    let mut client = TokenServiceClient::connect(format!("http://{}", f.server.addr)).await.unwrap();
    let status = client
        .token(TokenRequest {
            grant_type: "authorization_code".into(),
            client_id: f.client_id().into(),
            client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            client_assertion: f.assertion_with(|_| {}),
        })
        .await
        .unwrap_err();
    assert_eq!(crate::common::violated_fields(&status), ["grant_type"]);
    f.server.stop().await;
}

/// A protobuf timestamp as a point in time, to the microsecond the databases keep.
fn instant(at: &prost_types::Timestamp) -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap()).unwrap()
}

async fn last_used_at_is_batched_and_flushed_on_shutdown(db: TestDb) {
    let mut config = db.config();
    config.serving.usage_flush_interval = Duration::from_secs(3600);
    let f = Fixture::with(config.clone(), create_request("busy")).await;
    for _ in 0..4 {
        f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.unwrap();
    }
    let before_last_use = Utc::now();
    f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.unwrap();
    let after_last_use = Utc::now();
    let get = pb::PersonalClientServiceGetRequest { id: f.client.id.clone() };
    let mut client = f.server.client().await;
    let before = client.get(authed(get.clone(), &f.user_token)).await.unwrap().into_inner().client.unwrap();
    assert_eq!(before.last_used_at, None, "no database write per exchange");
    f.server.stop().await;

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let after = client.get(authed(get, &f.user_token)).await.unwrap().into_inner().client.unwrap();
    let used = instant(after.last_used_at.as_ref().expect("written at shutdown"));
    // The last use, to the microsecond: not the first, not the flush.
    assert!(
        before_last_use - TimeDelta::microseconds(1) <= used && used <= after_last_use,
        "{before_last_use} <= {used} <= {after_last_use}"
    );
    assert_eq!(after.updated_at, before.updated_at, "use is not an update");
    server.stop().await;

    // With a short interval it appears while the server runs.
    let mut config = db.config();
    config.serving.usage_flush_interval = Duration::from_millis(200);
    let f = Fixture::with(config, create_request("quick")).await;
    f.grpc(&sdk_assertion(&f.key, f.client_id()), None).await.unwrap();
    let mut client = f.server.client().await;
    let get = pb::PersonalClientServiceGetRequest { id: f.client.id.clone() };
    eventually(Duration::from_secs(5), "last_used_at written by the periodic flush", || {
        let (mut client, get) = (client.clone(), get.clone());
        let token = f.user_token.clone();
        async move { client.get(authed(get, &token)).await.unwrap().into_inner().client.unwrap().last_used_at.is_some() }
    })
    .await;
    drop(client.get(authed(get, &f.user_token)).await.unwrap());
    f.server.stop().await;
}

async fn last_used_at_never_moves_backwards(db: TestDb) {
    let mut config = db.config();
    config.serving.usage_flush_interval = Duration::from_secs(3600);
    let a = Fixture::with(config.clone(), create_request("shared")).await;
    let b = TestServer::start(config).await;
    // Used on b first, then on a; a flushes first, b's older use comes last.
    let mut b_tokens = TokenServiceClient::connect(format!("http://{}", b.addr)).await.unwrap();
    b_tokens
        .token(TokenRequest {
            grant_type: "client_credentials".into(),
            client_id: a.client_id().into(),
            client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            client_assertion: sdk_assertion(&a.key, a.client_id()),
        })
        .await
        .unwrap();
    let between = Utc::now();
    a.grpc(&sdk_assertion(&a.key, a.client_id()), None).await.unwrap();
    let Fixture { server, user_token, client, .. } = a;
    server.stop().await;
    b.stop().await;

    let check = TestServer::start(db.config()).await;
    let mut api = check.client().await;
    let got = api.get(authed(pb::PersonalClientServiceGetRequest { id: client.id }, &user_token)).await.unwrap();
    let used = instant(&got.into_inner().client.unwrap().last_used_at.unwrap());
    assert!(used >= between - TimeDelta::microseconds(1), "the later use stands: {used} is before {between}");
    check.stop().await;
}

/// More clients than one flush statement takes: every one's last use is written, and only its
/// own.
async fn a_flush_of_many_clients_writes_each_ones_last_use(db: TestDb) {
    let mut config = db.config();
    config.serving.usage_flush_interval = Duration::from_secs(3600);
    let server = TestServer::start(config.clone()).await;
    let token = server.token("alice", &[]).await;
    let count = personal_clients::store::LAST_USED_CHUNK + 7;
    let api = server.client().await;
    let creates = (0..count).map(|i| {
        let (mut api, token) = (api.clone(), token.clone());
        async move { api.create(authed(create_request(&format!("c{i}")), &token)).await.unwrap().into_inner() }
    });
    let created = futures_join_all(creates).await;
    let unused = created[0].client.clone().unwrap();
    let mut tokens = TokenServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let mut used_between = Vec::new();
    for made in &created[1..] {
        let client = made.client.as_ref().unwrap();
        let key = key_from_secret(&made.client_secret);
        let before = Utc::now();
        let request = TokenRequest {
            grant_type: "client_credentials".into(),
            client_id: client.client_id.clone(),
            client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            client_assertion: sdk_assertion(&key, &client.client_id),
        };
        tokens.token(request).await.unwrap();
        used_between.push((client.id.clone(), before, Utc::now()));
    }
    server.stop().await;

    let server = TestServer::start(config).await;
    let mut api = server.client().await;
    for (id, before, after) in used_between {
        let got = api.get(authed(pb::PersonalClientServiceGetRequest { id }, &token)).await.unwrap();
        let used = instant(&got.into_inner().client.unwrap().last_used_at.expect("written by the flush"));
        assert!(before - TimeDelta::microseconds(1) <= used && used <= after, "{before} <= {used} <= {after}");
    }
    let got = api.get(authed(pb::PersonalClientServiceGetRequest { id: unused.id }, &token)).await.unwrap();
    assert_eq!(got.into_inner().client.unwrap().last_used_at, None, "a client never used has no last use");
    server.stop().await;
}

/// Runs `futures` concurrently and returns their outputs in order.
async fn futures_join_all<F: Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// The purge forgets every expired one-time value, however many (it deletes in chunks), and
/// none that could still be replayed.
async fn spent_assertion_ids_are_forgotten_once_expired_and_not_before(db: TestDb) {
    use personal_clients::store::{OpenMode, Store};
    personal_clients::server::migrate(&db.database_url(), &Default::default()).await.unwrap();
    let store = Store::open(&db.database_url(), OpenMode::MustExist).await.unwrap();
    let client = uuid::Uuid::now_v7();
    let now = Utc::now();
    let (expired, live) = (2_345, 10);
    for i in 0..expired {
        assert!(store.spend_one_time_value(client, &format!("old-{i}"), now - TimeDelta::seconds(1)).await.unwrap());
    }
    for i in 0..live {
        assert!(store.spend_one_time_value(client, &format!("new-{i}"), now + TimeDelta::minutes(5)).await.unwrap());
    }
    assert_eq!(store.purge_spent_values(now).await.unwrap(), expired);
    for i in 0..live {
        let again = store.spend_one_time_value(client, &format!("new-{i}"), now + TimeDelta::minutes(5)).await.unwrap();
        assert!(!again, "a value that could still be replayed is kept");
    }
    assert!(store.spend_one_time_value(client, "old-0", now + TimeDelta::minutes(5)).await.unwrap(), "forgotten");
    assert_eq!(store.purge_spent_values(now).await.unwrap(), 0);
}
