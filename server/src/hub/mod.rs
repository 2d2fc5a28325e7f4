//! The live connections of this node, indexed by channel and by user.
//!
//! Delivering an event takes the hub's read lock only to list the
//! recipients; each is then offered the event through its
//! [`Outbox`](crate::outbox): written straight to an idle socket, else
//! queued for the connection's session. The hub never awaits, and a full
//! queue closes that one connection (slow consumer) instead of waiting.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::engine::{Deliver, Publication};
use crate::metrics::Metrics;
pub use crate::outbox::QueueLimits;
use crate::outbox::{Offered, Outbox, Route};
use crate::protocol::close::{self, reason};
use crate::protocol::{ChannelName, EventType, OrgId, Resync, ResyncReason, UserId};

mod conn;

pub use self::conn::{Conn, TokenTimes};

/// A connection's id, unique within this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

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

    pub const SLOW_CONSUMER: Self = Self::new(close::TRY_AGAIN_LATER, reason::SLOW_CONSUMER);
    pub const WRITE_TIMEOUT: Self = Self::new(close::TRY_AGAIN_LATER, reason::WRITE_TIMEOUT);
    pub const TOKEN_EXPIRED: Self = Self::new(close::POLICY, reason::TOKEN_EXPIRED);
    pub const REVOKED: Self = Self::new(close::POLICY, reason::REVOKED);
    pub const PING_TIMEOUT: Self = Self::new(close::GOING_AWAY, reason::PING_TIMEOUT);
    pub const SHUTDOWN: Self = Self::new(close::GOING_AWAY, reason::SHUTDOWN);
    pub const CONNECTION_LIMIT: Self = Self::new(close::TRY_AGAIN_LATER, reason::CONNECTION_LIMIT);
    pub const ENGINE_UNAVAILABLE: Self = Self::new(close::INTERNAL, reason::ENGINE_UNAVAILABLE);
    pub const MESSAGE_TOO_BIG: Self = Self::new(close::TOO_BIG, reason::MESSAGE_TOO_BIG);
    /// The engine lost track of a channel's sequence: reconnect and resume
    /// (the resume then says `resync.required` if events are gone).
    pub const RESYNC: Self = Self::new(close::INTERNAL, reason::RESYNC);
}

/// What a connection reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    /// These channels.
    pub channels: Vec<ChannelName>,
    /// And every other channel too (an admin watching `orgs=*`).
    pub all: bool,
    /// An admin watch (`orgs=`, the dashboard): counted apart, never as a
    /// connection of its own org.
    pub watch: bool,
}

/// Who is connected to this node now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Connections per org, watchers left out.
    pub by_org: HashMap<OrgId, usize>,
    /// Distinct users with a connection other than a watch.
    pub users: usize,
    /// Admin watch connections (`orgs=`).
    pub watchers: usize,
}

/// Connection caps; 0 means no cap.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_connections: u64,
    pub max_per_user: u64,
}

/// Why a connection was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("connection limit")]
    LimitReached,
    #[error("server shutting down")]
    ShuttingDown,
}

/// A connection reading a channel by name, and where that channel is in
/// its `interest.channels`.
struct Reader {
    conn: Arc<Conn>,
    slot: usize,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Arc<Conn>>,
    by_channel: HashMap<ChannelName, HashMap<ConnId, Reader>>,
    by_user: HashMap<UserId, Vec<ConnId>>,
    /// Connections that read every channel.
    watch_all: HashMap<ConnId, Arc<Conn>>,
    /// Set by [`Hub::close_all`]: no connection may join any more.
    closed: bool,
}

/// The most recipients of one event written directly by the fan-out (some
/// milliseconds of `send`s); the rest are queued. One event for a huge org then
/// holds the publishing thread in system calls for a bounded time, and
/// the remaining writes go to the sessions, spread over the runtime's
/// workers.
pub const MAX_DIRECT_PER_EVENT: usize = 1024;

/// The registry of live connections.
pub struct Hub {
    inner: RwLock<Inner>,
    metrics: Arc<Metrics>,
    /// Set while the node is saturated ([`Hub::set_coalescing`]).
    coalescing: AtomicBool,
    /// `--fanout-direct auto`: the fan-out may write to idle sockets.
    direct_allowed: AtomicBool,
    /// Recipients the fan-out handed events to, written or queued, and
    /// those it wrote to directly.
    fanout_deliveries: AtomicU64,
    fanout_direct: AtomicU64,
    /// Time spent in [`Deliver::deliver`] (ns): with direct writes, the
    /// node's main work. tokio's own busy time is published only when a
    /// worker parks or every 61 polls, which a worker busy with a few long
    /// fan-outs does not reach for half a second; this is current after
    /// every event.
    fanout_nanos: AtomicU64,
    /// The clock of the outboxes' burst rule.
    started: Instant,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: RwLock::default(),
            metrics,
            coalescing: AtomicBool::new(false),
            direct_allowed: AtomicBool::new(true),
            fanout_deliveries: AtomicU64::new(0),
            fanout_direct: AtomicU64::new(0),
            fanout_nanos: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// While `on`, every event is queued for the sessions instead of being
    /// written directly: a node whose core is saturated cannot afford one
    /// `send` per frame, and the sessions' queues fill while they wait to
    /// run, so each of their writes carries several frames. Set by the
    /// load watcher (`tasks::load_watch`).
    /// `--fanout-direct off`: every event is queued for the sessions.
    pub fn allow_direct(&self, allowed: bool) {
        self.direct_allowed.store(allowed, Ordering::Relaxed);
    }

    pub fn set_coalescing(&self, on: bool) {
        if self.coalescing.swap(on, Ordering::Relaxed) != on {
            self.metrics.set_coalescing(on);
            tracing::debug!(on, "fan-out coalescing");
        }
    }

    pub fn is_coalescing(&self) -> bool {
        self.coalescing.load(Ordering::Relaxed)
    }

    /// Time spent fanning out since the hub started, the recipients it
    /// handed events to, and how many of those it wrote to directly.
    pub fn fanout_totals(&self) -> (std::time::Duration, u64, u64) {
        (
            std::time::Duration::from_nanos(self.fanout_nanos.load(Ordering::Relaxed)),
            self.fanout_deliveries.load(Ordering::Relaxed),
            self.fanout_direct.load(Ordering::Relaxed),
        )
    }

    /// Adds a connection unless a cap is reached; from now on it receives
    /// its channels' events. The returned guard removes it when dropped.
    pub fn register(
        self: &Arc<Self>,
        conn: Arc<Conn>,
        limits: Limits,
    ) -> Result<Registration, Refused> {
        let mut inner = self.write();
        if inner.closed {
            return Err(Refused::ShuttingDown);
        }
        // Checked under the write lock so concurrent handshakes cannot
        // together exceed a cap.
        if limits.max_connections > 0 && inner.conns.len() as u64 >= limits.max_connections {
            return Err(Refused::LimitReached);
        }
        let tabs = inner.by_user.get(&conn.user).map_or(0, Vec::len);
        if limits.max_per_user > 0 && tabs as u64 >= limits.max_per_user {
            return Err(Refused::LimitReached);
        }
        for (slot, channel) in conn.interest.channels.iter().enumerate() {
            inner.by_channel.entry(channel.clone()).or_default().insert(
                conn.id,
                Reader {
                    conn: conn.clone(),
                    slot,
                },
            );
        }
        if conn.interest.all {
            inner.watch_all.insert(conn.id, conn.clone());
        }
        inner
            .by_user
            .entry(conn.user.clone())
            .or_default()
            .push(conn.id);
        inner.conns.insert(conn.id, conn.clone());
        drop(inner);
        self.metrics.connection_opened();
        Ok(Registration {
            hub: self.clone(),
            conn,
        })
    }

    fn unregister(&self, conn: &Conn) {
        let mut inner = self.write();
        inner.conns.remove(&conn.id);
        inner.watch_all.remove(&conn.id);
        for channel in &conn.interest.channels {
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
        drop(inner);
        self.metrics.connection_closed();
    }

    /// Live connections on this node.
    pub fn len(&self) -> usize {
        self.read().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct users with a live connection on this node. The heartbeat
    /// asks every second; `census` would walk every connection for it.
    pub fn users(&self) -> usize {
        self.read().by_user.len()
    }

    /// Live connections per org, distinct users, and watchers.
    pub fn census(&self) -> Census {
        let inner = self.read();
        let mut census = Census::default();
        let mut users = HashSet::new();
        for conn in inner.conns.values() {
            if conn.interest.watch {
                census.watchers += 1;
            } else {
                *census.by_org.entry(conn.org.clone()).or_default() += 1;
                users.insert(&conn.user);
            }
        }
        census.users = users.len();
        census
    }

    /// Closes every connection with `reason` and refuses new ones (shutdown).
    pub fn close_all(&self, reason: &CloseReason) {
        let mut inner = self.write();
        inner.closed = true;
        for conn in inner.conns.values() {
            conn.close(reason.clone());
        }
    }

    /// Closes every connection of `user` with `reason`; returns how many.
    pub fn close_user(&self, user: &UserId, reason: &CloseReason) -> usize {
        let inner = self.read();
        let Some(ids) = inner.by_user.get(user) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| inner.conns.get(id))
            .inspect(|conn| conn.close(reason.clone()))
            .count()
    }

    /// Runs `f` on every connection. `f` must not block.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Conn>)) {
        for conn in self.read().conns.values() {
            f(conn);
        }
    }

    /// Sends the keep-alive (a pre-encoded frame) to every connection and
    /// closes those that left two pings unanswered.
    pub fn ping_all(&self, frame: Bytes) {
        self.ping_slice(frame, 0, 1);
    }

    /// Pings the connections of slice `slice` of `slices` (by id): a ping
    /// round spread over `slices` ticks still pings every connection once,
    /// and always at the same tick of the round.
    pub fn ping_slice(&self, frame: Bytes, slice: u64, slices: u64) {
        let slices = slices.max(1);
        self.for_each(|conn| {
            if conn.id.0 % slices != slice {
                return;
            }
            if conn.ping_sent() >= 2 {
                conn.close(CloseReason::PING_TIMEOUT);
            } else {
                conn.ping(frame.clone());
            }
        });
    }

    /// Closes every connection whose token a revocation refuses
    /// (`revoked_at` answers when its user was revoked, if it was);
    /// answers how many.
    pub fn close_revoked(&self, revoked_at: &dyn Fn(&UserId) -> Option<u64>) -> usize {
        let inner = self.read();
        let mut closed = 0;
        for (user, ids) in &inner.by_user {
            let Some(at) = revoked_at(user) else {
                continue;
            };
            for conn in ids.iter().filter_map(|id| inner.conns.get(id)) {
                if conn.is_revoked_by(at) {
                    conn.close(CloseReason::REVOKED);
                    closed += 1;
                }
            }
        }
        closed
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
        crate::sync::read(&self.inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        crate::sync::write(&self.inner)
    }
}

impl Deliver for Hub {
    fn deliver(&self, publication: &Arc<Publication>) -> usize {
        // The recipients are listed under the read lock and offered the
        // event after it: a direct write is a system call, and a thousand
        // of them (~10 ms) must not hold up a connection registering.
        let targets: Vec<(Arc<Conn>, Option<usize>)> = {
            let inner = self.read();
            let readers = inner.by_channel.get(&publication.channel);
            let mut targets =
                Vec::with_capacity(readers.map_or(0, HashMap::len) + inner.watch_all.len());
            targets.extend(
                readers
                    .into_iter()
                    .flat_map(HashMap::values)
                    .map(|r| (r.conn.clone(), Some(r.slot))),
            );
            targets.extend(inner.watch_all.values().map(|c| (c.clone(), None)));
            targets
        };
        let start = Instant::now();
        let mut route = if self.coalescing.load(Ordering::Relaxed)
            || !self.direct_allowed.load(Ordering::Relaxed)
        {
            Route::Queue
        } else {
            Route::Direct {
                now: u64::try_from(start.duration_since(self.started).as_micros())
                    .unwrap_or(u64::MAX),
            }
        };
        let (mut recipients, mut direct) = (0, 0);
        for (conn, slot) in &targets {
            if direct == MAX_DIRECT_PER_EVENT {
                route = Route::Queue;
            }
            match conn.offer(publication, *slot, route) {
                Offered::Written => {
                    recipients += 1;
                    direct += 1;
                }
                Offered::Queued => recipients += 1,
                Offered::Refused => {}
            }
        }
        drop(targets);
        let spent = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.fanout_nanos.fetch_add(spent, Ordering::Relaxed);
        self.fanout_deliveries
            .fetch_add(recipients as u64, Ordering::Relaxed);
        self.fanout_direct
            .fetch_add(direct as u64, Ordering::Relaxed);
        if direct > 0 {
            // One observation for the event's direct writes: when the last
            // of them was made.
            self.metrics
                .direct_writes(direct, publication.received.elapsed());
        }
        self.metrics
            .delivered(publication.event_type.as_str(), recipients);
        recipients
    }

    fn epoch_changed(&self, channel: Option<&ChannelName>, epoch: &str, from: u64) {
        let marker = |channel: &ChannelName| {
            Arc::new(Publication::new(
                channel.clone(),
                from,
                EventType::resync_marker(),
                crate::protocol::resync_frame(&Resync {
                    channel: channel.clone(),
                    requested: 0,
                    oldest: from + 1,
                    reason: ResyncReason::EpochChanged,
                    epoch: Some(epoch.to_owned()),
                }),
                std::time::Instant::now(),
            ))
        };
        let inner = self.read();
        match channel {
            None => {
                // One frame per channel, shared by its readers.
                let mut frames: HashMap<&ChannelName, Arc<Publication>> = HashMap::new();
                for conn in inner.conns.values() {
                    if conn.interest.all {
                        // A watcher of every channel cannot be told about
                        // each one it may have seen; it resumes instead.
                        conn.close(CloseReason::RESYNC);
                        continue;
                    }
                    for channel in &conn.interest.channels {
                        let frame = frames.entry(channel).or_insert_with(|| marker(channel));
                        conn.push(frame.clone());
                    }
                }
            }
            Some(channel) => {
                let frame = marker(channel);
                inner
                    .by_channel
                    .get(channel)
                    .into_iter()
                    .flat_map(HashMap::values)
                    .map(|r| &r.conn)
                    .chain(inner.watch_all.values())
                    .for_each(|conn| {
                        conn.push(frame.clone());
                    });
            }
        }
    }

    fn close_user(&self, user: &UserId, reason: &str) -> usize {
        Hub::close_user(
            self,
            user,
            &CloseReason {
                code: close::POLICY,
                reason: Cow::Owned(reason.to_owned()),
            },
        )
    }

    fn close_revoked(&self, revoked_at: &dyn Fn(&UserId) -> Option<u64>) -> usize {
        Hub::close_revoked(self, revoked_at)
    }

    fn resync(&self, channel: Option<&ChannelName>) {
        let reason = CloseReason::RESYNC;
        let inner = self.read();
        match channel {
            None => inner.conns.values().for_each(|c| c.close(reason.clone())),
            Some(channel) => {
                if let Some(readers) = inner.by_channel.get(channel) {
                    readers.values().for_each(|r| r.conn.close(reason.clone()));
                }
                inner
                    .watch_all
                    .values()
                    .for_each(|c| c.close(reason.clone()));
            }
        }
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
    use std::collections::VecDeque;

    use super::*;

    fn conn(id: u64, user: &str, org: &str, queue: usize) -> Arc<Conn> {
        let limits = QueueLimits {
            frames: queue,
            bytes: 1 << 20,
        };
        conn_with(id, user, org, limits)
    }

    /// A user's connection (its org and user channels), without a socket.
    fn conn_with(id: u64, user: &str, org: &str, limits: QueueLimits) -> Arc<Conn> {
        let user = UserId::new(user).unwrap();
        let org = OrgId::new(org).unwrap();
        let interest = Interest {
            channels: vec![ChannelName::org(&org), ChannelName::user(&user)],
            all: false,
            watch: false,
        };
        Arc::new(Conn::new(
            ConnId(id),
            user,
            org,
            interest,
            TokenTimes {
                exp: u64::MAX,
                iat: None,
            },
            limits,
            None,
        ))
    }

    fn queued(conn: &Conn) -> Vec<Arc<Publication>> {
        let mut out = VecDeque::new();
        conn.out
            .take(&crate::outbox::WriteSide::for_test(), &mut out, (0, 0));
        out.into_iter().collect()
    }

    fn publication(channel: &str, seq: u64) -> Arc<Publication> {
        Publication::for_test(channel, seq, "{}")
    }

    #[test]
    fn delivers_by_channel_and_unregisters_on_drop() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let (a, b, c) = (
            conn(1, "1", "7", 8),
            conn(2, "2", "7", 8),
            conn(3, "3", "8", 8),
        );
        let _ra = hub.register(a.clone(), Limits::default()).unwrap();
        let rb = hub.register(b.clone(), Limits::default()).unwrap();
        let _rc = hub.register(c.clone(), Limits::default()).unwrap();
        assert_eq!(hub.deliver(&publication("org:7", 1)), 2);
        assert_eq!(hub.deliver(&publication("user:3", 1)), 1);
        assert_eq!(queued(&a).len(), 1);
        assert_eq!(queued(&b).len(), 1);
        assert!(matches!(&queued(&c)[..], [p] if p.channel.as_str() == "user:3"));
        drop(rb);
        assert_eq!(hub.len(), 2);
        assert_eq!(hub.deliver(&publication("org:7", 2)), 1);
    }

    #[test]
    fn caps_and_close_user() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let limits = Limits {
            max_connections: 3,
            max_per_user: 2,
        };
        let (a1, a2, a3) = (
            conn(1, "a", "7", 8),
            conn(2, "a", "7", 8),
            conn(3, "a", "7", 8),
        );
        let (b1, c1) = (conn(4, "b", "7", 8), conn(5, "c", "7", 8));
        let _r1 = hub.register(a1.clone(), limits).unwrap();
        let _r2 = hub.register(a2.clone(), limits).unwrap();
        assert_eq!(hub.register(a3, limits).err(), Some(Refused::LimitReached));
        let _r4 = hub.register(b1.clone(), limits).unwrap();
        assert_eq!(hub.register(c1, limits).err(), Some(Refused::LimitReached));
        let reason = CloseReason::new(close::POLICY, "gone");
        assert_eq!(hub.close_user(&UserId::new("a").unwrap(), &reason), 2);
        assert_eq!(a1.close_reason(), Some(&reason));
        assert!(a2.close_reason().is_some() && b1.close_reason().is_none());
        let census = hub.census();
        assert_eq!((census.by_org.len(), census.users), (1, 2));
        assert_eq!(hub.users(), census.users);
        hub.close_all(&CloseReason::SHUTDOWN);
        assert_eq!(b1.close_reason(), Some(&CloseReason::SHUTDOWN));
        let late = conn(6, "d", "7", 8);
        assert_eq!(
            hub.register(late, Limits::default()).err(),
            Some(Refused::ShuttingDown)
        );
    }

    #[tokio::test]
    async fn full_queue_closes_only_that_connection() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let slow = conn(1, "1", "7", 1);
        let fast = conn(2, "2", "7", 8);
        let _r1 = hub.register(slow.clone(), Limits::default()).unwrap();
        let _r2 = hub.register(fast.clone(), Limits::default()).unwrap();
        assert_eq!(hub.deliver(&publication("org:7", 1)), 2);
        assert_eq!(hub.deliver(&publication("org:7", 2)), 1);
        slow.woken().await;
        assert_eq!(slow.close_reason(), Some(&CloseReason::SLOW_CONSUMER));
        assert!(fast.close_reason().is_none());
        assert_eq!(queued(&fast).len(), 2);
    }

    #[test]
    fn the_byte_bound_counts_frames_until_they_are_written() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let one = publication("org:7", 1).wire.len();
        let limits = QueueLimits {
            frames: 100,
            bytes: one * 2,
        };
        let c = conn_with(1, "1", "7", limits);
        let _r = hub.register(c.clone(), Limits::default()).unwrap();
        assert_eq!(hub.deliver(&publication("org:7", 1)), 1);
        assert_eq!(queued(&c).len(), 1);
        // Taken but not written still counts.
        assert_eq!(hub.deliver(&publication("org:7", 2)), 1);
        assert_eq!(
            c.backlog(),
            crate::outbox::Backlog {
                frames: 2,
                bytes: one * 2
            }
        );
        let mut none = VecDeque::new();
        c.out
            .take(&crate::outbox::WriteSide::for_test(), &mut none, (1, one));
        assert_eq!(hub.deliver(&publication("org:7", 3)), 1);
        assert!(c.close_reason().is_none());
        assert_eq!(hub.deliver(&publication("org:7", 4)), 0);
        assert_eq!(c.close_reason(), Some(&CloseReason::SLOW_CONSUMER));
    }

    #[test]
    fn a_revocation_closes_the_tokens_it_reaches_and_no_later_one() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let (old, later, without, other) = (
            conn(1, "42", "7", 8),
            conn(2, "42", "7", 8),
            conn(3, "42", "7", 8),
            conn(4, "43", "7", 8),
        );
        old.set_token(TokenTimes {
            exp: u64::MAX,
            iat: Some(100),
        });
        later.set_token(TokenTimes {
            exp: u64::MAX,
            iat: Some(101),
        });
        other.set_token(TokenTimes {
            exp: u64::MAX,
            iat: Some(1),
        });
        let _regs: Vec<_> = [&old, &later, &without, &other]
            .into_iter()
            .map(|c| hub.register((*c).clone(), Limits::default()).unwrap())
            .collect();
        let ann = UserId::new("42").unwrap();
        let closed = hub.close_revoked(&|user| (*user == ann).then_some(100));
        assert_eq!(closed, 2);
        assert_eq!(old.close_reason(), Some(&CloseReason::REVOKED));
        assert_eq!(without.close_reason(), Some(&CloseReason::REVOKED));
        assert_eq!(later.close_reason(), None);
        assert_eq!(other.close_reason(), None);
    }

    #[test]
    fn two_unanswered_pings_close() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let c = conn(1, "1", "7", 8);
        let _r = hub.register(c.clone(), Limits::default()).unwrap();
        let frame = Bytes::from_static(b"{}");
        hub.ping_all(frame.clone());
        hub.ping_all(frame.clone());
        assert!(c.close_reason().is_none());
        // Pings are not queued behind events, and one not yet written is
        // replaced rather than doubled.
        assert!(queued(&c).is_empty());
        assert_eq!(c.out.take_ping(), Some(frame.clone()));
        assert_eq!(c.out.take_ping(), None);
        hub.ping_all(frame.clone());
        assert_eq!(c.close_reason(), Some(&CloseReason::PING_TIMEOUT));
        let d = conn(2, "2", "7", 8);
        let _r = hub.register(d.clone(), Limits::default()).unwrap();
        for _ in 0..5 {
            hub.ping_all(frame.clone());
            d.pong();
        }
        assert!(d.close_reason().is_none());
    }

    #[test]
    fn a_sliced_ping_round_pings_each_connection_once() {
        let hub = Arc::new(Hub::new(Arc::default()));
        let conns: Vec<_> = (0..10).map(|i| conn(i, &i.to_string(), "7", 8)).collect();
        let _r: Vec<_> = conns
            .iter()
            .map(|c| hub.register(c.clone(), Limits::default()).unwrap())
            .collect();
        let frame = Bytes::from_static(b"{}");
        for slice in 0..3 {
            hub.ping_slice(frame.clone(), slice, 3);
            let pinged: Vec<u64> = conns
                .iter()
                .filter(|c| c.out.take_ping().is_some())
                .map(|c| c.id.0)
                .collect();
            assert!(pinged.iter().all(|id| id % 3 == slice), "{pinged:?}");
            assert_eq!(pinged.len(), if slice == 0 { 4 } else { 3 });
        }
        // Two unanswered rounds, then each connection closes at its own
        // tick of the third.
        for slice in 0..3 {
            hub.ping_slice(frame.clone(), slice, 3);
        }
        assert!(conns.iter().all(|c| c.close_reason().is_none()));
        hub.ping_slice(frame.clone(), 1, 3);
        let closed = conns.iter().filter(|c| c.close_reason().is_some()).count();
        assert_eq!(closed, 3);
    }
}
