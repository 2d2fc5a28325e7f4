//! The router and [`run`]: the one entry point used by `hrrt-server`,
//! `hrrt serve` and the tests. What they share is `state::AppState`.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::config::Config;
use crate::error::ApiError;
pub use crate::error::ServerError;
use crate::hub::CloseReason;
use crate::listener::HttpServer;
use crate::session;
pub use crate::state::AppState;
use crate::tasks;

/// How long the connections still open when the shutdown grace is over get
/// to notice they were cut, before `run` returns regardless.
const HARD_STOP_WAIT: Duration = Duration::from_secs(1);

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
