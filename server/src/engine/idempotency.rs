//! The idempotency table of the memory engine: per channel, the first
//! answer to each key, for [`IDEMPOTENCY_WINDOW`].
//!
//! Keys are scoped by channel, as in Centrifugo: the same key on another
//! channel is another publish. A key is never forgotten inside its window;
//! when the table holds `capacity` live keys, a publish with a new key is
//! refused (the API answers 429 with `Retry-After`) rather than forgetting
//! one early and letting a retry publish twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{IDEMPOTENCY_WINDOW, PublishAck};
use crate::protocol::ChannelName;

type Key = (ChannelName, Arc<str>);

/// One slot of the table: an event's key on its channel, or a batch's key.
#[derive(Debug, Clone)]
enum Slot {
    Event(Key),
    Batch(Arc<str>),
}

/// First answers by (channel, key), and batches' answers by their key,
/// oldest first for cheap expiry. About 150 bytes per key plus the key.
#[derive(Debug)]
pub struct IdempotencyTable {
    capacity: usize,
    answers: HashMap<Key, PublishAck>,
    batches: HashMap<Arc<str>, Vec<PublishAck>>,
    /// Slots in the order they were stored.
    order: VecDeque<(Instant, Slot)>,
}

impl IdempotencyTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            answers: HashMap::new(),
            batches: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Forgets keys older than the window, and only those.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < IDEMPOTENCY_WINDOW {
                break;
            }
            match self.order.pop_front() {
                Some((_, Slot::Event(key))) => {
                    self.answers.remove(&key);
                }
                Some((_, Slot::Batch(key))) => {
                    self.batches.remove(&key);
                }
                None => {}
            }
        }
    }

    /// The first answer to `key` on `channel`, if it is remembered.
    pub fn get(&self, channel: &ChannelName, key: &str) -> Option<&PublishAck> {
        // A borrowed lookup would need a key type of its own; keys are at
        // most 128 bytes, so building one is cheap next to a publish.
        self.answers.get(&(channel.clone(), Arc::from(key)))
    }

    /// Whether `new_keys` more keys fit now; if not, how long until the
    /// oldest expires.
    pub fn room_for(&self, new_keys: usize, now: Instant) -> Result<(), Duration> {
        if self.len().saturating_add(new_keys) <= self.capacity {
            return Ok(());
        }
        let oldest = self.order.front().map_or(now, |(at, _)| *at);
        Err(IDEMPOTENCY_WINDOW.saturating_sub(now.saturating_duration_since(oldest)))
    }

    /// Remembers the first answer to `key` on `channel`.
    pub fn insert(&mut self, channel: ChannelName, key: &str, ack: PublishAck, now: Instant) {
        let key = (channel, Arc::from(key));
        if self.answers.insert(key.clone(), ack).is_none() {
            self.order.push_back((now, Slot::Event(key)));
        }
    }

    /// The answers of the batch stored under `key`, if it is remembered.
    pub fn batch(&self, key: &str) -> Option<&[PublishAck]> {
        self.batches.get(key).map(Vec::as_slice)
    }

    /// Remembers a batch's answers under its key.
    pub fn insert_batch(&mut self, key: &str, acks: Vec<PublishAck>, now: Instant) {
        let key: Arc<str> = Arc::from(key);
        if self.batches.insert(key.clone(), acks).is_none() {
            self.order.push_back((now, Slot::Batch(key)));
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.answers.len() + self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(channel: &ChannelName, seq: u64) -> PublishAck {
        PublishAck {
            channel: channel.clone(),
            seq,
            recipients: 0,
            duplicate: false,
        }
    }

    #[test]
    fn scoped_by_channel_full_never_forgets_early() {
        let org7 = ChannelName::parse("org:7").unwrap();
        let org8 = ChannelName::parse("org:8").unwrap();
        let mut t = IdempotencyTable::new(2);
        let t0 = Instant::now();
        t.insert(org7.clone(), "k", ack(&org7, 1), t0);
        assert_eq!(t.get(&org7, "k").map(|a| a.seq), Some(1));
        assert!(t.get(&org8, "k").is_none());
        assert!(t.room_for(1, t0).is_ok());
        t.insert(
            org8.clone(),
            "k",
            ack(&org8, 1),
            t0 + Duration::from_secs(60),
        );
        let wait = t.room_for(1, t0 + Duration::from_secs(100)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(200));
        t.expire(t0 + Duration::from_secs(299));
        assert_eq!(t.len(), 2, "nothing is forgotten inside the window");
        t.expire(t0 + IDEMPOTENCY_WINDOW);
        assert_eq!(t.len(), 1);
        assert!(t.get(&org7, "k").is_none());
        assert!(t.room_for(1, t0 + IDEMPOTENCY_WINDOW).is_ok());
    }
}
