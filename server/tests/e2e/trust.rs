//! Trust at the edges: tokens whose clocks lie, revocations that cannot
//! be dodged, sockets nobody reads, handshakes that do not hold.

use std::time::Duration;

use hrrt_server::auth::{unix_now, unix_now_f64};
use serde_json::json;

use crate::harness::*;
use crate::hostile::{raw_token, token_issued};

const INVALID: (u16, &str) = (1008, "invalid token");

#[tokio::test]
async fn a_token_issued_in_the_future_is_invalid_everywhere() {
    let server = Server::start().await;
    let now = unix_now();
    // Past the default 5 s skew: on /ws by iat and by nbf.
    for claims in [
        json!({"sub": "42", "org_id": "7", "exp": now + 7200, "iat": now + 3600}),
        json!({"sub": "42", "org_id": "7", "exp": now + 7200, "nbf": now + 3600}),
    ] {
        let mut c = server.open(&format!("token={}", raw_token(claims))).await;
        assert_eq!(c.expect_close_now().await, (INVALID.0, INVALID.1.into()));
    }
    // In auth.refresh.
    let mut c = server.connect("42", "7").await;
    let ahead = token_issued("42", "7", Some(now + 3600));
    c.send_text(&json!({"type": "auth.refresh", "token": ahead}).to_string())
        .await;
    assert_eq!(c.expect_close().await, (INVALID.0, INVALID.1.into()));
    // Over HTTP: 401, naming the clock.
    let service = raw_token(
        json!({"sub": "backend", "role": "service", "exp": now + 7200, "iat": now + 3600}),
    );
    let (status, body) = server
        .publish_as(
            Some(&service),
            json!({"type": "entity.created", "org_id": "7"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--clock-skew"), "{message}");
    // Within the skew, and with the clock behind: accepted.
    for iat in [now + 3, now - 60] {
        server
            .connect_query(&format!("token={}", token_issued("42", "7", Some(iat))))
            .await;
    }
}

#[tokio::test]
async fn numeric_dates_with_a_fraction_are_accepted_and_strings_are_not() {
    let server = Server::start().await;
    let now = unix_now_f64();
    let fraction = raw_token(
        json!({"sub": "42", "org_id": "7", "exp": now + 100.5, "iat": now - 0.5, "nbf": now - 1.25}),
    );
    let c = server.connect_query(&format!("token={fraction}")).await;
    assert!(c.connected["payload"]["expires_at"].is_string());
    let service = raw_token(json!({"sub": "backend", "role": "service", "exp": now + 100.5}));
    let (status, body) = server
        .publish_as(
            Some(&service),
            json!({"type": "entity.created", "org_id": "7"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let string =
        raw_token(json!({"sub": "42", "org_id": "7", "exp": (now as u64 + 100).to_string()}));
    let mut c = server.open(&format!("token={string}")).await;
    assert_eq!(c.expect_close_now().await, (INVALID.0, INVALID.1.into()));
}

#[tokio::test]
async fn a_revoke_refuses_tokens_up_to_the_skew_ahead_and_says_from_when_tokens_are_valid() {
    let server = Server::start().await;
    let now = unix_now();
    // Minted on a clock 3 s ahead, just before the revoke: valid until then.
    let ahead = token_issued("42", "7", Some(now + 3));
    let mut tab = server.connect_query(&format!("token={ahead}")).await;
    let (status, body) = server
        .post_json(
            "/api/disconnect",
            Some(&service_token()),
            json!({"user_id": "42", "revoke": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(tab.expect_close().await, (1008, "disconnected".into()));
    let valid_from = humantime::parse_rfc3339(body["tokens_valid_from"].as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The first whole second after the revocation plus the 5 s skew.
    assert!(
        (now + 6..=unix_now() + 6).contains(&valid_from),
        "{valid_from} for a revoke at {now}"
    );
    for iat in [Some(now + 3), Some(valid_from - 1), None] {
        let mut c = server
            .open(&format!("token={}", token_issued("42", "7", iat)))
            .await;
        assert_eq!(
            c.expect_close_now().await,
            (1008, "revoked".into()),
            "{iat:?}"
        );
    }
    // A token issued at `tokens_valid_from` is accepted once it is within
    // the skew of this clock (at most ~1 s from now).
    let wait = (valid_from as f64 - 5.0 - unix_now_f64()).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    server
        .connect_query(&format!(
            "token={}",
            token_issued("42", "7", Some(valid_from))
        ))
        .await;
    // The answer of a plain disconnect has no such field.
    let (_, body) = server
        .post_json(
            "/api/disconnect",
            Some(&service_token()),
            json!({"user_id": "42"}),
        )
        .await;
    assert!(body.get("tokens_valid_from").is_none(), "{body}");
}

#[tokio::test]
async fn an_upgrade_whose_key_is_not_16_bytes_of_base64_is_refused_with_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start().await;
    let token = token("42", "7", hrrt_server::auth::Role::User);
    for key in [
        "",
        "x",
        "not base64 at all!!!!!==",
        "dGhlIHNhbXBsZSBub25jZQ",
    ] {
        let mut tcp = within(tokio::net::TcpStream::connect(server.addr))
            .await
            .unwrap();
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        within(tcp.read_to_end(&mut answer)).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{key:?}: {answer}");
        assert!(answer.contains("Sec-WebSocket-Key"), "{answer}");
    }
}

/// `hrrt_write_timeouts_total` of `kind`, as `/metrics` has it now.
async fn write_timeouts(server: &Server, kind: &str) -> u64 {
    let text = server.metrics().await;
    let prefix = format!("hrrt_write_timeouts_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls until `hrrt_write_timeouts_total{kind}` reaches `n` (bounded by
/// `within`).
async fn until_write_timeouts(server: &Server, kind: &str, n: u64) {
    within(async {
        while write_timeouts(server, kind).await < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A socket with a 4 KiB receive buffer: the server's writes stall as
/// soon as it stops reading.
async fn small_buffer_socket(server: &Server) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    within(socket.connect(server.addr)).await.unwrap()
}

/// Reads what is left until the server has closed the socket (EOF or a
/// reset); a socket still held open fails the test by `within`.
async fn until_closed(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 << 10];
    within(async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn http_clients_that_send_requests_and_never_read_are_closed_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = Server::with(|c| c.write_timeout = Duration::from_secs(1)).await;
    let request = "GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut tcp = small_buffer_socket(&server).await;
        within(tcp.write_all(request.as_bytes())).await.unwrap();
        held.push(tcp);
    }
    until_write_timeouts(&server, "http", 5).await;
    // The server has let go of every one of them, and serves meanwhile.
    for tcp in held {
        until_closed(tcp).await;
    }
    assert_eq!(server.get("/healthz", None).await.0, 200);
}

#[tokio::test]
async fn a_websocket_client_that_never_reads_is_closed_after_the_write_timeout() {
    let server = Server::with(|c| c.write_timeout = Duration::from_secs(1)).await;
    let stalled = server
        .open_with_small_buffer(&format!(
            "token={}",
            token("1", "7", hrrt_server::auth::Role::User)
        ))
        .await;
    let mut bystander = server.connect("2", "7").await;
    // Well under --send-queue-bytes: this is not a slow consumer, only a
    // socket that takes nothing. 60 KB in all: more than the stalled
    // socket's buffers take, and what any reader's socket holds while the
    // test reads it.
    let payload = json!({"text": "x".repeat(2 << 10)});
    let mut last = 0;
    for _ in 0..30 {
        last = server
            .publish_org("7", "chat.message", payload.clone())
            .await;
    }
    let mut seen = 0;
    while seen < last {
        seen = bystander.next_event().await["seq"].as_u64().unwrap();
    }
    until_write_timeouts(&server, "websocket", 1).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"hrrt_closes_total{code="1013",by="server"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("hrrt_slow_consumer_closes_total 0"),
        "{metrics}"
    );
    // The bystander is served on.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(bystander.next_event().await["seq"], seq);
    drop(stalled);
}
