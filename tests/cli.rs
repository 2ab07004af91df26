//! The binary as an operator runs it: `migrate`, `mint-token`, `serve`, and SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::authed;
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

    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(dir.path())
        .env_remove("PC_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut logged = String::new();
    let address = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited early: {logged}");
        logged.push_str(&line);
        let entry: serde_json::Value = serde_json::from_str(&line).expect("json log lines");
        if entry["fields"]["message"] == "serving" {
            break entry["fields"]["address"].as_str().unwrap().to_owned();
        }
    };

    let mut client = PersonalClientServiceClient::connect(format!("http://{address}")).await.unwrap();
    let created = client
        .create(authed(
            pb::PersonalClientServiceCreateRequest { display_name: "from cli".into(), ..Default::default() },
            token,
        ))
        .await
        .expect("the minted token works against the server on the same database")
        .into_inner();

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    logged.push_str(&rest);
    assert!(!logged.contains(&created.client_secret), "the secret never reaches a log");
    assert!(!logged.contains(token), "tokens never reach a log");
    assert!(logged.contains(&created.client.unwrap().client_id), "the creation is logged");
}
