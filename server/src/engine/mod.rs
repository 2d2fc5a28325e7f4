//! Engines: where events are ordered, stored and fanned out.
//!
//! An engine owns sequence numbers, history and the fan-out between server
//! processes. It never sees a connection: it hands each publication to the
//! node through one [`Deliver`] handler (the hub), which owns the sockets.
//! The memory engine is one process; a Redis engine is a second
//! implementation of the same trait and changes no caller.

pub mod idempotency;
pub mod memory;
pub mod redis;
pub mod revocation;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

pub use hrrt_protocol::api::{NodeInfo, PublishAck};

use crate::protocol::{self, ChannelName, EventType, UserId};

pub use memory::MemoryEngine;
pub use redis::RedisEngine;

/// One life of the history. Sequence numbers are only comparable within
/// one epoch; a client resuming with another epoch must refetch state.
pub type Epoch = Arc<str>;

/// An event to publish, already validated.
#[derive(Debug)]
pub struct NewEvent {
    pub channel: ChannelName,
    pub event_type: EventType,
    pub payload: Box<RawValue>,
    /// A retried publish with the same key within
    /// [`IDEMPOTENCY_WINDOW`] returns the first answer and publishes nothing.
    pub idempotency_key: Option<String>,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// A published event as every node and every recipient sees it.
#[derive(Debug)]
pub struct Publication {
    pub channel: ChannelName,
    pub seq: u64,
    pub event_type: EventType,
    /// The serialised envelope (JSON), for history and the HTTP API.
    pub frame: Utf8Bytes,
    /// The envelope as the WebSocket frame every recipient's socket gets:
    /// framed once, in the same buffer as `frame`.
    pub wire: Bytes,
    /// When this process learnt of the event, for the retention window and
    /// the delivery-latency measure.
    pub received: Instant,
}

#[cfg(test)]
impl Publication {
    /// An `entity.created` event of `channel` at `seq` with `payload`
    /// (JSON), as the unit tests need one.
    pub fn for_test(channel: &str, seq: u64, payload: &str) -> Arc<Self> {
        let channel = ChannelName::parse(channel).unwrap();
        let event_type = EventType::parse("entity.created").unwrap();
        let payload = RawValue::from_string(payload.to_owned()).unwrap();
        let frame = protocol::encode_event(&event_type, &payload, &channel, seq);
        Arc::new(Self::new(channel, seq, event_type, frame, Instant::now()))
    }
}

impl Publication {
    /// The event `frame` (its JSON envelope), framed for the wire once.
    pub fn new(
        channel: ChannelName,
        seq: u64,
        event_type: EventType,
        frame: Utf8Bytes,
        received: Instant,
    ) -> Self {
        let (wire, frame) = protocol::wire_event(frame);
        Self {
            channel,
            seq,
            event_type,
            frame,
            wire,
            received,
        }
    }
}

/// Retained events of one channel after a position.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Oldest first.
    pub events: Vec<Arc<Publication>>,
    /// The seq of the oldest retained event, or `latest + 1` when the
    /// history is empty. A position `p` can be resumed without loss iff
    /// `p + 1 >= oldest`.
    pub oldest: u64,
    /// The channel's latest seq (0 when nothing was ever published).
    pub latest: u64,
}

/// Receives every publication of the channels this node is subscribed to,
/// in seq order per channel. Implemented by the hub.
pub trait Deliver: Send + Sync + 'static {
    /// Hands the publication to the local connections that read its
    /// channel; returns how many. Must not block.
    fn deliver(&self, publication: &Arc<Publication>) -> usize;

    /// The engine cannot guarantee an unbroken sequence any more — for one
    /// channel (a gap it could not repair) or for all (`None`: the history
    /// was reset, a new epoch). Connections reading it must reconnect and
    /// resume, which tells them to resync. Must not block.
    fn resync(&self, _channel: Option<&ChannelName>) {}

    /// The history of `channel` (or of every channel: `None`) was lost or
    /// rolled back: its events continue after seq `from` (0 when the
    /// sequence restarted) in `epoch`. Connections stay open: each reading
    /// the channel gets `resync.required` (`epoch_changed`) in its order,
    /// then the events that follow. Must not block.
    fn epoch_changed(&self, channel: Option<&ChannelName>, _epoch: &str, _from: u64) {
        self.resync(channel);
    }

    /// Closes every local connection of `user` with 1008 `reason` (a
    /// disconnect asked on another node); answers how many. Must not block.
    fn close_user(&self, _user: &UserId, _reason: &str) -> usize {
        0
    }

    /// Closes every local connection whose token a revocation refuses
    /// (`revoked_at` answers when a user was revoked): after a node missed
    /// revocations while cut off, with 1008 `revoked`. Answers how many.
    /// Must not block.
    fn close_revoked(&self, _revoked_at: &dyn Fn(&UserId) -> Option<u64>) -> usize {
        0
    }
}

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backing store cannot be reached; the call may be retried.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The idempotency table holds `--idempotency-keys` keys, none of
    /// them older than the window; a key is never forgotten early, so a
    /// new one waits until the oldest expires.
    #[error("the idempotency table is full ({capacity} keys); retry in {} s", retry_after.as_secs().max(1))]
    IdempotencyFull {
        capacity: usize,
        retry_after: std::time::Duration,
    },
}

impl EngineError {
    /// What went wrong, without the "engine unavailable" frame: for a
    /// message that already says which engine it is about.
    pub fn reason(&self) -> String {
        match self {
            EngineError::Unavailable(why) => why.trim_start_matches("redis: ").to_owned(),
            other => other.to_string(),
        }
    }
}

/// A long-running task of an engine, made afresh for every (re)start.
pub type BackgroundTask =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The contract every engine keeps:
///
/// - Sequence numbers start at 1 per channel and grow by exactly 1 per
///   published event; appending to history and handing to [`Deliver`] are
///   atomic per channel, so there are no gaps and every node sees a
///   channel's events in seq order.
/// - History holds at most `history_size` events per channel for at most
///   `history_ttl`; [`Engine::history`] returns events oldest first.
/// - Events of one `publish` call are published in the order given.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// The current epoch.
    fn epoch(&self) -> Epoch;

    /// Publishes events in order and answers one ack per event.
    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishAck>, EngineError>;

    /// [`Engine::publish`] under one idempotency key for the whole batch
    /// (one slot of `--idempotency-keys`): within the window, the same key
    /// publishes nothing and answers the first answers, marked duplicate.
    async fn publish_batch(
        &self,
        key: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PublishAck>, EngineError>;

    /// Up to `limit` retained events of `channel` with seq > `since`.
    async fn history(
        &self,
        channel: &ChannelName,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, EngineError>;

    /// The latest seq of each channel, in the order given.
    async fn latest(&self, channels: &[ChannelName]) -> Result<Vec<u64>, EngineError>;

    /// Whether the engine can serve publishes now.
    async fn ready(&self) -> bool;

    /// Tells the engine a local connection reads these channels, so that
    /// their publications from other nodes reach this one. Counted: every
    /// call is matched by one [`Engine::unsubscribe`]. Called after the
    /// connection is in the hub and before its history is read, so nothing
    /// published in between is missed.
    async fn subscribe(&self, _channels: &[ChannelName]) -> Result<(), EngineError> {
        Ok(())
    }

    /// The connection that subscribed these channels has gone.
    fn unsubscribe(&self, _channels: &[ChannelName]) {}

    /// Like [`Engine::subscribe`] for every channel (an admin watching
    /// `orgs=*`); matched by one [`Engine::unsubscribe_all`].
    async fn subscribe_all(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn unsubscribe_all(&self) {}

    /// Events held in history, for the metrics.
    fn retained_events(&self) -> u64 {
        0
    }

    /// Housekeeping the node runs about once a second: drop what outlived
    /// its time (history past `--history-ttl`, idempotency keys,
    /// revocations) and free what nothing uses. Must not block.
    fn sweep(&self) {}

    /// Refuses `user`'s tokens issued at or before `at` (UNIX seconds), or
    /// without `iat`, for `ttl`, on every node that shares this engine.
    async fn revoke(
        &self,
        user: &UserId,
        at: u64,
        ttl: std::time::Duration,
    ) -> Result<(), EngineError>;

    /// When `user`'s tokens were last revoked (UNIX seconds), if that is
    /// within the revocation's ttl: tokens issued at or before it are
    /// refused. Checked on every handshake, refresh and API call, so it
    /// answers from memory and never blocks.
    fn revoked_at(&self, user: &UserId) -> Option<u64>;

    /// The engine's own long-running tasks (the Redis subscriber). The node
    /// runs each under supervision: restarted when it ends or panics, with
    /// `/readyz` 503 meanwhile. Until they run, nothing is delivered from
    /// other nodes.
    fn background_tasks(&self) -> Vec<(&'static str, BackgroundTask)> {
        Vec::new()
    }

    /// The live nodes sharing this engine; `local` is this node as it is
    /// now (the memory engine has no other).
    async fn nodes(&self, local: NodeInfo) -> Result<Vec<NodeInfo>, EngineError> {
        Ok(vec![local])
    }

    /// Tells the other nodes this one is alive, as it is now (every
    /// [`HEARTBEAT`]; silent for three, it is gone from [`Engine::nodes`]).
    async fn heartbeat(&self, _local: NodeInfo) {}

    /// Closes `user`'s connections on the *other* nodes (this node closes
    /// its own); answers how many, summed over the nodes that answered
    /// within [`DISCONNECT_WAIT`]. The memory engine has no other node.
    async fn disconnect_elsewhere(
        &self,
        _user: &UserId,
        _reason: &str,
    ) -> Result<usize, EngineError> {
        Ok(0)
    }
}

/// How often a node heartbeats through the engine.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a disconnect waits for the other nodes' counts.
pub const DISCONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
