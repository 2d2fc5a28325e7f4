//! One live connection as the hub holds it: who, what it reads, its token's
//! times, and its outbox to the socket.

use super::*;

/// The times of the token a connection holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// Expiry, UNIX seconds.
    pub exp: u64,
    /// Issued at, UNIX seconds, if the token says.
    pub iat: Option<u64>,
}

/// The hub's handle on one live connection: identity, what it reads, and
/// its way out to the socket.
pub struct Conn {
    pub id: ConnId,
    pub user: UserId,
    pub org: OrgId,
    /// The channels this connection reads.
    pub interest: Interest,
    /// The socket's write side and the bounded queue in front of it
    /// (`--send-queue`, `--send-queue-bytes`; past either bound the
    /// connection is a slow consumer).
    pub out: Outbox,
    close_reason: OnceLock<CloseReason>,
    /// Token expiry (UNIX seconds); moved forward by `auth.refresh`.
    expires_at: AtomicU64,
    /// The token's `iat` (UNIX seconds), 0 when it has none: the two are
    /// alike to a revocation, which refuses `iat <= at` and every token
    /// without one.
    issued_at: AtomicU64,
    /// Pings sent since the last Pong; two unanswered drop the connection.
    unanswered_pings: AtomicU32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("org", &self.org)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection writing to `socket` (`None`: everything is queued, as
    /// in unit tests), whose queue holds at most `limits` of unwritten
    /// frames.
    pub fn new(
        id: ConnId,
        user: UserId,
        org: OrgId,
        interest: Interest,
        token: TokenTimes,
        limits: QueueLimits,
        socket: Option<Arc<TcpStream>>,
    ) -> Self {
        let out = Outbox::new(socket, interest.channels.len(), limits);
        Self {
            id,
            user,
            org,
            interest,
            out,
            close_reason: OnceLock::new(),
            expires_at: AtomicU64::new(token.exp),
            issued_at: AtomicU64::new(token.iat.unwrap_or(0)),
            unanswered_pings: AtomicU32::new(0),
        }
    }

    /// Hands an event to the connection without waiting (see [`Outbox`]);
    /// a queue over its frame or byte bound closes the connection as a
    /// slow consumer. `slot` is the event's channel in
    /// `interest.channels`, if the connection reads it by name.
    /// `route` as [`Outbox::offer`] takes it.
    pub fn offer(&self, item: &Arc<Publication>, slot: Option<usize>, route: Route) -> Offered {
        if self.close_reason.get().is_some() {
            return Offered::Refused;
        }
        let offered = self.out.offer(item, slot, route);
        if offered == Offered::Refused {
            self.close(CloseReason::SLOW_CONSUMER);
        }
        offered
    }

    /// Queues an event for the session (never written directly); returns
    /// whether it was queued.
    pub fn push(&self, item: Arc<Publication>) -> bool {
        self.offer(&item, None, Route::Queue) != Offered::Refused
    }

    /// Where `channel` is in `interest.channels`.
    pub fn slot(&self, channel: &ChannelName) -> Option<usize> {
        self.interest.channels.iter().position(|c| c == channel)
    }

    /// Asks the session to send the keep-alive `frame` ahead of anything
    /// queued (see [`Outbox::ping`]).
    pub fn ping(&self, frame: Bytes) {
        self.out.ping(frame);
    }

    /// What is not yet written.
    pub fn backlog(&self) -> crate::outbox::Backlog {
        self.out.backlog()
    }

    /// Asks the session to close with `reason`; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.set(reason);
        self.out.wake();
    }

    /// Why the connection must close, once [`Conn::close`] was called.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.get()
    }

    /// Resolves when frames were queued or the connection must close.
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.out.woken()
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    /// The connection now holds a refreshed token.
    pub fn set_token(&self, token: TokenTimes) {
        self.expires_at.store(token.exp, Ordering::Relaxed);
        self.issued_at
            .store(token.iat.unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether a revocation of its user at `at` refuses the token it holds.
    pub fn is_revoked_by(&self, at: u64) -> bool {
        self.issued_at.load(Ordering::Relaxed) <= at
    }

    /// Any Pong proves the peer alive.
    pub fn pong(&self) {
        self.unanswered_pings.store(0, Ordering::Relaxed);
    }

    /// Counts a ping about to be sent; returns how many were unanswered.
    pub(super) fn ping_sent(&self) -> u32 {
        self.unanswered_pings.fetch_add(1, Ordering::Relaxed)
    }
}
