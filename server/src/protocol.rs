//! The wire contract: identifiers, channel names, event types, the frames
//! the server sends, the frames a client may send, and close codes.
//!
//! Everything marked *compat* is the contract of the Python server this one
//! replaces; the browser front end depends on it byte for byte.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The longest user or org id accepted, in bytes. Ids end up in channel
/// names, logs and metric labels, so they are kept short.
pub const MAX_ID_LEN: usize = 128;

/// The longest event type accepted, in bytes.
pub const MAX_TYPE_LEN: usize = 128;

/// Why an identifier, channel name, event type or cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} must not contain whitespace, control characters or ','")]
    BadCharacter { what: &'static str },
    #[error("channel '{0}' is not of the form org:<id> or user:<id>")]
    BadChannel(String),
    #[error("event type '{0}' must be lowercase dotted words such as 'entity.created'")]
    BadEventType(String),
    #[error("event type '{0}' is reserved for the server")]
    ReservedEventType(String),
    #[error("cursor '{0}' is not of the form org:7@41,user:42@3")]
    BadCursor(String),
}

fn check_id(what: &'static str, id: &str) -> Result<(), ProtocolError> {
    if id.is_empty() {
        return Err(ProtocolError::Empty { what });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ProtocolError::TooLong {
            what,
            max: MAX_ID_LEN,
        });
    }
    // ',' separates cursor entries and whitespace breaks the human-readable
    // `channel@seq` form, so neither may appear in an id.
    if id
        .chars()
        .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(ProtocolError::BadCharacter { what });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks and wraps an id.
            pub fn new(id: &str) -> Result<Self, ProtocolError> {
                check_id($what, id)?;
                Ok(Self(Arc::from(id)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user id (the token's `sub`), normalised to a string.
    UserId,
    "user id"
);
id_type!(
    /// An organisation id (the token's `org_id`), normalised to a string.
    OrgId,
    "org id"
);

/// A string or an integer in JSON, normalised to a string. Ids in tokens and
/// in publish requests may be either (the HR backend uses integer ids).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdValue {
    Str(String),
    Int(i64),
}

impl IdValue {
    pub fn into_string(self) -> String {
        match self {
            IdValue::Str(s) => s,
            IdValue::Int(i) => i.to_string(),
        }
    }
}

/// The two kinds of channel. Every event belongs to exactly one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `org:<id>`: every connection of the organisation reads it.
    Org,
    /// `user:<id>`: every connection (tab) of that one user reads it.
    User,
}

/// A channel name, `org:<id>` or `user:<id>`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn org(org: &OrgId) -> Self {
        Self(Arc::from(format!("org:{org}")))
    }

    pub fn user(user: &UserId) -> Self {
        Self(Arc::from(format!("user:{user}")))
    }

    /// Parses `org:<id>` or `user:<id>`.
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::BadChannel(truncate(s));
        let (kind, id) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "org" => check_id("org id", id).map_err(|_| bad())?,
            "user" => check_id("user id", id).map_err(|_| bad())?,
            _ => return Err(bad()),
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn kind(&self) -> ChannelKind {
        if self.0.starts_with("org:") {
            ChannelKind::Org
        } else {
            ChannelKind::User
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({:?})", &*self.0)
    }
}

impl Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Keeps user input quoted in error messages short.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The audience a seed event type goes to. *compat*
pub fn seed_target(event_type: &str) -> Option<ChannelKind> {
    match event_type {
        "entity.created" | "entity.updated" | "entity.deleted" | "chat.message" => {
            Some(ChannelKind::Org)
        }
        "share.created" | "share.revoked" => Some(ChannelKind::User),
        _ => None,
    }
}

/// A publishable event type: lowercase dotted words
/// (`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`), not reserved.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventType(Arc<str>);

impl EventType {
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        if s.len() > MAX_TYPE_LEN {
            return Err(ProtocolError::TooLong {
                what: "event type",
                max: MAX_TYPE_LEN,
            });
        }
        if is_reserved_type(s) {
            return Err(ProtocolError::ReservedEventType(truncate(s)));
        }
        let well_formed = s.split('.').count() >= 2
            && s.split('.').all(|word| {
                let mut chars = word.chars();
                matches!(chars.next(), Some('a'..='z'))
                    && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            });
        if !well_formed {
            return Err(ProtocolError::BadEventType(truncate(s)));
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventType({:?})", &*self.0)
    }
}

/// Types the server itself sends, or that clients send; never publishable.
pub fn is_reserved_type(s: &str) -> bool {
    matches!(s, "ping" | "connected" | "resync.required" | "error")
        || s.starts_with("auth.")
        || s.starts_with("system.")
}

/// Checks that a payload, already valid JSON syntax, is JSON every client
/// can read back: a number such as `1e999` passes a syntax check but is
/// out of range for a double, so JSON parsers refuse it (serde_json) or
/// turn it into `Infinity`. Found by the `publish_body` fuzz target. One
/// pass, no allocation but for strings with escapes.
pub fn check_payload(payload: &RawValue) -> Result<(), String> {
    serde_json::from_str::<Readable>(payload.get())
        .map(|_| ())
        .map_err(|e| format!("payload is not JSON every client can read: {e}"))
}

/// Deserializes any JSON value and keeps nothing of it; serde_json reads
/// every number as it does for a client, so out-of-range ones fail.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> serde::de::Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, Readable>()?
            .is_some()
        {}
        Ok(Readable)
    }
}

/// The current time as the wire wants it: UTC RFC 3339 with exactly six
/// fractional digits and `Z`, e.g. `2026-01-01T12:00:00.000000Z`. *compat*
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// A UNIX time in seconds as RFC 3339 (for `expires_at`). Times past
/// year 9999 are written as its last second: RFC 3339 has no later year,
/// and verified tokens never carry one ([`crate::auth::MAX_TIMESTAMP`]).
pub fn unix_to_rfc3339(secs: u64) -> String {
    let secs = secs.min(crate::auth::MAX_TIMESTAMP);
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
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
    channel: Option<&str>,
    seq: Option<u64>,
) -> Utf8Bytes {
    let envelope = Envelope {
        kind,
        payload,
        timestamp: &timestamp(SystemTime::now()),
        channel,
        seq,
    };
    // Serialising plain structs, strings and already-valid raw JSON cannot
    // fail; the fallback keeps the wire well-formed regardless.
    let text = serde_json::to_string(&envelope).unwrap_or_else(|_| {
        format!(r#"{{"type":"error","payload":{{"code":"internal","message":"encoding failed"}},"timestamp":"{}"}}"#, timestamp(SystemTime::now()))
    });
    Utf8Bytes::from(text)
}

/// Serialises a published event once; every recipient gets these bytes.
pub fn encode_event(
    event_type: &EventType,
    payload: &RawValue,
    channel: &ChannelName,
    seq: u64,
) -> Utf8Bytes {
    encode(
        event_type.as_str(),
        payload,
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
    let mut text = encode(event_type.as_str(), payload, Some(channel.as_str()), None).to_string();
    text.pop();
    text.push_str(",\"seq\":");
    text
}

/// `{"type":"ping","payload":{},"timestamp":…}` *compat*
pub fn ping_frame() -> Utf8Bytes {
    encode("ping", &serde_json::Map::new(), None, None)
}

/// The payload of the `connected` frame, the first frame of every session.
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    pub connection_id: &'a str,
    pub user_id: &'a UserId,
    pub org_id: &'a OrgId,
    pub expires_at: String,
    pub epoch: &'a str,
    /// The latest seq of each channel the connection reads (0 when empty).
    pub positions: serde_json::Map<String, serde_json::Value>,
}

pub fn connected_frame(connected: &Connected<'_>) -> Utf8Bytes {
    encode("connected", connected, None, None)
}

/// Why the server could not replay a channel from the requested position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Serialize)]
pub struct Resync<'a> {
    pub channel: &'a ChannelName,
    pub requested: u64,
    pub oldest: u64,
    pub reason: ResyncReason,
    /// The current epoch, for `epoch_changed`: the client adopts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
}

pub fn resync_frame(resync: &Resync<'_>) -> Utf8Bytes {
    encode("resync.required", resync, None, None)
}

/// Codes of the `error` frame the server sends for a bad client frame.
pub mod error_code {
    /// The frame was not JSON, not an object, or had an unknown `type`.
    pub const BAD_MESSAGE: &str = "bad_message";
}

#[derive(Serialize)]
struct ErrorPayload<'a> {
    code: &'a str,
    message: &'a str,
}

/// `{"type":"error","payload":{"code":…,"message":…}}`; the connection stays open.
pub fn error_frame(code: &str, message: &str) -> Utf8Bytes {
    encode("error", &ErrorPayload { code, message }, None, None)
}

#[derive(Serialize)]
struct Refreshed {
    expires_at: String,
}

/// The answer to a successful `auth.refresh`.
pub fn refreshed_frame(exp: u64) -> Utf8Bytes {
    encode(
        "auth.refreshed",
        &Refreshed {
            expires_at: unix_to_rfc3339(exp),
        },
        None,
        None,
    )
}

/// A frame a client may send.
#[derive(Debug)]
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

/// Parses a client text frame; the error is the message of the `error` frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, String> {
    let raw: RawClientFrame = serde_json::from_str(text)
        .map_err(|e| format!("not a JSON object with a \"type\": {e}"))?;
    match raw.kind.as_str() {
        "auth.refresh" => match raw.token {
            Some(token) => Ok(ClientFrame::AuthRefresh { token }),
            None => Err("auth.refresh needs a \"token\"".to_owned()),
        },
        "ping" => Ok(ClientFrame::Ping),
        "pong" => Ok(ClientFrame::Pong),
        other => Err(format!(
            "unknown message type '{}'; clients may send auth.refresh",
            truncate(other)
        )),
    }
}

/// A resume cursor, `org:7@41,user:42@3`: the last seq seen per channel.
pub fn parse_cursor(s: &str) -> Result<Vec<(ChannelName, u64)>, ProtocolError> {
    let bad = || ProtocolError::BadCursor(truncate(s));
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (channel, seq) = part.rsplit_once('@').ok_or_else(bad)?;
        let channel = ChannelName::parse(channel).map_err(|_| bad())?;
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        if out.iter().any(|(c, _)| *c == channel) {
            return Err(bad());
        }
        out.push((channel, seq));
        // A connection reads a handful of channels; a long cursor is abuse.
        if out.len() > 1024 {
            return Err(bad());
        }
    }
    Ok(out)
}

/// WebSocket close codes the server uses, and what a client should do.
pub mod close {
    /// The server is shutting down: reconnect with backoff and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// Authentication or authorisation failed, or the user was
    /// disconnected: do not retry with the same token.
    pub const POLICY: u16 = 1008;
    /// The client sent a frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server error: reconnect with backoff and resume.
    pub const INTERNAL: u16 = 1011;
    /// Slow consumer or connection limit: reconnect with backoff and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types() {
        for ok in ["entity.created", "a.b", "x1.y_2.z", "share.revoked"] {
            assert!(EventType::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "entity",
            "Entity.created",
            "entity.",
            ".x",
            "a..b",
            "a.1b",
            "a.b-c",
        ] {
            assert!(
                matches!(EventType::parse(bad), Err(ProtocolError::BadEventType(_))),
                "{bad}"
            );
        }
        for reserved in [
            "ping",
            "connected",
            "error",
            "resync.required",
            "auth.refresh",
            "system.x",
        ] {
            assert!(
                matches!(
                    EventType::parse(reserved),
                    Err(ProtocolError::ReservedEventType(_))
                ),
                "{reserved}"
            );
        }
    }

    #[test]
    fn channels() {
        assert_eq!(
            ChannelName::parse("org:7").unwrap().kind(),
            ChannelKind::Org
        );
        assert_eq!(
            ChannelName::parse("user:a@b.c").unwrap().kind(),
            ChannelKind::User
        );
        for bad in ["org:", "org", "team:1", "user:a,b", "org: 1", ""] {
            assert!(ChannelName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors() {
        let c = parse_cursor("org:7@41,user:42@3").unwrap();
        assert_eq!(c[0], (ChannelName::parse("org:7").unwrap(), 41));
        assert_eq!(c[1], (ChannelName::parse("user:42").unwrap(), 3));
        // An email as a user id keeps its '@'; the seq follows the last one.
        let c = parse_cursor("user:ann@example.com@9").unwrap();
        assert_eq!(c[0].0.as_str(), "user:ann@example.com");
        assert_eq!(c[0].1, 9);
        assert!(parse_cursor("").unwrap().is_empty());
        for bad in ["org:7", "org:7@x", "org:7@-1", "x:1@2", "org:7@1,org:7@2"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamp_has_six_fraction_digits_and_z() {
        let t = timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500));
        assert_eq!(t, "1970-01-01T00:00:01.500000Z");
    }

    #[test]
    fn payloads_must_be_readable_json() {
        let ok =
            RawValue::from_string(r#"{"a":[1,-2,3.5e10,"x\n",null,true,{}]}"#.to_owned()).unwrap();
        assert!(check_payload(&ok).is_ok());
        // Syntax allows it; no client can read it back as a number.
        let huge = RawValue::from_string(r#"{"id": 1444447e444444444444444444444444}"#.to_owned())
            .unwrap();
        assert!(check_payload(&huge).is_err());
        let minus = RawValue::from_string("[-1e400]".to_owned()).unwrap();
        assert!(check_payload(&minus).is_err());
    }

    #[test]
    fn far_future_times_do_not_panic() {
        assert_eq!(unix_to_rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(unix_to_rfc3339(0), "1970-01-01T00:00:00Z");
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
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
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
            parse_client_frame(r#"{"type":"auth.refresh","token":"t"}"#),
            Ok(ClientFrame::AuthRefresh { .. })
        ));
        assert!(parse_client_frame("nope").is_err());
        assert!(parse_client_frame(r#"{"type":"entity.created"}"#).is_err());
        assert!(parse_client_frame(r#"{"type":"auth.refresh"}"#).is_err());
    }
}
