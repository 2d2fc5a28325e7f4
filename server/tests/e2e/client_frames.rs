//! What clients send: refresh, keep-alive, and bad frames.

use hrrt_server::auth::{Claims, Role, mint};
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays() {
    let server = Server::start().await;
    let mut client = server.connect("1", "7").await;
    for text in [
        "not json",
        "[1,2]",
        r#"{"type":"entity.created"}"#,
        r#"{"no":"type"}"#,
    ] {
        client.send_text(text).await;
        let e = client.next_event().await;
        assert_eq!(e["type"], "error", "{text}");
        assert_eq!(e["payload"]["code"], "bad_message");
    }
    client.send_text(r#"{"type":"pong"}"#).await;
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(client.next_event().await["seq"], seq);
}

#[tokio::test]
async fn oversize_frame_is_closed_1009() {
    let server = Server::with(|c| c.max_message_bytes = 1024).await;
    let mut client = server.connect("1", "7").await;
    let mut other = server.connect("2", "7").await;
    client.send_text(&"x".repeat(4096)).await;
    assert_eq!(client.expect_close().await.0, 1009);
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(other.next_event().await["seq"], seq);
}

#[tokio::test]
async fn refresh_extends_the_session_and_a_foreign_token_closes_it() {
    let server = Server::start().await;
    let mut client = server.connect("1", "7").await;
    let fresh = mint(SECRET, &Claims::new("1", Some("7"), Role::User, 7200)).unwrap();
    client
        .send_text(&json!({"type": "auth.refresh", "token": fresh}).to_string())
        .await;
    let answer = client.next_event().await;
    assert_eq!(answer["type"], "auth.refreshed");
    assert!(answer["payload"]["expires_at"].is_string());
    let stranger = mint(SECRET, &Claims::new("2", Some("7"), Role::User, 7200)).unwrap();
    client
        .send_text(&json!({"type": "auth.refresh", "token": stranger}).to_string())
        .await;
    assert_eq!(client.expect_close().await, (1008, "forbidden".into()));
}

/// A client text frame as a client sends it: masked (RFC 6455 §5.3).
fn masked_text(text: &[u8]) -> Vec<u8> {
    assert!(text.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    let server = Server::start().await;
    let mut stream = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    // The request and a first frame in one write: the HTTP server reads
    // both, and the frame must reach the session after the upgrade.
    let mut bytes = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("1", "7", Role::User),
        server.addr
    )
    .into_bytes();
    bytes.extend(masked_text(br#"{"type":"nonsense"}"#));
    within(stream.write_all(&bytes)).await.unwrap();
    let mut read = Vec::new();
    let after_head = loop {
        let mut chunk = [0u8; 4096];
        let n = within(stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed before the handshake's answer");
        read.extend_from_slice(&chunk[..n]);
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            // "dGhlIHNhbXBsZSBub25jZQ==" is RFC 6455's own example key.
            assert!(
                head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "wrong Sec-WebSocket-Accept: {head}"
            );
            break read.split_off(end + 4);
        }
    };
    let ws = WebSocketStream::from_partially_read(
        MaybeTlsStream::Plain(stream),
        after_head,
        WsRole::Client,
        None,
    )
    .await;
    let mut client = Client {
        ws,
        connected: serde_json::Value::Null,
    };
    assert_eq!(client.next_json().await["type"], "connected");
    let answer = client.next_event().await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["payload"]["code"], "bad_message");
}
