//! The binary as an operator runs it: `migrate`, `mint-token`, `serve`, and SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{authed, oauth::ServerProcess};
use personal_clients::pb::iam::{self as pb, personal_client_service_client::PersonalClientServiceClient};

const BIN: &str = env!("CARGO_BIN_EXE_personal-clients");

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).current_dir(dir).env_remove("PC_DATABASE_URL").output().expect("run binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_on_the_default_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = run(dir.path(), &["migrate"]);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    assert!(
        dir.path().join("personal-clients.db").exists(),
        "the default database is a SQLite file in the working directory"
    );

    let minted = run(dir.path(), &["mint-token", "--user", "alice", "--roles", "reader,writer", "--ttl", "10m"]);
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let stdout = String::from_utf8(minted.stdout).unwrap();
    let token = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "mint-token prints the token and nothing else");
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token}");

    let bad = run(dir.path(), &["mint-token", "--user", "alice", "--roles", "not a role"]);
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("roles"), "the error names what was wrong");

    let server = ServerProcess::spawn(dir.path(), None, &[]);
    let mut client = PersonalClientServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let created = client
        .create(authed(
            pb::PersonalClientServiceCreateRequest { display_name: "from cli".into(), ..Default::default() },
            token,
        ))
        .await
        .expect("the minted token works against the server on the same database")
        .into_inner();

    let (status, logged) = server.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    assert!(!logged.contains(&created.client_secret), "the secret never reaches a log");
    assert!(!logged.contains(token), "tokens never reach a log");
    assert!(logged.contains(&created.client.unwrap().client_id), "the creation is logged");
}
