//! The HTTP routes of the contract's methods, read from their `google.api.http` options: which
//! verb and path template call which gRPC method, which request fields the path binds, and
//! which come from the body or the query.

use axum::http::Method;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use crate::{
    error::Error,
    pb::{
        self,
        google_api::{HttpRule, http_rule::Pattern},
    },
};

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

    pub(super) fn last(&self) -> Option<&FieldDescriptor> {
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
    pub(super) fn axum_path(&self) -> String {
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
    http_routes(pb::descriptor_pool().map_err(Error::internal)?)
        .map_err(|e| Error::internal(format!("cannot read the HTTP routes of the contract: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_contract_has_its_route() {
        let pool = pb::descriptor_pool().unwrap();
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
}
