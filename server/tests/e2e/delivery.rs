//! Who receives what: org events to the whole org, share events to every
//! tab of one user, nothing across orgs; the envelope format.

use serde_json::json;

use crate::harness::*;

/// Proves a client did *not* get an event: a marker published after it is
/// the next thing the client reads (one node delivers publishes in order).
async fn assert_next_is_marker(server: &Server, client: &mut Client, org: &str) {
    let seq = server.publish_org(org, "test.marker", json!({})).await;
    let next = client.next_event().await;
    assert_eq!(next["type"], "test.marker", "got {next} before the marker");
    assert_eq!(next["seq"], seq);
}

#[tokio::test]
async fn org_events_reach_every_connection_of_the_org_only() {
    let server = Server::start().await;
    let mut a = server.connect("1", "7").await;
    let mut b = server.connect("2", "7").await;
    let mut b2 = server.connect("2", "7").await;
    let mut other = server.connect("3", "8").await;
    for kind in [
        "entity.created",
        "entity.updated",
        "entity.deleted",
        "chat.message",
    ] {
        server.publish_org("7", kind, json!({"id": 1})).await;
        for client in [&mut a, &mut b, &mut b2] {
            let e = client.next_event().await;
            assert_eq!(e["type"], kind);
            assert_eq!(e["payload"], json!({"id": 1}));
            assert_eq!(e["channel"], "org:7");
        }
    }
    assert_next_is_marker(&server, &mut other, "8").await;
}

#[tokio::test]
async fn share_events_reach_every_tab_of_the_user_only() {
    let server = Server::start().await;
    let mut tab1 = server.connect("42", "7").await;
    let mut tab2 = server.connect("42", "7").await;
    let mut colleague = server.connect("43", "7").await;
    for kind in ["share.created", "share.revoked"] {
        let (status, ack) = server
            .publish(json!({"type": kind, "user_id": "42", "payload": {"share_id": 5}}))
            .await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["channel"], "user:42");
        assert_eq!(ack["recipients"], 2);
        for tab in [&mut tab1, &mut tab2] {
            let e = tab.next_event().await;
            assert_eq!(e["type"], kind);
            assert_eq!(e["channel"], "user:42");
            assert_eq!(e["payload"]["share_id"], 5);
        }
    }
    assert_next_is_marker(&server, &mut colleague, "7").await;
}

#[tokio::test]
async fn envelope_format() {
    let server = Server::start().await;
    let mut client = server.connect("42", "7").await;
    server
        .publish_org("7", "entity.created", json!({"id": 1, "name": "Ann"}))
        .await;
    server
        .publish_org("7", "entity.updated", json!({"id": 1}))
        .await;
    let e = client.next_event().await;
    let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "{e}");
    for key in ["type", "payload", "timestamp", "channel", "seq"] {
        assert!(e.get(key).is_some(), "{key} missing in {e}");
    }
    assert_eq!(e["seq"], 1);
    let ts = e["timestamp"].as_str().unwrap();
    // 2026-01-01T12:00:00.000000Z
    assert_eq!(ts.len(), 27, "{ts}");
    assert_eq!(&ts[10..11], "T");
    assert_eq!(&ts[19..20], ".");
    assert!(ts[20..26].bytes().all(|b| b.is_ascii_digit()), "{ts}");
    assert!(ts.ends_with('Z'));
    assert_eq!(client.next_event().await["seq"], 2);
}

#[tokio::test]
async fn custom_types_go_to_the_explicit_target() {
    let server = Server::start().await;
    let mut client = server.connect("42", "7").await;
    let (status, _) = server
        .publish(json!({"type": "interview.scheduled", "user_id": 42, "payload": {"at": "noon"}}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .publish(json!({"type": "vacancy.opened", "org_id": 7}))
        .await;
    assert_eq!(status, 200);
    let e = client.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["channel"].as_str()),
        (Some("interview.scheduled"), Some("user:42"))
    );
    let e = client.next_event().await;
    assert_eq!(
        (e["type"].as_str(), e["payload"].clone()),
        (Some("vacancy.opened"), json!({}))
    );
}
