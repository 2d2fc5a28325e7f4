//! Resume after a reconnect: missed events in order, then live ones, with
//! no gap and no duplicate; `resync.required` when that is impossible.

use std::sync::Arc;

use hrrt_server::auth::Role;
use serde_json::json;

use crate::harness::*;

fn resume_query(user: &str, org: &str, since: &str, epoch: &str) -> String {
    format!(
        "token={}&since={since}&epoch={epoch}",
        token(user, org, Role::User)
    )
}

#[tokio::test]
async fn missed_events_are_replayed_then_live_ones_follow() {
    let server = Server::start().await;
    let mut first = server.connect("42", "7").await;
    server
        .publish_org("7", "entity.created", json!({"n": 1}))
        .await;
    let seen = first.next_event().await;
    let epoch = first.connected["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(first);

    for n in 2..=4 {
        server
            .publish_org("7", "entity.created", json!({"n": n}))
            .await;
    }
    server
        .publish(json!({"type": "share.created", "user_id": "42", "payload": {"n": "s"}}))
        .await;

    let since = format!("org:7@{},user:42@0", seen["seq"]);
    let mut again = server
        .connect_query(&resume_query("42", "7", &since, &epoch))
        .await;
    assert_eq!(again.position("org:7"), 4);
    assert_eq!(again.position("user:42"), 1);
    let mut org_seqs = Vec::new();
    let mut user_seqs = Vec::new();
    for _ in 0..4 {
        let e = again.next_event().await;
        match e["channel"].as_str().unwrap() {
            "org:7" => org_seqs.push(e["seq"].as_u64().unwrap()),
            _ => user_seqs.push(e["seq"].as_u64().unwrap()),
        }
    }
    assert_eq!(org_seqs, [2, 3, 4]);
    assert_eq!(user_seqs, [1]);
    server
        .publish_org("7", "entity.created", json!({"n": 5}))
        .await;
    assert_eq!(again.next_event().await["seq"], 5);
}

/// A publisher keeps publishing while clients connect with a cursor in the
/// middle of the stream: each must see exactly the seqs after its cursor,
/// in order, whether they came from history or live.
#[tokio::test]
async fn resume_under_concurrent_publishing_has_no_gap_and_no_duplicate() {
    const TOTAL: u64 = 300;
    let server = Arc::new(Server::start().await);
    let epoch = server.connect("1", "7").await.connected["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..20 {
        server.publish_org("7", "entity.updated", json!({})).await;
    }
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move {
            for _ in 20..TOTAL {
                server.publish_org("7", "entity.updated", json!({})).await;
            }
        })
    };
    let mut clients = Vec::new();
    for (i, since) in [0u64, 5, 10, 15, 19].into_iter().enumerate() {
        let user = format!("u{i}");
        let q = resume_query(&user, "7", &format!("org:7@{since}"), &epoch);
        clients.push((since, server.connect_query(&q).await));
    }
    within(publisher).await.unwrap();
    for (since, mut client) in clients {
        for expected in since + 1..=TOTAL {
            let e = client.next_event().await;
            assert_eq!(e["channel"], "org:7");
            assert_eq!(e["seq"], expected, "client from {since}");
        }
    }
}

#[tokio::test]
async fn trimmed_history_sends_resync_then_what_is_left() {
    let server = Server::with(|c| c.history_size = 5).await;
    let epoch = server.connect("1", "7").await.connected["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..10 {
        server.publish_org("7", "entity.created", json!({})).await;
    }
    let mut client = server
        .connect_query(&resume_query("1", "7", "org:7@2", &epoch))
        .await;
    let resync = client.next_event().await;
    assert_eq!(resync["type"], "resync.required");
    assert_eq!(
        resync["payload"],
        json!({"channel": "org:7", "requested": 2, "oldest": 6, "reason": "history_trimmed"})
    );
    for seq in 6..=10 {
        assert_eq!(client.next_event().await["seq"], seq);
    }
}

#[tokio::test]
async fn another_epoch_sends_resync_epoch_changed_then_live_events() {
    let server = Server::start().await;
    for _ in 0..3 {
        server.publish_org("7", "entity.created", json!({})).await;
    }
    let mut client = server
        .connect_query(&resume_query("1", "7", "org:7@40,user:1@2", "an-old-epoch"))
        .await;
    assert_eq!(client.position("org:7"), 3);
    let a = client.next_event().await;
    let b = client.next_event().await;
    for (resync, channel, requested) in [(a, "org:7", 40), (b, "user:1", 2)] {
        assert_eq!(resync["type"], "resync.required");
        assert_eq!(resync["payload"]["reason"], "epoch_changed");
        assert_eq!(resync["payload"]["channel"], channel);
        assert_eq!(resync["payload"]["requested"], requested);
    }
    server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(client.next_event().await["seq"], 4);
}

#[tokio::test]
async fn cursor_ahead_of_history_sends_resync() {
    let server = Server::start().await;
    let epoch = server.connect("1", "7").await.connected["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut client = server
        .connect_query(&resume_query("1", "7", "org:7@9,org:99@1", &epoch))
        .await;
    let resync = client.next_event().await;
    assert_eq!(resync["payload"]["reason"], "position_ahead");
    // The cursor for an org this user does not read is ignored.
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(client.next_event().await["seq"], seq);
}
