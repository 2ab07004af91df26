//! A bound on request bodies: a gRPC request larger than `--max-request-bytes` ends in
//! `RESOURCE_EXHAUSTED` as soon as the excess arrives, before it is buffered or decoded.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;

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
