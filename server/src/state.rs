//! [`AppState`]: what every handler, session and task of a running node
//! shares (config, verifier, engine, hub, metrics, shutdown tokens).

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::limit::PublishLimiter;
use crate::auth::{AuthError, Identity, Verifier};
use crate::config::{Config, ConfigError};
use crate::engine::memory::MemoryLimits;
use crate::engine::redis::RedisOptions;
use crate::engine::{Engine, MemoryEngine, NodeInfo, RedisEngine};
use crate::error::{ServerError, redact_url};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::tasks::Tasks;

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
