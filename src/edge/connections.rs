//! The connections the service holds, and how they end.
//!
//! - At most `--max-connections` are open, and at most `--max-connections-per-address` from one
//!   address (an IPv6 /64 counts as one; addresses in `--trusted-proxies` are excepted, since a
//!   proxy speaks for many callers); a connection past its address's share is closed at once.
//!   Each open connection holds its place in the memory budget ([`super::budget`]). The accept
//!   loop takes one connection at a time and gives it a slot before it takes the next, so a flood
//!   waits in the kernel's backlog instead of exhausting file descriptors. When every slot is
//!   taken, one is closed to make room: first those that never read an answer, then those
//!   silent of late, then those with no request in flight; among equals, one of the address
//!   holding the most, silent longest.
//! - A connection whose peer sends nothing for `--idle-timeout` while it has no request in flight
//!   is closed: silent sockets, idle keep-alive connections, unfinished TLS handshakes. A live
//!   HTTP/2 client is never idle: it answers the server's keep-alive pings. (A request that
//!   stalls is ended by `--request-timeout`; see [`super::admission`].)
//! - A connection whose oldest unwritten answer bytes have waited for `--request-timeout` is
//!   closed, and with it the memory they held: a peer that grants no flow-control window cannot
//!   keep answers for ever.
//! - When the memory budget is full, the connections holding the most (at least 128 KiB) are
//!   closed, stalled ones (whose answers have not moved of late) first, until a tenth of it is
//!   free again.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use ipnet::IpNet;
use prometheus::IntGauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::budget::{Account, Charge, Held, MemoryBudget};

/// How long the accept loop waits for a connection it closed to let go of its slot before it
/// closes the next one (a connection busy writing a response notices a moment later).
const EVICTION_PATIENCE: Duration = Duration::from_millis(100);

/// How long an `accept` that failed for want of file descriptors or memory waits before the
/// next try, so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A failed `accept` is logged at most this often.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Closing connections to free memory is logged at most this often.
const SHED_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A connection that has sent nothing, or whose answers have not moved, for this long
/// (milliseconds) is stalled: among the first to close to make room or free memory.
const STALLED_AFTER: u64 = 1_000;

/// A connection holding less than this is never closed to free memory: it holds what a couple
/// of ordinary calls do, and closing it would free next to nothing.
const SHED_FLOOR: usize = 128 * 1024;

/// How often unread answers are looked for, when the budget has not called first.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Limits on the connections the service holds.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Addresses the per-address limit does not apply to.
    pub exempt: Vec<IpNet>,
    pub idle_timeout: Duration,
    /// How long answers may wait unread before their connection is closed.
    pub answer_timeout: Duration,
    /// What each open connection holds in the memory budget.
    pub connection_bytes: usize,
}

/// The open connections: their slots, when each peer last sent a byte, and what each holds.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    budget: Arc<MemoryBudget>,
    open: Mutex<Open>,
    gauge: IntGauge,
    last_shed_warning: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Open {
    /// By peer address, unique among open connections.
    by_peer: HashMap<SocketAddr, Arc<Activity>>,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Activity {
    peer: SocketAddr,
    /// [`Connections::now`] when the last byte was read from the peer (zero for none).
    last_read: AtomicU64,
    /// [`Connections::now`] when it was accepted.
    opened: u64,
    /// Requests of this connection being received or served: while there are any, the
    /// connection is not idle.
    in_flight: AtomicUsize,
    account: Arc<Account>,
    close: CancellationToken,
}

impl Connections {
    /// The connections, counted in `gauge` and `budget`.
    pub fn new(limits: ConnectionLimits, budget: Arc<MemoryBudget>, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            budget,
            open: Mutex::new(Open::default()),
            gauge,
            last_shed_warning: Mutex::new(None),
        })
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// How many connections are open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.slots.available_permits()
    }

    /// The budget's clock, in milliseconds, which every connection's times are read on.
    fn now(&self) -> u64 {
        self.budget.now()
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn exempt(&self, address: IpAddr) -> bool {
        self.limits.exempt.iter().any(|net| net.contains(&address))
    }

    /// The next connection to serve, once it has a slot and its place in the budget.
    pub async fn accept(self: &Arc<Self>, listener: &TcpListener) -> Tracked<TcpStream> {
        let mut last_warning: Option<Instant> = None;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // A connection that went away before it was accepted is no reason to pause.
                Err(error) if !is_out_of_resources(&error) => continue,
                Err(error) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                        tracing::warn!(%error, open = self.open(), "cannot accept connections");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let at_share =
                self.lock().per_address.get(&address_of(peer)).copied().unwrap_or(0) >= self.limits.max_per_address;
            if at_share && !self.exempt(peer.ip()) {
                // Closed at once: the address has its share; no log line, which it could flood.
                continue;
            }
            // Only a connection that has arrived may push out another.
            let (permit, charge) = self.room().await;
            let _ = tcp.set_nodelay(true);
            return Tracked::new(tcp, self.register(peer, permit, charge));
        }
    }

    /// A free slot and the budget for a connection just accepted, closing others while there
    /// are none.
    async fn room(self: &Arc<Self>) -> (OwnedSemaphorePermit, Charge) {
        let permit = loop {
            if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
                break permit;
            }
            self.make_room();
            if let Ok(Ok(permit)) =
                tokio::time::timeout(EVICTION_PATIENCE, Arc::clone(&self.slots).acquire_owned()).await
            {
                break permit;
            }
        };
        let bytes = self.limits.connection_bytes;
        let charge = loop {
            if let Some(charge) = self.budget.try_take(Held::Connections, bytes, None) {
                break charge;
            }
            self.make_room();
            if let Ok(charge) =
                tokio::time::timeout(EVICTION_PATIENCE, self.budget.take(Held::Connections, bytes, None)).await
            {
                break charge;
            }
        };
        (permit, charge)
    }

    /// Closes one connection to make room: first those that have not read an answer (held open
    /// for nothing, as a flood's are), then those silent of late, then those with no request
    /// in flight; among equals, one of the address holding the most connections, and of those the
    /// one silent longest, or the oldest.
    fn make_room(&self) {
        let open = self.lock();
        let recently = self.now().saturating_sub(STALLED_AFTER);
        let victim = open.by_peer.values().filter(|activity| !activity.close.is_cancelled()).min_by_key(|activity| {
            (
                activity.account.progressed() > 0,
                activity.last_read.load(Ordering::Relaxed) >= recently,
                activity.in_flight.load(Ordering::Relaxed) > 0,
                std::cmp::Reverse(open.per_address.get(&address_of(activity.peer)).copied().unwrap_or(0)),
                activity.last_read.load(Ordering::Relaxed),
                activity.opened,
            )
        });
        if let Some(activity) = victim {
            tracing::debug!(peer = %activity.peer, "all connection slots are taken: closing one to make room");
            activity.close.cancel();
        }
    }

    fn register(self: &Arc<Self>, peer: SocketAddr, permit: OwnedSemaphorePermit, charge: Charge) -> Registration {
        let activity = Arc::new(Activity {
            peer,
            // Nothing read yet: as silent as can be.
            last_read: AtomicU64::new(0),
            opened: self.now(),
            in_flight: AtomicUsize::new(0),
            account: Arc::new(Account::default()),
            close: CancellationToken::new(),
        });
        let mut open = self.lock();
        open.by_peer.insert(peer, Arc::clone(&activity));
        *open.per_address.entry(address_of(peer)).or_default() += 1;
        self.gauge.inc();
        Registration { connections: Arc::clone(self), activity, _permit: permit, _charge: charge }
    }

    /// Marks a request of the connection from `peer` as in flight until the guard is dropped.
    pub fn request_started(&self, peer: SocketAddr) -> Option<InFlight> {
        let activity = Arc::clone(self.lock().by_peer.get(&peer)?);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(activity))
    }

    /// Closes, until stopped, connections whose answers wait unread too long, and the
    /// connections holding the most while the budget is full.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                () = self.budget.filled() => {}
            }
            self.close_unread();
            self.shed();
        }
    }

    fn close_unread(&self) {
        let timeout = u64::try_from(self.limits.answer_timeout.as_millis()).unwrap_or(u64::MAX);
        for activity in self.lock().by_peer.values() {
            if activity.account.waiting(&self.budget) >= timeout && !activity.close.is_cancelled() {
                tracing::debug!(peer = %activity.peer, "answers unread for the request timeout: closing the connection");
                activity.close.cancel();
            }
        }
    }

    fn shed(&self) {
        let (limit, used) = (self.budget.limit(), self.budget.used());
        let open = self.lock();
        // What connections closed already but not yet gone will give back.
        let closing: usize = open
            .by_peer
            .values()
            .filter(|activity| activity.close.is_cancelled())
            .map(|activity| activity.account.held())
            .sum();
        let Some(mut excess) =
            (used.saturating_sub(closing) + limit / 10).checked_sub(limit).filter(|excess| *excess > 0)
        else {
            return;
        };
        let mut holders: Vec<_> = open
            .by_peer
            .values()
            .filter(|activity| !activity.close.is_cancelled() && activity.account.held() >= SHED_FLOOR)
            .collect();
        // Those whose answers have not moved of late go first: what they hold is stalled, where
        // a connection being served holds what comes and goes.
        let recently = self.now().saturating_sub(STALLED_AFTER);
        holders.sort_unstable_by_key(|activity| {
            (activity.account.progressed() >= recently, std::cmp::Reverse(activity.account.held()))
        });
        let mut closed = 0;
        for activity in holders {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(activity.account.held());
            activity.close.cancel();
            closed += 1;
        }
        let mut last_warning = self.last_shed_warning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if closed > 0 && last_warning.is_none_or(|at| at.elapsed() >= SHED_WARNING_INTERVAL) {
            *last_warning = Some(Instant::now());
            tracing::warn!(closed, used, limit, "the memory budget is full: closed the connections holding the most");
        }
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// What the connection holds against the budget.
    pub fn account(&self) -> &Arc<Account> {
        &self.0.account
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's place among the open ones; dropping it frees the slot and its budget.
#[derive(Debug)]
struct Registration {
    connections: Arc<Connections>,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
    _charge: Charge,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let connections = &self.connections;
        self.activity.account.close(&connections.budget);
        let mut open = connections.lock();
        let peer = self.activity.peer;
        open.by_peer.remove(&peer);
        if let Some(count) = open.per_address.get_mut(&address_of(peer)) {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&address_of(peer));
            }
        }
        connections.gauge.dec();
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

    pub fn peer(&self) -> SocketAddr {
        self.registration.activity.peer
    }

    /// Resolves when the connection is to be closed now: to make room, or to free memory.
    pub fn closing(&self) -> WaitForCancellationFutureOwned {
        self.registration.activity.close.clone().cancelled_owned()
    }

    /// The answers of this connection's requests, counted until the peer has read them.
    pub fn account(&self) -> Arc<Account> {
        Arc::clone(&self.registration.activity.account)
    }

    /// The error that ends this connection, if it should end now; otherwise registers for the
    /// moment it should.
    fn ending(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.closed.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the server"));
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

    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(bytes)) = written {
            let (connections, activity) = (&self.registration.connections, &self.registration.activity);
            activity.account.written(&connections.budget, *bytes);
        }
    }
}

impl Tracked<TcpStream> {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr().ok()
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
            done => {
                this.wrote(&done);
                done
            }
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
            done => {
                this.wrote(&done);
                done
            }
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

/// What an answer holds while the transport sends it (its stream's state, its task, the
/// request it answers), beyond its bytes: measured at about 8 KiB.
const ANSWER_BYTES: usize = 8 * 1024;

/// An answer's body, counted against the connection's account while it is sent, and its bytes
/// as they are handed to the transport; [`Tracked`] counts those off as they are written.
#[derive(Debug)]
pub struct Counted<B: http_body::Body> {
    body: B,
    account: Arc<Account>,
    budget: Arc<MemoryBudget>,
    /// The bytes last handed over: the transport drops them unwritten if the peer cancels.
    last: usize,
    ended: bool,
    _sending: Charge,
}

impl<B: http_body::Body> Counted<B> {
    pub fn new(body: B, account: Arc<Account>, budget: Arc<MemoryBudget>) -> Self {
        let sending = budget.take_anyway(Held::Answers, ANSWER_BYTES, Some(&account));
        Self { body, account, budget, last: 0, ended: false, _sending: sending }
    }
}

impl<B: http_body::Body> Drop for Counted<B> {
    fn drop(&mut self) {
        // Dropped before its end: the stream was cancelled, and what it queued goes with it.
        if !self.ended && !self.body.is_end_stream() {
            self.account.written(&self.budget, self.last);
        }
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.account.answered(&this.budget, data.len());
                    this.last = data.len();
                }
                this.ended |= frame.is_trailers();
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The address a connection counts against for `--max-connections-per-address`: an IPv6
/// address's /64, which one host can hold whole.
fn address_of(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1)))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        v4 => v4,
    }
}

/// Out of file descriptors or memory: the errors `accept` keeps failing with until something
/// is freed (EMFILE, ENFILE, ENOBUFS, ENOMEM).
fn is_out_of_resources(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}
