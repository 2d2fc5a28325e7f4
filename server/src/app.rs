//! Shared state, the router, and [`run`]: the one entry point used by
//! `hrrt-server`, `hrrt serve` and the tests.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::api::limit::PublishLimiter;
use crate::auth::{Verifier, unix_now};
use crate::config::Config;
use crate::engine::{Engine, MemoryEngine, RedisEngine};
use crate::error::ApiError;
use crate::hub::{CloseReason, Hub};
use crate::metrics::Metrics;
use crate::protocol;
use crate::session;

/// How long shutdown waits for sessions to send their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no JWT secret: set --jwt-secret or HRRT_JWT_SECRET, or use --dev")]
    MissingSecret,
    #[error("cannot use redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: crate::engine::EngineError,
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
    /// Tracks every session so shutdown can wait for their close frames.
    pub tracker: TaskTracker,
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
        let secret = config
            .jwt_secret
            .as_deref()
            .ok_or(ServerError::MissingSecret)?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let history_size = usize::try_from(config.history_size).unwrap_or(usize::MAX);
        let engine: Arc<dyn Engine> = match &config.redis_url {
            None => Arc::new(MemoryEngine::new(
                history_size,
                config.history_ttl,
                hub.clone(),
            )),
            Some(url) => Arc::new(
                RedisEngine::connect(url, history_size, config.history_ttl, hub.clone())
                    .await
                    .map_err(|source| ServerError::Redis {
                        url: redact_url(url),
                        source,
                    })?,
            ),
        };
        Ok(Self(Arc::new(Shared {
            verifier: Verifier::new(secret),
            engine,
            hub,
            metrics,
            publish_limiter: PublishLimiter::new(config.publish_rate),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            node_id: crate::random_hex(4),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            config,
        })))
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

/// A Redis URL without its password, for messages and logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// [`run`] with a state built by the caller, who may keep a clone of it
/// (tests use it to reach the hub).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    spawn_timers(&state);
    let token = state.shutdown.clone();
    let hub = state.hub.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => token.cancel(),
            () = token.cancelled() => {}
        }
        // Every live session closes with 1001; none may join any more.
        hub.close_all(&CloseReason::SHUTDOWN);
    };
    // Frames must leave at once: with Nagle's algorithm a small frame can
    // wait for the ACK of the previous one (tens of ms with delayed ACKs).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // axum's graceful shutdown does not wait for upgraded connections; the
    // tracker does (every session runs on it).
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(signal)
        .await;
    state.shutdown.cancel();
    state.hub.close_all(&CloseReason::SHUTDOWN);
    state.tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, state.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.tracker.len(),
            "shutdown grace elapsed with sessions left"
        );
    }
    served?;
    Ok(())
}

/// The keep-alive and token-expiry timers: one each for the whole node,
/// not one per connection.
fn spawn_timers(state: &AppState) {
    let s = state.clone();
    state.tracker.spawn(async move {
        let period = s.config.ping_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = s.shutdown.cancelled() => break,
                _ = tick.tick() => s.hub.ping_all(protocol::ping_frame()),
            }
        }
    });
    let s = state.clone();
    state.tracker.spawn(async move {
        let period = s.config.token_check_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = s.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let closed = s.hub.close_expired(unix_now());
                    if closed > 0 {
                        tracing::info!(closed, "closed connections with expired tokens");
                    }
                }
            }
        }
    });
}
