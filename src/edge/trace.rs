//! The trace layer: every request is a server span, in the trace its caller sent (W3C trace
//! context or B3) or in a new one, named and attributed by OpenTelemetry's semantic conventions
//! for RPC and HTTP servers. A call that ends refused says why ([`crate::telemetry::refused`]),
//! or its code does, and its span has the error status. Installed only when spans are exported.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{extract::MatchedPath, middleware::Next, response::Response};
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{JsonRoutes, code_of};
use crate::{
    grpc_methods::GrpcMethods,
    metrics::code_name,
    protocol::{self, Protocol},
    telemetry::{self, Refusal, span},
};

/// A tower layer that serves each request inside its server span.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    /// The methods served here: only they give a span its name.
    methods: GrpcMethods,
    /// The JSON routes, which name the spans of their requests.
    json: JsonRoutes,
}

impl TraceLayer {
    pub fn new(methods: GrpcMethods, json: JsonRoutes) -> Self {
        Self { methods, json }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    layer: TraceLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Trace<S>
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
        let protocol = Protocol::of(request.headers(), request.uri().path());
        let span = server_span(&request, protocol, &self.layer);
        let _ = span.set_parent(telemetry::extract(request.headers()));
        let refusal = Refusal::default();
        let response = span.in_scope(|| self.inner.call(request));
        let call = refusal.scope(response).instrument(span.clone());
        Box::pin(async move {
            let response = call.await;
            match &response {
                Ok(response) => finish(&span, protocol, response, refusal.reason()),
                Err(_) => fail(&span, refusal.reason().unwrap_or("internal")),
            }
            response
        })
    }
}

/// The span of a request, before its answer: what the request itself says.
fn server_span<B>(request: &http::Request<B>, protocol: Protocol, served: &TraceLayer) -> Span {
    let span = match protocol {
        Protocol::Grpc => {
            let path = request.uri().path();
            // A path no method answers has no name of its own: callers choose those.
            let (service, method) = match path.strip_prefix('/').and_then(|name| name.split_once('/')) {
                Some(names) if served.methods.contains(path) => names,
                _ => ("_OTHER", "_OTHER"),
            };
            span!(
                "grpc server",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
                server.address = Empty,
                server.port = Empty,
                client.address = Empty,
                client.port = Empty,
                error.type = Empty,
                otel.status_code = Empty,
                otel.status_description = Empty,
            )
        }
        Protocol::Json | Protocol::Http => {
            let method = method_name(request.method());
            // A JSON route's template names it; the router names the others' ([`record_route`]).
            let route = served.json.route(request.method(), request.uri().path()).map(|route| route.template.as_str());
            let span = span!(
                "http server",
                otel.name = method,
                otel.kind = "server",
                http.request.method = method,
                http.route = Empty,
                http.response.status_code = Empty,
                server.address = Empty,
                server.port = Empty,
                client.address = Empty,
                client.port = Empty,
                error.type = Empty,
                otel.status_code = Empty,
                otel.status_description = Empty,
            );
            if let Some(route) = route {
                span.record("http.route", route);
                span.record("otel.name", format!("{method} {route}"));
            }
            span
        }
    };
    if let Some((host, port)) = addressed(request) {
        span.record("server.address", host.as_str());
        if let Some(port) = port {
            span.record("server.port", i64::from(port));
        }
    }
    if let Some(peer) = protocol::peer(request.extensions()) {
        span.record("client.address", peer.ip().to_string());
        span.record("client.port", i64::from(peer.port()));
    }
    span
}

/// The host and port the client addressed: HTTP/2's `:authority`, or HTTP/1.1's `Host`.
fn addressed<B>(request: &http::Request<B>) -> Option<(String, Option<u16>)> {
    let authority: http::uri::Authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?.parse().ok()?,
    };
    // A DNS name is at most 253 characters; a longer one is not worth a span's room.
    let host = authority.host();
    (host.len() <= 253).then(|| (host.to_owned(), authority.port_u16()))
}

/// The request method as the conventions name it: one of HTTP's own, or `_OTHER`.
fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// What the answer says: its status, and whether the call failed or was refused, and why.
fn finish<R>(span: &Span, protocol: Protocol, response: &http::Response<R>, refusal: Option<&'static str>) {
    let failure = match protocol {
        Protocol::Grpc => {
            let code = code_of(protocol, response);
            span.record("rpc.grpc.status_code", code as i64);
            (code != tonic::Code::Ok).then(|| code_name(code))
        }
        Protocol::Json | Protocol::Http => {
            let status = response.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            match response.extensions().get::<tonic::Code>() {
                Some(code) if *code != tonic::Code::Ok => Some(code_name(*code)),
                _ => (status.is_client_error() || status.is_server_error()).then(|| status.as_u16().to_string()),
            }
        }
    };
    match (refusal, failure) {
        (Some(reason), _) => fail(span, reason),
        (None, Some(failure)) => fail(span, &failure),
        (None, None) => {}
    }
}

/// Marks the call failed or refused, for `reason`.
fn fail(span: &Span, reason: &str) {
    span.record("error.type", reason);
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
}

/// Names the current span by the route that took its request (`POST /auth/v1/token`): a
/// `route_layer` of the router, for the plain HTTP routes (a gRPC call's span is named by its
/// method, a JSON route's by its template).
pub async fn record_route(request: axum::extract::Request, next: Next) -> Response {
    if let Some(route) = request.extensions().get::<MatchedPath>()
        && Protocol::of(request.headers(), request.uri().path()) == Protocol::Http
    {
        let span = Span::current();
        span.record("http.route", route.as_str());
        span.record("otel.name", format!("{} {}", method_name(request.method()), route.as_str()));
    }
    next.run(request).await
}
