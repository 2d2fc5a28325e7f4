//! The publish API: auth, validation, batches, idempotency; history API.

use hrrt_server::auth::Role;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn publish_needs_a_service_or_admin_token() {
    let server = Server::start().await;
    let body = json!({"type": "entity.created", "org_id": "7"});
    let (status, err) = server.publish_as(None, body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "unauthorized");
    let (status, _) = server.publish_as(Some("not-a-token"), body.clone()).await;
    assert_eq!(status, 401);
    let (status, err) = server
        .publish_as(Some(&token("1", "7", Role::User)), body.clone())
        .await;
    assert_eq!(status, 403);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("service")
    );
    let (status, _) = server
        .publish_as(Some(&token("1", "7", Role::Admin)), body)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_events_are_refused_with_400() {
    let server = Server::start().await;
    let cases = [
        json!({"type": "ping", "org_id": "7"}),
        json!({"type": "connected", "org_id": "7"}),
        json!({"type": "resync.required", "org_id": "7"}),
        json!({"type": "auth.refreshed", "org_id": "7"}),
        json!({"type": "system.restart", "org_id": "7"}),
        json!({"type": "Entity.Created", "org_id": "7"}),
        json!({"type": "entity", "org_id": "7"}),
        json!({"type": "entity.created", "user_id": "7"}),
        json!({"type": "share.created", "org_id": "7"}),
        json!({"type": "entity.created"}),
        json!({"type": "custom.thing", "org_id": "7", "user_id": "1"}),
        json!({"type": "entity.created", "org_id": "a,b"}),
        json!({"type": "entity.created", "org_id": "7", "orgId": "7"}),
        json!({"type": "entity.created", "org_id": 7.5}),
        json!({"org_id": "7"}),
        json!({"type": "entity.created", "org_id": "7", "idempotency_key": "k".repeat(129)}),
        json!([]),
    ];
    for body in cases {
        let (status, err) = server.publish(body.clone()).await;
        assert_eq!(status, 400, "{body} → {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{err}"
        );
    }
    let (status, err) = server
        .post_raw(Some(&service_token()), "{\"type\": ".into())
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "bad_json");
    assert!(
        err["error"]["message"].as_str().unwrap().contains("line 1"),
        "{err}"
    );
}

#[tokio::test]
async fn oversize_payload_is_413() {
    let server = Server::with(|c| c.max_message_bytes = 1024).await;
    let (status, err) = server
        .publish(
            json!({"type": "entity.created", "org_id": "7", "payload": {"x": "y".repeat(2000)}}),
        )
        .await;
    assert_eq!(status, 413, "{err}");
}

#[tokio::test]
async fn a_batch_is_published_in_order_or_not_at_all() {
    let server = Server::start().await;
    let mut client = server.connect("1", "7").await;
    let bad_batch = json!([
        {"type": "entity.created", "org_id": "7"},
        {"type": "entity.created", "user_id": "1"},
    ]);
    let (status, err) = server.publish(bad_batch).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("event 1:"),
        "{err}"
    );
    let (_, history) = server
        .get("/api/history?channel=org:7", Some(&service_token()))
        .await;
    assert_eq!(
        history["latest"], 0,
        "nothing of the bad batch was published"
    );

    let (status, acks) = server
        .publish(json!([
            {"type": "entity.created", "org_id": "7", "payload": {"n": 1}},
            {"type": "share.created", "user_id": "1", "payload": {"n": 2}},
            {"type": "entity.updated", "org_id": "7", "payload": {"n": 3}},
        ]))
        .await;
    assert_eq!(status, 200, "{acks}");
    assert_eq!(
        acks,
        json!([
            {"channel": "org:7", "seq": 1, "recipients": 1},
            {"channel": "user:1", "seq": 1, "recipients": 1},
            {"channel": "org:7", "seq": 2, "recipients": 1},
        ])
    );
    for n in 1..=3 {
        assert_eq!(client.next_event().await["payload"]["n"], n);
    }
}

#[tokio::test]
async fn idempotency_key_makes_a_retry_safe() {
    let server = Server::start().await;
    let mut client = server.connect("1", "7").await;
    let body = json!({"type": "entity.created", "org_id": "7", "idempotency_key": "create-1"});
    let (_, first) = server.publish(body.clone()).await;
    let (status, again) = server.publish(body).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true, "{again}");
    assert!(first.get("duplicate").is_none(), "{first}");
    assert_eq!(
        (&first["channel"], &first["seq"]),
        (&again["channel"], &again["seq"])
    );
    let seq = server.publish_org("7", "test.marker", json!({})).await;
    assert_eq!(client.next_event().await["seq"], first["seq"]);
    let next = client.next_event().await;
    assert_eq!(
        (next["type"].as_str(), next["seq"].as_u64()),
        (Some("test.marker"), Some(seq))
    );
}

#[tokio::test]
async fn history_returns_retained_events_oldest_first() {
    let server = Server::with(|c| c.history_size = 3).await;
    for n in 1..=5 {
        server
            .publish_org("7", "entity.created", json!({"n": n}))
            .await;
    }
    let service = service_token();
    let (status, page) = server
        .get("/api/history?channel=org:7&since=3", Some(&service))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["oldest"], 3);
    assert_eq!(page["latest"], 5);
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(page["events"][0]["payload"]["n"], 4);
    let (_, page) = server
        .get("/api/history?channel=org:7&limit=1", Some(&service))
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["seq"], 3);
    let (status, err) = server
        .get("/api/history?channel=team:1", Some(&service))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = server.get("/api/history", Some(&service)).await;
    assert_eq!(status, 400);
    let (status, _) = server.get("/api/history?channel=org:7", None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .get(
            "/api/history?channel=org:7",
            Some(&token("1", "7", Role::User)),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn health_and_readiness_and_unknown_routes() {
    let server = Server::start().await;
    assert_eq!(server.get("/healthz", None).await.0, 200);
    let (status, ready) = server.get("/readyz", None).await;
    assert_eq!((status, ready["engine"].as_str()), (200, Some("memory")));
    let (status, err) = server.get("/nope", None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, err) = server.get("/api/events", None).await;
    assert_eq!(status, 405, "{err}");
}

#[tokio::test]
async fn publish_rate_answers_429_with_retry_after() {
    // Two events a second: the first pair uses the whole budget, and the
    // next pair would need a full second of refill.
    let server = Server::with(|c| c.publish_rate = 2).await;
    let pair = json!([
        {"type": "entity.created", "org_id": "7"},
        {"type": "entity.created", "org_id": "7"},
    ]);
    assert_eq!(server.publish(pair.clone()).await.0, 200);
    let res = within(
        http_client()
            .post(server.url("/api/events"))
            .bearer_auth(service_token())
            .json(&pair)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = within(res.json()).await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another publisher has its own budget.
    let (status, _) = server
        .publish_as(
            Some(&token("ops", "1", Role::Admin)),
            json!({"type": "entity.created", "org_id": "7"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, history) = server
        .get("/api/history?channel=org:7", Some(&service_token()))
        .await;
    assert_eq!(history["latest"], 3, "the refused pair was not published");
}

#[tokio::test]
async fn a_batch_under_one_key_is_published_once_and_answered_again() {
    let server = Server::start().await;
    let mut client = server.connect("1", "7").await;
    let body = json!({"idempotency_key": "batch-1", "events": [
        {"type": "entity.created", "org_id": "7", "payload": {"n": 1}},
        {"type": "entity.updated", "org_id": "7", "payload": {"n": 2}},
    ]});
    let (status, first) = server.publish(body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first[0]["seq"].as_u64(), first[1]["seq"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(first[0].get("duplicate").is_none(), "{first}");
    let (status, again) = server.publish(body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again[0]["seq"].as_u64(), again[1]["seq"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (&again[0]["duplicate"], &again[1]["duplicate"]),
        (&json!(true), &json!(true))
    );
    let marker = server.publish_org("7", "test.marker", json!({})).await;
    assert_eq!(marker, 3, "the retry published nothing");
    for seq in 1..=3 {
        assert_eq!(client.next_event().await["seq"], seq);
    }
    // An event whose payload has an `events` key is an event.
    let (status, one) = server
        .publish(json!({"type": "entity.created", "org_id": "7", "payload": {"events": [1, 2]}}))
        .await;
    assert_eq!((status, one["seq"].as_u64()), (200, Some(4)), "{one}");
    assert_eq!(
        client.next_event().await["payload"]["events"],
        json!([1, 2])
    );
    for bad in [
        json!({"idempotency_key": "", "events": [{"type": "entity.created", "org_id": "7"}]}),
        json!({"idempotency_key": "k", "events": []}),
        json!({"idempotency_key": "k", "events": [{"type": "entity.created", "org_id": "7"}], "x": 1}),
    ] {
        let (status, answer) = server.publish(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
}
