//! The in-process gRPC call behind a JSON route: the request framed as a gRPC client frames
//! it, through the same router (and so the same authentication gate and handler) as calls from
//! the network, and the answer or its status read back.

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Method, header},
};
use bytes::{BufMut, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::DynamicMessage;
use tonic::{Code, Status};
use tower::ServiceExt;

use super::routes::HttpRoute;
use crate::error::Error;

/// Request headers a JSON call passes on to the gRPC call as metadata: the caller's credential
/// and the proxies it came through.
const FORWARDED_HEADERS: [header::HeaderName; 2] =
    [header::AUTHORIZATION, header::HeaderName::from_static("x-forwarded-for")];

/// The gRPC call of `route`'s method with `message`, as a gRPC client would make it, served in
/// this process by `grpc`, the same router as calls from the network.
pub async fn call(
    grpc: &Router,
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

    let Ok(response) = grpc.clone().oneshot(request).await;
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
