//! What the engine keeps in Redis, by key, and how its values are
//! encoded and read back (the table in the module docs of [`super`]).

use std::sync::Arc;
use std::time::Instant;

use redis::Value;
use tungstenite::Utf8Bytes;

use crate::engine::{Publication, PublishAck};
use crate::protocol::{ChannelName, EventType};

pub(super) const PREFIX: &str = "hrrt:";

pub(super) fn seq_key(channel: &ChannelName) -> String {
    format!("{PREFIX}seq:{channel}")
}

pub(super) fn stream_key(channel: &ChannelName) -> String {
    format!("{PREFIX}h:{channel}")
}

pub(super) fn pubsub_channel(channel: &ChannelName) -> String {
    format!("{PREFIX}ch:{channel}")
}

/// The nodes' control channel (`PREFIX` + `ctl`).
pub(super) const CTL_CHANNEL: &str = "hrrt:ctl";

pub(super) fn node_key(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

/// Every live revocation: user → `<at>|<until ms>`.
pub(super) const REVOKED: &str = "hrrt:revoked";

/// The users of [`REVOKED`] by when their revocation ends (ms), so the
/// expired ones can be dropped.
pub(super) const REVOKED_UNTIL: &str = "hrrt:revoked:until";

/// Where the first answer to `key` on `channel` is kept. The channel's
/// length comes first: ids may contain `:`, and org `7` with key `x:k`
/// must not be org `7:x` with key `k`.
pub(super) fn idempotency_key(channel: &ChannelName, key: &str) -> String {
    format!("{PREFIX}idem:{}:{channel}:{key}", channel.as_str().len())
}

/// A batch's own idempotency key: the publish script's batch token, so a
/// retried batch answers its first answers (publish.lua knows it by this
/// prefix).
pub(super) fn batch_idempotency_key(key: &str) -> String {
    format!("{PREFIX}idem-batch:{key}")
}

/// The live idempotency keys by when they expire (ms), cluster-wide: the
/// bound of `--idempotency-keys`.
pub(super) const IDEMPOTENCY_INDEX: &str = "hrrt:idem-index";

pub(super) fn epoch_key() -> String {
    format!("{PREFIX}epoch")
}

/// `<channel>|<seq>|<nodes>` → an ack; `dup|` before it marks the
/// stored answer to a key used before.
pub(super) fn parse_answer(answer: &str) -> Option<PublishAck> {
    let (duplicate, answer) = match answer.strip_prefix("dup|") {
        Some(rest) => (true, rest),
        None => (false, answer),
    };
    let mut parts = answer.rsplitn(3, '|');
    let nodes = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let channel = ChannelName::parse(parts.next()?).ok()?;
    Some(PublishAck {
        channel,
        seq,
        recipients: nodes,
        duplicate,
    })
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn as_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Stream entries (`[[id, [field, value, …]], …]`) → publications.
pub(super) fn parse_entries(channel: &ChannelName, entries: &Value) -> Vec<Arc<Publication>> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    let received = Instant::now();
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = as_str(parts.first()?)?;
            let seq = id.split('-').next()?.parse().ok()?;
            let Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let mut frame = None;
            let mut kind = None;
            for pair in fields.chunks(2) {
                match (pair.first().and_then(as_str), pair.get(1).and_then(as_str)) {
                    (Some("f"), Some(f)) => frame = Some(f.to_owned()),
                    (Some("y"), Some(y)) => kind = Some(y),
                    _ => {}
                }
            }
            Some(Arc::new(Publication::new(
                channel.clone(),
                seq,
                EventType::parse(kind?).ok()?,
                Utf8Bytes::from(frame?),
                received,
            )))
        })
        .collect()
}

/// A pub/sub message: `<epoch>|<seq>|<type>|<frame>` on `hrrt:ch:<channel>`.
pub(super) fn parse_message(
    channel_name: &str,
    payload: &[u8],
) -> Option<(String, Arc<Publication>)> {
    let channel =
        ChannelName::parse(channel_name.strip_prefix(PREFIX)?.strip_prefix("ch:")?).ok()?;
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, '|');
    let epoch = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    let event_type = EventType::parse(parts.next()?).ok()?;
    let frame = parts.next()?;
    Some((
        epoch,
        Arc::new(Publication::new(
            channel,
            seq,
            event_type,
            Utf8Bytes::from(frame),
            Instant::now(),
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_of_different_channels_never_meet() {
        let seven = ChannelName::parse("org:7").unwrap();
        let seven_x = ChannelName::parse("org:7:x").unwrap();
        assert_ne!(
            idempotency_key(&seven, "x:k"),
            idempotency_key(&seven_x, "k")
        );
        assert_eq!(idempotency_key(&seven, "k"), "hrrt:idem:5:org:7:k");
    }

    #[test]
    fn answers_and_messages_parse() {
        assert!(parse_answer("dup|org:7|1|2").unwrap().duplicate);
        let ack = parse_answer("user:ann|x@y.z|12|3").unwrap();
        assert!(!ack.duplicate);
        assert_eq!(
            (ack.channel.as_str(), ack.seq, ack.recipients),
            ("user:ann|x@y.z", 12, 3)
        );
        let (epoch, p) =
            parse_message("hrrt:ch:org:7", b"e1|5|entity.created|{\"a\":\"|\"}").unwrap();
        assert_eq!(
            (epoch.as_str(), p.seq, p.channel.as_str()),
            ("e1", 5, "org:7")
        );
        assert_eq!(p.frame.as_str(), "{\"a\":\"|\"}");
        assert!(parse_message("other", b"x").is_none());
    }
}
