//! `hrrt dash`: the live dashboard. This module is the dashboard's feed
//! (an admin WebSocket with resume, and `GET /api/stats` once a second);
//! `hrrt-tui` draws what it reports.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use hrrt_protocol::api::{NodeInfo, Stats};
use hrrt_protocol::{Advice, Close, Role, ServerFrame};
use hrrt_tui::{App, Feed, NodeSnapshot, ServerStatus, StatsSnapshot};
use tokio::sync::mpsc;

use crate::args::ServerArgs;
use crate::client::{
    Api, ConnectOptions, Connection, Cursor, Received, Target, TokenSource, explain,
};
use crate::exit::ExitStatus;

#[derive(Debug, Args)]
pub struct DashArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Watch only this organisation.
    #[arg(long, conflicts_with = "all", value_parser = crate::args::org_id)]
    pub org: Option<String>,
    /// Watch every organisation and user channel (the default).
    #[arg(long)]
    pub all: bool,
}

/// Feed messages buffered between the feed and the screen.
const FEED_BUFFER: usize = 10_000;
const STATS_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn run(args: DashArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let target = Target::parse(&global.url)?;
    // An admin token names an org; the server counts an admin watch apart
    // from the orgs (as a watcher), so this one never shows in a table.
    let tokens = TokenSource::from_args(
        global,
        Some("hrrt-dash"),
        Some("hrrt-dash"),
        Role::Admin,
        "pass an admin --token, or --secret (HRRT_JWT_SECRET) to mint one",
    )?;
    let orgs = args.org.clone().unwrap_or_else(|| "*".to_owned());
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("hrrt dash needs a terminal (use hrrt listen --json for pipes)");
    }
    let (tx, rx) = mpsc::channel(FEED_BUFFER);
    let feed = tokio::spawn(feed(target.clone(), tokens, orgs, tx));
    let app = App::new(target.http.as_str()).with_org(args.org);
    let result = hrrt_tui::run(app, rx).await;
    feed.abort();
    if let Some(why) = result? {
        bail!("{why}");
    }
    Ok(ExitStatus::Ok)
}

/// Runs until `tx` is closed: keeps an admin WebSocket open (reconnecting
/// with resume) and polls the stats, reporting both as [`Feed`].
pub async fn feed(target: Target, tokens: TokenSource, orgs: String, tx: mpsc::Sender<Feed>) {
    let api = match Api::new(target.clone()) {
        Ok(api) => api,
        Err(e) => {
            let _ = tx
                .send(Feed::Status(ServerStatus::Disconnected(format!("{e:#}"))))
                .await;
            return;
        }
    };
    tokio::join!(
        events(&target, &tokens, &orgs, &tx),
        stats(&api, &tokens, &tx)
    );
}

async fn stats(api: &Api, tokens: &TokenSource, tx: &mpsc::Sender<Feed>) {
    let mut tick = tokio::time::interval(STATS_EVERY);
    while !tx.is_closed() {
        tick.tick().await;
        let Ok(token) = tokens.token() else { return };
        let feed = match api.get("/api/stats", &token).await {
            Ok((200, body)) => match serde_json::from_value::<Stats>(body) {
                Ok(stats) => Feed::Stats(StatsSnapshot::from(&stats)),
                Err(e) => Feed::Status(ServerStatus::Disconnected(format!(
                    "the server's /api/stats is not hrrt's: {e}"
                ))),
            },
            // A token the server refuses is not cured by waiting.
            Ok((status @ (401 | 403), body)) => {
                let _ = tx
                    .send(Feed::Stop(explain(
                        status,
                        &body,
                        "admin",
                        tokens.can_mint(),
                    )))
                    .await;
                return;
            }
            // The server being away is reported by the WebSocket side.
            _ => continue,
        };
        if tx.send(feed).await.is_err() {
            return;
        }
        // The cluster's nodes, for the nodes pane (one node: no pane).
        if let Ok((200, body)) = api.get("/api/nodes", &token).await
            && let Ok(nodes) = serde_json::from_value::<Vec<NodeInfo>>(body)
            && tx
                .send(Feed::Nodes(nodes.iter().map(NodeSnapshot::from).collect()))
                .await
                .is_err()
        {
            return;
        }
    }
}

async fn events(target: &Target, tokens: &TokenSource, orgs: &str, tx: &mpsc::Sender<Feed>) {
    let mut cursor = Cursor::default();
    let mut backoff = Duration::from_millis(200);
    while !tx.is_closed() {
        let why = match session(target, tokens, orgs, &mut cursor, tx).await {
            Ok(Ended::Closed(close))
                if matches!(close.advice(), Advice::NewToken | Advice::FixFrame)
                    && !(close.is_token_expired() && tokens.can_mint()) =>
            {
                let _ = tx.send(Feed::Stop(tokens.explain_close(&close))).await;
                return;
            }
            Ok(ended) => {
                backoff = Duration::from_millis(200);
                match ended {
                    Ended::Closed(close) => format!("closed {close}"),
                    Ended::Other(why) => why,
                }
            }
            Err(e) => format!("{e:#}"),
        };
        if tx
            .send(Feed::Status(ServerStatus::Disconnected(why)))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// How a session ended.
enum Ended {
    /// The server closed it.
    Closed(Close),
    /// Lost, or the dashboard went away.
    Other(String),
}

/// One connection; answers why it ended.
async fn session(
    target: &Target,
    tokens: &TokenSource,
    orgs: &str,
    cursor: &mut Cursor,
    tx: &mpsc::Sender<Feed>,
) -> anyhow::Result<Ended> {
    let options = ConnectOptions {
        cursor: cursor.clone(),
        orgs: Some(orgs.to_owned()),
        ..ConnectOptions::default()
    };
    let mut connection = Connection::open(target, &tokens.token()?, &options).await?;
    loop {
        let frame = match connection.next().await {
            Received::Frame { frame, .. } => frame,
            Received::Garbled { .. } => continue,
            Received::Closed(close) => return Ok(Ended::Closed(close)),
            Received::Lost(why) => return Ok(Ended::Other(why)),
        };
        let feed = match frame {
            ServerFrame::Connected { payload, .. } => {
                cursor.on_connected(&payload);
                Feed::Status(ServerStatus::Connected)
            }
            ServerFrame::Ping { .. }
            | ServerFrame::Refreshed { .. }
            | ServerFrame::Error { .. } => {
                continue;
            }
            ServerFrame::Resync { payload, .. } => Feed::Resync(payload),
            ServerFrame::Event(event) => {
                cursor.on_event(&event);
                Feed::Event(event)
            }
        };
        if tx.send(feed).await.is_err() {
            return Ok(Ended::Other("dashboard closed".to_owned()));
        }
    }
}
