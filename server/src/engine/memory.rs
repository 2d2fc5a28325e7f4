//! The embedded engine: one process, history in memory, zero set-up.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    Deliver, Engine, EngineError, Epoch, HistoryPage, IDEMPOTENCY_WINDOW, NewEvent, Publication,
    PublishAck,
};
use crate::protocol::{ChannelName, encode_event};

/// The most idempotency keys remembered at once. At this many the oldest is
/// forgotten early, so a flood of unique keys cannot grow memory unbounded
/// (about 200 bytes each).
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

/// One process's engine. Each channel has its own lock, held while its next
/// event is numbered, stored and handed to the hub, so publishes to
/// different channels never wait for each other.
pub struct MemoryEngine {
    epoch: Epoch,
    history_size: usize,
    history_ttl: Duration,
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<ChannelState>>>>,
    idempotency: Mutex<IdempotencyCache>,
    deliver: Arc<dyn Deliver>,
    /// Events held in every channel's history, for the metrics.
    retained: AtomicU64,
}

#[derive(Default)]
struct ChannelState {
    /// The latest seq; kept when the history empties so seqs never restart
    /// within an epoch (about 100 bytes per channel ever published to).
    latest: u64,
    history: VecDeque<Arc<Publication>>,
}

impl ChannelState {
    /// Drops events older than `ttl`; returns how many.
    fn trim(&mut self, ttl: Duration, now: Instant) -> u64 {
        let mut dropped = 0;
        while let Some(front) = self.history.front() {
            if now.duration_since(front.received) < ttl {
                break;
            }
            self.history.pop_front();
            dropped += 1;
        }
        dropped
    }

    fn oldest(&self) -> u64 {
        self.history.front().map_or(self.latest + 1, |p| p.seq)
    }
}

#[derive(Default)]
struct IdempotencyCache {
    answers: HashMap<String, PublishAck>,
    /// Keys in the order they were stored, to expire them cheaply.
    order: VecDeque<(Instant, String)>,
}

impl IdempotencyCache {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < IDEMPOTENCY_WINDOW
                && self.order.len() <= MAX_IDEMPOTENCY_KEYS
            {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.answers.remove(&key);
            }
        }
    }
}

impl MemoryEngine {
    /// A new engine with a fresh random epoch; publications go to `deliver`.
    pub fn new(history_size: usize, history_ttl: Duration, deliver: Arc<dyn Deliver>) -> Self {
        Self {
            epoch: Arc::from(crate::random_hex(8)),
            history_size: history_size.max(1),
            history_ttl,
            channels: RwLock::default(),
            idempotency: Mutex::default(),
            deliver,
            retained: AtomicU64::new(0),
        }
    }

    fn channel(&self, name: &ChannelName) -> Arc<Mutex<ChannelState>> {
        if let Some(state) = read(&self.channels).get(name) {
            return state.clone();
        }
        write(&self.channels)
            .entry(name.clone())
            .or_default()
            .clone()
    }

    fn existing_channel(&self, name: &ChannelName) -> Option<Arc<Mutex<ChannelState>>> {
        read(&self.channels).get(name).cloned()
    }

    fn publish_one(&self, event: NewEvent) -> PublishAck {
        let channel = self.channel(&event.channel);
        let mut state = lock(&channel);
        let seq = state.latest + 1;
        let now = Instant::now();
        let publication = Arc::new(Publication {
            frame: encode_event(&event.event_type, &event.payload, &event.channel, seq),
            channel: event.channel,
            seq,
            event_type: event.event_type,
            received: now,
        });
        state.latest = seq;
        let mut dropped = state.trim(self.history_ttl, now);
        if state.history.len() >= self.history_size {
            state.history.pop_front();
            dropped += 1;
        }
        state.history.push_back(publication.clone());
        self.retained.fetch_add(1, Ordering::Relaxed);
        self.retained.fetch_sub(dropped, Ordering::Relaxed);
        // Still under the channel lock: the hub sees this channel's events in
        // seq order, and a connection that registered before this point
        // either gets the event live or finds it in history.
        let recipients = self.deliver.deliver(&publication);
        PublishAck {
            channel: publication.channel.clone(),
            seq,
            recipients,
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn epoch(&self) -> Epoch {
        self.epoch.clone()
    }

    async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<PublishAck>, EngineError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let Some(key) = event.idempotency_key.clone() else {
                acks.push(self.publish_one(event));
                continue;
            };
            // Held across the publish so two concurrent retries of one key
            // cannot both publish. Only keyed publishes wait on it.
            let mut cache = lock(&self.idempotency);
            cache.expire(Instant::now());
            if let Some(ack) = cache.answers.get(&key) {
                acks.push(ack.clone());
                continue;
            }
            let ack = self.publish_one(event);
            cache.order.push_back((Instant::now(), key.clone()));
            cache.answers.insert(key, ack.clone());
            acks.push(ack);
        }
        Ok(acks)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let Some(state) = self.existing_channel(channel) else {
            return Ok(HistoryPage {
                events: Vec::new(),
                oldest: 1,
                latest: 0,
            });
        };
        let mut state = lock(&state);
        let dropped = state.trim(self.history_ttl, Instant::now());
        self.retained.fetch_sub(dropped, Ordering::Relaxed);
        let oldest = state.oldest();
        // Seqs in the ring are consecutive, so the start index is arithmetic.
        let skip =
            usize::try_from(since.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        let events = state
            .history
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect();
        Ok(HistoryPage {
            events,
            oldest,
            latest: state.latest,
        })
    }

    async fn latest(&self, channels: &[ChannelName]) -> Result<Vec<u64>, EngineError> {
        let map = read(&self.channels);
        Ok(channels
            .iter()
            .map(|c| map.get(c).map_or(0, |s| lock(s).latest))
            .collect())
    }

    async fn ready(&self) -> bool {
        true
    }

    fn retained_events(&self) -> u64 {
        self.retained.load(Ordering::Relaxed)
    }
}

// A poisoned lock means a panic elsewhere while it was held; the data it
// guards is still consistent (every critical section above is panic-free
// by construction), so carry on rather than take the server down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use serde_json::value::RawValue;

    use super::*;
    use crate::protocol::EventType;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Deliver for Count {
        fn deliver(&self, _: &Arc<Publication>) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed);
            3
        }
    }

    fn event(channel: &str, key: Option<&str>) -> NewEvent {
        NewEvent {
            channel: ChannelName::parse(channel).unwrap(),
            event_type: EventType::parse("entity.created").unwrap(),
            payload: RawValue::from_string("{}".to_owned()).unwrap(),
            idempotency_key: key.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn seqs_history_and_trim() {
        let count = Arc::new(Count::default());
        let engine = MemoryEngine::new(3, Duration::from_secs(60), count.clone());
        for _ in 0..5 {
            engine.publish(vec![event("org:1", None)]).await.unwrap();
        }
        let ack = engine.publish(vec![event("org:2", None)]).await.unwrap();
        assert_eq!(ack[0].seq, 1);
        assert_eq!(ack[0].recipients, 3);
        let page = engine
            .history(&ChannelName::parse("org:1").unwrap(), 0, 100)
            .await
            .unwrap();
        assert_eq!(page.oldest, 3);
        assert_eq!(page.latest, 5);
        assert_eq!(
            page.events.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let page = engine
            .history(&ChannelName::parse("org:1").unwrap(), 4, 100)
            .await
            .unwrap();
        assert_eq!(page.events.iter().map(|p| p.seq).collect::<Vec<_>>(), [5]);
        let page = engine
            .history(&ChannelName::parse("org:1").unwrap(), 3, 1)
            .await
            .unwrap();
        assert_eq!(page.events.iter().map(|p| p.seq).collect::<Vec<_>>(), [4]);
        let page = engine
            .history(&ChannelName::parse("org:9").unwrap(), 0, 100)
            .await
            .unwrap();
        assert_eq!((page.oldest, page.latest, page.events.len()), (1, 0, 0));
        assert_eq!(count.0.load(Ordering::Relaxed), 6);
        assert_eq!(engine.retained_events(), 4);
    }

    #[tokio::test]
    async fn ttl_empties_history_but_keeps_latest() {
        let engine = MemoryEngine::new(10, Duration::ZERO, Arc::new(Count::default()));
        engine
            .publish(vec![event("org:1", None), event("org:1", None)])
            .await
            .unwrap();
        let page = engine
            .history(&ChannelName::parse("org:1").unwrap(), 0, 100)
            .await
            .unwrap();
        assert!(page.events.is_empty());
        assert_eq!((page.oldest, page.latest), (3, 2));
    }

    #[tokio::test]
    async fn idempotency_key_publishes_once() {
        let count = Arc::new(Count::default());
        let engine = MemoryEngine::new(10, Duration::from_secs(60), count.clone());
        let first = engine
            .publish(vec![event("org:1", Some("k"))])
            .await
            .unwrap();
        let again = engine
            .publish(vec![event("org:1", Some("k"))])
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }
}
