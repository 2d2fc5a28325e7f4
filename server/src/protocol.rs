//! The wire contract, from `hrrt-protocol`, and the bytes axum sends.
//!
//! Frames are encoded by the protocol crate (once per event) and handed to
//! every socket as the same `Utf8Bytes`, a reference-counted buffer: the
//! conversion from the encoded `String` takes it over without a copy.

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;

pub use hrrt_protocol::close;
pub use hrrt_protocol::cursor::parse_cursor;
pub use hrrt_protocol::frame::{
    ClientFrame, Connected, ErrorPayload, Refreshed, Resync, ResyncReason, error_code, kind,
};
pub use hrrt_protocol::ids::*;
pub use hrrt_protocol::time::{timestamp, unix_to_rfc3339};

use hrrt_protocol::frame;

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

/// The keep-alive frame. *compat*
pub fn ping_frame() -> Utf8Bytes {
    Utf8Bytes::from(frame::encode_ping())
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

/// Parses a client text frame; the error is the message of the `error` frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    ClientFrame::parse(text)
}
