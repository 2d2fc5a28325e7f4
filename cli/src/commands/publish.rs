//! `hrrt publish`: one event from flags, or a batch from an NDJSON file.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use hrrt_protocol::api::PublishAnswer;
use serde_json::Value;

use crate::args::ServerArgs;
use crate::client::{Api, Target, TokenSource, explain};
use crate::exit::{ExitStatus, Failed};
use crate::output::{self, DIM, paint};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["org", "user"])))]
pub struct PublishArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// The event type, e.g. entity.created.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub event_type: Option<String>,
    /// Publish to every connection of this organisation.
    #[arg(long, value_parser = crate::args::org_id)]
    pub org: Option<String>,
    /// Publish to every connection (tab) of this user.
    #[arg(long, value_parser = crate::args::user_id)]
    pub user: Option<String>,
    /// The payload: JSON, @file to read a file, or - to read stdin.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Makes a retry safe: the same key within 5 minutes publishes once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Publish a batch: one event object per line, as POST /api/events
    /// takes it ({"type":…,"org_id":…,"payload":…}).
    #[arg(long, conflicts_with_all = ["org", "user", "idempotency_key"])]
    pub file: Option<PathBuf>,
    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PublishArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    let body = match &args.file {
        Some(path) => batch(path)?,
        None => single(&args)?,
    };
    let tokens = TokenSource::service(global)?;
    let api = Api::new(Target::parse(&global.url)?)?;
    let (status, answer) = api.post("/api/events", &tokens.token()?, &body).await?;
    match status {
        200 => {}
        // The token is configuration: a usage error (2).
        401 | 403 => bail!("{}", explain(status, &answer, "service", tokens.can_mint())),
        // The event was refused: the thing asked for failed (1).
        _ => {
            return Err(Failed::new(explain(status, &answer, "service", tokens.can_mint())).into());
        }
    }
    if args.json {
        output::line(&answer.to_string())?;
        return Ok(ExitStatus::Ok);
    }
    let events = match &body {
        Value::Array(events) => events.clone(),
        one => vec![one.clone()],
    };
    let acks = serde_json::from_value::<PublishAnswer>(answer)
        .context("the server's answer is not a publish acknowledgement")?
        .into_acks();
    for (event, ack) in events.iter().zip(&acks) {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("?");
        if ack.duplicate {
            output::warn(&format!(
                "idempotency key {} was used before on {}: nothing was published now, and \
                 this is the first publish's answer (a new event needs a new key)",
                event
                    .get("idempotency_key")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                ack.channel
            ));
        }
        output::line(&format!(
            "{}@{}  {kind}  {}",
            ack.channel,
            ack.seq,
            paint(DIM, output::count(ack.recipients as u64, "recipient"))
        ))?;
    }
    Ok(ExitStatus::Ok)
}

fn single(args: &PublishArgs) -> anyhow::Result<Value> {
    let Some(event_type) = &args.event_type else {
        bail!("give an event type, or --file for a batch");
    };
    let payload = read_payload(&args.payload)?;
    let mut event = serde_json::json!({"type": event_type, "payload": payload});
    match (&args.org, &args.user) {
        (Some(org), None) => event["org_id"] = org.clone().into(),
        (None, Some(user)) => event["user_id"] = user.clone().into(),
        _ => bail!("give the target: --org for an org-wide event, or --user for a user event"),
    }
    if let Some(key) = &args.idempotency_key {
        event["idempotency_key"] = key.clone().into();
    }
    Ok(event)
}

/// `--payload`: inline JSON, `@file`, or `-` for stdin.
fn read_payload(arg: &str) -> anyhow::Result<Value> {
    let (source, text) = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the payload from stdin")?;
        ("stdin".to_owned(), text)
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading payload file {path}"))?;
        (path.to_owned(), text)
    } else {
        ("--payload".to_owned(), arg.to_owned())
    };
    serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))
}

/// An NDJSON file of events, as one batch.
fn batch(path: &PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let event: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), n + 1))?;
        if !event.is_object() {
            bail!(
                "{}:{}: each line must be an event object",
                path.display(),
                n + 1
            );
        }
        events.push(event);
    }
    if events.is_empty() {
        bail!("{} holds no events", path.display());
    }
    Ok(Value::Array(events))
}
