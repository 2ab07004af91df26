//! Audit events, as an operator ships them: JSON log lines of the target `audit`, one for each
//! Create, Update and Delete (done or refused) and each refused token exchange, saying who,
//! what, from where and with what outcome, and never a secret, an assertion or a token.

use serde_json::Value;
use tonic::transport::Channel;

use crate::common::{
    TestDb, authed, create_request,
    oauth::{ServerProcess, http, key_from_secret, post_token, sdk_assertion, token_form},
};
use personal_clients::pb::iam::{self as pb, personal_client_service_client::PersonalClientServiceClient};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    tests_on!(Sqlite:
        changes_and_refused_exchanges_are_audit_events_without_secrets,
        a_leaked_secrets_revocation_names_its_reporter_and_only_it_is_written,
        a_refused_exchange_without_a_client_id_names_the_client_its_assertion_claims,
    )
}

/// The audit events of a server's JSON log, in order.
fn audit_events(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["target"] == "audit")
        .collect()
}

/// RFC 7523 makes the form's `client_id` optional, and libraries such as authlib leave it out:
/// the refusal then names the client the assertion claims to be.
async fn a_refused_exchange_without_a_client_id_names_the_client_its_assertion_claims(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), Some(&db.url), &[]);
    let stranger = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let claimed = "someone@localhost/pcc";
    let mut form = token_form(claimed, &sdk_assertion(&stranger, claimed));
    form.retain(|(name, _)| *name != "client_id");
    assert_eq!(post_token(server.addr, &form, &[]).await.status, 401);
    let (_, log) = server.terminate();
    let refusal = audit_events(&log)
        .into_iter()
        .find(|event| event["fields"]["action"] == "token.exchange")
        .unwrap_or_else(|| panic!("no refusal event: {log}"));
    assert_eq!(refusal["fields"]["actor"], claimed, "{refusal}");
}

/// A report that revokes a credential is one event, naming the reporter's address and
/// `User-Agent` (escaped: anyone may send one); reports that revoke nothing write nothing.
async fn a_leaked_secrets_revocation_names_its_reporter_and_only_it_is_written(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), Some(&db.url), &[]);
    let alice = crate::common::mint(&db.config(), "alice", &["reader"], std::time::Duration::from_secs(600)).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut api = PersonalClientServiceClient::new(channel);
    let created = api.create(authed(create_request("leaked"), &alice)).await.unwrap().into_inner();
    let client = created.client.unwrap();

    let report = |secrets: Vec<&str>| serde_json::json!({ "credentials": secrets }).to_string();
    let agent = "scanner/2.1\t\"forged\"";
    let headers = [("Content-Type", "application/json"), ("User-Agent", agent)];
    for body in [report(vec!["secret-token:personal-clients:v1:nothing"]), report(vec![&created.client_secret])] {
        let answer = http(server.addr, "POST", "/auth/v1/credentials/revoke", &headers, &body).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let revocations: Vec<Value> = audit_events(&log)
        .into_iter()
        .filter(|event| event["fields"]["action"] == "personal_client.revoke_leaked")
        .collect();
    assert_eq!(revocations.len(), 1, "one event, for the secret that revoked something: {log}");
    let fields = &revocations[0]["fields"];
    assert_eq!(fields["target"], client.id.as_str());
    assert_eq!(fields["client_id"], client.client_id.as_str());
    assert_eq!(fields["owner"], "alice", "plain values, without quotes of their own");
    assert_eq!(fields["source"], "127.0.0.1");
    assert_eq!(fields["user_agent"], agent, "the reporter's User-Agent, as JSON escapes it");
    assert_eq!(fields["outcome"], "done");
    let secret_key = created.client_secret.rsplit(':').next().unwrap();
    assert!(!log.contains(secret_key), "the reported secret in the log");
}

async fn changes_and_refused_exchanges_are_audit_events_without_secrets(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), Some(&db.url), &[]);
    let alice = crate::common::mint(&db.config(), "alice", &["reader"], std::time::Duration::from_secs(600)).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut api = PersonalClientServiceClient::new(channel);

    let created = api.create(authed(create_request("audited"), &alice)).await.unwrap().into_inner();
    let client = created.client.unwrap();
    let mut greedy = create_request("greedy");
    greedy.scoped_roles = vec!["admin".into()];
    api.create(authed(greedy, &alice)).await.unwrap_err();
    let missing =
        pb::PersonalClient { id: uuid::Uuid::now_v7().to_string(), display_name: "x".into(), ..Default::default() };
    let update = pb::PersonalClientServiceUpdateRequest { client: Some(missing.clone()), update_mask: None };
    api.update(authed(update, &alice)).await.unwrap_err();

    let key = key_from_secret(&created.client_secret);
    let assertion = sdk_assertion(&key, &client.client_id);
    assert_eq!(post_token(server.addr, &token_form(&client.client_id, &assertion), &[]).await.status, 200);
    let replayed = post_token(server.addr, &token_form(&client.client_id, &assertion), &[]).await;
    assert_eq!(replayed.status, 401);
    let bearer = format!("Bearer {alice}");
    let deleted = http(
        server.addr,
        "DELETE",
        &format!("/api/v1/iam/personal_clients/{}", client.id),
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let audit = audit_events(&log);
    // The server made the database's first signing key as it started.
    let (keys, events): (Vec<Value>, Vec<Value>) =
        audit.into_iter().partition(|event| event["fields"]["action"] == "signing_key.add");
    assert_eq!(keys.len(), 1, "{log}");
    assert_eq!(
        (keys[0]["fields"]["actor"].as_str(), keys[0]["fields"]["outcome"].as_str()),
        (Some("server"), Some("done"))
    );
    let kid = keys[0]["fields"]["target"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(kid).is_ok(), "the key's kid, a plain value: {kid:?}");
    let summary: Vec<(String, String, String, String)> = events
        .iter()
        .map(|event| {
            let field = |name: &str| event["fields"][name].as_str().unwrap_or_default().to_owned();
            (field("action"), field("outcome"), field("reason"), field("target"))
        })
        .collect();
    let expected = [
        ("personal_client.create", "done", "", client.id.as_str()),
        ("personal_client.create", "refused", "PERMISSION_DENIED", ""),
        ("personal_client.update", "refused", "NOT_FOUND", missing.id.as_str()),
        ("token.exchange", "refused", "replayed", ""),
        ("personal_client.delete", "done", "", client.id.as_str()),
    ];
    let expected: Vec<(String, String, String, String)> =
        expected.iter().map(|(a, o, r, t)| ((*a).into(), (*o).into(), (*r).into(), (*t).into())).collect();
    assert_eq!(summary, expected, "{log}");
    for event in &events {
        assert!(event["timestamp"].as_str().is_some_and(|at| at.ends_with('Z')), "when: {event}");
        assert_eq!(event["fields"]["source"], "127.0.0.1", "from where: {event}");
    }
    let changes = events.iter().filter(|event| event["fields"]["action"] != "token.exchange");
    assert!(changes.into_iter().all(|event| event["fields"]["actor"] == "alice"), "who: {log}");
    assert_eq!(events[0]["fields"]["client_id"], client.client_id, "the OAuth client id of what was created");
    let exchange = &events[3]["fields"];
    assert_eq!(exchange["actor"], client.client_id.as_str(), "the client that tried");

    let secret_key = created.client_secret.rsplit(':').next().unwrap();
    for secret in [created.client_secret.as_str(), secret_key, assertion.as_str(), alice.as_str()] {
        assert!(!log.contains(secret), "a secret, assertion or token in the log");
    }
}
