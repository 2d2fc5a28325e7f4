//! `hrrt listen`: watch events as a user (or an admin) sees them, resuming
//! across reconnects so nothing is missed.

use std::time::Duration;

use anstyle::{AnsiColor, Style};
use anyhow::{Context, bail};
use clap::Args;
use hrrt_protocol::{Advice, Event, ResyncReason, Role, ServerFrame};
use tokio::time::Instant;

use crate::args::ServerArgs;
use crate::client::{ConnectOptions, Connection, Cursor, Received, Target, TokenSource};
use crate::exit::ExitStatus;
use crate::output::{self, DIM, paint};

#[derive(Debug, Args)]
pub struct ListenArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Listen as this user (mints a token with --secret).
    #[arg(long, value_parser = crate::args::user_id)]
    pub user: Option<String>,
    /// The user's organisation.
    #[arg(long, value_parser = crate::args::org_id)]
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
    #[arg(long, value_parser = hrrt_protocol::positive_duration)]
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

/// What ends `listen` besides the connection: Ctrl-C or `--timeout`.
struct Stops {
    interrupt: crate::interrupt::Interrupt,
    deadline: Option<Instant>,
    /// Why the last [`Stops::race`] stopped, if it did.
    why: Option<Stop>,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Interrupted,
    TimedOut,
}

/// The error a wait that was cut short returns; `run` turns it into the
/// exit status.
#[derive(Debug, thiserror::Error)]
#[error("stopped")]
struct Stopped;

impl Stops {
    /// Runs `fut` unless Ctrl-C or the deadline comes first.
    async fn race<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stopped> {
        let deadline = self.deadline;
        let why = tokio::select! {
            () = self.interrupt.recv() => Stop::Interrupted,
            () = until(deadline) => Stop::TimedOut,
            value = fut => return Ok(value),
        };
        self.why = Some(why);
        Err(Stopped)
    }
}

pub async fn run(args: ListenArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let mut stops = Stops {
        interrupt: crate::interrupt::Interrupt::new(),
        deadline: args.timeout.map(|t| Instant::now() + t),
        why: None,
    };
    let mut matched = 0;
    match listen(&args, global, &mut stops, &mut matched).await {
        Err(e) if e.is::<Stopped>() => Ok(match (stops.why, args.count) {
            (Some(Stop::TimedOut), Some(count)) => {
                output::note(&format!("timed out with {matched} of {count} events"));
                ExitStatus::Failed
            }
            _ => ExitStatus::Ok,
        }),
        other => other,
    }
}

/// Listens until `--count` events matched, or the connection cannot go on;
/// [`Stopped`] when Ctrl-C or `--timeout` came first.
async fn listen(
    args: &ListenArgs,
    global: &ServerArgs,
    stops: &mut Stops,
    matched: &mut u64,
) -> anyhow::Result<ExitStatus> {
    let target = Target::parse(&global.url)?;
    let tokens = token_source(args, global)?;
    let mut options = ConnectOptions {
        orgs: args.orgs.clone(),
        ..ConnectOptions::default()
    };
    if let Some(since) = &args.since {
        options.cursor = Cursor::parse(since).context("invalid --since")?;
    }
    let filter = TypeFilter::new(&args.types);
    let mut connected_before = false;
    let mut backoff = BACKOFF_FIRST;

    loop {
        let token = tokens.token()?;
        let attempt = Connection::open(&target, &token, &options);
        let mut connection = match stops.race(attempt).await? {
            Ok(connection) => connection,
            Err(e) if !connected_before || args.no_reconnect => return Err(e),
            Err(e) => {
                output::note(&format!("{e:#}; retrying in {}", show(backoff)));
                stops.race(tokio::time::sleep(backoff)).await?;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };

        // Read until the connection ends.
        let ended = loop {
            let (frame, text) = match stops.race(connection.next()).await? {
                Received::Frame { frame, text } => (frame, text),
                Received::Garbled { text, error } => {
                    output::warn(&format!("server sent {error}: {text}"));
                    continue;
                }
                Received::Closed(close) => break Some(close),
                Received::Lost(_) => break None,
            };
            match frame {
                ServerFrame::Connected { payload, .. } => {
                    let resumed_from = options.cursor.to_since();
                    options.cursor.on_connected(&payload);
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
                ServerFrame::Ping { .. } | ServerFrame::Refreshed { .. } => {}
                ServerFrame::Resync { payload: r, .. } => output::warn(&resync_text(&r)),
                ServerFrame::Error { payload, .. } => {
                    output::warn(&format!("server says: {}", payload.message));
                }
                ServerFrame::Event(event) => {
                    options.cursor.on_event(&event);
                    if !filter.matches(event.event_type.as_str()) {
                        continue;
                    }
                    if args.json {
                        output::line(text.as_str())?;
                    } else {
                        output::line(&human(&event))?;
                    }
                    *matched += 1;
                    if args.count.is_some_and(|n| *matched >= n) {
                        return Ok(ExitStatus::Ok);
                    }
                }
            }
        };

        let Some(why) = after_end(ended.as_ref(), &tokens, args.no_reconnect)? else {
            continue;
        };
        output::note(&format!("{why}; reconnecting in {}", show(backoff)));
        stops.race(tokio::time::sleep(backoff)).await?;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The tokens `listen` connects with: `--token`, or minted from
/// `--secret` for `--user` of `--org` (an admin for `--orgs`).
fn token_source(args: &ListenArgs, global: &ServerArgs) -> anyhow::Result<TokenSource> {
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
    TokenSource::from_args(
        global,
        args.user.as_deref(),
        org,
        role,
        "pass --token, or --secret (HRRT_JWT_SECRET) with --user and --org",
    )
}

/// What to do once a connection ended (`ended`: how the server closed
/// it, if it did): an error when it cannot go on, `None` to reconnect at
/// once (a fresh token for an expired one), else why, to say before the
/// backoff.
fn after_end(
    ended: Option<&hrrt_protocol::Close>,
    tokens: &TokenSource,
    no_reconnect: bool,
) -> anyhow::Result<Option<String>> {
    if let Some(close) = ended {
        if close.is_token_expired() && tokens.can_mint() {
            output::note("token expired; reconnecting with a fresh one");
            return Ok(None);
        }
        match close.advice() {
            // Not worth retrying with the same token or frames: the
            // token (or the client) is misconfigured, a usage error.
            Advice::NewToken | Advice::FixFrame => bail!("{}", tokens.explain_close(close)),
            Advice::Reconnect | Advice::Stop => {}
        }
    }
    let why = match ended {
        Some(close) => format!("connection closed ({close})"),
        None => "connection lost".to_owned(),
    };
    if no_reconnect {
        bail!("{why}");
    }
    Ok(Some(why))
}

/// What a `resync.required` means for the person listening.
fn resync_text(r: &hrrt_protocol::frame::Resync) -> String {
    let what = match r.reason {
        ResyncReason::HistoryTrimmed => format!(
            "asked from {}, but the oldest event kept is {}: the events between are gone",
            r.requested, r.oldest
        ),
        ResyncReason::EpochChanged => {
            "the server's history restarted (a new epoch): positions from before mean nothing now"
                .to_owned()
        }
        ResyncReason::PositionAhead => format!(
            "asked from {}, which the channel has not reached: the position is wrong \
             (a typo in --since?) or from a server whose history was lost",
            r.requested
        ),
    };
    format!(
        "resync required on {} ({}): {what}; refetch state",
        r.channel,
        r.reason.as_str()
    )
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// One aligned, coloured line: time, type, channel@seq, compact payload.
fn human(event: &Event) -> String {
    const MAX_PAYLOAD: usize = 400;
    let kind = event.event_type.as_str();
    // `2026-01-01T12:00:00.123456Z` → `12:00:00.123`
    let time = event.timestamp.get(11..23).unwrap_or("");
    let position = format!("{}@{}", event.channel, event.seq);
    let mut payload = event.payload_value().to_string();
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
