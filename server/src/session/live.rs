//! A live connection: one loop that reads the socket, writes what there is
//! to write, and watches the close signal, all in the same poll.
//!
//! Each turn of [`Live::turn`] checks the close reason, reads at most one
//! client frame, takes a finished replay page, and writes as much as the
//! socket accepts. Nothing a client sends waits for the queue to drain: a
//! Pong, an `auth.refresh` or a close frame is read on the next turn while
//! a stream of events is being written. A client that floods
//! frames gets one read per turn and the task yields every [`TURNS`]
//! turns, so it cannot starve the other connections.
//!
//! While the session has nothing to write it holds no part of the socket,
//! and the fan-out writes events to it directly ([`crate::outbox`]). When
//! it has something, it takes the write side and keeps it until all is
//! written. What it writes, in order of priority, gathered into vectored
//! writes of at most [`OUT_FRAMES`] frames or [`OUT_BYTES`] bytes, so
//! that what comes first waits for at most one of them:
//! 0. the end of a frame a direct write began and the socket did not take
//!    whole (nothing may come between);
//! 1. control frames (tungstenite's answers to the client's Pings and
//!    Close), the keep-alive (the JSON `ping`, then a WebSocket Ping) and
//!    the session's own frames: `connected`, resyncs, answers to client
//!    frames (reading pauses while more than [`MAX_OWN`] or
//!    [`MAX_CONTROL`] bytes of control frames wait, so a client that sends
//!    without reading cannot grow them);
//! 2. the resume replay, one page (at most `--send-queue-bytes`) at a time,
//!    the next page fetched only once the last one is written;
//! 3. once the replay is done, the live queue.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tungstenite::Message;

use super::socket::Socket;
use super::{Sent, Start, Subscription, policy, refresh};
use crate::auth::Identity;
use crate::engine::Publication;
use crate::engine::{Engine, EngineError, HistoryPage};
use crate::hub::{CloseReason, Conn, Registration};
use crate::metrics::ClosedBy;
use crate::outbox::WriteSide;
use crate::protocol::{
    self, ChannelName, ClientFrame, Resync, ResyncReason, WIRE_PING, error_code, wire_text,
};
use crate::state::AppState;

/// Turns of the loop in one poll before the task yields to others.
const TURNS: usize = 32;

/// Session frames (answers to the client) that may wait before reading
/// pauses.
const MAX_OWN: usize = 64;

/// Bytes of control frames (Pongs answering the client's Pings) that may
/// wait before reading pauses: a Pong is at most 127 bytes.
const MAX_CONTROL: usize = 4 << 10;

/// The most frames, and about the most bytes, one vectored write gathers.
/// The kernel takes about 16 KiB at once from a socket whose unsent bytes
/// are capped at `NOTSENT_LOWAT` (16 KiB, listener.rs), and a keep-alive
/// or an answer waits for at most one such write.
const OUT_FRAMES: usize = 64;
const OUT_BYTES: usize = 16 << 10;

/// Vectored writes in one turn, before the loop reads again.
const WRITES_PER_TURN: usize = 8;

/// A replay page being fetched from the engine.
type PageFuture = Pin<Box<dyn Future<Output = Result<HistoryPage, EngineError>> + Send>>;

/// One channel still to replay: the client has `next`, the snapshot taken
/// at setup ends at `target`; later events come live.
pub(super) struct ReplayChannel {
    pub channel: ChannelName,
    pub next: u64,
    pub target: u64,
}

/// The channels a resume still has to replay, oldest position first.
pub(super) struct Replay {
    channels: VecDeque<ReplayChannel>,
    page_events: usize,
}

impl Replay {
    pub fn new(page_events: usize) -> Self {
        Self {
            channels: VecDeque::new(),
            page_events: page_events.max(1),
        }
    }

    pub fn push(&mut self, channel: ReplayChannel) {
        self.channels.push_back(channel);
    }

    fn is_done(&self) -> bool {
        self.channels.is_empty()
    }

    /// The fetch of the next page of the first channel left.
    fn fetch(&self, engine: &Arc<dyn Engine>) -> Option<PageFuture> {
        let first = self.channels.front()?;
        let engine = engine.clone();
        let channel = first.channel.clone();
        let (since, limit) = (first.next, self.page_events);
        Some(Box::pin(async move {
            engine.history(&channel, since, limit).await
        }))
    }

    /// Appends a fetched page's frames to `out`, after a resync when the
    /// history no longer starts where the client is (trimmed before the
    /// replay or while it ran); moves on to the next channel when this one
    /// reached its target.
    fn take_page(&mut self, page: HistoryPage, out: &mut VecDeque<Bytes>) {
        let Some(current) = self.channels.front_mut() else {
            return;
        };
        let before = current.next;
        if page.oldest > current.next.saturating_add(1) {
            let resync = protocol::resync_frame(&Resync {
                channel: current.channel.clone(),
                requested: current.next,
                oldest: page.oldest,
                reason: ResyncReason::HistoryTrimmed,
                epoch: None,
            });
            out.push_back(wire_text(resync.as_bytes()));
            current.next = page.oldest - 1;
        }
        for publication in &page.events {
            if publication.seq > current.next && publication.seq <= current.target {
                out.push_back(publication.wire.clone());
                current.next = publication.seq;
            }
        }
        // A page that moved nothing forward would be fetched again for
        // ever; the history has nothing more for this channel.
        if current.next >= current.target || current.next == before {
            self.channels.pop_front();
        }
    }
}

/// Why the loop ended.
pub(super) enum Ending {
    /// Send this close frame.
    Close(CloseReason),
    /// The peer closed or the socket failed; nothing more to send but the
    /// answer to the peer's close, if it sent one.
    PeerGone,
}

/// Why the session could not write.
enum WriteFailed {
    /// The socket failed: the peer is gone.
    PeerGone,
    /// The peer took no bytes for `--write-timeout`.
    TimedOut,
}

enum Turn {
    Progress,
    Idle,
    End(Ending),
}

/// Everything a live connection's task holds.
pub(super) struct Live {
    socket: Socket,
    state: AppState,
    conn: Arc<Conn>,
    identity: Identity,
    sent: Sent,
    /// Frames the session made itself, framed for the wire.
    own: VecDeque<Bytes>,
    replay: Replay,
    page: Option<PageFuture>,
    /// The fetched page, not yet written.
    replayed: VecDeque<Bytes>,
    /// Live frames taken from the queue, not yet gathered for writing.
    batch: VecDeque<Arc<Publication>>,
    /// What is being written, in wire order; the first frame may be partly
    /// written already.
    out: VecDeque<Bytes>,
    /// Taken frames (count, bytes) in `out`, reported as written once
    /// `out` is.
    in_out: (usize, usize),
    /// Taken frames (count, bytes) written and not yet reported to the
    /// queue's bounds.
    written: (usize, usize),
    /// The socket's write side, while the session holds it (see
    /// [`crate::outbox`]); it starts with it, until `connected` and the
    /// replay are out.
    side: Option<WriteSide>,
    /// The oldest live event in `out` (latency metric).
    oldest: Option<Instant>,
    /// Running while the socket takes none of `out`; past
    /// `--write-timeout` the connection is closed. `None` otherwise, so an
    /// idle connection holds no timer.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The close code the peer sent, if it sent one.
    peer_code: Option<u16>,
    registration: Registration,
    _subscription: Subscription,
}

impl Live {
    pub(super) fn new(socket: Socket, state: AppState, start: Start) -> Self {
        Self {
            socket,
            state,
            conn: start.conn,
            identity: start.identity,
            sent: start.sent,
            own: start.first,
            replay: start.replay,
            page: None,
            replayed: VecDeque::new(),
            batch: VecDeque::new(),
            out: VecDeque::new(),
            in_out: (0, 0),
            written: (0, 0),
            side: Some(start.side),
            oldest: None,
            stalled: None,
            peer_code: None,
            registration: start.registration,
            _subscription: start.subscription,
        }
    }

    /// Runs the connection until it ends, then closes it.
    pub(super) async fn run(mut self: Box<Self>) {
        let conn = self.conn.clone();
        let ending = self.live(&conn).await;
        // Boxed: inline, the close path (the close handshake's timer) would
        // sit in every idle connection's task.
        Box::pin(self.finish(ending)).await;
    }

    /// The loop, until the connection ends. Its wake-up future is gone
    /// when this returns, so `finish` is the outbox's one waiter.
    async fn live(&mut self, conn: &Conn) -> Ending {
        let mut wake = std::pin::pin!(conn.woken());
        std::future::poll_fn(|cx| {
            for _ in 0..TURNS {
                // Re-armed until pending, so the next push or close wakes
                // the task; what it signalled is checked by the turn.
                while wake.as_mut().poll(cx).is_ready() {
                    wake.set(conn.woken());
                }
                match self.turn(cx) {
                    Turn::Progress => {}
                    Turn::Idle => return Poll::Pending,
                    Turn::End(ending) => return Poll::Ready(ending),
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Turn {
        if let Some(reason) = self.conn.close_reason() {
            return Turn::End(Ending::Close(reason.clone()));
        }
        let mut progress = false;
        if self.own.len() <= MAX_OWN
            && self.socket.control_len() <= MAX_CONTROL
            && let Poll::Ready(incoming) = self.socket.poll_read(cx)
        {
            progress = true;
            if let Some(ending) = self.on_incoming(incoming) {
                return Turn::End(ending);
            }
        }
        if let Some(page) = self.page.as_mut()
            && let Poll::Ready(result) = page.as_mut().poll(cx)
        {
            self.page = None;
            progress = true;
            match result {
                Ok(page) => self.replay.take_page(page, &mut self.replayed),
                Err(e) => {
                    tracing::warn!(conn = self.conn.id.0, error = %e, "replay failed");
                    return Turn::End(Ending::Close(CloseReason::ENGINE_UNAVAILABLE));
                }
            }
        }
        match self.write(cx) {
            Ok(wrote) => progress |= wrote,
            Err(WriteFailed::PeerGone) => return Turn::End(Ending::PeerGone),
            Err(WriteFailed::TimedOut) => {
                tracing::info!(conn = self.conn.id.0, user = %self.conn.user,
                    "client took no bytes for --write-timeout; closing");
                self.state
                    .metrics
                    .write_timeout(crate::metrics::ConnectionKind::WebSocket);
                return Turn::End(Ending::Close(CloseReason::WRITE_TIMEOUT));
            }
        }
        if progress { Turn::Progress } else { Turn::Idle }
    }

    /// Writes as much as the socket takes; `Ok(true)` if anything moved.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, WriteFailed> {
        let side = match self.side.take() {
            Some(side) => side,
            None => {
                if !self.has_work() {
                    return Ok(false);
                }
                // `None`: a direct write holds the socket for one `send`;
                // it wakes this task when it lets go.
                let Some(side) = self.conn.out.acquire() else {
                    return Ok(false);
                };
                side
            }
        };
        let (side, wrote) = self.write_holding(cx, side);
        self.side = side;
        wrote
    }

    /// [`Live::write`] with the write side in hand; answers it back unless
    /// it was released.
    fn write_holding(
        &mut self,
        cx: &mut Context<'_>,
        mut side: WriteSide,
    ) -> (Option<WriteSide>, Result<bool, WriteFailed>) {
        let mut progress = false;
        for _ in 0..WRITES_PER_TURN {
            if self.out.is_empty() {
                progress |= self.gather(&side);
                if self.out.is_empty() {
                    if !self.is_idle() {
                        // A replay page is on its way; its future wakes us.
                        return (Some(side), Ok(progress));
                    }
                    match self
                        .conn
                        .out
                        .release(side, std::mem::take(&mut self.written))
                    {
                        Ok(()) => {
                            self.shrink();
                            return (None, Ok(progress));
                        }
                        // Queued meanwhile, and the pusher saw us holding
                        // the socket, so it woke no one: keep it.
                        Err(kept) => {
                            side = kept;
                            progress = true;
                            continue;
                        }
                    }
                }
            }
            let before = (self.out.len(), self.out.front().map_or(0, Bytes::len));
            match self.socket.poll_write(cx, &mut self.out) {
                Poll::Ready(Ok(())) => {
                    progress = true;
                    self.stalled = None;
                    self.flushed();
                }
                Poll::Ready(Err(_)) => return (Some(side), Err(WriteFailed::PeerGone)),
                Poll::Pending => {
                    let moved = before != (self.out.len(), self.out.front().map_or(0, Bytes::len));
                    return (Some(side), self.stall(cx, moved).map(|()| progress));
                }
            }
        }
        (Some(side), Ok(true))
    }

    /// The socket is full: starts the write clock, or restarts it if some
    /// bytes went (`moved`); an error once it ran `--write-timeout`.
    fn stall(&mut self, cx: &mut Context<'_>, moved: bool) -> Result<(), WriteFailed> {
        let timeout = self.state.config.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if moved {
            stalled
                .as_mut()
                .reset(tokio::time::Instant::now() + timeout);
        }
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Err(WriteFailed::TimedOut),
            Poll::Pending => Ok(()),
        }
    }

    /// Whether there is anything to write, or a replay still to do.
    fn has_work(&self) -> bool {
        !self.own.is_empty()
            || self.socket.control_len() > 0
            || self.conn.out.ping_pending()
            || self.conn.out.is_pending()
            || !self.replay.is_done()
            || !self.replayed.is_empty()
            || !self.batch.is_empty()
    }

    /// Whether the session has nothing left to write or replay.
    fn is_idle(&self) -> bool {
        self.out.is_empty()
            && self.own.is_empty()
            && self.socket.control_len() == 0
            && self.replay.is_done()
            && self.page.is_none()
            && self.replayed.is_empty()
            && self.batch.is_empty()
    }

    /// Gathers the next frames to write into `out`, which is empty, by
    /// priority. `true` if it started fetching a replay page.
    fn gather(&mut self, side: &WriteSide) -> bool {
        if self.batch.is_empty() {
            // With the queue comes the end of a frame a direct write
            // began, if one did: it must be the next bytes on the wire.
            let written = std::mem::take(&mut self.written);
            if let Some(rest) = self.conn.out.take(side, &mut self.batch, written) {
                self.in_out.0 += 1;
                self.in_out.1 += rest.len();
                self.out.push_back(rest);
            }
        }
        self.out.extend(self.socket.take_control());
        if let Some(ping) = self.conn.out.take_ping() {
            self.out.push_back(ping);
            self.out.push_back(WIRE_PING);
        }
        self.out.extend(self.own.drain(..));
        let mut bytes: usize = self.out.iter().map(Bytes::len).sum();
        while self.out.len() < OUT_FRAMES && bytes < OUT_BYTES {
            let Some(frame) = self.replayed.pop_front() else {
                break;
            };
            bytes += frame.len();
            self.out.push_back(frame);
        }
        if !self.replay.is_done() {
            if self.replayed.is_empty() && self.page.is_none() {
                self.page = self.replay.fetch(&self.state.engine);
                return true;
            }
            return false;
        }
        while self.out.len() < OUT_FRAMES && bytes < OUT_BYTES {
            let Some(publication) = self.batch.pop_front() else {
                break;
            };
            let len = publication.wire.len();
            if !self.sent.is_new(&self.conn, side, &publication) {
                // Replayed already: dropped, and off the queue's bounds.
                self.written.0 += 1;
                self.written.1 += len;
                continue;
            }
            self.in_out.0 += 1;
            self.in_out.1 += len;
            let received = publication.received;
            self.oldest = Some(self.oldest.map_or(received, |o| o.min(received)));
            bytes += len;
            self.out.push_back(publication.wire.clone());
        }
        false
    }

    /// `out` is written: the latency metric, and its live frames off the
    /// queue's bounds.
    fn flushed(&mut self) {
        self.written.0 += self.in_out.0;
        self.written.1 += self.in_out.1;
        self.in_out = (0, 0);
        if let Some(oldest) = self.oldest.take() {
            self.state.metrics.delivery_latency(oldest.elapsed());
        }
    }

    /// Memory back when the session goes idle, rather than kept at a
    /// burst's peak for the connection's whole life.
    fn shrink(&mut self) {
        if self.batch.capacity() > 64 {
            self.batch = VecDeque::new();
        }
        if self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
        if self.own.capacity() > 0 {
            self.own = VecDeque::new();
        }
        if self.replayed.capacity() > 0 {
            self.replayed = VecDeque::new();
        }
    }

    /// Handles a client frame; `Some` when it ends the connection.
    fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<Ending> {
        let message = match incoming {
            None => return Some(Ending::PeerGone),
            Some(Err(tungstenite::Error::Capacity(_))) => {
                return Some(Ending::Close(CloseReason::MESSAGE_TOO_BIG));
            }
            Some(Err(_)) => return Some(Ending::PeerGone),
            Some(Ok(message)) => message,
        };
        match message {
            Message::Pong(_) => self.conn.pong(),
            // tungstenite answers Pings itself (among the control frames).
            Message::Ping(_) | Message::Frame(_) => {}
            Message::Close(frame) => {
                self.peer_code = Some(frame.map_or(1005, |f| f.code.into()));
                // Its answer is among the control frames now; `finish`
                // writes it.
                self.socket.answer_close();
                return Some(Ending::PeerGone);
            }
            Message::Binary(_) => self.own_frame(&protocol::error_frame(
                error_code::BAD_MESSAGE,
                "binary frames are not supported; send JSON text frames",
            )),
            Message::Text(text) => match protocol::parse_client_frame(&text) {
                Ok(ClientFrame::Ping | ClientFrame::Pong) => self.conn.pong(),
                Ok(ClientFrame::AuthRefresh { token }) => {
                    match refresh(&self.state, &self.identity, &token) {
                        Ok(token) => {
                            self.conn.set_token(token);
                            self.own_frame(&protocol::refreshed_frame(token.exp));
                        }
                        Err(e) => return Some(Ending::Close(policy(e.to_string()))),
                    }
                }
                Err(message) => {
                    self.own_frame(&protocol::error_frame(error_code::BAD_MESSAGE, &message));
                }
            },
        }
        None
    }

    fn own_frame(&mut self, text: &str) {
        self.own.push_back(wire_text(text.as_bytes()));
    }

    /// Sends the close frame (if the server ends it) and logs the end.
    async fn finish(self: Box<Self>, ending: Ending) {
        let Live {
            mut socket,
            state,
            conn,
            mut out,
            side,
            peer_code,
            registration,
            ..
        } = *self;
        // The session takes the socket's write side for good, so nothing is
        // written directly after the close frame; a direct write in
        // progress lets go within one `send`. Then the end of a frame
        // begun directly, or what the session was writing, goes first:
        // a frame on the wire is never cut.
        let seal = async {
            let side = match side {
                Some(side) => side,
                None => conn.out.seal().await,
            };
            if let Some(rest) = conn.out.take(&side, &mut VecDeque::new(), (0, 0)) {
                out.push_front(rest);
            }
            out
        };
        let (code, by) = match ending {
            Ending::Close(reason) => {
                if reason == CloseReason::SLOW_CONSUMER {
                    let crate::outbox::Backlog { frames, bytes } = conn.backlog();
                    tracing::warn!(conn = conn.id.0, user = %conn.user, org = %conn.org, frames, bytes, "closing slow consumer");
                    state.metrics.slow_consumer();
                }
                state.metrics.closed(reason.code, ClosedBy::Server);
                // Out of the hub first: a client that stopped reading must
                // not hold a place (or a cap) while its close frame waits.
                drop(registration);
                let _ = tokio::time::timeout(super::CLOSE_GRACE, async {
                    let out = seal.await;
                    socket.close(out, &reason).await;
                })
                .await;
                (reason.code, ClosedBy::Server)
            }
            // 1006: the connection ended without a close frame.
            Ending::PeerGone => {
                if peer_code.is_some() {
                    // The answer to the peer's close, after what was on
                    // its way.
                    let _ = tokio::time::timeout(super::CLOSE_GRACE, async {
                        let mut out = seal.await;
                        out.extend(socket.take_control());
                        std::future::poll_fn(|cx| socket.poll_write(cx, &mut out)).await
                    })
                    .await;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page(
        channel: &ChannelName,
        seqs: impl IntoIterator<Item = u64>,
        latest: u64,
    ) -> HistoryPage {
        let events: Vec<Arc<Publication>> = seqs
            .into_iter()
            .map(|seq| Publication::for_test(channel.as_str(), seq, "{}"))
            .collect();
        HistoryPage {
            oldest: events.first().map_or(latest + 1, |p| p.seq),
            events,
            latest,
        }
    }

    fn kinds(out: &VecDeque<Bytes>) -> Vec<String> {
        out.iter()
            .map(|f| {
                let header = match f[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let v: serde_json::Value = serde_json::from_slice(&f[header..]).unwrap();
                match v["seq"].as_u64() {
                    Some(seq) => seq.to_string(),
                    None => format!("resync@{}", v["payload"]["requested"]),
                }
            })
            .collect()
    }

    #[test]
    fn pages_on_to_the_target_and_resyncs_when_trimmed_meanwhile() {
        let org = ChannelName::parse("org:7").unwrap();
        let mut replay = Replay::new(2);
        replay.push(ReplayChannel {
            channel: org.clone(),
            next: 3,
            target: 9,
        });
        let mut out = VecDeque::new();
        replay.take_page(page(&org, 4..=5, 12), &mut out);
        assert!(!replay.is_done());
        // Publishing went on while the client read: 6 and 7 were trimmed.
        replay.take_page(page(&org, 8..=9, 12), &mut out);
        assert!(replay.is_done(), "9 is the target; later events come live");
        assert_eq!(kinds(&out), ["4", "5", "resync@5", "8", "9"]);
    }

    async fn bounded<T>(f: impl Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
        tokio::time::timeout(std::time::Duration::from_secs(10), f).await
    }

    /// A close asked while a fan-out's direct write holds the socket: the
    /// session waits for that write, is woken when it ends, and the client
    /// reads its close frame (not a dropped connection after the grace).
    #[tokio::test]
    async fn a_close_during_a_direct_write_still_reaches_the_client() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as WsMessage;

        use crate::auth::{Claims, Role, mint};
        use crate::hub::CloseReason;
        use crate::protocol::UserId;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = "live-test-secret-live-test-secret";
        let state = AppState::new(crate::Config::with_secret(secret))
            .await
            .unwrap();
        tokio::spawn(crate::app::serve(
            listener,
            state.clone(),
            std::future::pending(),
        ));
        let token = mint(secret, &Claims::new("42", Some("7"), Role::User, 60)).unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
            .await
            .unwrap();
        let first = bounded(ws.next()).await.unwrap().unwrap().unwrap();
        assert!(first.to_text().unwrap().contains("connected"), "{first:?}");
        let mut conns = Vec::new();
        state.hub.for_each(|c| conns.push(c.clone()));
        let conn = conns.pop().unwrap();
        // Once the session is idle, a direct write takes the socket, and
        // stays in flight.
        bounded(async {
            while !conn.out.hold_direct_write() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        let user = UserId::new("42").unwrap();
        state
            .hub
            .close_user(&user, &CloseReason::new(1008, "disconnected"));
        // The session found the socket taken (it marks itself pending).
        bounded(async {
            while !conn.out.is_pending() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        conn.out.end_held_direct_write();
        let close = bounded(async {
            loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    other => panic!("no close frame: {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(close, Some(1008));
    }

    #[test]
    fn an_empty_page_ends_the_channel() {
        let org = ChannelName::parse("org:7").unwrap();
        let mut replay = Replay::new(10);
        replay.push(ReplayChannel {
            channel: org.clone(),
            next: 3,
            target: 9,
        });
        let mut out = VecDeque::new();
        // Everything expired: the history is empty after 9.
        replay.take_page(page(&org, [], 9), &mut out);
        assert!(replay.is_done());
        assert_eq!(kinds(&out), ["resync@3"]);
    }
}
