//! Identifiers, channel names and event types, and the rules they obey.
//!
//! Everything marked *compat* is the contract of the Python server hrrt
//! replaces; the browser front end depends on it byte for byte.

use std::fmt;
use std::sync::Arc;

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

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&text).map_err(serde::de::Error::custom)
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

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Keeps user input quoted in error messages short.
pub fn truncate(s: &str) -> String {
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

    /// The type a server-made `resync.required` carries inside the server
    /// (reserved, so no publisher can send it): queued in a connection's
    /// order with the events, it tells the session that the channel's
    /// sequence restarts.
    pub fn resync_marker() -> Self {
        Self(Arc::from("resync.required"))
    }

    /// Whether this is [`EventType::resync_marker`].
    pub fn is_resync_marker(&self) -> bool {
        &*self.0 == "resync.required"
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

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
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
}
