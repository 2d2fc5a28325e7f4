//! The embedded engine: one process, history in memory, zero set-up.
//!
//! Memory is bounded by the flags, not by what clients or publishers do:
//! at most `--history-size` events per channel, each dropped by
//! [`Engine::sweep`] about a second after it outlived `--history-ttl`
//! (whether or not the channel is used again); a channel with no events
//! and no subscribers is freed; the idempotency table holds at most
//! `--idempotency-keys`.
//!
//! A freed channel that is used again must not reuse its old seqs: a
//! client that resumes with a cursor from its first life would be handed
//! the second life's events as if they followed. So the engine keeps one
//! number, the highest seq any freed channel reached (the *floor*), and a
//! channel it does not know starts above it. An old cursor is then below
//! the channel's oldest event and gets `resync.required`
//! (`history_trimmed`), which is the truth: what it missed expired. Until
//! the first channel is freed the floor is 0 and channels start at seq 1.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::idempotency::IdempotencyTable;
use super::revocation::Revocations;
use super::{Deliver, Engine, EngineError, Epoch, HistoryPage, NewEvent, Publication, PublishAck};
use crate::protocol::{ChannelName, UserId, encode_event};
use crate::sync::{lock, read, write};

/// The sizes and lifetimes the memory engine keeps to.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    pub history_size: usize,
    pub history_ttl: Duration,
    pub idempotency_keys: usize,
}

/// One process's engine. Each channel has its own lock, held while its next
/// event is numbered, stored and handed to the hub, so publishes to
/// different channels never wait for each other.
pub struct MemoryEngine {
    epoch: Epoch,
    limits: MemoryLimits,
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<ChannelState>>>>,
    /// When each channel's oldest event expires, soonest first; one entry
    /// per channel with history.
    expiry: Mutex<BinaryHeap<Reverse<(Instant, ChannelName)>>>,
    /// The highest seq a freed channel reached; unknown channels start
    /// above it (module docs).
    floor: AtomicU64,
    idempotency: Mutex<IdempotencyTable>,
    revocations: Revocations,
    deliver: Arc<dyn Deliver>,
    /// Events held in every channel's history, for the metrics.
    retained: AtomicU64,
}

struct ChannelState {
    /// The latest seq; kept while the channel exists so seqs never restart.
    latest: u64,
    history: VecDeque<Arc<Publication>>,
    /// Local connections reading the channel (`Engine::subscribe`).
    subscribers: usize,
    /// Whether the channel has an entry in the expiry heap.
    in_expiry: bool,
    /// Set under the lock when the channel leaves the map: a publish or
    /// subscribe that fetched it just before must fetch it again.
    freed: bool,
}

impl ChannelState {
    fn new(floor: u64) -> Self {
        Self {
            latest: floor,
            history: VecDeque::new(),
            subscribers: 0,
            in_expiry: false,
            freed: false,
        }
    }

    /// Drops events older than `ttl`; returns how many.
    fn trim(&mut self, ttl: Duration, now: Instant) -> u64 {
        let mut dropped = 0;
        while let Some(front) = self.history.front() {
            if now.saturating_duration_since(front.received) < ttl {
                break;
            }
            self.history.pop_front();
            dropped += 1;
        }
        dropped
    }

    fn oldest(&self) -> u64 {
        self.history
            .front()
            .map_or(self.latest.saturating_add(1), |p| p.seq)
    }

    fn unused(&self) -> bool {
        self.history.is_empty() && self.subscribers == 0
    }
}

impl MemoryEngine {
    /// A new engine with a fresh random epoch; publications go to `deliver`.
    pub fn new(limits: MemoryLimits, deliver: Arc<dyn Deliver>) -> Self {
        Self {
            epoch: Arc::from(crate::random_hex(8)),
            limits: MemoryLimits {
                history_size: limits.history_size.max(1),
                ..limits
            },
            channels: RwLock::default(),
            expiry: Mutex::default(),
            floor: AtomicU64::new(0),
            idempotency: Mutex::new(IdempotencyTable::new(limits.idempotency_keys)),
            revocations: Revocations::default(),
            deliver,
            retained: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the live state of `name`, creating the channel if need be.
    fn with_channel<T>(&self, name: &ChannelName, f: impl FnOnce(&mut ChannelState) -> T) -> T {
        loop {
            let channel = self.channel(name);
            let mut state = lock(&channel);
            // A channel freed between the lookup and the lock is out of the
            // map; the next lookup finds (or makes) its successor.
            if !state.freed {
                return f(&mut state);
            }
        }
    }

    fn channel(&self, name: &ChannelName) -> Arc<Mutex<ChannelState>> {
        if let Some(state) = read(&self.channels).get(name) {
            return state.clone();
        }
        let floor = self.floor.load(Ordering::Relaxed);
        write(&self.channels)
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(ChannelState::new(floor))))
            .clone()
    }

    fn existing_channel(&self, name: &ChannelName) -> Option<Arc<Mutex<ChannelState>>> {
        read(&self.channels).get(name).cloned()
    }

    fn publish_one(&self, event: NewEvent) -> PublishAck {
        let now = Instant::now();
        let (publication, recipients, expires) = self.with_channel(&event.channel, |state| {
            let seq = state.latest + 1;
            let publication = Arc::new(Publication::new(
                event.channel.clone(),
                seq,
                event.event_type.clone(),
                encode_event(&event.event_type, &event.payload, &event.channel, seq),
                now,
            ));
            state.latest = seq;
            let mut dropped = state.trim(self.limits.history_ttl, now);
            if state.history.len() >= self.limits.history_size {
                state.history.pop_front();
                dropped += 1;
            }
            state.history.push_back(publication.clone());
            self.retained.fetch_add(1, Ordering::Relaxed);
            self.retained.fetch_sub(dropped, Ordering::Relaxed);
            let expires = !std::mem::replace(&mut state.in_expiry, true);
            // Still under the channel lock: the hub sees this channel's
            // events in seq order, and a connection that registered before
            // this point either gets the event live or finds it in history.
            let recipients = self.deliver.deliver(&publication);
            (publication, recipients, expires)
        });
        if expires {
            self.schedule(&publication.channel, publication.received);
        }
        PublishAck {
            channel: publication.channel.clone(),
            seq: publication.seq,
            recipients,
            duplicate: false,
        }
    }

    /// Queues `channel` to be swept when an event received at `received`
    /// outlives the ttl.
    fn schedule(&self, channel: &ChannelName, received: Instant) {
        let deadline = received
            .checked_add(self.limits.history_ttl)
            .unwrap_or(received);
        lock(&self.expiry).push(Reverse((deadline, channel.clone())));
    }

    /// Publishes a batch that carries idempotency keys, under the table's
    /// lock so two concurrent retries of one key cannot both publish.
    fn publish_keyed(&self, events: Vec<NewEvent>) -> Result<Vec<PublishAck>, EngineError> {
        let now = Instant::now();
        let mut table = lock(&self.idempotency);
        table.expire(now);
        self.publish_keyed_in(&mut table, events, 0, now)
    }

    /// A batch under its own key: the stored answers if the key is known,
    /// else the batch published (its events' keys honoured) and stored.
    fn publish_batch_keyed(
        &self,
        key: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PublishAck>, EngineError> {
        let now = Instant::now();
        let mut table = lock(&self.idempotency);
        table.expire(now);
        if let Some(acks) = table.batch(key) {
            return Ok(acks
                .iter()
                .map(|ack| PublishAck {
                    duplicate: true,
                    ..ack.clone()
                })
                .collect());
        }
        let acks = self.publish_keyed_in(&mut table, events, 1, now)?;
        table.insert_batch(key, acks.clone(), Instant::now());
        Ok(acks)
    }

    /// Publishes under the table's lock; `more_keys` slots beyond the
    /// events' own are needed (a batch's key).
    fn publish_keyed_in(
        &self,
        table: &mut IdempotencyTable,
        events: Vec<NewEvent>,
        more_keys: usize,
        now: Instant,
    ) -> Result<Vec<PublishAck>, EngineError> {
        let mut new_keys: Vec<(&ChannelName, &str)> = Vec::new();
        for event in &events {
            if let Some(key) = event.idempotency_key.as_deref()
                && table.get(&event.channel, key).is_none()
                && !new_keys.contains(&(&event.channel, key))
            {
                new_keys.push((&event.channel, key));
            }
        }
        // The whole batch or nothing: checked before the first publish.
        if let Err(retry_after) = table.room_for(new_keys.len() + more_keys, now) {
            return Err(EngineError::IdempotencyFull {
                capacity: table.capacity(),
                retry_after,
            });
        }
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let Some(key) = event.idempotency_key.clone() else {
                acks.push(self.publish_one(event));
                continue;
            };
            if let Some(ack) = table.get(&event.channel, &key) {
                acks.push(PublishAck {
                    duplicate: true,
                    ..ack.clone()
                });
                continue;
            }
            let channel = event.channel.clone();
            let ack = self.publish_one(event);
            table.insert(channel, &key, ack.clone(), Instant::now());
            acks.push(ack);
        }
        Ok(acks)
    }

    /// Drops expired events of the channels whose deadline passed; frees
    /// those left with no events and no subscribers.
    fn sweep_history(&self, now: Instant) {
        let due: Vec<ChannelName> = {
            let mut heap = lock(&self.expiry);
            let mut due = Vec::new();
            while let Some(Reverse((deadline, _))) = heap.peek() {
                if *deadline > now {
                    break;
                }
                if let Some(Reverse((_, channel))) = heap.pop() {
                    due.push(channel);
                }
            }
            due
        };
        let mut unused = Vec::new();
        for name in due {
            let Some(channel) = self.existing_channel(&name) else {
                continue;
            };
            let mut state = lock(&channel);
            state.in_expiry = false;
            let dropped = state.trim(self.limits.history_ttl, now);
            self.retained.fetch_sub(dropped, Ordering::Relaxed);
            if let Some(received) = state.history.front().map(|p| p.received) {
                state.in_expiry = true;
                drop(state);
                self.schedule(&name, received);
            } else if state.unused() {
                unused.push(name);
            }
        }
        self.free(&unused);
    }

    /// Removes the channels that are still unused, raising the floor to
    /// their latest seqs.
    fn free(&self, names: &[ChannelName]) {
        if names.is_empty() {
            return;
        }
        let mut channels = write(&self.channels);
        for name in names {
            let Some(channel) = channels.get(name).cloned() else {
                continue;
            };
            let mut state = lock(&channel);
            if !state.unused() || state.freed {
                continue;
            }
            state.freed = true;
            self.floor.fetch_max(state.latest, Ordering::Relaxed);
            drop(state);
            channels.remove(name);
        }
    }

    /// Channels the engine holds state for (tests and metrics).
    pub fn channel_count(&self) -> usize {
        read(&self.channels).len()
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
        if events.iter().any(|e| e.idempotency_key.is_some()) {
            return self.publish_keyed(events);
        }
        Ok(events.into_iter().map(|e| self.publish_one(e)).collect())
    }

    async fn publish_batch(
        &self,
        key: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PublishAck>, EngineError> {
        self.publish_batch_keyed(key, events)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let Some(state) = self.existing_channel(channel) else {
            let floor = self.floor.load(Ordering::Relaxed);
            return Ok(HistoryPage {
                events: Vec::new(),
                oldest: floor.saturating_add(1),
                latest: floor,
            });
        };
        let mut state = lock(&state);
        let dropped = state.trim(self.limits.history_ttl, Instant::now());
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
        let floor = self.floor.load(Ordering::Relaxed);
        Ok(channels
            .iter()
            .map(|c| map.get(c).map_or(floor, |s| lock(s).latest))
            .collect())
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn subscribe(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        for name in channels {
            self.with_channel(name, |state| state.subscribers += 1);
        }
        Ok(())
    }

    fn unsubscribe(&self, channels: &[ChannelName]) {
        let mut unused = Vec::new();
        for name in channels {
            let Some(channel) = self.existing_channel(name) else {
                continue;
            };
            let mut state = lock(&channel);
            state.subscribers = state.subscribers.saturating_sub(1);
            if state.unused() {
                unused.push(name.clone());
            }
        }
        self.free(&unused);
    }

    fn retained_events(&self) -> u64 {
        self.retained.load(Ordering::Relaxed)
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.sweep_history(now);
        lock(&self.idempotency).expire(now);
        self.revocations.sweep(now);
    }

    async fn revoke(&self, user: &UserId, at: u64, ttl: Duration) -> Result<(), EngineError> {
        self.revocations.revoke(user, at, ttl, Instant::now());
        Ok(())
    }

    fn revoked_at(&self, user: &UserId) -> Option<u64> {
        self.revocations.revoked_at(user, Instant::now())
    }
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

    fn limits(history_size: usize, ttl: Duration) -> MemoryLimits {
        MemoryLimits {
            history_size,
            history_ttl: ttl,
            idempotency_keys: 100,
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

    fn name(channel: &str) -> ChannelName {
        ChannelName::parse(channel).unwrap()
    }

    #[tokio::test]
    async fn seqs_history_and_trim() {
        let count = Arc::new(Count::default());
        let engine = MemoryEngine::new(limits(3, Duration::from_secs(60)), count.clone());
        for _ in 0..5 {
            engine.publish(vec![event("org:1", None)]).await.unwrap();
        }
        let ack = engine.publish(vec![event("org:2", None)]).await.unwrap();
        assert_eq!(ack[0].seq, 1);
        assert_eq!(ack[0].recipients, 3);
        let page = engine.history(&name("org:1"), 0, 100).await.unwrap();
        assert_eq!(page.oldest, 3);
        assert_eq!(page.latest, 5);
        assert_eq!(
            page.events.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let page = engine.history(&name("org:1"), 4, 100).await.unwrap();
        assert_eq!(page.events.iter().map(|p| p.seq).collect::<Vec<_>>(), [5]);
        let page = engine.history(&name("org:1"), 3, 1).await.unwrap();
        assert_eq!(page.events.iter().map(|p| p.seq).collect::<Vec<_>>(), [4]);
        let page = engine.history(&name("org:9"), 0, 100).await.unwrap();
        assert_eq!((page.oldest, page.latest, page.events.len()), (1, 0, 0));
        assert_eq!(count.0.load(Ordering::Relaxed), 6);
        assert_eq!(engine.retained_events(), 4);
    }

    #[tokio::test]
    async fn ttl_empties_history_but_keeps_latest() {
        let engine = MemoryEngine::new(limits(10, Duration::ZERO), Arc::new(Count::default()));
        engine
            .subscribe(std::slice::from_ref(&name("org:1")))
            .await
            .unwrap();
        engine
            .publish(vec![event("org:1", None), event("org:1", None)])
            .await
            .unwrap();
        let page = engine.history(&name("org:1"), 0, 100).await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!((page.oldest, page.latest), (3, 2));
    }

    #[tokio::test]
    async fn the_sweep_drops_expired_events_and_frees_unused_channels() {
        let engine = MemoryEngine::new(
            limits(10, Duration::from_millis(1)),
            Arc::new(Count::default()),
        );
        let watched = name("org:1");
        engine
            .subscribe(std::slice::from_ref(&watched))
            .await
            .unwrap();
        engine
            .publish(vec![event("org:1", None), event("org:2", None)])
            .await
            .unwrap();
        for _ in 0..40 {
            engine.publish(vec![event("org:3", None)]).await.unwrap();
        }
        assert_eq!(engine.retained_events(), 12);
        std::thread::sleep(Duration::from_millis(5));
        engine.sweep();
        assert_eq!(engine.retained_events(), 0);
        // org:1 has a subscriber and stays; org:2 and org:3 are freed.
        assert_eq!(engine.channel_count(), 1);
        assert_eq!(
            engine.latest(std::slice::from_ref(&watched)).await.unwrap(),
            [1]
        );
        // A freed channel used again continues above every seq it had, so
        // an old cursor is told its events are gone.
        let page = engine.history(&name("org:3"), 40, 10).await.unwrap();
        assert_eq!((page.latest, page.oldest), (40, 41));
        let ack = engine.publish(vec![event("org:3", None)]).await.unwrap();
        assert_eq!(ack[0].seq, 41);
        let page = engine.history(&name("org:3"), 12, 10).await.unwrap();
        assert!(
            12 + 1 < page.oldest,
            "an old cursor is behind the oldest event"
        );
        // The last subscriber leaving frees an empty channel at once.
        std::thread::sleep(Duration::from_millis(5));
        engine.sweep();
        engine.unsubscribe(std::slice::from_ref(&watched));
        assert_eq!(engine.channel_count(), 0);
    }

    #[tokio::test]
    async fn idempotency_keys_are_scoped_by_channel_and_bounded() {
        let count = Arc::new(Count::default());
        let engine = MemoryEngine::new(
            MemoryLimits {
                history_size: 10,
                history_ttl: Duration::from_secs(60),
                idempotency_keys: 2,
            },
            count.clone(),
        );
        let first = engine
            .publish(vec![event("org:1", Some("k"))])
            .await
            .unwrap();
        let again = engine
            .publish(vec![event("org:1", Some("k"))])
            .await
            .unwrap();
        let as_first = |acks: &[PublishAck]| PublishAck {
            duplicate: false,
            ..acks[0].clone()
        };
        assert!(again[0].duplicate && !first[0].duplicate);
        assert_eq!(as_first(&again), first[0]);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        let other = engine
            .publish(vec![event("org:2", Some("k"))])
            .await
            .unwrap();
        assert_eq!(other[0].channel.as_str(), "org:2");
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        // Full: a new key is refused and nothing of the batch is published.
        let full = engine
            .publish(vec![event("org:3", None), event("org:3", Some("new"))])
            .await;
        assert!(matches!(full, Err(EngineError::IdempotencyFull { .. })));
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        // Known keys are still answered.
        let known = engine
            .publish(vec![event("org:1", Some("k"))])
            .await
            .unwrap();
        assert_eq!(as_first(&known), first[0]);
    }
}
