//! Shared state, the router, and [`run`]: the one entry point used by
//! `hrrt-server`, `hrrt serve` and the tests.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::api::limit::PublishLimiter;
use crate::auth::{AuthError, Identity, Verifier};
use crate::config::{Config, ConfigError};
use crate::engine::memory::MemoryLimits;
use crate::engine::redis::RedisOptions;
use crate::engine::{Engine, MemoryEngine, NodeInfo, RedisEngine};
use crate::error::ApiError;
use crate::hub::{CloseReason, Hub};
use crate::listener::HttpServer;
use crate::metrics::Metrics;
use crate::session;
use crate::tasks::{self, Tasks};

/// How long the connections still open when the shutdown grace is over get
/// to notice they were cut, before `run` returns regardless.
const HARD_STOP_WAIT: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use Redis at {url}: {reason}")]
    Redis { url: String, reason: String },
    #[error("cannot read --redis-ca {path}: {source}")]
    RedisCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler or session needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub verifier: Verifier,
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub publish_limiter: PublishLimiter,
    /// Cancelled once to shut down; every session and timer watches it.
    pub shutdown: CancellationToken,
    /// Cancelled when `--shutdown-grace` is over: whatever is still open
    /// (a session, an HTTP request) is dropped.
    pub hard_stop: CancellationToken,
    /// Tracks every session so shutdown can wait for their close frames.
    pub tracker: TaskTracker,
    /// Which background tasks run (`/readyz`).
    pub tasks: Tasks,
    /// Names this process in connection ids and stats.
    pub node_id: String,
    pub next_conn: AtomicU64,
    pub started: Instant,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Builds the state and its engine from a config: the memory engine,
    /// or the Redis engine (connected here) with `--redis-url`.
    pub async fn new(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let secret = config
            .jwt_secret
            .as_deref()
            .ok_or(ConfigError::MissingSecret)?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        hub.allow_direct(config.fanout_direct == crate::config::FanoutDirect::Auto);
        let history_size = usize::try_from(config.history_size).unwrap_or(usize::MAX);
        let node_id = crate::random_hex(4);
        let idempotency_keys = usize::try_from(config.idempotency_keys).unwrap_or(usize::MAX);
        let ca = match &config.redis_ca {
            Some(path) => Some(std::fs::read(path).map_err(|source| ServerError::RedisCa {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let engine: Arc<dyn Engine> = match &config.redis_url {
            None => Arc::new(MemoryEngine::new(
                MemoryLimits {
                    history_size,
                    history_ttl: config.history_ttl,
                    idempotency_keys,
                },
                hub.clone(),
            )),
            Some(url) => Arc::new(
                RedisEngine::connect(
                    RedisOptions {
                        url,
                        ca: ca.as_deref(),
                        node_id: &node_id,
                        history_size,
                        history_ttl: config.history_ttl,
                        idempotency_keys,
                    },
                    hub.clone(),
                )
                .await
                .map_err(|source| ServerError::Redis {
                    url: redact_url(url),
                    reason: source.reason(),
                })?,
            ),
        };
        Ok(Self(Arc::new(Shared {
            verifier: Verifier::new(secret).with_clock_skew(config.clock_skew),
            engine,
            hub,
            metrics,
            publish_limiter: PublishLimiter::new(config.publish_rate),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            tasks: Tasks::default(),
            node_id,
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            config,
        })))
    }

    /// Verifies a token and checks it was not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let identity = self.verifier.verify(token)?;
        self.check_revocation(&identity)?;
        Ok(identity)
    }

    /// Refuses an identity whose token was issued at or before its user's
    /// revocation (a token without `iat` counts as issued before).
    pub fn check_revocation(&self, identity: &Identity) -> Result<(), AuthError> {
        match self.engine.revoked_at(&identity.user) {
            Some(at) if identity.iat.is_none_or(|iat| iat <= at) => Err(AuthError::Revoked),
            _ => Ok(()),
        }
    }

    /// This node as `GET /api/nodes` lists it.
    pub fn node_info(&self) -> NodeInfo {
        let users = self.hub.users();
        NodeInfo {
            node_id: self.node_id.clone(),
            engine: self.engine.kind().to_owned(),
            connections: self.hub.len(),
            users,
            uptime_s: self.started.elapsed().as_secs(),
            last_seen: crate::protocol::timestamp(SystemTime::now()),
            delivered_total: self.metrics.by_type().values().map(|c| c.delivered).sum(),
        }
    }
}

/// The HTTP and WebSocket routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(session::handler))
        .route("/api/events", post(api::publish::publish))
        .route("/api/history", get(api::history::history))
        .route("/api/stats", get(api::stats::stats))
        .route("/api/disconnect", post(api::disconnect::disconnect))
        .route("/api/nodes", get(api::nodes::nodes))
        .route("/api/openapi.json", get(api::openapi::openapi))
        .route("/metrics", get(api::metrics::metrics))
        .route("/healthz", get(api::health::healthz))
        .route("/readyz", get(api::health::readyz))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves, then closes every
/// connection with 1001 and returns once they are closed (or after a few
/// seconds).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve(listener, AppState::new(config).await?, shutdown).await
}

/// A Redis URL without its credentials (the user info, and the query's
/// `sentinel_password`), for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (url, query) = url.split_once('?').unwrap_or((url, ""));
    let base = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    if query.is_empty() {
        return base;
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.contains("password") => format!("{key}=…"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// [`run`] with a state built by the caller, who may keep a clone of it
/// (tests use it to reach the hub).
///
/// Shutdown, once `shutdown` resolves: stop accepting; close every
/// WebSocket with 1001; ask every HTTP connection to finish its request;
/// wait at most `--shutdown-grace` for all of that; then drop whatever is
/// left (a stalled request, a client that never answers the close) and
/// return.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    tasks::spawn_all(&state);
    let http = HttpServer {
        router: router(state.clone()),
        header_timeout: state.config.handshake_timeout,
        write_timeout: state.config.write_timeout,
        metrics: state.metrics.clone(),
        graceful: state.shutdown.clone(),
        hard_stop: state.hard_stop.clone(),
        connections: TaskTracker::new(),
    };
    let signal = async {
        tokio::select! {
            () = shutdown => state.shutdown.cancel(),
            () = state.shutdown.cancelled() => {}
        }
        // Every live session closes with 1001; none may join any more.
        state.hub.close_all(&CloseReason::SHUTDOWN);
    };
    tokio::join!(http.accept_loop(listener), signal);

    http.connections.close();
    state.tracker.close();
    let everything = async {
        tokio::join!(http.connections.wait(), state.tracker.wait());
    };
    if tokio::time::timeout(state.config.shutdown_grace, everything)
        .await
        .is_err()
    {
        tracing::warn!(
            http = http.connections.len(),
            sessions = state.tracker.len(),
            "shutdown grace elapsed; closing what is left"
        );
        state.hard_stop.cancel();
        let _ = tokio::time::timeout(HARD_STOP_WAIT, async {
            tokio::join!(http.connections.wait(), state.tracker.wait());
        })
        .await;
    }
    state.hard_stop.cancel();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://…@h:1/0");
        assert_eq!(
            redact_url("redis+sentinel://:pw@h1,h2/m?sentinel_password=x&a=b"),
            "redis+sentinel://…@h1,h2/m?sentinel_password=…&a=b"
        );
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
    }
}
