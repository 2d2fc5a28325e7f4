//! hrrt-server: the realtime event server.
//!
//! Other services publish events over HTTP; the server numbers them per
//! channel, keeps a short history, and pushes them over WebSockets to every
//! connection that may see them, in order, resumable after a reconnect.
//!
//! # Layout
//!
//! - [`config`]: flags and env variables.
//! - [`app`]: shared state, the router, and [`run`], the entry point.
//! - [`auth`]: tokens, roles, verification.
//! - [`protocol`]: ids, channels, event types, frames, close codes.
//! - [`hub`]: the live connections of this node, by channel and user.
//! - [`outbox`]: a connection's way to its socket: an event written
//!   straight to an idle socket by the fan-out, else queued for the session.
//! - [`session`]: one WebSocket connection from handshake to close: the
//!   upgrade, reading the client, writing what the outbox queued.
//! - [`engine`]: sequence numbers, history and fan-out between nodes
//!   ([`engine::memory`] in one process).
//! - [`api`]: the HTTP endpoints; [`error`]: their JSON errors.
//! - [`listener`]: accepting and serving HTTP with timeouts and a bounded
//!   shutdown; [`tasks`]: the supervised background tasks.
//! - [`launch`]: what the binaries run: secrets, `--dev`, signals.
//! - [`fuzz`]: the entry points of the fuzz targets (`fuzz/`).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod fuzz;
pub mod hub;
pub mod launch;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod session;
mod sync;
pub mod tasks;

pub use app::{AppState, ServerError, router, run, serve};
pub use config::Config;

/// `bytes` random bytes as lowercase hex, for epochs, node ids and `--dev`
/// secrets. Falls back to the clock if the OS has no randomness to give,
/// since none of these must be secret except the `--dev` one, which checks.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
