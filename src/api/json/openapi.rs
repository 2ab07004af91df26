//! The OpenAPI 3 document of the JSON routes (`GET /openapi.json`), generated from the same
//! descriptors the routes are read from: paths and verbs from `google.api.http`, schemas from
//! the messages by the proto3 JSON mapping, descriptions from the proto comments.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::routes::{FieldPath, HttpRoute, RouteBody};
use crate::api::PUBLIC_SERVICES;

/// The document for `routes`, whose messages come from `pool`.
pub fn document(pool: &DescriptorPool, routes: &[HttpRoute]) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes {
        paths
            .entry(openapi_path(route))
            .or_default()
            .insert(route.verb.as_str().to_lowercase(), operation(route, &mut schemas));
    }
    if let Some(status) = pool.get_message_by_name("google.rpc.Status") {
        schemas.reference(&status);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "personal-clients",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Personal client credentials: per-user OAuth2 API keys. JSON by the proto3 JSON \
                mapping; every error is a google.rpc.Status. Generated from the service's protobuf contract.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.finish(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token of this service (from POST /auth/v1/token or `personal-clients \
                        mint-token`), or of a trusted issuer.",
                },
            },
        },
    })
}

/// The names of the path's variables in the document: each field's own name (`id` for
/// `{client.id}`), unless two variables would share it. OpenAPI takes paths that differ only in
/// a variable's name for the same path, so Update's `{client.id}` and Get's `{id}` are one path.
fn parameter_names(route: &HttpRoute) -> Vec<String> {
    let leaf = |path: &FieldPath| path.0.last().map(|f| f.name().to_owned()).unwrap_or_default();
    route
        .variables
        .iter()
        .map(|variable| {
            let shared = route.variables.iter().filter(|other| leaf(other) == leaf(variable)).count() > 1;
            if shared { variable.proto_name() } else { leaf(variable) }
        })
        .collect()
}

/// The route's template with its variables named as [`parameter_names`] names them.
fn openapi_path(route: &HttpRoute) -> String {
    let mut names = parameter_names(route).into_iter();
    route
        .template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                format!("{{{}}}", names.next().unwrap_or_default())
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn operation(route: &HttpRoute, schemas: &mut Schemas) -> Value {
    let method = &route.method;
    let service = method.parent_service();
    let mut parameters = Vec::new();
    for (variable, name) in route.variables.iter().zip(parameter_names(route)) {
        let field = variable.0.last();
        parameters.push(json!({
            "name": name,
            "in": "path",
            "required": true,
            "description": field.and_then(field_comment).unwrap_or_default(),
            "schema": field.map_or_else(|| json!({ "type": "string" }), |f| schemas.field(f)),
        }));
    }
    for query in route.query_fields() {
        let Some(field) = query.0.last() else { continue };
        let mut schema = schemas.field(field);
        if field.is_list() {
            parameters.push(json!({
                "name": query.json_name(), "in": "query", "style": "form", "explode": true,
                "description": field_comment(field).unwrap_or_default(), "schema": schema,
            }));
        } else {
            if let Value::Object(map) = &mut schema {
                map.remove("description");
            }
            parameters.push(json!({
                "name": query.json_name(), "in": "query",
                "description": field_comment(field).unwrap_or_default(), "schema": schema,
            }));
        }
    }
    let mut operation = json!({
        "operationId": method.full_name(),
        "tags": [service.full_name()],
        "summary": method.name(),
        "description": comment(method.parent_file().file_descriptor_proto(), method.path()).unwrap_or_default(),
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "The method's response.",
                "content": { "application/json": { "schema": schemas.reference(&method.output()) } },
            },
            "default": {
                "description": "An error: the google.rpc.Status of the gRPC call, under the HTTP status of its code.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } },
            },
        },
    });
    let body = match &route.body {
        RouteBody::None => None,
        RouteBody::Whole => Some(method.input()),
        RouteBody::Field(field) => match field.kind() {
            Kind::Message(message) => Some(message),
            _ => None,
        },
    };
    if let (Some(body), Value::Object(map)) = (body, &mut operation) {
        map.insert(
            "requestBody".to_owned(),
            json!({ "required": false, "content": { "application/json": { "schema": schemas.reference(&body) } } }),
        );
    }
    if !PUBLIC_SERVICES.contains(&service.full_name())
        && let Value::Object(map) = &mut operation
    {
        map.insert("security".to_owned(), json!([{ "bearerAuth": [] }]));
    }
    operation
}

/// The component schemas referred to so far, written out when the document is finished.
#[derive(Default)]
struct Schemas {
    wanted: BTreeSet<String>,
    messages: Vec<MessageDescriptor>,
}

impl Schemas {
    /// A `$ref` to `message`'s schema (or the inline schema of a well-known type).
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        if self.wanted.insert(message.full_name().to_owned()) {
            self.messages.push(message.clone());
        }
        json!({ "$ref": format!("#/components/schemas/{}", message.full_name()) })
    }

    /// The schema of one field, repeated and map fields included.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field(),
                _ => return json!({ "type": "object" }),
            };
            json!({ "type": "object", "additionalProperties": self.single(&value.kind()) })
        } else if field.is_list() {
            json!({ "type": "array", "items": self.single(&field.kind()) })
        } else {
            self.single(&field.kind())
        };
        if let (Some(text), Value::Object(map)) = (field_comment(field), &mut schema)
            && !map.contains_key("$ref")
        {
            map.insert("description".to_owned(), Value::String(text));
        }
        schema
    }

    fn single(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
            // 64-bit integers are strings in the proto3 JSON mapping.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(e) => {
                json!({ "type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>() })
            }
            Kind::Message(message) => self.reference(message),
        }
    }

    /// Every schema referred to, and every one those refer to.
    fn finish(mut self) -> Map<String, Value> {
        let mut written = Map::new();
        while let Some(message) = self.messages.pop() {
            let mut properties = Map::new();
            for field in message.fields() {
                properties.insert(field.json_name().to_owned(), self.field(&field));
            }
            // No `additionalProperties: false`: the proto names (`display_name`) are taken too.
            let mut schema = json!({ "type": "object", "properties": properties });
            if let (Some(text), Value::Object(map)) =
                (comment(message.parent_file().file_descriptor_proto(), message.path()), &mut schema)
            {
                map.insert("description".to_owned(), Value::String(text));
            }
            written.insert(message.full_name().to_owned(), schema);
        }
        written.insert(
            "google.protobuf.Any".to_owned(),
            json!({
                "type": "object",
                "description": "A message of the type @type names, its fields beside @type.",
                "properties": { "@type": { "type": "string" } },
                "required": ["@type"],
                "additionalProperties": true,
            }),
        );
        written
    }
}

/// The JSON forms the proto3 mapping gives the well-known types.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => {
            json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$", "example": "3600s" })
        }
        "google.protobuf.FieldMask" => json!({ "type": "string", "example": "displayName,scopedRoles" }),
        "google.protobuf.Any" => json!({ "$ref": "#/components/schemas/google.protobuf.Any" }),
        "google.protobuf.Empty" => json!({ "type": "object", "additionalProperties": false }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({ "type": "string" }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({ "type": "integer" }),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({ "type": "string" }),
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({ "type": "number" }),
        _ => return None,
    })
}

fn field_comment(field: &FieldDescriptor) -> Option<String> {
    comment(field.parent_file().file_descriptor_proto(), field.path())
}

/// The comment before the element at `path` of `file`, from its source info.
fn comment(file: &prost_types::FileDescriptorProto, path: &[i32]) -> Option<String> {
    let location = file.source_code_info.as_ref()?.location.iter().find(|location| location.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    (!lines.is_empty()).then(|| lines.join(" "))
}
