//! Traces, as an operator's collector receives them: the binary exports over OTLP (gRPC and
//! HTTP/protobuf) to a receiver in this process made of the collector's own generated trace
//! service. Each call is a server span in the trace its caller sent (W3C trace context or B3),
//! named and attributed by OpenTelemetry's conventions, with the database, the bearer check, the
//! assertion and the signing as its children; a refusal says why; nothing secret is exported; a
//! collector that never answers slows no call; and a call's JSON log lines carry its trace id.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, routing::post};
use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    service::auth::v3::authorization_client::AuthorizationClient,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as Any,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    common::{
        TestDb, authed, create_request, eventually, mint,
        oauth::{ServerProcess, http, key_from_secret, post_token, sdk_assertion, token_form},
        sample,
    },
    mesh::check_request,
};
use personal_clients::pb::iam::{
    PersonalClientServiceGetRequest, personal_client_service_client::PersonalClientServiceClient,
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut tests = tests_on!(Sqlite:
        a_grpc_call_is_a_span_in_its_callers_trace_with_its_statements_and_log_lines,
        json_token_introspection_and_check_calls_are_spans_in_their_callers_traces,
        an_ext_authz_check_joins_the_trace_of_the_request_it_checks,
        b3_headers_single_or_several_continue_the_callers_trace,
        a_refused_exchange_says_why_and_nothing_secret_is_exported,
        spans_go_over_tls_to_a_collector_the_system_trusts,
    );
    tests.extend(tests_on!(Postgres: a_grpc_call_is_a_span_in_its_callers_trace_with_its_statements_and_log_lines));
    tests.extend(alone_tests!(a_collector_that_never_answers_slows_no_call_and_what_is_dropped_is_counted));
    tests
}

/// Spans leave within 50 ms of ending, not OpenTelemetry's default 5 s.
const PROMPT_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

/// A span as the collector received it, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP receiver: the collector's trace service over gRPC and `POST /v1/traces` over HTTP,
/// on one port.
#[derive(Debug, Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.take(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Starts a receiver on an ephemeral port; its address.
    async fn start() -> (Self, SocketAddr) {
        Self::serve(None).await
    }

    /// Starts a receiver that speaks TLS only, with `identity`.
    async fn start_tls(identity: tonic::transport::Identity) -> (Self, SocketAddr) {
        Self::serve(Some(identity)).await
    }

    async fn serve(identity: Option<tonic::transport::Identity>) -> (Self, SocketAddr) {
        let collector = Self::default();
        let http = collector.clone();
        let routes = tonic::service::Routes::new(TraceServiceServer::new(collector.clone())).into_axum_router().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                http.take(ExportTraceServiceRequest::decode(body).expect("an OTLP/HTTP protobuf body"));
                ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut server = tonic::transport::Server::builder().accept_http1(true);
        if let Some(identity) = identity {
            server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).unwrap();
        }
        tokio::spawn(server.add_routes(tonic::service::Routes::from(routes)).serve_with_incoming(incoming));
        (collector, addr)
    }

    fn take(&self, request: ExportTraceServiceRequest) {
        let mut received = self.received.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The spans of `trace` once one is named `name`.
    async fn trace_with(&self, trace: &str, name: &str) -> Vec<Span> {
        let of_trace = || -> Vec<Span> {
            self.spans().into_iter().map(|r| r.span).filter(|span| hex(&span.trace_id) == trace).collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = of_trace();
            if spans.iter().any(|span| span.name == name) {
                return spans;
            }
            let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
            assert!(Instant::now() < deadline, "no span {name:?} in trace {trace} within 10 s, only {names:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The binary on `db`, exporting over `protocol` (without one, the default: OTLP/HTTP) to a
/// collector of its own, spans leaving promptly; the directory it runs in, which it needs while
/// it runs.
struct Traced {
    collector: Collector,
    server: ServerProcess,
    dir: tempfile::TempDir,
}

impl Traced {
    async fn start(db: &TestDb, protocol: Option<&str>) -> Self {
        let (collector, receiver) = Collector::start().await;
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("http://{receiver}");
        let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
        if let Some(protocol) = protocol {
            args.extend(["--otlp-protocol", protocol]);
        }
        let server = ServerProcess::spawn_with_env(dir.path(), Some(&db.url), &args, &[PROMPT_EXPORT]);
        Self { collector, server, dir }
    }
}

/// A fresh trace id and parent span id, as a caller's tracer draws them.
fn caller_ids() -> (String, String) {
    let mut ids = [0u8; 24];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut ids);
    (hex(&ids[..16]), hex(&ids[16..]))
}

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|span| span.name == name).unwrap_or_else(|| {
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
        panic!("no span {name:?} among {names:?}")
    })
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        Any::StringValue(value) => Some(value.clone()),
        other => panic!("{key} is {other:?}, not a string"),
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        Any::IntValue(value) => Some(*value),
        other => panic!("{key} is {other:?}, not an integer"),
    }
}

/// Whether `span` is `ancestor` or below it, among `spans`.
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut current = span;
    loop {
        if current.span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == current.parent_span_id) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
}

/// The status of a span: its code and message.
fn status(span: &Span) -> (i32, String) {
    span.status.as_ref().map(|s| (s.code, s.message.clone())).unwrap_or_default()
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// A gRPC call with a W3C `traceparent` is a server span in that trace, under that parent, with
/// the conventions' RPC attributes; the bearer check and the batched insert are its children;
/// and the audit event written in the call carries its trace and span ids.
async fn a_grpc_call_is_a_span_in_its_callers_trace_with_its_statements_and_log_lines(db: TestDb) {
    let Traced { collector, server, dir: _dir } = Traced::start(&db, Some("grpc")).await;
    let alice = mint(&db.config(), "alice", &["reader"], Duration::from_secs(600)).await;
    let mut api = PersonalClientServiceClient::new(channel(server.addr).await);

    let (trace, parent) = caller_ids();
    let mut request = authed(create_request("traced"), &alice);
    request.metadata_mut().insert("traceparent", MetadataValue::try_from(traceparent(&trace, &parent)).unwrap());
    api.create(request).await.unwrap();

    let spans = collector.trace_with(&trace, "c1.api.iam.v1.PersonalClientService/Create").await;
    let call = named(&spans, "c1.api.iam.v1.PersonalClientService/Create");
    assert_eq!(hex(&call.parent_span_id), parent, "the caller's span is the parent");
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(text(call, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(text(call, "rpc.service").as_deref(), Some("c1.api.iam.v1.PersonalClientService"));
    assert_eq!(text(call, "rpc.method").as_deref(), Some("Create"));
    assert_eq!(int(call, "rpc.grpc.status_code"), Some(0));
    assert_eq!(text(call, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(int(call, "server.port"), Some(i64::from(server.addr.port())));
    assert_eq!(text(call, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(status(call).0, StatusCode::Unset as i32, "{call:?}");

    let check = named(&spans, "bearer check");
    assert_eq!(check.parent_span_id, call.span_id);
    assert!(attribute(check, "personal_clients.token.cached").is_some(), "{check:?}");
    let insert = collector.trace_with(&trace, "INSERT personal_clients").await;
    let insert = named(&insert, "INSERT personal_clients");
    assert!(descends(&spans, insert, call), "the statement is the call's: {insert:?}");
    assert_eq!(insert.kind, SpanKind::Client as i32);
    let system = if db.url.starts_with("postgres") { "postgresql" } else { "sqlite" };
    assert_eq!(text(insert, "db.system").as_deref(), Some(system));
    assert_eq!(text(insert, "db.operation.name").as_deref(), Some("INSERT"));
    assert_eq!(text(insert, "db.collection.name").as_deref(), Some("personal_clients"));
    // A batch of one has no batch size, by the conventions.
    assert!(int(insert, "db.operation.batch.size").is_none_or(|size| size >= 2), "{insert:?}");
    assert!(attribute(insert, "personal_clients.batch.wait_ms").is_some(), "{insert:?}");
    let services: Vec<String> = collector.spans().into_iter().map(|r| r.service).collect();
    assert!(services.iter().all(|s| s == "personal-clients"), "service.name: {services:?}");

    let (_, log) = server.terminate();
    let created = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["target"] == "audit" && entry["fields"]["action"] == "personal_client.create")
        .unwrap_or_else(|| panic!("no audit event of the Create: {log}"));
    assert_eq!(created["trace_id"], trace.as_str(), "{created}");
    let span_id = created["span_id"].as_str().unwrap_or_else(|| panic!("no span id: {created}"));
    let exported = collector.spans();
    assert!(exported.iter().any(|r| hex(&r.span.span_id) == span_id), "the log line's span {span_id} was not exported");
}

/// The JSON API, the token endpoint, introspection and forward authorization, each a server
/// span named by its route in its caller's trace; over OTLP/HTTP.
async fn json_token_introspection_and_check_calls_are_spans_in_their_callers_traces(db: TestDb) {
    let Traced { collector, server, dir: _dir } = Traced::start(&db, None).await;
    let alice = mint(&db.config(), "alice", &["reader"], Duration::from_secs(600)).await;
    let resource = mint(&db.config(), "orders", &["resource-server"], Duration::from_secs(600)).await;
    let mut api = PersonalClientServiceClient::new(channel(server.addr).await);
    let created = api.create(authed(create_request("json"), &alice)).await.unwrap().into_inner();
    let client = created.client.unwrap();

    let (trace, parent) = caller_ids();
    let (bearer, context) = (format!("Bearer {alice}"), traceparent(&trace, &parent));
    let path = format!("/api/v1/iam/personal_clients/{}", client.id);
    let answer = http(server.addr, "GET", &path, &[("Authorization", &bearer), ("traceparent", &context)], "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let spans = collector.trace_with(&trace, "GET /api/v1/iam/personal_clients/{id}").await;
    let get = named(&spans, "GET /api/v1/iam/personal_clients/{id}");
    assert_eq!(hex(&get.parent_span_id), parent);
    assert_eq!(get.kind, SpanKind::Server as i32);
    assert_eq!(text(get, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(text(get, "http.route").as_deref(), Some("/api/v1/iam/personal_clients/{id}"));
    assert_eq!(int(get, "http.response.status_code"), Some(200));
    let spans = collector.trace_with(&trace, "SELECT personal_clients").await;
    assert!(descends(&spans, named(&spans, "SELECT personal_clients"), get));

    let (trace, parent) = caller_ids();
    let assertion = sdk_assertion(&key_from_secret(&created.client_secret), &client.client_id);
    let context = traceparent(&trace, &parent);
    let issued =
        post_token(server.addr, &token_form(&client.client_id, &assertion), &[("traceparent", &context)]).await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let spans = collector.trace_with(&trace, "POST /auth/v1/token").await;
    let exchange = named(&spans, "POST /auth/v1/token");
    assert_eq!(hex(&exchange.parent_span_id), parent);
    assert_eq!(int(exchange, "http.response.status_code"), Some(200));
    for child in ["verify assertion", "sign access token", "SELECT personal_clients", "INSERT assertion_replays"] {
        let spans = collector.trace_with(&trace, child).await;
        assert!(descends(&spans, named(&spans, child), exchange), "{child} is the exchange's");
    }
    let access_token = issued.json()["access_token"].as_str().unwrap().to_owned();

    let (trace, parent) = caller_ids();
    let (bearer, context) = (format!("Bearer {resource}"), traceparent(&trace, &parent));
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("traceparent", context.as_str()),
    ];
    let answer = http(server.addr, "POST", "/auth/v1/introspect", &headers, &format!("token={access_token}")).await;
    assert_eq!(answer.json()["active"], true, "{}", answer.body);
    let spans = collector.trace_with(&trace, "POST /auth/v1/introspect").await;
    assert_eq!(hex(&named(&spans, "POST /auth/v1/introspect").parent_span_id), parent);

    let (trace, parent) = caller_ids();
    let (bearer, context) = (format!("Bearer {access_token}"), traceparent(&trace, &parent));
    let headers = [("Authorization", bearer.as_str()), ("traceparent", context.as_str())];
    assert_eq!(http(server.addr, "GET", "/auth/v1/check/orders/1234", &headers, "").await.status, 200);
    let spans = collector.trace_with(&trace, "GET /auth/v1/check/{*path}").await;
    let check = named(&spans, "GET /auth/v1/check/{*path}");
    assert_eq!(hex(&check.parent_span_id), parent);
    assert_eq!(status(check).0, StatusCode::Unset as i32, "an allowed check is no error: {check:?}");

    // A reported secret: the revocation's statements and audit event are the report's.
    let (trace, parent) = caller_ids();
    let context = traceparent(&trace, &parent);
    let headers = [("Content-Type", "application/json"), ("traceparent", context.as_str())];
    let report = serde_json::json!({ "credentials": [created.client_secret] }).to_string();
    assert_eq!(http(server.addr, "POST", "/auth/v1/credentials/revoke", &headers, &report).await.status, 202);
    let spans = collector.trace_with(&trace, "UPDATE personal_clients").await;
    let revoke = named(&spans, "POST /auth/v1/credentials/revoke");
    assert_eq!(hex(&revoke.parent_span_id), parent);
    assert!(descends(&spans, named(&spans, "UPDATE personal_clients"), revoke));
}

/// An ext_authz Check is part of the request it checks: the `traceparent` inside the
/// CheckRequest's headers is its parent, over Envoy's own on the gRPC call; a denial is an error
/// that says why.
async fn an_ext_authz_check_joins_the_trace_of_the_request_it_checks(db: TestDb) {
    let Traced { collector, server, dir: _dir } = Traced::start(&db, None).await;
    let alice = mint(&db.config(), "alice", &["reader"], Duration::from_secs(600)).await;
    let mut mesh = AuthorizationClient::new(channel(server.addr).await);

    let (user_trace, user_parent) = caller_ids();
    let (envoy_trace, envoy_parent) = caller_ids();
    let (bearer, context) = (format!("Bearer {alice}"), traceparent(&user_trace, &user_parent));
    let mut request = Request::new(check_request(&[("authorization", &bearer), ("traceparent", &context)]));
    let envoys = MetadataValue::try_from(traceparent(&envoy_trace, &envoy_parent)).unwrap();
    request.metadata_mut().insert("traceparent", envoys);
    let answer = mesh.check(request).await.unwrap().into_inner();
    assert_eq!(answer.status.unwrap().code, 0);
    let spans = collector.trace_with(&user_trace, "envoy.service.auth.v3.Authorization/Check").await;
    let check = named(&spans, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(hex(&check.parent_span_id), user_parent, "the checked request's span is the parent");
    assert_eq!(named(&spans, "bearer check").parent_span_id, check.span_id);

    // Envoy told to send raw headers puts them in `header_map`, values as bytes.
    let (trace, parent) = caller_ids();
    let mut raw = check_request(&[]);
    let http = raw.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![
            HeaderValue { key: "authorization".into(), raw_value: bearer.clone().into_bytes(), ..Default::default() },
            HeaderValue {
                key: "traceparent".into(),
                raw_value: traceparent(&trace, &parent).into_bytes(),
                ..Default::default()
            },
        ],
    });
    assert_eq!(mesh.check(raw).await.unwrap().into_inner().status.unwrap().code, 0);
    let spans = collector.trace_with(&trace, "envoy.service.auth.v3.Authorization/Check").await;
    assert_eq!(hex(&named(&spans, "envoy.service.auth.v3.Authorization/Check").parent_span_id), parent);

    let (trace, parent) = caller_ids();
    let context = traceparent(&trace, &parent);
    let answer = mesh.check(check_request(&[("traceparent", &context)])).await.unwrap().into_inner();
    assert_ne!(answer.status.unwrap().code, 0, "no token, denied");
    let spans = collector.trace_with(&trace, "envoy.service.auth.v3.Authorization/Check").await;
    let denied = named(&spans, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(status(denied), (StatusCode::Error as i32, "unauthorized".to_owned()), "{denied:?}");
    assert_eq!(text(denied, "error.type").as_deref(), Some("unauthorized"));
}

/// B3, as Envoy and Istio send it: one `b3` header, or the `X-B3-*` headers.
async fn b3_headers_single_or_several_continue_the_callers_trace(db: TestDb) {
    let Traced { collector, server, dir: _dir } = Traced::start(&db, None).await;

    let (trace, parent) = caller_ids();
    let single = format!("{trace}-{parent}-1");
    assert_eq!(http(server.addr, "GET", "/healthz", &[("b3", &single)], "").await.status, 200);
    let spans = collector.trace_with(&trace, "GET /healthz").await;
    assert_eq!(hex(&named(&spans, "GET /healthz").parent_span_id), parent);

    // Without a sampling state (deferred), the service decides as for a new trace: sampled.
    // Debug (`d`) means sampled.
    for flag in ["", "-d"] {
        let (trace, parent) = caller_ids();
        let single = format!("{trace}-{parent}{flag}");
        assert_eq!(http(server.addr, "GET", "/healthz", &[("b3", &single)], "").await.status, 200);
        let spans = collector.trace_with(&trace, "GET /healthz").await;
        assert_eq!(hex(&named(&spans, "GET /healthz").parent_span_id), parent, "b3: {single}");
    }

    let (trace, parent) = caller_ids();
    let alice = mint(&db.config(), "alice", &["reader"], Duration::from_secs(600)).await;
    let mut api = PersonalClientServiceClient::new(channel(server.addr).await);
    let mut request = authed(PersonalClientServiceGetRequest { id: uuid::Uuid::now_v7().to_string() }, &alice);
    for (name, value) in [("x-b3-traceid", &trace), ("x-b3-spanid", &parent), ("x-b3-sampled", &"1".to_owned())] {
        request.metadata_mut().insert(name, MetadataValue::try_from(value.as_str()).unwrap());
    }
    assert_eq!(api.get(request).await.unwrap_err().code(), tonic::Code::NotFound);
    let spans = collector.trace_with(&trace, "c1.api.iam.v1.PersonalClientService/Get").await;
    let get = named(&spans, "c1.api.iam.v1.PersonalClientService/Get");
    assert_eq!(hex(&get.parent_span_id), parent);
    assert_eq!(int(get, "rpc.grpc.status_code"), Some(5));
    assert_eq!(status(get), (StatusCode::Error as i32, "NOT_FOUND".to_owned()));
}

/// An `https://` collector over gRPC, verified against the system's roots: here a CA named by
/// `SSL_CERT_FILE`, as an operator with a private CA sets it. (The receiver here offers HTTP/2
/// alone over TLS, which the HTTP exporter's HTTP/1.1 client does not speak.)
async fn spans_go_over_tls_to_a_collector_the_system_trusts(db: TestDb) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let identity = tonic::transport::Identity::from_pem(cert.cert.pem(), cert.signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let (collector, receiver) = Collector::start_tls(identity).await;
    let endpoint = format!("https://localhost:{}", receiver.port());
    let args = ["--otlp-endpoint", endpoint.as_str(), "--otlp-protocol", "grpc"];
    let trusted = ("SSL_CERT_FILE", ca.to_str().unwrap());
    let server = ServerProcess::spawn_with_env(dir.path(), Some(&db.url), &args, &[PROMPT_EXPORT, trusted]);
    let (trace, parent) = caller_ids();
    let context = traceparent(&trace, &parent);
    assert_eq!(http(server.addr, "GET", "/healthz", &[("traceparent", &context)], "").await.status, 200);
    let spans = collector.trace_with(&trace, "GET /healthz").await;
    assert_eq!(hex(&named(&spans, "GET /healthz").parent_span_id), parent);
}

/// A refused exchange's span is an error with the reason the metrics and the audit event give
/// (`bad_signature`); and no span of a whole credential's life holds its secret, an assertion
/// or a token, in any name, attribute, event or status.
async fn a_refused_exchange_says_why_and_nothing_secret_is_exported(db: TestDb) {
    let Traced { collector, server, dir: _dir } = Traced::start(&db, Some("grpc")).await;
    let alice = mint(&db.config(), "alice", &["reader"], Duration::from_secs(600)).await;
    let resource = mint(&db.config(), "orders", &["resource-server"], Duration::from_secs(600)).await;
    let mut api = PersonalClientServiceClient::new(channel(server.addr).await);
    let created = api.create(authed(create_request("secretive"), &alice)).await.unwrap().into_inner();
    let client = created.client.unwrap();

    let key = key_from_secret(&created.client_secret);
    let assertion = sdk_assertion(&key, &client.client_id);
    let issued = post_token(server.addr, &token_form(&client.client_id, &assertion), &[]).await;
    let access_token = issued.json()["access_token"].as_str().unwrap().to_owned();
    let (bearer, form) = (format!("Bearer {resource}"), format!("token={access_token}"));
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    assert_eq!(http(server.addr, "POST", "/auth/v1/introspect", &headers, &form).await.status, 200);
    let checked = [("authorization", format!("Bearer {access_token}"))];
    let mut mesh = AuthorizationClient::new(channel(server.addr).await);
    let headers: Vec<(&str, &str)> = checked.iter().map(|(k, v)| (*k, v.as_str())).collect();
    mesh.check(check_request(&headers)).await.unwrap();

    let (trace, parent) = caller_ids();
    let stranger = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let forged = sdk_assertion(&stranger, &client.client_id);
    let context = traceparent(&trace, &parent);
    let refused = post_token(server.addr, &token_form(&client.client_id, &forged), &[("traceparent", &context)]).await;
    assert_eq!(refused.status, 401);
    let spans = collector.trace_with(&trace, "POST /auth/v1/token").await;
    let exchange = named(&spans, "POST /auth/v1/token");
    assert_eq!(status(exchange), (StatusCode::Error as i32, "bad_signature".to_owned()), "{exchange:?}");
    assert_eq!(text(exchange, "error.type").as_deref(), Some("bad_signature"));
    assert_eq!(int(exchange, "http.response.status_code"), Some(401));

    // Every span so far, as the collector holds them: the exchange above is among the last.
    let exported = format!("{:?}", collector.spans());
    let secret_key = created.client_secret.rsplit(':').next().unwrap();
    for (what, value) in [
        ("the client secret", created.client_secret.as_str()),
        ("the client secret's key", secret_key),
        ("the assertion", assertion.as_str()),
        ("the forged assertion", forged.as_str()),
        ("the access token", access_token.as_str()),
        ("the user's token", alice.as_str()),
        ("the resource server's token", resource.as_str()),
    ] {
        assert!(!exported.contains(value), "{what} was exported");
        let signature = value.rsplit('.').next().unwrap();
        assert!(!exported.contains(signature), "the signature of {what} was exported");
    }
}

/// A collector that takes connections and never answers: calls take as long as without
/// traces, and the spans that find the queue full, or whose export fails, are counted.
async fn a_collector_that_never_answers_slows_no_call_and_what_is_dropped_is_counted() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (quiet_dir, traced_dir) = (dir.path().join("quiet"), dir.path().join("traced"));
    std::fs::create_dir_all(&quiet_dir).unwrap();
    std::fs::create_dir_all(&traced_dir).unwrap();
    let quiet = ServerProcess::spawn(&quiet_dir, None, &[]);
    let args = ["--otlp-endpoint", endpoint.as_str(), "--otlp-protocol", "grpc", "--trace-queue-size", "64"];
    let timeout = ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000");
    let traced = ServerProcess::spawn_with_env(&traced_dir, None, &args, &[PROMPT_EXPORT, timeout]);

    /// Asks the health service, one call after another on one connection: each call is a span.
    /// The time of each.
    async fn calls(addr: SocketAddr) -> Vec<Duration> {
        let mut health = HealthClient::new(channel(addr).await);
        let mut times = Vec::new();
        for _ in 0..300 {
            let started = Instant::now();
            health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
            times.push(started.elapsed());
        }
        times
    }
    // Alternately, so that the machine's other work falls on both alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        without.extend(calls(quiet.addr).await);
        with.extend(calls(traced.addr).await);
    }
    without.sort();
    with.sort();
    let spread = |times: &[Duration]| (times[times.len() / 2], times[times.len() - 1]);
    let ((median_without, slowest_without), (median_with, slowest_with)) = (spread(&without), spread(&with));
    println!(
        "    health checks, 600 each: median {median_without:?} without traces, {median_with:?} exporting to a collector that never answers; slowest {slowest_without:?} and {slowest_with:?}"
    );
    // An export waits 3 s for the collector, and the queue holds 64 spans: a call that waited
    // for either would take seconds.
    assert!(slowest_with < Duration::from_secs(1), "a call waited for the collector: {slowest_with:?}");

    let dropped = |reason: &'static str| {
        let addr = traced.addr;
        async move {
            let page = http(addr, "GET", "/metrics", &[], "").await.body;
            sample(&page, &format!("personal_clients_trace_spans_dropped_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
        }
    };
    let page = http(traced.addr, "GET", "/metrics", &[], "").await.body;
    assert!(dropped("queue_full").await > 0.0, "600 spans through a queue of 64 that never empties: {page}");
    eventually(Duration::from_secs(30), "a failed export counted", || async { dropped("export_failed").await > 0.0 })
        .await;
    let quiet_page = http(quiet.addr, "GET", "/metrics", &[], "").await.body;
    let untraced = sample(&quiet_page, "personal_clients_trace_spans_dropped_total{reason=\"queue_full\"}");
    assert_eq!(untraced, Some(0.0), "the family is there, at zero, without traces");
    held.abort();
}
