//! The Redis engine: any number of nodes share one Redis.
//!
//! What Redis holds (prefix `hrrt:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `hrrt:epoch` | string | the current epoch; gone when Redis lost its data |
//! | `hrrt:seq:<channel>` | string (integer) | the channel's latest seq; never expires |
//! | `hrrt:h:<channel>` | stream | the history: id `<seq>-0`, fields `f` (frame), `y` (type), `t` (ms); `MAXLEN --history-size`, expires `--history-ttl` after the last publish |
//! | `hrrt:idem:<channel>:<key>` | string | the first answer to an idempotency key on that channel, 5 minutes |
//! | `hrrt:ch:<channel>` | pub/sub channel | `<epoch>|<seq>|<type>|<frame>` |
//! | `hrrt:ctl` | pub/sub channel | the nodes' control messages (JSON): revocations and disconnects |
//! | `hrrt:revoked:<user>` | string | `<at>|<until ms>`: the user's tokens issued at or before `at` are refused, until `--revocation-ttl` after the revocation |
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};
use tungstenite::Utf8Bytes;

use super::revocation::Revocations;
use super::{
    BackgroundTask, DISCONNECT_WAIT, Deliver, Engine, EngineError, Epoch, HEARTBEAT, HistoryPage,
    IDEMPOTENCY_WINDOW, NewEvent, NodeInfo, Publication, PublishAck,
};
use crate::protocol::{ChannelName, EventType, UserId, encode_event_prefix};

const PREFIX: &str = "hrrt:";
/// How long one Redis call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff of the subscriber connection.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The subscriber link is PINGed this often, and is dead when a PING is
/// not answered within [`PING_TIMEOUT`]: a half-open link (a failover, a
/// NAT or route dropped without a reset) is found within 3 s, where TCP
/// alone would wait for minutes, or for ever on an idle link.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a publish is sent before it answers 503: a reply lost
/// to a timeout or a dropped connection is retried under the same batch
/// token, which answers what the first attempt committed.
const PUBLISH_ATTEMPTS: u32 = 3;

/// One batch, all or nothing, exactly once. `KEYS[1]` the epoch,
/// `KEYS[2]` the batch token (`hrrt:pub:<token>`: the answer of a batch
/// already applied, so a retry of a lost reply publishes nothing again),
/// then per event its seq, stream and idempotency keys. Every check that
/// could make a write fail (a seq key that is not a count, a stream whose
/// last id is at or past the next seq) runs before the first write: a
/// script error part-way would leave the first events published.
const PUBLISH_SCRIPT: &str = r"
local done = redis.call('GET', KEYS[2])
if done then return cjson.decode(done) end
local n = (#KEYS - 2) / 3
local planned, claimed = {}, {}
for i = 0, n - 1 do
  local seqk, streamk, idemk = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local prev = false
  if idemk ~= '' then prev = redis.call('GET', idemk) or claimed[idemk] end
  if not prev then
    if idemk ~= '' then claimed[idemk] = true end
    local cur = planned[seqk]
    if cur == nil then
      local kind = redis.call('TYPE', seqk)['ok']
      if kind ~= 'none' and kind ~= 'string' then
        return redis.error_reply('HRRT ' .. seqk .. ' is a ' .. kind .. ', not a seq')
      end
      cur = tonumber(redis.call('GET', seqk) or '0')
      if not cur or cur < 0 or cur ~= math.floor(cur) then
        return redis.error_reply('HRRT ' .. seqk .. ' does not hold a seq')
      end
      local skind = redis.call('TYPE', streamk)['ok']
      if skind == 'stream' then
        local info = redis.call('XINFO', 'STREAM', streamk)
        for j = 1, #info, 2 do
          if info[j] == 'last-generated-id' then
            local last = tonumber(string.match(info[j + 1], '^(%d+)-'))
            if last and last > cur then
              return redis.error_reply('HRRT ' .. streamk .. ' is ahead of ' .. seqk .. ' (' .. last .. ' > ' .. cur .. ')')
            end
          end
        end
      elseif skind ~= 'none' then
        return redis.error_reply('HRRT ' .. streamk .. ' is a ' .. skind .. ', not a stream')
      end
    end
    planned[seqk] = cur + 1
  end
end
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local out = {epoch}
for i = 0, n - 1 do
  local seqk, streamk, idemk = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local prefix, typ, pubch, chname = ARGV[6 + 4 * i], ARGV[7 + 4 * i], ARGV[8 + 4 * i], ARGV[9 + 4 * i]
  local prev = false
  if idemk ~= '' then prev = redis.call('GET', idemk) end
  if prev then
    table.insert(out, prev)
  else
    local seq = redis.call('INCR', seqk)
    local frame = prefix .. seq .. '}'
    redis.call('XADD', streamk, 'MAXLEN', ARGV[2], seq .. '-0', 'f', frame, 'y', typ, 't', ARGV[4])
    redis.call('PEXPIRE', streamk, ARGV[3])
    local nodes = redis.call('PUBLISH', pubch, epoch .. '|' .. seq .. '|' .. typ .. '|' .. frame)
    local answer = chname .. '|' .. seq .. '|' .. nodes
    if idemk ~= '' then redis.call('SET', idemk, answer, 'PX', ARGV[5]) end
    table.insert(out, answer)
  end
end
redis.call('SET', KEYS[2], cjson.encode(out), 'PX', ARGV[5])
return out
";

const HISTORY_SCRIPT: &str = r"
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local cutoff = tonumber(ARGV[3])
for _ = 1, 1000 do
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #first == 0 then break end
  local fields, t = first[1][2], nil
  for j = 1, #fields, 2 do
    if fields[j] == 't' then t = tonumber(fields[j + 1]) end
  end
  if t and t < cutoff then redis.call('XDEL', KEYS[2], first[1][1]) else break end
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {latest, first, entries}
";

fn seq_key(channel: &ChannelName) -> String {
    format!("{PREFIX}seq:{channel}")
}

fn stream_key(channel: &ChannelName) -> String {
    format!("{PREFIX}h:{channel}")
}

fn pubsub_channel(channel: &ChannelName) -> String {
    format!("{PREFIX}ch:{channel}")
}

/// The nodes' control channel (`PREFIX` + `ctl`).
const CTL_CHANNEL: &str = "hrrt:ctl";

fn node_key(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

fn revoked_key(user: &UserId) -> String {
    format!("{PREFIX}revoked:{user}")
}

/// Where the Redis master is.
enum Target {
    /// `redis://…`: one server.
    Direct(redis::Client),
    /// `redis+sentinel://h1:26379,h2:26379/mymaster`: asked of the
    /// Sentinels at every (re)connect.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// TCP settings of every link: a peer that vanished (its host died, a
/// route dropped) is found by the kernel within seconds instead of after
/// its default two hours; the PING of the subscriber link also covers a
/// peer whose kernel still answers but whose Redis does not.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(1))
                .with_interval(Duration::from_secs(1))
                .with_retries(3),
        )
        .set_user_timeout(Duration::from_secs(5))
}

impl Target {
    fn parse(url: &str) -> Result<Self, EngineError> {
        use redis::IntoConnectionInfo;
        let invalid =
            |e: &dyn std::fmt::Display| EngineError::Unavailable(format!("invalid redis URL: {e}"));
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, service) = rest.split_once('/').ok_or_else(|| {
                invalid(&"give the master's name: redis+sentinel://host:26379,host:26379/mymaster")
            })?;
            let service = service.trim_end_matches('/');
            if service.is_empty() || hosts.is_empty() {
                return Err(invalid(
                    &"give the Sentinels and the master's name: redis+sentinel://host:26379,host:26379/mymaster",
                ));
            }
            let sentinels: Vec<String> =
                hosts.split(',').map(|h| format!("redis://{h}/")).collect();
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_tcp_settings(tcp_settings());
            let client = redis::sentinel::SentinelClient::build(
                sentinels,
                service.to_owned(),
                Some(node),
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(|e| invalid(&e))?;
            return Ok(Self::Sentinel(tokio::sync::Mutex::new(client)));
        }
        let info = url.into_connection_info().map_err(|e| invalid(&e))?;
        let client =
            redis::Client::open(info.set_tcp_settings(tcp_settings())).map_err(|e| invalid(&e))?;
        Ok(Self::Direct(client))
    }

    /// A client for the master, as it is now.
    async fn client(&self) -> Result<redis::Client, EngineError> {
        match self {
            Self::Direct(client) => Ok(client.clone()),
            Self::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                call(sentinel.async_get_client()).await
            }
        }
    }
}

/// A command link to the master, with bounded calls and reconnects.
async fn command_link(target: &Target) -> Result<ConnectionManager, EngineError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(BACKOFF_MAX);
    let client = target.client().await?;
    call(client.get_connection_manager_with_config(config)).await
}

/// What nodes tell each other on [`CTL_CHANNEL`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Ctl {
    /// Refuse `user`'s tokens issued at or before `at` until `until_ms`.
    Revoke {
        user: String,
        at: u64,
        until_ms: u64,
    },
    /// Close `user`'s connections; push the count to `reply`.
    Disconnect {
        user: String,
        reason: String,
        reply: String,
        origin: String,
    },
}

fn epoch_key() -> String {
    format!("{PREFIX}epoch")
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs a Redis call with [`CALL_TIMEOUT`].
async fn call<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, EngineError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("no answer in time")),
    }
}

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
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
        *self
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
        tracing::info!("redis command link rebuilt");
        Ok(())
    }

    fn current_epoch(&self) -> Epoch {
        self.epoch
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adopts the epoch Redis reports; when it changed, every node's
    /// sequence numbers restarted: every live connection is told in band
    /// (`resync.required`, `epoch_changed`) and stays open.
    fn observe_epoch(&self, epoch: &str) {
        if *self.current_epoch() == *epoch {
            return;
        }
        *self
            .epoch
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(epoch);
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

/// The engine of one node.
pub struct RedisEngine {
    shared: Arc<Shared>,
    publish: Script,
    history_size: usize,
    control: mpsc::UnboundedSender<Control>,
}

/// What the node asks of its subscriber task.
enum Control {
    Subscribe(Vec<ChannelName>, oneshot::Sender<Result<(), EngineError>>),
    Unsubscribe(Vec<ChannelName>),
    SubscribeAll(oneshot::Sender<Result<(), EngineError>>),
    UnsubscribeAll,
}

impl RedisEngine {
    /// Connects to Redis at `url`. Its subscriber is one of
    /// [`Engine::background_tasks`], which the node runs (and restarts).
    pub async fn connect(
        url: &str,
        node_id: &str,
        history_size: usize,
        history_ttl: Duration,
        deliver: Arc<dyn Deliver>,
    ) -> Result<Self, EngineError> {
        let target = Target::parse(url)?;
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
        Ok(Self {
            shared,
            publish: Script::new(PUBLISH_SCRIPT),
            history_size: history_size.max(1),
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
        let mut invocation = self.publish.prepare_invoke();
        invocation.key(epoch_key());
        invocation.key(format!("{PREFIX}pub:{}", crate::random_hex(16)));
        invocation
            .arg(crate::random_hex(8))
            .arg(self.history_size)
            .arg(
                u64::try_from(self.shared.history_ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(now_ms())
            .arg(u64::try_from(IDEMPOTENCY_WINDOW.as_millis()).unwrap_or(300_000));
        for event in &events {
            invocation.key(seq_key(&event.channel));
            invocation.key(stream_key(&event.channel));
            invocation.key(
                event
                    .idempotency_key
                    .as_ref()
                    .map_or_else(String::new, |k| {
                        format!("{PREFIX}idem:{}:{k}", event.channel)
                    }),
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
        self.shared.observe_epoch(&epoch);
        parts
            .map(|answer| parse_answer(&answer).ok_or_else(|| unavailable("bad publish reply")))
            .collect()
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
        let until_ms = now_ms().saturating_add(ttl_ms);
        let message = serde_json::to_string(&Ctl::Revoke {
            user: user.to_string(),
            at,
            until_ms,
        })
        .map_err(unavailable)?;
        // Stored for nodes that (re)connect later, and told to those
        // listening now; both before the disconnect that follows.
        let mut conn = self.shared.conn();
        let _: () = call(
            redis::pipe()
                .cmd("SET")
                .arg(revoked_key(user))
                .arg(format!("{at}|{until_ms}"))
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("PUBLISH")
                .arg(CTL_CHANNEL)
                .arg(message)
                .ignore()
                .query_async(&mut conn),
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

/// Loads every revocation Redis holds into this node's copy: after a
/// (re)connect, the ones told while it was not listening.
async fn load_revocations(shared: &Shared) -> Result<(), EngineError> {
    let keys = scan(shared, &format!("{PREFIX}revoked:*")).await?;
    if keys.is_empty() {
        return Ok(());
    }
    let mut conn = shared.conn();
    let values: Vec<Option<String>> =
        call(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
    let prefix_len = format!("{PREFIX}revoked:").len();
    for (key, value) in keys.iter().zip(values) {
        let Some(value) = value else { continue };
        let Some((at, until_ms)) = value.split_once('|') else {
            continue;
        };
        let (Ok(at), Ok(until_ms)) = (at.parse::<u64>(), until_ms.parse::<u64>()) else {
            continue;
        };
        let Ok(user) = UserId::new(key.get(prefix_len..).unwrap_or_default()) else {
            continue;
        };
        record_revocation(shared, &user, at, until_ms);
    }
    Ok(())
}

fn record_revocation(shared: &Shared, user: &UserId, at: u64, until_ms: u64) {
    let left = Duration::from_millis(until_ms.saturating_sub(now_ms()));
    if !left.is_zero() {
        shared.revocations.revoke(user, at, left, Instant::now());
    }
}

/// A control message from a node (this one's own are ignored). Never
/// waits: the count a disconnect answers is written by its own task.
fn on_ctl(shared: &Arc<Shared>, payload: &[u8]) {
    let Ok(ctl) = serde_json::from_slice::<Ctl>(payload) else {
        tracing::warn!("unreadable control message ignored");
        return;
    };
    match ctl {
        Ctl::Revoke { user, at, until_ms } => {
            if let Ok(user) = UserId::new(&user) {
                record_revocation(shared, &user, at, until_ms);
            }
        }
        Ctl::Disconnect {
            user,
            reason,
            reply,
            origin,
        } => {
            if origin == shared.node_id {
                return;
            }
            let closed =
                UserId::new(&user).map_or(0, |user| shared.deliver.close_user(&user, &reason));
            let mut conn = shared.conn();
            tokio::spawn(async move {
                let answered: Result<(), _> = call(
                    redis::pipe()
                        .cmd("RPUSH")
                        .arg(&reply)
                        .arg(closed)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(&reply)
                        .arg(10_000)
                        .ignore()
                        .query_async(&mut conn),
                )
                .await;
                if let Err(e) = answered {
                    tracing::warn!(error = %e, "disconnect count not answered");
                }
            });
        }
    }
}

/// `<channel>|<seq>|<nodes>` → an ack.
fn parse_answer(answer: &str) -> Option<PublishAck> {
    let mut parts = answer.rsplitn(3, '|');
    let nodes = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let channel = ChannelName::parse(parts.next()?).ok()?;
    Some(PublishAck {
        channel,
        seq,
        recipients: nodes,
    })
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Stream entries (`[[id, [field, value, …]], …]`) → publications.
fn parse_entries(channel: &ChannelName, entries: &Value) -> Vec<Arc<Publication>> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    let received = Instant::now();
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = as_str(parts.first()?)?;
            let seq = id.split('-').next()?.parse().ok()?;
            let Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let mut frame = None;
            let mut kind = None;
            for pair in fields.chunks(2) {
                match (pair.first().and_then(as_str), pair.get(1).and_then(as_str)) {
                    (Some("f"), Some(f)) => frame = Some(f.to_owned()),
                    (Some("y"), Some(y)) => kind = Some(y),
                    _ => {}
                }
            }
            Some(Arc::new(Publication::new(
                channel.clone(),
                seq,
                EventType::parse(kind?).ok()?,
                Utf8Bytes::from(frame?),
                received,
            )))
        })
        .collect()
}

/// A pub/sub message: `<epoch>|<seq>|<type>|<frame>` on `hrrt:ch:<channel>`.
fn parse_message(channel_name: &str, payload: &[u8]) -> Option<(String, Arc<Publication>)> {
    let channel =
        ChannelName::parse(channel_name.strip_prefix(PREFIX)?.strip_prefix("ch:")?).ok()?;
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, '|');
    let epoch = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    let event_type = EventType::parse(parts.next()?).ok()?;
    let frame = parts.next()?;
    Some((
        epoch,
        Arc::new(Publication::new(
            channel,
            seq,
            event_type,
            Utf8Bytes::from(frame),
            Instant::now(),
        )),
    ))
}

/// The node's subscriptions and what it has delivered, per channel.
#[derive(Default)]
struct Subscriptions {
    counts: HashMap<ChannelName, usize>,
    watch_all: usize,
    /// The epoch `delivered` counts in.
    epoch: String,
    /// The last seq delivered per channel: the gap detector.
    delivered: HashMap<ChannelName, u64>,
}

impl Subscriptions {
    /// Whether a local connection reads this channel now.
    fn reads(&self, channel: &ChannelName) -> bool {
        self.watch_all > 0 || self.counts.contains_key(channel)
    }

    /// Seqs of another epoch are not comparable: every channel served
    /// starts again from 0, so what the new epoch already holds is
    /// repaired from its stream before anything live.
    fn enter_epoch(&mut self, epoch: &str) {
        if self.epoch != epoch {
            self.epoch = epoch.to_owned();
            self.delivered.clear();
            for channel in self.counts.keys() {
                self.delivered.insert(channel.clone(), 0);
            }
        }
    }
}

/// Owns the pub/sub connection: (re)subscribes, delivers in seq order,
/// repairs gaps from the stream, reconnects with backoff.
async fn subscriber(shared: Arc<Shared>) {
    shared.subscribed.store(false, Ordering::Relaxed);
    let mut commands = shared.commands.lock().await;
    let mut subs = shared.subs.lock().await;
    let subs = &mut *subs;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let connected = async {
            match shared.target.client().await {
                Ok(client) => call(client.get_async_pubsub()).await,
                Err(e) => Err(e),
            }
        }
        .await;
        let pubsub = match connected {
            Ok(pubsub) => pubsub,
            Err(e) => {
                shared.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "redis subscriber cannot connect; retrying");
                // Answer requests while down instead of leaving them waiting.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(command) => refuse_while_down(subs, command),
                        },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let setup = async {
            let mut channels: Vec<String> = subs.counts.keys().map(pubsub_channel).collect();
            channels.push(CTL_CHANNEL.to_owned());
            sink.subscribe(channels).await?;
            if subs.watch_all > 0 {
                sink.psubscribe(format!("{PREFIX}ch:*")).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        if let Err(e) = call(setup).await {
            tracing::warn!(error = %e, "redis resubscribe failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        match shared.load_epoch().await {
            Ok(epoch) => subs.enter_epoch(&epoch),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        // What was published, and revoked, while this node was not listening.
        if let Err(e) = load_revocations(&shared).await {
            tracing::warn!(error = %e, "loading revocations after reconnect failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        if let Err(e) = repair_all(&shared, subs).await {
            tracing::warn!(error = %e, "redis repair after reconnect failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        shared.subscribed.store(true, Ordering::Relaxed);
        backoff = BACKOFF_FIRST;
        tracing::info!(channels = subs.counts.len(), "redis subscriber connected");

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    // What else is waiting goes with it: a connect storm's
                    // thousands of subscriptions become a few SUBSCRIBEs.
                    let mut batch = vec![command];
                    while batch.len() < SUBSCRIBE_BATCH {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = apply_batch(&shared, &mut sink, subs, batch).await {
                        tracing::warn!(error = %e, "redis subscribe failed");
                        break;
                    }
                }
                _ = ping.tick() => {
                    // The command link too: one that stopped answering, or
                    // whose server is no longer the master (a failover), is
                    // replaced, and this link follows it to the new master.
                    if !shared.command_link_ok().await {
                        tracing::warn!("redis command link unhealthy or not the master; reconnecting both links");
                        if let Err(e) = shared.rebuild_conn().await {
                            tracing::warn!(error = %e, "redis command link not rebuilt yet");
                        }
                        break;
                    }
                    // Messages wait in the connection's buffer meanwhile.
                    match tokio::time::timeout(PING_TIMEOUT, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "redis subscriber PING failed");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(timeout = ?PING_TIMEOUT, "redis subscriber PING unanswered: the link is dead");
                            break;
                        }
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    if message.get_channel_name() == CTL_CHANNEL {
                        on_ctl(&shared, message.get_payload_bytes());
                        continue;
                    }
                    let Some((epoch, publication)) =
                        parse_message(message.get_channel_name(), message.get_payload_bytes())
                    else {
                        continue;
                    };
                    if epoch != subs.epoch {
                        shared.observe_epoch(&epoch);
                        subs.enter_epoch(&epoch);
                    }
                    deliver_in_order(&shared, subs, publication).await;
                }
            }
        }
        shared.subscribed.store(false, Ordering::Relaxed);
        tracing::warn!("redis subscriber connection lost; reconnecting");
    }
}

fn refuse_while_down(subs: &mut Subscriptions, command: Control) {
    let down = || Err(unavailable("not connected"));
    match command {
        Control::Subscribe(_, ack) | Control::SubscribeAll(ack) => {
            let _ = ack.send(down());
        }
        Control::Unsubscribe(channels) => {
            release(subs, &channels);
        }
        Control::UnsubscribeAll => subs.watch_all = subs.watch_all.saturating_sub(1),
    }
}

/// Drops references; answers the channels nobody reads any more.
fn release(subs: &mut Subscriptions, channels: &[ChannelName]) -> Vec<ChannelName> {
    let mut gone = Vec::new();
    for channel in channels {
        if let Some(count) = subs.counts.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                subs.counts.remove(channel);
                subs.delivered.remove(channel);
                gone.push(channel.clone());
            }
        }
    }
    gone
}

/// A subscriber-link command with [`CALL_TIMEOUT`]: a link that does not
/// answer is dead, and the subscriber reconnects.
async fn bounded<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        })
}

/// Subscribes to the channels no local connection read yet and records
/// the seq each was at once subscribed: the baseline from which a later
/// reconnect repairs it, even if it never delivers a message before then.
async fn subscribe_new(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subs: &mut Subscriptions,
    new: &[ChannelName],
) -> redis::RedisResult<()> {
    if new.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = new.iter().map(pubsub_channel).collect();
    bounded(sink.subscribe(names)).await?;
    // Read after the subscription holds: a publish in between is both
    // counted here and delivered live, and the live copy is a duplicate.
    let keys: Vec<String> = new.iter().map(seq_key).collect();
    let mut conn = shared.conn();
    let seqs: Vec<Option<u64>> =
        bounded(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
    for (channel, seq) in new.iter().zip(seqs) {
        subs.delivered
            .entry(channel.clone())
            .or_insert(seq.unwrap_or(0));
    }
    Ok(())
}

/// Most subscriber requests handled in one round.
const SUBSCRIBE_BATCH: usize = 1024;

/// Applies waiting requests: every `Subscribe` of the batch in one
/// SUBSCRIBE (and one MGET for the new channels' baselines), then the rest
/// in order. Taking subscriptions first is safe: counts only add, and a
/// later unsubscribe of the same channel then finds it counted.
async fn apply_batch(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subs: &mut Subscriptions,
    batch: Vec<Control>,
) -> redis::RedisResult<()> {
    let mut subscribes = Vec::new();
    let mut others = Vec::new();
    for command in batch {
        match command {
            Control::Subscribe(channels, ack) => subscribes.push((channels, ack)),
            other => others.push(other),
        }
    }
    if !subscribes.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let mut new: Vec<ChannelName> = Vec::new();
        for (channels, _) in &subscribes {
            for channel in channels {
                if !subs.counts.contains_key(channel) && seen.insert(channel) {
                    new.push(channel.clone());
                }
            }
        }
        match subscribe_new(shared, sink, subs, &new).await {
            Ok(()) => {
                for (channels, ack) in subscribes {
                    for channel in channels {
                        *subs.counts.entry(channel).or_default() += 1;
                    }
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                for (_, ack) in subscribes {
                    let _ = ack.send(Err(unavailable(&e)));
                }
                return Err(e);
            }
        }
    }
    for command in others {
        apply(shared, sink, subs, command).await?;
    }
    Ok(())
}

async fn apply(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    subs: &mut Subscriptions,
    command: Control,
) -> redis::RedisResult<()> {
    match command {
        Control::Subscribe(channels, ack) => {
            let new: Vec<ChannelName> = channels
                .iter()
                .filter(|c| !subs.counts.contains_key(*c))
                .cloned()
                .collect();
            let result = subscribe_new(shared, sink, subs, &new).await;
            match result {
                Ok(()) => {
                    for channel in channels {
                        *subs.counts.entry(channel).or_default() += 1;
                    }
                    let _ = ack.send(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    let _ = ack.send(Err(unavailable(&e)));
                    Err(e)
                }
            }
        }
        Control::Unsubscribe(channels) => {
            let gone = release(subs, &channels);
            if !gone.is_empty() {
                let names: Vec<String> = gone.iter().map(pubsub_channel).collect();
                bounded(sink.unsubscribe(names)).await?;
            }
            Ok(())
        }
        Control::SubscribeAll(ack) => {
            let result = if subs.watch_all == 0 {
                bounded(sink.psubscribe(format!("{PREFIX}ch:*"))).await
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {
                    subs.watch_all += 1;
                    let _ = ack.send(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    let _ = ack.send(Err(unavailable(&e)));
                    Err(e)
                }
            }
        }
        Control::UnsubscribeAll => {
            subs.watch_all = subs.watch_all.saturating_sub(1);
            if subs.watch_all == 0 {
                bounded(sink.punsubscribe(format!("{PREFIX}ch:*"))).await?;
                // Forget channels only the watchers read.
                subs.delivered.retain(|c, _| subs.counts.contains_key(c));
            }
            Ok(())
        }
    }
}

/// Delivers `publication` after any events of its channel this node
/// missed; drops what was already delivered.
async fn deliver_in_order(
    shared: &Shared,
    subs: &mut Subscriptions,
    publication: Arc<Publication>,
) {
    let channel = publication.channel.clone();
    // A message can still arrive after this node unsubscribed. Tracking
    // its seq again would leave a stale "last delivered" behind, and a
    // later subscriber of the channel would get a needless gap repair (or
    // a spurious resync when that range is no longer in history).
    if !subs.reads(&channel) {
        return;
    }
    let last = subs.delivered.get(&channel).copied();
    match last {
        Some(last) if publication.seq <= last => return,
        Some(last) if publication.seq > last + 1 => {
            match shared.range(&channel, last + 1, publication.seq - 1).await {
                Ok(missed) => {
                    let complete = missed.len() as u64 == publication.seq - 1 - last;
                    for p in &missed {
                        shared.deliver.deliver(p);
                    }
                    if !complete {
                        tracing::warn!(channel = %channel, "gap not in history any more; connections resync");
                        shared.deliver.resync(Some(&channel));
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "gap repair failed; connections resync");
                    shared.deliver.resync(Some(&channel));
                }
            }
        }
        _ => {}
    }
    shared.deliver.deliver(&publication);
    subs.delivered.insert(channel, publication.seq);
}

/// After a reconnect: delivers what every channel this node serves got
/// while it was not listening, from the seq it last delivered or was at
/// when subscribed. A channel whose seq in Redis is below that was rolled
/// back (an older RDB restored, a lagging replica promoted): an epoch
/// change for that channel, told in band, never a silent drop of what
/// comes next.
async fn repair_all(shared: &Shared, subs: &mut Subscriptions) -> Result<(), EngineError> {
    let served: Vec<(ChannelName, u64)> = subs
        .delivered
        .iter()
        .map(|(c, s)| (c.clone(), *s))
        .collect();
    if served.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = served.iter().map(|(c, _)| seq_key(c)).collect();
    let mut conn = shared.conn();
    let latest: Vec<Option<u64>> =
        call(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?;
    for ((channel, last), latest) in served.into_iter().zip(latest) {
        let latest = latest.unwrap_or(0);
        if latest < last {
            tracing::warn!(channel = %channel, delivered = last, redis = latest,
                "redis holds an older seq than this node delivered (rolled back); connections resync in band");
            shared
                .deliver
                .epoch_changed(Some(&channel), &shared.current_epoch(), latest);
            subs.delivered.insert(channel, latest);
            continue;
        }
        if latest == last {
            continue;
        }
        match shared.range(&channel, last + 1, latest).await {
            Ok(missed) => {
                if missed.first().is_none_or(|first| first.seq != last + 1) {
                    shared.deliver.resync(Some(&channel));
                }
                for p in &missed {
                    shared.deliver.deliver(p);
                    subs.delivered.insert(channel.clone(), p.seq);
                }
            }
            Err(_) => shared.deliver.resync(Some(&channel)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_channel_is_no_longer_read() {
        let mut subs = Subscriptions::default();
        let org = ChannelName::parse("org:7").unwrap();
        subs.counts.insert(org.clone(), 1);
        subs.delivered.insert(org.clone(), 5);
        assert!(subs.reads(&org));
        let gone = release(&mut subs, std::slice::from_ref(&org));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0], org);
        assert!(!subs.reads(&org));
        assert!(!subs.delivered.contains_key(&org));
        subs.watch_all = 1;
        assert!(subs.reads(&org), "a watcher of every channel reads it");
    }

    #[test]
    fn answers_and_messages_parse() {
        let ack = parse_answer("user:ann|x@y.z|12|3").unwrap();
        assert_eq!(
            (ack.channel.as_str(), ack.seq, ack.recipients),
            ("user:ann|x@y.z", 12, 3)
        );
        let (epoch, p) =
            parse_message("hrrt:ch:org:7", b"e1|5|entity.created|{\"a\":\"|\"}").unwrap();
        assert_eq!(
            (epoch.as_str(), p.seq, p.channel.as_str()),
            ("e1", 5, "org:7")
        );
        assert_eq!(p.frame.as_str(), "{\"a\":\"|\"}");
        assert!(parse_message("other", b"x").is_none());
    }
}
