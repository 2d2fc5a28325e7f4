//! The `hrrt` toolkit as a library, so its commands and client can be
//! tested in-process; `main.rs` only parses and maps the exit code.
//!
//! # Layout
//!
//! - [`args`]: the command line (global flags and subcommands).
//! - [`client`]: the one client of the server: target URLs, tokens, the
//!   resume cursor, the WebSocket handshake, the HTTP API.
//! - [`commands`]: one module per subcommand.
//! - [`exit`]: exit codes (0 ok, 1 the thing asked about failed, 2 usage or
//!   connection error).
//! - [`output`]: results to stdout, diagnostics to stderr, colour rules.

pub mod args;
pub mod client;
pub mod commands;
pub mod exit;
pub mod interrupt;
pub mod output;

/// `bytes` random bytes as lowercase hex (run ids, throwaway secrets).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: the clock still tells runs apart.
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
