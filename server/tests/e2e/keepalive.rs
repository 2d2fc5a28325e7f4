//! Keep-alive: JSON ping plus WebSocket Ping each interval; a peer that
//! answers no Ping for two intervals is dropped.

use std::time::Duration;

use futures_util::StreamExt;
use hrrt_server::auth::Role;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn json_ping_and_websocket_ping_arrive_each_interval() {
    let server = Server::with(|c| c.ping_interval = Duration::from_millis(100)).await;
    let mut client = server.connect("1", "7").await;
    let (mut json_pings, mut ws_pings) = (0, 0);
    while json_pings < 3 || ws_pings < 3 {
        match within(client.ws.next()).await.unwrap().unwrap() {
            Message::Text(text) => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["type"], "ping");
                assert_eq!(v["payload"], serde_json::json!({}));
                assert!(v["timestamp"].is_string());
                json_pings += 1;
            }
            Message::Ping(_) => ws_pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // The client above answered every Ping (tungstenite does so while
    // reading), so it is still connected.
    let seq = server
        .publish_org("7", "entity.created", serde_json::json!({}))
        .await;
    assert_eq!(client.next_event().await["seq"], seq);
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let server = Server::with(|c| c.ping_interval = Duration::from_millis(100)).await;
    let mut silent = SilentClient::connect(
        server.addr,
        &format!("token={}", token("1", "7", Role::User)),
    )
    .await;
    let (code, opcodes) = silent.read_until_close().await;
    assert_eq!(code, 1001);
    // connected, then two rounds of JSON ping (text) + Ping (0x9).
    assert_eq!(opcodes, [0x1, 0x1, 0x9, 0x1, 0x9]);
}

/// At 400 ms a node spreads each ping round over four ticks, a slice of the
/// connections each: every connection still gets its pings, and one that
/// answers none is still dropped after two.
#[tokio::test]
async fn a_round_spread_over_ticks_still_pings_and_drops_every_silent_peer() {
    let server = Server::with(|c| c.ping_interval = Duration::from_millis(400)).await;
    let mut silent = Vec::new();
    for user in ["1", "2", "3", "4", "5"] {
        silent.push(
            SilentClient::connect(
                server.addr,
                &format!("token={}", token(user, "7", Role::User)),
            )
            .await,
        );
    }
    for client in &mut silent {
        let (code, opcodes) = client.read_until_close().await;
        assert_eq!(code, 1001);
        assert_eq!(opcodes, [0x1, 0x1, 0x9, 0x1, 0x9]);
    }
}
