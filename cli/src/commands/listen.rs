//! `hrrt listen`: watch events as a user (or an admin) sees them, resuming
//! across reconnects so nothing is missed.

use std::process::ExitCode;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use hrrt_server::auth::Role;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::GlobalArgs;
use crate::client::{Cursor, Target, TokenSource, connect};
use crate::output::{self, DIM, paint};

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Listen as this user (mints a token with --secret).
    #[arg(long)]
    pub user: Option<String>,
    /// The user's organisation.
    #[arg(long)]
    pub org: Option<String>,
    /// Watch these orgs as an admin: `7,9` or `*` (every channel).
    #[arg(long)]
    pub orgs: Option<String>,
    /// Only events whose type matches this glob (`entity.*`); repeatable.
    #[arg(long = "type", value_name = "GLOB")]
    pub types: Vec<String>,
    /// Print each event exactly as received, one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 once this many matching events arrived.
    #[arg(long)]
    pub count: Option<u64>,
    /// Give up after this long: exit 1 if --count was not reached (exit 0
    /// without --count).
    #[arg(long, value_parser = hrrt_server::config::positive_duration)]
    pub timeout: Option<Duration>,
    /// Start after this position: `org:7@41,user:42@3`.
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<String>,
    /// Exit instead of reconnecting when the connection drops.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// Reconnect backoff: from the first to the last, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn run(args: ListenArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&global.url)?;
    let role = if args.orgs.is_some() {
        Role::Admin
    } else {
        Role::User
    };
    let org = match (&args.org, &args.orgs) {
        (Some(org), _) => Some(org.as_str()),
        // An admin token still names an org; any will do for watching.
        (None, Some(_)) => Some("admin"),
        (None, None) => None,
    };
    if global.token.is_none() && (args.user.is_none() || org.is_none()) {
        bail!(
            "listen needs --user and --org (with --secret or HRRT_JWT_SECRET to mint a token), \
             or --token"
        );
    }
    let tokens = TokenSource::from_args(
        global,
        args.user.as_deref(),
        org,
        role,
        "pass --token, or --secret (HRRT_JWT_SECRET) with --user and --org",
    )?;
    let mut cursor = match &args.since {
        Some(since) => Cursor::parse(since).context("invalid --since")?,
        None => Cursor::default(),
    };
    let filter = TypeFilter::new(&args.types);
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut matched = 0u64;
    let mut connected_before = false;
    let mut backoff = BACKOFF_FIRST;
    let mut interrupt = crate::interrupt::Interrupt::new();

    loop {
        let token = tokens.token()?;
        let attempt = connect(&target, &token, &cursor, args.orgs.as_deref());
        let ws = tokio::select! {
            () = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            () = until(deadline) => return Ok(timed_out(&args, matched)),
            result = attempt => result,
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(e) if !connected_before || args.no_reconnect => return Err(e),
            Err(e) => {
                output::note(&format!("{e:#}; retrying in {}", show(backoff)));
                tokio::select! {
                    () = interrupt.recv() => return Ok(ExitCode::SUCCESS),
                    () = until(deadline) => return Ok(timed_out(&args, matched)),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };

        // Read until the connection ends.
        let ended = loop {
            let message = tokio::select! {
                () = interrupt.recv() => return Ok(ExitCode::SUCCESS),
                () = until(deadline) => return Ok(timed_out(&args, matched)),
                message = ws.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        output::warn(&format!("server sent a frame that is not JSON: {text}"));
                        continue;
                    };
                    match frame["type"].as_str().unwrap_or_default() {
                        "connected" => {
                            let resumed_from = cursor.to_since();
                            cursor.on_connected(&frame["payload"]);
                            backoff = BACKOFF_FIRST;
                            let what = if connected_before {
                                "reconnected"
                            } else {
                                "connected"
                            };
                            let from = if resumed_from.is_empty() {
                                String::new()
                            } else {
                                format!(", resuming from {resumed_from}")
                            };
                            output::note(&format!("{what} to {}{from}", target.ws));
                            connected_before = true;
                        }
                        "ping" | "auth.refreshed" => {}
                        "resync.required" => {
                            let p = &frame["payload"];
                            output::warn(&format!(
                                "resync required on {}: {} (asked from {}, oldest kept {}); \
                                 events before that are gone, refetch state",
                                p["channel"].as_str().unwrap_or("?"),
                                p["reason"].as_str().unwrap_or("?"),
                                p["requested"],
                                p["oldest"]
                            ));
                        }
                        "error" => output::warn(&format!(
                            "server says: {}",
                            frame["payload"]["message"]
                                .as_str()
                                .unwrap_or(text.as_str())
                        )),
                        kind => {
                            cursor.on_event(&frame);
                            if !filter.matches(kind) {
                                continue;
                            }
                            if args.json {
                                output::line(text.as_str())?;
                            } else {
                                output::line(&human(&frame))?;
                            }
                            matched += 1;
                            if args.count.is_some_and(|n| matched >= n) {
                                return Ok(ExitCode::SUCCESS);
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };

        match &ended {
            Some((1008, reason)) if reason == "token expired" && tokens.can_mint() => {
                output::note("token expired; reconnecting with a fresh one");
                continue;
            }
            Some((1008, reason)) => bail!("the server closed the connection: 1008 {reason}"),
            Some((1009, reason)) => bail!("the server closed the connection: 1009 {reason}"),
            _ => {}
        }
        let why = match &ended {
            Some((code, reason)) => format!("connection closed ({code} {reason})"),
            None => "connection lost".to_owned(),
        };
        if args.no_reconnect {
            bail!("{why}");
        }
        output::note(&format!("{why}; reconnecting in {}", show(backoff)));
        tokio::select! {
            () = interrupt.recv() => return Ok(ExitCode::SUCCESS),
            () = until(deadline) => return Ok(timed_out(&args, matched)),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn timed_out(args: &ListenArgs, matched: u64) -> ExitCode {
    match args.count {
        Some(count) => {
            output::note(&format!("timed out with {matched} of {count} events"));
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// One aligned, coloured line: time, type, channel@seq, compact payload.
fn human(event: &Value) -> String {
    const MAX_PAYLOAD: usize = 400;
    let kind = event["type"].as_str().unwrap_or("?");
    // `2026-01-01T12:00:00.123456Z` → `12:00:00.123`
    let time = event["timestamp"]
        .as_str()
        .and_then(|t| t.get(11..23))
        .unwrap_or("");
    let position = format!(
        "{}@{}",
        event["channel"].as_str().unwrap_or("?"),
        event["seq"]
    );
    let mut payload = event["payload"].to_string();
    if payload.len() > MAX_PAYLOAD {
        let mut end = MAX_PAYLOAD;
        while !payload.is_char_boundary(end) {
            end -= 1;
        }
        payload.truncate(end);
        payload.push('…');
    }
    format!(
        "{} {} {} {payload}",
        paint(DIM, time),
        paint(type_style(kind), format!("{kind:<18}")),
        paint(DIM, format!("{position:<14}")),
    )
}

fn type_style(kind: &str) -> Style {
    let color = match kind.split('.').next() {
        Some("entity") => AnsiColor::Green,
        Some("chat") => AnsiColor::Cyan,
        Some("share") => AnsiColor::Magenta,
        _ => AnsiColor::Yellow,
    };
    color.on_default().bold()
}

/// `--type` globs: `*` is any run of characters, `?` any one.
pub struct TypeFilter(Vec<String>);

impl TypeFilter {
    pub fn new(globs: &[String]) -> Self {
        Self(globs.to_vec())
    }

    pub fn matches(&self, kind: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|g| hrrt_tui::glob_matches(g, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let f = TypeFilter::new(&["entity.*".into(), "chat.message".into()]);
        assert!(f.matches("entity.created"));
        assert!(f.matches("chat.message"));
        assert!(!f.matches("share.created"));
        assert!(!f.matches("entity"));
        assert!(TypeFilter::new(&[]).matches("anything"));
        assert!(TypeFilter::new(&["*.created".into()]).matches("share.created"));
        assert!(TypeFilter::new(&["sh?re.*".into()]).matches("share.revoked"));
        assert!(!TypeFilter::new(&["*.created".into()]).matches("share.revoked"));
    }
}
