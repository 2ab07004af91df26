//! The connections the service holds, and how they end.
//!
//! - At most `--max-connections` are open. The accept loop takes one connection at a time and
//!   gives it a slot before it takes the next, so a flood waits in the kernel's backlog instead
//!   of exhausting file descriptors. When every slot is taken, the connection whose peer has been
//!   silent longest, among those with no request in flight, is closed to make room, so a flood of
//!   idle sockets cannot lock callers out.
//! - A connection whose peer sends nothing for `--idle-timeout` while it has no request in flight
//!   is closed: silent sockets, idle keep-alive connections, unfinished TLS handshakes. A live
//!   HTTP/2 client is never idle: it answers the server's keep-alive pings. (A request that
//!   stalls is ended by `--request-timeout`; see [`super::admission`].)

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{codegen::tokio_stream::wrappers::ReceiverStream, transport::server::Connected};

/// How long the accept loop waits for a connection it closed to let go of its slot before it
/// closes the next one (a connection busy writing a response notices a moment later).
const EVICTION_PATIENCE: Duration = Duration::from_millis(100);

/// How long an `accept` that failed for want of file descriptors or memory waits before the
/// next try, so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A failed `accept` is logged at most this often.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Limits on the connections the service holds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// The open connections: their slots and when each peer last sent a byte.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    /// By peer address, unique among open connections.
    open: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
    epoch: Instant,
}

#[derive(Debug)]
struct Activity {
    /// Milliseconds from `Connections::epoch` to the last byte read from the peer.
    last_read: AtomicU64,
    /// Requests of this connection being received or served: while there are any, the
    /// connection is neither idle nor closed to make room.
    in_flight: AtomicUsize,
    close: CancellationToken,
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            open: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        })
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.slots.available_permits()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A free slot for a connection just accepted, closing the connection silent longest while
    /// there is none.
    async fn slot(self: &Arc<Self>) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                return permit;
            }
            self.close_most_silent();
            if let Ok(Ok(permit)) =
                tokio::time::timeout(EVICTION_PATIENCE, Arc::clone(&self.slots).acquire_owned()).await
            {
                return permit;
            }
        }
    }

    fn close_most_silent(&self) {
        let open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let most_silent = open
            .values()
            .filter(|activity| !activity.close.is_cancelled() && activity.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|activity| activity.last_read.load(Ordering::Relaxed));
        if let Some(activity) = most_silent {
            tracing::debug!("all connection slots are taken: closing the connection silent longest");
            activity.close.cancel();
        }
    }

    fn register(self: &Arc<Self>, peer: SocketAddr, permit: OwnedSemaphorePermit) -> Registration {
        let activity = Arc::new(Activity {
            last_read: AtomicU64::new(self.now()),
            in_flight: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(peer, Arc::clone(&activity));
        Registration { connections: Arc::clone(self), peer, activity, _permit: permit }
    }

    /// Marks a request of the connection from `peer` as in flight until the guard is dropped.
    pub fn request_started(&self, peer: SocketAddr) -> Option<InFlight> {
        let open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let activity = Arc::clone(open.get(&peer)?);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(activity))
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's place among the open ones; dropping it frees the slot.
#[derive(Debug)]
struct Registration {
    connections: Arc<Connections>,
    peer: SocketAddr,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.peer);
    }
}

/// A connection the service holds: it fails with `TimedOut` once its peer has been silent for
/// the idle timeout, and with `ConnectionAborted` once it is closed to make room.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    idle: Pin<Box<Sleep>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    registration: Registration,
}

impl<S> Tracked<S> {
    fn new(inner: S, registration: Registration) -> Self {
        let idle_timeout = registration.connections.limits.idle_timeout;
        Self {
            inner,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            closed: Box::pin(registration.activity.close.clone().cancelled_owned()),
            registration,
        }
    }

    /// The error that ends this connection, if it should end now; otherwise registers for the
    /// moment it should.
    fn ending(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for another connection",
            ));
        }
        while self.idle.as_mut().poll(cx).is_ready() {
            // A connection waiting for its own answers is not idle, whatever its peer sends.
            if self.registration.activity.in_flight.load(Ordering::Relaxed) == 0 {
                return Some(io::Error::new(io::ErrorKind::TimedOut, "the peer sent nothing for the idle timeout"));
            }
            let idle_timeout = self.registration.connections.limits.idle_timeout;
            self.idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
        }
        None
    }

    fn pending_or_ending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        self.ending(cx).map_or(Poll::Pending, |error| Poll::Ready(Err(error)))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let connections = &this.registration.connections;
                this.registration.activity.last_read.store(connections.now(), Ordering::Relaxed);
                this.idle.as_mut().reset(tokio::time::Instant::now() + connections.limits.idle_timeout);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.pending_or_ending(cx),
            done => done,
        }
    }
}

// A peer that neither reads nor writes cannot hold a write open for ever either.
impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.pending_or_ending(cx),
            done => done,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.pending_or_ending(cx),
            done => done,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending_or_ending(cx),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Tracked<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepted connections, each through `handshake` (nothing for plaintext, TLS otherwise) on its
/// own task, so a slow client holds up no one else. The loop stops, and the port is released,
/// once the server stops taking connections.
pub fn incoming<T, H, F>(
    listener: TcpListener,
    connections: Arc<Connections>,
    handshake: H,
) -> ReceiverStream<io::Result<T>>
where
    T: Send + 'static,
    H: Fn(Tracked<TcpStream>) -> F + Send + 'static,
    F: Future<Output = io::Result<T>> + Send + 'static,
{
    let (ready, streams) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                // A connection that went away before it was accepted is no reason to pause.
                Err(error) if !is_out_of_resources(&error) => continue,
                Err(error) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                        tracing::warn!(%error, open = connections.open(), "cannot accept connections");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            // Only a connection that has arrived may push out another.
            let permit = tokio::select! {
                permit = connections.slot() => permit,
                () = ready.closed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let stream = Tracked::new(tcp, connections.register(peer, permit));
            let (shaking, ready) = (handshake(stream), ready.clone());
            tokio::spawn(async move {
                match shaking.await {
                    Ok(stream) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Err(error) => tracing::debug!(%peer, %error, "connection dropped before it was served"),
                }
            });
        }
    });
    ReceiverStream::new(streams)
}

/// Out of file descriptors or memory: the errors `accept` keeps failing with until something
/// is freed (EMFILE, ENFILE, ENOBUFS, ENOMEM).
fn is_out_of_resources(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}
