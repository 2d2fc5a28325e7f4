//! The fan-out's fast path (server/src/outbox.rs): an event for a
//! connection with nothing queued is written to its socket by the fan-out
//! itself; whatever the socket does not take is finished by the session
//! before anything else goes out.

use std::time::Duration;

use futures_util::SinkExt;
use hrrt_server::auth::{Claims, Role, mint};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{SECRET, Server, token, within};

const DIRECT: &str = "hrrt_direct_writes_total";

#[tokio::test]
async fn events_to_connections_that_keep_up_are_written_by_the_fan_out() {
    const CLIENTS: usize = 3;
    const EVENTS: u64 = 20;
    let server = Server::start().await;
    let mut clients = Vec::new();
    for user in 0..CLIENTS {
        clients.push(server.connect(&user.to_string(), "7").await);
    }
    let before = server.metric(DIRECT).await;
    for n in 1..=EVENTS {
        // Events further apart than the burst gap (1 ms, outbox.rs), which
        // sends closer ones to the session to leave together.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let seq = server
            .publish_org("7", "entity.created", json!({"n": n}))
            .await;
        for client in &mut clients {
            let event = client.next_event().await;
            assert_eq!(
                (event["seq"].as_u64(), &event["payload"]["n"]),
                (Some(seq), &json!(n))
            );
        }
    }
    let direct = server.metric(DIRECT).await - before;
    let total = (CLIENTS as u64 * EVENTS) as f64;
    // Each client reads every event before the next is published, so its
    // session is idle and the fan-out writes each one. The first may still
    // meet the session just after it wrote `connected`, before it let go
    // of the socket: one per client is allowed to be queued.
    assert!(
        direct >= total - CLIENTS as f64 && direct <= total,
        "{direct} of {total} events written directly"
    );
}

#[tokio::test]
async fn a_frame_the_socket_takes_in_part_is_finished_before_anything_else() {
    const EVENTS: u64 = 6;
    let server = Server::with(|c| {
        c.ping_interval = Duration::from_secs(1);
        c.send_queue_bytes = 8 << 20;
    })
    .await;
    let short = mint(SECRET, &Claims::new("1", Some("7"), Role::User, 3600)).unwrap();
    // A 4 KiB receive buffer, and the client reads nothing for now.
    let mut client = server
        .open_with_small_buffer(&format!("token={short}"))
        .await;
    assert_eq!(client.next_json().await["type"], "connected");
    // Each frame is ~60 KB, more than the socket takes at once (16 KiB
    // unsent at most, listener.rs): the fan-out begins the first on the
    // idle socket and leaves its end to the session; the others queue.
    let big = "x".repeat(60_000);
    let mut seqs = Vec::new();
    for _ in 0..EVENTS {
        seqs.push(
            server
                .publish_org("7", "chat.message", json!({"text": big}))
                .await,
        );
    }
    let refresh = token("1", "7", Role::User);
    within(client.ws.send(Message::text(
        json!({"type": "auth.refresh", "token": refresh}).to_string(),
    )))
    .await
    .unwrap();
    // The client stalls past a ping interval: the keep-alive and the
    // answer to the refresh wait behind the frame on the wire.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Every frame arrives whole (the client's parser would fail on a cut
    // one), every event in order.
    let mut got = Vec::new();
    let mut others = Vec::new();
    while got.len() < seqs.len() {
        let frame: Value = client.next_json().await;
        match frame["type"].as_str() {
            Some("chat.message") => {
                assert_eq!(
                    frame["payload"]["text"].as_str().map(str::len),
                    Some(big.len())
                );
                got.push(frame["seq"].as_u64().unwrap());
            }
            Some(kind) => others.push(kind.to_owned()),
            None => panic!("{frame}"),
        }
    }
    assert_eq!(got, seqs);
    // Still live, and the refresh and the keep-alive went out.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    loop {
        let frame = client.next_json().await;
        match frame["type"].as_str() {
            Some("entity.created") => {
                assert_eq!(frame["seq"].as_u64(), Some(seq));
                break;
            }
            Some(kind) => others.push(kind.to_owned()),
            None => panic!("{frame}"),
        }
    }
    assert!(others.iter().any(|k| k == "auth.refreshed"), "{others:?}");
    assert!(others.iter().any(|k| k == "ping"), "{others:?}");
}

#[tokio::test]
async fn a_batch_for_the_same_connections_leaves_in_few_writes() {
    const CLIENTS: usize = 2;
    const EVENTS: usize = 20;
    let server = Server::start().await;
    let mut clients = Vec::new();
    for user in 0..CLIENTS {
        clients.push(server.connect(&user.to_string(), "7").await);
    }
    let before = server.metric(DIRECT).await;
    let batch: Vec<Value> = (0..EVENTS)
        .map(|n| json!({"type": "entity.created", "org_id": "7", "payload": {"n": n}}))
        .collect();
    let (status, answer) = server.publish(Value::Array(batch)).await;
    assert_eq!(status, 200, "{answer}");
    for client in &mut clients {
        for n in 0..EVENTS {
            let event = client.next_event().await;
            assert_eq!(event["payload"]["n"], json!(n));
            assert_eq!(event["seq"], answer[n]["seq"]);
        }
    }
    // The batch's events reach each connection within microseconds of
    // each other: the first is written directly, the rest wait for the
    // session and leave together (server/src/outbox.rs, BURST_GAP_US).
    // Written one by one they would be EVENTS per client.
    let direct = server.metric(DIRECT).await - before;
    assert!(
        direct < (CLIENTS * EVENTS / 2) as f64,
        "{direct} of {} events written directly",
        CLIENTS * EVENTS
    );
}

/// `--fanout-direct off`: every event goes through the session, none is
/// written by the fan-out, and every one still arrives in order.
#[tokio::test]
async fn with_fanout_direct_off_every_event_is_written_by_its_session() {
    let server = Server::with(|c| c.fanout_direct = hrrt_server::FanoutDirect::Off).await;
    let mut client = server.connect("1", "7").await;
    let before = server.metric(DIRECT).await;
    for n in 1..=10u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let seq = server
            .publish_org("7", "entity.created", json!({"n": n}))
            .await;
        assert_eq!(client.next_event().await["seq"].as_u64(), Some(seq));
    }
    assert_eq!(server.metric(DIRECT).await - before, 0.0);
}
