//! The dashboard's feed against a real server, drawn with ratatui's
//! TestBackend: published events show up on the rendered screen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use hrrt_cli::client::{Target, TokenSource};
use hrrt_server::Config;
use hrrt_server::auth::{Claims, Role, mint};
use hrrt_tui::{Action, App, Feed};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &str = "dash-test-secret-dash-test-secret";

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("timed out after 10 s")
}

fn screen(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(140, 30)).unwrap();
    terminal.draw(|f| f.render_widget(app, f.area())).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn the_dashboard_shows_what_is_published() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hrrt_server::run(
        listener,
        Config::with_secret(SECRET),
        std::future::pending(),
    ));
    let url = format!("http://{addr}");
    let target = Target::parse(&url).unwrap();
    let tokens = TokenSource::Fixed(
        mint(SECRET, &Claims::new("ops", Some("ops"), Role::Admin, 600)).unwrap(),
    );
    let (tx, mut rx) = mpsc::channel(1000);
    tokio::spawn(hrrt_cli::commands::dash::feed(
        target,
        tokens,
        "*".into(),
        tx,
    ));

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
