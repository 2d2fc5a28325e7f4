//! Server configuration: every flag has an env variable. `hrrt-server` and
//! `hrrt serve` flatten the same [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// `--fanout-direct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FanoutDirect {
    Auto,
    Off,
}

/// Flags and env variables of the server.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on: host:port, where host is an IP address or a
    /// name (`localhost:8000`, resolved once at start).
    #[arg(long, env = "HRRT_LISTEN", default_value = "127.0.0.1:8000", value_parser = listen_addr)]
    pub listen: SocketAddr,

    /// The shared HS256 secret that signs every token. Required unless --dev.
    #[arg(
        long,
        visible_alias = "secret",
        env = "HRRT_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// Development mode: print ready-to-paste commands, and without
    /// --jwt-secret use a secret kept in a state file
    /// ($XDG_STATE_HOME/hrrt/dev-secret, else ~/.local/state/hrrt/dev-secret)
    /// so that tokens stay valid across restarts.
    #[arg(long)]
    pub dev: bool,

    /// With --dev: make a new secret (every token minted before is refused).
    #[arg(long, requires = "dev", conflicts_with = "jwt_secret")]
    pub new_secret: bool,

    /// Use the Redis engine at this URL instead of the embedded memory
    /// engine: redis://[user:password@]host:6379[/db], rediss://… for TLS,
    /// or redis+sentinel://[user:password@]host:26379,host:26379/mymaster
    /// to follow a Sentinel-managed master through failovers
    /// (rediss+sentinel:// for TLS; ?sentinel_password=… when the
    /// Sentinels' password differs from the master's).
    #[arg(long, env = "HRRT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// For a `rediss://` (TLS) Redis: a PEM file of the CA certificates to
    /// trust instead of the system's roots.
    #[arg(long, env = "HRRT_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,

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

    /// An HTTP request's head must arrive, a request body be read, and a
    /// WebSocket session be set up within this; otherwise the socket is
    /// closed. Also how long an idle keep-alive HTTP connection is kept.
    #[arg(long, env = "HRRT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub handshake_timeout: Duration,

    /// A connection (HTTP or WebSocket) whose client takes none of the
    /// server's bytes for this long is closed: a client that sends and
    /// never reads cannot hold a socket and its buffers. WebSockets get
    /// 1013 "write timeout" (reconnect and resume).
    #[arg(long, env = "HRRT_WRITE_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub write_timeout: Duration,

    /// On SIGINT/SIGTERM, how long in-flight HTTP requests and closing
    /// WebSockets may take before whatever is left is cut.
    #[arg(long, env = "HRRT_SHUTDOWN_GRACE", default_value = "5s", value_parser = positive_duration)]
    pub shutdown_grace: Duration,

    /// Bytes queued per connection (live events and resume replay alike);
    /// a client further behind is closed with 1013 "slow consumer". At
    /// least --max-message-bytes + 1024, so that any one event fits.
    #[arg(long, env = "HRRT_SEND_QUEUE_BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub send_queue_bytes: u64,

    /// `auto`: the fan-out writes an event straight to an idle socket, and
    /// queues for the sessions while the node is saturated; `off`: every
    /// event is queued for the sessions to write (more CPU per delivery
    /// at low load, the same at saturation).
    #[arg(long, env = "HRRT_FANOUT_DIRECT", value_enum, default_value_t = FanoutDirect::Auto)]
    pub fanout_direct: FanoutDirect,

    /// How long `POST /api/disconnect` with `"revoke": true` keeps refusing
    /// the user's tokens issued up to then (longer than any token lives).
    #[arg(long, env = "HRRT_REVOCATION_TTL", default_value = "24h", value_parser = positive_duration)]
    pub revocation_ttl: Duration,

    /// How far in the future a token's `iat` or `nbf` may be (the clocks
    /// of the minting backend and this server may differ by this much);
    /// further ahead, the token is invalid. A revocation also refuses
    /// tokens issued up to this long after it.
    #[arg(long, env = "HRRT_CLOCK_SKEW", default_value = "5s", value_parser = clock_skew)]
    pub clock_skew: Duration,

    /// Idempotency keys remembered at most (each for 5 minutes); when the
    /// table is full a publish with a new key answers 429.
    #[arg(long, env = "HRRT_IDEMPOTENCY_KEYS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub idempotency_keys: u64,
}

/// Bytes an event's envelope adds to its payload at most: type (128),
/// channel (133), timestamp, seq and the JSON around them, rounded up.
pub const ENVELOPE_OVERHEAD: u64 = 1024;

/// A secret shorter than this starts with a warning: HS256 wants at least
/// the hash's 32 bytes of key (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// A configuration that parses but cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no JWT secret: set --jwt-secret or HRRT_JWT_SECRET, or use --dev")]
    MissingSecret,
    #[error(
        "the JWT secret is empty: every token signed with an empty key would pass; \
         set --jwt-secret or HRRT_JWT_SECRET to a long random value"
    )]
    EmptySecret,
    #[error(
        "--send-queue-bytes ({queue}) must be at least --max-message-bytes + {ENVELOPE_OVERHEAD} \
         ({needed}), or no event of the largest size could ever be sent"
    )]
    QueueSmallerThanMessage { queue: u64, needed: u64 },
}

impl Config {
    /// Defaults as the flags have them, with `secret`; for tests and embedding.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            jwt_secret: Some(secret.to_owned()),
            dev: false,
            new_secret: false,
            redis_url: None,
            redis_ca: None,
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
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            send_queue_bytes: 1 << 20,
            fanout_direct: FanoutDirect::Auto,
            revocation_ttl: Duration::from_secs(24 * 3600),
            idempotency_keys: 1_000_000,
            clock_skew: Duration::from_secs(5),
        }
    }

    /// Checks what the flags cannot check one by one: the secret is there
    /// and not empty, and the byte queue holds the largest event.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.jwt_secret.as_deref() {
            None => return Err(ConfigError::MissingSecret),
            Some("") => return Err(ConfigError::EmptySecret),
            Some(_) => {}
        }
        let needed = self.max_message_bytes.saturating_add(ENVELOPE_OVERHEAD);
        if self.send_queue_bytes < needed {
            return Err(ConfigError::QueueSmallerThanMessage {
                queue: self.send_queue_bytes,
                needed,
            });
        }
        Ok(())
    }

    /// Whether the secret is shorter than [`MIN_SECRET_BYTES`].
    pub fn secret_is_short(&self) -> bool {
        self.jwt_secret
            .as_deref()
            .is_some_and(|s| s.len() < MIN_SECRET_BYTES)
    }
}

pub use hrrt_protocol::duration::{MAX_DURATION, positive_duration};

/// The largest `--clock-skew`: a clock further off than this is broken,
/// and tolerating it would let a token outlive its revocation as long.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// `--clock-skew`: a duration from 0 up to [`MAX_CLOCK_SKEW`].
fn clock_skew(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected e.g. 0s, 500ms, 5s, 1m)"))?;
    if d > MAX_CLOCK_SKEW {
        return Err("must be at most 1h: fix the clock that is further off (NTP)".to_owned());
    }
    Ok(d)
}

/// `--listen`: an address, or a name resolved now (its IPv4 address when
/// it has one, as `localhost` has both).
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port: give host:port, e.g. {s}:8000"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "{port:?} is not a port (1-65535): give host:port, e.g. {host}:8000"
        ));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| {
            format!("cannot resolve {host:?} ({e}): give an IP address, e.g. 127.0.0.1:{port}")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| {
            format!("{host:?} resolves to no address: give an IP address, e.g. 127.0.0.1:{port}")
        })
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
    fn listen_takes_names() {
        assert_eq!(
            listen_addr("localhost:8000"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8000)))
        );
        assert_eq!(
            listen_addr("[::1]:0"),
            Ok(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)))
        );
        assert!(listen_addr("localhost").unwrap_err().contains("no port"));
        assert!(
            listen_addr("localhost:http")
                .unwrap_err()
                .contains("not a port")
        );
    }

    #[test]
    fn validation() {
        let mut c = Config::with_secret("s");
        assert_eq!(c.validate(), Ok(()));
        assert!(c.secret_is_short());
        c.jwt_secret = Some(String::new());
        assert_eq!(c.validate(), Err(ConfigError::EmptySecret));
        c.jwt_secret = None;
        assert_eq!(c.validate(), Err(ConfigError::MissingSecret));
        let mut c = Config::with_secret(&"x".repeat(32));
        assert!(!c.secret_is_short());
        c.send_queue_bytes = 65536;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::QueueSmallerThanMessage { .. })
        ));
    }
}
