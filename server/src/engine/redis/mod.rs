//! The Redis engine: any number of nodes share one Redis.
//!
//! What Redis holds (prefix `hrrt:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `hrrt:epoch` | string | the current epoch; gone when Redis lost its data |
//! | `hrrt:seq:<channel>` | string (integer) | the channel's latest seq; never expires |
//! | `hrrt:h:<channel>` | stream | the history: id `<seq>-0`, fields `f` (frame), `y` (type), `t` (ms); `MAXLEN --history-size`, expires `--history-ttl` after the last publish |
//! | `hrrt:idem:<len>:<channel>:<key>` | string | the first answer to an idempotency key on that channel (`len`: the channel's length, so no two channels' keys meet), 5 minutes |
//! | `hrrt:idem-index` | sorted set | the live idempotency keys by expiry (ms): `--idempotency-keys` bounds them, cluster-wide |
//! | `hrrt:ch:<channel>` | pub/sub channel | `<epoch>|<seq>|<type>|<frame>` |
//! | `hrrt:ctl` | pub/sub channel | the nodes' control messages (JSON): revocations and disconnects |
//! | `hrrt:revoked` | hash | user → `<at>|<until ms>`: the user's tokens issued at or before `at` are refused, until `--revocation-ttl` after the revocation; read whole (`HSCAN`) by a node at start and at every reconnect |
//! | `hrrt:revoked:until` | sorted set | the users of `hrrt:revoked` by `<until ms>`: each revoke drops up to 100 that ended |
//! | `hrrt:node:<id>` | string | the node's `GET /api/nodes` entry (JSON), expiring three heartbeats after its last |
//! | `hrrt:reply:<id>` | list | the other nodes' counts for one disconnect, 10 s |
//! | `hrrt:pub:<token>` | string | the answer of one applied batch, 5 minutes: a retried publish whose reply was lost answers it |
//!
//! A publish is one Lua script per batch: check the whole batch, then next
//! seq, append to the stream, publish to the nodes, record the idempotency
//! key — atomic, so seqs have no gaps and every node sees a channel's
//! events in seq order; all or nothing, and exactly once under retries.
//!
//! Each node subscribes only to the channels its connections read
//! (reference-counted), and delivers each channel's publications in seq
//! order: a jump in seq (a pub/sub message lost, e.g. across a reconnect)
//! is filled from the stream before anything after it is delivered.

mod connection;
mod ctl;
mod keys;
mod subscriber;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::revocation::Revocations;
use super::{
    BackgroundTask, DISCONNECT_WAIT, Deliver, Engine, EngineError, Epoch, HEARTBEAT, HistoryPage,
    IDEMPOTENCY_WINDOW, NewEvent, NodeInfo, Publication, PublishAck,
};
use crate::protocol::{ChannelName, UserId, encode_event_prefix};
use connection::{BACKOFF_FIRST, CALL_TIMEOUT, Target, call, command_link, now_ms, unavailable};
use ctl::Ctl;
use keys::*;
use subscriber::{Control, Subscriptions, subscriber};

/// How many times a publish is sent before it answers 503: a reply lost
/// to a timeout or a dropped connection is retried under the same batch
/// token, which answers what the first attempt committed.
const PUBLISH_ATTEMPTS: u32 = 3;

/// One batch, all or nothing, exactly once (publish.lua).
const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// The retained events of a channel after a position, dropping those past
/// `--history-ttl` first (history.lua).
const HISTORY_SCRIPT: &str = include_str!("history.lua");

/// One revocation, stored and told (revoke.lua).
const REVOKE_SCRIPT: &str = include_str!("revoke.lua");

/// What the engine and its subscriber task share.
struct Shared {
    /// Where Redis is: one URL, or the master Sentinel names.
    target: Target,
    node_id: String,
    /// This node's copy of every node's revocations: filled by its own,
    /// by [`Ctl::Revoke`] messages, and from Redis at every (re)connect.
    revocations: Revocations,
    /// The command link; replaced when it stops answering or its server
    /// is no longer the master (a Sentinel failover).
    conn: RwLock<ConnectionManager>,
    epoch: RwLock<Epoch>,
    deliver: Arc<dyn Deliver>,
    history_ttl: Duration,
    /// Whether the subscriber connection is up.
    subscribed: AtomicBool,
    /// Events held in every channel's stream, cluster-wide, as last counted
    /// (every [`RETAINED_EVERY`]).
    retained: std::sync::atomic::AtomicU64,
    history: Script,
    /// The subscriber task's requests and state, behind locks it holds for
    /// its whole run: when it dies (a panic, or killed) the locks are
    /// released and its restarted successor takes both over, subscriptions
    /// and delivered seqs included.
    commands: tokio::sync::Mutex<mpsc::UnboundedReceiver<Control>>,
    subs: tokio::sync::Mutex<Subscriptions>,
}

impl Shared {
    fn conn(&self) -> ConnectionManager {
        crate::sync::read(&self.conn).clone()
    }

    /// Whether the command link answers, and from the master.
    async fn command_link_ok(&self) -> bool {
        let mut conn = self.conn();
        match call(redis::cmd("ROLE").query_async::<Value>(&mut conn)).await {
            Ok(Value::Array(role)) => matches!(
                role.first(),
                Some(Value::BulkString(kind)) if kind.as_slice() == b"master"
            ),
            _ => false,
        }
    }

    /// A new command link to wherever the master is now.
    async fn rebuild_conn(&self) -> Result<(), EngineError> {
        let conn = command_link(&self.target).await?;
        *crate::sync::write(&self.conn) = conn;
        tracing::info!("redis command link rebuilt");
        Ok(())
    }

    fn current_epoch(&self) -> Epoch {
        crate::sync::read(&self.epoch).clone()
    }

    /// Adopts the epoch Redis reports; when it changed, every node's
    /// sequence numbers restarted: every live connection is told in band
    /// (`resync.required`, `epoch_changed`) and stays open.
    fn observe_epoch(&self, epoch: &str) {
        if *self.current_epoch() == *epoch {
            return;
        }
        *crate::sync::write(&self.epoch) = Arc::from(epoch);
        tracing::warn!(
            epoch,
            "redis history was reset (new epoch); connections resync in band"
        );
        self.deliver.epoch_changed(None, epoch, 0);
    }

    /// Reads the epoch, creating it when Redis lost it; answers it.
    async fn load_epoch(&self) -> Result<String, EngineError> {
        let mut conn = self.conn();
        let candidate = crate::random_hex(8);
        let (epoch,): (String,) = call(
            redis::pipe()
                .cmd("SET")
                .arg(epoch_key())
                .arg(&candidate)
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(epoch_key())
                .query_async(&mut conn),
        )
        .await?;
        self.observe_epoch(&epoch);
        Ok(epoch)
    }

    /// Retained events of `channel` with `from <= seq <= to`.
    async fn range(
        &self,
        channel: &ChannelName,
        from: u64,
        to: u64,
    ) -> Result<Vec<Arc<Publication>>, EngineError> {
        let mut conn = self.conn();
        let entries: Value = call(
            redis::cmd("XRANGE")
                .arg(stream_key(channel))
                .arg(format!("{from}-0"))
                .arg(format!("{to}-0"))
                .query_async(&mut conn),
        )
        .await?;
        Ok(parse_entries(channel, &entries))
    }
}

/// What a node's Redis engine is set up with.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions<'a> {
    /// `--redis-url`.
    pub url: &'a str,
    /// `--redis-ca`'s PEM: the roots trusted for TLS instead of the
    /// system's.
    pub ca: Option<&'a [u8]>,
    /// Names this node to the others.
    pub node_id: &'a str,
    pub history_size: usize,
    pub history_ttl: Duration,
    /// `--idempotency-keys`: the most live keys in the whole cluster.
    pub idempotency_keys: usize,
}

/// The engine of one node.
pub struct RedisEngine {
    shared: Arc<Shared>,
    publish: Script,
    revoke: Script,
    history_size: usize,
    /// `--idempotency-keys`, applied to the cluster's shared count.
    idempotency_keys: usize,
    control: mpsc::UnboundedSender<Control>,
}

impl RedisEngine {
    /// Runs the publish script with `done` as the batch token: a request's
    /// own (random), or a keyed batch's (`hrrt:idem-batch:…`, one slot of
    /// `--idempotency-keys`, answered again as duplicates).
    async fn publish_as(
        &self,
        done: String,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PublishAck>, EngineError> {
        let mut invocation = self.publish.prepare_invoke();
        invocation.key(epoch_key());
        invocation.key(done);
        invocation.key(IDEMPOTENCY_INDEX);
        invocation
            .arg(crate::random_hex(8))
            .arg(self.history_size)
            .arg(
                u64::try_from(self.shared.history_ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(now_ms())
            .arg(u64::try_from(IDEMPOTENCY_WINDOW.as_millis()).unwrap_or(300_000))
            .arg(self.idempotency_keys);
        for event in &events {
            invocation.key(seq_key(&event.channel));
            invocation.key(stream_key(&event.channel));
            invocation.key(
                event
                    .idempotency_key
                    .as_ref()
                    .map_or_else(String::new, |k| idempotency_key(&event.channel, k)),
            );
            invocation
                .arg(encode_event_prefix(
                    &event.event_type,
                    &event.payload,
                    &event.channel,
                ))
                .arg(event.event_type.as_str())
                .arg(pubsub_channel(&event.channel))
                .arg(event.channel.as_str());
        }
        let reply = self.invoke_publish(&invocation).await?;
        let mut parts = reply.into_iter();
        let epoch = parts
            .next()
            .ok_or_else(|| unavailable("empty publish reply"))?;
        if epoch == "!full" {
            let wait_ms = parts
                .next()
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(1000);
            return Err(EngineError::IdempotencyFull {
                capacity: self.idempotency_keys,
                retry_after: Duration::from_millis(wait_ms),
            });
        }
        self.shared.observe_epoch(&epoch);
        parts
            .map(|answer| parse_answer(&answer).ok_or_else(|| unavailable("bad publish reply")))
            .collect()
    }

    /// Connects to Redis at `url`. Its subscriber is one of
    /// [`Engine::background_tasks`], which the node runs (and restarts).
    pub async fn connect(
        options: RedisOptions<'_>,
        deliver: Arc<dyn Deliver>,
    ) -> Result<Self, EngineError> {
        let RedisOptions {
            url,
            ca,
            node_id,
            history_size,
            history_ttl,
            idempotency_keys,
        } = options;
        // The server's TLS, for `rediss://`: ring, as the rest of the
        // workspace (a second call finds it installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let target = Target::parse(url, ca.map(<[u8]>::to_vec))?;
        let conn = command_link(&target).await?;
        let (control, commands) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node_id: node_id.to_owned(),
            revocations: Revocations::default(),
            target,
            conn: RwLock::new(conn),
            epoch: RwLock::new(Arc::from("")),
            deliver,
            history_ttl,
            subscribed: AtomicBool::new(false),
            retained: std::sync::atomic::AtomicU64::new(0),
            history: Script::new(HISTORY_SCRIPT),
            commands: tokio::sync::Mutex::new(commands),
            subs: tokio::sync::Mutex::default(),
        });
        shared.load_epoch().await?;
        // Before the node serves anything: a token revoked while it was
        // down must not pass its first handshake.
        ctl::load_revocations(&shared).await?;
        Ok(Self {
            shared,
            publish: Script::new(PUBLISH_SCRIPT),
            revoke: Script::new(REVOKE_SCRIPT),
            history_size: history_size.max(1),
            idempotency_keys: idempotency_keys.max(1),
            control,
        })
    }
}

impl RedisEngine {
    /// Runs the publish script, retrying a lost reply (a timeout, a
    /// dropped connection) under the batch's token: at most
    /// [`PUBLISH_ATTEMPTS`] sends, each bounded by [`CALL_TIMEOUT`]. An
    /// error Redis answered (the batch cannot be applied) is not retried.
    async fn invoke_publish(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<String>, EngineError> {
        let mut last = String::new();
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let mut conn = self.shared.conn();
            match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => {
                    tracing::warn!(error = %e, "redis refused the publish batch; nothing of it was applied");
                    return Err(unavailable(e));
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer in time".to_owned(),
            }
            tracing::warn!(attempt, error = %last, "redis publish reply lost; retrying under its batch token");
            tokio::time::sleep(BACKOFF_FIRST).await;
        }
        Err(unavailable(format!(
            "publish not confirmed after {PUBLISH_ATTEMPTS} attempts: {last}"
        )))
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn epoch(&self) -> Epoch {
        self.shared.current_epoch()
    }

    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishAck>, EngineError> {
        // A token of this request alone: a retry of a lost reply answers it.
        let done = format!("{PREFIX}pub:{}", crate::random_hex(16));
        self.publish_as(done, events).await
    }

    async fn publish_batch(
        &self,
        key: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PublishAck>, EngineError> {
        self.publish_as(batch_idempotency_key(key), events).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let cutoff = now_ms()
            .saturating_sub(u64::try_from(self.shared.history_ttl.as_millis()).unwrap_or(u64::MAX));
        let mut conn = self.shared.conn();
        let reply: Value = call(
            self.shared
                .history
                .key(seq_key(channel))
                .key(stream_key(channel))
                .arg(format!("{}-0", since.saturating_add(1)))
                .arg(limit)
                .arg(cutoff)
                .invoke_async(&mut conn),
        )
        .await?;
        let Value::Array(parts) = reply else {
            return Err(unavailable("bad history reply"));
        };
        let latest = parts.first().and_then(as_u64).unwrap_or(0);
        let oldest = parts
            .get(1)
            .map(|first| parse_entries(channel, first))
            .and_then(|first| first.first().map(|p| p.seq))
            .unwrap_or(latest + 1);
        let events = parts
            .get(2)
            .map(|entries| parse_entries(channel, entries))
            .unwrap_or_default();
        Ok(HistoryPage {
            events,
            oldest,
            latest,
        })
    }

    async fn latest(&self, channels: &[ChannelName]) -> Result<Vec<u64>, EngineError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.shared.conn();
        let keys: Vec<String> = channels.iter().map(seq_key).collect();
        let values: Vec<Option<u64>> =
            call(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn ready(&self) -> bool {
        let mut conn = self.shared.conn();
        let ping: Result<String, _> = call(redis::cmd("PING").query_async(&mut conn)).await;
        ping.is_ok() && self.shared.subscribed.load(Ordering::Relaxed)
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let (ack, done) = oneshot::channel();
        self.control
            .send(Control::Subscribe(channels.to_vec(), ack))
            .map_err(|_| unavailable("subscriber stopped"))?;
        done.await.map_err(|_| unavailable("subscriber stopped"))?
    }

    fn unsubscribe(&self, channels: &[ChannelName]) {
        let _ = self.control.send(Control::Unsubscribe(channels.to_vec()));
    }

    async fn subscribe_all(&self) -> Result<(), EngineError> {
        let (ack, done) = oneshot::channel();
        self.control
            .send(Control::SubscribeAll(ack))
            .map_err(|_| unavailable("subscriber stopped"))?;
        done.await.map_err(|_| unavailable("subscriber stopped"))?
    }

    fn unsubscribe_all(&self) {
        let _ = self.control.send(Control::UnsubscribeAll);
    }

    fn sweep(&self) {
        self.shared.revocations.sweep(Instant::now());
    }

    fn background_tasks(&self) -> Vec<(&'static str, BackgroundTask)> {
        let shared = self.shared.clone();
        let counted = self.shared.clone();
        vec![
            (
                "redis-subscriber",
                Arc::new(move || Box::pin(subscriber(shared.clone()))),
            ),
            (
                "redis-retained",
                Arc::new(move || Box::pin(count_retained(counted.clone()))),
            ),
        ]
    }

    fn retained_events(&self) -> u64 {
        self.shared.retained.load(Ordering::Relaxed)
    }

    async fn revoke(&self, user: &UserId, at: u64, ttl: Duration) -> Result<(), EngineError> {
        self.shared
            .revocations
            .revoke(user, at, ttl, Instant::now());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let now = now_ms();
        let until_ms = now.saturating_add(ttl_ms);
        let message = serde_json::to_string(&Ctl::Revoke {
            user: user.to_string(),
            at,
            until_ms,
        })
        .map_err(unavailable)?;
        // Stored for nodes that (re)connect later, and told to those
        // listening now; both before the disconnect that follows.
        let mut conn = self.shared.conn();
        let _: Value = call(
            self.revoke
                .key(REVOKED)
                .key(REVOKED_UNTIL)
                .arg(user.as_str())
                .arg(at)
                .arg(until_ms)
                .arg(now)
                .arg(CTL_CHANNEL)
                .arg(message)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    fn revoked_at(&self, user: &UserId) -> Option<u64> {
        self.shared.revocations.revoked_at(user, Instant::now())
    }

    async fn heartbeat(&self, local: NodeInfo) {
        let Ok(entry) = serde_json::to_string(&local) else {
            return;
        };
        let ttl_ms = u64::try_from((HEARTBEAT * 3).as_millis()).unwrap_or(6000);
        let mut conn = self.shared.conn();
        let beat: Result<(), _> = call(
            redis::cmd("SET")
                .arg(node_key(&self.shared.node_id))
                .arg(entry)
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn),
        )
        .await;
        if let Err(e) = beat {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }

    async fn nodes(&self, local: NodeInfo) -> Result<Vec<NodeInfo>, EngineError> {
        let keys = scan(&self.shared, &format!("{PREFIX}node:*")).await?;
        let mut nodes = vec![local];
        if !keys.is_empty() {
            let mut conn = self.shared.conn();
            let entries: Vec<Option<String>> =
                call(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
            for entry in entries.into_iter().flatten() {
                if let Ok(node) = serde_json::from_str::<NodeInfo>(&entry)
                    && node.node_id != self.shared.node_id
                {
                    nodes.push(node);
                }
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    async fn disconnect_elsewhere(
        &self,
        user: &UserId,
        reason: &str,
    ) -> Result<usize, EngineError> {
        let reply = format!("{PREFIX}reply:{}", crate::random_hex(8));
        let message = serde_json::to_string(&Ctl::Disconnect {
            user: user.to_string(),
            reason: reason.to_owned(),
            reply: reply.clone(),
            origin: self.shared.node_id.clone(),
        })
        .map_err(unavailable)?;
        let mut conn = self.shared.conn();
        let listeners: usize = call(
            redis::cmd("PUBLISH")
                .arg(CTL_CHANNEL)
                .arg(message)
                .query_async(&mut conn),
        )
        .await?;
        // Every node listens on the control channel; this one ignores its own.
        let others =
            listeners.saturating_sub(usize::from(self.shared.subscribed.load(Ordering::Relaxed)));
        let deadline = Instant::now() + DISCONNECT_WAIT;
        let mut counts: Vec<usize> = Vec::new();
        while counts.len() < others && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            counts = call(
                redis::cmd("LRANGE")
                    .arg(&reply)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        }
        Ok(counts.iter().sum())
    }
}

/// How often the events held in Redis are counted for `/metrics` and
/// `/api/stats`.
const RETAINED_EVERY: Duration = Duration::from_secs(5);

/// Counts the events every stream holds (`SCAN` + `XLEN`, pipelined;
/// bounded like [`scan`]: past 10,000 channels the figure is a floor).
async fn count_retained(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(RETAINED_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Ok(keys) = scan(&shared, &format!("{PREFIX}h:*")).await else {
            continue;
        };
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("XLEN").arg(key);
        }
        let mut conn = shared.conn();
        let counted: Result<Vec<u64>, _> = if keys.is_empty() {
            Ok(Vec::new())
        } else {
            call(pipe.query_async(&mut conn)).await
        };
        if let Ok(lengths) = counted {
            shared
                .retained
                .store(lengths.iter().sum(), Ordering::Relaxed);
        }
    }
}

/// Every key matching `pattern`, bounded (10,000 keys, 100 round trips).
async fn scan(shared: &Shared, pattern: &str) -> Result<Vec<String>, EngineError> {
    let mut conn = shared.conn();
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    for _ in 0..100 {
        let (next, batch): (u64, Vec<String>) = call(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= 10_000 {
            break;
        }
    }
    Ok(keys)
}
