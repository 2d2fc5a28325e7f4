//! Whether a received frame matches an `expect`: type (with wildcards),
//! channel, seq, and the payload as a subset.

use std::collections::BTreeMap;

use hrrt_protocol::{ChannelName, ServerFrame};
use serde_json::Value;

use super::format::Matcher;
use crate::commands::listen::TypeFilter;

/// The parts of a frame a matcher looks at.
struct View<'a> {
    kind: &'a str,
    channel: Option<&'a ChannelName>,
    seq: Option<u64>,
    payload: Value,
}

/// `channel` and `seq` are the envelope's, so only events have them.
fn view(frame: &ServerFrame) -> View<'_> {
    let (channel, seq, payload) = match frame {
        ServerFrame::Event(e) => (Some(&e.channel), Some(e.seq), e.payload_value()),
        ServerFrame::Resync { payload, .. } => (None, None, json(payload)),
        ServerFrame::Connected { payload, .. } => (None, None, json(payload)),
        ServerFrame::Error { payload, .. } => (None, None, json(payload)),
        ServerFrame::Refreshed { payload, .. } => (None, None, json(payload)),
        ServerFrame::Ping { .. } => (None, None, Value::Object(serde_json::Map::new())),
    };
    View {
        kind: frame.kind(),
        channel,
        seq,
        payload,
    }
}

/// A frame's payload as JSON, for matching and messages.
fn json<T: serde::Serialize>(payload: &T) -> Value {
    serde_json::to_value(payload).unwrap_or_default()
}

/// The envelope fields a frame carries: `type`, `payload`, `timestamp`,
/// and `channel` and `seq` for events.
fn has_field(frame: &ServerFrame, field: &str) -> bool {
    match field {
        "type" | "payload" | "timestamp" => true,
        "channel" | "seq" => matches!(frame, ServerFrame::Event(_)),
        _ => false,
    }
}

impl Matcher {
    /// Whether `frame` matches. `seq` counts from `base`: the position of
    /// the frame's channel when the client first connected (0 for a
    /// channel it was not told about).
    pub fn matches(&self, frame: &ServerFrame, base: &BTreeMap<String, u64>) -> bool {
        let v = view(frame);
        if let Some(kind) = &self.kind
            && !TypeFilter::new(std::slice::from_ref(kind)).matches(v.kind)
        {
            return false;
        }
        if let Some(channel) = &self.channel
            && v.channel.map(ChannelName::as_str) != Some(channel.as_str())
        {
            return false;
        }
        if let Some(seq) = self.seq {
            let from = v
                .channel
                .and_then(|c| base.get(c.as_str()))
                .copied()
                .unwrap_or(0);
            if v.seq != Some(from.saturating_add(seq)) {
                return false;
            }
        }
        if !self.fields.iter().all(|f| has_field(frame, f)) {
            return false;
        }
        match &self.payload {
            Some(expected) => is_subset(expected, &v.payload),
            None => true,
        }
    }

    /// The matcher in words, for step lines.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = &self.kind {
            parts.push(kind.clone());
        }
        if let Some(channel) = &self.channel {
            parts.push(format!("on {channel}"));
        }
        if let Some(seq) = self.seq {
            parts.push(format!("seq {seq}"));
        }
        if let Some(payload) = &self.payload {
            parts.push(format!("payload ⊇ {payload}"));
        }
        if !self.fields.is_empty() {
            parts.push(format!("with {}", self.fields.join(", ")));
        }
        if parts.is_empty() {
            "any event".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// `expected` is contained in `actual`: objects by key (recursively),
/// arrays element by element (same length), anything else by equality.
/// Numbers compare by value, so `1` matches `1.0`.
pub fn is_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| is_subset(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| is_subset(ev, av))
        }
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        _ => expected == actual,
    }
}

/// A received frame in a few words, for failure messages.
pub fn summarize(frame: &ServerFrame) -> String {
    let v = view(frame);
    match frame {
        ServerFrame::Event(e) => format!("{} {}@{} {}", v.kind, e.channel, e.seq, v.payload),
        ServerFrame::Resync { .. } | ServerFrame::Error { .. } => {
            format!("{} {}", v.kind, v.payload)
        }
        _ => v.kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subsets() {
        let actual =
            json!({"id": 1, "name": "Ann", "tags": ["a", "b"], "nested": {"x": 1, "y": 2}});
        assert!(is_subset(&json!({}), &actual));
        assert!(is_subset(&json!({"id": 1.0}), &actual));
        assert!(is_subset(&json!({"nested": {"y": 2}}), &actual));
        assert!(is_subset(&json!({"tags": ["a", "b"]}), &actual));
        assert!(!is_subset(&json!({"tags": ["a"]}), &actual));
        assert!(!is_subset(&json!({"id": "1"}), &actual));
        assert!(!is_subset(&json!({"missing": null}), &actual));
    }

    #[test]
    fn matchers() {
        let frame = ServerFrame::decode(
            &json!({"type": "entity.created", "channel": "org:7", "seq": 3,
                    "timestamp": "2026-01-01T12:00:00.000000Z", "payload": {"id": 1}})
            .to_string(),
        )
        .unwrap();
        let m = |kind: Option<&str>, channel: Option<&str>, seq, payload| Matcher {
            kind: kind.map(str::to_owned),
            channel: channel.map(str::to_owned),
            seq,
            payload,
            fields: Vec::new(),
        };
        let none = BTreeMap::new();
        assert!(
            m(
                Some("entity.*"),
                Some("org:7"),
                Some(3),
                Some(json!({"id": 1}))
            )
            .matches(&frame, &none)
        );
        assert!(!m(Some("chat.*"), None, None, None).matches(&frame, &none));
        assert!(!m(None, Some("org:8"), None, None).matches(&frame, &none));
        assert!(!m(None, None, Some(4), None).matches(&frame, &none));
        assert!(!m(None, None, None, Some(json!({"id": 2}))).matches(&frame, &none));
        // seq counts from where the client stood at connect.
        let base = BTreeMap::from([("org:7".to_owned(), 2)]);
        assert!(m(None, None, Some(1), None).matches(&frame, &base));
        assert!(!m(None, None, Some(3), None).matches(&frame, &base));
        assert_eq!(summarize(&frame), "entity.created org:7@3 {\"id\":1}");
    }
}
