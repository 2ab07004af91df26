//! The metrics layer: every call of a gRPC method, over gRPC or as JSON on its route, recorded
//! in [`Metrics`] with its method, status code, protocol and latency, including calls that never
//! finish.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tonic::Code;

use crate::{grpc_methods::GrpcMethods, metrics::Metrics, protocol::Protocol};

/// A tower layer that records every gRPC call in [`Metrics`], including calls that never
/// finish: cut off by the caller's deadline (`DEADLINE_EXCEEDED`) or abandoned by the caller
/// (`CANCELLED`).
#[derive(Debug, Clone)]
pub struct RecordRpcLayer {
    metrics: Arc<Metrics>,
    /// The methods served here: only they get a label of their own.
    methods: GrpcMethods,
    /// The JSON routes, each to the method it calls.
    json: JsonRoutes,
}

impl RecordRpcLayer {
    pub fn new(metrics: Arc<Metrics>, methods: GrpcMethods, json: JsonRoutes) -> Self {
        Self { metrics, methods, json }
    }
}

impl<S> tower::Layer<S> for RecordRpcLayer {
    type Service = RecordRpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordRpc { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RecordRpc<S> {
    inner: S,
    layer: RecordRpcLayer,
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
        self.route(verb, path).map(|route| route.method.as_str())
    }

    /// The route that takes `verb path` (HEAD as GET), if any.
    pub fn route(&self, verb: &http::Method, path: &str) -> Option<&JsonRoute> {
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
        self.0.iter().find(|route| route.verb == verb && matches(&route.template))
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

impl RecordRpcLayer {
    /// The method label of a call and how it came: a gRPC request (`/package.Service/Method`),
    /// or a request on the JSON routes (the method the route calls). Paths no method or route
    /// answers share one label, so no caller can grow the label set.
    fn method_label(&self, request: &http::Request<impl Sized>) -> Option<(String, Protocol)> {
        let path = request.uri().path();
        match Protocol::of(request.headers(), path) {
            Protocol::Grpc => {
                let method = if self.methods.contains(path) { path } else { "unknown" };
                Some((method.to_owned(), Protocol::Grpc))
            }
            Protocol::Json => {
                let method = self.json.method(request.method(), path).unwrap_or("unknown");
                Some((method.to_owned(), Protocol::Json))
            }
            Protocol::Http => None,
        }
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
        let record = self.layer.method_label(&request).map(|(method, protocol)| CallRecord {
            metrics: Arc::clone(&self.layer.metrics),
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
                let code = response.as_ref().map_or(Code::Internal, |response| code_of(record.protocol, response));
                record.finish(code);
            }
            response
        })
    }
}

/// The gRPC status code of an answer to a call of a gRPC method, over gRPC or as JSON.
pub fn code_of<R>(protocol: Protocol, response: &http::Response<R>) -> Code {
    match protocol {
        // Unary errors come as "trailers-only" responses with the status in the headers; a
        // response without one in its headers ends with OK in its trailers.
        Protocol::Grpc => response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from_i32),
        // Every JSON answer, and every refusal of a JSON request, says its code.
        Protocol::Json | Protocol::Http => response.extensions().get::<Code>().copied().unwrap_or(Code::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
