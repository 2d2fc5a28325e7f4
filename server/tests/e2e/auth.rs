//! Handshake authentication: upgrade, then close 1008 with the reason.

use hrrt_server::auth::{Claims, Role, mint, unix_now};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

#[tokio::test]
async fn valid_token_gets_connected_frame_first() {
    let server = Server::start().await;
    let client = server.connect("42", "7").await;
    let p = &client.connected["payload"];
    assert_eq!(p["user_id"], "42");
    assert_eq!(p["org_id"], "7");
    assert!(p["connection_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(p["epoch"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(p["expires_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(p["positions"], json!({"org:7": 0, "user:42": 0}));
    assert!(client.connected["timestamp"].is_string());
}

#[tokio::test]
async fn integer_claims_are_normalised() {
    let server = Server::start().await;
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": 42, "org_id": 7, "exp": unix_now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let client = server.connect_query(&format!("token={t}")).await;
    assert_eq!(client.connected["payload"]["user_id"], "42");
    assert_eq!(client.connected["payload"]["org_id"], "7");
}

async fn refused(server: &Server, query: &str) -> (u16, String) {
    let mut client = server.open(query).await;
    client.expect_close_now().await
}

#[tokio::test]
async fn bad_tokens_are_closed_1008_with_reason_and_no_event() {
    let server = Server::start().await;
    assert_eq!(refused(&server, "").await, (1008, "missing token".into()));
    assert_eq!(
        refused(&server, "token=").await,
        (1008, "missing token".into())
    );
    assert_eq!(
        refused(&server, "token=abc.def.ghi").await,
        (1008, "invalid token".into())
    );
    let wrong_secret = mint(
        "another-secret",
        &Claims::new("1", Some("1"), Role::User, 60),
    )
    .unwrap();
    assert_eq!(
        refused(&server, &format!("token={wrong_secret}")).await,
        (1008, "invalid token".into())
    );
    let none_alg = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwib3JnX2lkIjoiMSIsImV4cCI6OTk5OTk5OTk5OX0.";
    assert_eq!(
        refused(&server, &format!("token={none_alg}")).await,
        (1008, "invalid token".into())
    );
    let mut expired = Claims::new("1", Some("1"), Role::User, 0);
    expired.exp = unix_now() - 10;
    let expired = mint(SECRET, &expired).unwrap();
    assert_eq!(
        refused(&server, &format!("token={expired}")).await,
        (1008, "token expired".into())
    );
    assert_eq!(
        refused(&server, &format!("token={}", service_token())).await,
        (1008, "forbidden".into())
    );
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let server = Server::start().await;
    let mut request = server.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("5", "9", Role::User))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = within(tokio_tungstenite::connect_async(request))
        .await
        .unwrap();
    use futures_util::StreamExt;
    let first = within(ws.next()).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "connected");
    assert_eq!(v["payload"]["user_id"], "5");
}

#[tokio::test]
async fn token_expiring_mid_connection_is_closed() {
    let server =
        Server::with(|c| c.token_check_interval = std::time::Duration::from_millis(100)).await;
    let t = mint(SECRET, &Claims::new("1", Some("1"), Role::User, 1)).unwrap();
    let mut client = server.connect_query(&format!("token={t}")).await;
    assert_eq!(client.expect_close().await, (1008, "token expired".into()));
}

#[tokio::test]
async fn bad_since_is_refused() {
    let server = Server::start().await;
    let q = format!("token={}&since=org:7", token("1", "7", Role::User));
    assert_eq!(refused(&server, &q).await, (1008, "invalid since".into()));
}
