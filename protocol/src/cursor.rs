//! Resume cursors: `org:7@41,user:42@3`, the last seq a client has per
//! channel, and the epoch they belong to.

use std::collections::BTreeMap;

use crate::frame::{Connected, Event};
use crate::ids::{ChannelName, ProtocolError, truncate};

/// Most channels in one cursor: a connection reads a handful; a long
/// cursor is abuse.
pub const MAX_CURSOR_CHANNELS: usize = 1024;

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
        if out.len() > MAX_CURSOR_CHANNELS {
            return Err(bad());
        }
    }
    Ok(out)
}

/// Where a client stands in each channel: what it sends as `since` and
/// `epoch` when it reconnects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Option<String>,
    pub positions: BTreeMap<String, u64>,
}

impl Cursor {
    /// Parses `org:7@41,user:42@3` (no epoch).
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        Ok(Self {
            epoch: None,
            positions: parse_cursor(s)?
                .into_iter()
                .map(|(c, seq)| (c.to_string(), seq))
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// `org:7@41,user:42@3`: the `since` parameter.
    pub fn to_since(&self) -> String {
        self.positions
            .iter()
            .map(|(c, seq)| format!("{c}@{seq}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Takes the `connected` frame's epoch and positions. Within one epoch
    /// the cursor's own positions win (they are where the client really
    /// is); a new epoch restarts every position.
    pub fn on_connected(&mut self, connected: &Connected) {
        if self.epoch.as_deref() != Some(connected.epoch.as_str()) {
            if self.epoch.is_some() {
                self.positions.clear();
            }
            self.epoch = Some(connected.epoch.clone());
        }
        for (channel, seq) in &connected.positions {
            self.positions.entry(channel.clone()).or_insert(*seq);
        }
    }

    /// Records an event's channel and seq.
    pub fn on_event(&mut self, event: &Event) {
        let position = self.positions.entry(event.channel.to_string()).or_insert(0);
        *position = (*position).max(event.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{EventType, OrgId, UserId};

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

    fn connected(epoch: &str, positions: &[(&str, u64)]) -> Connected {
        Connected {
            connection_id: "c".into(),
            user_id: UserId::new("1").unwrap(),
            org_id: OrgId::new("7").unwrap(),
            expires_at: String::new(),
            epoch: epoch.into(),
            positions: positions
                .iter()
                .map(|(c, s)| ((*c).to_owned(), *s))
                .collect(),
        }
    }

    #[test]
    fn cursor_follows_events_and_epochs() {
        let mut c = Cursor::parse("org:7@41").unwrap();
        c.on_connected(&connected("e1", &[("org:7", 50), ("user:1", 3)]));
        assert_eq!(c.to_since(), "org:7@41,user:1@3");
        c.on_event(&Event {
            event_type: EventType::parse("entity.created").unwrap(),
            payload: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            timestamp: String::new(),
            channel: ChannelName::parse("org:7").unwrap(),
            seq: 42,
        });
        assert_eq!(c.to_since(), "org:7@42,user:1@3");
        c.on_connected(&connected("e2", &[("org:7", 2)]));
        assert_eq!(
            (c.epoch.as_deref(), c.to_since().as_str()),
            (Some("e2"), "org:7@2")
        );
    }
}
