//! Protection: slow consumers, caps, origins, refresh past expiry.

use std::time::{Duration, SystemTime};

use hrrt_server::auth::{Claims, Role, mint, unix_now};
use serde_json::json;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

#[tokio::test]
async fn a_slow_client_is_closed_1013_and_the_others_get_everything() {
    const EVENTS: u64 = 120;
    let server = Server::with(|c| c.send_queue = 8).await;
    let mut slow = server
        .open_with_small_buffer(&format!("token={}", token("9", "7", Role::User)))
        .await;
    let connected = slow.next_json().await;
    let epoch = connected["payload"]["epoch"].as_str().unwrap().to_owned();
    let mut fast = server.connect("1", "7").await;
    let reader = tokio::spawn(async move {
        for seq in 1..=EVENTS {
            let e = fast.next_event().await;
            assert_eq!(e["seq"], seq);
        }
    });
    let big = "x".repeat(32 * 1024);
    for _ in 0..EVENTS {
        server
            .publish_org("7", "chat.message", json!({"text": big}))
            .await;
    }
    within(reader).await.unwrap();

    // The slow client now reads what reached it, then the close.
    let (code, reason, last_seq) = slow.read_in_order_until_close(0).await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    assert!(
        last_seq < EVENTS,
        "the slow client was closed before the end"
    );

    // It resumes and loses nothing still in history.
    let q = format!(
        "token={}&since=org:7@{last_seq}&epoch={epoch}",
        token("9", "7", Role::User)
    );
    let mut again = server.connect_query(&q).await;
    for seq in last_seq + 1..=EVENTS {
        assert_eq!(again.next_event().await["seq"], seq);
    }
    let (_, stats) = server.get("/api/stats", Some(&service_token())).await;
    assert_eq!(stats["slow_consumer_closes"], 1);
}

#[tokio::test]
async fn refresh_keeps_a_connection_past_its_first_expiry() {
    let server = Server::with(|c| {
        c.token_check_interval = Duration::from_millis(100);
        c.ping_interval = Duration::from_millis(200);
    })
    .await;
    let short = mint(SECRET, &Claims::new("1", Some("7"), Role::User, 2)).unwrap();
    let first_exp = unix_now() + 2;
    let mut client = server.connect_query(&format!("token={short}")).await;
    let long = mint(SECRET, &Claims::new("1", Some("7"), Role::User, 3600)).unwrap();
    client
        .send_text(&json!({"type": "auth.refresh", "token": long}).to_string())
        .await;
    assert_eq!(client.next_event().await["type"], "auth.refreshed");
    // Wait on the server's own pings until one is stamped well past the
    // first expiry (several token checks later).
    let deadline =
        SystemTime::UNIX_EPOCH + Duration::from_secs(first_exp) + Duration::from_millis(500);
    loop {
        let frame = client.next_json().await;
        assert_eq!(frame["type"], "ping", "{frame}");
        let stamp = humantime::parse_rfc3339(frame["timestamp"].as_str().unwrap()).unwrap();
        if stamp > deadline {
            break;
        }
    }
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(client.next_event().await["seq"], seq);
}

#[tokio::test]
async fn connection_caps_close_1013_and_disturb_nobody() {
    let server = Server::with(|c| {
        c.max_connections = 3;
        c.max_connections_per_user = 2;
    })
    .await;
    let mut a1 = server.connect("a", "7").await;
    let _a2 = server.connect("a", "7").await;
    let mut a3 = server
        .open(&format!("token={}", token("a", "7", Role::User)))
        .await;
    assert_eq!(
        a3.expect_close_now().await,
        (1013, "connection limit".into())
    );
    let _b1 = server.connect("b", "7").await;
    let mut c1 = server
        .open(&format!("token={}", token("c", "7", Role::User)))
        .await;
    assert_eq!(
        c1.expect_close_now().await,
        (1013, "connection limit".into())
    );
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(a1.next_event().await["seq"], seq);
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_before_upgrade() {
    let server = Server::with(|c| c.allowed_origins = vec!["https://hr.example.com".into()]).await;
    let query = format!("token={}", token("1", "7", Role::User));
    let handshake = |origin: Option<&'static str>| {
        let mut request = server.ws_url(&query).into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    match within(handshake(Some("https://evil.example"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(
        within(handshake(Some("https://hr.example.com")))
            .await
            .is_ok()
    );
    assert!(
        within(handshake(None)).await.is_ok(),
        "non-browser clients send no Origin"
    );
}

#[tokio::test]
async fn binary_frames_get_an_error_frame() {
    let server = Server::start().await;
    let mut client = server.connect("1", "7").await;
    use futures_util::SinkExt;
    within(
        client
            .ws
            .send(tokio_tungstenite::tungstenite::Message::binary(vec![
                1, 2, 3,
            ])),
    )
    .await
    .unwrap();
    let e = client.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["payload"]["code"].as_str()),
        (Some("error"), Some("bad_message"))
    );
}
