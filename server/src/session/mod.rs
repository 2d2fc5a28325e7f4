//! One WebSocket connection, from handshake to close.
//!
//! The handshake authenticates; the session then registers the connection
//! in the hub *before* reading positions, so an event published meanwhile
//! is either at or below the snapshot (and replayed from history) or in the
//! queue. Events from the queue whose seq the snapshot already covered are
//! dropped: no gap, no duplicate.
//!
//! Setup (admission, registration, subscription, positions) must finish
//! within `--handshake-timeout`. Then [`live`] runs the connection: one
//! loop that reads what the client sends, writes what is queued and
//! watches the close signal, so neither side waits for the other.
//!
//! The handshake is answered by [`upgrade`], which hands back the bare TCP
//! stream; [`socket`] reads client frames from it with tungstenite, and
//! frames go out through the connection's [`Outbox`](crate::outbox):
//! written directly by the fan-out while the session is idle, else by the
//! session.

mod live;
pub mod socket;
pub mod upgrade;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::auth::{AuthError, Identity, Role, bearer};
use crate::config::ENVELOPE_OVERHEAD;
use crate::engine::{EngineError, Publication};
use crate::error::ApiError;
use crate::hub::{
    CloseReason, Conn, ConnId, Interest, Limits, QueueLimits, Refused, Registration, TokenTimes,
};
use crate::metrics::ClosedBy;
use crate::outbox::WriteSide;
use crate::protocol::{self, ChannelName, Connected, OrgId, Resync, ResyncReason, close};
use crate::state::AppState;

use live::{Live, Replay, ReplayChannel};
use socket::Socket;
use upgrade::Upgrade;

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
    upgrade: Result<Upgrade, upgrade::Rejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
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
        Some(token) => state.authenticate(token).and_then(|id| match id.role {
            Role::Service => Err(AuthError::Forbidden),
            Role::User | Role::Admin => Ok(id),
        }),
    };
    let max = usize::try_from(state.config.max_message_bytes).unwrap_or(usize::MAX);
    let (response, upgraded) = upgrade.accept();
    let tracker = state.tracker.clone();
    let hard_stop = state.hard_stop.clone();
    tracker.spawn(async move {
        // Boxed, so setup's larger future and its refusals are freed
        // before the live loop starts: an idle connection's task holds
        // only the loop (idle row of docs/benchmarks.md).
        let prepared = Box::pin(async {
            tokio::select! {
                live = async {
                    let upgraded = upgraded.await?;
                    let socket = Socket::new(Arc::new(upgraded.tcp), upgraded.read, READ_BUFFER, max);
                    prepare(socket, state, auth, params).await
                } => live,
                () = hard_stop.cancelled() => None,
            }
        });
        let Some(live) = prepared.await else { return };
        tokio::select! {
            () = live.run() => {}
            // The shutdown grace is over: drop the socket as it is.
            () = hard_stop.cancelled() => {}
        }
    });
    response
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

/// Sets the session up within `--handshake-timeout`; a connection that
/// cannot start is closed here.
async fn prepare(
    mut socket: Socket,
    state: AppState,
    auth: Result<Identity, AuthError>,
    params: WsParams,
) -> Option<Box<Live>> {
    let timeout = state.config.handshake_timeout;
    let tcp = socket.tcp().clone();
    let reason = match tokio::time::timeout(timeout, setup(&state, auth, &params, tcp)).await {
        // On the heap: the task's future then holds a pointer, not a
        // second copy of the live state next to the loop's.
        Ok(Ok(start)) => return Some(Box::new(Live::new(socket, state, start))),
        Ok(Err(reason)) => reason,
        Err(_) => {
            tracing::warn!("websocket setup took longer than --handshake-timeout; closing");
            CloseReason::ENGINE_UNAVAILABLE
        }
    };
    refuse(&state, &mut socket, &reason).await;
    None
}

/// A connection ready to go live: registered, subscribed, its first frames
/// and its replay planned.
struct Start {
    conn: Arc<Conn>,
    identity: Identity,
    registration: Registration,
    subscription: Subscription,
    sent: Sent,
    /// `connected`, then the resyncs known at once, framed for the wire.
    first: VecDeque<Bytes>,
    replay: Replay,
    /// The socket's write side, which the session holds until `first`
    /// and the replay are written.
    side: WriteSide,
}

/// Admits, registers and subscribes the connection and plans its first
/// frames. An `Err` is the close the socket gets.
async fn setup(
    state: &AppState,
    auth: Result<Identity, AuthError>,
    params: &WsParams,
    tcp: Arc<TcpStream>,
) -> Result<Start, CloseReason> {
    let Admitted {
        identity,
        org,
        interest,
        cursor,
    } = admit(state, auth, params).inspect_err(|reason| {
        tracing::debug!(code = reason.code, reason = %reason.reason, "refused websocket");
    })?;
    let id = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let conn = Arc::new(Conn::new(
        id,
        identity.user.clone(),
        org,
        interest,
        TokenTimes {
            exp: identity.exp,
            iat: identity.iat,
        },
        QueueLimits {
            frames: usize::try_from(state.config.send_queue).unwrap_or(usize::MAX),
            bytes: usize::try_from(state.config.send_queue_bytes).unwrap_or(usize::MAX),
        },
        Some(tcp),
    ));
    let limits = Limits {
        max_connections: state.config.max_connections,
        max_per_user: state.config.max_connections_per_user,
    };
    let registration = state.hub.register(conn.clone(), limits).map_err(|refused| {
        let reason = match refused {
            Refused::LimitReached => CloseReason::CONNECTION_LIMIT,
            Refused::ShuttingDown => CloseReason::SHUTDOWN,
        };
        tracing::info!(user = %conn.user, org = %conn.org, reason = %reason.reason, "refused websocket");
        reason
    })?;
    // Checked again now that the connection is in the hub: a revocation
    // made after the handshake's check either sees this connection (and
    // closes it) or is seen here.
    state
        .check_revocation(&identity)
        .map_err(|e| policy(e.to_string()))?;
    let engine_down = |e: EngineError| {
        tracing::warn!(conn = id.0, error = %e, "engine unavailable during websocket setup");
        CloseReason::ENGINE_UNAVAILABLE
    };
    let subscription = Subscription::new(state, &conn).await.map_err(engine_down)?;
    let Some(side) = conn.out.first_side() else {
        tracing::error!(conn = id.0, "a new connection's write side was taken");
        return Err(CloseReason::new(close::INTERNAL, "internal error"));
    };
    let (sent, first, replay) = plan(state, &conn, &side, &cursor, params.epoch.as_deref())
        .await
        .map_err(engine_down)?;
    tracing::info!(
        conn = id.0,
        user = %conn.user,
        org = %conn.org,
        role = identity.role.as_str(),
        resumed = !cursor.is_empty(),
        "connected"
    );
    Ok(Start {
        conn,
        identity,
        registration,
        subscription,
        sent,
        first,
        replay,
        side,
    })
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
        Some(Err(_)) => return Err(policy(close::reason::INVALID_SINCE.to_owned())),
    };
    let forbidden = || policy(AuthError::Forbidden.to_string());
    let org = identity.org.clone().ok_or_else(forbidden)?;
    let interest = match params.orgs.as_deref() {
        None => Interest {
            channels: vec![ChannelName::org(&org), ChannelName::user(&identity.user)],
            all: false,
            watch: false,
        },
        Some(_) if identity.role != Role::Admin => return Err(forbidden()),
        Some(orgs) => {
            parse_orgs(orgs).ok_or_else(|| policy(close::reason::INVALID_ORGS.to_owned()))?
        }
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
pub(crate) fn parse_orgs(orgs: &str) -> Option<Interest> {
    if orgs.trim() == "*" {
        return Some(Interest {
            channels: Vec::new(),
            all: true,
            watch: true,
        });
    }
    let mut channels = Vec::new();
    for org in orgs.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let channel = ChannelName::org(&OrgId::new(org).ok()?);
        if !channels.contains(&channel) {
            channels.push(channel);
        }
        if channels.len() > MAX_WATCHED_ORGS {
            return None;
        }
    }
    (!channels.is_empty()).then_some(Interest {
        channels,
        all: false,
        watch: true,
    })
}

/// Closes a connection that never started, and counts it.
async fn refuse(state: &AppState, socket: &mut Socket, reason: &CloseReason) {
    state.metrics.closed(reason.code, ClosedBy::Server);
    close_socket(socket, reason).await;
}

/// Holds the engine subscription of a connection; released on drop.
struct Subscription {
    state: AppState,
    conn: Arc<Conn>,
}

impl Subscription {
    async fn new(state: &AppState, conn: &Arc<Conn>) -> Result<Self, EngineError> {
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

/// What the client already has, per channel: events at or below it are
/// duplicates of the replay and are dropped. For the channels the
/// connection reads by name the positions live in its outbox, which the
/// fan-out's direct writes keep too; only the session (or a direct write,
/// while the session is idle) reads or moves them.
struct Sent {
    /// Whether the connection reads every channel (`orgs=*`).
    all: bool,
    /// For `all` connections, the other channels of the resume cursor.
    /// Only those: a watcher of every channel that recorded each one it saw
    /// would grow for as long as it stays connected.
    others: HashMap<ChannelName, u64>,
}

impl Sent {
    /// The channel's sequence restarted (an epoch change): what follows
    /// `from` is new to the client.
    fn restart(&mut self, conn: &Conn, side: &WriteSide, channel: &ChannelName, from: u64) {
        match conn.slot(channel) {
            Some(slot) => conn.out.set_position(side, slot, from),
            None if self.all => {
                self.others.insert(channel.clone(), from);
            }
            None => {}
        }
    }

    /// Whether the client lacks this event; records it as sent.
    fn is_new(&mut self, conn: &Conn, side: &WriteSide, publication: &Publication) -> bool {
        let channel = &publication.channel;
        if publication.event_type.is_resync_marker() {
            self.restart(conn, side, channel, publication.seq);
            return true;
        }
        if let Some(slot) = conn.slot(channel) {
            if publication.seq <= conn.out.position(side, slot).unwrap_or(0) {
                return false;
            }
            conn.out.set_position(side, slot, publication.seq);
            return true;
        }
        let Some(last) = self.others.get_mut(channel) else {
            // A channel a watcher of everything did not resume: nothing was
            // replayed, so nothing can be a duplicate.
            return self.all;
        };
        if publication.seq <= *last {
            return false;
        }
        *last = publication.seq;
        true
    }
}

/// Events per replay page: as many of the largest possible frame as fit in
/// `--send-queue-bytes`, so a page never holds more than that.
fn replay_page_events(state: &AppState) -> usize {
    let largest = state
        .config
        .max_message_bytes
        .saturating_add(ENVELOPE_OVERHEAD);
    usize::try_from(state.config.send_queue_bytes / largest.max(1))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Reads the positions, decides per cursor channel between a resync and a
/// replay, and builds `connected`. The replay itself streams later, page
/// by page as the socket drains.
async fn plan(
    state: &AppState,
    conn: &Conn,
    side: &WriteSide,
    cursor: &[(ChannelName, u64)],
    epoch: Option<&str>,
) -> Result<(Sent, VecDeque<Bytes>, Replay), EngineError> {
    let engine = &state.engine;
    let current_epoch = engine.epoch();
    let epoch_changed = epoch.is_some_and(|e| e != &*current_epoch);

    let channels = &conn.interest.channels;
    let latest = engine.latest(channels).await?;
    // The channels read by name, in `conn.interest.channels` order.
    let mut fixed: Vec<(ChannelName, u64)> = channels.iter().cloned().zip(latest).collect();
    let mut sent = Sent {
        all: conn.interest.all,
        others: HashMap::new(),
    };
    let mut resyncs = Vec::new();
    let mut replay = Replay::new(replay_page_events(state));
    for (channel, since) in cursor {
        // A cursor for a channel this connection does not read (say, an org
        // the user has left) is ignored rather than refused, so a stale
        // cursor cannot lock a client out.
        let last = match fixed.iter_mut().find(|(c, _)| c == channel) {
            Some((_, last)) => last,
            None if sent.all => sent.others.entry(channel.clone()).or_insert(0),
            None => continue,
        };
        let since = *since;
        // Positions only (no events): taken after registration, so every
        // later event is live in the queue.
        let positions = engine.history(channel, since, 0).await?;
        let reason = if epoch_changed {
            Some(ResyncReason::EpochChanged)
        } else if since > positions.latest {
            Some(ResyncReason::PositionAhead)
        } else {
            None
        };
        match reason {
            Some(reason) => resyncs.push(protocol::resync_frame(&Resync {
                channel: channel.clone(),
                requested: since,
                oldest: positions.oldest,
                reason,
                epoch: (reason == ResyncReason::EpochChanged).then(|| current_epoch.to_string()),
            })),
            // `history_trimmed` is found while paging, where it may also
            // happen mid-replay.
            None if since < positions.latest => replay.push(ReplayChannel {
                channel: channel.clone(),
                next: since,
                target: positions.latest,
            }),
            None => {}
        }
        *last = positions.latest;
    }

    let positions = fixed
        .iter()
        .map(|(c, seq)| (c, seq))
        .chain(&sent.others)
        .map(|(c, seq)| (c.to_string(), *seq))
        .collect();
    // No one writes to the socket yet (the outbox queues everything until
    // the session first goes idle), so these are in place before any
    // event can go out.
    for (slot, (_, seq)) in fixed.iter().enumerate() {
        conn.out.set_position(side, slot, *seq);
    }
    let connection_id = format!("{}-{}", state.node_id, conn.id.0);
    let connected = protocol::connected_frame(&Connected {
        connection_id,
        user_id: conn.user.clone(),
        org_id: conn.org.clone(),
        expires_at: protocol::unix_to_rfc3339(conn.expires_at()),
        epoch: current_epoch.to_string(),
        positions,
    });
    let mut first = VecDeque::with_capacity(resyncs.len() + 1);
    first.push_back(protocol::wire_text(connected.as_bytes()));
    first.extend(resyncs.iter().map(|r| protocol::wire_text(r.as_bytes())));
    Ok((sent, first, replay))
}

/// Checks a refresh token: valid, not revoked, and the same identity as
/// the session's.
fn refresh(state: &AppState, identity: &Identity, token: &str) -> Result<TokenTimes, AuthError> {
    let new = state.authenticate(token)?;
    if new.user != identity.user || new.org != identity.org || new.role != identity.role {
        return Err(AuthError::Forbidden);
    }
    Ok(TokenTimes {
        exp: new.exp,
        iat: new.iat,
    })
}

fn policy(reason: String) -> CloseReason {
    CloseReason {
        code: close::POLICY,
        reason: reason.into(),
    }
}

/// Sends a close frame and waits briefly for the peer's answer, so the
/// frame is not lost to a reset; gives up after [`CLOSE_GRACE`]. For a
/// connection that never went live (no one else writes to the socket).
async fn close_socket(socket: &mut Socket, reason: &CloseReason) {
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(VecDeque::new(), reason)).await;
}
