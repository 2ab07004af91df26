//! Admission: what a request must do before a handler spends anything on it, and the answer,
//! in its own protocol, of one refused.
//!
//! 1. Its decoded headers and its state take their room in the memory budget
//!    ([`super::budget`]), within a share for all the requests of its connection (what
//!    `--max-concurrent-streams` requests with ordinary headers hold), or it is refused: a peer
//!    cannot make the server hold more than it can read.
//! 2. Its body arrives whole within `--request-timeout`, no larger than `--max-request-bytes`,
//!    counted against the budget as its buffer grows. A sender that trickles holds only the
//!    bytes it has sent, and while the bodies' share of the budget is spent the server stops
//!    reading bodies, so HTTP/2 flow control holds senders back instead of memory growing.
//! 3. Then it takes one of `--max-concurrent-requests` places, or is refused at once.
//! 4. It is answered within what is left of `--request-timeout`, and its answer is counted
//!    against the budget until the peer has read it.
//!
//! A reflection stream, whose messages go to the handler as they come, is held to limits of its
//! own instead ([`reflection`]).
//!
//! Health checks skip all of it, with places of their own (as many as `--max-concurrent-requests`):
//! an orchestrator that cannot reach one restarts a server that is merely busy, or under attack.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tokio::{sync::Semaphore, time::Instant};

use super::{
    budget::{Account, Charge, Held, MemoryBudget},
    connections::{Connections, Counted},
    reflection::{self, REFLECTION_STREAMS, StreamAnswer, StreamedBody},
};
use crate::{
    error::{Error, answers},
    protocol::{Protocol, peer},
};

/// Whether a request is a health check: `GET /healthz`, or a method of gRPC health.
fn is_health_check(path: &str) -> bool {
    path == "/healthz" || path.starts_with("/grpc.health.v1.Health/")
}

/// Whether a request asks for forward authorization, which decides by the `Authorization` header
/// alone: a body a proxy sends along is never read, so neither its size nor its pace (or its
/// absence, when a proxy announces one and sends none) matters.
fn is_forward_auth(path: &str) -> bool {
    path == "/auth/v1/check" || path.starts_with("/auth/v1/check/")
}

/// The largest health check request read, outside the budget.
const HEALTH_CHECK_BYTES: usize = 4 * 1024;

/// What a request's headers hold in memory, ordinarily, beyond the state of the request: a
/// connection's requests may hold this, and [`REQUEST_BYTES`], each, for as many as
/// `--max-concurrent-streams` at once.
const ORDINARY_HEAD_BYTES: usize = 8 * 1024;

/// What a request holds while it is received and served (its stream, its task, its parts),
/// beyond its headers and body: measured at about 8 KiB.
const REQUEST_BYTES: usize = 8 * 1024;

/// What a decoded header holds in memory beyond its name and value: HTTP/2 counts 32 bytes
/// (RFC 9113, 6.5.2); a header map's entry, with its share of the map's table, takes about 200.
const HEADER_OVERHEAD: usize = 192;

/// A request whose headers find the budget full tries again this often, this many times (for
/// about a second), while the connections holding the most are closed.
const ROOM_WAIT: Duration = Duration::from_millis(50);
const ROOM_TRIES: usize = 20;

/// How much work the server takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_concurrent_requests: usize,
    pub max_concurrent_streams: usize,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
}

/// Receives bodies, admits requests and bounds their time; see the module documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    limits: AdmissionLimits,
    /// What the unfinished requests of one connection may hold.
    connection_share: usize,
    places: Arc<Semaphore>,
    health_places: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    connections: Arc<Connections>,
}

impl AdmissionLayer {
    pub fn new(limits: AdmissionLimits, connections: Arc<Connections>) -> Self {
        Self {
            limits,
            connection_share: limits.max_concurrent_streams.saturating_mul(REQUEST_BYTES + ORDINARY_HEAD_BYTES),
            places: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            health_places: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
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
            if is_health_check(request.uri().path()) {
                let Ok(place) = Arc::clone(&layer.health_places).try_acquire_owned() else {
                    return refuse(busy(format!(
                        "the server has {} health checks open, the most it keeps",
                        limits.max_concurrent_requests
                    )));
                };
                let (parts, body) = request.into_parts();
                let body = match tokio::time::timeout_at(deadline, receive(body, None, HEALTH_CHECK_BYTES)).await {
                    Err(_) => return refuse(Error::SlowRequest(limits.request_timeout)),
                    Ok(Err(err)) => return refuse(err),
                    Ok(Ok((body, _))) => body,
                };
                let request = http::Request::from_parts(parts, tonic::body::Body::new(Full::new(body)));
                // The place is held until the answer ends: gRPC health's Watch is a stream.
                let hold = move |frame| {
                    let _held = &place;
                    frame
                };
                return match tokio::time::timeout_at(deadline, inner.call(request)).await {
                    Ok(Ok(answer)) => Ok(answer.map(|body| tonic::body::Body::new(body.map_frame(hold)))),
                    Ok(Err(err)) => Err(err),
                    Err(_) => refuse(Error::TimedOut(limits.request_timeout)),
                };
            }
            let in_flight = peer(request.extensions()).and_then(|peer| layer.connections.request_started(peer));
            let account = in_flight.as_ref().map(|in_flight| Arc::clone(in_flight.account()));
            let budget = Arc::clone(layer.connections.budget());
            let share = layer.connection_share;
            let _headers = match take_headers(&budget, head_bytes(&request), account.as_ref(), share).await {
                Ok(charge) => charge,
                Err(err) => return refuse(err),
            };
            let streamed = reflection::is_streamed(request.uri().path());
            let unread = is_forward_auth(request.uri().path());
            let (parts, body) = request.into_parts();
            let mut stream = None;
            let (body, _body_memory) = if unread {
                drop(body);
                (tonic::body::Body::empty(), None)
            } else if streamed {
                let Ok(place) = Arc::clone(&layer.streams).try_acquire_owned() else {
                    return refuse(busy(format!(
                        "the server has {REFLECTION_STREAMS} reflection streams open, the most it keeps"
                    )));
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
                let budgeted = Some((&budget, account.as_ref()));
                let received = tokio::time::timeout_at(deadline, receive(body, budgeted, limits.max_request_bytes));
                match received.await {
                    Err(_) => return refuse(Error::SlowRequest(limits.request_timeout)),
                    Ok(Err(err)) => return refuse(err),
                    Ok(Ok((body, memory))) => (tonic::body::Body::new(Full::new(body)), memory),
                }
            };
            let Ok(_place) = Arc::clone(&layer.places).try_acquire_owned() else {
                return refuse(busy(format!(
                    "the server has {} requests in flight, the most it takes",
                    limits.max_concurrent_requests
                )));
            };
            let request = http::Request::from_parts(parts, body);
            match tokio::time::timeout_at(deadline, inner.call(request)).await {
                Ok(Ok(answer)) => {
                    let answer = match stream {
                        Some((place, ended)) => {
                            answer.map(|body| tonic::body::Body::new(StreamAnswer { body, ended, _place: place }))
                        }
                        None => answer,
                    };
                    Ok(match account {
                        Some(account) => answer.map(|body| tonic::body::Body::new(Counted::new(body, account, budget))),
                        None => answer,
                    })
                }
                Ok(Err(err)) => Err(err),
                Err(_) => refuse(Error::TimedOut(limits.request_timeout)),
            }
        })
    }
}

/// What a request holds in memory before its body: its decoded head and its state.
fn head_bytes<B>(request: &http::Request<B>) -> usize {
    let uri = request.uri();
    REQUEST_BYTES
        + uri.path_and_query().map_or(0, |path| path.as_str().len())
        + uri.authority().map_or(0, |authority| authority.as_str().len())
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
            .sum::<usize>()
}

/// Room for `bytes` of a request's decoded headers: in the budget, and within the connection's
/// `share`.
async fn take_headers(
    budget: &Arc<MemoryBudget>,
    bytes: usize,
    account: Option<&Arc<Account>>,
    share: usize,
) -> Result<Charge, Error> {
    if account.is_some_and(|account| account.headers() + bytes > share) {
        return Err(Error::Overloaded {
            message: format!(
                "this connection's unfinished requests hold {} KiB with their headers, the most one connection may; finish some first",
                share / 1024
            ),
            retry_after: Duration::from_secs(1),
        });
    }
    // A full budget sheds the connections holding the most at once: give that a moment.
    for _ in 0..ROOM_TRIES {
        if let Some(charge) = budget.try_take(Held::Headers, bytes, account) {
            return Ok(charge);
        }
        tokio::time::sleep(ROOM_WAIT).await;
    }
    Err(busy("the server's memory budget is full".to_owned()))
}

/// The refusal of a request the server has no room for now: `message` says what is full.
fn busy(message: String) -> Error {
    Error::Overloaded { message: format!("{message}; retry shortly"), retry_after: Duration::from_secs(1) }
}

/// The whole body, at most `max` bytes, each byte counted against `budget` (and the
/// connection's account) until the request is done (the charge returned).
async fn receive<B>(
    body: B,
    budget: Option<(&Arc<MemoryBudget>, Option<&Arc<Account>>)>,
    max: usize,
) -> Result<(Bytes, Option<Charge>), Error>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut received = BytesMut::new();
    let mut held: Option<Charge> = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Error::invalid("request", "the body could not be read to its end"));
        };
        let Ok(data) = frame.into_data() else { continue };
        if received.len() + data.len() > max {
            return Err(Error::TooLarge(max));
        }
        // Counted as the buffer grows, before it grows, since that is what it holds: it
        // doubles, up to `max`.
        let (before, needed) = (received.capacity(), received.len() + data.len());
        if needed > before {
            let wanted = (before * 2).clamp(needed, max.max(needed));
            let growth = wanted.max(before * 2) - before;
            let mut charge = match budget {
                Some((budget, account)) => Some(budget.take_body(growth, account).await),
                None => None,
            };
            received.reserve(wanted - received.len());
            if let (Some((budget, account)), Some(charge)) = (budget, &mut charge) {
                let beyond = (received.capacity() - before).saturating_sub(growth);
                charge.absorb(budget.take_anyway(Held::Bodies, beyond, account));
            }
            match (&mut held, charge) {
                (Some(held), Some(charge)) => held.absorb(charge),
                (held, charge) => *held = held.take().or(charge),
            }
        }
        received.extend_from_slice(&data);
    }
    Ok((received.freeze(), held))
}
