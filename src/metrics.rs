//! Prometheus metrics, served as text at `GET /metrics`: gRPC calls by method and status code
//! with latency histograms, token exchange outcomes by reason, and the database pools.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tonic::Code;

use crate::store::{PoolStats, Store};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Every metric the service keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    latency: LatencyFamily,
    exchanges: Family<OutcomeLabels, Counter>,
    pool_connections: Family<PoolLabels, Gauge>,
    store: Store,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Metrics {
    pub fn new(store: Store) -> Self {
        let mut registry = Registry::with_prefix("personal_clients");
        let requests = Family::<RpcLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let exchanges = Family::<OutcomeLabels, Counter>::default();
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register("grpc_requests", "gRPC calls by method and status code", requests.clone());
        registry.register("grpc_request_duration_seconds", "gRPC call latency by method", latency.clone());
        registry.register(
            "token_exchanges",
            "Token exchanges by outcome: issued, or the reason for refusing",
            exchanges.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by pool and state",
            pool_connections.clone(),
        );
        Self { registry, requests, latency, exchanges, pool_connections, store }
    }

    /// Counts one token exchange: `issued`, or why it was refused.
    pub fn token_exchange(&self, outcome: &str) {
        self.exchanges.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    fn rpc(&self, method: &str, code: Code, seconds: f64) {
        self.requests.get_or_create(&RpcLabels { method: method.to_owned(), code: code_name(code) }).inc();
        self.latency.get_or_create(&MethodLabels { method: method.to_owned() }).observe(seconds);
    }

    /// The Prometheus text exposition of every metric, pool gauges read now.
    pub fn render(&self) -> String {
        for (pool, stats) in self.store.pool_stats() {
            let PoolStats { size, idle } = stats;
            self.pool_connections.get_or_create(&PoolLabels { pool, state: "idle" }).set(i64::from(idle));
            self.pool_connections
                .get_or_create(&PoolLabels { pool, state: "in_use" })
                .set(i64::from(size.saturating_sub(idle)));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// The canonical name of a gRPC status code, as other gRPC services label it: `OK`,
/// `NOT_FOUND`, `DEADLINE_EXCEEDED`.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A tower layer that records every gRPC call in [`Metrics`].
#[derive(Debug, Clone)]
pub struct RecordRpcLayer {
    metrics: std::sync::Arc<Metrics>,
}

impl RecordRpcLayer {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RecordRpcLayer {
    type Service = RecordRpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRpc { inner, metrics: std::sync::Arc::clone(&self.metrics) }
    }
}

#[derive(Debug, Clone)]
pub struct RecordRpc<S> {
    inner: S,
    metrics: std::sync::Arc<Metrics>,
}

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...) rather than
/// plain HTTP.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The method label of a gRPC request: `/package.Service/Method`. Paths outside the services
/// served here share one label, so a scanner cannot grow the label set.
fn method_label(request: &http::Request<impl Sized>) -> Option<String> {
    if !is_grpc(request.headers()) {
        return None;
    }
    let path = request.uri().path();
    let known = crate::health::SERVICE_NAMES.iter().filter(|name| !name.is_empty()).any(|service| {
        path.strip_prefix('/').and_then(|p| p.strip_prefix(service)).is_some_and(|rest| rest.starts_with('/'))
    }) || path.starts_with("/grpc.");
    Some(if known { path.to_owned() } else { "unknown".to_owned() })
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
        let method = method_label(&request);
        let started = Instant::now();
        let metrics = std::sync::Arc::clone(&self.metrics);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let (Some(method), Ok(response)) = (method, &response) {
                // Unary errors come as "trailers-only" responses with the status in the headers;
                // a response without one in its headers ends with OK in its trailers.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32);
                metrics.rpc(&method, code, started.elapsed().as_secs_f64());
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
}
