//! One memory budget for everything a peer can make the server hold, counted as it is held:
//!
//! - **connections**: each open connection's buffers and the HTTP/2 flow-control window its peer
//!   may fill before anything reads it, reserved when it is accepted, at most half the budget;
//! - **headers**: the decoded headers of each request, with its state, until it is answered;
//! - **bodies**: request bodies as they are received, until the request is answered, at most
//!   what the server can serve at once (`--max-concurrent-requests` × `--max-request-bytes`):
//!   more could not be admitted anyway;
//! - **answers**: response bytes handed to the transport that the peer has not read yet.
//!
//! A connection or a request that does not fit is not taken (it waits in the backlog, or is
//! refused with 503 / RESOURCE_EXHAUSTED); a body waits for room, so flow control holds its
//! sender back. Answers are counted whatever the state, since they are in memory already; when
//! the budget is full, [`super::connections`] closes the connections holding the most. Health
//! checks are counted nowhere: they are answered whatever the budget's state.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use prometheus::IntGauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What a budgeted byte is held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Connections,
    Headers,
    Bodies,
    Answers,
}

impl Held {
    pub const ALL: [Self; 4] = [Self::Connections, Self::Headers, Self::Bodies, Self::Answers];

    /// Its label in `/metrics`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Headers => "headers",
            Self::Bodies => "bodies",
            Self::Answers => "answers",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The budget: its limit and what is held against it.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    /// Bodies' own limit, which they wait for in turn.
    bodies: Arc<Semaphore>,
    used: AtomicUsize,
    /// What each kind holds, as `/metrics` shows it, in the order of [`Held::ALL`].
    held: [IntGauge; 4],
    /// Told when bytes are given back, for bodies waiting for room.
    room: Notify,
    /// Told when something did not fit, or answers went past the limit: time to shed.
    full: Notify,
    epoch: Instant,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, of which bodies may hold `bodies_limit`, its use kept in
    /// `held` (one gauge per kind, in the order of [`Held::ALL`]).
    pub fn new(limit: usize, bodies_limit: usize, held: [IntGauge; 4]) -> Arc<Self> {
        Arc::new(Self {
            limit,
            bodies: Arc::new(Semaphore::new(bodies_limit.min(Semaphore::MAX_PERMITS))),
            used: AtomicUsize::new(0),
            held,
            room: Notify::new(),
            full: Notify::new(),
            epoch: Instant::now(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes held now for `kind`.
    pub fn held(&self, kind: Held) -> usize {
        usize::try_from(self.held[kind.index()].get()).unwrap_or(0)
    }

    /// Resolves when the budget has been found full since the last call.
    pub async fn filled(&self) {
        self.full.notified().await;
    }

    /// Milliseconds since the budget was made: the clock of [`Account`]s.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `bytes` for `kind`, charged to `account` too, if they fit: connections within half the
    /// budget, bodies within theirs, everything within all of it. A charge that does not fit
    /// tells whoever sheds.
    pub fn try_take(self: &Arc<Self>, kind: Held, bytes: usize, account: Option<&Arc<Account>>) -> Option<Charge> {
        let fits = |used: usize| {
            let within_kind = kind != Held::Connections || self.held(Held::Connections) + bytes <= self.limit / 2;
            (within_kind && used + bytes <= self.limit).then_some(used + bytes)
        };
        if self.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, fits).is_err() {
            self.full.notify_one();
            return None;
        }
        Some(self.charged(kind, bytes, account))
    }

    /// `bytes` of a body, waiting in turn within the bodies' limit; counted in the budget whether
    /// it fits or not, since the body is on its way (a full budget sheds).
    pub async fn take_body(self: &Arc<Self>, bytes: usize, account: Option<&Arc<Account>>) -> Charge {
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        let turn = Arc::clone(&self.bodies).acquire_many_owned(permits).await.ok();
        let mut charge = self.take_anyway(Held::Bodies, bytes, account);
        charge.turn = turn;
        charge
    }

    /// `bytes` for `kind`, waiting until they fit.
    pub async fn take(self: &Arc<Self>, kind: Held, bytes: usize, account: Option<&Arc<Account>>) -> Charge {
        loop {
            let room = self.room.notified();
            if let Some(charge) = self.try_take(kind, bytes, account) {
                return charge;
            }
            room.await;
        }
    }

    /// `bytes` for `kind` already in memory, counted whether they fit or not.
    pub fn take_anyway(self: &Arc<Self>, kind: Held, bytes: usize, account: Option<&Arc<Account>>) -> Charge {
        self.count_used(bytes);
        self.charged(kind, bytes, account)
    }

    fn count_used(&self, bytes: usize) {
        if self.used.fetch_add(bytes, Ordering::AcqRel) + bytes > self.limit {
            self.full.notify_one();
        }
    }

    fn charged(self: &Arc<Self>, kind: Held, bytes: usize, account: Option<&Arc<Account>>) -> Charge {
        self.held[kind.index()].add(gauge(bytes));
        if let Some(account) = account {
            account.held.fetch_add(bytes, Ordering::Relaxed);
            if kind == Held::Headers {
                account.headers.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        Charge { budget: Arc::clone(self), kind, bytes, account: account.cloned(), turn: None }
    }

    /// Counts bytes already in memory, fitting or not.
    fn count(&self, kind: Held, bytes: usize) {
        self.count_used(bytes);
        self.held[kind.index()].add(gauge(bytes));
    }

    fn give(&self, kind: Held, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.held[kind.index()].sub(gauge(bytes));
        self.room.notify_waiters();
    }
}

fn gauge(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Bytes held against the budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    kind: Held,
    bytes: usize,
    account: Option<Arc<Account>>,
    /// A body's place within the bodies' limit.
    turn: Option<OwnedSemaphorePermit>,
}

impl Charge {
    /// Adds another charge of the same kind and account to this one.
    pub fn absorb(&mut self, mut other: Self) {
        self.bytes += std::mem::take(&mut other.bytes);
        match (&mut self.turn, other.turn.take()) {
            (Some(turn), Some(other)) => turn.merge(other),
            (turn, other) => *turn = turn.take().or(other),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        if let Some(account) = &self.account {
            account.held.fetch_sub(self.bytes, Ordering::Relaxed);
            if self.kind == Held::Headers {
                account.headers.fetch_sub(self.bytes, Ordering::Relaxed);
            }
        }
        self.budget.give(self.kind, self.bytes);
    }
}

/// What one connection holds against the budget: its requests' headers and bodies, and the
/// bytes of its answers not yet written to it.
#[derive(Debug, Default)]
pub struct Account {
    held: AtomicUsize,
    headers: AtomicUsize,
    /// Answer bytes handed to the transport and not yet written, as far as the writes tell.
    unwritten: AtomicUsize,
    /// Answer bytes handed to the transport, all told.
    answered: AtomicU64,
    /// Set once the connection has closed: what is answered after that is not held.
    closed: AtomicBool,
    /// [`MemoryBudget::now`] when answer bytes were last written.
    progressed: AtomicU64,
    /// The oldest answer bytes still waiting, as [`Account::waiting`] last saw them: all bytes
    /// answered up to the first number, as of [`MemoryBudget::now`] the second (plus one; zero
    /// for none).
    mark: (AtomicU64, AtomicU64),
}

impl Account {
    /// Bytes held now for this connection.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Decoded header bytes held now for this connection's requests.
    pub fn headers(&self) -> usize {
        self.headers.load(Ordering::Relaxed)
    }

    /// Answer bytes handed to the transport for this connection.
    pub fn answered(&self, budget: &MemoryBudget, bytes: usize) {
        if bytes == 0 || self.closed.load(Ordering::Acquire) {
            return;
        }
        budget.count(Held::Answers, bytes);
        self.held.fetch_add(bytes, Ordering::Relaxed);
        self.unwritten.fetch_add(bytes, Ordering::AcqRel);
        self.answered.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
        // Closed meanwhile: whoever closed it may have counted these off already, or not.
        if self.closed.load(Ordering::Acquire) {
            self.written(budget, usize::MAX);
        }
    }

    /// Bytes written to the connection, or dropped with a stream the peer cancelled: they are
    /// no longer held, as far as answers go.
    pub fn written(&self, budget: &MemoryBudget, bytes: usize) {
        let Ok(before) = self
            .unwritten
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| (held > 0).then(|| held.saturating_sub(bytes)))
        else {
            return;
        };
        let released = before.min(bytes);
        self.held.fetch_sub(released, Ordering::Relaxed);
        self.progressed.store(budget.now(), Ordering::Relaxed);
        budget.give(Held::Answers, released);
    }

    /// [`MemoryBudget::now`] when answer bytes were last written (zero for never): a connection
    /// whose answers move is being served, whatever it holds.
    pub fn progressed(&self) -> u64 {
        self.progressed.load(Ordering::Relaxed)
    }

    /// How long ([`MemoryBudget::now`] milliseconds) the oldest answer bytes still unwritten
    /// have waited, as far as this is called often: the bytes answered by one call must all be
    /// written by a later one, or they are still waiting.
    pub fn waiting(&self, budget: &MemoryBudget) -> u64 {
        let now = budget.now();
        let answered = self.answered.load(Ordering::Relaxed);
        let unwritten = u64::try_from(self.unwritten.load(Ordering::Acquire)).unwrap_or(u64::MAX);
        let written = answered.saturating_sub(unwritten);
        let (upto, since) = (self.mark.0.load(Ordering::Relaxed), self.mark.1.load(Ordering::Relaxed));
        if since != 0 && written < upto {
            return now.saturating_sub(since - 1);
        }
        // The bytes of the last mark are written (or there was none): mark what waits now.
        let next = if unwritten > 0 { now + 1 } else { 0 };
        self.mark.0.store(answered, Ordering::Relaxed);
        self.mark.1.store(next, Ordering::Relaxed);
        0
    }

    /// Gives back what the connection still held for answers when it closes, and whatever its
    /// answers hand over later.
    pub fn close(&self, budget: &MemoryBudget) {
        self.closed.store(true, Ordering::Release);
        self.written(budget, usize::MAX);
    }
}

/// `--memory-budget`'s default: half the memory the process may use, by its cgroup's limit or
/// else the machine's memory; 1 GiB where neither can be read.
pub fn default_limit() -> usize {
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|limit| limit.trim().parse::<u64>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    });
    let memory = match (cgroup, machine) {
        (Some(cgroup), Some(machine)) => cgroup.min(machine),
        (limit, None) | (None, limit) => limit.unwrap_or(2 << 30),
    };
    usize::try_from(memory / 2).unwrap_or(usize::MAX)
}
