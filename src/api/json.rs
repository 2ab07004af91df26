//! JSON over HTTP for the contract's services, on the routes their `google.api.http` options
//! name (`GET /api/v1/iam/personal_clients/{id}`, ...). A JSON request becomes the method's
//! protobuf request by the proto3 JSON mapping and is served as a gRPC call of the same method,
//! through the same authentication gate and handler; the answer, or the `google.rpc.Status` of
//! an error, goes back through the same mapping. Nothing here decides anything: a rule that
//! holds for gRPC holds here because the call is the gRPC call.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
};

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{RawPathParams, Request, rejection::RawPathParamsRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::Response,
    routing::{MethodFilter, MethodRouter},
};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::ServiceExt;

use crate::{
    Error, FILE_DESCRIPTOR_SET,
    auth::{Challenge, Gate},
    domain::{FieldViolation, quote},
    metrics::is_grpc,
    pb::google_api::{HttpRule, http_rule::Pattern},
};

/// Request headers a JSON call passes on to the gRPC call as metadata: the caller's credential
/// and the proxies it came through.
const FORWARDED_HEADERS: [header::HeaderName; 2] =
    [header::AUTHORIZATION, header::HeaderName::from_static("x-forwarded-for")];

/// The served descriptors: the contract, its HTTP routes, and the error details. Decoded once;
/// [`routes`] fails at start-up if they cannot be, so nothing after it runs without them.
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()));

pub fn pool() -> Result<&'static DescriptorPool, Error> {
    POOL.as_ref().map_err(|e| Error::internal(format!("cannot read the served descriptors: {e}")))
}

/// One HTTP route of a gRPC method, from its `google.api.http` option.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    pub verb: Method,
    /// The path template as the proto gives it: `/api/v1/iam/personal_clients/{client.id}`.
    pub template: String,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    /// The request field each `{variable}` of the template binds, in template order.
    pub variables: Vec<FieldPath>,
    pub body: RouteBody,
}

/// Which part of the request the JSON body carries.
#[derive(Debug, Clone)]
pub enum RouteBody {
    /// No body; fields not bound by the path come from query parameters.
    None,
    /// `*`: every field not bound by the path.
    Whole,
    /// One top-level message field; the rest come from query parameters.
    Field(FieldDescriptor),
}

/// A field of a request message reached through nested messages: `client.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<FieldDescriptor>);

impl FieldPath {
    /// Resolves `path` (proto names joined by `.`) in `message`.
    fn resolve(message: &MessageDescriptor, path: &str) -> Result<Self, String> {
        let mut fields = Vec::new();
        let mut current = message.clone();
        for (i, name) in path.split('.').enumerate() {
            let field = current
                .get_field_by_name(name)
                .ok_or_else(|| format!("{} has no field {name:?} (in {path:?})", current.full_name()))?;
            if i + 1 < path.split('.').count() {
                match field.kind() {
                    Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
                    _ => return Err(format!("{path:?}: {name} is not a message field")),
                }
            }
            fields.push(field);
        }
        Ok(Self(fields))
    }

    /// Proto names: `client.id`.
    pub fn proto_name(&self) -> String {
        self.0.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
    }

    /// JSON names: `client.id`, `pageSize`.
    pub fn json_name(&self) -> String {
        self.0.iter().map(FieldDescriptor::json_name).collect::<Vec<_>>().join(".")
    }

    fn last(&self) -> Option<&FieldDescriptor> {
        self.0.last()
    }
}

/// Every HTTP route in `pool`'s `google.api.http` options, additional bindings included.
pub fn http_routes(pool: &DescriptorPool) -> Result<Vec<HttpRoute>, String> {
    let Some(extension) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&extension) {
                continue;
            }
            let rule = options
                .get_extension(&extension)
                .as_message()
                .ok_or_else(|| format!("{}: google.api.http is not a message", method.full_name()))?
                .transcode_to::<HttpRule>()
                .map_err(|e| format!("{}: google.api.http: {e}", method.full_name()))?;
            routes.push(HttpRoute::new(&method, &rule)?);
            for binding in &rule.additional_bindings {
                routes.push(HttpRoute::new(&method, binding)?);
            }
        }
    }
    Ok(routes)
}

impl HttpRoute {
    fn new(method: &MethodDescriptor, rule: &HttpRule) -> Result<Self, String> {
        let name = method.full_name();
        let (verb, template) = match &rule.pattern {
            Some(Pattern::Get(path)) => (Method::GET, path),
            Some(Pattern::Put(path)) => (Method::PUT, path),
            Some(Pattern::Post(path)) => (Method::POST, path),
            Some(Pattern::Delete(path)) => (Method::DELETE, path),
            Some(Pattern::Patch(path)) => (Method::PATCH, path),
            Some(Pattern::Custom(custom)) => {
                (Method::from_bytes(custom.kind.as_bytes()).map_err(|e| format!("{name}: {e}"))?, &custom.path)
            }
            None => return Err(format!("{name}: google.api.http names no path")),
        };
        if !rule.response_body.is_empty() {
            return Err(format!("{name}: response_body is not supported"));
        }
        let input = method.input();
        let mut variables = Vec::new();
        for segment in template.split('/').skip(1) {
            if let Some(variable) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let field_path = match variable.split_once('=') {
                    None | Some((_, "*")) => variable.split('=').next().unwrap_or_default(),
                    Some(_) => return Err(format!("{name}: {template}: only single-segment variables are supported")),
                };
                let path = FieldPath::resolve(&input, field_path).map_err(|e| format!("{name}: {e}"))?;
                if path.last().is_none_or(|field| field.is_list() || matches!(field.kind(), Kind::Message(_))) {
                    return Err(format!("{name}: {template}: {field_path} is not a single scalar field"));
                }
                variables.push(path);
            } else if segment.contains(['{', '}', '*', ':']) || (segment.is_empty() && template != "/") {
                return Err(format!("{name}: {template}: segment {segment:?} is not supported"));
            }
        }
        let body = match rule.body.as_str() {
            "" => RouteBody::None,
            "*" => RouteBody::Whole,
            field => RouteBody::Field(
                input
                    .get_field_by_name(field)
                    .filter(|f| !f.is_list() && matches!(f.kind(), Kind::Message(_)))
                    .ok_or_else(|| format!("{name}: body {field:?} is not a message field of the request"))?,
            ),
        };
        Ok(Self {
            verb,
            template: template.clone(),
            grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
            method: method.clone(),
            variables,
            body,
        })
    }

    /// The template in axum's syntax: each variable becomes `{v<index>}`.
    fn axum_path(&self) -> String {
        let mut index = 0;
        self.template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    index += 1;
                    format!("{{v{}}}", index - 1)
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The request fields a query parameter may set: scalars (repeated or not), not bound by the
    /// path, when the body does not carry every field.
    pub fn query_fields(&self) -> Vec<FieldPath> {
        let mut fields = Vec::new();
        if matches!(self.body, RouteBody::Whole) {
            return fields;
        }
        let body_field = match &self.body {
            RouteBody::Field(field) => Some(field.clone()),
            _ => None,
        };
        collect_scalars(&self.method.input(), &mut Vec::new(), &mut fields, 0);
        fields.retain(|path| {
            !self.variables.contains(path) && body_field.as_ref().is_none_or(|body| path.0.first() != Some(body))
        });
        fields
    }
}

/// Scalar fields of `message` and, a few levels down, of its message fields.
fn collect_scalars(
    message: &MessageDescriptor,
    prefix: &mut Vec<FieldDescriptor>,
    out: &mut Vec<FieldPath>,
    depth: u8,
) {
    for field in message.fields() {
        match field.kind() {
            Kind::Message(inner) => {
                if depth < 3 && !field.is_list() && !field.is_map() && !is_well_known(&inner) {
                    prefix.push(field.clone());
                    collect_scalars(&inner, prefix, out, depth + 1);
                    prefix.pop();
                }
            }
            _ if field.is_map() => {}
            _ => {
                let mut path = prefix.clone();
                path.push(field);
                out.push(FieldPath(path));
            }
        }
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

/// The HTTP routes of the served contract.
pub fn contract_routes() -> Result<Vec<HttpRoute>, Error> {
    http_routes(pool()?).map_err(|e| Error::internal(format!("cannot read the HTTP routes of the contract: {e}")))
}

/// Whether `path` is where the JSON routes live: a request there that no route takes is still
/// answered, and counted, as a JSON call.
pub fn is_json_path(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// The router of `http_routes` and `GET /openapi.json`, each JSON call served by `grpc` (the
/// gRPC services behind `gate`, their authentication gate).
pub fn routes(http_routes: Vec<HttpRoute>, grpc: Router, gate: Gate) -> Result<Router, Error> {
    let document = Bytes::from(super::openapi::document(pool()?, &http_routes).to_string());
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
                if is_grpc(request.headers()) {
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
        if is_grpc(request.headers()) {
            return grpc_unimplemented(request.uri().path());
        }
        let (parts, body) = request.into_parts();
        let authorization =
            parts.headers.get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or_default().to_owned());
        let answer = match request_message(route, params, &parts.headers, parts.uri.query(), body).await {
            Ok(message) => self.call(route, parts, message).await,
            // As over gRPC, where the gate runs before the request is decoded, a caller without
            // a valid token learns that and nothing about what was wrong with the request.
            Err(err) => match self.gate.check(&route.grpc_path, &parts.headers).await {
                Ok(_) => Err(Status::from(err)),
                Err(unauthenticated) => Err(Status::from(unauthenticated)),
            },
        };
        match answer {
            Ok(message) => {
                let mut response = json_response(StatusCode::OK, to_json(&message));
                response.extensions_mut().insert(Code::Ok);
                response
            }
            Err(status) => {
                let mut response = status_response(&status);
                let challenge = match status.code() {
                    Code::Unauthenticated => Some(Challenge::unauthenticated(authorization.as_deref())),
                    Code::PermissionDenied => Some(Challenge::InsufficientScope),
                    _ => None,
                };
                if let Some(challenge) = challenge {
                    let value = HeaderValue::from_static(challenge.header());
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
                response
            }
        }
    }

    /// The gRPC call of `route`'s method with `message`, as a gRPC client would make it, served
    /// in this process by the same router as calls from the network.
    async fn call(
        &self,
        route: &HttpRoute,
        parts: http::request::Parts,
        message: DynamicMessage,
    ) -> Result<DynamicMessage, Status> {
        let encoded = message.encode_to_vec();
        let length = u32::try_from(encoded.len()).map_err(|_| Status::from(Error::TooLarge(u32::MAX as usize)))?;
        let mut frame = BytesMut::with_capacity(5 + encoded.len());
        frame.put_u8(0);
        frame.put_u32(length);
        frame.put_slice(&encoded);
        let mut request = http::Request::new(Body::from(frame.freeze()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = http::Uri::try_from(route.grpc_path.as_str())
            .map_err(|e| Status::from(Error::internal_with("a method path is not a URI", e)))?;
        *request.version_mut() = http::Version::HTTP_2;
        let headers = request.headers_mut();
        for name in FORWARDED_HEADERS {
            for value in parts.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        *request.extensions_mut() = parts.extensions;

        let Ok(response) = self.grpc.clone().oneshot(request).await;
        let (head, body) = response.into_parts();
        if let Some(status) = Status::from_header_map(&head.headers).filter(|s| s.code() != Code::Ok) {
            return Err(status);
        }
        let collected =
            body.collect().await.map_err(|e| Status::from(Error::internal_with("cannot read a gRPC answer", e)))?;
        if let Some(status) = collected.trailers().and_then(Status::from_header_map).filter(|s| s.code() != Code::Ok) {
            return Err(status);
        }
        let data = collected.to_bytes();
        let message = match data.first() {
            Some(0) if data.len() >= 5 => &data[5..],
            _ => return Err(Error::internal("a gRPC answer is not one uncompressed message").into()),
        };
        DynamicMessage::decode(route.method.output(), message)
            .map_err(|e| Error::internal_with("cannot decode a gRPC answer", e).into())
    }
}

/// The method's request from the JSON body, the path's variables and the query parameters.
async fn request_message(
    route: &HttpRoute,
    params: Result<RawPathParams, RawPathParamsRejection>,
    headers: &HeaderMap,
    query: Option<&str>,
    body: Body,
) -> Result<DynamicMessage, Error> {
    // The admission layer has received the body whole, within --max-request-bytes.
    let bytes = to_bytes(body, usize::MAX).await.map_err(|_| Error::invalid("body", "could not be read to its end"))?;
    let input = route.method.input();
    let mut message = match &route.body {
        RouteBody::None if !bytes.iter().all(u8::is_ascii_whitespace) => {
            return Err(Error::invalid(
                "body",
                format!("{} {} takes no body; send its fields as query parameters", route.verb, route.template),
            ));
        }
        RouteBody::None => DynamicMessage::new(input.clone()),
        RouteBody::Whole => parse_json(input.clone(), headers, &bytes)?,
        RouteBody::Field(field) => {
            let Kind::Message(body_type) = field.kind() else {
                return Err(Error::internal("a body field is not a message"));
            };
            let mut message = DynamicMessage::new(input.clone());
            message.set_field(field, prost_reflect::Value::Message(parse_json(body_type, headers, &bytes)?));
            message
        }
    };
    let bound = bound_fields(route, params, query)?;
    for path in &route.variables {
        if let (Some(in_body), Some(in_path)) = (value_at(&message, path), value_at(&bound, path))
            && in_body != in_path
        {
            return Err(Error::invalid(
                &path.json_name(),
                "the body and the path give different values; give it in the path only",
            ));
        }
    }
    // Merging protobuf encodings: set fields overwrite, repeated fields append.
    message
        .merge(bound.encode_to_vec().as_slice())
        .map_err(|e| Error::internal_with("cannot merge the path and query into the request", e))?;
    Ok(message)
}

/// The value of the field at `path`, if it is set.
fn value_at(message: &DynamicMessage, path: &FieldPath) -> Option<prost_reflect::Value> {
    let (last, parents) = path.0.split_last()?;
    let mut current = message.clone();
    for field in parents {
        if !current.has_field(field) {
            return None;
        }
        current = current.get_field(field).as_message()?.clone();
    }
    current.has_field(last).then(|| current.get_field(last).into_owned())
}

/// A JSON body as `message` by the proto3 JSON mapping; unknown fields refused. An empty body
/// is the empty message. Like grpc-gateway, the body is JSON whatever its `Content-Type` says:
/// `curl -d` sends a form's type by default.
fn parse_json(message: MessageDescriptor, headers: &HeaderMap, bytes: &[u8]) -> Result<DynamicMessage, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(message));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let parsed = DynamicMessage::deserialize_with_options(
        message.clone(),
        serde_path_to_error::Deserializer::new(&mut json, &mut track),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .and_then(|parsed| json.end().map(|()| parsed));
    parsed.map_err(|err| {
        let path = track.path().to_string();
        // `?` stands where the input stopped being JSON at all: that is the body's fault.
        let path = (path != "." && !path.contains('?') && !err.is_syntax() && !err.is_eof()).then_some(path);
        let mut description = err.to_string();
        // The path ends at the object that holds the unknown name: name the field itself, and
        // what that object may hold.
        let unknown = description
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.split_once('\''))
            .map(|(name, _)| name.to_owned());
        let field = match (unknown, &path) {
            (Some(name), _) => {
                if let Some(holder) = message_at(&message, path.as_deref()) {
                    description = format!(
                        "is not a field of {}, which has {} (or their proto names)",
                        holder.full_name(),
                        holder.fields().map(|f| f.json_name().to_owned()).collect::<Vec<_>>().join(", ")
                    );
                }
                path.map_or(name.clone(), |path| format!("{path}.{name}"))
            }
            (None, Some(path)) => {
                if let Some(form) = field_at(&message, path).and_then(|field| json_form(&field)) {
                    description = format!("{description}; {form}");
                }
                path.clone()
            }
            (None, None) => "body".to_owned(),
        };
        if (err.is_syntax() || err.is_eof())
            && let Some(content_type) = headers.get(header::CONTENT_TYPE).filter(|value| !is_json(value))
        {
            let content_type = String::from_utf8_lossy(content_type.as_bytes());
            description = format!(
                "{description} (the body is read as JSON, whatever its content type: here {})",
                quote(&content_type)
            );
        }
        Error::InvalidArgument(vec![FieldViolation { field, description }])
    })
}

/// The field at a JSON path of `root` (`client.expiresTime`, `scopedRoles[2]`).
fn field_at(root: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let (parent, name) = path.rsplit_once('.').map_or((None, path), |(parent, name)| (Some(parent), name));
    let name = name.split('[').next().unwrap_or(name);
    let holder = message_at(root, parent)?;
    holder.get_field_by_json_name(name).or_else(|| holder.get_field_by_name(name))
}

/// What the JSON mapping takes for a field whose form is not obvious.
fn json_form(field: &FieldDescriptor) -> Option<&'static str> {
    let Kind::Message(message) = field.kind() else { return None };
    match message.full_name() {
        "google.protobuf.Duration" => Some("a duration is seconds with an s suffix, as \"3600s\" or \"0.5s\""),
        "google.protobuf.Timestamp" => Some("a timestamp is RFC 3339 in UTC, as \"2027-01-31T12:00:00Z\""),
        "google.protobuf.FieldMask" => {
            Some("a field mask is field names joined by commas, as \"displayName,scopedRoles\"")
        }
        _ => None,
    }
}

/// `application/json`, or a `+json` type.
fn is_json(content_type: &HeaderValue) -> bool {
    let media_type = content_type.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json") || media_type.to_ascii_lowercase().ends_with("+json")
}

/// The message type at a JSON path of `root` (`client`), or `root` for `None`.
fn message_at(root: &MessageDescriptor, path: Option<&str>) -> Option<MessageDescriptor> {
    let mut current = root.clone();
    for name in path.into_iter().flat_map(|p| p.split('.')) {
        let name = name.split('[').next().unwrap_or(name);
        let field = current.get_field_by_json_name(name).or_else(|| current.get_field_by_name(name))?;
        match field.kind() {
            Kind::Message(inner) => current = inner,
            _ => return None,
        }
    }
    Some(current)
}

/// The request fields the path's variables and the query parameters set, as a message of the
/// request type, read by the same JSON mapping as a body (`"pageSize": "10"` is a valid int32).
fn bound_fields(
    route: &HttpRoute,
    params: Result<RawPathParams, RawPathParamsRejection>,
    query: Option<&str>,
) -> Result<DynamicMessage, Error> {
    // Each value with the name the caller gave it, to name it if the mapping refuses it.
    let mut values: Vec<(String, FieldPath, serde_json::Value)> = Vec::new();
    let params = params.map_err(|_| {
        let names: Vec<String> = route.variables.iter().map(FieldPath::proto_name).collect();
        Error::invalid(&names.join(","), "is not valid UTF-8 once percent-decoded")
    })?;
    for (name, value) in &params {
        let index: usize = name.strip_prefix('v').and_then(|i| i.parse().ok()).unwrap_or(usize::MAX);
        let path = route.variables.get(index).ok_or_else(|| Error::internal("a path variable has no field"))?;
        values.push((path.proto_name(), path.clone(), scalar_json(path, value)));
    }
    let allowed = route.query_fields();
    let mut given: BTreeMap<String, FieldPath> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // The decoder puts U+FFFD where the bytes were not UTF-8; a path value that is not is
        // refused, and so is a query value.
        if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
            return Err(Error::invalid(&name, "is not valid UTF-8 once percent-decoded"));
        }
        let path =
            allowed.iter().find(|path| path.json_name() == name || path.proto_name() == name).ok_or_else(|| {
                let names: Vec<String> = allowed.iter().map(FieldPath::json_name).collect();
                Error::invalid(
                    &name,
                    if names.is_empty() {
                        format!("is not a query parameter of {} {}, which takes none", route.verb, route.template)
                    } else {
                        format!(
                            "is not a query parameter of {} {}; it takes {}",
                            route.verb,
                            route.template,
                            names.join(", ")
                        )
                    },
                )
            })?;
        let repeated = path.last().is_some_and(FieldDescriptor::is_list);
        if given.insert(path.json_name(), path.clone()).is_some() && !repeated {
            return Err(Error::invalid(&name, "is given more than once"));
        }
        values.push((name.into_owned(), path.clone(), scalar_json(path, &value)));
    }
    let input = route.method.input();
    let mut tree = serde_json::Map::new();
    for (name, path, value) in values {
        let mut one = serde_json::Map::new();
        insert_json(&mut one, &path.0, value.clone());
        if let Err(err) = DynamicMessage::deserialize(input.clone(), serde_json::Value::Object(one)) {
            let kind = path.last().map_or_else(String::new, |field| format!(" {:?}", field.kind()).to_lowercase());
            return Err(Error::invalid(&name, format!("{value} is not a valid{kind}: {err}")));
        }
        insert_json(&mut tree, &path.0, value);
    }
    DynamicMessage::deserialize(input, serde_json::Value::Object(tree))
        .map_err(|err| Error::invalid("query", err.to_string()))
}

/// A path or query value as the JSON value the mapping expects for the field: booleans are
/// JSON booleans; every other scalar is accepted as a string.
fn scalar_json(path: &FieldPath, raw: &str) -> serde_json::Value {
    match path.last().map(FieldDescriptor::kind) {
        Some(Kind::Bool) if raw == "true" || raw == "false" => serde_json::Value::Bool(raw == "true"),
        _ => serde_json::Value::String(raw.to_owned()),
    }
}

fn insert_json(
    tree: &mut serde_json::Map<String, serde_json::Value>,
    path: &[FieldDescriptor],
    value: serde_json::Value,
) {
    let Some((first, rest)) = path.split_first() else { return };
    let key = first.json_name().to_owned();
    if rest.is_empty() {
        if first.is_list() {
            let entry = tree.entry(key).or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(items) = entry {
                items.push(value);
            }
        } else {
            tree.insert(key, value);
        }
        return;
    }
    let entry = tree.entry(key).or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let serde_json::Value::Object(inner) = entry {
        insert_json(inner, rest, value);
    }
}

/// A message by the proto3 JSON mapping: lowerCamelCase names, and every field that has no
/// presence written even at its default (`"allowSourceCidr": []`, `"nextPageToken": ""`), as
/// grpc-gateway writes them. Unset message fields (a timestamp never set) are left out.
pub fn to_json(message: &DynamicMessage) -> Vec<u8> {
    let mut json = serde_json::Serializer::new(Vec::new());
    let options = SerializeOptions::new().skip_default_fields(false);
    match message.serialize_with_options(&mut json, &options) {
        Ok(()) => json.into_inner(),
        Err(err) => {
            tracing::error!(error = %err, message = prost_reflect::ReflectMessage::descriptor(message).full_name(), "cannot write a message as JSON");
            br#"{"code":13,"message":"internal error","details":[]}"#.to_vec()
        }
    }
}

/// An error as `google.rpc.Status` in JSON, `{"code", "message", "details"}` with `@type` on
/// each detail, under the HTTP status of its gRPC code; `Retry-After` when it says when to retry
/// or is `UNAVAILABLE`.
pub fn status_response(status: &Status) -> Response {
    let mut response = json_response(http_status(status.code()), status_json(status));
    // For the metrics: the code of a JSON answer, as `grpc-status` is for gRPC.
    response.extensions_mut().insert(status.code());
    let retry_after = match status.get_details_retry_info().and_then(|info| info.retry_delay) {
        Some(delay) => Some(crate::error::retry_seconds(delay)),
        // A database away or busy: worth another try in a moment, as the token endpoint says.
        None if status.code() == Code::Unavailable => Some(1),
        None => None,
    };
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A request refused before it reached a route: [`status_response`], except that a body too
/// large or too slow to arrive gets the HTTP status that says so (413, 408), and a server with
/// all its places taken says it is unavailable for a moment (503), not that the caller sent
/// too much.
pub fn refusal(err: Error) -> Response {
    let http = match &err {
        Error::TooLarge(_) => Some(StatusCode::PAYLOAD_TOO_LARGE),
        Error::SlowRequest(_) => Some(StatusCode::REQUEST_TIMEOUT),
        Error::Overloaded { .. } => Some(StatusCode::SERVICE_UNAVAILABLE),
        _ => None,
    };
    let mut response = status_response(&Status::from(err));
    if let Some(http) = http {
        *response.status_mut() = http;
    }
    response
}

/// `{"code", "message", "details"}`, always all three; the details' own fields as the mapping
/// writes them, those at their defaults left out.
fn status_json(status: &Status) -> Vec<u8> {
    let decoded = POOL
        .as_ref()
        .ok()
        .and_then(|pool| pool.get_message_by_name("google.rpc.Status"))
        .and_then(|descriptor| DynamicMessage::decode(descriptor, status.details()).ok());
    // Each detail written by itself, in its fields' order. A detail of a type not in the pool
    // cannot be written as JSON: the status goes without it.
    let details: Vec<String> = decoded
        .as_ref()
        .and_then(|decoded| decoded.get_field_by_name("details"))
        .and_then(|details| details.as_list().map(<[prost_reflect::Value]>::to_vec))
        .unwrap_or_default()
        .iter()
        .filter_map(|detail| detail.as_message().and_then(|any| serde_json::to_string(any).ok()))
        .collect();
    let details = format!("[{}]", details.join(","));
    let message = serde_json::Value::from(status.message());
    format!(r#"{{"code":{},"message":{message},"details":{details}}}"#, status.code() as i32).into_bytes()
}

/// The HTTP status of a gRPC code, as Google's APIs and grpc-gateway map them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as nginx and grpc-gateway use it.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON answer that no cache keeps: answers carry a user's credentials, and one a secret.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A known path asked with a verb it does not take: 405, with the verbs it takes.
fn method_not_allowed(method: &Method, allowed: &[Method]) -> Response {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let status = Status::unimplemented(format!("{method} is not served here; this path takes {}", names.join(", ")));
    let mut response = status_response(&status);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(allow) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

/// The answer a gRPC client gets for a path no gRPC method has.
fn grpc_unimplemented(path: &str) -> Response {
    Status::unimplemented(format!("no method {path}")).into_http::<Body>()
}

/// A path under `/api/` that no route serves.
pub fn not_found(method: &Method, path: &str) -> Response {
    status_response(&Status::not_found(format!(
        "no route {method} {}; the routes are listed in /openapi.json",
        quote(path)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_contract_has_its_route() {
        let pool = pool().unwrap();
        let routes = http_routes(pool).unwrap();
        let mut seen: Vec<(String, String, String)> =
            routes.iter().map(|r| (r.verb.to_string(), r.template.clone(), r.grpc_path.clone())).collect();
        seen.sort();
        let want = [
            ("DELETE", "/api/v1/iam/personal_clients/{id}", "/c1.api.iam.v1.PersonalClientService/Delete"),
            ("GET", "/api/v1/iam/personal_clients", "/c1.api.iam.v1.PersonalClientService/List"),
            ("GET", "/api/v1/iam/personal_clients/{id}", "/c1.api.iam.v1.PersonalClientService/Get"),
            ("POST", "/api/v1/iam/personal_clients", "/c1.api.iam.v1.PersonalClientService/Create"),
            ("POST", "/api/v1/iam/personal_clients/{client.id}", "/c1.api.iam.v1.PersonalClientService/Update"),
            ("POST", "/api/v1/search/iam/personal_clients", "/c1.api.iam.v1.PersonalClientSearchService/Search"),
        ];
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned())).collect();
        assert_eq!(seen, want);
        let list = routes.iter().find(|r| r.grpc_path.ends_with("/List")).unwrap();
        let names: Vec<String> = list.query_fields().iter().map(FieldPath::json_name).collect();
        assert_eq!(names, ["pageSize", "pageToken"]);
        let update = routes.iter().find(|r| r.grpc_path.ends_with("/Update")).unwrap();
        assert_eq!(update.axum_path(), "/api/v1/iam/personal_clients/{v0}");
        assert_eq!(update.variables[0].proto_name(), "client.id");
    }

    #[test]
    fn codes_have_the_http_status_google_gives_them() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::DeadlineExceeded), StatusCode::GATEWAY_TIMEOUT);
    }
}
