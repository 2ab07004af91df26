//! What strangers can make the server hold, each attack at a size a CI machine can take, against
//! the release of memory the budget promises: the server runs as its own process with a small
//! `--memory-budget`, each test alone, and while the attack holds, its resident memory stays within a stated
//! bound and `/healthz` and an authenticated Get, each from an address of its own, keep
//! answering within 2 s.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{
    common::oauth::{ServerProcess, binary},
    hostile_traffic::resident_bytes,
};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    let mut trials = plain_tests!(a_sidecar_may_keep_every_stream_waiting_on_its_body);
    trials.extend(alone_tests!(
        answers_a_peer_never_reads_end_with_their_connection,
        decoded_headers_are_bounded_per_connection,
        one_address_cannot_take_every_connection_slot,
        trusted_proxies_may_hold_more_connections_than_one_address,
        http1_heads_past_max_header_bytes_are_refused,
        health_answers_while_bodies_fill_the_budget,
    ));
    trials
}

/// A mesh sidecar multiplexes calls over one connection: as many as the server allows at once,
/// each with a token and tracing metadata (2.5 KB of headers), may all wait on their bodies.
fn a_sidecar_may_keep_every_stream_waiting_on_its_body() -> crate::common::TestFuture {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::spawn(dir.path(), None, &[]);
        let (client, _connection) = h2_connection(server.addr, 65_535).await;
        let mut waiting = Vec::new();
        for n in 0..100 {
            let mut ready = client.clone().ready().await.unwrap();
            let request = http::Request::post(format!("http://{}/auth/v1/token", server.addr))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", format!("Bearer {}", "t".repeat(2_000)))
                .header("x-trace-context", format!("{n:0>500}"))
                .body(())
                .unwrap();
            waiting.push(ready.send_request(request, false).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut statuses = Vec::new();
        for (response, mut body) in waiting {
            // A stream already answered (refused) takes no body.
            let _ = body.send_data(Bytes::from_static(b"grant_type=client_credentials"), true);
            statuses.push(response.await.unwrap().status().as_u16());
        }
        let refused = statuses.iter().filter(|status| **status == 503).count();
        assert_eq!(refused, 0, "every call waiting on its body is kept: {statuses:?}");
        assert!(statuses.iter().all(|status| *status == 400 || *status == 401), "{statuses:?}");
    })
}

const MIB: u64 = 1 << 20;

/// The budget the attacked servers run with, and the bound on their resident memory's growth:
/// twice the budget, for what the budget cannot see (a request's headers are decoded before it
/// can be refused; the allocator keeps what it freed), and 16 MiB.
const BUDGET: &str = "32MiB";
const BOUND: u64 = 2 * 32 * MIB + 16 * MIB;

/// A server of its own, with a budget of `budget_mib`, a credential and a token to Get it with.
struct Target {
    server: ServerProcess,
    token: String,
    client_id: String,
    _dir: tempfile::TempDir,
}

impl Target {
    async fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::spawn(dir.path(), None, args);
        let minted = binary(dir.path()).args(["mint-token", "--user", "alice"]).output().unwrap();
        let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
        let body = r#"{"displayName": "monitoring"}"#;
        let created = http_from(
            server.addr,
            "127.0.0.1".parse().unwrap(),
            &format!(
                "POST /api/v1/iam/personal_clients HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await
        .unwrap();
        assert!(created.starts_with("HTTP/1.1 200"), "{created}");
        let body: serde_json::Value = serde_json::from_str(&created[created.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        let client_id = body["client"]["id"].as_str().unwrap().to_owned();
        Self { server, token, client_id, _dir: dir }
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Checks, from 127.0.0.2 and 127.0.0.3, that the server answers until stopped.
    fn watch(&self) -> Liveness {
        Liveness::start(self.addr(), self.token.clone(), self.client_id.clone())
    }
}

/// Sends `request` over a new connection from `source` and reads the answer to its end, within
/// 2 s.
async fn http_from(addr: SocketAddr, source: IpAddr, request: &str) -> Result<String, String> {
    let exchange = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| e.to_string())?;
        let mut tcp = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        tcp.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.map_err(|e| format!("read: {e}"))?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.unwrap_or_else(|_| Err("no answer within 2 s".into()))
}

/// `/healthz` and an authenticated Get, each on a new connection from an address of its own,
/// over and over until stopped.
struct Liveness {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Duration, Vec<String>)>,
}

impl Liveness {
    fn start(addr: SocketAddr, token: String, client_id: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let (mut checks, mut slowest, mut failures) = (0, Duration::ZERO, Vec::new());
                let health = "GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".to_owned();
                let get = format!(
                    "GET /api/v1/iam/personal_clients/{client_id} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
                );
                while !stop.load(Ordering::Relaxed) {
                    for (source, request) in [("127.0.0.2", &health), ("127.0.0.3", &get)] {
                        let started = Instant::now();
                        match http_from(addr, source.parse().unwrap(), request).await {
                            Ok(answer) if answer.starts_with("HTTP/1.1 200") => {}
                            Ok(answer) => failures.push(format!("{source}: {}", answer.lines().next().unwrap_or(""))),
                            Err(error) => failures.push(format!("{source}: {error}")),
                        }
                        checks += 1;
                        slowest = slowest.max(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (checks, slowest, failures)
            }
        });
        Self { stop, task }
    }

    /// Stops, and asserts every check was answered within 2 s.
    async fn finish(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let (checks, slowest, failures) = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} of {checks} checks failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(checks >= 4, "the server was checked during the attack");
        (checks, slowest)
    }
}

/// Samples the server's resident memory until stopped; gives the highest.
struct Peak {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Peak {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(resident_bytes(pid));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                peak
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// An HTTP/2 connection from 127.0.0.1 that grants the server `window` bytes per stream.
async fn h2_connection(addr: SocketAddr, window: u32) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) =
        h2::client::Builder::new().initial_window_size(window).handshake::<_, Bytes>(tcp).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// An HTTP/2 connection that asks for `streams` answers of the public OpenAPI document (about
/// 11 KB) and grants no flow-control window, so none is ever read.
struct Unread {
    connection: tokio::task::JoinHandle<()>,
    _client: h2::client::SendRequest<Bytes>,
    _answers: Arc<Mutex<Vec<http::Response<h2::RecvStream>>>>,
}

impl Unread {
    async fn open(addr: SocketAddr, streams: usize, heads: &Arc<AtomicUsize>) -> Self {
        let (client, connection) = h2_connection(addr, 0).await;
        let answers = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..streams {
            let Ok(mut ready) = client.clone().ready().await else { break };
            let request = http::Request::get(format!("http://{addr}/openapi.json")).body(()).unwrap();
            let Ok((response, _)) = ready.send_request(request, true) else { break };
            let (heads, answers) = (Arc::clone(heads), Arc::clone(&answers));
            // The answer's head arrives; its body is kept, and never read.
            tokio::spawn(async move {
                if let Ok(answer) = response.await {
                    heads.fetch_add(1, Ordering::Relaxed);
                    answers.lock().unwrap().push(answer);
                }
            });
        }
        Self { connection, _client: client, _answers: answers }
    }

    /// Waits, at most `within`, for the server to close the connection.
    async fn closed(self, within: Duration, what: &str) {
        let closed = tokio::time::timeout(within, self.connection).await;
        assert!(closed.is_ok(), "{what}: the server closed the connection within {within:?}");
    }
}

fn answers_a_peer_never_reads_end_with_their_connection() -> crate::common::TestFuture {
    Box::pin(async {
        let target = Target::start(&["--memory-budget", BUDGET, "--request-timeout", "3s"]).await;

        // Within the budget: the answers end with their connection after the request timeout.
        let heads = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let unread = Unread::open(target.addr(), 10, &heads).await;
        unread.closed(Duration::from_secs(8), "10 unread answers").await;
        let closed_after = started.elapsed();
        assert_eq!(heads.load(Ordering::Relaxed), 10, "every answer's head arrived");
        assert!(closed_after >= Duration::from_secs(3), "not before the request timeout: {closed_after:?}");

        // Past the budget: the connections holding the most are closed.
        const CONNECTIONS: usize = 60;
        const STREAMS: usize = 100;
        let before = resident_bytes(target.pid());
        let (liveness, peak) = (target.watch(), Peak::start(target.pid()));
        let heads = Arc::new(AtomicUsize::new(0));
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            connections.push(Unread::open(target.addr(), STREAMS, &heads).await);
        }
        for connection in connections {
            let what = format!("{} heads of unread answers", heads.load(Ordering::Relaxed));
            connection.closed(Duration::from_secs(10), &what).await;
        }
        let (checks, slowest) = liveness.finish().await;
        let grown = peak.finish().await.saturating_sub(before);
        eprintln!(
            "unread answers closed after {closed_after:?}; {CONNECTIONS} x {STREAMS} unread: {} heads arrived, memory grew {} MiB; {checks} checks, slowest {slowest:?}",
            heads.load(Ordering::Relaxed),
            grown / MIB
        );
        assert!(grown < BOUND, "memory grew by {} MiB", grown / MIB);
    })
}

/// Each request repeats one small header, cheap to send once HPACK has indexed it, and never
/// sends its body.
fn decoded_headers_are_bounded_per_connection() -> crate::common::TestFuture {
    Box::pin(async {
        const CONNECTIONS: usize = 20;
        const STREAMS: usize = 100;
        let target = Target::start(&["--memory-budget", BUDGET, "--idle-timeout", "1h"]).await;
        let before = resident_bytes(target.pid());
        let (liveness, peak) = (target.watch(), Peak::start(target.pid()));
        let (refused, held_streams) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            let (client, connection) = h2_connection(target.addr(), 65_535).await;
            for _ in 0..STREAMS {
                let Ok(mut ready) = client.clone().ready().await else { break };
                let mut request = http::Request::post(format!("http://{}/auth/v1/token", target.addr()))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(())
                    .unwrap();
                for _ in 0..400 {
                    request.headers_mut().append("x-a", http::HeaderValue::from_static("b"));
                }
                let Ok((response, body)) = ready.send_request(request, false) else { break };
                let refused = Arc::clone(&refused);
                held_streams.lock().unwrap().push(body);
                tokio::spawn(async move {
                    if response.await.is_ok_and(|answer| answer.status() == 503) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            connections.push((client, connection));
        }
        // The server's answer to what is past a connection's share comes at once.
        crate::common::eventually(Duration::from_secs(10), "requests past the share are refused", || async {
            refused.load(Ordering::Relaxed) >= CONNECTIONS * STREAMS / 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (checks, slowest) = liveness.finish().await;
        let grown = peak.finish().await.saturating_sub(before);
        eprintln!(
            "{CONNECTIONS} x {STREAMS} requests of 400 headers: {} refused; memory grew {} MiB; {checks} checks, slowest {slowest:?}",
            refused.load(Ordering::Relaxed),
            grown / MIB
        );
        assert!(grown < BOUND, "memory grew by {} MiB", grown / MIB);
        drop(connections);
    })
}

/// Connections from `source`, each with an HTTP/2 request whose body never comes; gives those
/// the server kept.
async fn unfinished_requests(addr: SocketAddr, source: &str, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
        let Ok(Ok(mut tcp)) = tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await else {
            continue;
        };
        let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frames.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
        // HEADERS, END_HEADERS, stream 1: POST http localhost /auth/v1/token, indexed and literal.
        let block = [&[0x83u8, 0x86, 0x04, 14][..], b"/auth/v1/token", &[0x01, 9], b"localhost"].concat();
        frames.extend([0, 0, u8::try_from(block.len()).unwrap(), 1, 4, 0, 0, 0, 1]);
        frames.extend(block);
        if tcp.write_all(&frames).await.is_ok() {
            held.push(tcp);
        }
    }
    // Those the server closed at once are gone by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut kept = Vec::new();
    for mut tcp in held {
        let mut byte = [0u8; 4096];
        let open = loop {
            match tokio::time::timeout(Duration::from_millis(10), tcp.read(&mut byte)).await {
                Ok(Ok(0) | Err(_)) => break false,
                Ok(Ok(_)) => continue,
                Err(_) => break true,
            }
        };
        if open {
            kept.push(tcp);
        }
    }
    kept
}

fn one_address_cannot_take_every_connection_slot() -> crate::common::TestFuture {
    Box::pin(async {
        let target = Target::start(&["--max-connections", "300", "--idle-timeout", "1h"]).await;
        let held = unfinished_requests(target.addr(), "127.0.0.1", 400).await;
        eprintln!("one address made 400 connections; the server kept {}", held.len());
        assert!(held.len() <= 256, "one address holds at most its share: {}", held.len());
        let liveness = target.watch();
        tokio::time::sleep(Duration::from_secs(1)).await;
        liveness.finish().await;

        // All slots full with unfinished requests from two addresses: the one holding the most
        // gives way.
        let others = unfinished_requests(target.addr(), "127.0.0.5", 100).await;
        let liveness = target.watch();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (checks, slowest) = liveness.finish().await;
        eprintln!("with {} + {} connections held: {checks} checks, slowest {slowest:?}", held.len(), others.len());
    })
}

fn trusted_proxies_may_hold_more_connections_than_one_address() -> crate::common::TestFuture {
    Box::pin(async {
        let target = Target::start(&[
            "--max-connections-per-address",
            "5",
            "--trusted-proxies",
            "127.0.0.6/32",
            "--idle-timeout",
            "1h",
        ])
        .await;
        let proxy = unfinished_requests(target.addr(), "127.0.0.6", 20).await;
        let stranger = unfinished_requests(target.addr(), "127.0.0.7", 20).await;
        assert_eq!(proxy.len(), 20, "a trusted proxy holds as many connections as it needs");
        assert_eq!(stranger.len(), 5, "any other address holds its share");
    })
}

fn http1_heads_past_max_header_bytes_are_refused() -> crate::common::TestFuture {
    Box::pin(async {
        let target = Target::start(&["--max-header-bytes", "16384"]).await;
        let head = |size: usize| {
            format!(
                "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
                "a".repeat(size)
            )
        };
        let within = http_from(target.addr(), "127.0.0.1".parse().unwrap(), &head(12_000)).await.unwrap();
        assert!(within.starts_with("HTTP/1.1 200"), "{within}");
        let past = http_from(target.addr(), "127.0.0.1".parse().unwrap(), &head(20_000)).await.unwrap();
        assert!(past.starts_with("HTTP/1.1 431"), "a head past the limit is refused: {past}");

        // Unfinished heads hold no more than the limit each.
        let before = resident_bytes(target.pid());
        let mut held = Vec::new();
        for _ in 0..300 {
            let mut tcp = TcpStream::connect(target.addr()).await.unwrap();
            let mut unfinished = head(15_000);
            unfinished.truncate(15_000);
            if tcp.write_all(unfinished.as_bytes()).await.is_ok() {
                held.push(tcp);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = resident_bytes(target.pid()).saturating_sub(before);
        eprintln!("300 unfinished 15 KB heads: memory grew {} MiB", grown / MIB);
        assert!(grown < 32 * MIB, "memory grew by {} MiB", grown / MIB);
    })
}

/// Bodies that never finish, from many connections, fill the budget; health checks, gRPC's
/// included, answer at once.
fn health_answers_while_bodies_fill_the_budget() -> crate::common::TestFuture {
    Box::pin(async {
        const CONNECTIONS: usize = 20;
        let target = Target::start(&["--memory-budget", BUDGET, "--idle-timeout", "1h"]).await;
        let before = resident_bytes(target.pid());
        let peak = Peak::start(target.pid());
        let mut connections = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..CONNECTIONS {
            let (client, connection) = h2_connection(target.addr(), 65_535).await;
            for _ in 0..100 {
                let Ok(mut ready) = client.clone().ready().await else { break };
                let request =
                    http::Request::post(format!("http://{}/c1.api.auth.v1.TokenService/Token", target.addr()))
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                let Ok((_, mut body)) = ready.send_request(request, false) else { break };
                // The start of a 64,000-byte message that never ends.
                body.reserve_capacity(60_000);
                let _ = body.send_data(Bytes::from([&[0u8, 0, 0, 0xfa, 0][..], &[b'x'; 59_995][..]].concat()), false);
                bodies.push(body);
            }
            connections.push((client, connection));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let metrics = http_from(
            target.addr(),
            "127.0.0.4".parse().unwrap(),
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let held = |kind: &str| {
            metrics
                .lines()
                .find(|line| line.starts_with(&format!("personal_clients_memory_held_bytes{{kind=\"{kind}\"}}")))
                .and_then(|line| line.split_whitespace().last()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        eprintln!(
            "bodies {} MiB, connections {} MiB held",
            held("bodies") / MIB as f64,
            held("connections") / MIB as f64
        );

        // gRPC health, on a connection of its own from another address.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let started = Instant::now();
        let tcp = socket.connect(target.addr()).await.unwrap();
        let channel =
            tonic::transport::Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn({
                    let tcp = Mutex::new(Some(tcp));
                    move |_: http::Uri| {
                        let tcp = tcp.lock().unwrap().take();
                        async move {
                            tcp.map(hyper_util::rt::TokioIo::new).ok_or(std::io::Error::other("one connection only"))
                        }
                    }
                }))
                .await
                .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let checked =
            tokio::time::timeout(Duration::from_secs(2), health.check(tonic_health::pb::HealthCheckRequest::default()))
                .await
                .expect("gRPC health answers within 2 s")
                .expect("gRPC health answers");
        assert_eq!(checked.into_inner().status, 1, "serving");
        let liveness = target.watch();
        tokio::time::sleep(Duration::from_millis(500)).await;
        liveness.finish().await;
        let grown = peak.finish().await.saturating_sub(before);
        eprintln!("gRPC health answered in {:?}; memory grew {} MiB", started.elapsed(), grown / MIB);
        assert!(grown < BOUND, "memory grew by {} MiB", grown / MIB);
        drop(bodies);
    })
}
