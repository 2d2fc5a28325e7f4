//! Hostile input and bad days on one node: every guarantee of SPEC §8
//! tried for real, against a real server, with real sockets. Waits are
//! bounded; the only timing bounds are the generous ones the SPEC names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hrrt_server::auth::{Claims, Role, mint, unix_now};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::binary::{output, server_command};
use crate::harness::*;

/// A token with exactly these claims, signed with the test secret.
pub fn raw_token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `hrrt-server` as a child process on a free port, its log collected.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    logged: Arc<Notify>,
}

impl Process {
    /// Starts the binary with `args` (a secret is added) and waits for its
    /// `listening` line. `prefix` runs it through `sh -c` (e.g. `ulimit`).
    async fn start(prefix: Option<&str>, args: &[&str]) -> Self {
        let mut all = vec!["--jwt-secret", SECRET, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = match prefix {
            None => server_command(),
            Some(prefix) => {
                let mut sh = tokio::process::Command::new("sh");
                sh.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                    .arg(crate::binary::BIN)
                    .env_remove("HRRT_JWT_SECRET")
                    .env("NO_COLOR", "1")
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                sh
            }
        };
        cmd.args(&all)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let logged = Arc::new(Notify::new());
        let (l, n) = (log.clone(), logged.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = l.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                drop(log);
                n.notify_waiters();
            }
        });
        let mut process = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            logged,
        };
        let line = process.wait_for_log("listening").await;
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap();
        process.addr = addr.parse().unwrap();
        process
    }

    /// Waits until a log line contains `needle`; answers that line.
    async fn wait_for_log(&self, needle: &str) -> String {
        within(async {
            loop {
                let notified = self.logged.notified();
                if let Some(line) = self
                    .log
                    .lock()
                    .unwrap()
                    .lines()
                    .find(|l| l.contains(needle))
                {
                    return line.to_owned();
                }
                notified.await;
            }
        })
        .await
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// CPU seconds the process has used (user + system, /proc).
    fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }
}

/// An HTTP/1.1 GET on a fresh socket; the status code.
async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer)).await.unwrap();
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until the peer closes `stream` (EOF or reset), at most until
/// `deadline`; whatever it sent first is returned.
async fn closed_by_server(stream: &mut TcpStream, deadline: tokio::time::Instant) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout_at(deadline, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept a stalled socket open");
    seen
}

// ---------------------------------------------------------------- secrets

#[tokio::test]
async fn an_empty_secret_is_refused_at_start() {
    for args in [
        &["--jwt-secret", "", "--listen", "127.0.0.1:0"][..],
        &["--dev", "--jwt-secret", "", "--listen", "127.0.0.1:0"][..],
    ] {
        let (code, stderr) = output(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("empty"), "{stderr}");
    }
    // HRRT_JWT_SECRET set but empty is the same config slip.
    let out = within(
        server_command()
            .args(["--listen", "127.0.0.1:0"])
            .env("HRRT_JWT_SECRET", "")
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("secret"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_short_secret_starts_with_a_warning() {
    let mut cmd = server_command();
    cmd.args(["--jwt-secret", "short", "--listen", "127.0.0.1:0"]);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    loop {
        let line = within(lines.next_line()).await.unwrap().unwrap();
        warned |= line.contains("shorter than 32 bytes");
        if line.contains("listening") {
            break;
        }
    }
    assert!(warned, "no warning about the short secret");
    child.kill().await.unwrap();
}

// ---------------------------------------------------------------- numbers

#[tokio::test]
async fn times_and_numbers_past_their_range_are_refused_never_a_panic() {
    let server = Server::start().await;
    let mut bystander = server.connect("b", "7").await;
    // `exp` in milliseconds: a common backend bug, and year 57000.
    let exp_ms = (unix_now() + 3600) * 1000;
    let ms_user = raw_token(json!({"sub": "1", "org_id": "7", "exp": exp_ms}));
    let mut c = server.open(&format!("token={ms_user}")).await;
    assert_eq!(c.expect_close_now().await, (1008, "invalid token".into()));
    let iat_far =
        raw_token(json!({"sub": "1", "org_id": "7", "exp": unix_now() + 60, "iat": u64::MAX}));
    let mut c = server.open(&format!("token={iat_far}")).await;
    assert_eq!(c.expect_close_now().await, (1008, "invalid token".into()));
    for exp in [json!(-1), json!(1.5e300), json!("soon"), json!(u64::MAX)] {
        let t = raw_token(json!({"sub": "1", "org_id": "7", "exp": exp}));
        let mut c = server.open(&format!("token={t}")).await;
        let (code, _) = c.expect_close_now().await;
        assert_eq!(code, 1008, "exp {exp}");
    }
    // The same through auth.refresh, on a live connection.
    let mut c = server.connect("1", "7").await;
    c.send_text(&json!({"type": "auth.refresh", "token": ms_user}).to_string())
        .await;
    assert_eq!(c.expect_close().await, (1008, "invalid token".into()));
    // And as a publisher.
    let ms_service = raw_token(json!({"sub": "backend", "role": "service", "exp": exp_ms}));
    let (status, body) = server
        .publish_as(
            Some(&ms_service),
            json!({"type": "entity.created", "org_id": "7"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // A number JSON's syntax allows but no client can read back (found by
    // the publish_body fuzz target): refused, not forwarded.
    let (status, body) = server
        .post_raw(
            Some(&service_token()),
            r#"{"type":"entity.created","org_id":"7","payload":{"id":1e999}}"#.to_owned(),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_event")),
        "{body}"
    );

    // Cursors at and past u64.
    let q = format!(
        "token={}&since=org:7@{}",
        token("2", "7", Role::User),
        u64::MAX
    );
    let mut c = server.connect_query(&q).await;
    let resync = c.next_event().await;
    assert_eq!(resync["payload"]["reason"], "position_ahead", "{resync}");
    let q = format!(
        "token={}&since=org:7@99999999999999999999999",
        token("2", "7", Role::User)
    );
    let mut c = server.open(&q).await;
    assert_eq!(c.expect_close_now().await, (1008, "invalid since".into()));

    // History numbers.
    let service = service_token();
    let max = u64::MAX;
    let (status, _) = server
        .get(
            &format!("/api/history?channel=org:7&since={max}&limit={max}"),
            Some(&service),
        )
        .await;
    assert_eq!(status, 200);
    for query in [
        "since=-1",
        "limit=-1",
        "since=1e3",
        "limit=99999999999999999999999",
    ] {
        let (status, body) = server
            .get(
                &format!("/api/history?channel=org:7&{query}"),
                Some(&service),
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }

    // Nobody else noticed.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(bystander.next_event().await["seq"], seq);
}

#[tokio::test]
async fn durations_past_a_century_are_flag_errors() {
    for (flag, value) in [
        ("--ping-interval", "200y"),
        ("--shutdown-grace", "99999999999999999999s"),
        ("--handshake-timeout", "101y"),
        ("--revocation-ttl", "18446744073709551615s"),
    ] {
        let (code, stderr) = output(&["--jwt-secret", "s", flag, value]).await;
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

// ---------------------------------------------------------- stalled peers

#[tokio::test]
async fn a_thousand_stalled_sockets_are_closed_while_everyone_else_is_served() {
    // SPEC §8's figure.
    const STALLED: usize = 1000;
    let _ = rlimit::increase_nofile_limit(4 * STALLED as u64 + 256);
    let timeout = Duration::from_secs(1);
    let server = Server::with(|c| c.handshake_timeout = timeout).await;
    let parts: [&[u8]; 3] = [
        b"G",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        b"GET /ws?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
    ];
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        within(stream.write_all(parts[i % parts.len()]))
            .await
            .unwrap();
        stalled.push(stream);
        // Let the server (same runtime) accept as we go: the test's
        // listener has tokio's default backlog of 1,024.
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // A request whose head arrived but whose body stalls.
    let mut half_body = within(TcpStream::connect(server.addr)).await.unwrap();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":",
        service_token()
    );
    within(half_body.write_all(head.as_bytes())).await.unwrap();
    // A keep-alive connection that answered one request and then idles.
    let mut idle = within(TcpStream::connect(server.addr)).await.unwrap();
    within(idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut first = [0u8; 12];
    within(idle.read_exact(&mut first)).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let all_sent = tokio::time::Instant::now();

    // Meanwhile health, publishing and new WebSockets are served as usual.
    assert_eq!(http_status(server.addr, "/healthz").await, 200);
    let mut fresh = server.connect("1", "7").await;
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(fresh.next_event().await["seq"], seq);

    // Every stalled socket is closed within the timeout + 1 s.
    let deadline = all_sent + timeout + Duration::from_secs(1);
    for stream in &mut stalled {
        closed_by_server(stream, deadline).await;
    }
    let answer = closed_by_server(&mut half_body, deadline).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    closed_by_server(&mut idle, deadline).await;
    // The WebSocket that was set up in time stays.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(fresh.next_event().await["seq"], seq);
}

#[tokio::test]
async fn shutdown_is_bounded_whatever_the_clients_do() {
    let grace = Duration::from_secs(1);
    let process = Process::start(
        None,
        &["--shutdown-grace", "1s", "--handshake-timeout", "60s"],
    )
    .await;
    let addr = process.addr;
    // One byte of a request head, half a body, and a WebSocket peer that
    // never reads nor answers the close.
    let mut one_byte = TcpStream::connect(addr).await.unwrap();
    one_byte.write_all(b"G").await.unwrap();
    let mut half_body = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 100\r\n\r\n{{",
        service_token()
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    let _silent =
        SilentClient::connect(addr, &format!("token={}", token("1", "7", Role::User))).await;
    let mut process = process;
    process.sigterm();
    let signalled = Instant::now();
    let status = tokio::time::timeout(grace + Duration::from_secs(2), process.child.wait())
        .await
        .expect("the server did not exit within --shutdown-grace + 2 s")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", process.log());
    assert!(signalled.elapsed() < grace + Duration::from_secs(2));
}

#[tokio::test]
async fn running_out_of_file_descriptors_pauses_accept_and_logs_once() {
    let process = Process::start(Some("ulimit -n 64"), &["--handshake-timeout", "60s"]).await;
    // Each of these holds one of the server's 64 descriptors until closed.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(process.addr).await.unwrap());
    }
    process.wait_for_log("out of file descriptors").await;
    // Paused, not spinning: far less than a core while exhausted.
    let before = process.cpu_seconds();
    let mut probe = TcpStream::connect(process.addr).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = process.cpu_seconds() - before;
    assert!(used < 0.5, "the accept loop used {used} s of CPU in 1 s");
    // Freed sockets let it go on; the waiting request is answered.
    drop(held);
    let mut answer = Vec::new();
    within(probe.read_to_end(&mut answer)).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    process.wait_for_log("accepting connections again").await;
    assert_eq!(http_status(process.addr, "/healthz").await, 200);
    assert_eq!(
        process.log().matches("out of file descriptors").count(),
        1,
        "{}",
        process.log()
    );
}

// ------------------------------------------------- read while writing

/// Publishes `n` events of about 1 KiB to org 7, in batches.
async fn publish_backlog(server: &Server, n: u64) {
    let text = "x".repeat(1000);
    let mut left = n;
    while left > 0 {
        let batch = left.min(500);
        let events: Vec<Value> = (0..batch)
            .map(|_| json!({"type": "chat.message", "org_id": "7", "payload": {"text": text}}))
            .collect();
        let (status, body) = server.publish(Value::Array(events)).await;
        assert_eq!(status, 200, "{body}");
        left -= batch;
    }
}

/// A server with room for a large backlog, quick pings and token checks.
async fn streaming_server() -> Server {
    Server::with(|c| {
        c.ping_interval = Duration::from_secs(1);
        c.token_check_interval = Duration::from_millis(100);
        c.send_queue = 100_000;
        c.send_queue_bytes = 64 << 20;
    })
    .await
}

#[tokio::test]
async fn a_client_behind_a_stream_refreshes_answers_pings_and_stays() {
    const EVENTS: u64 = 3000;
    let server = streaming_server().await;
    let short = mint(SECRET, &Claims::new("1", Some("7"), Role::User, 2)).unwrap();
    let expires = unix_now() + 2;
    let mut client = server
        .open_with_small_buffer(&format!("token={short}"))
        .await;
    assert_eq!(client.next_json().await["type"], "connected");
    publish_backlog(&server, EVENTS).await;
    let long = mint(SECRET, &Claims::new("1", Some("7"), Role::User, 3600)).unwrap();
    client
        .send_text(&json!({"type": "auth.refresh", "token": long}).to_string())
        .await;
    // The client reads the backlog at its own pace (a frame, then 1 ms):
    // the server has events queued for it the whole time, through several
    // ping intervals and past the first token's expiry.
    let mut refreshed_after = None;
    let mut pings = 0;
    let mut last = 0;
    while last < EVENTS {
        let frame = client.next_json().await;
        match frame["type"].as_str().unwrap() {
            "auth.refreshed" => refreshed_after = Some(last),
            "ping" => pings += 1,
            "chat.message" => {
                let seq = frame["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1);
                last = seq;
            }
            other => panic!("unexpected {other}: {frame}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(unix_now() > expires, "the run must outlast the first token");
    assert!(pings >= 2, "only {pings} pings during the run");
    let refreshed_after = refreshed_after.expect("no auth.refreshed");
    assert!(
        refreshed_after < EVENTS / 2,
        "auth.refreshed came after {refreshed_after} of {EVENTS} events: the refresh waited for the queue"
    );
    // Still open, still live.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(client.next_event().await["seq"], seq);
}

#[tokio::test]
async fn a_client_that_floods_pings_and_never_reads_is_throttled_not_buffered() {
    // Every Ping is answered with a Pong, which waits to be written to a
    // client that reads nothing. The server stops reading once a few KiB
    // of answers wait (session/live.rs, MAX_CONTROL), so the flood backs up
    // into the client's socket instead of the server's memory.
    const LIMIT: usize = 64 << 20;
    let server = Server::start().await;
    let mut flooder = SilentClient::connect(
        server.addr,
        &format!("token={}", token("1", "7", Role::User)),
    )
    .await;
    // Masked Pings without payload (RFC 6455 §5.3, §5.5.2).
    let ping = [0x89, 0x80, 0x12, 0x34, 0x56, 0x78];
    let chunk: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let written = flooder.flood(&chunk, LIMIT).await;
    assert!(
        written < LIMIT,
        "the server read {written} bytes of Pings from a client that reads nothing"
    );
    // Nobody else is disturbed.
    let mut other = server.connect("2", "7").await;
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(other.next_event().await["seq"], seq);
    let (status, _) = server.get("/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_close_frame_is_answered_while_events_stream() {
    const EVENTS: u64 = 3000;
    let server = streaming_server().await;
    let mut client = server
        .open_with_small_buffer(&format!("token={}", token("1", "7", Role::User)))
        .await;
    assert_eq!(client.next_json().await["type"], "connected");
    publish_backlog(&server, EVENTS).await;
    for _ in 0..10 {
        client.next_event().await;
    }
    within(client.ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))))
    .await
    .unwrap();
    // What was already on its way still arrives, then the server's answer.
    let mut after = 0;
    let code = loop {
        match within(futures_util::StreamExt::next(&mut client.ws)).await {
            Some(Ok(Message::Text(_))) => after += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break None,
        }
    };
    assert_eq!(code, Some(1000));
    assert!(
        after < EVENTS / 2,
        "{after} events came after the close: it waited for the queue"
    );
    let (_, stats) = server.get("/api/stats", Some(&service_token())).await;
    assert_eq!(stats["closes"]["1000"], 1, "{stats}");
}

// ------------------------------------------------------- bounded memory

#[tokio::test]
async fn a_slow_consumer_is_bounded_by_bytes_not_only_frames() {
    const EVENTS: u64 = 40;
    let server = Server::with(|c| c.send_queue_bytes = 256 << 10).await;
    let mut slow = server
        .open_with_small_buffer(&format!("token={}", token("9", "7", Role::User)))
        .await;
    let connected = slow.next_json().await;
    let epoch = connected["payload"]["epoch"].as_str().unwrap().to_owned();
    let mut fast = server.connect("1", "7").await;
    let reader = tokio::spawn(async move {
        for seq in 1..=EVENTS {
            assert_eq!(fast.next_event().await["seq"], seq);
        }
    });
    // 40 frames is far below --send-queue (1024), but 2.4 MB is far above
    // --send-queue-bytes.
    let big = "x".repeat(60_000);
    for _ in 0..EVENTS {
        server
            .publish_org("7", "chat.message", json!({"text": big}))
            .await;
    }
    within(reader).await.unwrap();
    let (code, reason, last) = slow.read_in_order_until_close(0).await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    assert!(last < EVENTS);
    let (_, stats) = server.get("/api/stats", Some(&service_token())).await;
    assert_eq!(stats["slow_consumer_closes"], 1);
    // It resumes and gets the rest, page by page.
    let q = format!(
        "token={}&since=org:7@{last}&epoch={epoch}",
        token("9", "7", Role::User)
    );
    let mut again = server.connect_query(&q).await;
    for seq in last + 1..=EVENTS {
        assert_eq!(again.next_event().await["seq"], seq);
    }
}

#[tokio::test]
async fn a_resume_streams_a_long_history_in_pages_then_goes_live() {
    const EVENTS: u64 = 300;
    // One event per replay page, and a live queue of 4 frames: the replay
    // is neither one burst nor bounded by the live queue.
    let server = Server::with(|c| {
        c.max_message_bytes = 16 << 10;
        c.send_queue_bytes = (16 << 10) + 1024;
        c.send_queue = 4;
    })
    .await;
    let first = server.connect("1", "7").await;
    let epoch = first.connected["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(first);
    let text = "y".repeat(8000);
    for _ in 0..EVENTS {
        server
            .publish_org("7", "chat.message", json!({"text": text}))
            .await;
    }
    let q = format!(
        "token={}&since=org:7@0&epoch={epoch}",
        token("1", "7", Role::User)
    );
    let mut again = server.connect_query(&q).await;
    assert_eq!(again.position("org:7"), EVENTS);
    let live = server.publish_org("7", "entity.created", json!({})).await;
    for seq in 1..=EVENTS {
        assert_eq!(again.next_event().await["seq"], seq);
    }
    assert_eq!(again.next_event().await["seq"], live);
}

#[tokio::test]
async fn history_expires_by_itself_and_an_unused_channel_is_freed() {
    let ttl = Duration::from_millis(300);
    let server = Server::with(|c| c.history_ttl = ttl).await;
    let service = service_token();
    for _ in 0..3 {
        server.publish_org("9", "entity.created", json!({})).await;
    }
    let published = Instant::now();
    let (_, stats) = server.get("/api/stats", Some(&service)).await;
    assert_eq!(stats["history_events"], 3);
    // Nobody publishes to or reads org 9 again: the sweep alone must drop
    // the events, at most 2 s after they outlived the ttl.
    loop {
        let (_, stats) = server.get("/api/stats", Some(&service)).await;
        if stats["history_events"] == 0 {
            break;
        }
        assert!(
            published.elapsed() < ttl + Duration::from_secs(2),
            "history still holds {} events",
            stats["history_events"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("hrrt_history_events 0"), "{metrics}");
    // The freed channel comes back above its old seqs: an old cursor is
    // told its events are gone, and a new event does not reuse seq 1.
    let q = format!("token={}&since=org:9@1", token("u", "9", Role::User));
    let mut client = server.connect_query(&q).await;
    assert_eq!(client.position("org:9"), 3);
    let resync = client.next_event().await;
    assert_eq!(
        (
            resync["payload"]["reason"].as_str(),
            resync["payload"]["requested"].as_u64(),
            resync["payload"]["oldest"].as_u64()
        ),
        (Some("history_trimmed"), Some(1), Some(4)),
        "{resync}"
    );
    let seq = server.publish_org("9", "entity.created", json!({})).await;
    assert_eq!(seq, 4);
    assert_eq!(client.next_event().await["seq"], 4);
}

// ---------------------------------------------------------- idempotency

#[tokio::test]
async fn idempotency_keys_are_scoped_per_channel_and_never_forgotten_early() {
    let server = Server::with(|c| c.idempotency_keys = 3).await;
    let mut seven = server.connect("1", "7").await;
    let mut eight = server.connect("2", "8").await;
    let keyed = |org: &str, key: &str| json!({"type": "entity.created", "org_id": org, "payload": {"k": key}, "idempotency_key": key});
    let (_, first) = server.publish(keyed("7", "k")).await;
    // The same key on another channel is another publish.
    let (_, other) = server.publish(keyed("8", "k")).await;
    assert_eq!(
        (other["channel"].as_str(), other["seq"].as_u64()),
        (Some("org:8"), Some(1))
    );
    assert_eq!(eight.next_event().await["seq"], 1);
    // A retry answers the first answer and delivers nothing.
    let (_, retry) = server.publish(keyed("7", "k")).await;
    let mut as_first = retry.clone();
    assert_eq!(as_first["duplicate"].take(), true, "{retry}");
    as_first.as_object_mut().unwrap().remove("duplicate");
    assert_eq!(as_first, first);
    let (status, _) = server.publish(keyed("7", "a")).await;
    assert_eq!(status, 200);
    // Three keys held: a fourth is refused (nothing of the request is
    // published) rather than one forgotten early.
    let response = server
        .publish_response(json!([
            {"type": "entity.created", "org_id": "7"},
            keyed("7", "new"),
        ]))
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_table_full");
    // Known keys are still answered, and their events went out once.
    let (status, again) = server.publish(keyed("7", "k")).await;
    assert_eq!((status, &again), (200, &retry));
    let seq = server.publish_org("7", "entity.updated", json!({})).await;
    let seqs: Vec<u64> = [
        seven.next_event().await,
        seven.next_event().await,
        seven.next_event().await,
    ]
    .iter()
    .map(|e| e["seq"].as_u64().unwrap())
    .collect();
    assert_eq!(seqs, [1, 2, seq]);
    assert_eq!(seq, 3, "the refused batch published nothing");
}

// ---------------------------------------------------------- revocation

pub fn token_issued(user: &str, org: &str, iat: Option<u64>) -> String {
    let mut claims = json!({"sub": user, "org_id": org, "exp": unix_now() + 3600});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    raw_token(claims)
}

#[tokio::test]
async fn a_revoked_user_is_closed_and_its_old_tokens_refused() {
    // Without clock skew, "afterwards" is the next second (trust.rs tests
    // the skew).
    let server = Server::with(|c| {
        c.revocation_ttl = Duration::from_secs(2);
        c.clock_skew = Duration::ZERO;
    })
    .await;
    let now = unix_now();
    let old = token_issued("42", "7", Some(now - 10));
    let mut tab = server.connect_query(&format!("token={old}")).await;
    let mut bystander = server.connect("43", "7").await;
    let (status, body) = server
        .post_json(
            "/api/disconnect",
            Some(&service_token()),
            json!({"user_id": "42", "reason": "access revoked", "revoke": true}),
        )
        .await;
    assert_eq!((status, body["closed"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(tab.expect_close().await, (1008, "access revoked".into()));
    // The old token, and one without iat, are refused from now on.
    for t in [old.clone(), token_issued("42", "7", None)] {
        let mut c = server.open(&format!("token={t}")).await;
        assert_eq!(c.expect_close_now().await, (1008, "revoked".into()));
    }
    // A token minted afterwards is accepted, but refreshing it with an old
    // one is not. "Afterwards" is the second the answer names, once this
    // clock has reached it (at most a second from now without skew).
    let valid_from = humantime::parse_rfc3339(body["tokens_valid_from"].as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wait = valid_from as f64 - hrrt_server::auth::unix_now_f64();
    tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
    let fresh = token_issued("42", "7", Some(valid_from));
    let mut c = server.connect_query(&format!("token={fresh}")).await;
    c.send_text(&json!({"type": "auth.refresh", "token": old}).to_string())
        .await;
    assert_eq!(c.expect_close().await, (1008, "revoked".into()));
    // Nobody else was touched.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(bystander.next_event().await["seq"], seq);
    // After --revocation-ttl the old token works again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    server.connect_query(&format!("token={old}")).await;
}

// ------------------------------------------------------ cardinality, nodes

#[tokio::test]
async fn metrics_cardinality_is_bounded_and_nodes_lists_this_node() {
    let server = Server::start().await;
    let mut clients = Vec::new();
    for org in 0..110 {
        clients.push(server.connect(&format!("u{org}"), &format!("o{org}")).await);
    }
    for i in 0..60 {
        let (status, _) = server
            .publish(json!({"type": format!("custom.type{i}"), "org_id": "o1"}))
            .await;
        assert_eq!(status, 200);
    }
    server.publish_org("o1", "entity.created", json!({})).await;
    let metrics = server.metrics().await;
    let series = |prefix: &str| metrics.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(series("hrrt_events_published_total{"), 7, "{metrics}");
    assert_eq!(series("hrrt_events_delivered_total{"), 7, "{metrics}");
    assert_eq!(series("hrrt_org_connections{"), 100, "{metrics}");
    assert!(metrics.contains(r#"hrrt_events_published_total{type="other"} 60"#));
    // /api/stats still has every org.
    let (_, stats) = server.get("/api/stats", Some(&service_token())).await;
    assert_eq!(
        stats["connections"]["by_org"].as_object().unwrap().len(),
        110
    );

    let (status, nodes) = server.get("/api/nodes", Some(&service_token())).await;
    assert_eq!(status, 200, "{nodes}");
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node_id"], stats["node_id"]);
    assert_eq!(nodes[0]["engine"], "memory");
    assert_eq!(nodes[0]["connections"], 110);
    assert!(nodes[0]["last_seen"].is_string());
    let (status, _) = server
        .get("/api/nodes", Some(&token("1", "7", Role::User)))
        .await;
    assert_eq!(status, 403);
}

// ---------------------------------------------------------- supervision

#[tokio::test]
async fn a_background_task_that_dies_is_restarted_and_readyz_says_so() {
    let (server, state) =
        Server::with_state(|c| c.ping_interval = Duration::from_millis(100)).await;
    let mut client = server.connect("1", "7").await;
    assert!(state.tasks.kill("keepalive"));
    // /readyz answers 503 while the task is down, then 200 again.
    server.until_down_then_up().await;
    // The keep-alive runs again: pings arrive.
    let mut pings = 0;
    while pings < 2 {
        if client.next_json().await["type"] == "ping" {
            pings += 1;
        }
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("hrrt_task_restarts_total 1"), "{metrics}");
}
