//! One WebSocket connection, from handshake to close.
//!
//! The handshake authenticates; the session then registers the connection
//! in the hub *before* reading positions and history, so an event published
//! meanwhile is either in the snapshot or in the queue. Events from the
//! queue whose seq the snapshot already covered are dropped: no gap, no
//! duplicate.
//!
//! The session task is the connection's only writer. It owns the socket and
//! `select!`s over its connection's wake-up (frames queued by the hub, or a
//! reason to close) and the socket's incoming frames. Queued frames are
//! written as one batch with a single flush.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::{AuthError, Identity, Role};
use crate::engine::{HistoryPage, Publication};
use crate::error::ApiError;
use crate::hub::{CloseReason, Conn, ConnId, Interest, Limits, Outbound, Refused, Registration};
use crate::metrics::{ClosedBy, Metrics};
use crate::protocol::{
    self, ChannelName, ClientFrame, Connected, OrgId, Resync, ResyncReason, close, error_code,
};

/// How long a close frame (and the peer's answer) may take before the
/// socket is dropped regardless; a client that stopped reading cannot
/// stall shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// tungstenite's read buffer per connection. Its default (128 KiB) is
/// zero-filled on the first read, so every idle connection would hold
/// 128 KiB of RSS; clients send only small frames (pongs, refreshes), and
/// a larger one still fits because the buffer grows to the frame's length.
/// Measured with `scripts/bench.sh` (idle row of docs/benchmarks.md).
const READ_BUFFER: usize = 512;

/// Query parameters of `GET /ws`.
#[derive(Debug, Default, Deserialize)]
pub struct WsParams {
    /// The JWT. *compat* (also accepted as `Authorization: Bearer`)
    pub token: Option<String>,
    /// Resume cursor: `org:7@41,user:42@3`.
    pub since: Option<String>,
    /// The epoch the cursor belongs to.
    pub epoch: Option<String>,
    /// Admin watch: `7,9` or `*`.
    pub orgs: Option<String>,
}

/// `GET /ws`: authenticates, upgrades, and runs the session. Failures are
/// reported after the upgrade as close 1008 so browsers can read the reason.
pub async fn handler(
    State(state): State<AppState>,
    query: Result<Query<WsParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                "upgrade_required",
                format!(
                    "/ws takes WebSocket handshakes only: {}",
                    rejection.body_text()
                ),
            )
            .into_response();
        }
    };
    if !origin_allowed(&state.config.allowed_origins, &headers) {
        // Refused before the upgrade: a page on another site must not get a
        // socket that rides on the user's credentials (cross-site WebSocket
        // hijacking).
        return ApiError::forbidden("origin not allowed").into_response();
    }
    let params = query.map(|q| q.0).unwrap_or_default();
    let token = params
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&headers));
    let auth = match token {
        None => Err(AuthError::Missing),
        Some(token) => state.verifier.verify(token).and_then(|id| match id.role {
            Role::Service => Err(AuthError::Forbidden),
            Role::User | Role::Admin => Ok(id),
        }),
    };
    let max = usize::try_from(state.config.max_message_bytes).unwrap_or(usize::MAX);
    upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            tracker.track_future(async move {
                if let Some(live) = Box::pin(setup(socket, state, auth, params)).await {
                    live.run().await;
                }
            })
        })
}

/// Whether the handshake's `Origin` is on the allow-list. An empty list
/// allows any origin; a request without `Origin` is not from a browser
/// (browsers always send it) and is allowed.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let allowed: Vec<&str> = allowed
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .collect();
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Everything a live connection's task holds. Built by [`setup`], run by
/// [`Live::run`]; setup's own (larger) future is boxed and freed first, so
/// an idle connection costs only this and the loop's small futures.
struct Live {
    socket: WebSocket,
    state: AppState,
    conn: Arc<Conn>,
    identity: Identity,
    sent: Sent,
    /// `connected`, then resyncs and replayed events.
    start: Vec<Utf8Bytes>,
    registration: Registration,
    _subscription: Subscription,
}

/// Admits, registers and subscribes the connection and prepares its first
/// frames; closes the socket itself when any of that fails.
async fn setup(
    mut socket: WebSocket,
    state: AppState,
    auth: Result<Identity, AuthError>,
    params: WsParams,
) -> Option<Live> {
    let Admitted {
        identity,
        org,
        interest,
        cursor,
    } = match admit(&state, auth, &params) {
        Ok(admitted) => admitted,
        Err(reason) => {
            tracing::debug!(code = reason.code, reason = %reason.reason, "refused websocket");
            refuse(&state, &mut socket, &reason).await;
            return None;
        }
    };
    let id = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let capacity = usize::try_from(state.config.send_queue).unwrap_or(usize::MAX);
    let conn = Arc::new(Conn::new(
        id,
        identity.user.clone(),
        org,
        interest,
        identity.exp,
        capacity,
    ));
    let limits = Limits {
        max_connections: state.config.max_connections,
        max_per_user: state.config.max_connections_per_user,
    };
    let registration = match state.hub.register(conn.clone(), limits) {
        Ok(registration) => registration,
        Err(refused) => {
            let reason = match refused {
                Refused::LimitReached => CloseReason::CONNECTION_LIMIT,
                Refused::ShuttingDown => CloseReason::SHUTDOWN,
            };
            tracing::info!(user = %conn.user, org = %conn.org, reason = %reason.reason, "refused websocket");
            refuse(&state, &mut socket, &reason).await;
            return None;
        }
    };
    let subscription = match Subscription::new(&state, &conn).await {
        Ok(subscription) => subscription,
        Err(e) => {
            tracing::warn!(conn = id.0, error = %e, "engine subscribe failed");
            refuse(&state, &mut socket, &CloseReason::ENGINE_UNAVAILABLE).await;
            return None;
        }
    };
    let start = match start_frames(&state, &conn, &cursor, params.epoch.as_deref()).await {
        Ok(start) => start,
        Err(e) => {
            tracing::warn!(conn = id.0, error = %e, "reading positions failed");
            refuse(&state, &mut socket, &CloseReason::ENGINE_UNAVAILABLE).await;
            return None;
        }
    };
    tracing::info!(
        conn = id.0,
        user = %conn.user,
        org = %conn.org,
        role = identity.role.as_str(),
        resumed = !cursor.is_empty(),
        "connected"
    );
    Some(Live {
        socket,
        state,
        conn,
        identity,
        sent: start.sent,
        start: start.frames,
        registration,
        _subscription: subscription,
    })
}

impl Live {
    /// Writes the start frames, then queued frames as they come, and
    /// answers client frames, until the connection ends.
    async fn run(self) {
        let Live {
            mut socket,
            state,
            conn,
            identity,
            mut sent,
            start,
            registration,
            _subscription,
        } = self;
        let mut outcome =
            written(until_closed(&conn, Box::pin(write_all(&mut socket, start))).await);
        let mut batch = VecDeque::new();
        let mut peer_code = None;
        while outcome.is_none() {
            if let Some(reason) = conn.close_reason() {
                outcome = Some(Ending::Close(reason.clone()));
                break;
            }
            conn.take_queued(&mut batch);
            if !batch.is_empty() {
                // Boxed: inline, the write's future would sit in every
                // idle connection's task for its whole life (~0.5 KiB of
                // the 5.4 KiB per connection); one allocation per batch is
                // cheap next to the `send` it makes.
                let write = Box::pin(write_batch(
                    &mut socket,
                    &mut batch,
                    &mut sent,
                    &state.metrics,
                ));
                outcome = written(until_closed(&conn, write).await);
                // After a burst, give the memory back rather than keep the
                // peak for the connection's whole life.
                if batch.capacity() > 64 {
                    batch = VecDeque::new();
                }
                continue;
            }
            outcome = tokio::select! {
                biased;
                () = conn.woken() => None,
                incoming = socket.recv() => {
                    match on_incoming(&state, &conn, &identity, incoming, &mut peer_code) {
                        Reply::None => None,
                        Reply::End(ending) => Some(ending),
                        Reply::Send(frame) => {
                            let write = Box::pin(socket.send(Message::Text(frame)));
                            written(until_closed(&conn, write).await)
                        }
                    }
                }
            };
        }
        let (code, by) = match outcome {
            Some(Ending::Close(reason)) => {
                if reason == CloseReason::SLOW_CONSUMER {
                    tracing::warn!(conn = conn.id.0, user = %conn.user, org = %conn.org, "closing slow consumer");
                    state.metrics.slow_consumer();
                }
                state.metrics.closed(reason.code, ClosedBy::Server);
                // Out of the hub first: a client that stopped reading must
                // not hold a place (or a cap) while its close frame waits.
                drop(registration);
                Box::pin(close_socket(&mut socket, &reason)).await;
                (reason.code, ClosedBy::Server)
            }
            // 1006: the connection ended without a close frame.
            _ => {
                let code = peer_code.unwrap_or(1006);
                state.metrics.closed(code, ClosedBy::Client);
                (code, ClosedBy::Client)
            }
        };
        tracing::info!(
            conn = conn.id.0,
            user = %conn.user,
            org = %conn.org,
            code,
            by = if by == ClosedBy::Server { "server" } else { "client" },
            "disconnected"
        );
    }
}

/// A handshake that passed every check.
struct Admitted {
    identity: Identity,
    org: OrgId,
    interest: Interest,
    cursor: Vec<(ChannelName, u64)>,
}

/// Checks token, cursor and `orgs=`, and works out what the connection reads.
fn admit(
    state: &AppState,
    auth: Result<Identity, AuthError>,
    params: &WsParams,
) -> Result<Admitted, CloseReason> {
    if state.shutdown.is_cancelled() {
        return Err(CloseReason::SHUTDOWN);
    }
    let identity = auth.map_err(|e| policy(e.to_string()))?;
    let cursor = match params.since.as_deref().map(protocol::parse_cursor) {
        None => Vec::new(),
        Some(Ok(cursor)) => cursor,
        Some(Err(_)) => return Err(policy("invalid since".to_owned())),
    };
    let forbidden = || policy(AuthError::Forbidden.to_string());
    let org = identity.org.clone().ok_or_else(forbidden)?;
    let interest = match params.orgs.as_deref() {
        None => Interest {
            channels: vec![ChannelName::org(&org), ChannelName::user(&identity.user)],
            all: false,
        },
        Some(_) if identity.role != Role::Admin => return Err(forbidden()),
        Some(orgs) => parse_orgs(orgs).ok_or_else(|| policy("invalid orgs".to_owned()))?,
    };
    Ok(Admitted {
        identity,
        org,
        interest,
        cursor,
    })
}

/// The most orgs one admin connection may list.
const MAX_WATCHED_ORGS: usize = 1000;

/// `*` (every channel) or a comma list of org ids.
fn parse_orgs(orgs: &str) -> Option<Interest> {
    if orgs.trim() == "*" {
        return Some(Interest {
            channels: Vec::new(),
            all: true,
        });
    }
    let mut channels = Vec::new();
    for org in orgs.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let channel = ChannelName::org(&OrgId::new(org).ok()?);
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    (!channels.is_empty() && channels.len() <= MAX_WATCHED_ORGS).then_some(Interest {
        channels,
        all: false,
    })
}

/// Closes a connection that never started, and counts it.
async fn refuse(state: &AppState, socket: &mut WebSocket, reason: &CloseReason) {
    state.metrics.closed(reason.code, ClosedBy::Server);
    close_socket(socket, reason).await;
}

/// Holds the engine subscription of a connection; released on drop.
struct Subscription {
    state: AppState,
    conn: Arc<Conn>,
}

impl Subscription {
    async fn new(state: &AppState, conn: &Arc<Conn>) -> Result<Self, crate::engine::EngineError> {
        let interest = &conn.interest;
        state.engine.subscribe(&interest.channels).await?;
        if interest.all
            && let Err(e) = state.engine.subscribe_all().await
        {
            state.engine.unsubscribe(&interest.channels);
            return Err(e);
        }
        Ok(Self {
            state: state.clone(),
            conn: conn.clone(),
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let interest = &self.conn.interest;
        self.state.engine.unsubscribe(&interest.channels);
        if interest.all {
            self.state.engine.unsubscribe_all();
        }
    }
}

enum Ending {
    /// Send this close frame.
    Close(CloseReason),
    /// The peer closed or the socket failed; nothing more to send.
    PeerGone,
}

/// Per channel, the last seq this connection was sent; events at or below
/// it are duplicates of the replay and are dropped.
struct Sent {
    /// The channels the connection was registered for (a handful).
    fixed: Vec<(ChannelName, u64)>,
    /// Whether the connection reads every channel (`orgs=*`).
    all: bool,
    /// For `all` connections, every other channel seen so far.
    others: HashMap<ChannelName, u64>,
}

impl Sent {
    fn last_mut(&mut self, channel: &ChannelName) -> Option<&mut u64> {
        match self.fixed.iter_mut().find(|(c, _)| c == channel) {
            Some((_, last)) => Some(last),
            None if self.all => Some(self.others.entry(channel.clone()).or_insert(0)),
            None => None,
        }
    }

    /// Whether the client lacks this event; records it as sent.
    fn is_new(&mut self, publication: &Publication) -> bool {
        let Some(last) = self.last_mut(&publication.channel) else {
            return false;
        };
        if publication.seq <= *last {
            return false;
        }
        *last = publication.seq;
        true
    }
}

enum Step<T> {
    Done(T),
    Closed(CloseReason),
}

/// Runs a socket write unless the connection is told to close first: a
/// client that stopped reading blocks the write, and must not block its
/// own close. Wake-ups for newly queued frames are ignored here; the loop
/// takes the queue again after every write.
async fn until_closed<T>(conn: &Conn, write: impl Future<Output = T>) -> Step<T> {
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            () = conn.woken() => {
                if let Some(reason) = conn.close_reason() {
                    return Step::Closed(reason.clone());
                }
            }
            result = &mut write => return Step::Done(result),
        }
    }
}

/// What a finished (or interrupted) write means for the session.
fn written(step: Step<Result<(), axum::Error>>) -> Option<Ending> {
    match step {
        Step::Done(Ok(())) => None,
        Step::Done(Err(_)) => Some(Ending::PeerGone),
        Step::Closed(reason) => Some(Ending::Close(reason)),
    }
}

/// What the session does about a frame from the client.
enum Reply {
    None,
    Send(Utf8Bytes),
    End(Ending),
}

/// What a session sends before any live event.
struct Start {
    frames: Vec<Utf8Bytes>,
    /// Per channel, the seq the client has after `frames`.
    sent: Sent,
}

async fn start_frames(
    state: &AppState,
    conn: &Conn,
    cursor: &[(ChannelName, u64)],
    epoch: Option<&str>,
) -> Result<Start, crate::engine::EngineError> {
    let engine = &state.engine;
    let current_epoch = engine.epoch();
    let epoch_changed = epoch.is_some_and(|e| e != &*current_epoch);
    let limit = usize::try_from(state.config.history_size).unwrap_or(usize::MAX);

    let channels = &conn.interest.channels;
    let latest = engine.latest(channels).await?;
    let mut sent = Sent {
        fixed: channels.iter().cloned().zip(latest).collect(),
        all: conn.interest.all,
        others: HashMap::new(),
    };
    let mut replay = Vec::new();
    for (channel, since) in cursor {
        // A cursor for a channel this connection does not read (say, an org
        // the user has left) is ignored rather than refused, so a stale
        // cursor cannot lock a client out.
        let Some(last) = sent.last_mut(channel) else {
            continue;
        };
        let since = *since;
        let page: HistoryPage = engine.history(channel, since, limit).await?;
        let reason = if epoch_changed {
            Some(ResyncReason::EpochChanged)
        } else if since > page.latest {
            Some(ResyncReason::PositionAhead)
        } else if since.saturating_add(1) < page.oldest {
            Some(ResyncReason::HistoryTrimmed)
        } else {
            None
        };
        if let Some(reason) = reason {
            replay.push(protocol::resync_frame(&Resync {
                channel,
                requested: since,
                oldest: page.oldest,
                reason,
            }));
        }
        if !matches!(
            reason,
            Some(ResyncReason::EpochChanged | ResyncReason::PositionAhead)
        ) {
            replay.extend(page.events.iter().map(|p| p.frame.clone()));
        }
        // The page holds the whole retained history after `since`, taken
        // atomically with `latest`.
        *last = page.latest;
    }

    let positions = sent
        .fixed
        .iter()
        .map(|(c, seq)| (c, seq))
        .chain(&sent.others)
        .map(|(c, seq)| (c.to_string(), serde_json::Value::from(*seq)))
        .collect();
    let connection_id = format!("{}-{}", state.node_id, conn.id.0);
    let connected = protocol::connected_frame(&Connected {
        connection_id: &connection_id,
        user_id: &conn.user,
        org_id: &conn.org,
        expires_at: protocol::unix_to_rfc3339(conn.expires_at()),
        epoch: &current_epoch,
        positions,
    });
    let mut frames = Vec::with_capacity(replay.len() + 1);
    frames.push(connected);
    frames.extend(replay);
    Ok(Start { frames, sent })
}

async fn write_all(socket: &mut WebSocket, frames: Vec<Utf8Bytes>) -> Result<(), axum::Error> {
    for frame in frames {
        socket.feed(Message::Text(frame)).await?;
    }
    socket.flush().await
}

/// Writes every queued frame, then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    batch: &mut VecDeque<Outbound>,
    sent: &mut Sent,
    metrics: &Metrics,
) -> Result<(), axum::Error> {
    let mut oldest: Option<Instant> = None;
    while let Some(item) = batch.pop_front() {
        match item {
            Outbound::Event(publication) => {
                if sent.is_new(&publication) {
                    socket
                        .feed(Message::Text(publication.frame.clone()))
                        .await?;
                    let received = publication.received;
                    oldest = Some(oldest.map_or(received, |o| o.min(received)));
                }
            }
            Outbound::Ping(frame) => {
                socket.feed(Message::Text((*frame).clone())).await?;
                socket.feed(Message::Ping(Default::default())).await?;
            }
        }
    }
    socket.flush().await?;
    if let Some(oldest) = oldest {
        metrics.delivery_latency(oldest.elapsed());
    }
    Ok(())
}

fn on_incoming(
    state: &AppState,
    conn: &Conn,
    identity: &Identity,
    incoming: Option<Result<Message, axum::Error>>,
    peer_code: &mut Option<u16>,
) -> Reply {
    match incoming {
        None => Reply::End(Ending::PeerGone),
        Some(Err(e)) => Reply::End(if is_too_big(&e) {
            Ending::Close(CloseReason::new(close::TOO_BIG, "message too big"))
        } else {
            Ending::PeerGone
        }),
        Some(Ok(Message::Pong(_))) => {
            conn.pong();
            Reply::None
        }
        // tungstenite answers Pings and Close frames itself on the next read.
        Some(Ok(Message::Ping(_))) => Reply::None,
        Some(Ok(Message::Close(frame))) => {
            *peer_code = Some(frame.map_or(1005, |f| f.code));
            Reply::None
        }
        Some(Ok(Message::Binary(_))) => Reply::Send(protocol::error_frame(
            error_code::BAD_MESSAGE,
            "binary frames are not supported; send JSON text frames",
        )),
        Some(Ok(Message::Text(text))) => match protocol::parse_client_frame(&text) {
            Ok(ClientFrame::Ping | ClientFrame::Pong) => {
                conn.pong();
                Reply::None
            }
            Ok(ClientFrame::AuthRefresh { token }) => match refresh(state, identity, &token) {
                Ok(exp) => {
                    conn.set_expires_at(exp);
                    Reply::Send(protocol::refreshed_frame(exp))
                }
                Err(e) => Reply::End(Ending::Close(policy(e.to_string()))),
            },
            Err(message) => Reply::Send(protocol::error_frame(error_code::BAD_MESSAGE, &message)),
        },
    }
}

/// Checks a refresh token: valid, and the same identity as the session's.
fn refresh(state: &AppState, identity: &Identity, token: &str) -> Result<u64, AuthError> {
    let new = state.verifier.verify(token)?;
    if new.user != identity.user || new.org != identity.org || new.role != identity.role {
        return Err(AuthError::Forbidden);
    }
    Ok(new.exp)
}

fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn policy(reason: String) -> CloseReason {
    CloseReason {
        code: close::POLICY,
        reason: reason.into(),
    }
}

/// Sends a close frame and waits briefly for the peer's answer, so the
/// frame is not lost to a reset; gives up after [`CLOSE_GRACE`].
async fn close_socket(socket: &mut WebSocket, reason: &CloseReason) {
    let frame = CloseFrame {
        code: reason.code,
        reason: Utf8Bytes::from(reason.reason.as_ref()),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
