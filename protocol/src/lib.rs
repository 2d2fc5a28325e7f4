//! hrrt-protocol: the wire between the hrrt server and its clients, as
//! types, and nothing else. The server encodes with it; the CLI, the
//! dashboard and tests decode with it. It knows no server, no runtime and
//! no HTTP framework (no axum, no tokio): every crate of the workspace may
//! depend on it, and it depends on none of them.
//!
//! # Layout
//!
//! - [`ids`]: user and org ids, channel names, event types and their rules,
//!   payload checks.
//! - [`frame`]: [`ServerFrame`] (every frame the server sends, encoded
//!   *and* decoded) and [`ClientFrame`]; the server's one-pass encoders.
//! - [`close`]: close codes, the reasons the server gives, and the
//!   [`Advice`] each code carries for a client.
//! - [`cursor`]: resume cursors (`org:7@41,user:42@3`) and [`Cursor`], a
//!   client's position per channel.
//! - [`auth`]: token claims, roles, minting and verification (HS256).
//! - [`time`] and [`duration`]: timestamps on the wire, durations on
//!   command lines.
//! - [`ws`]: the WebSocket framing of what a server sends, encoded once per
//!   frame.
//! - [`api`]: the answers of the HTTP API (stats, nodes, history, publish
//!   acks, errors), which the server returns and clients read.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod auth;
pub mod close;
pub mod cursor;
pub mod duration;
pub mod frame;
pub mod ids;
pub mod time;
pub mod ws;

pub use auth::{AuthError, Claims, Identity, Role, Verifier, mint};
pub use close::{Advice, Close, CloseCode};
pub use cursor::{Cursor, parse_cursor};
pub use duration::positive_duration;
pub use frame::{
    ClientFrame, Connected, ErrorPayload, Event, Refreshed, Resync, ResyncReason, ServerFrame,
};
pub use ids::{ChannelKind, ChannelName, EventType, IdValue, OrgId, ProtocolError, UserId};
