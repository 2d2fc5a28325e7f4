//! The `hrrt-server` binary: flags, `--dev`, and signals.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_hrrt-server");

pub fn server_command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("HRRT_JWT_SECRET")
        .env_remove("HRRT_LISTEN")
        .env_remove("HRRT_REDIS_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub async fn output(args: &[&str]) -> (i32, String) {
    let out = within(server_command().args(args).output()).await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_flags_exit_2_naming_the_flag() {
    for (args, needle) in [
        (
            &["--jwt-secret", "s", "--ping-interval", "soon"][..],
            "--ping-interval",
        ),
        (
            &["--jwt-secret", "s", "--history-ttl", "0s"][..],
            "--history-ttl",
        ),
        (
            &["--jwt-secret", "s", "--send-queue", "0"][..],
            "--send-queue",
        ),
        (
            &["--jwt-secret", "s", "--listen", "nowhere"][..],
            "--listen",
        ),
        (&["--jwt-secret", "s", "--bogus"][..], "--bogus"),
        // Parses, but could never send an event of the largest size.
        (
            &["--jwt-secret", "s", "--send-queue-bytes", "2048"][..],
            "--send-queue-bytes",
        ),
    ] {
        let (code, stderr) = output(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn missing_secret_is_a_one_line_error() {
    let (code, stderr) = output(&[]).await;
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HRRT_JWT_SECRET"), "{stderr}");
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = output(&["--jwt-secret", "s", "--listen", &addr]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

/// Starts `hrrt-server --dev` on a free port, logging everything, and
/// reads its banner. The log is collected by a task until the process ends.
async fn start_dev() -> (Child, String, tokio::task::JoinHandle<String>) {
    let state = hrrt_testkit::ScratchDir::new("dev-state");
    let (child, _, ws_url, log) = start_dev_with(&state.0, &[]).await;
    (child, ws_url, log)
}

/// [`start_dev`] with its state directory (`XDG_STATE_HOME`) and more
/// flags; also answers the banner's lines up to the browser's.
async fn start_dev_with(
    state: &std::path::Path,
    extra: &[&str],
) -> (Child, Vec<String>, String, tokio::task::JoinHandle<String>) {
    let mut child = server_command()
        .args(["--dev", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "trace")
        .env("XDG_STATE_HOME", state)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    loop {
        let line = within(lines.next_line())
            .await
            .unwrap()
            .expect("banner ended early");
        banner.push(line.clone());
        if let Some(rest) = line.split("new WebSocket('").nth(1) {
            let ws_url = rest.split('\'').next().unwrap().to_owned();
            return (child, banner, ws_url, log);
        }
    }
}

fn banner_secret(banner: &[String]) -> String {
    banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("export HRRT_JWT_SECRET="))
        .expect("the banner exports the secret")
        .to_owned()
}

async fn stop(mut child: Child) {
    child.start_kill().unwrap();
    within(child.wait()).await.unwrap();
}

/// A restarted dev server keeps its secret (so a listener's token stays
/// good), in a file only its owner reads; `--new-secret` replaces it;
/// with `--jwt-secret` the banner says the secret is that one.
#[tokio::test]
async fn dev_mode_keeps_its_secret_across_restarts() {
    let state = hrrt_testkit::ScratchDir::new("dev-state");
    let (child, banner, _, _) = start_dev_with(&state.0, &[]).await;
    let first = banner_secret(&banner);
    let file = state.0.join("hrrt").join("dev-secret");
    let said = banner.join("\n");
    assert!(said.contains("a new secret, kept in"), "{said}");
    assert!(said.contains(&file.display().to_string()), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), first);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    stop(child).await;

    let (child, banner, ws_url, _) = start_dev_with(&state.0, &[]).await;
    assert_eq!(banner_secret(&banner), first);
    assert!(banner.join("\n").contains("tokens from before still work"));
    // A token of the first start's secret connects to the second.
    let token = hrrt_server::auth::mint(
        &first,
        &hrrt_server::auth::Claims::new("42", Some("7"), hrrt_server::auth::Role::User, 60),
    )
    .unwrap();
    let base = ws_url.split("token=").next().unwrap();
    let (ws, _) = within(tokio_tungstenite::connect_async(format!(
        "{base}token={token}"
    )))
    .await
    .unwrap();
    let mut client = Client {
        ws,
        connected: serde_json::Value::Null,
    };
    assert_eq!(client.next_json().await["type"], "connected");
    stop(child).await;

    let (child, banner, _, _) = start_dev_with(&state.0, &["--new-secret"]).await;
    let renewed = banner_secret(&banner);
    assert_ne!(renewed, first);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), renewed);
    stop(child).await;

    let given = "given-given-given-given-given-given";
    let (child, banner, _, _) = start_dev_with(&state.0, &["--jwt-secret", given]).await;
    let said = banner.join("\n");
    assert_eq!(banner_secret(&banner), given);
    assert!(!said.contains("new secret"), "{said}");
    assert!(said.contains("--jwt-secret"), "{said}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), renewed);
    stop(child).await;

    // A state directory that cannot be written costs only the keeping.
    let blocked = state.0.join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let (child, banner, _, _) = start_dev_with(&blocked, &[]).await;
    let said = banner.join("\n");
    assert!(said.contains("for this start only (cannot write"), "{said}");
    stop(child).await;

    let (code, stderr) = output(&["--new-secret"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--dev"), "{stderr}");
}

#[tokio::test]
async fn dev_mode_prints_a_working_token_and_sigterm_closes_1001_and_exits_0() {
    let (mut child, ws_url, log) = start_dev().await;
    let token = ws_url.split("token=").nth(1).unwrap().to_owned();
    let (ws, _) = within(tokio_tungstenite::connect_async(ws_url))
        .await
        .unwrap();
    let mut client = Client {
        ws,
        connected: serde_json::Value::Null,
    };
    assert_eq!(client.next_json().await["type"], "connected");

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        client.expect_close().await,
        (1001, "server shutting down".into())
    );
    let status = within(child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));

    let log = within(log).await.unwrap();
    assert!(
        log.contains("connected") && log.contains("user=42"),
        "{log}"
    );
    assert!(log.contains("code=1001"), "{log}");
    // Even at trace level, no token (nor its signature) reaches the log.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "token leaked into the log");
}
