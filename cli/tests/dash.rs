//! The dashboard's feed against a real server, drawn with ratatui's
//! TestBackend: published events show up on the rendered screen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use hrrt_cli::client::{Target, TokenSource};
use hrrt_server::auth::{Claims, Role, mint};
use hrrt_tui::{Action, App, Feed};
use serde_json::json;
use tokio::sync::mpsc;

use hrrt_testkit::{SECRET, TestServer, within};

/// The dashboard's feed of `url`, as an admin watching every org.
fn watch_everything(url: &str) -> mpsc::Receiver<Feed> {
    let target = Target::parse(url).unwrap();
    let tokens = TokenSource::Fixed(
        mint(SECRET, &Claims::new("ops", Some("ops"), Role::Admin, 600)).unwrap(),
    );
    let (tx, rx) = mpsc::channel(1000);
    tokio::spawn(hrrt_cli::commands::dash::feed(
        target,
        tokens,
        "*".into(),
        tx,
    ));
    rx
}

fn screen(app: &App) -> String {
    hrrt_tui::screen(app, 140, 30)
}

#[tokio::test]
async fn the_dashboard_shows_what_is_published() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut rx = watch_everything(&url);

    let mut app = App::new(url.clone());
    // Until the feed is connected and has stats.
    while !(app.status == hrrt_tui::ServerStatus::Connected && app.stats.is_some()) {
        let feed = within(rx.recv()).await.unwrap();
        app.update(Action::Feed(feed));
    }

    let service = mint(SECRET, &Claims::new("backend", None, Role::Service, 600)).unwrap();
    let http = hrrt_cli::client::http_client(Duration::from_secs(10)).unwrap();
    for body in [
        json!({"type": "entity.created", "org_id": "7", "payload": {"id": 1, "name": "Ann"}}),
        json!({"type": "share.created", "user_id": "42", "payload": {"share_id": 5}}),
    ] {
        let res = within(
            http.post(format!("{url}/api/events"))
                .bearer_auth(&service)
                .json(&body)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
    }
    while app.total_events < 2 {
        let feed = within(rx.recv()).await.unwrap();
        assert!(!matches!(feed, Feed::Resync(_)));
        app.update(Action::Feed(feed));
    }

    let text = screen(&app);
    assert!(text.contains("● live"), "{text}");
    assert!(
        text.contains("entity.created")
            && text.contains("org:7@1")
            && text.contains("\"name\":\"Ann\""),
        "{text}"
    );
    assert!(
        text.contains("share.created") && text.contains("user:42@1"),
        "{text}"
    );
    assert!(text.contains("engine memory"), "{text}");
    // Org 7 has a row in the orgs table, with its event counted.
    assert!(text.lines().any(|l| l.starts_with("│7 ")), "{text}");
}

#[tokio::test]
async fn the_dashboard_shows_the_cluster_and_a_node_that_left() {
    let Some(redis) = hrrt_testkit::TestRedis::start_or_skip(false).await else {
        return;
    };
    let url = redis.url();
    let watched = TestServer::with({
        let url = url.clone();
        move |c| c.redis_url = Some(url)
    })
    .await;
    let other = TestServer::with(move |c| c.redis_url = Some(url)).await;
    let other_id = other.state.node_id.clone();
    let mut rx = watch_everything(&watched.url());
    let mut app = App::new(watched.url());
    // Both nodes listed (heartbeats every 2 s; bounded by `within`).
    within(async {
        while app.nodes.values().filter(|n| !n.gone).count() < 2 {
            let feed = rx.recv().await.unwrap();
            app.update(Action::Feed(feed));
        }
    })
    .await;
    let text = screen(&app);
    assert!(
        text.contains("nodes (2 live)") && text.contains(&other_id),
        "{text}"
    );

    // The other node stops: after three silent heartbeats it is gone.
    other.stop().await.unwrap();
    hrrt_testkit::within_for(Duration::from_secs(15), async {
        while !app.nodes.get(&other_id).is_some_and(|n| n.gone) {
            let feed = rx.recv().await.unwrap();
            app.update(Action::Feed(feed));
        }
    })
    .await;
    let text = screen(&app);
    assert!(
        text.contains("nodes (1 live)") && text.contains("gone"),
        "{text}"
    );
}

/// A token the server refuses stops the feed with the reason (and `hrrt
/// dash` with exit 2) instead of reconnecting for ever.
#[tokio::test]
async fn a_refused_token_stops_the_dashboard_with_the_reason() {
    let server = TestServer::start().await;
    let target = Target::parse(&server.url()).unwrap();
    let tokens = TokenSource::Mint {
        secret: "not-the-servers-secret-not-the-servers".into(),
        user: "hrrt-dash".into(),
        org: Some("hrrt-dash".into()),
        role: Role::Admin,
        ttl: Duration::from_secs(600),
    };
    let (tx, mut rx) = mpsc::channel(1000);
    tokio::spawn(hrrt_cli::commands::dash::feed(
        target,
        tokens,
        "*".into(),
        tx,
    ));
    let mut app = App::new(server.url());
    // Bounded: a stop comes after one refused connection and one stats poll.
    for _ in 0..100 {
        let Some(feed) = within(rx.recv()).await else {
            break;
        };
        app.update(Action::Feed(feed));
        if app.should_quit {
            break;
        }
    }
    let why = app.stopped.expect("the feed stopped the dashboard");
    assert!(why.contains("--secret does not match"), "{why}");
}

/// `--org` filters every pane; a watcher is never an org; one memory node
/// has no nodes pane, also after a restart (a new node id).
#[tokio::test]
async fn one_org_one_node_and_no_phantoms() {
    let server = TestServer::start().await;
    let url = server.url();
    let (_a, _b) = (connect(&url, "1", "7").await, connect(&url, "2", "9").await);
    let mut rx = watch_everything(&url);
    let mut app = App::new(url.clone()).with_org(Some("7".into()));
    while app.stats.is_none() {
        app.update(Action::Feed(within(rx.recv()).await.unwrap()));
    }
    let stats = app.stats.clone().unwrap();
    assert_eq!(stats.by_org.keys().collect::<Vec<_>>(), ["7"]);
    assert_eq!(stats.connections, 1);
    let text = screen(&app);
    assert!(
        !text.contains("hrrt-dash") && !text.contains("ops"),
        "{text}"
    );
    // A restarted memory node answers another node id.
    let node = |id: &str| hrrt_tui::NodeSnapshot {
        node_id: id.into(),
        ..Default::default()
    };
    let now = std::time::Instant::now();
    app.on_nodes(vec![node("before")], now);
    app.on_nodes(vec![node("after")], now + Duration::from_secs(3));
    assert!(!app.is_cluster());
    assert!(!screen(&app).contains("nodes ("), "{}", screen(&app));
}

async fn connect(url: &str, user: &str, org: &str) -> hrrt_cli::client::Connection {
    let token = mint(SECRET, &Claims::new(user, Some(org), Role::User, 600)).unwrap();
    let target = Target::parse(url).unwrap();
    let mut c = hrrt_cli::client::Connection::open(&target, &token, &Default::default())
        .await
        .unwrap();
    // Registered once it has said `connected`.
    let _ = within(c.next()).await;
    c
}
