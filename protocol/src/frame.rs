//! The frames: what the server sends (one JSON object per text frame, the
//! envelope `{"type","payload","timestamp"[,"channel","seq"]}`) and what a
//! client may send.
//!
//! [`ServerFrame`] encodes and decodes every frame the server sends; the
//! server's own encoders ([`encode_event`] and the functions beside it)
//! are the same code on borrowed data, so an event is serialised once and
//! its bytes shared by every recipient.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ChannelName, EventType, OrgId, UserId, truncate};
use crate::time::{timestamp, unix_to_rfc3339};

/// The `type` of the frames that are not events. *compat* for `connected`
/// and `ping`.
pub mod kind {
    pub const CONNECTED: &str = "connected";
    pub const PING: &str = "ping";
    pub const PONG: &str = "pong";
    pub const RESYNC: &str = "resync.required";
    pub const ERROR: &str = "error";
    pub const AUTH_REFRESH: &str = "auth.refresh";
    pub const AUTH_REFRESHED: &str = "auth.refreshed";
}

/// Codes of the `error` frame the server sends for a bad client frame.
pub mod error_code {
    /// The frame was not JSON, not an object, or had an unknown `type`.
    pub const BAD_MESSAGE: &str = "bad_message";
}

#[derive(Serialize)]
struct Envelope<'a, P: Serialize + ?Sized> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: &'a P,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

fn encode<P: Serialize + ?Sized>(
    kind: &str,
    payload: &P,
    at: &str,
    channel: Option<&str>,
    seq: Option<u64>,
) -> String {
    let envelope = Envelope {
        kind,
        payload,
        timestamp: at,
        channel,
        seq,
    };
    // Serialising plain structs, strings and already-valid raw JSON cannot
    // fail; the fallback keeps the wire well-formed regardless.
    serde_json::to_string(&envelope).unwrap_or_else(|_| {
        format!(
            r#"{{"type":"error","payload":{{"code":"internal","message":"encoding failed"}},"timestamp":"{at}"}}"#
        )
    })
}

fn now() -> String {
    timestamp(SystemTime::now())
}

/// Serialises a published event, stamped now; every recipient gets these
/// bytes.
pub fn encode_event(
    event_type: &EventType,
    payload: &RawValue,
    channel: &ChannelName,
    seq: u64,
) -> String {
    encode(
        event_type.as_str(),
        payload,
        &now(),
        Some(channel.as_str()),
        Some(seq),
    )
}

/// The event envelope up to and including `"seq":`, for an engine that
/// assigns the seq elsewhere (the Redis engine, inside Redis): the frame is
/// this prefix, the seq, and `}`.
pub fn encode_event_prefix(
    event_type: &EventType,
    payload: &RawValue,
    channel: &ChannelName,
) -> String {
    let mut text = encode(
        event_type.as_str(),
        payload,
        &now(),
        Some(channel.as_str()),
        None,
    );
    text.pop();
    text.push_str(",\"seq\":");
    text
}

/// `{"type":"ping","payload":{},"timestamp":…}`, stamped now. *compat*
pub fn encode_ping() -> String {
    encode(kind::PING, &serde_json::Map::new(), &now(), None, None)
}

/// The `connected` frame, stamped now.
pub fn encode_connected(connected: &Connected) -> String {
    encode(kind::CONNECTED, connected, &now(), None, None)
}

/// A `resync.required` frame, stamped now.
pub fn encode_resync(resync: &Resync) -> String {
    encode(kind::RESYNC, resync, &now(), None, None)
}

/// An `error` frame, stamped now; the connection stays open.
pub fn encode_error(code: &str, message: &str) -> String {
    let payload = ErrorPayload {
        code: code.to_owned(),
        message: message.to_owned(),
    };
    encode(kind::ERROR, &payload, &now(), None, None)
}

/// The answer to a successful `auth.refresh`, stamped now.
pub fn encode_refreshed(exp: u64) -> String {
    let payload = Refreshed {
        expires_at: unix_to_rfc3339(exp),
    };
    encode(kind::AUTH_REFRESHED, &payload, &now(), None, None)
}

/// The payload of `connected`, the first frame of every session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    pub connection_id: String,
    pub user_id: UserId,
    pub org_id: OrgId,
    /// When the connection's token expires (RFC 3339).
    pub expires_at: String,
    /// The life of the history the positions belong to.
    pub epoch: String,
    /// The latest seq of each channel the connection reads (0 when empty).
    pub positions: BTreeMap<String, u64>,
}

/// Why the server could not replay a channel from the requested position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResyncReason {
    /// The history no longer holds the events after `requested`.
    HistoryTrimmed,
    /// The history was reset (new epoch); sequence numbers restarted.
    EpochChanged,
    /// `requested` is beyond the channel's latest seq: the cursor does not
    /// belong to this history.
    PositionAhead,
}

impl ResyncReason {
    /// The wire name (`history_trimmed`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HistoryTrimmed => "history_trimmed",
            Self::EpochChanged => "epoch_changed",
            Self::PositionAhead => "position_ahead",
        }
    }
}

/// The payload of `resync.required`: the client must refetch the state of
/// `channel`; what follows continues from `oldest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resync {
    pub channel: ChannelName,
    pub requested: u64,
    pub oldest: u64,
    pub reason: ResyncReason,
    /// The current epoch, for `epoch_changed`: the client adopts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The payload of `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: String,
    pub message: String,
}

/// The payload of `auth.refreshed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    /// The new expiry (RFC 3339).
    pub expires_at: String,
}

/// A published event as a connection receives it.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: EventType,
    /// The publisher's payload, byte for byte.
    pub payload: Box<RawValue>,
    pub timestamp: String,
    pub channel: ChannelName,
    pub seq: u64,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.event_type == other.event_type
            && self.payload.get() == other.payload.get()
            && self.timestamp == other.timestamp
            && self.channel == other.channel
            && self.seq == other.seq
    }
}

impl Event {
    /// The payload as a JSON value.
    pub fn payload_value(&self) -> serde_json::Value {
        serde_json::from_str(self.payload.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    Connected {
        payload: Connected,
        timestamp: String,
    },
    /// The keep-alive (a WebSocket Ping follows it). *compat*
    Ping {
        timestamp: String,
    },
    Resync {
        payload: Resync,
        timestamp: String,
    },
    /// A client frame was refused; the connection stays open.
    Error {
        payload: ErrorPayload,
        timestamp: String,
    },
    /// The answer to `auth.refresh`.
    Refreshed {
        payload: Refreshed,
        timestamp: String,
    },
    Event(Event),
}

/// Why a text frame is not a [`ServerFrame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an hrrt frame: {0}")]
pub struct DecodeError(String);

impl ServerFrame {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        serde_json::from_str(text).map_err(|e| DecodeError(e.to_string()))
    }

    /// Encodes the frame exactly as the server sends it.
    pub fn encode(&self) -> String {
        match self {
            Self::Connected { payload, timestamp } => {
                encode(kind::CONNECTED, payload, timestamp, None, None)
            }
            Self::Ping { timestamp } => {
                encode(kind::PING, &serde_json::Map::new(), timestamp, None, None)
            }
            Self::Resync { payload, timestamp } => {
                encode(kind::RESYNC, payload, timestamp, None, None)
            }
            Self::Error { payload, timestamp } => {
                encode(kind::ERROR, payload, timestamp, None, None)
            }
            Self::Refreshed { payload, timestamp } => {
                encode(kind::AUTH_REFRESHED, payload, timestamp, None, None)
            }
            Self::Event(e) => encode(
                e.event_type.as_str(),
                &*e.payload,
                &e.timestamp,
                Some(e.channel.as_str()),
                Some(e.seq),
            ),
        }
    }

    /// The frame's `type`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Connected { .. } => kind::CONNECTED,
            Self::Ping { .. } => kind::PING,
            Self::Resync { .. } => kind::RESYNC,
            Self::Error { .. } => kind::ERROR,
            Self::Refreshed { .. } => kind::AUTH_REFRESHED,
            Self::Event(e) => e.event_type.as_str(),
        }
    }
}

impl Serialize for ServerFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.encode();
        let raw = RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    payload: Box<RawValue>,
    timestamp: String,
    channel: Option<ChannelName>,
    seq: Option<u64>,
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = RawEnvelope::deserialize(d)?;
        let timestamp = raw.timestamp;
        Ok(match &*raw.kind {
            kind::CONNECTED => Self::Connected {
                payload: serde_json::from_str(raw.payload.get()).map_err(D::Error::custom)?,
                timestamp,
            },
            kind::PING => Self::Ping { timestamp },
            kind::RESYNC => Self::Resync {
                payload: serde_json::from_str(raw.payload.get()).map_err(D::Error::custom)?,
                timestamp,
            },
            kind::ERROR => Self::Error {
                payload: serde_json::from_str(raw.payload.get()).map_err(D::Error::custom)?,
                timestamp,
            },
            kind::AUTH_REFRESHED => Self::Refreshed {
                payload: serde_json::from_str(raw.payload.get()).map_err(D::Error::custom)?,
                timestamp,
            },
            other => {
                let event_type = EventType::parse(other).map_err(D::Error::custom)?;
                let (Some(channel), Some(seq)) = (raw.channel, raw.seq) else {
                    return Err(D::Error::custom(format!(
                        "event '{}' without channel and seq",
                        truncate(other)
                    )));
                };
                Self::Event(Event {
                    event_type,
                    payload: raw.payload,
                    timestamp,
                    channel,
                    seq,
                })
            }
        })
    }
}

/// A frame a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Extend the session with a new token (same sub, org and role).
    AuthRefresh {
        token: String,
    },
    /// Application-level keep-alive from clients that cannot answer
    /// WebSocket Pings themselves; treated like a Pong.
    Ping,
    Pong,
}

#[derive(Deserialize)]
struct RawClientFrame {
    #[serde(rename = "type")]
    kind: String,
    token: Option<String>,
}

impl ClientFrame {
    /// Parses a client text frame; the error is the message of the server's
    /// `error` frame.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawClientFrame = serde_json::from_str(text)
            .map_err(|e| format!("not a JSON object with a \"type\": {e}"))?;
        match raw.kind.as_str() {
            kind::AUTH_REFRESH => match raw.token {
                Some(token) => Ok(Self::AuthRefresh { token }),
                None => Err("auth.refresh needs a \"token\"".to_owned()),
            },
            kind::PING => Ok(Self::Ping),
            kind::PONG => Ok(Self::Pong),
            other => Err(format!(
                "unknown message type '{}'; clients may send auth.refresh",
                truncate(other)
            )),
        }
    }

    /// The frame as a client sends it.
    pub fn encode(&self) -> String {
        let value = match self {
            Self::AuthRefresh { token } => {
                serde_json::json!({"type": kind::AUTH_REFRESH, "token": token})
            }
            Self::Ping => serde_json::json!({"type": kind::PING}),
            Self::Pong => serde_json::json!({"type": kind::PONG}),
        };
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn every_frame() -> Vec<ServerFrame> {
        let at = "2026-01-01T12:00:00.000000Z".to_owned();
        let channel = ChannelName::parse("org:7").unwrap();
        vec![
            ServerFrame::Connected {
                payload: Connected {
                    connection_id: "n-1".into(),
                    user_id: UserId::new("42").unwrap(),
                    org_id: OrgId::new("7").unwrap(),
                    expires_at: "2026-01-01T13:00:00Z".into(),
                    epoch: "e1".into(),
                    positions: [("org:7".to_owned(), 41), ("user:42".to_owned(), 0)].into(),
                },
                timestamp: at.clone(),
            },
            ServerFrame::Ping {
                timestamp: at.clone(),
            },
            ServerFrame::Resync {
                payload: Resync {
                    channel: channel.clone(),
                    requested: 41,
                    oldest: 300,
                    reason: ResyncReason::HistoryTrimmed,
                    epoch: None,
                },
                timestamp: at.clone(),
            },
            ServerFrame::Resync {
                payload: Resync {
                    channel: channel.clone(),
                    requested: 41,
                    oldest: 1,
                    reason: ResyncReason::EpochChanged,
                    epoch: Some("e2".into()),
                },
                timestamp: at.clone(),
            },
            ServerFrame::Error {
                payload: ErrorPayload {
                    code: error_code::BAD_MESSAGE.into(),
                    message: "nope".into(),
                },
                timestamp: at.clone(),
            },
            ServerFrame::Refreshed {
                payload: Refreshed {
                    expires_at: "2026-01-01T14:00:00Z".into(),
                },
                timestamp: at.clone(),
            },
            ServerFrame::Event(Event {
                event_type: EventType::parse("entity.created").unwrap(),
                payload: raw(r#"{"id":1,"name":"Ann","z":[1,2]}"#),
                timestamp: at,
                channel,
                seq: 42,
            }),
        ]
    }

    #[test]
    fn resync_reasons_are_named_as_on_the_wire() {
        for reason in [
            ResyncReason::HistoryTrimmed,
            ResyncReason::EpochChanged,
            ResyncReason::PositionAhead,
        ] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::Value::from(reason.as_str())
            );
        }
    }

    #[test]
    fn every_server_frame_decodes_to_the_same_value() {
        for frame in every_frame() {
            let text = frame.encode();
            assert_eq!(ServerFrame::decode(&text), Ok(frame.clone()), "{text}");
            // Through serde too.
            let via_serde = serde_json::to_string(&frame).unwrap();
            assert_eq!(via_serde, text);
        }
    }

    #[test]
    fn the_servers_encoders_write_what_decodes() {
        let channel = ChannelName::parse("user:42").unwrap();
        let event_type = EventType::parse("share.created").unwrap();
        let text = encode_event(&event_type, &raw(r#"{"b":2,"a":1}"#), &channel, 3);
        let ServerFrame::Event(e) = ServerFrame::decode(&text).unwrap() else {
            panic!("{text}");
        };
        assert_eq!(
            (e.channel, e.seq, e.payload.get()),
            (channel, 3, r#"{"b":2,"a":1}"#)
        );
        // The encoded form of the decoded frame is the very same bytes.
        let again = ServerFrame::decode(&text).unwrap().encode();
        assert_eq!(again, text);
        for text in [
            encode_ping(),
            encode_error("bad_message", "x"),
            encode_refreshed(u64::MAX),
        ] {
            assert_eq!(ServerFrame::decode(&text).unwrap().encode(), text);
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        for text in [
            "",
            "[]",
            r#"{"type":"connected","payload":{},"timestamp":"t"}"#,
            r#"{"type":"entity.created","payload":{},"timestamp":"t"}"#,
            r#"{"type":"system.x","payload":{},"timestamp":"t","channel":"org:1","seq":1}"#,
        ] {
            assert!(ServerFrame::decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn event_envelope_fields() {
        let payload = RawValue::from_string(r#"{"id":1}"#.to_owned()).unwrap();
        let frame = encode_event(
            &EventType::parse("entity.created").unwrap(),
            &payload,
            &ChannelName::parse("org:7").unwrap(),
            42,
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "entity.created");
        assert_eq!(v["payload"]["id"], 1);
        assert_eq!(v["channel"], "org:7");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["timestamp"].as_str().unwrap().len(), 27);
    }

    #[test]
    fn prefix_plus_seq_is_the_frame() {
        let payload = RawValue::from_string(r#"{"id":1}"#.to_owned()).unwrap();
        let event_type = EventType::parse("entity.created").unwrap();
        let channel = ChannelName::parse("org:7").unwrap();
        let frame = format!(
            "{}42}}",
            encode_event_prefix(&event_type, &payload, &channel)
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["channel"].as_str()),
            (Some(42), Some("org:7"))
        );
    }

    #[test]
    fn client_frames() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"auth.refresh","token":"t"}"#),
            Ok(ClientFrame::AuthRefresh { .. })
        ));
        assert!(ClientFrame::parse("nope").is_err());
        assert!(ClientFrame::parse(r#"{"type":"entity.created"}"#).is_err());
        assert!(ClientFrame::parse(r#"{"type":"auth.refresh"}"#).is_err());
        for frame in [
            ClientFrame::AuthRefresh {
                token: "a.b.c".into(),
            },
            ClientFrame::Ping,
            ClientFrame::Pong,
        ] {
            assert_eq!(ClientFrame::parse(&frame.encode()), Ok(frame));
        }
    }
}
