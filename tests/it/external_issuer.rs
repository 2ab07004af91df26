//! User tokens from an external identity provider, verified against its JWKS (EdDSA, ES256,
//! RS256), from a file or a URL that is re-fetched when a new key appears.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::common::{TestDb, TestServer, authed, create_request, oauth::now};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use personal_clients::pb::iam as pb;
use rsa::{pkcs1v15, traits::PublicKeyParts};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        external_tokens_of_every_algorithm_are_accepted,
        external_tokens_are_checked_like_our_own,
        the_same_subject_at_two_issuers_is_two_users,
        a_subject_with_a_control_character_names_no_user,
    ));
    trials.extend(tests_on!(Sqlite:
        a_jwks_url_is_refetched_for_a_new_key_at_a_bounded_rate,
        a_jwks_fetch_follows_no_redirect_and_reads_no_more_than_its_bound,
    ));
    trials
}

const IDP: &str = "https://idp.test";

/// Keys of a pretend identity provider, one per algorithm.
struct Provider {
    ed: ed25519_dalek::SigningKey,
    ec: p256::ecdsa::SigningKey,
    rsa: rsa::RsaPrivateKey,
}

impl Provider {
    fn new() -> Self {
        let mut rng = rand_core::OsRng;
        Self {
            ed: ed25519_dalek::SigningKey::generate(&mut rng),
            ec: p256::ecdsa::SigningKey::random(&mut rng),
            rsa: rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap(),
        }
    }

    fn jwk(&self, alg: &str, kid: &str) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match alg {
            "EdDSA" => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.ed.verifying_key().as_bytes()), "kid": kid})
            }
            "ES256" => {
                let point = self.ec.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()), "kid": kid})
            }
            _ => {
                let public = self.rsa.to_public_key();
                json!({"kty": "RSA", "alg": "RS256", "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be()), "kid": kid})
            }
        }
    }

    fn token(&self, alg: &str, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature: Vec<u8> = match alg {
            "EdDSA" => self.ed.sign(input.as_bytes()).to_bytes().to_vec(),
            "ES256" => {
                let signature: p256::ecdsa::Signature = self.ec.sign(input.as_bytes());
                signature.to_bytes().to_vec()
            }
            _ => {
                let key = pkcs1v15::SigningKey::<sha2::Sha256>::new(self.rsa.clone());
                let signature: pkcs1v15::Signature = key.sign(input.as_bytes());
                Box::<[u8]>::from(signature).to_vec()
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn user_claims(sub: &str, roles: Value) -> Value {
    json!({"iss": IDP, "sub": sub, "aud": "http://localhost", "exp": now() + 300, "iat": now(), "roles": roles})
}

async fn list(server: &TestServer, token: &str) -> Result<Vec<pb::PersonalClient>, tonic::Status> {
    let mut api = server.client().await;
    api.list(authed(pb::PersonalClientServiceListRequest::default(), token)).await.map(|r| r.into_inner().list)
}

async fn external_tokens_of_every_algorithm_are_accepted(db: TestDb) {
    let idp = Provider::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let set = json!({"keys": [idp.jwk("EdDSA", "ed-1"), idp.jwk("ES256", "ec-1"), idp.jwk("RS256", "rsa-1")]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let mut config = db.config();
    config.trust.trusted_jwks = vec![format!("{IDP}={}", jwks.display()).parse().unwrap()];
    let server = TestServer::start(config).await;

    for (alg, kid) in [("EdDSA", "ed-1"), ("ES256", "ec-1"), ("RS256", "rsa-1")] {
        let token = idp.token(alg, kid, &user_claims("carol", json!(["reader"])));
        let mut api = server.client().await;
        let mut request = create_request(&format!("via {alg}"));
        request.scoped_roles = vec!["reader".into()];
        let created = api.create(authed(request, &token)).await.unwrap_or_else(|s| panic!("{alg}: {s:?}"));
        let owner = created.into_inner().client.unwrap().user_id;
        assert_eq!(owner, format!("{IDP}#carol"), "the external subject owns it, named with its issuer");
    }
    let token = idp.token("RS256", "rsa-1", &user_claims("carol", json!(["reader"])));
    assert_eq!(list(&server, &token).await.unwrap().len(), 3);
    // The roles come from the token: a role it lacks cannot be granted.
    let mut api = server.client().await;
    let mut request = create_request("too much");
    request.scoped_roles = vec!["admin".into()];
    assert_eq!(api.create(authed(request, &token)).await.unwrap_err().code(), Code::PermissionDenied);
    server.stop().await;
}

async fn external_tokens_are_checked_like_our_own(db: TestDb) {
    let idp = Provider::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [idp.jwk("ES256", "ec-1")]}).to_string()).unwrap();
    let mut config = db.config();
    config.trust.trusted_jwks = vec![format!("{IDP}={}", jwks.display()).parse().unwrap()];
    config.trust.roles_claim = "realm_access.roles".into();
    let server = TestServer::start(config).await;

    let good = json!({"iss": IDP, "sub": "dave", "aud": ["api", "http://localhost"], "exp": now() + 300, "realm_access": {"roles": ["admin"]}});
    let token = idp.token("ES256", "ec-1", &good);
    assert!(list(&server, &token).await.is_ok());
    let mut search =
        personal_clients::pb::iam::personal_client_search_service_client::PersonalClientSearchServiceClient::connect(
            format!("http://{}", server.addr),
        )
        .await
        .unwrap();
    let searched = search.search(authed(pb::PersonalClientSearchServiceSearchRequest::default(), &token)).await;
    assert!(searched.is_ok(), "roles read from --roles-claim realm_access.roles: {searched:?}");

    let mut refused = Vec::new();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        edit(&mut claims);
        claims
    };
    refused.push(("untrusted issuer", idp.token("ES256", "ec-1", &with(&|c| c["iss"] = json!("https://evil.test")))));
    refused.push(("other audience", idp.token("ES256", "ec-1", &with(&|c| c["aud"] = json!("https://other.service")))));
    refused.push(("expired", idp.token("ES256", "ec-1", &with(&|c| c["exp"] = json!(now() - 120)))));
    refused.push(("not yet valid", idp.token("ES256", "ec-1", &with(&|c| c["nbf"] = json!(now() + 600)))));
    refused.push(("unknown kid", idp.token("ES256", "ec-2", &good)));
    refused.push(("key of another algorithm", idp.token("EdDSA", "ec-1", &good)));
    let stranger = Provider::new();
    refused.push(("signed by someone else", stranger.token("ES256", "ec-1", &good)));
    let mut hs = Hmac::new_from_slice(b"secret").unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "ec-1"}).to_string()),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    hmac::Mac::update(&mut hs, input.as_bytes());
    refused.push(("HS256", format!("{input}.{}", URL_SAFE_NO_PAD.encode(hmac::Mac::finalize(hs).into_bytes()))));
    for (why, token) in refused {
        let status = list(&server, &token).await.expect_err(why);
        assert_eq!(status.code(), Code::Unauthenticated, "{why}");
    }
    server.stop().await;
}

type Hmac = hmac::Hmac<sha2::Sha256>;
use hmac::Mac as _;

/// Serves a JWK Set over HTTP and counts the fetches.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (body, fetches) = (Arc::new(Mutex::new(body)), Arc::new(AtomicUsize::new(0)));
        let (served, counted) = (Arc::clone(&body), Arc::clone(&fetches));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0; 4096];
                let _ = stream.read(&mut request).await;
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Self { addr, body, fetches }
    }
}

async fn a_jwks_url_is_refetched_for_a_new_key_at_a_bounded_rate(db: TestDb) {
    let (old, new) = (Provider::new(), Provider::new());
    let jwks = JwksServer::start(json!({"keys": [old.jwk("EdDSA", "2026-01")]}).to_string()).await;
    let mut config = db.config();
    config.trust.trusted_jwks = vec![format!("{IDP}=http://{}/jwks.json", jwks.addr).parse().unwrap()];
    let server = TestServer::start(config).await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "fetched at start");

    assert!(list(&server, &old.token("EdDSA", "2026-01", &user_claims("erin", json!([])))).await.is_ok());
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "a known kid needs no fetch");

    // The provider rotates: a token with the new kid makes the service fetch again.
    *jwks.body.lock().unwrap() =
        json!({"keys": [old.jwk("EdDSA", "2026-01"), new.jwk("EdDSA", "2026-02")]}).to_string();
    assert!(list(&server, &new.token("EdDSA", "2026-02", &user_claims("erin", json!([])))).await.is_ok());
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);

    // A flood of unknown kids does not turn into a flood of fetches.
    for i in 0..20 {
        let token = new.token("EdDSA", &format!("bogus-{i}"), &user_claims("erin", json!([])));
        assert_eq!(list(&server, &token).await.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "at most one fetch per interval");
    server.stop().await;
}

async fn the_same_subject_at_two_issuers_is_two_users(db: TestDb) {
    const OTHER_IDP: &str = "https://other-idp.test";
    let (idp, other) = (Provider::new(), Provider::new());
    let dir = tempfile::tempdir().unwrap();
    let (jwks, other_jwks) = (dir.path().join("jwks.json"), dir.path().join("other.json"));
    std::fs::write(&jwks, json!({"keys": [idp.jwk("EdDSA", "ed-1")]}).to_string()).unwrap();
    std::fs::write(&other_jwks, json!({"keys": [other.jwk("EdDSA", "ed-1")]}).to_string()).unwrap();
    let mut config = db.config();
    config.trust.trusted_jwks = vec![
        format!("{IDP}={}", jwks.display()).parse().unwrap(),
        format!("{OTHER_IDP}={}", other_jwks.display()).parse().unwrap(),
    ];
    let server = TestServer::start(config).await;

    let alice = idp.token("EdDSA", "ed-1", &user_claims("alice", json!(["reader"])));
    let mut request = create_request("alice at the first issuer");
    request.scoped_roles = vec!["reader".into()];
    let mut api = server.client().await;
    let created = api.create(authed(request, &alice)).await.unwrap().into_inner().client.unwrap();

    let mut claims = user_claims("alice", json!(["reader"]));
    claims["iss"] = json!(OTHER_IDP);
    let other_alice = other.token("EdDSA", "ed-1", &claims);
    let local_alice = server.token("alice", &["reader"]).await;
    for (who, token) in [("alice of another issuer", &other_alice), ("alice minted here", &local_alice)] {
        assert!(list(&server, token).await.unwrap().is_empty(), "{who} lists none of her namesake's clients");
        let get = pb::PersonalClientServiceGetRequest { id: created.id.clone() };
        assert_eq!(api.get(authed(get, token)).await.unwrap_err().code(), Code::NotFound, "{who}: get");
        let widen = pb::PersonalClientServiceUpdateRequest {
            client: Some(pb::PersonalClient {
                id: created.id.clone(),
                allow_source_cidr: vec!["0.0.0.0/0".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["allow_source_cidr".into()] }),
        };
        assert_eq!(api.update(authed(widen, token)).await.unwrap_err().code(), Code::NotFound, "{who}: update");
        let delete = pb::PersonalClientServiceDeleteRequest { id: created.id.clone() };
        assert_eq!(api.delete(authed(delete, token)).await.unwrap_err().code(), Code::NotFound, "{who}: delete");
    }
    let still = api.get(authed(pb::PersonalClientServiceGetRequest { id: created.id.clone() }, &alice)).await;
    let still = still.unwrap().into_inner().client.unwrap();
    assert!(still.allow_source_cidr.is_empty() && still.deleted_at.is_none(), "untouched: {still:?}");
    server.stop().await;
}

/// A subject becomes a user id, which becomes a credential's owner and, behind the mesh, the
/// `x-user-id` header: one with a control character (a CR LF that would end that header and
/// begin another) names no user, and nothing is stored for it.
async fn a_subject_with_a_control_character_names_no_user(db: TestDb) {
    let idp = Provider::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [idp.jwk("EdDSA", "ed-1")]}).to_string()).unwrap();
    let mut config = db.config();
    config.trust.trusted_jwks = vec![format!("{IDP}={}", jwks.display()).parse().unwrap()];
    let server = TestServer::start(config).await;
    let mut api = server.client().await;

    for subject in ["mallory\r\nx-user-id: root", "mallory\0", "mallory\u{7f}", "mallory\u{85}", "\tmallory"] {
        let token = idp.token("EdDSA", "ed-1", &user_claims(subject, json!(["reader"])));
        let status = api.create(authed(create_request("smuggled"), &token)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{subject:?}: {status:?}");
        assert_eq!(status.message(), "missing or invalid bearer token", "{subject:?}");
        assert_eq!(list(&server, &token).await.unwrap_err().code(), Code::Unauthenticated, "{subject:?}");
        let answer = crate::common::oauth::http(
            server.addr,
            "GET",
            "/api/v1/iam/personal_clients",
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
        assert_eq!(answer.status, 401, "{subject:?}: {}", answer.body);
    }
    let mut search =
        personal_clients::pb::iam::personal_client_search_service_client::PersonalClientSearchServiceClient::new(
            server.channel().await,
        );
    let admin = server.token("root", &["admin"]).await;
    let all = search.search(authed(pb::PersonalClientSearchServiceSearchRequest::default(), &admin)).await.unwrap();
    assert!(all.into_inner().list.is_empty(), "nothing was stored for those subjects");
    // The same provider's ordinary subjects are users as before.
    let carol = idp.token("EdDSA", "ed-1", &user_claims("carol", json!(["reader"])));
    assert!(api.create(authed(create_request("fine"), &carol)).await.is_ok());
    server.stop().await;
}

async fn a_jwks_fetch_follows_no_redirect_and_reads_no_more_than_its_bound(db: TestDb) {
    const REDIRECTED: &str = "https://redirected.test";
    const ENDLESS: &str = "https://endless.test";
    let attacker = Provider::new();
    let elsewhere = JwksServer::start(json!({"keys": [attacker.jwk("EdDSA", "k")]}).to_string()).await;

    // Answers every request with a redirect to `elsewhere`.
    let redirect = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_addr = redirect.local_addr().unwrap();
    let location = format!("http://{}/jwks.json", elsewhere.addr);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = redirect.accept().await {
            let _ = stream.read(&mut [0; 4096]).await;
            let response = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    // Answers with a body that never ends, counting what it manages to send.
    let endless = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless_addr = endless.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = endless.accept().await {
            let _ = stream.read(&mut [0; 4096]).await;
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    )
                    .await;
                let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {
                    counted.fetch_add(0x10000, Ordering::SeqCst);
                    if counted.load(Ordering::SeqCst) > 512 << 20 {
                        break;
                    }
                }
            });
        }
    });

    let mut config = db.config();
    config.trust.trusted_jwks = vec![
        format!("{REDIRECTED}=http://{redirect_addr}/jwks.json").parse().unwrap(),
        format!("{ENDLESS}=http://{endless_addr}/jwks.json").parse().unwrap(),
    ];
    let server = TestServer::start(config).await;
    for issuer in [REDIRECTED, ENDLESS] {
        let mut claims = user_claims("mallory", json!(["admin"]));
        claims["iss"] = json!(issuer);
        let status = list(&server, &attacker.token("EdDSA", "k", &claims)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{issuer}: {status:?}");
    }
    assert_eq!(elsewhere.fetches.load(Ordering::SeqCst), 0, "the redirect was not followed");
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < 32 << 20, "the endless body was cut off near the 1 MiB bound, not read: {} MiB sent", sent >> 20);
    server.stop().await;
}
