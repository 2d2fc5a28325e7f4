//! The live connections of this node, indexed by channel and by user.
//!
//! The hub only ever `try_send`s into each connection's bounded queue while
//! holding its read lock: it never awaits, never touches a socket, and a
//! full queue closes that one connection (slow consumer) instead of waiting.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{Deliver, Publication};
use crate::protocol::{ChannelName, OrgId, UserId, close};

/// A connection's id, unique within this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What a connection's queue carries to its socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A published event; dropped by the session if already sent by replay.
    Event(Arc<Publication>),
    /// The keep-alive: the JSON `ping` frame, followed by a WebSocket Ping.
    Ping(Utf8Bytes),
}

/// Why the server closes a connection: a close code and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl CloseReason {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    pub const SLOW_CONSUMER: Self = Self::new(close::TRY_AGAIN_LATER, "slow consumer");
    pub const TOKEN_EXPIRED: Self = Self::new(close::POLICY, "token expired");
    pub const PING_TIMEOUT: Self = Self::new(close::GOING_AWAY, "ping timeout");
    pub const SHUTDOWN: Self = Self::new(close::GOING_AWAY, "server shutting down");
}

/// The hub's handle on one live connection.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    pub user: UserId,
    pub org: OrgId,
    /// The channels this connection reads.
    pub channels: Vec<ChannelName>,
    queue: mpsc::Sender<Outbound>,
    closing: CancellationToken,
    close_reason: OnceLock<CloseReason>,
    /// Token expiry (UNIX seconds); moved forward by `auth.refresh`.
    expires_at: AtomicU64,
    /// Pings sent since the last Pong; two unanswered drop the connection.
    unanswered_pings: AtomicU32,
}

impl Conn {
    /// `closing` is a child of the server's shutdown token, so a session
    /// watches one signal, its own, for every reason to close.
    pub fn new(
        id: ConnId,
        user: UserId,
        org: OrgId,
        channels: Vec<ChannelName>,
        exp: u64,
        queue: mpsc::Sender<Outbound>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            id,
            user,
            org,
            channels,
            queue,
            closing,
            close_reason: OnceLock::new(),
            expires_at: AtomicU64::new(exp),
            unanswered_pings: AtomicU32::new(0),
        }
    }

    /// Queues a frame without waiting; a full queue closes the connection
    /// as a slow consumer. Returns whether the frame was queued.
    pub fn push(&self, item: Outbound) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseReason::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the session to close with `reason`; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.set(reason);
        self.closing.cancel();
    }

    /// Resolves once [`Conn::close`] was called or the server shuts down.
    pub async fn closed(&self) -> CloseReason {
        self.closing.cancelled().await;
        self.close_reason
            .get()
            .cloned()
            .unwrap_or(CloseReason::SHUTDOWN)
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    pub fn set_expires_at(&self, exp: u64) {
        self.expires_at.store(exp, Ordering::Relaxed);
    }

    /// Any Pong proves the peer alive.
    pub fn pong(&self) {
        self.unanswered_pings.store(0, Ordering::Relaxed);
    }

    /// Counts a ping about to be sent; returns how many were unanswered.
    fn ping_sent(&self) -> u32 {
        self.unanswered_pings.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Arc<Conn>>,
    by_channel: HashMap<ChannelName, HashMap<ConnId, Arc<Conn>>>,
    by_user: HashMap<UserId, Vec<ConnId>>,
}

/// The registry of live connections.
#[derive(Default)]
pub struct Hub {
    inner: RwLock<Inner>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection; from now on it receives its channels' events.
    /// The returned guard removes it again when dropped.
    pub fn register(self: &Arc<Self>, conn: Arc<Conn>) -> Registration {
        let mut inner = self.write();
        for channel in &conn.channels {
            inner
                .by_channel
                .entry(channel.clone())
                .or_default()
                .insert(conn.id, conn.clone());
        }
        inner
            .by_user
            .entry(conn.user.clone())
            .or_default()
            .push(conn.id);
        inner.conns.insert(conn.id, conn.clone());
        Registration {
            hub: self.clone(),
            conn,
        }
    }

    fn unregister(&self, conn: &Conn) {
        let mut inner = self.write();
        inner.conns.remove(&conn.id);
        for channel in &conn.channels {
            if let Some(subscribers) = inner.by_channel.get_mut(channel) {
                subscribers.remove(&conn.id);
                if subscribers.is_empty() {
                    inner.by_channel.remove(channel);
                }
            }
        }
        if let Some(ids) = inner.by_user.get_mut(&conn.user) {
            ids.retain(|id| *id != conn.id);
            if ids.is_empty() {
                inner.by_user.remove(&conn.user);
            }
        }
    }

    /// Live connections on this node.
    pub fn len(&self) -> usize {
        self.read().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on every connection. `f` must not block.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for conn in self.read().conns.values() {
            f(conn);
        }
    }

    /// Sends the keep-alive to every connection and closes those that left
    /// two pings unanswered.
    pub fn ping_all(&self, frame: &Utf8Bytes) {
        self.for_each(|conn| {
            if conn.ping_sent() >= 2 {
                conn.close(CloseReason::PING_TIMEOUT);
            } else {
                conn.push(Outbound::Ping(frame.clone()));
            }
        });
    }

    /// Closes every connection whose token expired by `now` (UNIX seconds).
    pub fn close_expired(&self, now: u64) -> usize {
        let mut closed = 0;
        self.for_each(|conn| {
            if conn.expires_at() <= now {
                conn.close(CloseReason::TOKEN_EXPIRED);
                closed += 1;
            }
        });
        closed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Deliver for Hub {
    fn deliver(&self, publication: &Arc<Publication>) -> usize {
        let inner = self.read();
        let Some(subscribers) = inner.by_channel.get(&publication.channel) else {
            return 0;
        };
        subscribers
            .values()
            .filter(|conn| conn.push(Outbound::Event(publication.clone())))
            .count()
    }
}

/// Keeps a connection in the hub; removes it on drop.
pub struct Registration {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::protocol::{EventType, encode_event};

    fn conn(id: u64, user: &str, org: &str, queue: usize) -> (Arc<Conn>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let user = UserId::new(user).unwrap();
        let org = OrgId::new(org).unwrap();
        let channels = vec![ChannelName::org(&org), ChannelName::user(&user)];
        (
            Arc::new(Conn::new(
                ConnId(id),
                user,
                org,
                channels,
                u64::MAX,
                tx,
                CancellationToken::new(),
            )),
            rx,
        )
    }

    fn publication(channel: &str, seq: u64) -> Arc<Publication> {
        let channel = ChannelName::parse(channel).unwrap();
        let event_type = EventType::parse("entity.created").unwrap();
        let payload = serde_json::value::RawValue::from_string("{}".into()).unwrap();
        Arc::new(Publication {
            frame: encode_event(&event_type, &payload, &channel, seq),
            channel,
            seq,
            event_type,
            received: Instant::now(),
        })
    }

    #[test]
    fn delivers_by_channel_and_unregisters_on_drop() {
        let hub = Arc::new(Hub::new());
        let (a, mut rx_a) = conn(1, "1", "7", 8);
        let (b, mut rx_b) = conn(2, "2", "7", 8);
        let (c, mut rx_c) = conn(3, "3", "8", 8);
        let _ra = hub.register(a);
        let rb = hub.register(b);
        let _rc = hub.register(c);
        assert_eq!(hub.deliver(&publication("org:7", 1)), 2);
        assert_eq!(hub.deliver(&publication("user:3", 1)), 1);
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_b.try_recv().is_ok());
        assert!(
            matches!(rx_c.try_recv(), Ok(Outbound::Event(p)) if p.channel.as_str() == "user:3")
        );
        drop(rb);
        assert_eq!(hub.len(), 2);
        assert_eq!(hub.deliver(&publication("org:7", 2)), 1);
    }

    #[tokio::test]
    async fn full_queue_closes_only_that_connection() {
        let hub = Arc::new(Hub::new());
        let (slow, _rx_slow) = conn(1, "1", "7", 1);
        let (fast, mut rx_fast) = conn(2, "2", "7", 8);
        let _r1 = hub.register(slow.clone());
        let _r2 = hub.register(fast.clone());
        assert_eq!(hub.deliver(&publication("org:7", 1)), 2);
        assert_eq!(hub.deliver(&publication("org:7", 2)), 1);
        assert_eq!(slow.closed().await, CloseReason::SLOW_CONSUMER);
        assert!(!fast.closing.is_cancelled());
        assert!(rx_fast.try_recv().is_ok() && rx_fast.try_recv().is_ok());
    }

    #[test]
    fn two_unanswered_pings_close() {
        let hub = Arc::new(Hub::new());
        let (c, _rx) = conn(1, "1", "7", 8);
        let _r = hub.register(c.clone());
        let frame = Utf8Bytes::from("{}");
        hub.ping_all(&frame);
        hub.ping_all(&frame);
        assert!(!c.closing.is_cancelled());
        hub.ping_all(&frame);
        assert!(c.closing.is_cancelled());
        let (d, _rx) = conn(2, "2", "7", 8);
        let _r = hub.register(d.clone());
        for _ in 0..5 {
            hub.ping_all(&frame);
            d.pong();
        }
        assert!(!d.closing.is_cancelled());
    }
}
