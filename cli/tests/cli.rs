//! The real `hrrt` binary against a real server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Stdio;

use hrrt_server::AppState;
use hrrt_server::CloseReason;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_hrrt");
use hrrt_testkit::{SECRET, TestServer, within};

struct Server {
    addr: SocketAddr,
    state: AppState,
    kit: TestServer,
}

impl Server {
    async fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn on(listener: TcpListener) -> Self {
        let kit = TestServer::on(listener, |_| {}).await;
        Self {
            addr: kit.addr,
            state: kit.state.clone(),
            kit,
        }
    }

    fn url(&self) -> String {
        self.kit.url()
    }

    async fn stop(self) {
        self.kit.stop().await.unwrap();
    }

    /// Runs `hrrt` with the server's URL and secret and waits for it.
    async fn hrrt(&self, args: &[&str]) -> (i32, String, String) {
        let out = within(self.command(args).output()).await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("HRRT_URL", self.url())
            .env("HRRT_JWT_SECRET", SECRET)
            .env_remove("HRRT_TOKEN")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn publish(&self, args: &[&str]) -> Value {
        let mut full = vec!["publish", "--json"];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = self.hrrt(&full).await;
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    }
}

/// A running `hrrt listen` whose output is read line by line.
struct Listener {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Listener {
    /// Starts `hrrt listen ARGS` and waits until it is connected.
    async fn start(server: &Server, args: &[&str]) -> Self {
        let mut full = vec!["listen"];
        full.extend_from_slice(args);
        let mut child = server.command(&full).spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut listener = Self {
            child,
            stdout,
            stderr,
        };
        listener.wait_stderr("connected to").await;
        listener
    }

    async fn line(&mut self) -> String {
        within(self.stdout.next_line())
            .await
            .unwrap()
            .expect("listen ended")
    }

    /// Reads stderr until a line containing `needle`; returns it.
    async fn wait_stderr(&mut self, needle: &str) -> String {
        loop {
            let line = within(self.stderr.next_line())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("stderr ended before '{needle}'"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    async fn exit_code(mut self) -> i32 {
        within(self.child.wait())
            .await
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

#[tokio::test]
async fn mint_listen_publish_round_trip_in_human_form() {
    let server = Server::start().await;
    let mut listen =
        Listener::start(&server, &["--user", "42", "--org", "7", "--count", "2"]).await;
    let (code, stdout, _) = server
        .hrrt(&[
            "publish",
            "entity.created",
            "--org",
            "7",
            "--payload",
            r#"{"id":1}"#,
        ])
        .await;
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with("org:7@1  entity.created  1 recipient\n"),
        "{stdout}"
    );
    server
        .publish(&[
            "share.created",
            "--user",
            "42",
            "--payload",
            r#"{"share_id":5}"#,
        ])
        .await;
    let first = listen.line().await;
    assert!(
        first.contains("entity.created")
            && first.contains("org:7@1")
            && first.contains(r#"{"id":1}"#),
        "{first}"
    );
    assert!(
        !first.contains('\u{1b}'),
        "no colour when not a terminal: {first:?}"
    );
    let second = listen.line().await;
    assert!(
        second.contains("share.created") && second.contains("user:42@1"),
        "{second}"
    );
    assert_eq!(listen.exit_code().await, 0);
}

#[tokio::test]
async fn json_output_is_exactly_what_the_server_sent() {
    let server = Server::start().await;
    let mut listen = Listener::start(
        &server,
        &["--user", "1", "--org", "7", "--json", "--count", "3"],
    )
    .await;
    let file = std::env::temp_dir().join(format!("hrrt-batch-{}.ndjson", std::process::id()));
    std::fs::write(
        &file,
        "{\"type\":\"entity.created\",\"org_id\":\"7\",\"payload\":{\"id\":1}}\n\n\
         {\"type\":\"chat.message\",\"org_id\":7,\"payload\":{\"text\":\"hi ✓\"}}\n\
         {\"type\":\"share.created\",\"user_id\":\"1\"}\n",
    )
    .unwrap();
    let acks = server.publish(&["--file", file.to_str().unwrap()]).await;
    std::fs::remove_file(&file).unwrap();
    assert_eq!(acks.as_array().unwrap().len(), 3);
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(listen.line().await);
    }
    assert_eq!(listen.exit_code().await, 0);
    // The server's own bytes, from its history, equal what listen printed.
    for (channel, line) in [
        ("org:7", &lines[0]),
        ("org:7", &lines[1]),
        ("user:1", &lines[2]),
    ] {
        let printed: Value = serde_json::from_str(line).unwrap();
        let seq = printed["seq"].as_u64().unwrap();
        let page = server
            .state
            .engine
            .history(
                &hrrt_protocol::ChannelName::parse(channel).unwrap(),
                seq - 1,
                1,
            )
            .await
            .unwrap();
        assert_eq!(page.events[0].frame.as_str(), line.as_str());
    }
}

#[tokio::test]
async fn count_and_timeout_set_the_exit_code() {
    let server = Server::start().await;
    let (code, _, stderr) = server
        .hrrt(&[
            "listen",
            "--user",
            "1",
            "--org",
            "7",
            "--count",
            "1",
            "--timeout",
            "300ms",
        ])
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("timed out with 0 of 1"), "{stderr}");
    let (code, _, _) = server
        .hrrt(&["listen", "--user", "1", "--org", "7", "--timeout", "200ms"])
        .await;
    assert_eq!(code, 0, "without --count a timeout is the normal end");
}

#[tokio::test]
async fn type_filters_select_events() {
    let server = Server::start().await;
    let mut listen = Listener::start(
        &server,
        &[
            "--user",
            "1",
            "--org",
            "7",
            "--json",
            "--count",
            "2",
            "--type",
            "entity.*",
            "--type",
            "share.revoked",
        ],
    )
    .await;
    server.publish(&["chat.message", "--org", "7"]).await;
    server.publish(&["entity.updated", "--org", "7"]).await;
    server.publish(&["share.created", "--user", "1"]).await;
    server.publish(&["share.revoked", "--user", "1"]).await;
    let a: Value = serde_json::from_str(&listen.line().await).unwrap();
    let b: Value = serde_json::from_str(&listen.line().await).unwrap();
    assert_eq!(
        (a["type"].as_str(), b["type"].as_str()),
        (Some("entity.updated"), Some("share.revoked"))
    );
    assert_eq!(listen.exit_code().await, 0);
}

#[tokio::test]
async fn listen_resumes_after_a_dropped_connection_exactly_once() {
    let server = Server::start().await;
    let mut listen = Listener::start(
        &server,
        &["--user", "1", "--org", "7", "--json", "--count", "5"],
    )
    .await;
    for _ in 0..2 {
        server.publish(&["entity.created", "--org", "7"]).await;
    }
    for _ in 0..2 {
        listen.line().await;
    }
    // Drop it as a server error would (1011: reconnect and resume).
    server
        .state
        .hub
        .for_each(|conn| conn.close(CloseReason::new(1011, "test drop")));
    for _ in 0..3 {
        server.publish(&["entity.created", "--org", "7"]).await;
    }
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let e: Value = serde_json::from_str(&listen.line().await).unwrap();
        seqs.push(e["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [3, 4, 5]);
    listen.wait_stderr("reconnected").await;
    assert_eq!(listen.exit_code().await, 0);
}

#[tokio::test]
async fn listen_survives_a_server_restart_and_reports_the_resync() {
    let first = Server::start().await;
    let addr = first.addr;
    let mut listen = Listener::start(
        &first,
        &["--user", "1", "--org", "7", "--json", "--count", "2"],
    )
    .await;
    first.publish(&["entity.created", "--org", "7"]).await;
    listen.line().await;
    first.stop().await;
    listen.wait_stderr("1001").await;

    // A new server (new epoch) on the same address.
    let second = Server::on(TcpListener::bind(addr).await.unwrap()).await;
    listen.wait_stderr("reconnected").await;
    let resync = listen.wait_stderr("resync required").await;
    assert!(resync.contains("epoch_changed"), "{resync}");
    second.publish(&["entity.updated", "--org", "7"]).await;
    let e: Value = serde_json::from_str(&listen.line().await).unwrap();
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_u64()),
        (Some("entity.updated"), Some(1))
    );
    assert_eq!(listen.exit_code().await, 0);
}

#[tokio::test]
async fn a_broken_pipe_exits_0_quietly() {
    let server = Server::start().await;
    let mut listen = Listener::start(&server, &["--user", "1", "--org", "7", "--json"]).await;
    server.publish(&["entity.created", "--org", "7"]).await;
    listen.line().await;
    // The reader goes away, like `head` after its lines.
    let Listener {
        child,
        stdout,
        mut stderr,
    } = listen;
    drop(stdout);
    server.publish(&["entity.created", "--org", "7"]).await;
    server.publish(&["entity.created", "--org", "7"]).await;
    let status = within(wait_with(child)).await;
    assert_eq!(status, 0);
    while let Some(line) = within(stderr.next_line()).await.unwrap() {
        assert!(
            !line.contains("panicked") && !line.contains("error"),
            "{line}"
        );
    }
}

async fn wait_with(mut child: Child) -> i32 {
    child.wait().await.unwrap().code().unwrap_or(-1)
}

#[tokio::test]
async fn bad_inputs_get_one_clear_line() {
    let server = Server::start().await;
    // An empty secret would sign tokens no sane server accepts.
    let (code, _, stderr) = server
        .hrrt(&["--secret", "", "token", "mint", "--user", "1", "--org", "7"])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the secret is empty"), "{stderr}");
    // And a token that would outlive year 9999 cannot be asked for.
    let (code, _, stderr) = server
        .hrrt(&[
            "token", "mint", "--user", "1", "--org", "7", "--ttl", "10000y",
        ])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ttl"), "{stderr}");
    // The server is not running there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for args in [
        vec![
            "--url",
            dead.as_str(),
            "publish",
            "entity.created",
            "--org",
            "7",
        ],
        vec![
            "--url",
            dead.as_str(),
            "listen",
            "--user",
            "1",
            "--org",
            "7",
        ],
    ] {
        let (code, _, stderr) = server.hrrt(&args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&dead.replace("http", "")) && stderr.contains("refused"),
            "{stderr}"
        );
    }

    // A report file that cannot be written stops `load` before it connects.
    for flag in ["--report", "--per-event"] {
        let (code, stdout, stderr) = server
            .hrrt(&[
                "load",
                "--connections",
                "1",
                "--duration",
                "1s",
                flag,
                "/nonexistent-dir/report",
            ])
            .await;
        assert_eq!(code, 2, "{flag}: {stderr}");
        assert!(stdout.is_empty(), "{flag}: ran anyway: {stdout}");
        assert!(
            stderr.contains("cannot write /nonexistent-dir/report"),
            "{flag}: {stderr}"
        );
    }

    // A node that is not a URL is named, before anything is opened.
    let nodes = format!("{},ws//typo", server.url());
    let (code, stdout, stderr) = server
        .hrrt(&["load", "--nodes", &nodes, "--connections", "2"])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "ran anyway: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--nodes: 'ws//typo'"), "{stderr}");
    assert_eq!(server.state.hub.len(), 0, "nothing was opened");

    let (code, _, stderr) = server
        .hrrt(&[
            "publish",
            "entity.created",
            "--org",
            "7",
            "--payload",
            "{\"id\": 1,\n \"x\": }",
        ])
        .await;
    assert_eq!(code, 2);
    assert!(stderr.contains("line 2 column"), "{stderr}");

    let user_token = hrrt_server::auth::mint(
        SECRET,
        &hrrt_server::auth::Claims::new("1", Some("7"), hrrt_server::auth::Role::User, 60),
    )
    .unwrap();
    let (code, _, stderr) = server
        .hrrt(&[
            "publish",
            "entity.created",
            "--org",
            "7",
            "--token",
            &user_token,
        ])
        .await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("403") && stderr.contains("--role service"),
        "{stderr}"
    );
    let (code, _, stderr) = server
        .hrrt(&[
            "publish",
            "entity.created",
            "--org",
            "7",
            "--token",
            "nonsense",
        ])
        .await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("401") && stderr.contains("--secret"),
        "{stderr}"
    );

    let (code, _, stderr) = server
        .hrrt(&["publish", "share.created", "--org", "7"])
        .await;
    assert_eq!(code, 1, "a rejected event is the thing that failed");
    assert!(stderr.contains("user_id"), "{stderr}");

    for args in [
        vec!["listen", "--user", "1", "--org", "7", "--timeout", "soon"],
        vec!["listen", "--bogus"],
        vec!["publish", "entity.created", "--org", "7", "--user", "1"],
    ] {
        let (code, _, stderr) = server.hrrt(&args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (code, _, stderr) = server.hrrt(&["--secret", "", "listen", "--org", "7"]).await;
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn token_mint_and_inspect() {
    let server = Server::start().await;
    let (code, token, _) = server
        .hrrt(&[
            "token", "mint", "--user", "42", "--org", "7", "--role", "admin", "--ttl", "10m",
        ])
        .await;
    assert_eq!(code, 0);
    let token = token.trim();
    let (code, stdout, _) = server.hrrt(&["token", "inspect", token]).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("valid") && stdout.contains("in 10m") && stdout.contains("admin"),
        "{stdout}"
    );
    let (code, stdout, _) = server.hrrt(&["token", "inspect", token, "--json"]).await;
    assert_eq!(code, 0);
    let verdict: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(verdict["verdict"], "valid");
    assert_eq!(verdict["claims"]["sub"], "42");
    let (code, stdout, _) = server
        .hrrt(&["token", "inspect", token, "--secret", "another"])
        .await;
    assert_eq!(code, 1);
    assert!(stdout.contains("invalid signature"), "{stdout}");
    let mut expired =
        hrrt_server::auth::Claims::new("1", Some("7"), hrrt_server::auth::Role::User, 0);
    expired.exp -= 120;
    let expired = hrrt_server::auth::mint(SECRET, &expired).unwrap();
    let (code, stdout, _) = server.hrrt(&["token", "inspect", &expired]).await;
    assert_eq!(code, 1);
    assert!(
        stdout.contains("expired") && stdout.contains("ago"),
        "{stdout}"
    );
    let (code, _, _) = server.hrrt(&["token", "inspect", "not.a.jwt"]).await;
    assert_eq!(code, 1);
    let mut stdin_inspect = server.command(&["token", "inspect", "-"]);
    stdin_inspect.stdin(Stdio::piped());
    let mut child = stdin_inspect.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(token.as_bytes()).await.unwrap();
    drop(stdin);
    assert_eq!(within(child.wait()).await.unwrap().code(), Some(0));
    let (code, _, stderr) = server.hrrt(&["token", "mint", "--user", "1"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--org"), "{stderr}");
}

#[tokio::test]
async fn completions_are_printed() {
    let server = Server::start().await;
    let (code, stdout, _) = server.hrrt(&["completions", "bash"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("hrrt") && stdout.contains("listen"));
}

#[tokio::test]
async fn payload_from_a_file_and_from_stdin() {
    let server = Server::start().await;
    let mut listen = Listener::start(
        &server,
        &["--user", "1", "--org", "7", "--json", "--count", "2"],
    )
    .await;
    let file = std::env::temp_dir().join(format!("hrrt-payload-{}.json", std::process::id()));
    std::fs::write(&file, r#"{"from":"file"}"#).unwrap();
    let at = format!("@{}", file.display());
    server
        .publish(&["entity.created", "--org", "7", "--payload", &at])
        .await;
    std::fs::remove_file(&file).unwrap();
    let mut cmd = server.command(&["publish", "entity.created", "--org", "7", "--payload", "-"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(br#"{"from":"stdin"}"#).await.unwrap();
    drop(stdin);
    assert_eq!(within(child.wait()).await.unwrap().code(), Some(0));
    let a: Value = serde_json::from_str(&listen.line().await).unwrap();
    let b: Value = serde_json::from_str(&listen.line().await).unwrap();
    assert_eq!(
        (a["payload"].clone(), b["payload"].clone()),
        (json!({"from": "file"}), json!({"from": "stdin"}))
    );
    assert_eq!(listen.exit_code().await, 0);
}

#[tokio::test]
async fn ctrl_c_ends_listen_cleanly() {
    let server = Server::start().await;
    let listen = Listener::start(&server, &["--user", "1", "--org", "7"]).await;
    let pid = listen.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(listen.exit_code().await, 0);
}

#[tokio::test]
async fn load_reports_every_delivery_and_passes() {
    let server = Server::start().await;
    let report = std::env::temp_dir().join(format!("hrrt-load-{}.json", std::process::id()));
    let events = std::env::temp_dir().join(format!("hrrt-load-{}.csv", std::process::id()));
    let (code, stdout, stderr) = server
        .hrrt(&[
            "load",
            "--connections",
            "300",
            "--orgs",
            "3",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--batch",
            "5",
            "--fail-on",
            "lost=0,duplicated=0",
            "--report",
            report.to_str().unwrap(),
            "--per-event",
            events.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // --per-event: a line per event, each answered and received, in order
    // of publication, batches of 5 sharing their publish time.
    let csv = std::fs::read_to_string(&events).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("event,org,published_ms,unix_ms,accepted_ms,last_recipient_ms")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|f| f.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 100, "{csv}");
    for (n, row) in rows.iter().enumerate() {
        let [event, org, published, unix, accepted, last] = row[..] else {
            panic!("{row:?}");
        };
        assert_eq!((event, org), (n as f64, (n % 3) as f64), "{row:?}");
        assert!(
            published >= 0.0 && unix > 1.7e12 && accepted > 0.0 && last > 0.0,
            "{row:?}"
        );
        assert_eq!(published, rows[n - n % 5][2], "{row:?}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["connections"]["ok"], 300);
    assert_eq!(report["events"]["published"], 100);
    // 100 events round-robin over 3 orgs of 100 connections each.
    assert_eq!(report["events"]["expected_deliveries"], 100 * 100);
    assert_eq!(report["events"]["delivered"], 100 * 100);
    assert_eq!(report["events"]["lost"], 0);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(report["passed"], true);
    assert!(stdout.contains("result       PASS"), "{stdout}");
}

#[tokio::test]
async fn load_detects_loss_when_connections_drop_mid_run() {
    let server = Server::start().await;
    let mut child = server
        .command(&[
            "load",
            "--connections",
            "20",
            "--rate",
            "40",
            "--duration",
            "3s",
            "--drain",
            "300ms",
        ])
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = within(stderr.next_line())
            .await
            .unwrap()
            .expect("load ended early");
        if line.contains("publishing") {
            break;
        }
    }
    // Every connection is dropped as a crashing node would drop it; the
    // rest of the run's events cannot reach them.
    server
        .state
        .hub
        .for_each(|conn| conn.close(CloseReason::new(1011, "test drop")));
    let out = within(child.wait_with_output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("closed early: 1011 test drop"), "{stdout}");
    let lost: u64 = stdout
        .lines()
        .find(|l| l.starts_with("deliveries"))
        .and_then(|l| l.split("lost ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(lost > 0, "{stdout}");
    assert!(stdout.contains("result       FAIL"), "{stdout}");
}

#[tokio::test]
async fn load_against_a_server_that_is_gone_fails_clearly() {
    let server = Server::start().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    // The report of an earlier run is still there after this one failed.
    let old = std::env::temp_dir().join(format!("hrrt-load-old-{}.json", std::process::id()));
    std::fs::write(&old, "{\"earlier\": true}").unwrap();
    let (code, _, stderr) = server
        .hrrt(&[
            "--url",
            &dead,
            "load",
            "--connections",
            "5",
            "--duration",
            "1s",
            "--report",
            old.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no connection could be opened") && stderr.contains("refused"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&old).unwrap(),
        "{\"earlier\": true}"
    );
}

#[tokio::test]
async fn stats_nodes_history_and_disconnect_from_the_command_line() {
    let server = Server::start().await;
    let listen = Listener::start(&server, &["--user", "42", "--org", "7"]).await;
    server
        .publish(&["entity.created", "--org", "7", "--payload", r#"{"id":1}"#])
        .await;
    server
        .publish(&[
            "chat.message",
            "--org",
            "7",
            "--payload",
            r#"{"text":"hi"}"#,
        ])
        .await;

    let (code, stdout, stderr) = server.hrrt(&["stats"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("connections 1"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("entity.created") && l.contains('1')),
        "{stdout}"
    );
    let (code, stdout, _) = server.hrrt(&["stats", "--json"]).await;
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stats["connections"]["by_org"]["7"], 1);

    let (code, stdout, _) = server.hrrt(&["nodes"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("NODE") && stdout.contains("memory"),
        "{stdout}"
    );
    let (_, stdout, _) = server.hrrt(&["nodes", "--json"]).await;
    let nodes: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 1);

    let (code, stdout, stderr) = server.hrrt(&["history", "org:7"]).await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].contains("org:7") && lines[0].contains("2 shown"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("entity.created") && lines[1].contains(r#"{"id":1}"#),
        "{stdout}"
    );
    assert!(lines[2].contains("chat.message"), "{stdout}");
    let (_, stdout, _) = server
        .hrrt(&["history", "org:7", "--since", "1", "--json"])
        .await;
    let page: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["seq"], 2);
    // A channel that is none is refused before it is sent.
    let (code, _, stderr) = server.hrrt(&["history", "nonsense"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("org:<id>"), "{stderr}");

    let (code, stdout, stderr) = server
        .hrrt(&[
            "disconnect",
            "--user",
            "42",
            "--reason",
            "access revoked",
            "--revoke",
        ])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("closed 1 connection of user 42"),
        "{stdout}"
    );
    assert!(stdout.contains("refused"), "{stdout}");
    assert!(stdout.contains("tokens issued before 2"), "{stdout}");
    // listen sees 1008: a token problem, exit 2.
    assert_eq!(listen.exit_code().await, 2);

    // No secret, no token: a usage error (2) naming the fix.
    let out = within(
        Command::new(BIN)
            .args(["--url", &server.url(), "stats"])
            .env_remove("HRRT_JWT_SECRET")
            .env_remove("HRRT_TOKEN")
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));
}

#[tokio::test]
async fn load_spreads_over_nodes_and_names_a_node_that_refuses() {
    let Some(redis) = hrrt_testkit::TestRedis::start_or_skip(false).await else {
        return;
    };
    let url = redis.url();
    let a = TestServer::with({
        let url = url.clone();
        move |c| c.redis_url = Some(url)
    })
    .await;
    let b = TestServer::with(move |c| c.redis_url = Some(url)).await;
    let report = std::env::temp_dir().join(format!("hrrt-load-nodes-{}.json", std::process::id()));
    let nodes = format!("{},{}", a.url(), b.url());
    let run = |nodes: String, json: Option<std::path::PathBuf>, extra: &'static [&'static str]| async move {
        let mut cmd = Command::new(BIN);
        cmd.args(["--secret", SECRET, "load", "--nodes", &nodes])
            .args(extra)
            .args([
                "--connections",
                "40",
                "--orgs",
                "4",
                "--rate",
                "50",
                "--duration",
                "1s",
            ])
            .env_remove("HRRT_JWT_SECRET")
            .env_remove("HRRT_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(json) = json {
            cmd.arg("--report").arg(json);
        }
        let out = within(cmd.output()).await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(nodes.clone(), Some(report.clone()), &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["events"]["lost"], 0, "{report}");
    assert_eq!(report["events"]["delivered"], 50 * 10, "{report}");
    assert_eq!(report["nodes"][0]["connections"], 20, "{report}");
    assert_eq!(report["nodes"][1]["connections"], 20, "{report}");
    assert!(
        stdout.contains(&format!("node         {}", b.url())),
        "{stdout}"
    );

    // Under churn (connections dropping and resuming on random nodes with
    // since + epoch), still nothing lost.
    let churned = std::env::temp_dir().join(format!("hrrt-load-churn-{}.json", std::process::id()));
    let (code, stdout, stderr) = run(
        nodes,
        Some(churned.clone()),
        &["--churn", "40", "--user-rate", "30"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&churned).unwrap()).unwrap();
    assert_eq!(report["events"]["lost"], 0, "{report}");
    assert_eq!(report["events"]["duplicated"], 0, "{report}");
    assert!(
        report["churn"]["resumes"].as_u64().unwrap() >= 10,
        "{report}"
    );
    assert!(stdout.contains("churn "), "{stdout}");
    // What came back as a replay is reported apart from the live latency,
    // and every delivery is in exactly one of the three.
    let replayed = report["churn"]["replayed_latency_ms"]["count"]
        .as_u64()
        .unwrap();
    assert!(replayed > 0, "{report}");
    assert_eq!(
        report["latency_ms"]["count"].as_u64().unwrap()
            + report["user_events"]["latency_ms"]["count"]
                .as_u64()
                .unwrap()
            + replayed,
        report["events"]["delivered"].as_u64().unwrap()
            + report["user_events"]["delivered"].as_u64().unwrap(),
        "{report}"
    );
    assert!(stdout.contains("deliveries after a resume"), "{stdout}");
    // User-channel traffic beside it, each event to one connection.
    let user = &report["user_events"];
    assert!(user["published"].as_u64().unwrap() >= 20, "{report}");
    assert_eq!(user["delivered"], user["published"], "{report}");
    assert_eq!(user["lost"], 0, "{report}");
    assert!(stdout.contains("user events"), "{stdout}");

    // A node that refuses: named, the report still printed, exit 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, stdout, stderr) = run(format!("{},{dead}", a.url()), None, &[]).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("20 failed") || stdout.contains("failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&dead),
        "the refusing node is named: {stdout}"
    );
    assert!(
        stdout.contains("deliveries"),
        "the report is printed: {stdout}"
    );
}

#[tokio::test]
async fn load_counts_what_a_resync_covers_as_not_lost_and_catches_a_real_loss() {
    // History of one event: a churned connection away for a few events
    // gets resync.required (history_trimmed) on its resume.
    let server = TestServer::with(|c| c.history_size = 1).await;
    let run = |extra: &'static [&'static str], json: std::path::PathBuf| {
        let url = server.url();
        async move {
            let out = within(
                Command::new(BIN)
                    .args(["--url", &url, "--secret", SECRET, "load"])
                    .args(["--connections", "20", "--rate", "300", "--duration", "1s"])
                    .args([
                        "--batch", "10", "--churn", "30", "--drain", "2s", "--report",
                    ])
                    .arg(&json)
                    .args(extra)
                    .env_remove("HRRT_JWT_SECRET")
                    .env("NO_COLOR", "1")
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap();
            let report: Value =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            (out.status.code().unwrap_or(-1), report)
        }
    };
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let (code, report) = run(&[], dir.join(format!("hrrt-load-trim-{pid}.json"))).await;
    assert!(
        report["churn"]["resyncs"]["history_trimmed"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{report}"
    );
    assert_eq!(report["events"]["lost"], 0, "no false loss: {report}");
    assert_eq!(code, 0, "{report}");

    // A client that resumes past what it had loses events silently: the
    // report must say so and fail. (History of one: the skipped seqs are
    // behind the resume point, so no resync covers them.)
    let (code, report) = run(
        &["--churn-skip", "3"],
        dir.join(format!("hrrt-load-broken-{pid}.json")),
    )
    .await;
    assert!(report["events"]["lost"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(code, 1, "{report}");
}

#[tokio::test]
async fn load_with_workers_reports_one_run_and_refuses_what_the_fd_limit_cannot_hold() {
    let server = Server::start().await;
    let report =
        std::env::temp_dir().join(format!("hrrt-load-workers-{}.json", std::process::id()));
    let (code, stdout, stderr) = server
        .hrrt(&[
            "load",
            "--connections",
            "300",
            "--orgs",
            "3",
            "--rate",
            "60",
            "--duration",
            "1s",
            "--workers",
            "3",
            "--churn",
            "20",
            "--user-rate",
            "10",
            "--drain",
            "3s",
            "--report",
            report.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["connections"]["ok"], 300, "{report}");
    assert_eq!(report["events"]["delivered"], 60 * 100, "{report}");
    assert_eq!(report["events"]["lost"], 0, "{report}");
    assert_eq!(report["user_events"]["lost"], 0, "{report}");
    assert!(report["churn"]["resumes"].as_u64().unwrap() > 0, "{report}");
    // The workers' replays reach the one report too.
    assert!(
        report["churn"]["replayed_latency_ms"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(stderr.contains("through 3 workers"), "{stderr}");

    // More connections than one process may open: say so, open nothing.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let too_many = (hard * 2).to_string();
    let (code, _, stderr) = server
        .hrrt(&["load", "--connections", &too_many, "--orgs", "1"])
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--workers 3 or more") || stderr.contains("or more"),
        "{stderr}"
    );
    assert_eq!(server.state.hub.len(), 0, "nothing was opened");
}

#[tokio::test]
async fn load_names_a_worker_that_dies_and_still_reports() {
    let server = Server::start().await;
    let mut child = server
        .command(&[
            "load",
            "--connections",
            "100",
            "--workers",
            "2",
            "--rate",
            "20",
            "--duration",
            "2s",
            "--drain",
            "2s",
        ])
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    while !seen.contains("through 2 workers") {
        let line = within(stderr.next_line()).await.unwrap();
        seen = line.unwrap_or_else(|| panic!("load ended before connecting"));
    }
    // Both workers are children of the run; kill one outright.
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flat_map(|task| std::fs::read_to_string(task.unwrap().path().join("children")))
        .collect::<String>();
    let worker = children
        .split_whitespace()
        .next()
        .expect("a worker process");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", worker])
        .status()
        .unwrap();
    assert!(killed.success());

    let mut rest = String::new();
    while let Some(line) = within(stderr.next_line()).await.unwrap() {
        rest.push_str(&line);
        rest.push('\n');
    }
    let mut report = String::new();
    within(tokio::io::AsyncReadExt::read_to_string(
        &mut stdout,
        &mut report,
    ))
    .await
    .unwrap();
    let code = within(child.wait()).await.unwrap().code();
    assert_eq!(code, Some(1), "{rest}\n{report}");
    assert!(
        rest.contains(
            "ended before reporting (signal: 9 (SIGKILL)); its 50 connections count as failed"
        ),
        "one line names the worker and how it ended: {rest}"
    );
    assert!(report.contains("50 × worker"), "{report}");
    assert!(report.contains("died"), "{report}");
    assert!(
        report.contains("deliveries") && report.contains("result       FAIL"),
        "the report of what ran is printed: {report}"
    );
}

#[tokio::test]
async fn server_flags_show_only_where_they_act() {
    for (args, acts) in [
        (&["serve", "--help"][..], false),
        (&["completions", "--help"][..], false),
        (&["scenario", "schema", "--help"][..], false),
        (&["token", "mint", "--help"][..], false),
        (&["listen", "--help"][..], true),
        (&["publish", "--help"][..], true),
        (&["scenario", "run", "--help"][..], true),
    ] {
        let out = within(Command::new(BIN).args(args).output()).await.unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(help.contains("--url"), acts, "{args:?}: {help}");
    }
    // One name per setting: `serve --secret` is its --jwt-secret.
    let out = within(
        Command::new(BIN)
            .args(["serve", "--secret", "", "--listen", "127.0.0.1:0"])
            .env_remove("HRRT_JWT_SECRET")
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the JWT secret is empty"), "{stderr}");
}

/// A server that is not hrrt: every request gets a web page.
async fn web_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded: the test makes a handful of requests.
        for _ in 0..16 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            let page = "<!doctype html><html><body>It works!</body></html>";
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

#[tokio::test]
async fn errors_name_the_cause_and_the_fix() {
    let server = Server::start().await;
    let wrong = "not-the-servers-secret-not-the-servers";
    // A secret that is not the server's is named as such, by every command.
    for args in [
        vec!["publish", "entity.created", "--org", "7", "--secret", wrong],
        vec!["stats", "--secret", wrong],
        vec!["--secret", wrong, "listen", "--user", "1", "--org", "7"],
    ] {
        let (code, _, stderr) = server.hrrt(&args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("--secret does not match the server's secret"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("  "),
            "one line, one space apart: {stderr}"
        );
    }
    // A URL without a scheme is http://.
    let bare = server.url().replace("http://", "");
    let ack = server
        .publish(&["entity.created", "--org", "7", "--url", &bare])
        .await;
    assert_eq!(ack["seq"], 1);
    // TLS to a plain port says so.
    let tls = server.url().replace("http://", "https://");
    let (code, _, stderr) = server.hrrt(&["stats", "--url", &tls]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("does not speak TLS") && stderr.contains("http://"),
        "{stderr}"
    );
    // A server that is not hrrt is named, without its page.
    let web = web_server().await;
    for args in [
        vec!["publish", "entity.created", "--org", "7", "--url", &web],
        vec!["listen", "--user", "1", "--org", "7", "--url", &web],
    ] {
        let (code, _, stderr) = server.hrrt(&args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("not an hrrt server"), "{args:?}: {stderr}");
        assert!(!stderr.contains("<html"), "{args:?}: {stderr}");
    }
    // Ids that cannot be meant are refused before anything is sent.
    for (args, fix) in [
        (
            vec!["publish", "entity.created", "--org", "org:7"],
            "--org 7",
        ),
        (
            vec!["publish", "entity.created", "--org", "*"],
            "not an org id",
        ),
        (vec!["listen", "--user", "1", "--org", "a b"], "whitespace"),
        (vec!["history", "7"], "org:<id>"),
    ] {
        let (code, _, stderr) = server.hrrt(&args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(fix), "{args:?}: {stderr}");
    }
    assert_eq!(server.state.hub.len(), 0);
    // A reused idempotency key is said, and English is English.
    let args = [
        "publish",
        "entity.created",
        "--org",
        "8",
        "--idempotency-key",
        "k1",
    ];
    let (code, stdout, stderr) = server.hrrt(&args).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("0 recipients") && stderr.is_empty(),
        "{stdout}{stderr}"
    );
    let (code, _, stderr) = server.hrrt(&args).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("idempotency key k1 was used before on org:8"),
        "{stderr}"
    );
}

#[tokio::test]
async fn load_json_is_a_switch_and_the_file_is_report() {
    let server = Server::start().await;
    let (code, stdout, stderr) = server
        .hrrt(&[
            "load",
            "--connections",
            "2",
            "--rate",
            "10",
            "--duration",
            "1s",
            "--no-progress",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is the JSON report");
    assert!(report.is_object(), "{report}");
}
