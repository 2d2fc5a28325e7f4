//! hrrt-tui: the live terminal dashboard that `hrrt dash` opens.
//!
//! The dashboard never talks to the server itself: `hrrt dash` runs the
//! feed (an admin WebSocket watching orgs, and `GET /api/stats` once a
//! second) and hands what it learns over a channel as [`Feed`] messages.
//! That keeps this crate free of network code and its state testable as
//! plain Rust.
//!
//! # Layout
//!
//! - [`app`]: [`App`], every piece of state, and `App::update(Action)`;
//!   no I/O, no terminal.
//! - [`event`]: the loop: terminal keys, the feed, and a frame-rate tick;
//!   draws at most [`event::FPS`] times a second however fast events come.
//! - [`ui`]: `impl Widget for &App`: header, orgs, types and rate, stream,
//!   footer, popups.
//! - [`theme`]: every style.

pub mod app;
pub mod event;
pub mod theme;
pub mod ui;

pub use app::{Action, App, Feed, Key, NodeSnapshot, ServerStatus, StatsSnapshot, glob_matches};
pub use event::run;
pub use ui::screen;
