//! What a client of the token exchange does, written from the client's side: read the secret,
//! sign an assertion, post a form, and check a token against the published JWKS.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{Value, json};

/// The Ed25519 key inside a secret returned by Create: `secret-token:<ns>:v1:<base64url JWK>`.
pub fn key_from_secret(secret: &str) -> SigningKey {
    let parts: Vec<&str> = secret.splitn(4, ':').collect();
    assert_eq!(parts.len(), 4, "secret has four parts");
    assert_eq!(parts[2], "v1");
    let jwk: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[3]).unwrap()).unwrap();
    let d: [u8; 32] = URL_SAFE_NO_PAD.decode(jwk["d"].as_str().unwrap()).unwrap().try_into().unwrap();
    SigningKey::from_bytes(&d)
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A compact JWS over `header` and `claims`, signed with Ed25519 whatever `alg` says.
pub fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// An assertion exactly as ConductorOne's Go SDK builds it: header `nonce` (16 random bytes in
/// hex), no `kid`, no `jti`; `aud` the host, `nbf` two minutes back, `exp` two minutes ahead.
pub fn sdk_assertion(key: &SigningKey, client_id: &str) -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let now = now();
    sign(
        key,
        &json!({"alg": "EdDSA", "nonce": nonce}),
        &json!({"iss": client_id, "sub": client_id, "aud": "localhost", "exp": now + 120, "iat": now, "nbf": now - 120}),
    )
}

/// Claims of a standard assertion with a fresh `jti`, for tests to alter.
pub fn claims(client_id: &str) -> Value {
    let now = now();
    json!({"iss": client_id, "sub": client_id, "aud": "localhost", "exp": now + 60, "iat": now, "jti": uuid::Uuid::now_v7().to_string()})
}

/// The form fields of a token request.
pub fn token_form(client_id: &str, assertion: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", client_id.into()),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
        ("client_assertion", assertion.into()),
    ]
}

/// An HTTP/1.1 answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// One plain HTTP/1.1 request to the server, as curl would send it.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    // reqwest's TLS needs a crypto provider; a server in this process would install the same.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("http://{addr}{path}")).body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    HttpResponse { status, headers, body: response.text().await.unwrap() }
}

/// `POST /auth/v1/token` with a form body, as an OAuth2 library sends it.
pub async fn post_token(addr: SocketAddr, form: &[(&str, String)], extra: &[(&str, &str)]) -> HttpResponse {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    http(addr, "POST", "/auth/v1/token", &headers, &body).await
}

/// Verifies an access token against the service's published JWKS and returns its claims.
pub async fn verify_with_jwks(addr: SocketAddr, token: &str) -> Value {
    let jwks = http(addr, "GET", "/.well-known/jwks.json", &[], "").await.json();
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == header["kid"]).expect("kid is published");
    let x: [u8; 32] = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap().try_into().unwrap();
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(parts[2]).unwrap().try_into().unwrap();
    VerifyingKey::from_bytes(&x)
        .unwrap()
        .verify_strict(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("signed by a published key");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

/// The binary, run in `dir` without any of the caller's `PC_*` or `OTEL_*` variables.
pub fn binary(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_personal-clients"));
    command.current_dir(dir);
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("PC_") || name_text.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
}

/// The binary, serving on an ephemeral port; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: BufReader<std::process::ChildStderr>,
    pub log: String,
}

impl ServerProcess {
    pub fn spawn(dir: &std::path::Path, database_url: Option<&str>, args: &[&str]) -> Self {
        Self::spawn_with_env(dir, database_url, args, &[])
    }

    /// [`Self::spawn`], with these environment variables.
    pub fn spawn_with_env(
        dir: &std::path::Path,
        database_url: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = binary(dir);
        command.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]).args(args).envs(env.iter().copied());
        if let Some(url) = database_url {
            command.env("PC_DATABASE_URL", url);
        }
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn server");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        let addr = loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited early: {log}");
            log.push_str(&line);
            let entry: Value = serde_json::from_str(&line).expect("json log lines");
            if entry["fields"]["message"] == "serving" {
                break entry["fields"]["address"].as_str().unwrap().parse().unwrap();
            }
        };
        Self { child, addr, stderr, log }
    }

    /// Sends SIGTERM, waits for the exit status and returns everything the server logged.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (status, std::mem::take(&mut self.log) + &rest)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
