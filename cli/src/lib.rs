//! The `hrrt` toolkit as a library, so its commands and client can be
//! tested in-process; `main.rs` only parses and maps the exit code.
//!
//! # Layout
//!
//! - [`args`]: the command line (global flags and subcommands).
//! - [`client`]: the one client of the server: target URLs, tokens, the
//!   resume cursor, the WebSocket handshake, the HTTP API.
//! - [`commands`]: one module per subcommand.
//! - [`output`]: results to stdout, diagnostics to stderr, colour rules.

pub mod args;
pub mod client;
pub mod commands;
pub mod interrupt;
pub mod output;
