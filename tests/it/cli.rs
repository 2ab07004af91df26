//! The binary as an operator runs it: `migrate`, `mint-token`, `serve`, SIGTERM, and the
//! mistakes an operator makes.

use personal_clients::pb::iam::{self as pb, personal_client_service_client::PersonalClientServiceClient};

use std::io::Write;

use crate::common::{
    authed,
    oauth::{ServerProcess, binary, post_token, token_form},
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    plain_tests!(
        operator_workflow_on_the_default_sqlite_database,
        each_command_takes_only_its_own_options,
        configuration_mistakes_are_usage_errors_naming_the_flag,
        mint_token_refuses_a_database_no_server_has_set_up,
        start_up_errors_say_what_where_and_what_to_do,
        processes_opening_a_new_sqlite_file_together_all_succeed,
        a_secret_signs_an_assertion_on_the_command_line,
        callers_cannot_forge_log_lines,
        completions_and_the_manual_page_come_from_the_command_line,
    )
}

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    binary(dir).args(args).output().expect("run binary")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn each_command_takes_only_its_own_options() {
    let dir = tempfile::tempdir().unwrap();
    let version = String::from_utf8(run(dir.path(), &["--version"]).stdout).unwrap();
    let commit = crate::operations::built_commit();
    assert_eq!(version.trim(), format!("personal-clients {} (commit {commit})", env!("CARGO_PKG_VERSION")));
    let help = |command: &str| String::from_utf8(run(dir.path(), &[command, "--help"]).stdout).unwrap();
    let mint = help("mint-token");
    for option in ["--database-url", "--public-host", "--issuer", "--user", "--roles", "--ttl"] {
        assert!(mint.contains(option), "mint-token takes {option}: {mint}");
    }
    for option in ["--listen", "--tls-cert", "--trusted-proxies", "--token-ttl", "--trusted-jwks", "--max-lifetime"] {
        assert!(!mint.contains(option), "mint-token does not take {option}: {mint}");
    }
    let migrate = help("migrate");
    assert!(migrate.contains("--database-url"));
    for option in ["--listen", "--public-host", "--trusted-jwks", "--user"] {
        assert!(!migrate.contains(option), "migrate does not take {option}: {migrate}");
    }
    let serve = help("serve");
    for option in ["--listen", "--tls-cert", "--trusted-proxies", "--token-ttl", "--database-url"] {
        assert!(serve.contains(option), "serve takes {option}");
    }
    assert!(!serve.contains("--user") && !serve.contains("--ttl <"), "serve takes no mint-token options: {serve}");
    let keys = help("keys");
    for command in ["list", "add", "retire"] {
        assert!(keys.contains(command), "keys {command}: {keys}");
    }
    let add = String::from_utf8(run(dir.path(), &["keys", "add", "--help"]).stdout).unwrap();
    for option in ["--database-url", "--key-encryption-key-file", "--activate-in"] {
        assert!(add.contains(option), "keys add takes {option}: {add}");
    }
    assert!(serve.contains("--key-rotation-interval"), "serve rotates keys: {serve}");
    let refused = run(dir.path(), &["mint-token", "--user", "alice", "--listen", "0.0.0.0:1"]);
    assert_eq!(refused.status.code(), Some(2), "an option of another command is a usage error");
}

async fn configuration_mistakes_are_usage_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (&["serve", "--public-host", "pc.example.com/api"][..], "--public-host"),
        (&["serve", "--token-ttl", "0s"][..], "--token-ttl"),
        (&["serve", "--max-lifetime", "300000y"][..], "--max-lifetime"),
        (&["serve", "--admin-role", "the admins"][..], "--admin-role"),
        (&["serve", "--secret-namespace", "a:b"][..], "--secret-namespace"),
        (&["serve", "--usage-flush-interval", "soon"][..], "--usage-flush-interval"),
        (&["serve", "--database-url", "mysql://x"][..], "--database-url"),
        (&["serve", "--listen", "localhost"][..], "--listen"),
        (&["--public-host", "a b"][..], "--public-host"),
        (&["mint-token", "--user", "alice", "--roles", "not a role"][..], "--roles"),
        (&["mint-token", "--user", " "][..], "--user"),
        (&["mint-token", "--user", "https://idp.example.com#alice"][..], "--user"),
        (&["mint-token", "--user", "alice\r\nx-user-id: root"][..], "--user"),
        (&["serve", "--trusted-jwks", "https://idp#x=jwks.json"][..], "--trusted-jwks"),
        (&["serve", "--trusted-jwks", "https://idp=http://idp.example.com/jwks.json"][..], "--trusted-jwks"),
        (&["serve", "--max-connections", "0"][..], "--max-connections"),
        (&["serve", "--idle-timeout", "0s"][..], "--idle-timeout"),
        (&["serve", "--max-header-bytes", "10"][..], "--max-header-bytes"),
        (&["serve", "--token-ttl", "25h"][..], "--token-ttl"),
        (&["mint-token", "--user", "alice", "--ttl", "2d"][..], "--ttl"),
        (&["serve", "--key-rotation-interval", "5m"][..], "--key-rotation-interval"),
        (&["serve", "--key-rotation-interval", "sometimes"][..], "--key-rotation-interval"),
        (&["keys", "add", "--activate-in", "soon"][..], "--activate-in"),
    ] {
        let output = run(dir.path(), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(flag), "{args:?} names {flag}: {}", stderr(&output));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a usage error touches nothing");
}

async fn mint_token_refuses_a_database_no_server_has_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["mint-token", "--user", "alice"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no token for a database no server uses");
    let message = stderr(&output);
    assert!(message.contains("personal-clients.db") && message.contains("migrate"), "{message}");
    assert!(!dir.path().join("personal-clients.db").exists(), "mint-token creates no database");
}

async fn start_up_errors_say_what_where_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/pc.db");
    let output = run(dir.path(), &["migrate", "--database-url", &format!("sqlite://{}?mode=rwc", missing.display())]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&missing.display().to_string()), "names the file: {message}");
    assert!(message.contains("directory exists"), "says what to check: {message}");

    // Nothing listens on port 1: the cause is named, not a pool timing out.
    let output = run(dir.path(), &["migrate", "--database-url", "postgres://postgres@127.0.0.1:1/pc"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("127.0.0.1:1") && message.to_lowercase().contains("refused"), "{message}");
    assert!(!message.contains("internal"), "an operator's mistake is not an internal error: {message}");

    // A flag's file that cannot be used is the operator's mistake, named by its flag.
    let output = run(dir.path(), &["serve", "--tls-cert", "missing.pem", "--tls-key", "missing-key.pem"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--tls-cert: cannot read missing.pem"), "{}", stderr(&output));
    let output = run(dir.path(), &["serve", "--trusted-jwks", "https://idp.example=missing.json"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--trusted-jwks") && stderr(&output).contains("missing.json"));

    // Logs written to a file carry no terminal colour codes.
    let output = run(dir.path(), &["migrate"]);
    assert!(output.status.success());
    assert!(stderr(&output).contains("created the first token signing key"));
    assert!(!stderr(&output).contains('\u{1b}'), "no escape codes: {:?}", stderr(&output));
}

async fn processes_opening_a_new_sqlite_file_together_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| binary(dir.path()).arg("migrate").stderr(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let minted = run(dir.path(), &["mint-token", "--user", "alice"]);
    assert!(minted.status.success(), "one key, usable: {}", stderr(&minted));
}

async fn operator_workflow_on_the_default_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = run(dir.path(), &["migrate"]);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    assert!(
        dir.path().join("personal-clients.db").exists(),
        "the default database is a SQLite file in the working directory"
    );
    // It holds the keys that sign access tokens: no one else may read it.
    #[cfg(unix)]
    for file in ["personal-clients.db", "personal-clients.db-wal", "personal-clients.db-shm"] {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(dir.path().join(file)) {
            assert_eq!(metadata.permissions().mode() & 0o077, 0, "{file} is {:o}", metadata.permissions().mode());
        }
    }

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

async fn a_secret_signs_an_assertion_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), None, &[]);
    let token = String::from_utf8(run(dir.path(), &["mint-token", "--user", "alice"]).stdout).unwrap();
    let mut api = PersonalClientServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let created = api
        .create(authed(
            pb::PersonalClientServiceCreateRequest { display_name: "shell".into(), ..Default::default() },
            token.trim(),
        ))
        .await
        .unwrap()
        .into_inner();
    let client_id = created.client.unwrap().client_id;

    // From the environment.
    let signed = binary(dir.path())
        .args(["client-assertion", "--client-id", &client_id])
        .env("PC_CLIENT_SECRET", &created.client_secret)
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", stderr(&signed));
    let assertion = String::from_utf8(signed.stdout).unwrap();
    let exchanged = post_token(server.addr, &token_form(&client_id, assertion.trim()), &[]).await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.body);

    // From standard input; each assertion is fresh.
    let mut child = binary(dir.path())
        .args(["client-assertion", "--client-id", &client_id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(created.client_secret.as_bytes()).unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success());
    let assertion = String::from_utf8(piped.stdout).unwrap();
    let again = post_token(server.addr, &token_form(&client_id, assertion.trim()), &[]).await;
    assert_eq!(again.status, 200, "{}", again.body);

    let garbled = created.client_secret.replace("secret-token:", "secret:");
    let refused = binary(dir.path())
        .args(["client-assertion", "--client-id", &client_id])
        .env("PC_CLIENT_SECRET", &garbled)
        .output()
        .unwrap();
    assert!(!refused.status.success() && refused.stdout.is_empty());
    assert!(stderr(&refused).contains("not a personal client secret"), "{}", stderr(&refused));
    assert!(!stderr(&refused).contains(&garbled), "the secret is never echoed");
}

async fn callers_cannot_forge_log_lines() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    /// Kills the server if the test fails before it is stopped.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Running(
        binary(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = BufReader::new(child.0.stderr.take().unwrap());
    let addr: std::net::SocketAddr = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "the server exited");
        if let Some(at) = line.find("address=") {
            break line[at + "address=".len()..].split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let forged = "brave-otter-00001@localhost/pcc\n2026-01-01T00:00:00Z  INFO FORGED admin logged in \u{1b}[2J";
    let refused = post_token(addr, &token_form(forged, "not-a-jwt"), &[]).await;
    assert_eq!(refused.status, 401);
    let long = "y".repeat(12_000);
    assert_eq!(post_token(addr, &token_form(&long, "not-a-jwt"), &[]).await.status, 401);
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut rest = String::new();
    log.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("token exchange refused"), "{rest}");
    assert!(!rest.lines().any(|line| line.contains("FORGED") && !line.contains("token exchange refused")), "{rest}");
    assert!(!rest.contains('\u{1b}'), "no terminal escape reaches the log");
    assert!(!rest.contains(&long[..1000]), "a long client_id is cut short in the log");
}

/// Shell completions that bash loads, and a manual page that man renders, each naming the
/// commands and the options the binary takes.
async fn completions_and_the_manual_page_come_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = |args: &[&str]| {
        let output = run(dir.path(), args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    let bash = dir.path().join("personal-clients.bash");
    std::fs::write(&bash, out(&["completions", "bash"])).unwrap();
    let loaded = std::process::Command::new("bash")
        .args(["-c", &format!("source {} && complete -p personal-clients", bash.display())])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("-F _personal__clients personal-clients"), "{loaded:?}");
    let script = std::fs::read_to_string(&bash).unwrap();
    for word in ["mint-token", "client-assertion", "--otlp-endpoint", "--database-url"] {
        assert!(script.contains(word), "bash completes {word}");
    }
    assert!(out(&["completions", "zsh"]).starts_with("#compdef personal-clients"));
    assert!(out(&["completions", "fish"]).contains("complete -c personal-clients"));
    let refused = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(refused.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(stderr(&refused).contains("bash"), "the shells there are: {}", stderr(&refused));

    let page = dir.path().join("personal-clients.1");
    std::fs::write(&page, out(&["man"])).unwrap();
    match std::process::Command::new("man").env("MANWIDTH", "200").arg("-l").arg(&page).output() {
        Ok(rendered) => {
            let rendered = String::from_utf8_lossy(&rendered.stdout);
            for word in
                ["NAME", "personal-clients - Issues and manages", "--otlp-endpoint", "personal-clients-mint-token(1)"]
            {
                assert!(rendered.contains(word), "the manual page shows {word}: {rendered}");
            }
        }
        Err(err) => {
            eprintln!("    skipped rendering the manual page: no man here ({err}); its roff is checked as text");
            let roff = std::fs::read_to_string(&page).unwrap();
            assert!(roff.contains(".TH personal-clients 1") && roff.contains("otlp\\-endpoint"), "{roff}");
        }
    }
}
