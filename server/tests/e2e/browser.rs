//! The old front end's plain `new WebSocket('ws://…/ws?token=…')`, run in
//! Node's browser-compatible WebSocket (undici), receives events. Skipped
//! when `node` is not installed.

use std::process::Stdio;

use hrrt_server::auth::Role;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::*;

const SCRIPT: &str = r#"
const ws = new WebSocket(process.argv[1]);
ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log(data.type);
  if (data.type === 'entity.created') { console.log(JSON.stringify(data.payload)); ws.close(); }
};
ws.onerror = () => { console.log('error'); process.exit(1); };
ws.onclose = () => process.exit(0);
"#;

fn node_has_websocket() -> Option<Vec<&'static str>> {
    for flags in [&[][..], &["--experimental-websocket"][..]] {
        let ok = std::process::Command::new("node")
            .args(flags)
            .args(["-e", "if (typeof WebSocket !== 'function') process.exit(1)"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(flags.to_vec());
        }
    }
    None
}

#[tokio::test]
async fn a_plain_browser_websocket_receives_events() {
    let Some(flags) = node_has_websocket() else {
        eprintln!("skipped: no node with a WebSocket global");
        return;
    };
    let server = Server::start().await;
    let url = server.ws_url(&format!("token={}", token("42", "7", Role::User)));
    let mut child = Command::new("node")
        .args(&flags)
        .args(["-e", SCRIPT, &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        within(lines.next_line()).await.unwrap().as_deref(),
        Some("connected")
    );
    server
        .publish_org("7", "entity.created", json!({"id": 1}))
        .await;
    assert_eq!(
        within(lines.next_line()).await.unwrap().as_deref(),
        Some("entity.created")
    );
    assert_eq!(
        within(lines.next_line()).await.unwrap().as_deref(),
        Some(r#"{"id":1}"#)
    );
    assert_eq!(within(child.wait()).await.unwrap().code(), Some(0));
}
