//! What the transport says of a request, asked by the edge and by the surfaces alike: which
//! protocol it speaks (gRPC, the JSON API or plain HTTP), and the address it came from. It
//! imports nothing of the service.

use std::net::SocketAddr;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// How a request is to be answered, errors included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/grpc`, `application/grpc+proto`, ...: a gRPC status in the trailers.
    Grpc,
    /// Under `/api/`, where the JSON routes live: a `google.rpc.Status` in JSON. A request there
    /// that no route takes is still answered, and counted, as a JSON call.
    Json,
    /// Anything else (the token endpoint, introspection, health): OAuth-style JSON errors.
    Http,
}

impl Protocol {
    /// The protocol of a request with these `headers` on `path`.
    pub fn of(headers: &http::HeaderMap, path: &str) -> Self {
        if is_grpc(headers) {
            Self::Grpc
        } else if path == "/api" || path.starts_with("/api/") {
            Self::Json
        } else {
            Self::Http
        }
    }
}

/// Whether a request is gRPC rather than plain HTTP, by its content type.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The address of the peer a request came from, over TCP or TLS.
pub fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref))
        .and_then(TcpConnectInfo::remote_addr)
}
