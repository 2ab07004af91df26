//! Admission: what a request must do before a handler spends anything on it, and the answer,
//! in its own protocol, of one refused.
//!
//! 1. Its body arrives whole within `--request-timeout`, no larger than `--max-request-bytes`,
//!    into a memory budget shared by every request (`--max-concurrent-requests` times
//!    `--max-request-bytes`). A sender that trickles holds only the bytes it has sent, and while
//!    the budget is spent the server stops reading bodies, so HTTP/2 flow control holds senders
//!    back instead of memory growing.
//! 2. Then it takes one of `--max-concurrent-requests` places, or is refused at once.
//! 3. It is answered within what is left of `--request-timeout`.
//!
//! A reflection stream, whose messages go to the handler as they come, is held to limits of its
//! own instead ([`reflection`]).
//!
//! Health checks skip the queue: an orchestrator that cannot reach one restarts a server that is
//! merely busy.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::{
    connections::Connections,
    reflection::{self, REFLECTION_STREAMS, StreamAnswer, StreamedBody},
};
use crate::{
    error::{Error, answers},
    protocol::{Protocol, peer},
};

const ALWAYS_ANSWERED: [&str; 2] = ["/grpc.health.v1.Health/", "/healthz"];

/// How much work the server takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_concurrent_requests: usize,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
}

/// Receives bodies, admits requests and bounds their time; see the module documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    limits: AdmissionLimits,
    places: Arc<Semaphore>,
    body_budget: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    connections: Arc<Connections>,
}

impl AdmissionLayer {
    pub fn new(limits: AdmissionLimits, connections: Arc<Connections>) -> Self {
        let budget = limits.max_concurrent_requests.saturating_mul(limits.max_request_bytes);
        Self {
            limits,
            places: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            body_budget: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))),
            streams: Arc::new(Semaphore::new(REFLECTION_STREAMS)),
            connections,
        }
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

type Answer = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = Answer> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = Answer;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was made ready goes with this request; the new one waits for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            let limits = layer.limits;
            let deadline = Instant::now() + limits.request_timeout;
            let protocol = Protocol::of(request.headers(), request.uri().path());
            let refuse = |err: Error| Ok(answers::refusal(protocol, err));
            let exempt = ALWAYS_ANSWERED.iter().any(|path| request.uri().path().starts_with(path));
            let _in_flight = peer(request.extensions()).and_then(|peer| layer.connections.request_started(peer));
            let streamed = reflection::is_streamed(request.uri().path());
            let (parts, body) = request.into_parts();
            let mut stream = None;
            let (body, _body_memory) = if streamed {
                let Ok(place) = Arc::clone(&layer.streams).try_acquire_owned() else {
                    return refuse(Error::Overloaded {
                        message: format!(
                            "the server has {REFLECTION_STREAMS} reflection streams open, the most it keeps; retry shortly"
                        ),
                        retry_after: Duration::from_secs(1),
                    });
                };
                let ended = Arc::new(std::sync::OnceLock::new());
                stream = Some((place, Arc::clone(&ended)));
                (
                    tonic::body::Body::new(StreamedBody::new(
                        body,
                        limits.max_request_bytes,
                        limits.request_timeout,
                        deadline,
                        ended,
                    )),
                    None,
                )
            } else {
                let received =
                    tokio::time::timeout_at(deadline, receive(body, &layer.body_budget, limits.max_request_bytes));
                match received.await {
                    Err(_) => return refuse(Error::SlowRequest(limits.request_timeout)),
                    Ok(Err(err)) => return refuse(err),
                    Ok(Ok((body, memory))) => (tonic::body::Body::new(Full::new(body)), memory),
                }
            };
            let _place = if exempt {
                None
            } else if let Ok(place) = Arc::clone(&layer.places).try_acquire_owned() {
                Some(place)
            } else {
                return refuse(Error::Overloaded {
                    message: format!(
                        "the server has {} requests in flight, the most it takes; retry shortly",
                        limits.max_concurrent_requests
                    ),
                    retry_after: Duration::from_secs(1),
                });
            };
            let request = http::Request::from_parts(parts, body);
            match tokio::time::timeout_at(deadline, inner.call(request)).await {
                Ok(Ok(answer)) => Ok(match stream {
                    Some((place, ended)) => {
                        answer.map(|body| tonic::body::Body::new(StreamAnswer { body, ended, _place: place }))
                    }
                    None => answer,
                }),
                Ok(Err(err)) => Err(err),
                Err(_) => refuse(Error::TimedOut(limits.request_timeout)),
            }
        })
    }
}

/// The whole body, at most `max` bytes, each byte counted against `budget` until the request
/// is done (the permit returned).
async fn receive<B>(
    body: B,
    budget: &Arc<Semaphore>,
    max: usize,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Error>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut received = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Error::invalid("request", "the body could not be read to its end"));
        };
        let Ok(data) = frame.into_data() else { continue };
        if received.len() + data.len() > max {
            return Err(Error::TooLarge(max));
        }
        let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge(max))?;
        let permit = Arc::clone(budget)
            .acquire_many_owned(size)
            .await
            .map_err(|_| Error::internal("the request memory budget is closed"))?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        received.extend_from_slice(&data);
    }
    Ok((received.freeze(), held))
}
