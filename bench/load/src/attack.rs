//! `pc-load attack`: what a peer with no credential can make a running server hold. An attack
//! opens `--connections` connections to `--addr` in one shape ([`Attack`]), holds them for
//! `--hold` once they are set up, and prints one line: the streams it opened, the server's peak
//! RSS growth (VmRSS of `/proc/PID/status`, every 20 ms), the connections the server closed, and
//! the slowest of the `/healthz` probes made meanwhile from another address (a new connection
//! each, 2 s to answer). Should the server's RSS pass `--max-rss`, the attack stops there.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::Error;

/// How often the server's RSS is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// A probe not answered within this is a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between one probe's end and the next one's start.
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// A connection not accepted within this counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// one-address: how long after sending its frames a connection must still be open to count as kept.
const KEPT_AFTER: Duration = Duration::from_millis(300);
/// header-flood: copies of `x-a: b` in each request.
const FLOOD_COPIES: usize = 400;
/// bodies: the message length the 5-byte gRPC prefix announces, and the bytes sent in all.
const ANNOUNCED: u32 = 64_000;
const BODY_SENT: usize = 60_000;
/// http1-heads: the bytes of each unfinished head.
const HEAD_BYTES: usize = 400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// HTTP/2 with SETTINGS_INITIAL_WINDOW_SIZE 0: --streams `GET --path` per connection, whose
    /// answers are kept and never read
    UnreadAnswers,
    /// HTTP/2: --streams `POST /auth/v1/token` per connection, each with 400 copies of `x-a: b`
    /// and no body
    HeaderFlood,
    /// HTTP/2, every connection from 127.0.0.1: the preface, SETTINGS and the HEADERS of a POST
    /// whose body never comes
    OneAddress,
    /// HTTP/1.1: a head of 400,000 bytes (`GET / HTTP/1.1` and one huge header), never finished
    Http1Heads,
    /// HTTP/2 gRPC: --streams `TokenService/Token` calls per connection, each announcing a
    /// 64,000-byte message and sending 59,995 bytes of it
    Bodies,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Self::UnreadAnswers => "unread-answers",
            Self::HeaderFlood => "header-flood",
            Self::OneAddress => "one-address",
            Self::Http1Heads => "http1-heads",
            Self::Bodies => "bodies",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    attack: Attack,
    /// The running server, e.g. 127.0.0.1:50051 (plaintext, IPv4)
    #[arg(long)]
    addr: SocketAddr,
    /// The server's pid, for its RSS
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// How long the connections are held once they are set up
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// HTTP/2 streams opened on each connection (unread-answers, header-flood, bodies)
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// unread-answers: the path each stream GETs
    #[arg(long, default_value = "/metrics")]
    path: String,
    /// Stop once the server's RSS passes this (bytes, or 512MiB, 8GiB, ...)
    #[arg(long, default_value = "8GiB", value_parser = parse_bytes)]
    max_rss: u64,
    /// Connections per source address (127.1.x.y), so that a per-address limit of the server
    /// does not decide the figures; 0: all from 127.0.0.1. one-address always uses 127.0.0.1.
    #[arg(long, default_value_t = 100)]
    per_address: usize,
    /// The source address of the /healthz probes
    #[arg(long, default_value = "127.0.0.2")]
    probe_from: IpAddr,
    /// Print the line only, without the column header
    #[arg(long)]
    no_header: bool,
}

impl Args {
    /// The source address of connection `i`.
    fn source(&self, i: usize) -> IpAddr {
        if self.attack == Attack::OneAddress || self.per_address == 0 {
            return Ipv4Addr::LOCALHOST.into();
        }
        let group = i / self.per_address;
        Ipv4Addr::new(127, 1, (group / 250 % 256) as u8, (group % 250 + 1) as u8).into()
    }
}

/// `8GiB`, `512MiB`, `1.5GB`, `2G`, or bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size: use bytes, or 512MiB, 8GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}")),
    };
    Ok((number * scale as f64) as u64)
}

fn show_bytes(n: u64) -> String {
    if n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else {
        format!("{:.0} MiB", n as f64 / (1 << 20) as f64)
    }
}

/// Counters shared by every connection of the attack (one attack per process).
struct Tally {
    /// Connections accepted, and those not accepted within [`CONNECT_TIMEOUT`] or refused.
    opened: AtomicU64,
    refused: AtomicU64,
    /// Connections that sent all they send at first (or gave up).
    set_up: AtomicU64,
    /// Connections the server closed (or that failed) while held, and those of them reset
    /// (ECONNRESET: closed with unread data, or dropped by the kernel from a full accept queue).
    closed: AtomicU64,
    resets: AtomicU64,
    /// HTTP/2 streams opened, those answered (a response head), those refused or reset.
    streams: AtomicU64,
    answered: AtomicU64,
    reset: AtomicU64,
    /// Bytes written to the server's sockets.
    sent: AtomicU64,
}

static TALLY: Tally = Tally {
    opened: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    set_up: AtomicU64::new(0),
    closed: AtomicU64::new(0),
    resets: AtomicU64::new(0),
    streams: AtomicU64::new(0),
    answered: AtomicU64::new(0),
    reset: AtomicU64::new(0),
    sent: AtomicU64::new(0),
};

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// A TCP stream that counts the bytes written to it.
struct Counted(TcpStream);

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.get_mut().0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            TALLY.sent.fetch_add(n as u64, Relaxed);
        }
        written
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            TALLY.sent.fetch_add(n as u64, Relaxed);
        }
        written
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A connection to `addr` from `from` (bound before connecting).
async fn connect(addr: SocketAddr, from: IpAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What every connection of an attack shares: the arguments and what it sends.
struct Shape {
    args: Args,
    /// The raw bytes of one-address and http1-heads.
    raw: Bytes,
    /// header-flood: the 400 copies of `x-a: b` and the form's content type.
    flood: HeaderMap,
    /// bodies: the gRPC prefix and the body that follows, 60,000 bytes in all.
    body: Bytes,
}

impl Shape {
    fn new(args: Args) -> Self {
        let raw = match args.attack {
            Attack::OneAddress => one_address_frames(&args.addr.to_string()),
            Attack::Http1Heads => {
                let mut head = b"GET / HTTP/1.1\r\nhost: pc-load\r\nx-a: ".to_vec();
                head.resize(HEAD_BYTES, b'a');
                head.into()
            }
            _ => Bytes::new(),
        };
        let mut flood = HeaderMap::new();
        if args.attack == Attack::HeaderFlood {
            flood.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
            for _ in 0..FLOOD_COPIES {
                flood.append("x-a", HeaderValue::from_static("b"));
            }
        }
        let mut body = vec![0u8; BODY_SENT];
        body[1..5].copy_from_slice(&ANNOUNCED.to_be_bytes());
        Self { args, raw, flood, body: body.into() }
    }

    /// The request of each stream, and whether it ends the stream.
    fn request(&self) -> (Request<()>, bool) {
        let (method, path, end) = match self.args.attack {
            Attack::UnreadAnswers => (Method::GET, self.args.path.as_str(), true),
            Attack::HeaderFlood => (Method::POST, "/auth/v1/token", false),
            _ => (Method::POST, "/c1.api.auth.v1.TokenService/Token", false),
        };
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = format!("http://{}{path}", self.args.addr).parse().expect("a valid URI");
        match self.args.attack {
            Attack::HeaderFlood => *request.headers_mut() = self.flood.clone(),
            Attack::Bodies => {
                let headers = request.headers_mut();
                headers.insert("content-type", HeaderValue::from_static("application/grpc"));
                headers.insert("te", HeaderValue::from_static("trailers"));
            }
            _ => {}
        }
        (request, end)
    }
}

/// The HTTP/2 preface, an empty SETTINGS frame, and on stream 1 the HEADERS (END_HEADERS, no
/// END_STREAM) of `POST /auth/v1/token` with a form content type, in HPACK without Huffman
/// coding or indexing.
fn one_address_frames(authority: &str) -> Bytes {
    fn literal(block: &mut Vec<u8>, name_index: &[u8], value: &str) {
        block.extend_from_slice(name_index);
        block.push(u8::try_from(value.len()).expect("a short value"));
        block.extend_from_slice(value.as_bytes());
    }
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table 3 and 6)
    literal(&mut block, &[0x04], "/auth/v1/token"); // :path (static 4)
    literal(&mut block, &[0x01], authority); // :authority (static 1)
    literal(&mut block, &[0x0f, 0x10], "application/x-www-form-urlencoded"); // content-type (static 31)
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS, no parameters
    bytes.extend_from_slice(&u32::try_from(block.len()).expect("a short block").to_be_bytes()[1..]);
    bytes.extend_from_slice(&[0x1, 0x4, 0, 0, 0, 1]); // HEADERS, END_HEADERS, stream 1
    bytes.extend_from_slice(&block);
    bytes.into()
}

/// One connection of the attack: it sends its shape and holds what it has until the runtime is
/// dropped.
async fn connection(shape: Arc<Shape>, i: usize) {
    let args = &shape.args;
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect(args.addr, args.source(i))).await {
        Ok(Ok(tcp)) => Counted(tcp),
        _ => {
            add(&TALLY.refused);
            add(&TALLY.set_up);
            return;
        }
    };
    add(&TALLY.opened);
    match args.attack {
        Attack::OneAddress | Attack::Http1Heads => raw(tcp, shape.raw.clone(), args.attack == Attack::Http1Heads).await,
        _ => http2(shape, tcp).await,
    }
}

/// Counts a connection closed, and whether it was reset.
fn closed(error: Option<&io::Error>) {
    add(&TALLY.closed);
    if error.is_some_and(|e| e.kind() == io::ErrorKind::ConnectionReset) {
        add(&TALLY.resets);
    }
}

/// Writes `bytes` and reads until the server closes the connection.
async fn raw(mut tcp: Counted, bytes: Bytes, http1: bool) {
    let written = tcp.write_all(&bytes).await;
    add(&TALLY.set_up);
    if let Err(e) = written {
        return closed(Some(&e));
    }
    let mut buf = vec![0; 4096];
    let mut first = true;
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) => return closed(None),
            Ok(n) => {
                if first && http1 && buf[..n].starts_with(b"HTTP/1.") {
                    add(&TALLY.answered);
                }
                first = false;
            }
            Err(e) => return closed(Some(&e)),
        }
    }
}

async fn http2(shape: Arc<Shape>, tcp: Counted) {
    let mut builder = h2::client::Builder::new();
    if shape.args.attack == Attack::UnreadAnswers {
        builder.initial_window_size(0);
    }
    let (mut send, conn) = match builder.handshake::<_, Bytes>(tcp).await {
        Ok(handshake) => handshake,
        Err(e) => {
            add(&TALLY.set_up);
            return closed(e.get_io());
        }
    };
    // Polled until the server closes the connection: it answers the server's pings.
    tokio::spawn(async move {
        let result = conn.await;
        closed(result.as_ref().err().and_then(h2::Error::get_io));
    });
    for _ in 0..shape.args.streams {
        if poll_fn(|cx| send.poll_ready(cx)).await.is_err() {
            break;
        }
        let (request, end) = shape.request();
        let Ok((answer, stream)) = send.send_request(request, end) else { break };
        add(&TALLY.streams);
        if shape.args.attack == Attack::Bodies {
            tokio::spawn(send_body(stream, shape.body.clone()));
            tokio::spawn(hold(answer, ()));
        } else {
            tokio::spawn(hold(answer, stream));
        }
    }
    add(&TALLY.set_up);
    hold_forever(send).await
}

/// Waits for the answer's head and keeps it, its unread body and `also` until the runtime is
/// dropped.
async fn hold<T>(answer: h2::client::ResponseFuture, also: T) {
    match answer.await {
        Ok(answer) => {
            add(&TALLY.answered);
            hold_forever((answer, also)).await
        }
        Err(_) => add(&TALLY.reset),
    }
}

async fn hold_forever<T>(held: T) {
    std::future::pending::<()>().await;
    drop(held);
}

/// Sends `body` as flow control lets it (capacity reserved, then granted), never ending the
/// stream; keeps the stream until the runtime is dropped.
async fn send_body(mut stream: h2::SendStream<Bytes>, body: Bytes) {
    stream.reserve_capacity(body.len());
    let mut sent = 0;
    while sent < body.len() {
        let Some(Ok(granted)) = poll_fn(|cx| stream.poll_capacity(cx)).await else { break };
        let n = granted.min(body.len() - sent);
        if n == 0 {
            continue;
        }
        if stream.send_data(body.slice(sent..sent + n), false).is_err() {
            break;
        }
        sent += n;
    }
    hold_forever(stream).await
}

/// The server's resident memory, in bytes: None once it has exited.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The machine's count of connections the kernel dropped because a listener's accept queue
/// was full (TcpExt ListenOverflows in `/proc/net/netstat`).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The server's RSS, read every [`SAMPLE_EVERY`] on a thread of its own.
#[derive(Default)]
struct Watch {
    peak: AtomicU64,
    /// The RSS passed `--max-rss`.
    tripped: AtomicBool,
    /// The server exited.
    gone: AtomicBool,
}

impl Watch {
    fn run(&self, pid: u32, max: u64, done: &AtomicBool) {
        while !done.load(Relaxed) {
            let Some(now) = rss(pid) else {
                self.gone.store(true, Relaxed);
                return;
            };
            self.peak.fetch_max(now, Relaxed);
            if now > max {
                self.tripped.store(true, Relaxed);
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
    }

    fn stop(&self) -> bool {
        self.tripped.load(Relaxed) || self.gone.load(Relaxed)
    }
}

struct Probe {
    /// From the attack's start to the probe's.
    at: Duration,
    took: Duration,
    failure: Option<String>,
}

/// One `GET /healthz` over HTTP/1.1 on a new connection from `from`: Some(why) if it failed.
async fn healthz(addr: SocketAddr, from: IpAddr) -> Option<String> {
    let probe = async {
        let mut tcp = connect(addr, from).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: pc-load\r\nconnection: close\r\n\r\n").await?;
        let mut head = Vec::new();
        let mut buf = [0; 512];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        io::Result::Ok(head)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Err(_) => Some("no answer in 2 s".into()),
        Ok(Err(e)) => Some(e.kind().to_string()),
        Ok(Ok(head)) if head.starts_with(b"HTTP/1.1 200") => None,
        Ok(Ok(head)) if head.is_empty() => Some("closed without an answer".into()),
        Ok(Ok(head)) => Some(String::from_utf8_lossy(&head[..head.len().min(12)]).into_owned()),
    }
}

/// Probes until `done`, on a thread and runtime of its own, so that the attack's load on this
/// process does not delay them.
fn probes(addr: SocketAddr, from: IpAddr, start: Instant, done: Arc<AtomicBool>) -> io::Result<Vec<Probe>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(async {
        let mut probes = Vec::new();
        while !done.load(Relaxed) {
            let begun = Instant::now();
            let failure = healthz(addr, from).await;
            probes.push(Probe { at: begun - start, took: begun.elapsed(), failure });
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        probes
    }))
}

/// Sleeps until `until` or until `stop()`; false if stopped.
fn wait(until: Instant, stop: impl Fn() -> bool) -> bool {
    loop {
        if stop() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(SAMPLE_EVERY.min(until - now));
    }
}

const HEADER: &str = "attack          conns  streams       peak RSS +MiB  closed  slowest probe ms  failed probes  \
                      answered  sent MiB  setup s  note";

pub fn run(args: Args) -> Result<(), Error> {
    if !args.addr.is_ipv4() || !args.probe_from.is_ipv4() {
        return Err("--addr and --probe-from must be IPv4 (the connections come from 127.x.y.z)".into());
    }
    if args.connections == 0 {
        return Err("--connections must be above zero".into());
    }
    let overflows_before = listen_overflows();
    let before = rss(args.pid).ok_or_else(|| format!("no process {} (/proc/{0}/status)", args.pid))?;
    let (pid, max_rss, connections) = (args.pid, args.max_rss, args.connections as u64);
    let done = Arc::new(AtomicBool::new(false));
    let watch = Arc::new(Watch::default());
    let watcher = {
        let (watch, done) = (watch.clone(), done.clone());
        std::thread::Builder::new().name("pcl-rss".into()).spawn(move || watch.run(pid, max_rss, &done))?
    };
    let start = Instant::now();
    let prober = {
        let (addr, from, done) = (args.addr, args.probe_from, done.clone());
        std::thread::Builder::new().name("pcl-probe".into()).spawn(move || probes(addr, from, start, done))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread().thread_name("pcl-attack").enable_all().build()?;
    let shape = Arc::new(Shape::new(args));
    for i in 0..shape.args.connections {
        rt.spawn(connection(shape.clone(), i));
    }
    // Set up (every connection has sent what it sends at first), for at most --hold; then held.
    let hold = shape.args.hold;
    wait(start + hold, || TALLY.set_up.load(Relaxed) >= connections || watch.stop());
    let setup = start.elapsed();
    let kept = if shape.args.attack == Attack::OneAddress {
        wait(Instant::now() + KEPT_AFTER, || watch.stop());
        Some(TALLY.opened.load(Relaxed) - TALLY.closed.load(Relaxed))
    } else {
        None
    };
    wait(Instant::now() + hold, || watch.stop());
    let [opened, refused, set_up, closed, resets, streams, answered, reset, sent] = [
        &TALLY.opened,
        &TALLY.refused,
        &TALLY.set_up,
        &TALLY.closed,
        &TALLY.resets,
        &TALLY.streams,
        &TALLY.answered,
        &TALLY.reset,
        &TALLY.sent,
    ]
    .map(|c| c.load(Relaxed));
    let overflows = overflows_before.zip(listen_overflows()).map_or(0, |(b, a)| a.saturating_sub(b));
    let (tripped, gone) = (watch.tripped.load(Relaxed), watch.gone.load(Relaxed));
    // Dropping the runtime closes every connection.
    rt.shutdown_background();
    done.store(true, Relaxed);
    let probes = prober.join().map_err(|_| "the probe thread panicked")??;
    watcher.join().map_err(|_| "the RSS thread panicked")?;

    let growth = if tripped {
        format!("> {} (stopped)", show_bytes(max_rss))
    } else {
        format!("{:.1}", watch.peak.load(Relaxed).saturating_sub(before) as f64 / (1 << 20) as f64)
    };
    let failed: Vec<&Probe> = probes.iter().filter(|p| p.failure.is_some()).collect();
    let slowest = probes.iter().map(|p| p.took).max().map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    let mut notes = Vec::new();
    if let Some(kept) = kept {
        notes.push(format!("{kept} of {connections} open after {} ms", KEPT_AFTER.as_millis()));
        match probes.iter().find(|p| p.failure.is_none()) {
            Some(p) if failed.is_empty() => notes.push(format!("probes answered from {:.1} s", p.at.as_secs_f64())),
            Some(p) => notes.push(format!("first probe answered at {:.1} s", p.at.as_secs_f64())),
            None => notes.push("no probe answered".into()),
        }
    }
    if let (Some(first), Some(last)) = (failed.first(), failed.last()) {
        let why = first.failure.as_deref().unwrap_or_default();
        let (first, last) = (first.at.as_secs_f64(), last.at.as_secs_f64());
        if failed.len() == 1 {
            notes.push(format!("a probe failed at {first:.1} s ({why})"));
        } else {
            notes.push(format!("probes failed from {first:.1} to {last:.1} s (first: {why})"));
        }
    }
    if resets > 0 {
        notes.push(format!("{resets} of the closed reset"));
    }
    if overflows > 0 {
        notes.push(format!("accept queue overflowed {overflows} times"));
    }
    if refused > 0 {
        notes.push(format!("{refused} connections not accepted within {} s", CONNECT_TIMEOUT.as_secs()));
    }
    if set_up < connections {
        notes.push(format!("{set_up} of {connections} set up within the hold"));
    }
    if reset > 0 {
        notes.push(format!("{reset} streams refused or reset"));
    }
    if gone {
        notes.push("THE SERVER EXITED".into());
    }
    let h2 = matches!(shape.args.attack, Attack::UnreadAnswers | Attack::HeaderFlood | Attack::Bodies);
    let dash_unless = |show: bool, n: u64| if show { n.to_string() } else { "-".into() };
    if !shape.args.no_header {
        println!("{HEADER}");
    }
    println!(
        "{:<15} {:>5} {:>8}  {:>18}  {:>6}  {:>16}  {:>13}  {:>8}  {:>8.1}  {:>7.1}  {}",
        shape.args.attack.name(),
        opened + refused,
        dash_unless(h2, streams),
        growth,
        closed,
        slowest,
        format!("{}/{}", failed.len(), probes.len()),
        dash_unless(h2 || shape.args.attack == Attack::Http1Heads, answered),
        sent as f64 / (1 << 20) as f64,
        setup.as_secs_f64(),
        notes.join("; "),
    );
    Ok(())
}
