//! Whether a received frame matches an `expect`: type (with wildcards),
//! channel, seq, and the payload as a subset.

use serde_json::Value;

use super::format::Matcher;
use crate::commands::listen::TypeFilter;

impl Matcher {
    pub fn matches(&self, frame: &Value) -> bool {
        if let Some(kind) = &self.kind {
            let actual = frame["type"].as_str().unwrap_or_default();
            if !TypeFilter::new(std::slice::from_ref(kind)).matches(actual) {
                return false;
            }
        }
        if let Some(channel) = &self.channel
            && frame["channel"].as_str() != Some(channel.as_str())
        {
            return false;
        }
        if let Some(seq) = self.seq
            && frame["seq"].as_u64() != Some(seq)
        {
            return false;
        }
        if !self.fields.iter().all(|f| frame.get(f).is_some()) {
            return false;
        }
        match &self.payload {
            Some(expected) => is_subset(expected, &frame["payload"]),
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
pub fn summarize(frame: &Value) -> String {
    let kind = frame["type"].as_str().unwrap_or("?");
    match (frame["channel"].as_str(), frame["seq"].as_u64()) {
        (Some(channel), Some(seq)) => format!("{kind} {channel}@{seq} {}", frame["payload"]),
        _ if kind == "resync.required" || kind == "error" => format!("{kind} {}", frame["payload"]),
        _ => kind.to_owned(),
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
        let frame =
            json!({"type": "entity.created", "channel": "org:7", "seq": 3, "payload": {"id": 1}});
        let m = |kind: Option<&str>, channel: Option<&str>, seq, payload| Matcher {
            kind: kind.map(str::to_owned),
            channel: channel.map(str::to_owned),
            seq,
            payload,
            fields: Vec::new(),
        };
        assert!(
            m(
                Some("entity.*"),
                Some("org:7"),
                Some(3),
                Some(json!({"id": 1}))
            )
            .matches(&frame)
        );
        assert!(!m(Some("chat.*"), None, None, None).matches(&frame));
        assert!(!m(None, Some("org:8"), None, None).matches(&frame));
        assert!(!m(None, None, Some(4), None).matches(&frame));
        assert!(!m(None, None, None, Some(json!({"id": 2}))).matches(&frame));
        assert_eq!(summarize(&frame), "entity.created org:7@3 {\"id\":1}");
    }
}
