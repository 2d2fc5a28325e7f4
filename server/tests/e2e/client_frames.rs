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
