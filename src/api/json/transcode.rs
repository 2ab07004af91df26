//! JSON to protobuf and back for the JSON routes, by the proto3 JSON mapping: a request message
//! from the body, the path's variables and the query parameters, each mistake named by its
//! field; and an answer message as JSON.

use std::collections::BTreeMap;

use axum::{
    body::{Body, to_bytes},
    extract::{RawPathParams, rejection::RawPathParamsRejection},
    http::{HeaderMap, HeaderValue, header},
};
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};

use super::routes::{FieldPath, HttpRoute, RouteBody};
use crate::{
    domain::{FieldViolation, cut_quoted, echo, quote},
    error::Error,
};

/// The method's request from the JSON body, the path's variables and the query parameters.
pub async fn request_message(
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
        let said = err.to_string();
        // Input the error repeats is cut, as every answer cuts it.
        let mut description = cut_quoted(&said);
        // The path ends at the object that holds the unknown name: name the field itself, and
        // what that object may hold.
        let unknown = said
            .strip_prefix("unrecognized field name '")
            .and_then(|rest| rest.rsplit_once('\''))
            .map(|(name, _)| name);
        let field = match (unknown, &path) {
            (Some(name), _) => {
                description = match message_at(&message, path.as_deref()) {
                    Some(holder) => format!(
                        "is not a field of {}, which has {} (or their proto names)",
                        holder.full_name(),
                        holder.fields().map(|f| f.json_name().to_owned()).collect::<Vec<_>>().join(", ")
                    ),
                    None => "is not a field of the message here".to_owned(),
                };
                path.map_or(echo(name), |path| format!("{}.{}", echo(&path), echo(name)))
            }
            (None, Some(path)) => {
                if let Some(form) = field_at(&message, path).and_then(|field| json_form(&field)) {
                    description = format!("{description}; {form}");
                }
                echo(path)
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
            return Err(Error::invalid(&echo(&name), "is not valid UTF-8 once percent-decoded"));
        }
        let path =
            allowed.iter().find(|path| path.json_name() == name || path.proto_name() == name).ok_or_else(|| {
                let names: Vec<String> = allowed.iter().map(FieldPath::json_name).collect();
                Error::invalid(
                    &echo(&name),
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
            return Err(Error::invalid(&echo(&name), "is given more than once"));
        }
        values.push((echo(&name), path.clone(), scalar_json(path, &value)));
    }
    let input = route.method.input();
    let mut tree = serde_json::Map::new();
    for (name, path, value) in values {
        let mut one = serde_json::Map::new();
        insert_json(&mut one, &path.0, value.clone());
        if let Err(err) = DynamicMessage::deserialize(input.clone(), serde_json::Value::Object(one)) {
            let kind = path.last().map_or_else(String::new, |field| format!(" {:?}", field.kind()).to_lowercase());
            let given = value.as_str().map_or_else(|| value.to_string(), quote);
            return Err(Error::invalid(
                &name,
                format!("{given} is not a valid{kind}: {}", cut_quoted(&err.to_string())),
            ));
        }
        insert_json(&mut tree, &path.0, value);
    }
    DynamicMessage::deserialize(input, serde_json::Value::Object(tree))
        .map_err(|err| Error::invalid("query", cut_quoted(&err.to_string())))
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
