//! What a caller without any credential can do to the server: open streams and connections and
//! never finish them. Each test runs the binary as its own process, alone, attacks it, and
//! checks the process's memory and file descriptors stay bounded while health checks answer.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::oauth::{ServerProcess, binary, http, post_token, token_form};

pub fn tests() -> Vec<libtest_mimic::Trial> {
    alone_tests!(
        ten_thousand_unfinished_streams_leave_memory_bounded,
        thousands_of_silent_connections_neither_exhaust_descriptors_nor_lock_callers_out,
        silent_and_trickling_connections_are_closed,
        requests_beyond_the_in_flight_limit_are_refused_at_once,
        a_flood_of_refused_requests_cannot_flood_the_log,
    )
}

const TOKEN_METHOD: &str = "/c1.api.auth.v1.TokenService/Token";

pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The sockets the process holds open: its connections and its listener (the database files,
/// which its pools open as they please, are not counted).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Checks `/healthz` on a new connection each time, from another thread, until stopped;
/// returns how many checks were made and the slowest answer.
struct HealthProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Duration)>,
}

impl HealthProbe {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let (mut checks, mut slowest) = (0, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let mut tcp = TcpStream::connect(addr).expect("connect for a health check");
                    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").unwrap();
                    let mut answer = String::new();
                    tcp.read_to_string(&mut answer).expect("a health answer within 10 s");
                    assert!(answer.starts_with("HTTP/1.1 200"), "health check answered {answer:?}");
                    checks += 1;
                    slowest = slowest.max(started.elapsed());
                    std::thread::sleep(Duration::from_millis(20));
                }
                (checks, slowest)
            }
        });
        Self { stop, thread }
    }

    fn finish(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("every health check passed")
    }
}

/// HTTP/2 frames written by hand, so the test can do what no well-behaved client library
/// would: ignore the server's stream limit and never finish a message.
mod h2_frames {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn literal(out: &mut Vec<u8>, value: &str) {
        out.push(u8::try_from(value.len()).unwrap());
        out.extend_from_slice(value.as_bytes());
    }

    /// HPACK for a gRPC POST to `path`, without indexing or Huffman coding.
    pub fn grpc_headers(path: &str) -> Vec<u8> {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.push(0x04); // :path, literal value
        literal(&mut block, path);
        block.push(0x01); // :authority
        literal(&mut block, "localhost");
        block.extend_from_slice(&[0x0f, 0x10]); // content-type
        literal(&mut block, "application/grpc");
        block.push(0x00); // te, a new name
        literal(&mut block, "te");
        literal(&mut block, "trailers");
        block
    }

    /// Reads frames until the peer closes, counting each kind.
    pub fn count_frames(mut tcp: std::net::TcpStream, counts: &[std::sync::atomic::AtomicUsize; 10]) {
        use std::io::Read;
        let mut header = [0u8; 9];
        while tcp.read_exact(&mut header).is_ok() {
            let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0; len];
            if tcp.read_exact(&mut payload).is_err() {
                return;
            }
            if let Some(count) = counts.get(usize::from(header[3])) {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

fn ten_thousand_unfinished_streams_leave_memory_bounded() -> crate::common::TestFuture {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::spawn(dir.path(), None, &[]);
        let pid = server.child.id();
        let probe = HealthProbe::start(server.addr);
        let before = resident_bytes(pid);

        let mut tcp = TcpStream::connect(server.addr).unwrap();
        let counts: Arc<[AtomicUsize; 10]> = Arc::new(Default::default());
        let reader = std::thread::spawn({
            let (tcp, counts) = (tcp.try_clone().unwrap(), Arc::clone(&counts));
            move || h2_frames::count_frames(tcp, &counts)
        });
        tcp.write_all(h2_frames::PREFACE).unwrap();
        tcp.write_all(&h2_frames::frame(h2_frames::SETTINGS, 0, 0, &[])).unwrap();
        tcp.write_all(&h2_frames::frame(h2_frames::SETTINGS, h2_frames::ACK, 0, &[])).unwrap();
        let headers = h2_frames::grpc_headers(TOKEN_METHOD);
        // The start of a 60,000-byte message that never comes: little enough data that all
        // 10,000 streams fit in the connection's first flow-control window.
        let partial = [0, 0, 0, 0xea, 0x60, b'x'];
        let mut peak = before;
        let mut sent = 0;
        for stream in (1..20_000u32).step_by(2) {
            let mut frames = h2_frames::frame(h2_frames::HEADERS, h2_frames::END_HEADERS, stream, &headers);
            frames.extend(h2_frames::frame(h2_frames::DATA, 0, stream, &partial));
            if tcp.write_all(&frames).is_err() {
                break; // the server has had enough of this connection
            }
            sent += 1;
            if sent % 500 == 0 {
                peak = peak.max(resident_bytes(pid));
            }
        }
        let refused = || counts[usize::from(h2_frames::RST_STREAM)].load(Ordering::Relaxed);
        // The server refuses what is past its limit, and answers health checks meanwhile.
        let deadline = Instant::now() + Duration::from_secs(10);
        let closed = || counts[usize::from(h2_frames::GOAWAY)].load(Ordering::Relaxed) > 0;
        while refused() < sent - 100 && !closed() && Instant::now() < deadline {
            peak = peak.max(resident_bytes(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (checks, slowest) = probe.finish();
        let grown = peak.saturating_sub(before);
        eprintln!(
            "{sent} streams sent, {} refused, {} GOAWAY; memory grew {} KiB; {checks} health checks, slowest {slowest:?}",
            refused(),
            counts[usize::from(h2_frames::GOAWAY)].load(Ordering::Relaxed),
            grown / 1024
        );
        assert!(grown < 64 * 1024 * 1024, "memory grew by {} MiB for one connection's streams", grown >> 20);
        assert!(checks > 0, "health was checked during the attack");
        // Streams past the limit are refused, and a peer that keeps opening them loses its
        // connection.
        let goaway = counts[usize::from(h2_frames::GOAWAY)].load(Ordering::Relaxed);
        assert!(refused() >= (sent - 100).min(50), "streams past the limit are refused: {}", refused());
        assert!(sent == 10_000 || goaway == 1, "either every stream is taken or the connection is closed");
        let _ = tcp.shutdown(std::net::Shutdown::Both);
        reader.join().unwrap();
        let answer = http(server.addr, "GET", "/healthz", &[], "").await;
        assert_eq!(answer.status, 200);
    })
}

/// Opens `count` connections that say nothing; some wait in the listen backlog.
fn open_silent(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()).collect()
}

fn thousands_of_silent_connections_neither_exhaust_descriptors_nor_lock_callers_out() -> crate::common::TestFuture {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        // From one address, as the test's own are: the per-address share is raised so the
        // connections meet the server-wide limit instead.
        let server = ServerProcess::spawn(
            dir.path(),
            None,
            &["--max-connections", "300", "--max-connections-per-address", "5000", "--idle-timeout", "1h"],
        );
        let pid = server.child.id();
        let (idle_sockets, idle_memory) = (open_sockets(pid), resident_bytes(pid));
        let probe = HealthProbe::start(server.addr);
        let silent = open_silent(server.addr, 3_000);
        let (most, memory) = (open_sockets(pid), resident_bytes(pid));
        let (checks, slowest) = probe.finish();
        let grown = memory.saturating_sub(idle_memory);
        eprintln!(
            "{} silent connections; server sockets {idle_sockets} idle, {most} under attack; memory grew {} KiB; {checks} health checks, slowest {slowest:?}",
            silent.len(),
            grown / 1024
        );
        assert!(grown < 64 << 20, "memory grew by {} MiB", grown >> 20);
        assert!(silent.len() >= 2_000, "the connections were made");
        assert!(most <= idle_sockets + 300 + 2, "at most --max-connections held: {most} sockets");
        assert!(checks > 0);
        assert_eq!(http(server.addr, "GET", "/healthz", &[], "").await.status, 200);
    })
}

fn silent_and_trickling_connections_are_closed() -> crate::common::TestFuture {
    Box::pin(async {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::spawn(dir.path(), None, &["--idle-timeout", "1s", "--request-timeout", "2s"]);
        let closed_within = |mut tcp: TcpStream, limit: Duration| {
            tcp.set_read_timeout(Some(limit)).unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest);
            assert!(started.elapsed() < limit, "closed by the server within {limit:?}");
            String::from_utf8_lossy(&rest).into_owned()
        };

        // Says nothing at all.
        closed_within(TcpStream::connect(server.addr).unwrap(), Duration::from_secs(5));

        // Starts an HTTP/1.1 body and stops.
        let mut trickle = TcpStream::connect(server.addr).unwrap();
        trickle
            .write_all(b"POST /auth/v1/token HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ngrant_type=")
            .unwrap();
        closed_within(trickle, Duration::from_secs(5));

        // Sends a byte of its body just often enough never to be idle: the request deadline ends it.
        let mut trickle = TcpStream::connect(server.addr).unwrap();
        trickle
            .write_all(b"POST /auth/v1/token HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\n")
            .unwrap();
        let writer = std::thread::spawn({
            let mut trickle = trickle.try_clone().unwrap();
            move || {
                while trickle.write_all(b"a").is_ok() {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        });
        let answer = closed_within(trickle, Duration::from_secs(6));
        assert!(answer.starts_with("HTTP/1.1 408"), "a trickled body times out: {answer:?}");
        assert!(answer.contains("within 2s"), "says what the limit is: {answer:?}");
        writer.join().unwrap();
    })
}

fn requests_beyond_the_in_flight_limit_are_refused_at_once() -> crate::common::TestFuture {
    Box::pin(async {
        use sea_orm::TransactionTrait;
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::spawn(
            dir.path(),
            None,
            &["--max-concurrent-requests", "2", "--max-connections", "8", "--idle-timeout", "1h"],
        );

        // Requests whose bodies never come hold no place: only a whole request is admitted.
        let unfinished: Vec<TcpStream> = (0..5)
            .map(|_| {
                let mut tcp = TcpStream::connect(server.addr).unwrap();
                tcp.write_all(b"POST /auth/v1/token HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\n")
                    .unwrap();
                tcp
            })
            .collect();
        assert_eq!(http(server.addr, "GET", "/.well-known/jwks.json", &[], "").await.status, 200);
        drop(unfinished);

        // Two Creates wait on a database another process holds: they fill both places.
        let minted = binary(dir.path()).args(["mint-token", "--user", "alice"]).output().unwrap();
        let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
        let database = format!("sqlite://{}", dir.path().join("personal-clients.db").display());
        let other = sea_orm::Database::connect(database).await.unwrap();
        let immediate = sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let lock = other.begin_with_options(immediate).await.unwrap();
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
        let waiting: Vec<_> = (0..2)
            .map(|n| {
                let mut api =
                    personal_clients::pb::iam::personal_client_service_client::PersonalClientServiceClient::new(
                        channel.clone(),
                    );
                let request = crate::common::authed(crate::common::create_request(&format!("waits {n}")), &token);
                tokio::spawn(async move { api.create(request).await })
            })
            .collect();
        crate::common::eventually(Duration::from_secs(5), "a third request is refused", || async {
            http(server.addr, "GET", "/.well-known/jwks.json", &[], "").await.status == 503
        })
        .await;
        let answer = http(server.addr, "GET", "/.well-known/jwks.json", &[], "").await;
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert!(
            answer.json()["error_description"].as_str().unwrap().contains("2 requests in flight"),
            "{}",
            answer.body
        );
        let mut tokens = personal_clients::pb::auth::token_service_client::TokenServiceClient::new(channel.clone());
        let status = tokens.token(personal_clients::pb::auth::TokenRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let serving =
            health.check(tonic_health::pb::HealthCheckRequest::default()).await.expect("health is always answered");
        assert_eq!(serving.into_inner().status, 1);

        // A flood of connections closes idle ones to make room, never the one the Creates wait on.
        let silent = open_silent(server.addr, 50);
        lock.rollback().await.unwrap();
        for created in waiting {
            let created = created.await.unwrap();
            assert!(
                created.as_ref().is_ok_and(|answer| answer.get_ref().client.is_some()),
                "a request in flight keeps its connection and gets its answer: {created:?}"
            );
        }
        drop(silent);
    })
}

fn a_flood_of_refused_requests_cannot_flood_the_log() -> crate::common::TestFuture {
    Box::pin(async {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut child = binary(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--exchange-rate-per-source", "off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read the log as it comes, so a server writing too much is never held up by the pipe.
        let (lines, log) = std::sync::mpsc::channel::<String>();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).try_for_each(|line| lines.send(line)));
        let addr: SocketAddr = loop {
            let line = log.recv().expect("the server logs that it is serving");
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
            if entry["fields"]["message"] == "serving" {
                break entry["fields"]["address"].as_str().unwrap().parse().unwrap();
            }
        };

        let started = Instant::now();
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..2_000 {
            let mut api = personal_clients::pb::iam::personal_client_service_client::PersonalClientServiceClient::new(
                channel.clone(),
            );
            calls.spawn(async move {
                let mut request =
                    tonic::Request::new(personal_clients::pb::iam::PersonalClientServiceListRequest::default());
                request.metadata_mut().insert("authorization", format!("Bearer forged-{n}").parse().unwrap());
                api.list(request).await.unwrap_err().code()
            });
        }
        for code in calls.join_all().await {
            assert_eq!(code, tonic::Code::Unauthenticated);
        }
        for n in 0..150 {
            let refused = post_token(addr, &token_form(&format!("nobody-{n}@localhost/pcc"), "a.b.c"), &[]).await;
            assert_eq!(refused.status, 401);
        }
        let elapsed = started.elapsed();
        assert!(
            std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success()
        );
        child.wait().unwrap();
        let refusals: Vec<serde_json::Value> = log
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
            .filter(|entry| {
                let message = entry["fields"]["message"].as_str().unwrap_or_default();
                message == "request rejected: unauthenticated" || message == "token exchange refused"
            })
            .collect();
        let budget = 100 + 20 * usize::try_from(elapsed.as_secs()).unwrap() + 20;
        eprintln!("2,150 refused requests in {elapsed:?} logged {} lines", refusals.len());
        assert!(refusals.len() <= budget, "{} refusal lines for 2,150 refusals in {elapsed:?}", refusals.len());
        assert!(
            refusals.iter().any(|entry| entry["fields"]["left_out"].as_u64().is_some_and(|n| n > 0)),
            "a line says how many were left out"
        );
    })
}
