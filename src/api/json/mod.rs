//! JSON over HTTP for the contract's services, on the routes their `google.api.http` options
//! name (`GET /api/v1/iam/personal_clients/{id}`, ...). A JSON request becomes the method's
//! protobuf request by the proto3 JSON mapping and is served as a gRPC call of the same method,
//! through the same authentication gate and handler; the answer, or the `google.rpc.Status` of
//! an error, goes back through the same mapping. Nothing here decides anything: a rule that
//! holds for gRPC holds here because the call is the gRPC call.

//!
//! [`routes`] reads the routes from the contract, [`transcode`] turns JSON into the request
//! message and the answer back into JSON, [`call`] makes the gRPC call in this process, and
//! [`openapi`] describes the routes.

mod call;
pub mod openapi;
pub mod routes;
mod transcode;

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{RawPathParams, Request, rejection::RawPathParamsRejection},
    http::{HeaderValue, Method, StatusCode, header},
    response::Response,
    routing::{MethodFilter, MethodRouter},
};
use tonic::{Code, Status};

use crate::{
    auth::{Authorization, Gate},
    domain::{echo, quote},
    error::{Error, answers},
    pb, protocol,
};
use routes::HttpRoute;

/// The router of `http_routes` and `GET /openapi.json`, each JSON call served by `grpc` (the
/// gRPC services behind `gate`, their authentication gate).
pub fn router(http_routes: Vec<HttpRoute>, grpc: Router, gate: Gate) -> Result<Router, Error> {
    let pool = pb::descriptor_pool().map_err(Error::internal)?;
    let document = Bytes::from(openapi::document(pool, &http_routes).to_string());
    let gateway = Arc::new(Gateway { grpc, gate });
    let mut by_path: BTreeMap<String, Vec<HttpRoute>> = BTreeMap::new();
    for route in http_routes {
        by_path.entry(route.axum_path()).or_default().push(route);
    }
    let mut router = Router::new();
    for (path, routes) in by_path {
        let mut allowed: Vec<Method> = routes.iter().map(|route| route.verb.clone()).collect();
        // axum answers HEAD with the GET route's headers.
        if allowed.contains(&Method::GET) {
            allowed.push(Method::HEAD);
        }
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut methods = MethodRouter::new();
        for route in routes {
            let filter = MethodFilter::try_from(route.verb.clone())
                .map_err(|e| Error::internal(format!("{}: {e}", route.template)))?;
            let (gateway, route) = (Arc::clone(&gateway), Arc::new(route));
            methods =
                methods.on(filter, move |params: Result<RawPathParams, RawPathParamsRejection>, request: Request| {
                    let (gateway, route) = (Arc::clone(&gateway), Arc::clone(&route));
                    async move { gateway.serve(&route, params, request).await }
                });
        }
        methods = methods.fallback(move |request: Request| {
            let allowed = allowed.clone();
            async move {
                if protocol::is_grpc(request.headers()) {
                    return grpc_unimplemented(request.uri().path());
                }
                method_not_allowed(request.method(), &allowed)
            }
        });
        router = router.route(&path, methods);
    }
    Ok(router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move {
                let mut response = Response::new(Body::from(document));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
        }),
    ))
}

#[derive(Debug)]
struct Gateway {
    grpc: Router,
    gate: Gate,
}

impl Gateway {
    async fn serve(
        &self,
        route: &HttpRoute,
        params: Result<RawPathParams, RawPathParamsRejection>,
        request: Request,
    ) -> Response {
        // A gRPC client that asks for a JSON path is told as gRPC tells of any unknown method.
        if protocol::is_grpc(request.headers()) {
            return grpc_unimplemented(request.uri().path());
        }
        let (parts, body) = request.into_parts();
        let challenge = Authorization::of(&parts.headers).challenge();
        let answer = match transcode::request_message(route, params, &parts.headers, parts.uri.query(), body).await {
            Ok(message) => call::call(&self.grpc, route, parts, message).await,
            // As over gRPC, where the gate runs before the request is decoded, a caller without
            // a valid token learns that and nothing about what was wrong with the request.
            Err(err) => match self.gate.check(&route.grpc_path, &parts.headers).await {
                Ok(_) => Err(Status::from(err)),
                Err(unauthenticated) => Err(Status::from(unauthenticated)),
            },
        };
        match answer {
            Ok(message) => {
                let mut response = answers::api_json(StatusCode::OK, transcode::to_json(&message));
                response.extensions_mut().insert(Code::Ok);
                response
            }
            Err(status) => answers::json_status(&status, Some(challenge)),
        }
    }
}

/// A known path asked with a verb it does not take: 405, with the verbs it takes.
fn method_not_allowed(method: &Method, allowed: &[Method]) -> Response {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let status = Status::unimplemented(format!(
        "{} is not served here; this path takes {}",
        echo(method.as_str()),
        names.join(", ")
    ));
    let mut response = answers::json_status(&status, None);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(allow) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// The answer a gRPC client gets for a path no gRPC method has.
fn grpc_unimplemented(path: &str) -> Response {
    Status::unimplemented(format!("no method {}", echo(path))).into_http::<Body>()
}

/// A path under `/api/` that no route serves.
pub fn not_found(method: &Method, path: &str) -> Response {
    let status =
        Status::not_found(format!("no route {method} {}; the routes are listed in /openapi.json", quote(path)));
    answers::json_status(&status, None)
}
