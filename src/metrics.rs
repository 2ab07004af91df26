//! Prometheus metrics, served in the Prometheus text format (0.0.4) at `GET /metrics`: calls of
//! gRPC methods (over gRPC, or as JSON over HTTP) by method, status code and protocol, with
//! latency histograms; token exchange outcomes by reason; and the database pools.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tonic::Code;

use crate::{
    grpc_methods::GrpcMethods,
    store::{PoolStats, Store},
};

/// Every metric the service keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    exchanges: IntCounterVec,
    pool_connections: IntGaugeVec,
    store: Store,
    /// The methods served here: only they get a label of their own.
    methods: GrpcMethods,
    /// The JSON routes, each to the method it calls.
    json: JsonRoutes,
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const NAMESPACE: &str = "personal_clients";

impl Metrics {
    pub fn new(store: Store, methods: GrpcMethods, json: JsonRoutes) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("grpc_requests_total", "Calls of gRPC methods by method, status code and protocol")
                .namespace(NAMESPACE),
            &["method", "code", "protocol"],
        )?;
        // 0.25 ms to about 4 s.
        let latency = HistogramVec::new(
            HistogramOpts::new("grpc_request_duration_seconds", "Latency of gRPC method calls by method and protocol")
                .namespace(NAMESPACE)
                .buckets(prometheus::exponential_buckets(0.000_25, 2.0, 15)?),
            &["method", "protocol"],
        )?;
        let exchanges = IntCounterVec::new(
            Opts::new("token_exchanges_total", "Token exchanges by outcome: issued, or the reason for refusing")
                .namespace(NAMESPACE),
            &["outcome"],
        )?;
        let pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections by pool and state").namespace(NAMESPACE),
            &["pool", "state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(exchanges.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        Ok(Self { registry, requests, latency, exchanges, pool_connections, store, methods, json })
    }

    /// Counts one token exchange: `issued`, or why it was refused.
    pub fn token_exchange(&self, outcome: &str) {
        self.exchanges.with_label_values(&[outcome]).inc();
    }

    fn rpc(&self, method: &str, protocol: Protocol, code: Code, seconds: f64) {
        self.requests.with_label_values(&[method, &code_name(code), protocol.label()]).inc();
        self.latency.with_label_values(&[method, protocol.label()]).observe(seconds);
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]), pool gauges read now.
    pub fn render(&self) -> String {
        for (pool, stats) in self.store.pool_stats() {
            let PoolStats { size, idle } = stats;
            self.pool_connections.with_label_values(&[pool, "idle"]).set(i64::from(idle));
            self.pool_connections.with_label_values(&[pool, "in_use"]).set(i64::from(size.saturating_sub(idle)));
        }
        let mut text = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(error = %err, "cannot encode the metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// The canonical name of a gRPC status code, as other gRPC services label it: `OK`,
/// `NOT_FOUND`, `DEADLINE_EXCEEDED`.
pub fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A tower layer that records every gRPC call in [`Metrics`], including calls that never
/// finish: cut off by the caller's deadline (`DEADLINE_EXCEEDED`) or abandoned by the caller
/// (`CANCELLED`).
#[derive(Debug, Clone)]
pub struct RecordRpcLayer {
    metrics: Arc<Metrics>,
}

impl RecordRpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RecordRpcLayer {
    type Service = RecordRpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRpc { inner, metrics: Arc::clone(&self.metrics) }
    }
}

#[derive(Debug, Clone)]
pub struct RecordRpc<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// How a call of a gRPC method arrived: over gRPC, or as JSON over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// The JSON routes (`POST /api/v1/iam/personal_clients`) and the gRPC method each one calls.
#[derive(Debug, Clone, Default)]
pub struct JsonRoutes(Arc<[JsonRoute]>);

#[derive(Debug, Clone)]
pub struct JsonRoute {
    pub verb: http::Method,
    /// The path template, `{...}` standing for one segment.
    pub template: String,
    /// `/package.Service/Method`.
    pub method: String,
}

impl JsonRoutes {
    pub fn new(routes: Vec<JsonRoute>) -> Self {
        Self(routes.into())
    }

    /// The method `verb path` calls (HEAD as GET), if any.
    fn method(&self, verb: &http::Method, path: &str) -> Option<&str> {
        let verb = if verb == http::Method::HEAD { &http::Method::GET } else { verb };
        let matches = |template: &str| {
            let (mut want, mut got) = (template.split('/'), path.split('/'));
            loop {
                match (want.next(), got.next()) {
                    (None, None) => return true,
                    (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => {}
                    (Some(w), Some(g)) if w == g => {}
                    _ => return false,
                }
            }
        };
        self.0.iter().find(|route| route.verb == verb && matches(&route.template)).map(|route| route.method.as_str())
    }
}

/// One call being served. Recorded when it ends; if its future is dropped first (the server's
/// timeout for the caller's deadline, or the caller going away), recorded then.
struct CallRecord {
    metrics: Arc<Metrics>,
    method: String,
    protocol: Protocol,
    started: Instant,
    deadline: Option<Duration>,
    recorded: bool,
}

impl CallRecord {
    fn finish(mut self, code: Code) {
        self.metrics.rpc(&self.method, self.protocol, code, self.started.elapsed().as_secs_f64());
        self.recorded = true;
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.recorded {
            let elapsed = self.started.elapsed();
            // tonic's timer for the deadline starts a moment before this record's clock.
            let code = match self.deadline {
                Some(deadline) if elapsed + Duration::from_millis(5) >= deadline => Code::DeadlineExceeded,
                _ => Code::Cancelled,
            };
            self.metrics.rpc(&self.method, self.protocol, code, elapsed.as_secs_f64());
        }
    }
}

/// The caller's deadline from `grpc-timeout` (`100m`, `5S`, `1H`: an integer of at most eight
/// digits and a unit, per the gRPC over HTTP/2 protocol).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...) rather than
/// plain HTTP.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl Metrics {
    /// The method label of a call and how it came: a gRPC request (`/package.Service/Method`),
    /// or a request on the JSON routes (the method the route calls). Paths no method or route
    /// answers share one label, so no caller can grow the label set.
    fn method_label(&self, request: &http::Request<impl Sized>) -> Option<(String, Protocol)> {
        let path = request.uri().path();
        if is_grpc(request.headers()) {
            let method = if self.methods.contains(path) { path } else { "unknown" };
            return Some((method.to_owned(), Protocol::Grpc));
        }
        if crate::api::json::is_json_path(path) {
            let method = self.json.method(request.method(), path).unwrap_or("unknown");
            return Some((method.to_owned(), Protocol::Http));
        }
        None
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for RecordRpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let record = self.metrics.method_label(&request).map(|(method, protocol)| CallRecord {
            metrics: Arc::clone(&self.metrics),
            method,
            protocol,
            started: Instant::now(),
            deadline: grpc_timeout(request.headers()),
            recorded: false,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let Some(record) = record {
                let code = response.as_ref().map_or(Code::Internal, |response| match record.protocol {
                    // Unary errors come as "trailers-only" responses with the status in the
                    // headers; a response without one in its headers ends with OK in its trailers.
                    Protocol::Grpc => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(Code::Ok, Code::from_i32),
                    // Every JSON answer, and every refusal of a JSON request, says its code.
                    Protocol::Http => response.extensions().get::<Code>().copied().unwrap_or(Code::Unknown),
                });
                record.finish(code);
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("123456789S"), None, "at most eight digits");
        assert_eq!(timeout("5x"), None);
        assert_eq!(timeout("m"), None);
    }
}
