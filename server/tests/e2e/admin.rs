//! Admin watch, stats, disconnect and metrics.

use hrrt_server::auth::Role;
use serde_json::json;

use crate::harness::*;

async fn admin(server: &Server, orgs: &str, extra: &str) -> Client {
    server
        .connect_query(&format!(
            "token={}&orgs={orgs}{extra}",
            token("root", "1", Role::Admin)
        ))
        .await
}

#[tokio::test]
async fn admin_watches_listed_orgs_only() {
    let server = Server::start().await;
    let mut watcher = admin(&server, "7,9", "").await;
    assert_eq!(
        watcher.connected["payload"]["positions"],
        json!({"org:7": 0, "org:9": 0})
    );
    server.publish_org("8", "entity.created", json!({})).await;
    server
        .publish(json!({"type": "share.created", "user_id": "5"}))
        .await;
    server
        .publish_org("9", "entity.created", json!({"n": 9}))
        .await;
    server
        .publish_org("7", "entity.created", json!({"n": 7}))
        .await;
    assert_eq!(watcher.next_event().await["channel"], "org:9");
    assert_eq!(watcher.next_event().await["channel"], "org:7");
}

#[tokio::test]
async fn admin_star_watches_every_channel_and_can_resume() {
    let server = Server::start().await;
    let mut watcher = admin(&server, "*", "").await;
    server.publish_org("8", "entity.created", json!({})).await;
    server
        .publish(json!({"type": "share.created", "user_id": "5"}))
        .await;
    assert_eq!(watcher.next_event().await["channel"], "org:8");
    assert_eq!(watcher.next_event().await["channel"], "user:5");
    let epoch = watcher.connected["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(watcher);
    server.publish_org("8", "entity.updated", json!({})).await;
    let mut again = admin(&server, "*", &format!("&since=org:8@1&epoch={epoch}")).await;
    assert_eq!(again.position("org:8"), 2);
    let e = again.next_event().await;
    assert_eq!(
        (e["channel"].as_str(), e["seq"].as_u64()),
        (Some("org:8"), Some(2))
    );
    server.publish_org("8", "entity.deleted", json!({})).await;
    assert_eq!(again.next_event().await["seq"], 3);
}

#[tokio::test]
async fn only_admins_may_watch() {
    let server = Server::start().await;
    let mut user = server
        .open(&format!("token={}&orgs=7", token("1", "7", Role::User)))
        .await;
    assert_eq!(user.expect_close_now().await, (1008, "forbidden".into()));
    let mut bad = server
        .open(&format!("token={}&orgs=", token("1", "7", Role::Admin)))
        .await;
    assert_eq!(bad.expect_close_now().await, (1008, "invalid orgs".into()));
}

#[tokio::test]
async fn disconnect_closes_every_tab_of_the_user_and_no_one_else() {
    let server = Server::start().await;
    let mut tab1 = server.connect("42", "7").await;
    let mut tab2 = server.connect("42", "7").await;
    let mut colleague = server.connect("43", "7").await;
    let service = service_token();
    let (status, body) = server
        .post_json(
            "/api/disconnect",
            Some(&service),
            json!({"user_id": 42, "reason": "access revoked"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"closed": 2})));
    assert_eq!(tab1.expect_close().await, (1008, "access revoked".into()));
    assert_eq!(tab2.expect_close().await, (1008, "access revoked".into()));
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(colleague.next_event().await["seq"], seq);

    let (status, _) = server
        .post_json(
            "/api/disconnect",
            Some(&token("1", "7", Role::User)),
            json!({"user_id": 43}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .post_json("/api/disconnect", Some(&service), json!({"user": 43}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stats_count_what_happened() {
    let server = Server::start().await;
    let mut a = server.connect("1", "7").await;
    let mut b = server.connect("2", "7").await;
    let _b2 = server.connect("2", "7").await;
    let _c = server.connect("3", "8").await;
    // A watcher is counted apart: not as a connection of its org, nor a user.
    let _watch = admin(&server, "*", "").await;
    server.publish_org("7", "entity.created", json!({})).await;
    server.publish_org("7", "entity.created", json!({})).await;
    a.next_event().await;
    b.next_event().await;
    let (status, stats) = server.get("/api/stats", Some(&service_token())).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["connections"],
        json!({"total": 5, "by_org": {"7": 3, "8": 1}, "watchers": 1})
    );
    assert_eq!(stats["settings"]["token_check_interval_ms"], 60_000);
    assert_eq!(stats["users"], 3);
    assert_eq!(stats["engine"], "memory");
    assert_eq!(stats["events"]["published"], json!({"entity.created": 2}));
    assert_eq!(
        stats["events"]["delivered"],
        json!({"entity.created": 8}),
        "the watcher is delivered to as well"
    );
    assert!(stats["node_id"].is_string() && stats["uptime_seconds"].is_u64());
    let (status, _) = server
        .get("/api/stats", Some(&token("1", "7", Role::User)))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let server = Server::start().await;
    let mut a = server.connect("1", "7").await;
    let _b = server.connect("2", "8").await;
    // The dashboard's watch, on org 9 (which nobody else is in).
    let _watch = admin(&server, "9", "").await;
    server.publish_org("7", "entity.created", json!({})).await;
    a.next_event().await;
    let mut refused = server.open("token=bad").await;
    refused.expect_close_now().await;

    let text = server.metrics().await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("hrrt_connections", None), Some(3.0));
    assert_eq!(value("hrrt_org_connections", Some(("org", "8"))), Some(1.0));
    assert_eq!(value("hrrt_watchers", None), Some(1.0));
    assert_eq!(
        value("hrrt_org_connections", Some(("org", "1"))),
        None,
        "the watcher's own org is not an org with connections"
    );
    assert_eq!(
        value(
            "hrrt_events_published_total",
            Some(("type", "entity.created"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "hrrt_events_delivered_total",
            Some(("type", "entity.created"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value("hrrt_closes_total", Some(("code", "1008"))),
        Some(1.0)
    );
    assert_eq!(value("hrrt_history_events", None), Some(1.0));
    let latency = scrape
        .samples
        .iter()
        .find(|s| s.metric == "hrrt_delivery_latency_seconds")
        .expect("latency histogram");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert!(buckets.iter().any(|b| b.count >= 1.0), "{buckets:?}");
        }
        other => panic!("latency is not a histogram: {other:?}"),
    }
}
