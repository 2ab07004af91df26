//! Reflection streams (gRPC server reflection, as grpcurl uses it): the one kind of request
//! whose messages go to the handler as they come rather than whole first.
//!
//! Each takes one of [`REFLECTION_STREAMS`] places of its own for as long as it is open, may send
//! at most `--max-request-bytes` in all, and ends at `--request-timeout` (checked as the handler
//! reads it: one whose caller grants no flow-control window for the answers is not read, and
//! keeps its place until its connection closes).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tonic::Status;

use crate::error::Error;

/// Methods whose request is a stream the caller keeps open while it reads the answers (gRPC
/// reflection, as grpcurl uses it): their bodies go to the handler as they come instead of being
/// received whole first, bounded by [`StreamedBody`].
const STREAMED_REQUESTS: [&str; 2] =
    ["/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Reflection streams open at once. They have places of their own, so callers without a
/// credential holding them all keep reflection, not the API, from others.
pub const REFLECTION_STREAMS: usize = 32;

/// Whether a request of `path` is a stream whose body goes to the handler as it comes.
pub fn is_streamed(path: &str) -> bool {
    STREAMED_REQUESTS.iter().any(|prefix| path.starts_with(prefix))
}

/// The request of a reflection stream as the handler reads it: at most `--max-request-bytes` in
/// all, until the deadline. Past either the stream ends, and [`StreamAnswer`] ends the answer
/// with the status saying why.
pub(super) struct StreamedBody<B> {
    inner: Pin<Box<B>>,
    left: usize,
    max_bytes: usize,
    timeout: std::time::Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ended: Arc<std::sync::OnceLock<Status>>,
}

impl<B> StreamedBody<B> {
    pub(super) fn new(
        inner: B,
        max_bytes: usize,
        timeout: std::time::Duration,
        deadline: Instant,
        ended: Arc<std::sync::OnceLock<Status>>,
    ) -> Self {
        let deadline = Box::pin(tokio::time::sleep_until(deadline));
        Self { inner: Box::pin(inner), left: max_bytes, max_bytes, timeout, deadline, ended }
    }

    fn end(&self, status: Status) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let _ = self.ended.set(status.clone());
        Poll::Ready(Some(Err(status)))
    }
}

impl<B> http_body::Body for StreamedBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return self.end(Status::from(Error::TimedOut(self.timeout)));
        }
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > self.left {
                    return self.end(Status::from(Error::TooLarge(self.max_bytes)));
                }
                self.left -= size;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => self.end(Status::cancelled("the request stream could not be read")),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The answer of a reflection stream, holding its place until it ends, and ending with the
/// status of the limit its request ran into, if it did.
pub(super) struct StreamAnswer {
    pub(super) body: tonic::body::Body,
    pub(super) ended: Arc<std::sync::OnceLock<Status>>,
    pub(super) _place: OwnedSemaphorePermit,
}

impl http_body::Body for StreamAnswer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        Poll::Ready(match (frame, self.ended.get()) {
            (Some(Ok(frame)), Some(status)) if frame.is_trailers() => {
                let mut trailers = http::HeaderMap::new();
                let _ = status.add_header(&mut trailers);
                Some(Ok(http_body::Frame::trailers(trailers)))
            }
            (frame, _) => frame,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
