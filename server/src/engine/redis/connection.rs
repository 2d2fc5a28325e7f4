//! The links to Redis: where the master is (one URL, or asked of the
//! Sentinels), the TCP settings of every link, and the time bound of
//! every call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::engine::EngineError;

/// How long one Redis call may take before it counts as unavailable.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff of the links.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where the Redis master is.
pub(super) enum Target {
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
    pub(super) fn parse(url: &str) -> Result<Self, EngineError> {
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
    pub(super) async fn client(&self) -> Result<redis::Client, EngineError> {
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
pub(super) async fn command_link(target: &Target) -> Result<ConnectionManager, EngineError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(BACKOFF_MAX);
    let client = target.client().await?;
    call(client.get_connection_manager_with_config(config)).await
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs a Redis call with [`CALL_TIMEOUT`].
pub(super) async fn call<T>(
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("no answer in time")),
    }
}

/// A subscriber-link command with [`CALL_TIMEOUT`]: a link that does not
/// answer is dead, and the subscriber reconnects.
pub(super) async fn bounded<T>(
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        })
}
