//! hrrt-server: the realtime event server.
//!
//! Other services publish events over HTTP; the server numbers them per
//! channel, keeps a short history, and pushes them over WebSockets to every
//! connection that may see them, in order, resumable after a reconnect.
//!
//! # Its face
//!
//! - [`run`] / [`serve`]: the server on a listener until a shutdown
//!   future resolves; [`Config`]: its flags; [`AppState`]: what a running
//!   server holds, for tests that look inside.
//! - [`launch`]: what the binaries run: secrets, `--dev`, signals.
//! - [`auth`]: tokens, roles, verification (clients mint with it).
//! - [`engine`]: the `Engine` trait and its two engines, for the engines'
//!   conformance tests.
//! - [`fuzz`]: the entry points of the fuzz targets (`fuzz/`).
//!
//! Inside (docs/architecture.md): `config`, `app`, `hub`, `outbox`,
//! `session`, `api`, `listener`, `tasks`, `metrics`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod app;
pub mod auth;
mod config;
pub mod engine;
mod error;
pub mod fuzz;
mod hub;
pub mod launch;
mod listener;
mod metrics;
mod outbox;
mod protocol;
mod session;
mod state;
mod sync;
mod tasks;

pub use app::{AppState, ServerError, router, run, serve};
pub use config::{Config, FanoutDirect};
pub use hub::CloseReason;

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
