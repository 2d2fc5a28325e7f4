//! A live connection: one loop that reads the socket, writes what there is
//! to write, and watches the close signal, all in the same poll.
//!
//! Each turn of [`Live::turn`] checks the close reason, reads at most one
//! client frame, takes a finished replay page, and writes as much as the
//! socket accepts. Nothing a client sends waits for the queue to drain: a
//! Pong, an `auth.refresh` or a close frame is read on the next turn while
//! a stream of events is being written (SPEC §8). A client that floods
//! frames gets one read per turn and the task yields every [`TURNS`]
//! turns, so it cannot starve the other connections.
//!
//! What is written, in order of priority:
//! 1. the session's own frames: `connected`, resyncs, answers to client
//!    frames (reading pauses while more than [`MAX_OWN`] wait, so a client
//!    that sends without reading cannot grow them);
//! 2. the resume replay, one page (at most `--send-queue-bytes`) at a time,
//!    the next page fetched only once the last one is written;
//! 3. once the replay is done, the live queue, taken whole and flushed once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{Sink, SinkExt, Stream};

use super::{Sent, Start, Subscription, close_socket, is_too_big, policy, refresh};
use crate::app::AppState;
use crate::auth::Identity;
use crate::engine::Publication;
use crate::engine::{Engine, EngineError, HistoryPage};
use crate::hub::{CloseReason, Conn, Registration};
use crate::metrics::ClosedBy;
use crate::protocol::{self, ChannelName, ClientFrame, Resync, ResyncReason, error_code};

/// Turns of the loop in one poll before the task yields to others.
const TURNS: usize = 32;

/// Session frames (answers to the client) that may wait before reading
/// pauses.
const MAX_OWN: usize = 64;

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
    fn take_page(&mut self, page: HistoryPage, out: &mut VecDeque<Utf8Bytes>) {
        let Some(current) = self.channels.front_mut() else {
            return;
        };
        let before = current.next;
        if page.oldest > current.next.saturating_add(1) {
            out.push_back(protocol::resync_frame(&Resync {
                channel: current.channel.clone(),
                requested: current.next,
                oldest: page.oldest,
                reason: ResyncReason::HistoryTrimmed,
                epoch: None,
            }));
            current.next = page.oldest - 1;
        }
        for publication in &page.events {
            if publication.seq > current.next && publication.seq <= current.target {
                out.push_back(publication.frame.clone());
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
    /// The peer closed or the socket failed; nothing more to send.
    PeerGone,
}

enum Turn {
    Progress,
    Idle,
    End(Ending),
}

/// Everything a live connection's task holds.
pub(super) struct Live {
    socket: WebSocket,
    state: AppState,
    conn: Arc<Conn>,
    identity: Identity,
    sent: Sent,
    /// Frames the session made itself; written first.
    own: VecDeque<Utf8Bytes>,
    replay: Replay,
    page: Option<PageFuture>,
    /// The fetched page, not yet written.
    replayed: VecDeque<Utf8Bytes>,
    /// Live frames taken from the queue, not yet written.
    batch: VecDeque<Arc<Publication>>,
    /// Taken frames (count, bytes) handed to the socket and not yet
    /// reported to the queue's bounds.
    written: (usize, usize),
    /// A JSON ping was written; its WebSocket Ping goes next.
    ping_next: bool,
    unflushed: bool,
    /// The oldest live event written since the last flush (latency metric).
    oldest: Option<Instant>,
    /// The close code the peer sent, if it sent one.
    peer_code: Option<u16>,
    registration: Registration,
    _subscription: Subscription,
}

impl Live {
    pub(super) fn new(socket: WebSocket, state: AppState, start: Start) -> Self {
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
            written: (0, 0),
            ping_next: false,
            unflushed: false,
            oldest: None,
            peer_code: None,
            registration: start.registration,
            _subscription: start.subscription,
        }
    }

    /// Runs the connection until it ends, then closes it.
    pub(super) async fn run(mut self: Box<Self>) {
        let conn = self.conn.clone();
        let mut wake = std::pin::pin!(conn.woken());
        let ending = std::future::poll_fn(|cx| {
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
        .await;
        // Boxed: inline, the close path (a second `Live`, the close
        // handshake's timer) would sit in every idle connection's task.
        Box::pin(self.finish(ending)).await;
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Turn {
        if let Some(reason) = self.conn.close_reason() {
            return Turn::End(Ending::Close(reason.clone()));
        }
        let mut progress = false;
        if self.own.len() <= MAX_OWN
            && let Poll::Ready(incoming) = Pin::new(&mut self.socket).poll_next(cx)
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
            Err(()) => return Turn::End(Ending::PeerGone),
        }
        if progress { Turn::Progress } else { Turn::Idle }
    }

    /// Writes as much as the socket takes; `Ok(true)` if anything moved.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut progress = false;
        let mut blocked = false;
        loop {
            if !self.has_pending() {
                if !self.replay.is_done() {
                    if self.page.is_none() {
                        self.page = self.replay.fetch(&self.state.engine);
                        // Polled by the next turn.
                        progress = true;
                    }
                    break;
                }
                self.conn
                    .take_queued(&mut self.batch, std::mem::take(&mut self.written));
                if self.batch.is_empty() {
                    break;
                }
            }
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => {
                    blocked = true;
                    break;
                }
            }
            if let Some(message) = self.next_message() {
                Pin::new(&mut self.socket)
                    .start_send(message)
                    .map_err(|_| ())?;
                self.unflushed = true;
            }
            progress = true;
        }
        // A blocked `poll_ready` already tried to flush.
        if self.unflushed && !blocked {
            match Pin::new(&mut self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    progress = true;
                    self.flushed();
                }
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    fn has_pending(&self) -> bool {
        self.ping_next
            || !self.own.is_empty()
            || self.conn.ping_pending()
            || !self.replayed.is_empty()
            || !self.batch.is_empty()
    }

    /// The next message to write, by priority; `None` when the item taken
    /// was a live event the replay already sent.
    fn next_message(&mut self) -> Option<Message> {
        if std::mem::take(&mut self.ping_next) {
            return Some(Message::Ping(Default::default()));
        }
        if let Some(frame) = self.own.pop_front() {
            return Some(Message::Text(frame));
        }
        if let Some(ping) = self.conn.take_ping() {
            self.ping_next = true;
            return Some(Message::Text(ping));
        }
        if let Some(frame) = self.replayed.pop_front() {
            return Some(Message::Text(frame));
        }
        let publication = self.batch.pop_front()?;
        self.written.0 += 1;
        self.written.1 += publication.frame.len();
        if !self.sent.is_new(&publication) {
            return None;
        }
        let received = publication.received;
        self.oldest = Some(self.oldest.map_or(received, |o| o.min(received)));
        Some(Message::Text(publication.frame.clone()))
    }

    /// After a flush: the latency metric, and memory back after a burst
    /// rather than kept at its peak for the connection's whole life.
    fn flushed(&mut self) {
        if let Some(oldest) = self.oldest.take() {
            self.state.metrics.delivery_latency(oldest.elapsed());
        }
        if self.batch.is_empty() && self.batch.capacity() > 64 {
            self.batch = VecDeque::new();
        }
        if self.own.is_empty() && self.own.capacity() > 0 {
            self.own = VecDeque::new();
        }
        if self.replayed.is_empty() && self.replayed.capacity() > 0 && self.replay.is_done() {
            self.replayed = VecDeque::new();
        }
    }

    /// Handles a client frame; `Some` when it ends the connection.
    fn on_incoming(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Option<Ending> {
        let message = match incoming {
            None => return Some(Ending::PeerGone),
            Some(Err(e)) if is_too_big(&e) => {
                return Some(Ending::Close(CloseReason::MESSAGE_TOO_BIG));
            }
            Some(Err(_)) => return Some(Ending::PeerGone),
            Some(Ok(message)) => message,
        };
        match message {
            Message::Pong(_) => self.conn.pong(),
            // tungstenite answers Pings and Close frames itself on the next
            // read or write.
            Message::Ping(_) => {}
            Message::Close(frame) => self.peer_code = Some(frame.map_or(1005, |f| f.code)),
            Message::Binary(_) => self.own.push_back(protocol::error_frame(
                error_code::BAD_MESSAGE,
                "binary frames are not supported; send JSON text frames",
            )),
            Message::Text(text) => match protocol::parse_client_frame(&text) {
                Ok(ClientFrame::Ping | ClientFrame::Pong) => self.conn.pong(),
                Ok(ClientFrame::AuthRefresh { token }) => {
                    match refresh(&self.state, &self.identity, &token) {
                        Ok(exp) => {
                            self.conn.set_expires_at(exp);
                            self.own.push_back(protocol::refreshed_frame(exp));
                        }
                        Err(e) => return Some(Ending::Close(policy(e.to_string()))),
                    }
                }
                Err(message) => self
                    .own
                    .push_back(protocol::error_frame(error_code::BAD_MESSAGE, &message)),
            },
        }
        None
    }

    /// Sends the close frame (if the server ends it) and logs the end.
    async fn finish(self: Box<Self>, ending: Ending) {
        let Live {
            mut socket,
            state,
            conn,
            peer_code,
            registration,
            ..
        } = *self;
        let (code, by) = match ending {
            Ending::Close(reason) => {
                if reason == CloseReason::SLOW_CONSUMER {
                    let (frames, bytes) = conn.backlog();
                    tracing::warn!(conn = conn.id.0, user = %conn.user, org = %conn.org, frames, bytes, "closing slow consumer");
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
            Ending::PeerGone => {
                if peer_code.is_some() {
                    // tungstenite queued the answer to the peer's close;
                    // it may sit behind frames the socket had not taken.
                    let _ = tokio::time::timeout(super::CLOSE_GRACE, socket.flush()).await;
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
    use serde_json::value::RawValue;

    use super::*;
    use crate::protocol::{EventType, encode_event};

    fn page(
        channel: &ChannelName,
        seqs: impl IntoIterator<Item = u64>,
        latest: u64,
    ) -> HistoryPage {
        let event_type = EventType::parse("entity.created").unwrap();
        let payload = RawValue::from_string("{}".to_owned()).unwrap();
        let events: Vec<Arc<Publication>> = seqs
            .into_iter()
            .map(|seq| {
                Arc::new(Publication {
                    frame: encode_event(&event_type, &payload, channel, seq),
                    channel: channel.clone(),
                    seq,
                    event_type: event_type.clone(),
                    received: Instant::now(),
                })
            })
            .collect();
        HistoryPage {
            oldest: events.first().map_or(latest + 1, |p| p.seq),
            events,
            latest,
        }
    }

    fn kinds(out: &VecDeque<Utf8Bytes>) -> Vec<String> {
        out.iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
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
