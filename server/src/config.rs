//! Server configuration: every flag has an env variable. `hrrt-server` and
//! `hrrt serve` flatten the same [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Flags and env variables of the server.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HRRT_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// The shared HS256 secret that signs every token. Required unless --dev.
    #[arg(long, env = "HRRT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Development mode: generate a secret and print ready-to-paste commands.
    #[arg(long)]
    pub dev: bool,

    /// Use the Redis engine at this URL (redis://…) instead of the embedded
    /// memory engine.
    #[arg(long, env = "HRRT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How often each connection gets a keep-alive ping; a client that
    /// answers no WebSocket Ping for two intervals is dropped.
    #[arg(long, env = "HRRT_PING_INTERVAL", default_value = "25s", value_parser = positive_duration)]
    pub ping_interval: Duration,

    /// How often each connection's token expiry is re-checked.
    #[arg(long, env = "HRRT_TOKEN_CHECK_INTERVAL", default_value = "60s", value_parser = positive_duration)]
    pub token_check_interval: Duration,

    /// Events kept per channel for resume and the history API.
    #[arg(long, env = "HRRT_HISTORY_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub history_size: u64,

    /// How long events are kept for resume and the history API.
    #[arg(long, env = "HRRT_HISTORY_TTL", default_value = "1h", value_parser = positive_duration)]
    pub history_ttl: Duration,

    /// Frames queued per connection; a client further behind is closed with
    /// 1013 "slow consumer".
    #[arg(long, env = "HRRT_SEND_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub send_queue: u64,

    /// The largest frame a client may send, and the largest event payload a
    /// publisher may send, in bytes.
    #[arg(long, env = "HRRT_MAX_MESSAGE_BYTES", default_value_t = 65536,
          value_parser = clap::value_parser!(u64).range(256..=(64 << 20)))]
    pub max_message_bytes: u64,

    /// Comma-separated list of allowed `Origin` values for WebSocket
    /// handshakes; empty allows any origin.
    #[arg(long, env = "HRRT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most connections this node holds at once (0: no cap).
    #[arg(long, env = "HRRT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u64,

    /// Most connections one user may hold at once (0: no cap).
    #[arg(long, env = "HRRT_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: u64,

    /// Events per second one publisher (token `sub`) may publish, with
    /// bursts of up to one second's worth; over it the API answers 429
    /// (0: no limit).
    #[arg(long, env = "HRRT_PUBLISH_RATE", default_value_t = 0)]
    pub publish_rate: u64,
}

impl Config {
    /// Defaults as the flags have them, with `secret`; for tests and embedding.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            jwt_secret: Some(secret.to_owned()),
            dev: false,
            redis_url: None,
            ping_interval: Duration::from_secs(25),
            token_check_interval: Duration::from_secs(60),
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            send_queue: 1024,
            max_message_bytes: 65536,
            allowed_origins: Vec::new(),
            max_connections: 0,
            max_connections_per_user: 0,
            publish_rate: 0,
        }
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h` (and combinations such as `1m30s`);
/// zero is refused because every duration here is a period or a lifetime.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_match_with_secret() {
        let parsed = Cli::try_parse_from(["x", "--jwt-secret", "s"])
            .unwrap()
            .config;
        let built = Config::with_secret("s");
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    #[test]
    fn durations() {
        assert_eq!(positive_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(positive_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("10").is_err());
        assert!(positive_duration("soon").is_err());
    }
}
