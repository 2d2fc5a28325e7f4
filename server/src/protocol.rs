//! The wire contract, from `hrrt-protocol`, and the bytes the session
//! writes.
//!
//! Frames are encoded by the protocol crate (once per event) as JSON text;
//! [`wire_text`] puts the WebSocket frame header in front of that text, once
//! per frame, and every socket the frame goes to is handed the same
//! reference-counted bytes. The session writes those bytes itself
//! (`session::socket`), so nothing frames an event again per recipient.

use bytes::Bytes;
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

pub use hrrt_protocol::close;
pub use hrrt_protocol::cursor::parse_cursor;
pub use hrrt_protocol::frame::{ClientFrame, Connected, Resync, ResyncReason, error_code};
pub use hrrt_protocol::ids::*;
pub use hrrt_protocol::time::{timestamp, unix_to_rfc3339};

use hrrt_protocol::{frame, ws};

/// Serialises a published event once; every recipient gets these bytes.
pub fn encode_event(
    event_type: &EventType,
    payload: &RawValue,
    channel: &ChannelName,
    seq: u64,
) -> Utf8Bytes {
    Utf8Bytes::from(frame::encode_event(event_type, payload, channel, seq))
}

pub use hrrt_protocol::frame::encode_event_prefix;

/// The keep-alive frame, framed for the wire (one per ping round, shared
/// by every connection). *compat*
pub fn ping_frame() -> Bytes {
    wire_text(frame::encode_ping().as_bytes())
}

pub fn connected_frame(connected: &Connected) -> Utf8Bytes {
    Utf8Bytes::from(frame::encode_connected(connected))
}

pub fn resync_frame(resync: &Resync) -> Utf8Bytes {
    Utf8Bytes::from(frame::encode_resync(resync))
}

/// `{"type":"error","payload":{"code":…,"message":…}}`; the connection stays open.
pub fn error_frame(code: &str, message: &str) -> Utf8Bytes {
    Utf8Bytes::from(frame::encode_error(code, message))
}

/// The answer to a successful `auth.refresh`.
pub fn refreshed_frame(exp: u64) -> Utf8Bytes {
    Utf8Bytes::from(frame::encode_refreshed(exp))
}

/// One unmasked WebSocket text frame holding `text` ([`ws::text_frame`]),
/// as shared bytes: the one copy of the text made per frame.
pub fn wire_text(text: &[u8]) -> Bytes {
    Bytes::from(ws::text_frame(text))
}

/// An event's frame both ways, in one buffer: the WebSocket frame, and its
/// JSON text (a slice of the frame, for history and the HTTP API).
pub fn wire_event(text: Utf8Bytes) -> (Bytes, Utf8Bytes) {
    let wire = wire_text(text.as_bytes());
    let start = wire.len() - text.len();
    // The slice is the text just copied, so it is UTF-8; the check costs
    // one pass over it, once per event, and keeps this free of `unsafe`.
    let shared = Utf8Bytes::try_from(wire.slice(start..)).unwrap_or(text);
    (wire, shared)
}

/// The WebSocket Ping frame the keep-alive sends after its JSON `ping`
/// (no payload; the client's Pong proves it alive). *compat*
pub const WIRE_PING: Bytes = Bytes::from_static(&ws::PING);

/// Parses a client text frame; the error is the message of the `error` frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    ClientFrame::parse(text)
}
