//! The closed loop: `concurrency` callers spread over `connections` HTTP/2 connections, each
//! sending its next call (gRPC, or plain HTTP for `http-check`) as soon as the last one is
//! answered; a warm-up, then a measured window whose calls, latencies and CPU time (from
//! `/proc`) make the report.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, StatusCode, Uri};
use tonic::codegen::{Body as _, Service};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::Error;
use crate::assertion::Assertions;
use crate::pb::c1::api::auth::v1::TokenRequest;
use crate::pb::c1::api::iam::v1::{
    PersonalClientServiceCreateRequest, PersonalClientServiceGetRequest, PersonalClientServiceListRequest,
};
use crate::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as HttpAttributes};
use crate::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// PersonalClientService/Get, the ids of --ids-file in turn
    Get,
    /// PersonalClientService/List, page_size 50
    List,
    /// PersonalClientService/Create, display name load-N: one new row per call
    Create,
    /// TokenService/Token, a fresh EdDSA client assertion per call
    Token,
    /// envoy.service.auth.v3.Authorization/Check, the token in the request's headers
    Check,
    /// GET /auth/v1/check/v1/orders/1234, forward authorization as Envoy's http_service asks it
    HttpCheck,
}

impl Scenario {
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map_or_else(String::new, |v| v.get_name().into())
    }
}

/// What one run sends, and where.
pub struct Plan {
    pub target: String,
    pub scenario: Scenario,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// `Bearer <token>`, sent on every gRPC call but Check's (Envoy's calls carry none).
    pub bearer: Option<AsciiMetadataValue>,
    pub ids: Arc<Vec<String>>,
    /// The CheckRequest, encoded once.
    pub check: Bytes,
    /// The headers of HttpCheck's request.
    pub forward_auth: HeaderMap,
    pub assertions: Option<Arc<Assertions>>,
}

static CREATED: AtomicU64 = AtomicU64::new(0);

/// The CheckRequest Envoy sends for `GET /v1/orders/1234` with `authorization: Bearer TOKEN`.
pub fn check_request(token: &str) -> Bytes {
    let headers = [
        (":authority", "orders.example.com"),
        (":method", "GET"),
        (":path", "/v1/orders/1234"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("authorization", &format!("Bearer {token}")),
        ("user-agent", "curl/8.5.0"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "7f3c2a1e-9b4d-4c8e-a5f6-0d1e2f3a4b5c"),
    ];
    let http = HttpRequest {
        method: "GET".into(),
        path: "/v1/orders/1234".into(),
        host: "orders.example.com".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        headers: headers.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        ..Default::default()
    };
    let request = Some(HttpAttributes { http: Some(http) });
    CheckRequest { attributes: Some(AttributeContext { request, ..Default::default() }) }.encode_to_vec().into()
}

/// Where Envoy's `http_service` sends the check of `GET /v1/orders/1234`: its path prefix and
/// the request's path.
const FORWARD_AUTH_PATH: &str = "/auth/v1/check/v1/orders/1234";

/// The `:authority` of HttpCheck's requests (and `:scheme` http), instead of the target's.
const FORWARD_AUTH_ORIGIN: &str = "http://orders.example.com";

/// The headers Envoy's `http_service` forwards for that request with `authorization: Bearer TOKEN`.
pub fn forward_auth_headers(token: &str) -> Result<HeaderMap, Error> {
    let headers = [
        ("accept", "application/json"),
        ("authorization", &format!("Bearer {token}")),
        ("user-agent", "curl/8.5.0"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "7f3c2a1e-9b4d-4c8e-a5f6-0d1e2f3a4b5c"),
    ];
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(name, HeaderValue::from_str(value)?);
    }
    Ok(map)
}

/// One call: a gRPC method and its request, or a plain HTTP request.
enum Call {
    Grpc(&'static str, tonic::Request<Bytes>),
    Http(http::Request<Body>),
}

impl Plan {
    /// Caller `caller`'s `n`th call.
    fn call(&self, caller: usize, n: usize) -> Call {
        let (path, body) = match self.scenario {
            Scenario::Get => {
                let id = self.ids[(caller + n * self.concurrency) % self.ids.len()].clone();
                (
                    "/c1.api.iam.v1.PersonalClientService/Get",
                    PersonalClientServiceGetRequest { id }.encode_to_vec().into(),
                )
            }
            Scenario::List => {
                let list = PersonalClientServiceListRequest { page_size: 50, page_token: String::new() };
                ("/c1.api.iam.v1.PersonalClientService/List", list.encode_to_vec().into())
            }
            Scenario::Create => {
                let display_name = format!("load-{}", CREATED.fetch_add(1, Ordering::Relaxed));
                let create = PersonalClientServiceCreateRequest { display_name, ..Default::default() };
                ("/c1.api.iam.v1.PersonalClientService/Create", create.encode_to_vec().into())
            }
            Scenario::Token => {
                let a = self.assertions.as_ref().expect("the token scenario has assertions");
                let token = TokenRequest {
                    grant_type: "client_credentials".into(),
                    client_id: a.client_id().into(),
                    client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                    client_assertion: a.take(),
                };
                ("/c1.api.auth.v1.TokenService/Token", token.encode_to_vec().into())
            }
            Scenario::Check => ("/envoy.service.auth.v3.Authorization/Check", self.check.clone()),
            Scenario::HttpCheck => {
                let mut request = http::Request::new(Body::empty());
                *request.uri_mut() = Uri::from_static(FORWARD_AUTH_PATH);
                *request.headers_mut() = self.forward_auth.clone();
                return Call::Http(request);
            }
        };
        let mut request = tonic::Request::new(body);
        if let Some(bearer) = self.bearer.as_ref().filter(|_| self.scenario != Scenario::Check) {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        Call::Grpc(path, request)
    }
}

/// Sends requests encoded ahead and counts the answers' bytes without decoding them (which
/// leaves the CPU to the server), except Check's, whose status tells an allow from a denial.
#[derive(Clone, Copy)]
struct Raw {
    verdict: bool,
}

/// An answer's size, or why Envoy would deny the request.
type Reply = Result<usize, String>;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Reply;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        *self
    }
    fn decoder(&mut self) -> Raw {
        *self
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Reply;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Reply>, Status> {
        let n = src.remaining();
        if !self.verdict {
            src.advance(n);
            return Ok(Some(Ok(n)));
        }
        let answer = CheckResponse::decode(src).map_err(|e| Status::internal(format!("bad CheckResponse: {e}")))?;
        Ok(Some(verdict(n, answer)))
    }
}

/// Envoy's reading of a Check answer: a status other than OK (absent is OK) denies.
fn verdict(n: usize, answer: CheckResponse) -> Reply {
    match answer.status {
        Some(s) if s.code != 0 => Err(format!("Denied/{:?}: {}", Code::from(s.code), s.message)),
        _ => Ok(n),
    }
}

/// A forward-auth answer: if 200, its size (header names and values, and body); else why
/// the proxy would deny the request (`HTTP/<status>`), or, for gRPC's answer to a path it does
/// not serve (a 200 with `grpc-status`), that it is none (`gRPC/<code>`).
async fn forward_auth(channel: &mut Channel, request: http::Request<Body>) -> Result<Reply, Status> {
    let unavailable = |e: tonic::transport::Error| Status::unavailable(format!("{e:?}"));
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(unavailable)?;
    let (head, mut body) = channel.call(request).await.map_err(unavailable)?.into_parts();
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        bytes.extend_from_slice(frame?.data_ref().map_or(&[][..], |d| d.as_ref()));
    }
    if head.status != StatusCode::OK {
        return Ok(Err(format!("HTTP/{}: {}", head.status.as_u16(), String::from_utf8_lossy(&bytes))));
    }
    if let Some(code) = head.headers.get("grpc-status") {
        return Ok(Err(format!("gRPC/{:?}: not a forward-auth answer", Code::from_bytes(code.as_bytes()))));
    }
    Ok(Ok(head.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum::<usize>() + bytes.len()))
}

/// What the callers saw in the measured window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    bytes: u64,
    errors: BTreeMap<String, u64>,
    sample: Option<String>,
}

impl Tally {
    fn record(&mut self, latency: Duration, result: Result<Reply, Status>) {
        self.latencies_us.push(latency.as_micros().try_into().unwrap_or(u32::MAX));
        let why = match result {
            Ok(Ok(n)) => {
                self.ok += 1;
                self.bytes += n as u64;
                return;
            }
            Ok(Err(denied)) => denied,
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        let kind = why.split(':').next().unwrap_or_default().to_owned();
        self.sample.get_or_insert(why.chars().take(200).collect());
        *self.errors.entry(kind).or_default() += 1;
    }
}

async fn caller(i: usize, channel: Channel, plan: Arc<Plan>, start: Instant, end: Instant) -> Tally {
    let (mut http, mut grpc) = (channel.clone(), tonic::client::Grpc::new(channel));
    let codec = Raw { verdict: plan.scenario == Scenario::Check };
    let mut tally = Tally::default();
    let mut n = 0;
    while Instant::now() < end {
        let call = plan.call(i, n);
        n += 1;
        let sent = Instant::now();
        let call = async {
            match call {
                Call::Grpc(path, request) => {
                    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
                    Ok(grpc.unary(request, PathAndQuery::from_static(path), codec).await?.into_inner())
                }
                Call::Http(request) => forward_auth(&mut http, request).await,
            }
        };
        // Only a server that stops answering hits this deadline; it keeps the run bounded.
        let result = tokio::time::timeout_at(end + Duration::from_secs(5), call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer 5 s after the window")));
        let done = Instant::now();
        if done >= start && done < end {
            tally.record(done - sent, result);
        }
    }
    tally
}

/// utime + stime of `/proc/<what>/stat` in seconds, and the command name.
fn cpu_of(what: &str) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{what}/stat")).ok()?;
    let (head, tail) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let mut fields = tail.split_whitespace().skip(11); // field 14 is utime, 15 stime
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some((comm, ticks as f64 / 100.0)) // USER_HZ
}

/// Whose CPU time is the server's: a process, or the baseline's threads in this one.
#[derive(Clone, Copy)]
pub enum Server {
    Pid(u32),
    Baseline,
    Unknown,
}

/// CPU seconds so far: the server, this process less the baseline, and the whole machine busy.
fn sample(server: Server) -> (Option<f64>, f64, f64) {
    let baseline: f64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(|t| cpu_of(&format!("self/task/{}", t.ok()?.file_name().to_str()?)))
        .filter(|(comm, _)| crate::baseline::THREADS.starts_with(comm.as_str()))
        .map(|(_, s)| s)
        .sum();
    let own = cpu_of("self").map_or(0.0, |c| c.1);
    let server = match server {
        Server::Pid(pid) => cpu_of(&pid.to_string()).map(|c| c.1),
        Server::Baseline => Some(baseline),
        Server::Unknown => None,
    };
    let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let v: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<u64>() as f64 / 100.0)
    });
    (server, own - baseline, machine.unwrap_or(f64::NAN))
}

/// One run's figures.
pub struct Report {
    pub ok_per_s: f64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub bytes_mean: f64,
    /// Server CPU per call (successful or not), in µs.
    pub server_us: Option<f64>,
    pub generator_cores: f64,
    /// Cores' worth of CPU used by neither the server nor the generator: a machine not quiet.
    pub other_cores: Option<f64>,
    pub errors: String,
    pub signed_late: u64,
}

/// Connects, warms up, measures, reports.
pub async fn run(plan: Arc<Plan>, server: Server) -> Result<Report, Error> {
    let mut endpoint = Endpoint::from_shared(plan.target.clone())?.tcp_nodelay(true);
    if plan.scenario == Scenario::HttpCheck {
        endpoint = endpoint.origin(Uri::from_static(FORWARD_AUTH_ORIGIN));
    }
    let mut channels = Vec::new();
    for _ in 0..plan.connections.clamp(1, plan.concurrency.max(1)) {
        channels.push(endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e:?}", plan.target))?);
    }
    let start = Instant::now() + plan.warmup;
    let end = start + plan.duration;
    let callers: Vec<_> = (0..plan.concurrency)
        .map(|i| tokio::spawn(caller(i, channels[i % channels.len()].clone(), plan.clone(), start, end)))
        .collect();
    tokio::time::sleep_until(start).await;
    let before = sample(server);
    tokio::time::sleep_until(end).await;
    let after = sample(server);
    let mut all = Tally::default();
    for c in callers {
        let t = c.await?;
        all.latencies_us.extend(t.latencies_us);
        (all.ok, all.bytes) = (all.ok + t.ok, all.bytes + t.bytes);
        t.errors.into_iter().for_each(|(k, n)| *all.errors.entry(k).or_default() += n);
        all.sample = all.sample.or(t.sample);
    }
    all.latencies_us.sort_unstable();
    let calls = all.latencies_us.len();
    let secs = plan.duration.as_secs_f64();
    let quantile = |q: f64| all.latencies_us.get((q * calls as f64) as usize).map_or(0.0, |&us| us as f64 / 1000.0);
    let server_s = after.0.zip(before.0).map(|(a, b)| a - b);
    let generator_s = after.1 - before.1;
    let errors: Vec<_> = all.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    Ok(Report {
        ok_per_s: all.ok as f64 / secs,
        failed: calls as u64 - all.ok,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        bytes_mean: all.bytes as f64 / all.ok.max(1) as f64,
        server_us: server_s.map(|s| s * 1e6 / calls.max(1) as f64),
        generator_cores: generator_s / secs,
        other_cores: server_s.map(|s| ((after.2 - before.2) - s - generator_s) / secs),
        errors: if errors.is_empty() {
            String::new()
        } else {
            format!("{} ({})", errors.join(", "), all.sample.unwrap_or_default())
        },
        signed_late: plan.assertions.as_ref().map_or(0, |a| a.signed_late.load(Ordering::Relaxed)),
    })
}

impl Report {
    /// One line: what a round measured.
    pub fn line(&self) -> String {
        let srv = self.server_us.map_or("?".into(), |us| format!("{us:.1}"));
        let other = self.other_cores.map_or("?".into(), |c| format!("{c:.2}"));
        let mut line = format!(
            "{:>9.1} ok/s  failed {}  p50 {:.3} p99 {:.3} ms  server {srv} µs/call  generator {:.2} cores  other {other} cores  {:.0} B/answer",
            self.ok_per_s, self.failed, self.p50_ms, self.p99_ms, self.generator_cores, self.bytes_mean
        );
        if !self.errors.is_empty() {
            line += &format!("  FAILED {}", self.errors);
        }
        if self.signed_late > 0 {
            line += &format!("  [{} assertions signed during the window: raise --presign]", self.signed_late);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_runs_cleanly_against_the_baseline() {
        let rt = crate::baseline::runtime().unwrap();
        let addr = crate::baseline::start(&rt, "127.0.0.1:0".parse().unwrap()).unwrap();
        let signer = crate::assertion::Signer::new(
            ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
            "x@localhost/pcc".into(),
            "localhost".into(),
        );
        let assertions = Arc::new(Assertions::presign(Arc::new(signer), 10, true));
        let client = tokio::runtime::Runtime::new().unwrap();
        for scenario in
            [Scenario::Get, Scenario::List, Scenario::Create, Scenario::Token, Scenario::Check, Scenario::HttpCheck]
        {
            let plan = Plan {
                target: format!("http://{addr}"),
                scenario,
                concurrency: 4,
                connections: 2,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(300),
                bearer: Some("Bearer t".parse().unwrap()),
                ids: Arc::new(vec!["a".into(), "b".into()]),
                check: check_request("t"),
                forward_auth: forward_auth_headers("t").unwrap(),
                assertions: Some(assertions.clone()),
            };
            let report = client.block_on(run(Arc::new(plan), Server::Baseline)).unwrap();
            assert!(report.ok_per_s > 0.0 && report.failed == 0, "{scenario:?}: {}", report.line());
            assert!(report.server_us.unwrap() >= 0.0 && report.p99_ms > 0.0);
            let size = [263.0, 13_240.0, 471.0, 482.0, 125.0, 157.0][scenario as usize];
            assert_eq!(report.bytes_mean, size, "{scenario:?}: the canned answers are sized like the service's");
        }
    }

    #[test]
    fn the_baseline_serves_forward_auth_at_its_path_only() {
        let rt = crate::baseline::runtime().unwrap();
        let addr = crate::baseline::start(&rt, "127.0.0.1:0".parse().unwrap()).unwrap();
        let client = tokio::runtime::Runtime::new().unwrap();
        let answers: Vec<_> = client.block_on(async {
            let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
            let mut channel = endpoint.origin(Uri::from_static(FORWARD_AUTH_ORIGIN)).connect().await.unwrap();
            let mut answers = Vec::new();
            for (method, path) in [("GET", FORWARD_AUTH_PATH), ("POST", "/auth/v1/check"), ("GET", "/auth/v1/checks")] {
                let mut request = http::Request::new(Body::empty());
                (*request.method_mut(), *request.uri_mut()) = (method.parse().unwrap(), Uri::from_static(path));
                answers.push(forward_auth(&mut channel, request).await.unwrap());
            }
            answers
        });
        assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
        assert!(answers[2].as_ref().is_err_and(|e| e.starts_with("gRPC/Unimplemented")), "{answers:?}");
    }

    #[test]
    fn a_check_answer_other_than_ok_is_a_denial() {
        let mut tally = Tally::default();
        let deny = CheckResponse {
            status: Some(crate::pb::google::rpc::Status { code: 16, message: "invalid_token".into(), details: vec![] }),
            http_response: None,
        };
        tally.record(Duration::from_micros(5), Ok(verdict(9, deny)));
        tally.record(Duration::from_micros(5), Err(Status::not_found("no such client")));
        tally.record(Duration::from_micros(5), Ok(Ok(7)));
        tally.record(Duration::from_micros(5), Ok(Err(r#"HTTP/401: {"error":"invalid_token"}"#.into())));
        assert_eq!(tally.errors["Denied/Unauthenticated"], 1);
        assert_eq!(tally.errors["HTTP/401"], 1);
        assert_eq!(tally.errors["NotFound"], 1);
        assert_eq!((tally.ok, tally.bytes), (1, 7));
    }
}
