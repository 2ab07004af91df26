//! The transport as callers meet it: size limits, deadlines, and TLS on the same port.

use std::time::{Duration, Instant};

use crate::common::{TestDb, TestServer, authed, create_request, eventually, proxy::TcpProxy};
use personal_clients::{
    config::Config, pb::iam as pb, pb::iam::personal_client_service_client::PersonalClientServiceClient,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig},
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(oversized_requests_are_resource_exhausted, tls_serves_grpc_and_http_on_one_port));
    trials.extend(tests_on!(Postgres: caller_deadlines_are_honoured));
    trials
}

async fn oversized_requests_are_resource_exhausted(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &[]).await;
    let mut api = server.client().await;
    let status = api.create(authed(create_request(&"x".repeat(100 * 1024)), &token)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("65536 bytes"), "says what is allowed: {}", status.message());

    // The largest valid request is well inside the limit.
    let mut big = create_request(&"é".repeat(200));
    big.allow_source_cidr = (0..100).map(|i| format!("2001:db8:{i:x}::/48")).collect();
    big.scoped_roles = Vec::new();
    assert!(api.create(authed(big, &token)).await.is_ok());
    server.stop().await;
}

async fn tls_serves_grpc_and_http_on_one_port(db: TestDb) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = db.config();
    config.serving.tls_cert = Some(cert_path);
    config.serving.tls_key = Some(key_path);
    let server = TestServer::start_tls(config, &cert.cert.pem()).await;
    let token = server.token("alice", &[]).await;

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(cert.cert.pem())).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = PersonalClientServiceClient::new(channel);
    let created = api.create(authed(create_request("over TLS"), &token)).await.expect("gRPC over TLS");
    assert!(created.into_inner().client_secret.starts_with("secret-token:"));

    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let jwks =
        https.get(format!("https://localhost:{}/.well-known/jwks.json", server.addr.port())).send().await.unwrap();
    assert_eq!(jwks.status(), 200, "HTTP over TLS on the same port");

    let plaintext = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await;
    if let Ok(channel) = plaintext {
        let list = PersonalClientServiceClient::new(channel)
            .list(authed(pb::PersonalClientServiceListRequest::default(), &token))
            .await;
        assert!(list.is_err(), "no plaintext beside TLS");
    }
    server.stop().await;
}

async fn caller_deadlines_are_honoured(db: TestDb) {
    let proxy = TcpProxy::start(db.server_addr().await).await;
    let server = TestServer::start(Config::defaults(&db.url_via(proxy.addr)).unwrap()).await;
    let token = server.token("alice", &[]).await;
    let mut api = server.client().await;
    proxy.stall();
    let mut request = authed(pb::PersonalClientServiceListRequest::default(), &token);
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = api.list(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "the server gives up when the caller's deadline passes: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not after the database's own timeout: {:?}",
        started.elapsed()
    );
    // The call that never finished is counted all the same.
    // DEADLINE_EXCEEDED when the server's timer for the deadline ends it, CANCELLED when the
    // caller's own timer wins and its reset arrives first: counted either way, once.
    eventually(Duration::from_secs(10), "the cut-off List in the metrics", || async {
        server.calls("List", "DEADLINE_EXCEEDED").await + server.calls("List", "CANCELLED").await == 1.0
    })
    .await;
}
