//! The wire contract, from `hrrt-protocol`, and the bytes the server sends.
//!
//! Frames are encoded by the protocol crate (once per event) and framed as
//! a WebSocket text frame right away: every socket is handed the same
//! [`Frame`], a reference-counted buffer holding the frame header and the
//! JSON, which goes to the kernel as it is (no per-recipient framing).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

pub use hrrt_protocol::close;
pub use hrrt_protocol::cursor::parse_cursor;
pub use hrrt_protocol::frame::{
    ClientFrame, Connected, ErrorPayload, Refreshed, Resync, ResyncReason, error_code, kind,
};
pub use hrrt_protocol::ids::*;
pub use hrrt_protocol::time::{timestamp, unix_to_rfc3339};

use hrrt_protocol::frame;

/// A server-to-client WebSocket text frame, encoded once: the header
/// (FIN + text opcode, unmasked length) followed by the JSON text. Clones
/// share the buffer.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    wire: Bytes,
    /// Bytes of `wire` before the text.
    header: u8,
}

impl Frame {
    /// Frames `text` as one WebSocket text frame (RFC 6455 §5.2).
    pub fn text(text: &str) -> Self {
        let len = text.len();
        let mut wire = BytesMut::with_capacity(len + 10);
        wire.put_u8(0x81);
        let header = if len < 126 {
            wire.put_u8(len as u8);
            2
        } else if let Ok(short) = u16::try_from(len) {
            wire.put_u8(126);
            wire.put_u16(short);
            4
        } else {
            wire.put_u8(127);
            wire.put_u64(len as u64);
            10
        };
        wire.put_slice(text.as_bytes());
        Self {
            wire: wire.freeze(),
            header,
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Built from a `&str` only, so always valid.
        std::str::from_utf8(
            self.wire
                .get(usize::from(self.header)..)
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    }

    /// Length of the JSON text (what the queue bounds count).
    pub fn len(&self) -> usize {
        self.wire.len() - usize::from(self.header)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole frame as it goes on the socket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self::text(&text)
    }
}

/// Serialises a published event once; every recipient gets these bytes.
pub fn encode_event(
    event_type: &EventType,
    payload: &RawValue,
    channel: &ChannelName,
    seq: u64,
) -> Frame {
    Frame::from(frame::encode_event(event_type, payload, channel, seq))
}

pub use hrrt_protocol::frame::encode_event_prefix;

/// The keep-alive frame. *compat*
pub fn ping_frame() -> Frame {
    Frame::from(frame::encode_ping())
}

pub fn connected_frame(connected: &Connected) -> Frame {
    Frame::from(frame::encode_connected(connected))
}

pub fn resync_frame(resync: &Resync) -> Frame {
    Frame::from(frame::encode_resync(resync))
}

/// `{"type":"error","payload":{"code":…,"message":…}}`; the connection stays open.
pub fn error_frame(code: &str, message: &str) -> Frame {
    Frame::from(frame::encode_error(code, message))
}

/// The answer to a successful `auth.refresh`.
pub fn refreshed_frame(exp: u64) -> Frame {
    Frame::from(frame::encode_refreshed(exp))
}

/// Parses a client text frame; the error is the message of the `error` frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    ClientFrame::parse(text)
}

#[cfg(test)]
mod tests {
    use super::Frame;

    #[test]
    fn frames_each_length_class_as_tungstenite_reads_it() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let text = "x".repeat(len);
            let frame = Frame::text(&text);
            assert_eq!(frame.as_str(), text);
            assert_eq!(frame.len(), len);
            let mut ctx = tungstenite::protocol::WebSocketContext::new(
                tungstenite::protocol::Role::Client,
                None,
            );
            let mut stream = std::io::Cursor::new(frame.wire().to_vec());
            struct Rw<'a>(&'a mut std::io::Cursor<Vec<u8>>);
            impl std::io::Read for Rw<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    self.0.read(buf)
                }
            }
            impl std::io::Write for Rw<'_> {
                fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                    Ok(buf.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            let message = ctx.read(&mut Rw(&mut stream)).unwrap();
            assert_eq!(message, tungstenite::Message::text(text));
        }
    }
}
