//! What operators and dynamic clients rely on: health that follows the database, and reflection
//! for clients without .proto files.

use std::time::{Duration, Instant};

use crate::common::{TestDb, TestServer, oauth::http, proxy::TcpProxy, sample};
use personal_clients::{config::Config, server::health_names};
use prost::Message;
use tonic::{codegen::tokio_stream, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::{v1, v1alpha};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = Vec::new();
    trials.extend(backend_tests!(
        health_reports_serving_for_every_service,
        reflection_lists_and_describes_the_services,
        reflection_streams_are_bounded_in_bytes_time_and_number,
        metrics_count_calls_and_exchange_outcomes,
        metrics_labels_only_methods_served_here
    ));
    trials.extend(tests_on!(Postgres: health_follows_the_database_away_and_back));
    trials
}

async fn metrics_count_calls_and_exchange_outcomes(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let token = server.token("alice", &[]).await;
    let mut api = server.client().await;
    api.list(crate::common::authed(personal_clients::pb::iam::PersonalClientServiceListRequest::default(), &token))
        .await
        .unwrap();
    let form = crate::common::oauth::token_form("quiet-moon-12345@localhost/pcc", "not-a-jwt");
    assert_eq!(crate::common::oauth::post_token(server.addr, &form, &[]).await.status, 401);

    let page = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(page.status, 200);
    // What the body is: the Prometheus text format 0.0.4, each family typed under the name of
    // its samples (OpenMetrics would name a counter without `_total` and end with `# EOF`).
    assert_eq!(page.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(page.body.contains("# TYPE personal_clients_grpc_requests_total counter\n"), "{}", page.body);
    assert!(page.body.contains("# TYPE personal_clients_grpc_request_duration_seconds histogram\n"));
    assert!(!page.body.contains("# EOF"), "{}", page.body);
    // The process, as every Prometheus target is expected to show it, and what is running.
    for family in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(&page.body, family).is_some_and(|value| value >= 0.0), "{family}: {}", page.body);
    }
    assert!(sample(&page.body, "process_resident_memory_bytes").unwrap() > 1e6, "a resident set of megabytes");
    let build = format!(
        r#"personal_clients_build_info{{commit="{}",version="{}"}}"#,
        built_commit(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&page.body, &build), Some(1.0), "{}", page.body);
    let text = page.body;
    let list = r#"method="/c1.api.iam.v1.PersonalClientService/List",protocol="grpc""#;
    assert_eq!(
        sample(&text, &format!("personal_clients_grpc_requests_total{{code=\"OK\",{list}}}")),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, &format!("personal_clients_grpc_requests_total{{code=\"UNAUTHENTICATED\",{list}}}")).unwrap()
            >= 1.0
    );
    let calls = sample(&text, &format!("personal_clients_grpc_request_duration_seconds_count{{{list}}}")).unwrap();
    assert!(calls >= 2.0, "every call is timed: {calls}");
    assert_eq!(
        sample(&text, r#"personal_clients_token_exchanges_total{outcome="malformed_assertion"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, r#"personal_clients_db_pool_connections{pool="durable",state="idle"}"#).is_some(), "{text}");
    server.stop().await;
}

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

async fn statuses(server: &TestServer) -> Vec<ServingStatus> {
    let mut health = HealthClient::new(channel(server).await);
    let mut found = Vec::new();
    for service in health_names() {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        found.push(response.status());
    }
    found
}

/// A unary gRPC call of `path` with an empty message, as a scanner would make it.
async fn raw_call(server: &TestServer, path: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel(server).await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
    let request = match token {
        Some(token) => crate::common::authed(HealthCheckRequest::default(), token),
        None => tonic::Request::new(HealthCheckRequest::default()),
    };
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.unary(request, path, codec).await.map(drop)
}

async fn metrics_labels_only_methods_served_here(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    for i in 0..40 {
        let invented =
            ["/c1.api.iam.v1.PersonalClientService", "/grpc.health.v1.Health", "/grpc.anything", "/x"][i % 4];
        let _ = raw_call(&server, &format!("{invented}/Method{i}{}", "x".repeat(200)), None).await;
    }
    let page = server.metrics().await;
    let unknown = r#"personal_clients_grpc_requests_total{code="UNIMPLEMENTED",method="unknown",protocol="grpc"}"#;
    assert_eq!(sample(&page, unknown), Some(40.0), "{page}");
    assert!(!page.contains("Method1"), "no invented method becomes a label: {page}");
    server.stop().await;
}

async fn health_reports_serving_for_every_service(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    assert_eq!(statuses(&server).await, [ServingStatus::Serving; 6]);
    let unknown =
        HealthClient::new(channel(&server).await).check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    // A path no method answers is UNIMPLEMENTED, with or without a token; the methods that do
    // exist under it still need one.
    let token = server.token("alice", &[]).await;
    for (path, token, code) in [
        ("/c1.api.iam.v1.PersonalClientService/Explode", None, tonic::Code::Unimplemented),
        ("/c1.api.iam.v1.PersonalClientService/Explode", Some(&token), tonic::Code::Unimplemented),
        ("/c1.api.iam.v1.NoSuchService/Explode", None, tonic::Code::Unimplemented),
        ("/c1.api.iam.v1.PersonalClientService/List", None, tonic::Code::Unauthenticated),
    ] {
        let answer = raw_call(&server, path, token.map(String::as_str)).await;
        assert_eq!(answer.unwrap_err().code(), code, "gRPC to {path} with a token: {}", token.is_some());
    }
    let nowhere = http(server.addr, "GET", "/no/such/page", &[], "").await;
    assert_eq!(nowhere.status, 404, "plain HTTP to an unknown path is a 404");
    let healthz = http(server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!(healthz.status, 200);
    assert_eq!(healthz.json()["status"], "SERVING");
    server.stop().await;
}

async fn health_follows_the_database_away_and_back(db: TestDb) {
    let proxy = TcpProxy::start(db.server_addr().await).await;
    let mut config = Config::defaults(&db.url_via(proxy.addr)).unwrap();
    config.serving.health_interval = Duration::from_millis(200);
    let server = TestServer::start(config).await;
    assert_eq!(statuses(&server).await, [ServingStatus::Serving; 6]);

    proxy.cut();
    let cut_at = Instant::now();
    while statuses(&server).await != [ServingStatus::NotServing; 6] {
        assert!(cut_at.elapsed() < Duration::from_secs(10), "NOT_SERVING within a few seconds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http(server.addr, "GET", "/healthz", &[], "").await.status, 503);

    proxy.restore();
    let restored_at = Instant::now();
    while statuses(&server).await != [ServingStatus::Serving; 6] {
        assert!(restored_at.elapsed() < Duration::from_secs(15), "SERVING again without a restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http(server.addr, "GET", "/healthz", &[], "").await.status, 200);
    server.stop().await;
}

/// The names of the files reflection sends for `symbol`, the defining file first.
async fn files_of(
    reflection: &mut v1::server_reflection_client::ServerReflectionClient<tonic::transport::Channel>,
    symbol: &str,
) -> Vec<String> {
    let describe = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter(vec![describe])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("file descriptors for {symbol}")
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap().name().to_owned())
        .collect()
}

fn list_services() -> v1::ServerReflectionRequest {
    v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    }
}

/// A reflection stream kept open by its caller, and its answers.
async fn open_stream(
    channel: &Channel,
) -> Result<
    (tokio::sync::mpsc::Sender<v1::ServerReflectionRequest>, tonic::Streaming<v1::ServerReflectionResponse>),
    tonic::Status,
> {
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let (requests, stream) = tokio::sync::mpsc::channel(4);
    requests.send(list_services()).await.unwrap();
    let mut replies =
        reflection.server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(stream)).await?.into_inner();
    replies.message().await?.expect("the list of services");
    Ok((requests, replies))
}

/// Reflection needs no credential, so its streams, whose messages are not received whole before
/// the handler as other requests are, are held to the same bytes and time, and to a number of
/// their own.
async fn reflection_streams_are_bounded_in_bytes_time_and_number(db: TestDb) {
    let mut config = db.config();
    config.serving.max_request_bytes = 4096;
    config.serving.request_timeout = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let connection = channel(&server).await;

    // More than --max-request-bytes on one stream ends it, saying so.
    let (requests, mut replies) = open_stream(&connection).await.unwrap();
    let name = "n".repeat(5000);
    let big = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::FileByFilename(name)),
    };
    requests.send(big).await.unwrap();
    let ended = replies.message().await.expect_err("the stream ends");
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("4096 bytes"), "{ended:?}");

    // A stream held open ends at --request-timeout.
    let started = Instant::now();
    let (_held, mut replies) = open_stream(&connection).await.unwrap();
    let ended =
        tokio::time::timeout(Duration::from_secs(10), replies.message()).await.expect("ended").expect_err("timed out");
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded, "{ended:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "not before the timeout");

    server.stop().await;

    // At most REFLECTION_STREAMS at once; one that ends makes room for another.
    let server = TestServer::start(db.config()).await;
    let connection = channel(&server).await;
    let mut open = Vec::new();
    for _ in 0..personal_clients::edge::reflection::REFLECTION_STREAMS {
        open.push(open_stream(&connection).await.expect("a place"));
    }
    let refused = open_stream(&connection).await.expect_err("no place left");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("reflection streams open"), "{refused:?}");
    drop(open.pop());
    crate::common::eventually(Duration::from_secs(5), "a place is free again", || async {
        open_stream(&connection).await.is_ok()
    })
    .await;
    drop(open);
    server.stop().await;
}

async fn reflection_lists_and_describes_the_services(db: TestDb) {
    let server = TestServer::start(db.config()).await;
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    // The request stream stays open while the answers are read, as grpcurl keeps it.
    let (requests, stream) = tokio::sync::mpsc::channel(4);
    requests.send(list).await.unwrap();
    let call = reflection.server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(stream));
    let mut replies = tokio::time::timeout(std::time::Duration::from_secs(5), call)
        .await
        .expect("answered while the request stream is still open")
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("a list of services")
    };
    drop(requests);
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "c1.api.iam.v1.PersonalClientService",
        "c1.api.iam.v1.PersonalClientSearchService",
        "c1.api.auth.v1.TokenService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }

    // What grpcurl asks next: the file that defines a service, with what it imports; and the
    // error details INVALID_ARGUMENT carries, so a client without .proto files can decode them.
    let files = files_of(&mut reflection, "c1.api.iam.v1.PersonalClientService").await;
    assert!(files.contains(&"c1/api/iam/v1/personal_client.proto".to_owned()), "{files:?}");
    let files = files_of(&mut reflection, "google.rpc.BadRequest").await;
    assert_eq!(files[0], "google/rpc/error_details.proto");

    // The older v1alpha protocol, which many tools still speak.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies = alpha.server_reflection_info(tokio_stream::iter(vec![list])).await.unwrap().into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    assert!(matches!(
        reply.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(ref s)) if s.service.iter().any(|s| s.name == "c1.api.auth.v1.TokenService")
    ));
    server.stop().await;
}

/// The commit of this checkout, as git names it, or `unknown` outside one.
pub fn built_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or_else(|| "unknown".to_owned(), |output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
