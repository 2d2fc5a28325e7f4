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
    /// `redis://…` or `rediss://…`: one server.
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

/// The forms `--redis-url` takes, for error messages.
const URL_FORMS: &str = "redis://[user:password@]host:port[/db], rediss://… (TLS), or \
    redis+sentinel://[user:password@]host:26379,host:26379/master[/db]";

fn invalid(why: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("invalid --redis-url: {why} (use {URL_FORMS})"))
}

impl Target {
    /// Reads `--redis-url`; `ca` is `--redis-ca`'s PEM, trusted for TLS
    /// instead of the system's roots.
    pub(super) fn parse(url: &str, ca: Option<Vec<u8>>) -> Result<Self, EngineError> {
        use redis::IntoConnectionInfo;
        let tls = url.starts_with("rediss://") || url.starts_with("rediss+sentinel://");
        if ca.is_some() && !tls {
            return Err(invalid(
                "--redis-ca is for TLS: use rediss:// (or rediss+sentinel://)",
            ));
        }
        if let Some(sentinel) = SentinelUrl::parse(url)? {
            return sentinel
                .client(ca)
                .map(|c| Self::Sentinel(tokio::sync::Mutex::new(c)));
        }
        let info = url
            .into_connection_info()
            .map_err(|e| invalid(e.to_string().to_lowercase()))?
            .set_tcp_settings(tcp_settings());
        let client = match ca {
            Some(root_cert) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| invalid(describe(&e)))?;
        Ok(Self::Direct(client))
    }

    /// A client for the master, as it is now.
    pub(super) async fn client(&self) -> Result<redis::Client, EngineError> {
        match self {
            Self::Direct(client) => Ok(client.clone()),
            Self::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                call(sentinel.async_get_client())
                    .await
                    .map_err(|e| prefixed("asking the Sentinels for the master", e))
            }
        }
    }
}

/// `redis+sentinel://[user:password@]h1:26379,h2:26379/master[/db]
/// [?sentinel_username=…&sentinel_password=…]` (`rediss+sentinel://` for
/// TLS to the Sentinels and the master alike). The user and password are
/// the master's, and the Sentinels' too unless `sentinel_username` /
/// `sentinel_password` say otherwise (an empty one: none).
struct SentinelUrl {
    tls: bool,
    sentinels: Vec<(String, u16)>,
    master: String,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
}

impl SentinelUrl {
    fn parse(url: &str) -> Result<Option<Self>, EngineError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Ok(None);
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("give the master's name after the Sentinels: …/mymaster"))?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (non_empty(decode(user)?), non_empty(decode(password)?))
            }
        };
        let sentinels = hosts
            .split(',')
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let mut parts = path.trim_end_matches('/').splitn(2, '/');
        let master = decode(parts.next().unwrap_or_default())?;
        if master.is_empty() {
            return Err(invalid(
                "give the master's name after the Sentinels: …/mymaster",
            ));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse()
                .map_err(|_| invalid(format!("the database '{db}' is not a number")))?,
        };
        let mut url = Self {
            tls,
            sentinels,
            master,
            db,
            sentinel_username: username.clone(),
            sentinel_password: password.clone(),
            username,
            password,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = non_empty(decode(value)?);
            match key {
                "sentinel_username" => url.sentinel_username = value,
                "sentinel_password" => url.sentinel_password = value,
                other => {
                    return Err(invalid(format!(
                        "unknown parameter '{other}' (sentinel_username, sentinel_password)"
                    )));
                }
            }
        }
        Ok(Some(url))
    }

    fn client(self, ca: Option<Vec<u8>>) -> Result<redis::sentinel::SentinelClient, EngineError> {
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let addrs = self.sentinels.into_iter().map(|(host, port)| {
            if self.tls {
                redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                redis::ConnectionAddr::Tcp(host, port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)
                .map_err(|e| invalid(describe(&e)))?
                .set_client_to_redis_db(self.db)
                .set_client_to_redis_tcp_settings(tcp_settings())
                .set_client_to_sentinel_tcp_settings(tcp_settings());
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &self.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(ca) = ca {
                let certs = |ca: Vec<u8>| redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                };
                builder = builder
                    .set_client_to_redis_certificates(certs(ca.clone()))
                    .set_client_to_sentinel_certificates(certs(ca));
            }
        }
        builder.build().map_err(|e| invalid(describe(&e)))
    }
}

/// `host:port` (port 26379 if absent), IPv6 in brackets.
fn host_port(text: &str) -> Result<(String, u16), EngineError> {
    let bad = || invalid(format!("'{text}' is not a Sentinel's host:port"));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => 26379,
        Some(port) => port.parse().map_err(|_| bad())?,
    };
    Ok((host.to_owned(), port))
}

fn decode(text: &str) -> Result<String, EngineError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid("a percent-encoded part is not UTF-8"))
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// What a call that got no answer in time says.
const NO_ANSWER: &str = "no answer in time: check the host and port, and that the port \
    speaks TLS if the URL is rediss:// (plain Redis takes redis://)";

/// A Redis error as one line an operator can act on: what went wrong and
/// what to change. Passwords are never part of it.
pub(super) fn describe(e: &redis::RedisError) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if e.code() == Some("WRONGPASS")
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || has("wrongpass")
        || has("invalid password")
    {
        "the user or password was refused (WRONGPASS): check them in --redis-url \
         (redis://user:password@host:port/)"
            .to_owned()
    } else if e.code() == Some("NOAUTH") || has("noauth") || has("authentication required") {
        "Redis asks for a password (NOAUTH): give it in --redis-url (redis://:password@host:port/)"
            .to_owned()
    } else if has("without any password configured") {
        "a password was given but this Redis has none: drop it from --redis-url".to_owned()
    } else if has("certificate") || has("unknownissuer") || has("unknown issuer") {
        format!(
            "Redis's TLS certificate is not trusted ({}): give the CA that signed it with \
             --redis-ca FILE",
            first_line(&text)
        )
    } else if has("corrupt message") || has("invalidcontenttype") || has("wrong version number") {
        "the server does not speak TLS on that port: use redis:// rather than rediss://".to_owned()
    } else if e.is_timeout() || has("timed out") {
        NO_ANSWER.to_owned()
    } else if e.is_connection_refusal() || has("connection refused") {
        format!("nothing answers there ({})", first_line(&text))
    } else if e.is_connection_dropped() || has("unexpected end of file") || has("broken pipe") {
        format!(
            "the server closed the connection ({}); if that port speaks TLS, use rediss://",
            first_line(&text)
        )
    } else {
        first_line(&text).to_owned()
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// An engine error for `e`, saying what was being done.
pub(super) fn prefixed(what: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Unavailable(why) => {
            EngineError::Unavailable(format!("{what}: {}", why.trim_start_matches("redis: ")))
        }
        other => other,
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
    // One plain connection first: the manager retries what fails (a
    // refused password, an untrusted certificate) until the call's time
    // is up and then says only that; this says why, at once.
    call(client.get_multiplexed_async_connection()).await?;
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
        Ok(Err(e)) => Err(unavailable(describe(&e))),
        Err(_) => Err(unavailable(NO_ANSWER)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_carry_credentials_to_the_master_and_the_sentinels() {
        let url = SentinelUrl::parse("redis+sentinel://app:p%40ss@h1:1,[::1]:2,h3/mymaster/3")
            .unwrap()
            .unwrap();
        assert_eq!(
            url.sentinels,
            [
                ("h1".to_owned(), 1),
                ("::1".to_owned(), 2),
                ("h3".to_owned(), 26379)
            ]
        );
        assert_eq!(
            (url.master.as_str(), url.db, url.tls),
            ("mymaster", 3, false)
        );
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.sentinel_password.as_deref(), Some("p@ss"));
        let url =
            SentinelUrl::parse("rediss+sentinel://:m@h1/m?sentinel_password=s&sentinel_username=")
                .unwrap()
                .unwrap();
        assert!(url.tls);
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some("m"));
        assert_eq!(url.sentinel_password.as_deref(), Some("s"));
        assert_eq!(url.sentinel_username, None);
        assert!(SentinelUrl::parse("redis://h/").unwrap().is_none());
    }

    #[test]
    fn bad_urls_are_one_line_naming_the_forms() {
        for bad in [
            "redis+sentinel://h1:1",
            "redis+sentinel://h1:1/",
            "redis+sentinel://h1:x/m",
            "redis+sentinel://h1/m/notadb",
            "redis+sentinel://h1/m?password=x",
            "redis+sentinel://,/m",
            "redis+sentinel://h1/m%ff",
            "http://h/",
            "redis://h:99999/",
        ] {
            let e = match Target::parse(bad, None) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{bad} was taken"),
            };
            assert!(e.contains("--redis-url") && !e.contains('\n'), "{bad}: {e}");
        }
        let e = Target::parse("redis://h/", Some(b"pem".to_vec()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("rediss://"), "{e}");
    }
}
