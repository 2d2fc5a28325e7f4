//! The admin API from the command line: `hrrt stats`, `hrrt nodes`,
//! `hrrt history`, `hrrt disconnect`. Human tables by default, `--json`
//! for scripts (the server's answer as it is); a service token minted
//! from `--secret` as the other commands do; the same exit codes (2 for a
//! token the server refuses or no server, 1 for a request it refused).

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use hrrt_protocol::ServerFrame;
use hrrt_protocol::api::{Disconnected, HistoryAnswer, NodeInfo, Stats};

use crate::args::ServerArgs;
use crate::client::{Api, Target, TokenSource, explain};
use crate::exit::{ExitStatus, Failed};
use crate::output::{self, BOLD, DIM, paint};

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// The channel: org:<id> or user:<id>.
    #[arg(value_parser = crate::args::channel)]
    pub channel: String,
    /// Events after this seq (default: everything retained).
    #[arg(long)]
    pub since: Option<u64>,
    /// At most this many events (default 100).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Close every connection of this user, on every node.
    #[arg(long, value_parser = crate::args::user_id)]
    pub user: String,
    /// The close reason the user's tabs get (default: disconnected).
    #[arg(long)]
    pub reason: Option<String>,
    /// Also refuse the user's tokens issued until now (for the server's
    /// --revocation-ttl).
    #[arg(long)]
    pub revoke: bool,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The API, a service token, and whether it was minted from `--secret`.
fn api(global: &ServerArgs) -> anyhow::Result<(Api, String, bool)> {
    let tokens = TokenSource::service(global)?;
    Ok((
        Api::new(Target::parse(&global.url)?)?,
        tokens.token()?,
        tokens.can_mint(),
    ))
}

/// 200 answers its body; a refused token is a usage error (2); anything
/// else the server refused is a failed request (1).
fn answer<T: serde::de::DeserializeOwned>(
    status: u16,
    body: Value,
    minted: bool,
) -> anyhow::Result<T> {
    match status {
        200 => serde_json::from_value(body).context(
            "the server's answer is not hrrt's (is --url an hrrt server of this version?)",
        ),
        401 | 403 => bail!("{}", explain(status, &body, "service or admin", minted)),
        _ => Err(Failed::new(explain(status, &body, "service or admin", minted)).into()),
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<ExitStatus> {
    output::line(&serde_json::to_string(value)?)?;
    Ok(ExitStatus::Ok)
}

/// Rows as aligned columns, the header dimmed.
fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<String>| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 < cells.len() {
                line.push_str(&format!("{cell:<w$}  "));
            } else {
                line.push_str(cell);
            }
        }
        line
    };
    output::line(&paint(
        DIM,
        render(header.iter().map(|h| (*h).to_owned()).collect()),
    ))?;
    for row in rows {
        output::line(&render(row.clone()))?;
    }
    Ok(())
}

fn uptime(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

pub async fn stats(args: StatsArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let (api, token, minted) = api(global)?;
    let (status, body) = api.get("/api/stats", &token).await?;
    let stats: Stats = answer(status, body, minted)?;
    if args.json {
        return print_json(&stats);
    }
    output::line(&format!(
        "{} {}  engine {}  epoch {}  up {}",
        paint(BOLD, "node"),
        stats.node_id,
        stats.engine,
        stats.epoch,
        uptime(stats.uptime_seconds),
    ))?;
    output::line(&format!(
        "connections {} (watchers {})  users {}  history {}  slow-consumer closes {}",
        stats.connections.total,
        stats.connections.watchers,
        stats.users,
        output::count(stats.history_events, "event"),
        stats.slow_consumer_closes,
    ))?;
    let mut orgs: Vec<(&String, &usize)> = stats.connections.by_org.iter().collect();
    orgs.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    if !orgs.is_empty() {
        output::line("")?;
        let rows: Vec<Vec<String>> = orgs
            .into_iter()
            .map(|(o, n)| vec![o.clone(), n.to_string()])
            .collect();
        table(&["ORG", "CONNECTIONS"], &rows)?;
    }
    let (published, delivered) = (&stats.events.published, &stats.events.delivered);
    let mut types: Vec<&String> = published.keys().chain(delivered.keys()).collect();
    types.sort();
    types.dedup();
    if !types.is_empty() {
        output::line("")?;
        let count = |m: &std::collections::BTreeMap<String, u64>, t: &String| {
            m.get(t).copied().unwrap_or(0).to_string()
        };
        let rows: Vec<Vec<String>> = types
            .into_iter()
            .map(|t| vec![t.clone(), count(published, t), count(delivered, t)])
            .collect();
        table(&["TYPE", "PUBLISHED", "DELIVERED"], &rows)?;
    }
    Ok(ExitStatus::Ok)
}

pub async fn nodes(args: NodesArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let (api, token, minted) = api(global)?;
    let (status, body) = api.get("/api/nodes", &token).await?;
    let nodes: Vec<NodeInfo> = answer(status, body, minted)?;
    if args.json {
        return print_json(&nodes);
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.clone(),
                n.engine.clone(),
                n.connections.to_string(),
                n.users.to_string(),
                uptime(n.uptime_s),
                n.last_seen.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ENGINE",
            "CONNECTIONS",
            "USERS",
            "UPTIME",
            "LAST SEEN",
        ],
        &rows,
    )?;
    Ok(ExitStatus::Ok)
}

pub async fn history(args: HistoryArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let (api, token, minted) = api(global)?;
    let mut query = vec![format!("channel={}", urlencode(&args.channel))];
    if let Some(since) = args.since {
        query.push(format!("since={since}"));
    }
    if let Some(limit) = args.limit {
        query.push(format!("limit={limit}"));
    }
    let (status, body) = api
        .get(&format!("/api/history?{}", query.join("&")), &token)
        .await?;
    let page: HistoryAnswer = answer(status, body, minted)?;
    if args.json {
        return print_json(&page);
    }
    output::line(&paint(
        DIM,
        format!(
            "{}  epoch {}  retained {}..{}  {} shown",
            page.channel,
            page.epoch,
            page.oldest,
            page.latest,
            page.events.len()
        ),
    ))?;
    for raw in &page.events {
        match ServerFrame::decode(raw.get()) {
            Ok(ServerFrame::Event(e)) => output::line(&format!(
                "{:>6}  {}  {}  {}",
                e.seq,
                paint(DIM, &e.timestamp),
                paint(BOLD, e.event_type.as_str()),
                e.payload.get()
            ))?,
            _ => output::warn(&format!("not an event in the history: {}", raw.get())),
        }
    }
    Ok(ExitStatus::Ok)
}

pub async fn disconnect(args: DisconnectArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let (api, token, minted) = api(global)?;
    let mut body = json!({"user_id": args.user, "revoke": args.revoke});
    if let Some(reason) = &args.reason {
        body["reason"] = json!(reason);
    }
    let (status, answer_body) = api.post("/api/disconnect", &token, &body).await?;
    let done: Disconnected = answer(status, answer_body, minted)?;
    if args.json {
        return print_json(&done);
    }
    let closed = done.closed;
    let revoked = match done.tokens_valid_from.as_deref() {
        Some(from) if args.revoke => format!(
            "; tokens issued before {from} (or without iat) are refused: \
             mint the user's next token from then on"
        ),
        _ => String::new(),
    };
    output::line(&format!(
        "closed {} of user {}{revoked}",
        output::count(closed as u64, "connection"),
        args.user,
    ))?;
    Ok(ExitStatus::Ok)
}

/// Percent-encodes a query value (channels hold ':' and any id character).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
