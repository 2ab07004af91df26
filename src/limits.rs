//! Bounds on the work callers can put in: a gRPC request larger than `--max-request-bytes`
//! ends in `RESOURCE_EXHAUSTED` as soon as the excess arrives, before it is buffered or
//! decoded; past `--max-concurrent-requests` in flight, a request is refused at once.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::{Error, api::http::oauth_error, error::OAuthError, metrics::is_grpc};

/// Paths that answer whatever the load: an orchestrator that cannot reach a health check
/// restarts a server that is merely busy.
const ALWAYS_ANSWERED: [&str; 2] = ["/grpc.health.v1.Health/", "/healthz"];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps every request body in a [`LimitedBody`].
#[derive(Debug, Clone, Copy)]
pub struct RequestSizeLimitLayer {
    limit: usize,
}

impl RequestSizeLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for RequestSizeLimitLayer {
    type Service = RequestSizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSizeLimit { inner, limit: self.limit }
    }
}

#[derive(Debug, Clone)]
pub struct RequestSizeLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for RequestSizeLimit<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let limit = self.limit;
        self.inner
            .call(request.map(|body| tonic::body::Body::new(LimitedBody { inner: body, remaining: limit, limit })))
    }
}

pin_project! {
    /// A body that fails with `RESOURCE_EXHAUSTED` once more than `limit` bytes have come.
    #[derive(Debug)]
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: usize,
        limit: usize,
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > *this.remaining {
                    let status = Status::resource_exhausted(format!(
                        "the request is larger than {} bytes, the most this service accepts",
                        this.limit
                    ));
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                *this.remaining -= size;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Refuses requests beyond `limit` in flight, health checks excepted, and ends any request not
/// answered within `timeout`, however slowly its body arrives.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    timeout: Duration,
}

impl AdmissionLayer {
    pub fn new(limit: usize, timeout: Duration) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit)), limit, timeout }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let grpc = is_grpc(request.headers());
        let refuse = move |err: Error| {
            if grpc {
                Status::from(err).into_http()
            } else {
                oauth_error(OAuthError::from(err)).map(tonic::body::Body::new)
            }
        };
        let path = request.uri().path();
        let permit = if ALWAYS_ANSWERED.iter().any(|exempt| path.starts_with(exempt)) {
            None
        } else if let Ok(permit) = Arc::clone(&self.layer.permits).try_acquire_owned() {
            Some(permit)
        } else {
            let refusal = Error::Overloaded {
                message: format!(
                    "the server has {} requests in flight, the most it takes; retry shortly",
                    self.layer.limit
                ),
                retry_after: Duration::from_secs(1),
            };
            return Box::pin(std::future::ready(Ok(refuse(refusal))));
        };
        let timeout = self.layer.timeout;
        let response = tokio::time::timeout(timeout, self.inner.call(request));
        Box::pin(async move {
            let response = response.await.unwrap_or_else(|_| Ok(refuse(Error::TimedOut(timeout))));
            drop(permit);
            response
        })
    }
}
