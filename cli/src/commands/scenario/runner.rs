//! Runs one scenario against a server, step by step, and says what held.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use hrrt_protocol::auth::{Claims, Role, mint, unix_now};
use hrrt_protocol::{ClientFrame, Close, ServerFrame};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::format::{
    ClientSpec, ConnectStep, Matcher, PublishStep, RefreshStep, Scenario, Step, duration,
};
use super::isolate::Names;
use super::matcher::summarize;
use crate::client::{
    Api, ConnectOptions, Connection, Cursor, Received, Receiver, Sender, Target, TokenIn,
};

/// Default wait of `expect` and `expect_close`.
const DEFAULT_WITHIN: Duration = Duration::from_secs(2);
/// Default quiet time of `expect_none`.
const DEFAULT_QUIET: Duration = Duration::from_millis(300);
/// How long a `connect` may take to get its first frame.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);
/// Frames kept per client for later expectations and failure messages.
const BUFFER: usize = 1000;

/// Where scenarios run.
#[derive(Debug, Clone)]
pub struct Env {
    pub target: Target,
    /// Signs the clients' and the publisher's tokens.
    pub secret: Option<String>,
    pub api: Api,
    /// How often the server checks token expiry, as its `/api/stats`
    /// says: a step waiting for `token expired` waits that long.
    pub token_check: Duration,
}

/// The server's token check when `/api/stats` does not say (its default).
pub const DEFAULT_TOKEN_CHECK: Duration = Duration::from_secs(60);

impl Env {
    /// Reads the settings the steps depend on from the server's
    /// `/api/stats`; keeps the defaults (and says so) if it cannot.
    pub async fn read_settings(&mut self) -> Option<String> {
        let secret = self.secret.as_deref()?;
        let token = mint(
            secret,
            &Claims::new("hrrt-scenario", None, Role::Service, 60),
        )
        .ok()?;
        match self.api.get("/api/stats", &token).await {
            Ok((200, stats)) => match serde_json::from_value::<hrrt_protocol::api::Stats>(stats) {
                Ok(stats) => {
                    self.token_check =
                        Duration::from_millis(stats.settings.token_check_interval_ms);
                    None
                }
                Err(e) => Some(format!(
                    "the server's /api/stats is not this hrrt's ({e}); assuming a token check every {}",
                    humantime::format_duration(self.token_check)
                )),
            },
            Ok((status, body)) => Some(format!(
                "cannot read the server's settings (GET /api/stats answered {status}: {body}); \
                 assuming a token check every {}",
                humantime::format_duration(self.token_check)
            )),
            Err(e) => Some(format!("{e:#}")),
        }
    }
}

/// What became of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub number: usize,
    pub step: String,
    pub millis: u128,
    /// `passed`, `failed` or `skipped` (after a failure).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the step had to do because of a server setting (a longer
    /// wait), said so that a slow step is not a mystery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What became of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    pub file: String,
    pub name: String,
    pub passed: bool,
    pub millis: u128,
    pub steps: Vec<StepOutcome>,
}

impl ScenarioOutcome {
    pub fn failure(&self) -> Option<&StepOutcome> {
        self.steps.iter().find(|s| s.status == "failed")
    }
}

/// One frame a client received.
#[derive(Debug, Clone)]
enum Frame {
    Server(ServerFrame),
    Close(Close),
    /// The connection ended without a close frame.
    Lost(String),
}

/// A connected client.
struct Live {
    sink: Sender,
    inbox: mpsc::UnboundedReceiver<Frame>,
    /// Received and not yet matched, oldest first.
    buffer: VecDeque<Frame>,
}

struct ClientState {
    spec: ClientSpec,
    live: Option<Live>,
    /// Where it stands, for `resume: true`.
    cursor: Cursor,
    /// Each channel's position when it first connected: a step's `seq: N`
    /// is the Nth event after it, whatever the server held before.
    base: BTreeMap<String, u64>,
    /// When its current token expires (UNIX seconds), if it has one.
    expires_at: Option<u64>,
}

pub async fn run(env: &Env, file: &str, written: &Scenario) -> ScenarioOutcome {
    let started = Instant::now();
    let scenario = &Names::for_run(written, &crate::random_hex(3)).scenario(written);
    let mut clients: HashMap<String, ClientState> = scenario
        .clients
        .iter()
        .map(|(name, spec)| {
            (
                name.clone(),
                ClientState {
                    spec: spec.clone(),
                    live: None,
                    cursor: Cursor::default(),
                    base: BTreeMap::new(),
                    expires_at: None,
                },
            )
        })
        .collect();
    let mut steps = Vec::new();
    let mut failed = false;
    // Steps are named as written; they run with the run's own ids.
    for (i, (step, as_written)) in scenario.steps.iter().zip(&written.steps).enumerate() {
        let label = describe(as_written);
        if failed {
            steps.push(StepOutcome {
                number: i + 1,
                step: label,
                millis: 0,
                status: "skipped",
                error: None,
                note: None,
            });
            continue;
        }
        let t = Instant::now();
        let mut note = None;
        let result = run_step(env, &mut clients, step, &mut note).await;
        failed = result.is_err();
        steps.push(StepOutcome {
            number: i + 1,
            step: label,
            millis: t.elapsed().as_millis(),
            status: if failed { "failed" } else { "passed" },
            error: result.err(),
            note,
        });
    }
    for state in clients.values_mut() {
        if let Some(live) = state.live.take() {
            live.sink.close().await;
        }
    }
    ScenarioOutcome {
        file: file.to_owned(),
        name: scenario.name.clone(),
        passed: !failed,
        millis: started.elapsed().as_millis(),
        steps,
    }
}

/// The step in a few words.
fn describe(step: &Step) -> String {
    match step {
        Step::Connect(c) => format!("connect {}", c.names().join(", ")),
        Step::Disconnect(c) => format!("disconnect {}", c.names().join(", ")),
        Step::Publish(p) => match (&p.kind, &p.batch, &p.raw) {
            (Some(kind), _, _) => {
                let target = match (&p.org_id, &p.user_id) {
                    (Some(org), _) => format!(" to org:{}", org.as_string()),
                    (_, Some(user)) => format!(" to user:{}", user.as_string()),
                    _ => String::new(),
                };
                let status = p
                    .expect_status
                    .map(|s| format!(" (expect {s})"))
                    .unwrap_or_default();
                format!("publish {kind}{target}{status}")
            }
            (_, Some(batch), _) => format!("publish a batch of {}", batch.len()),
            _ => format!(
                "publish a raw body (expect {})",
                p.expect_status.unwrap_or(200)
            ),
        },
        Step::Expect(e) => format!(
            "expect {} ← {}",
            e.names().join(", "),
            e.matcher().describe()
        ),
        Step::ExpectNone(e) => format!(
            "expect none at {} of {}",
            e.names().join(", "),
            e.matcher().describe()
        ),
        Step::ExpectClose(e) => format!(
            "expect {} closed {}{}",
            e.client,
            e.code,
            e.reason
                .as_ref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        ),
        Step::RefreshToken(r) => format!("refresh token of {}", r.client),
        Step::Sleep(d) => format!("sleep {d}"),
    }
}

async fn run_step(
    env: &Env,
    clients: &mut HashMap<String, ClientState>,
    step: &Step,
    note: &mut Option<String>,
) -> Result<(), String> {
    match step {
        Step::Connect(c) => connect(env, clients, c).await,
        Step::Disconnect(c) => {
            for name in c.names() {
                let state = client(clients, name)?;
                let mut live = state
                    .live
                    .take()
                    .ok_or_else(|| format!("{name} is not connected"))?;
                drain(&mut live, &mut state.cursor);
                live.sink.close().await;
            }
            Ok(())
        }
        Step::Publish(p) => publish(env, clients, p).await,
        Step::Expect(e) => {
            let within = duration("within", e.within.as_deref(), DEFAULT_WITHIN)?;
            let matcher = e.matcher();
            // One window for all clients: the step takes at most `within`.
            let deadline = tokio::time::Instant::now() + within;
            for name in e.names() {
                let state = client(clients, name)?;
                expect(name, state, &matcher, within, deadline).await?;
            }
            Ok(())
        }
        Step::ExpectNone(e) => {
            let quiet = duration("for", e.duration.as_deref(), DEFAULT_QUIET)?;
            let matcher = e.matcher();
            // All clients are watched over the same window.
            let deadline = tokio::time::Instant::now() + quiet;
            for name in e.names() {
                let state = client(clients, name)?;
                expect_none(name, state, &matcher, deadline).await?;
            }
            Ok(())
        }
        Step::ExpectClose(e) => {
            let mut within = duration("within", e.within.as_deref(), DEFAULT_WITHIN)?;
            let state = client(clients, &e.client)?;
            // The server finds an expired token at its next check: wait
            // for that check, and say why the step takes that long.
            if e.reason.as_deref() == Some(hrrt_protocol::close::reason::TOKEN_EXPIRED)
                && let Some(exp) = state.expires_at
            {
                let left = Duration::from_secs(exp.saturating_sub(unix_now()));
                let needed = left + env.token_check + TOKEN_CHECK_MARGIN;
                if needed > within {
                    *note = Some(format!(
                        "waited up to {} (not {}): the server checks tokens every {} \
                         (--token-check-interval)",
                        humantime::format_duration(round_secs(needed)),
                        humantime::format_duration(within),
                        humantime::format_duration(env.token_check),
                    ));
                    within = needed;
                }
            }
            expect_close(&e.client, state, e.code, e.reason.as_deref(), within).await
        }
        Step::RefreshToken(r) => refresh(env, clients, r).await,
        Step::Sleep(d) => {
            tokio::time::sleep(duration("sleep", Some(d), Duration::ZERO)?).await;
            Ok(())
        }
    }
}

/// What a token check may take beyond its interval on a busy server.
const TOKEN_CHECK_MARGIN: Duration = Duration::from_secs(2);

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn client<'a>(
    clients: &'a mut HashMap<String, ClientState>,
    name: &str,
) -> Result<&'a mut ClientState, String> {
    clients
        .get_mut(name)
        .ok_or_else(|| format!("no client named '{name}'"))
}

/// The client's token, as its spec says; `None` for `missing: true`.
fn token(
    env: &Env,
    spec: &ClientSpec,
    user_override: Option<String>,
    ttl: Option<&str>,
) -> Result<Option<String>, String> {
    if spec.missing {
        return Ok(None);
    }
    if let Some(token) = &spec.token {
        return Ok(Some(token.clone()));
    }
    let secret = env
        .secret
        .as_deref()
        .ok_or("minting tokens needs the server's secret: pass --secret, or --spawn")?;
    let role: Role = spec.role.as_deref().unwrap_or("user").parse()?;
    let user = user_override
        .or_else(|| spec.user.as_ref().map(|u| u.as_string()))
        .ok_or("the client has no user")?;
    let org = spec.org.as_ref().map(|o| o.as_string());
    let ttl = duration(
        "ttl",
        ttl.or(spec.ttl.as_deref()),
        Duration::from_secs(3600),
    )?;
    let mut claims = Claims::new(&user, org.as_deref(), role, ttl.as_secs());
    if spec.expired {
        claims.exp = unix_now().saturating_sub(60);
        claims.iat = claims.exp.saturating_sub(3600);
    }
    let key = if spec.invalid {
        format!("not-{secret}")
    } else {
        secret.to_owned()
    };
    mint(&key, &claims)
        .map(Some)
        .map_err(|e| format!("minting a token: {e}"))
}

async fn connect(
    env: &Env,
    clients: &mut HashMap<String, ClientState>,
    step: &ConnectStep,
) -> Result<(), String> {
    let (since, resume, epoch, orgs, refused) = match step {
        ConnectStep::Plain(_) => (None, false, None, None, false),
        ConnectStep::Detailed(o) => (
            o.since.clone(),
            o.resume,
            o.epoch.clone(),
            o.orgs.clone(),
            o.refused,
        ),
    };
    for name in step.names() {
        let state = client(clients, name)?;
        if state.live.is_some() {
            return Err(format!("{name} is already connected"));
        }
        let cursor = if let Some(since) = &since {
            let mut cursor = Cursor::parse(since).map_err(|e| format!("{name}: since: {e}"))?;
            cursor.epoch = epoch.clone();
            cursor
        } else if resume && !state.cursor.is_empty() {
            let mut cursor = state.cursor.clone();
            cursor.epoch = epoch.clone().or_else(|| state.cursor.epoch.clone());
            cursor
        } else {
            Cursor::default()
        };
        let options = ConnectOptions {
            // ?token= is how the browser front end connects.
            token_in: TokenIn::Query,
            cursor,
            orgs: orgs.clone(),
            timeout: CONNECT_WITHIN,
            ..ConnectOptions::default()
        };
        // Minted now, as the client connects: a short-lived token must not
        // spend its life waiting for the steps before. A client without a
        // token sends none (an empty one is "missing").
        let token = token(env, &state.spec, None, None)?.unwrap_or_default();
        state.expires_at = expiry(&token);
        let connection = Connection::open(&env.target, &token, &options)
            .await
            .map_err(|e| format!("{name}: {e:#}"))?;
        let (sink, stream) = connection.split();
        let (tx, inbox) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(stream, tx));
        let mut live = Live {
            sink,
            inbox,
            buffer: VecDeque::new(),
        };
        // Wait for the first frame: `connected` means the server registered
        // the connection, so what is published next reaches it.
        let first = tokio::time::timeout(CONNECT_WITHIN, live.inbox.recv())
            .await
            .map_err(|_| {
                format!(
                    "{name}: no first frame within {}s",
                    CONNECT_WITHIN.as_secs()
                )
            })?
            .unwrap_or(Frame::Lost("connection ended".to_owned()));
        let expects_refusal = refused || state.spec.expects_refusal();
        match &first {
            Frame::Server(ServerFrame::Connected { payload, .. }) => {
                state.cursor.on_connected(payload);
                for (channel, seq) in &payload.positions {
                    state.base.entry(channel.clone()).or_insert(*seq);
                }
                if refused {
                    return Err(format!("{name} was expected to be refused but connected"));
                }
            }
            Frame::Close(close) if !expects_refusal => {
                return Err(format!("{name} was refused: {close}"));
            }
            Frame::Server(frame) => {
                return Err(format!("{name}: first frame was {}", summarize(frame)));
            }
            Frame::Lost(why) if !expects_refusal => {
                return Err(format!("{name}: connection lost: {why}"));
            }
            _ => {}
        }
        live.buffer.push_back(first);
        state.live = Some(live);
    }
    Ok(())
}

/// A token's `exp`, read without checking it (the runner minted it).
fn expiry(token: &str) -> Option<u64> {
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    let exp = claims["exp"].as_f64()?;
    (exp.is_finite() && exp >= 0.0).then(|| exp.ceil() as u64)
}

/// Forwards what a client receives to its inbox until the connection ends.
async fn read_frames(mut stream: Receiver, tx: mpsc::UnboundedSender<Frame>) {
    loop {
        let (frame, last) = match stream.next().await {
            Received::Frame { frame, .. } => (Frame::Server(frame), false),
            Received::Garbled { error, .. } => (Frame::Lost(format!("server sent {error}")), true),
            Received::Closed(close) => (Frame::Close(close), true),
            Received::Lost(why) => (Frame::Lost(why), true),
        };
        if tx.send(frame).is_err() || last {
            return;
        }
    }
}

/// Moves everything already received into the buffer.
fn drain(live: &mut Live, cursor: &mut Cursor) {
    while let Ok(frame) = live.inbox.try_recv() {
        keep(live, cursor, frame);
    }
}

fn keep(live: &mut Live, cursor: &mut Cursor, frame: Frame) {
    match &frame {
        Frame::Server(ServerFrame::Connected { payload, .. }) => cursor.on_connected(payload),
        Frame::Server(ServerFrame::Event(event)) => cursor.on_event(event),
        _ => {}
    }
    if live.buffer.len() >= BUFFER {
        live.buffer.pop_front();
    }
    live.buffer.push_back(frame);
}

/// The last few frames a client got, for a failure message.
fn received(live: &Live) -> String {
    let recent: Vec<String> = live
        .buffer
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|f| match f {
            Frame::Server(frame) => summarize(frame),
            Frame::Close(close) => format!("close {close}"),
            Frame::Lost(why) => format!("lost: {why}"),
        })
        .collect();
    if recent.is_empty() {
        "nothing".to_owned()
    } else {
        recent.join("; ")
    }
}

fn take_match(
    live: &mut Live,
    matcher: &Matcher,
    base: &BTreeMap<String, u64>,
) -> Option<ServerFrame> {
    let index = live
        .buffer
        .iter()
        .position(|f| matches!(f, Frame::Server(frame) if matcher.matches(frame, base)))?;
    match live.buffer.remove(index) {
        Some(Frame::Server(frame)) => Some(frame),
        _ => None,
    }
}

async fn expect(
    name: &str,
    state: &mut ClientState,
    matcher: &Matcher,
    within: Duration,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let live = state
        .live
        .as_mut()
        .ok_or_else(|| format!("{name} is not connected"))?;
    drain(live, &mut state.cursor);
    if take_match(live, matcher, &state.base).is_some() {
        return Ok(());
    }
    loop {
        match tokio::time::timeout_at(deadline, live.inbox.recv()).await {
            Err(_) => {
                return Err(format!(
                    "{name} got no {} within {}; it received: {}",
                    matcher.describe(),
                    humantime::format_duration(within),
                    received(live)
                ));
            }
            Ok(None) => {
                return Err(format!(
                    "{name}'s connection ended; it received: {}",
                    received(live)
                ));
            }
            Ok(Some(frame)) => {
                let closed = !matches!(frame, Frame::Server(_));
                keep(live, &mut state.cursor, frame);
                if take_match(live, matcher, &state.base).is_some() {
                    return Ok(());
                }
                if closed {
                    return Err(format!(
                        "{name} was closed before any {}; it received: {}",
                        matcher.describe(),
                        received(live)
                    ));
                }
            }
        }
    }
}

async fn expect_none(
    name: &str,
    state: &mut ClientState,
    matcher: &Matcher,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let live = state
        .live
        .as_mut()
        .ok_or_else(|| format!("{name} is not connected"))?;
    drain(live, &mut state.cursor);
    let base = &state.base;
    let found = |live: &mut Live| {
        take_match(live, matcher, base).map(|v| format!("{name} got {}", summarize(&v)))
    };
    if let Some(e) = found(live) {
        return Err(e);
    }
    loop {
        match tokio::time::timeout_at(deadline, live.inbox.recv()).await {
            Err(_) | Ok(None) => return Ok(()),
            Ok(Some(frame)) => {
                keep(live, &mut state.cursor, frame);
                if let Some(e) = found(live) {
                    return Err(e);
                }
            }
        }
    }
}

async fn expect_close(
    name: &str,
    state: &mut ClientState,
    code: u16,
    reason: Option<&str>,
    within: Duration,
) -> Result<(), String> {
    let live = state
        .live
        .as_mut()
        .ok_or_else(|| format!("{name} is not connected"))?;
    drain(live, &mut state.cursor);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let close = live.buffer.iter().find_map(|f| match f {
            Frame::Close(close) => Some(Ok((close.code.as_u16(), close.reason.clone()))),
            Frame::Lost(why) => Some(Err(why.clone())),
            Frame::Server(_) => None,
        });
        match close {
            Some(Ok((c, r))) => {
                state.live = None;
                return if c == code && reason.is_none_or(|want| want == r) {
                    Ok(())
                } else {
                    Err(format!(
                        "{name} was closed {c} '{r}', expected {code}{}",
                        reason.map(|r| format!(" '{r}'")).unwrap_or_default()
                    ))
                };
            }
            Some(Err(why)) => {
                state.live = None;
                return Err(format!(
                    "{name}'s connection ended without a close frame ({why})"
                ));
            }
            None => {}
        }
        match tokio::time::timeout_at(deadline, live.inbox.recv()).await {
            Err(_) => {
                return Err(format!(
                    "{name} was not closed within {}; it received: {}",
                    humantime::format_duration(within),
                    received(live)
                ));
            }
            Ok(None) => {
                live.buffer
                    .push_back(Frame::Lost("connection ended".to_owned()));
            }
            Ok(Some(frame)) => keep(live, &mut state.cursor, frame),
        }
    }
}

async fn publish(
    env: &Env,
    clients: &mut HashMap<String, ClientState>,
    p: &PublishStep,
) -> Result<(), String> {
    let token = match &p.as_client {
        Some(name) => token(env, &client(clients, name)?.spec, None, None)?,
        None => {
            let secret = env
                .secret
                .as_deref()
                .ok_or("publishing needs a service token: pass --secret, or --spawn")?;
            Some(
                mint(
                    secret,
                    &Claims::new("hrrt-scenario", None, Role::Service, 600),
                )
                .map_err(|e| e.to_string())?,
            )
        }
    };
    let body = if let Some(raw) = &p.raw {
        raw.clone()
    } else if let Some(batch) = &p.batch {
        Value::Array(batch.clone()).to_string()
    } else {
        let mut event = json!({"type": p.kind, "payload": p.payload.clone().unwrap_or(json!({}))});
        if let Some(org) = &p.org_id {
            event["org_id"] = org.as_string().into();
        }
        if let Some(user) = &p.user_id {
            event["user_id"] = user.as_string().into();
        }
        if let Some(key) = &p.idempotency_key {
            event["idempotency_key"] = key.clone().into();
        }
        event.to_string()
    };
    let (status, answer) = env
        .api
        .post_text("/api/events", token.as_deref(), body)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let expected = p.expect_status.unwrap_or(200);
    if status == expected {
        Ok(())
    } else {
        Err(format!("expected HTTP {expected}, got {status}: {answer}"))
    }
}

async fn refresh(
    env: &Env,
    clients: &mut HashMap<String, ClientState>,
    r: &RefreshStep,
) -> Result<(), String> {
    let state = client(clients, &r.client)?;
    let mut spec = state.spec.clone();
    spec.invalid = r.invalid;
    spec.expired = false;
    let token = token(
        env,
        &spec,
        r.user.as_ref().map(|u| u.as_string()),
        r.ttl.as_deref(),
    )?
    .ok_or("a client without a token cannot refresh")?;
    let live = state
        .live
        .as_mut()
        .ok_or_else(|| format!("{} is not connected", r.client))?;
    live.sink
        .send(&ClientFrame::AuthRefresh { token })
        .await
        .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_spec() {
        let env = Env {
            target: Target::parse("http://127.0.0.1:1").unwrap(),
            secret: Some("s".into()),
            api: Api::new(Target::parse("http://127.0.0.1:1").unwrap()).unwrap(),
            token_check: DEFAULT_TOKEN_CHECK,
        };
        let spec = |f: fn(&mut ClientSpec)| {
            let mut s = ClientSpec {
                user: Some(super::super::format::Id::Int(1)),
                org: Some(super::super::format::Id::Int(7)),
                ..ClientSpec::default()
            };
            f(&mut s);
            s
        };
        let verifier = hrrt_protocol::Verifier::new("s");
        let ok = token(&env, &spec(|_| {}), None, None).unwrap().unwrap();
        assert_eq!(verifier.verify(&ok).unwrap().user.as_str(), "1");
        let expired = token(&env, &spec(|s| s.expired = true), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            verifier.verify(&expired),
            Err(hrrt_protocol::AuthError::Expired)
        );
        let invalid = token(&env, &spec(|s| s.invalid = true), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            verifier.verify(&invalid),
            Err(hrrt_protocol::AuthError::Invalid)
        );
        assert_eq!(
            token(&env, &spec(|s| s.missing = true), None, None).unwrap(),
            None
        );
    }
}
