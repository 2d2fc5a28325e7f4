//! One conformance suite for the Engine contract, run against the memory
//! engine and the Redis engine alike (the trait's documented promises).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hrrt_protocol::{ChannelName, EventType, UserId};
use hrrt_server::engine::memory::MemoryLimits;
use hrrt_server::engine::{Deliver, Engine, MemoryEngine, NewEvent, Publication, RedisEngine};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::harness::within;

/// Records what the engine hands to the node.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, u64)>>,
    changed: Notify,
}

impl Deliver for Recorder {
    fn deliver(&self, p: &Arc<Publication>) -> usize {
        self.seen
            .lock()
            .unwrap()
            .push((p.channel.to_string(), p.seq));
        self.changed.notify_waiters();
        1
    }
}

impl Recorder {
    /// Waits until `n` publications were delivered; answers them.
    async fn wait_for(&self, n: usize) -> Vec<(String, u64)> {
        within(async {
            loop {
                let notified = self.changed.notified();
                {
                    let seen = self.seen.lock().unwrap();
                    if seen.len() >= n {
                        return seen.clone();
                    }
                }
                notified.await;
            }
        })
        .await
    }
}

fn event(channel: &str, key: Option<&str>) -> NewEvent {
    NewEvent {
        channel: ChannelName::parse(channel).unwrap(),
        event_type: EventType::parse("entity.updated").unwrap(),
        payload: RawValue::from_string(r#"{"x":1}"#.to_owned()).unwrap(),
        idempotency_key: key.map(str::to_owned),
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

#[async_trait]
trait Maker {
    async fn make(
        &self,
        history_size: usize,
        ttl: Duration,
        deliver: Arc<Recorder>,
    ) -> Arc<dyn Engine>;
}

struct Memory {
    idempotency_keys: usize,
}

#[async_trait]
impl Maker for Memory {
    async fn make(
        &self,
        history_size: usize,
        ttl: Duration,
        deliver: Arc<Recorder>,
    ) -> Arc<dyn Engine> {
        let limits = MemoryLimits {
            history_size,
            history_ttl: ttl,
            idempotency_keys: self.idempotency_keys,
        };
        Arc::new(MemoryEngine::new(limits, deliver))
    }
}

struct Redis {
    url: String,
    idempotency_keys: usize,
}

#[async_trait]
impl Maker for Redis {
    async fn make(
        &self,
        history_size: usize,
        ttl: Duration,
        deliver: Arc<Recorder>,
    ) -> Arc<dyn Engine> {
        let options = hrrt_server::engine::redis::RedisOptions {
            url: &self.url,
            ca: None,
            node_id: "conformance",
            history_size,
            history_ttl: ttl,
            idempotency_keys: self.idempotency_keys,
        };
        let engine = RedisEngine::connect(options, deliver).await.unwrap();
        // What a node does: run the engine's tasks (its subscriber).
        for (_, task) in engine.background_tasks() {
            tokio::spawn(task());
        }
        Arc::new(engine)
    }
}

/// The contract, checked on fresh channels (`prefix` keeps runs apart).
async fn conformance(maker: &dyn Maker, prefix: &str) {
    let recorder = Arc::new(Recorder::default());
    let engine = maker
        .make(3, Duration::from_secs(3600), recorder.clone())
        .await;
    let (a, b) = (format!("org:{prefix}a"), format!("user:{prefix}b"));
    engine.subscribe(&[ch(&a), ch(&b)]).await.unwrap();
    assert!(engine.ready().await);
    assert!(!engine.epoch().is_empty());

    // Seqs start at 1 per channel and grow by one; a batch keeps its order.
    let acks = engine
        .publish(vec![event(&a, None), event(&b, None), event(&a, None)])
        .await
        .unwrap();
    assert_eq!(
        acks.iter()
            .map(|x| (x.channel.to_string(), x.seq))
            .collect::<Vec<_>>(),
        [(a.clone(), 1), (b.clone(), 1), (a.clone(), 2)]
    );
    // Every publication reaches the node, in seq order per channel.
    let seen = recorder.wait_for(3).await;
    let of_a: Vec<u64> = seen
        .iter()
        .filter(|(c, _)| *c == a)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(of_a, [1, 2]);

    // History: at most history_size, oldest first, after `since`.
    for _ in 0..3 {
        engine.publish(vec![event(&a, None)]).await.unwrap();
    }
    let page = engine.history(&ch(&a), 0, 100).await.unwrap();
    assert_eq!((page.oldest, page.latest), (3, 5));
    assert_eq!(
        page.events.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let page = engine.history(&ch(&a), 3, 1).await.unwrap();
    assert_eq!(page.events.iter().map(|p| p.seq).collect::<Vec<_>>(), [4]);
    let frame: serde_json::Value = serde_json::from_str(page.events[0].frame.as_str()).unwrap();
    assert_eq!(
        (frame["seq"].as_u64(), frame["channel"].as_str()),
        (Some(4), Some(a.as_str()))
    );

    // Latest positions, 0 for a channel never published to.
    let never = format!("org:{prefix}never");
    assert_eq!(
        engine.latest(&[ch(&a), ch(&b), ch(&never)]).await.unwrap(),
        [5, 1, 0]
    );
    let empty = engine.history(&ch(&never), 0, 10).await.unwrap();
    assert_eq!((empty.oldest, empty.latest, empty.events.len()), (1, 0, 0));

    // An idempotency key publishes once and answers the same.
    let key = format!("{prefix}key");
    let first = engine.publish(vec![event(&b, Some(&key))]).await.unwrap();
    let again = engine.publish(vec![event(&b, Some(&key))]).await.unwrap();
    assert_eq!(first[0].seq, again[0].seq);
    assert_eq!(engine.latest(&[ch(&b)]).await.unwrap(), [2]);
    // Keys are scoped by channel: the same key on another channel is
    // another publish.
    let elsewhere = engine.publish(vec![event(&a, Some(&key))]).await.unwrap();
    assert_eq!(
        (elsewhere[0].channel.to_string(), elsewhere[0].seq),
        (a.clone(), 6)
    );
    engine.unsubscribe(&[ch(&a), ch(&b)]);

    // Revocation: tokens up to a moment are refused for the ttl.
    let user = UserId::new(&format!("{prefix}-revoked")).unwrap();
    assert_eq!(engine.revoked_at(&user), None);
    engine
        .revoke(&user, 1_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(engine.revoked_at(&user), Some(1_000));
}

/// Events older than history_ttl leave the history; seqs go on.
async fn retention(maker: &dyn Maker, prefix: &str) {
    let engine = maker
        .make(
            100,
            Duration::from_millis(100),
            Arc::new(Recorder::default()),
        )
        .await;
    let a = format!("org:{prefix}ttl");
    engine
        .publish(vec![event(&a, None), event(&a, None)])
        .await
        .unwrap();
    // The retention window is the behaviour under test: let it pass.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let page = engine.history(&ch(&a), 0, 100).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!((page.oldest, page.latest), (3, 2));
    assert_eq!(
        engine.publish(vec![event(&a, None)]).await.unwrap()[0].seq,
        3
    );
}

/// Idempotency keys: scoped by channel however ids are spelt, and bounded
/// by `--idempotency-keys` (a full table refuses a new key, whole batch
/// and all, and never forgets a live one). The maker's table holds 5.
async fn idempotency(maker: &dyn Maker, prefix: &str) {
    let engine = maker
        .make(
            100,
            Duration::from_secs(3600),
            Arc::new(Recorder::default()),
        )
        .await;
    // Org `7` with key `x:k` and org `7:x` with key `k` are two publishes.
    let (seven, seven_x) = (format!("org:{prefix}7"), format!("org:{prefix}7:x"));
    let one = engine
        .publish(vec![event(&seven, Some("x:k"))])
        .await
        .unwrap();
    let two = engine
        .publish(vec![event(&seven_x, Some("k"))])
        .await
        .unwrap();
    assert_eq!(two[0].channel.to_string(), seven_x);
    assert_eq!((one[0].seq, two[0].seq), (1, 1));
    assert_eq!(engine.latest(&[ch(&seven_x)]).await.unwrap(), [1]);
    // Three more keys fill the table of five; the sixth is refused, and so
    // is a batch carrying it, with nothing of the batch published.
    for key in ["a", "b", "c"] {
        engine
            .publish(vec![event(&seven, Some(key))])
            .await
            .unwrap();
    }
    let full = engine.publish(vec![event(&seven, Some("d"))]).await;
    match full {
        Err(hrrt_server::engine::EngineError::IdempotencyFull {
            capacity,
            retry_after,
        }) => {
            assert_eq!(capacity, 5);
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(300));
        }
        other => panic!("a sixth key was not refused: {other:?}"),
    }
    let batch = engine
        .publish(vec![event(&seven, None), event(&seven, Some("e"))])
        .await;
    assert!(batch.is_err());
    assert_eq!(engine.latest(&[ch(&seven)]).await.unwrap(), [4]);
    // Known keys still answer what they first did; keyless events go on.
    let again = engine
        .publish(vec![event(&seven, Some("x:k"))])
        .await
        .unwrap();
    assert!(again[0].duplicate && !one[0].duplicate, "{again:?}");
    assert_eq!(
        (&again[0].channel, again[0].seq),
        (&one[0].channel, one[0].seq)
    );
    assert_eq!(
        engine.publish(vec![event(&seven, None)]).await.unwrap()[0].seq,
        5
    );
}

/// A batch under its own key: one slot of the table, a retry answers the
/// first answers (duplicate) and publishes nothing. The maker's table
/// holds 5.
async fn batch_keys(maker: &dyn Maker, prefix: &str) {
    let engine = maker
        .make(
            100,
            Duration::from_secs(3600),
            Arc::new(Recorder::default()),
        )
        .await;
    let (org, user) = (format!("org:{prefix}b7"), format!("user:{prefix}u1"));
    let events = || vec![event(&org, None), event(&org, None), event(&user, None)];
    let first = engine.publish_batch("b1", events()).await.unwrap();
    let seqs = |acks: &[hrrt_server::engine::PublishAck]| {
        acks.iter()
            .map(|a| (a.channel.to_string(), a.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(&first),
        [(org.clone(), 1), (org.clone(), 2), (user.clone(), 1)]
    );
    assert!(first.iter().all(|a| !a.duplicate));
    let again = engine.publish_batch("b1", events()).await.unwrap();
    assert_eq!(seqs(&again), seqs(&first));
    assert!(again.iter().all(|a| a.duplicate), "{again:?}");
    assert_eq!(engine.latest(&[ch(&org)]).await.unwrap(), [2]);
    // One slot: four event keys still fit, then another batch key does not.
    for key in ["a", "b", "c", "d"] {
        engine.publish(vec![event(&org, Some(key))]).await.unwrap();
    }
    let full = engine.publish_batch("b2", events()).await;
    assert!(
        matches!(
            full,
            Err(hrrt_server::engine::EngineError::IdempotencyFull { .. })
        ),
        "{full:?}"
    );
    assert_eq!(engine.latest(&[ch(&org)]).await.unwrap(), [6]);
    assert!(engine.publish_batch("b1", events()).await.unwrap()[0].duplicate);
}

#[tokio::test]
async fn the_memory_engine_keeps_the_contract() {
    let maker = Memory {
        idempotency_keys: 1000,
    };
    conformance(&maker, "m").await;
    retention(&maker, "m").await;
    idempotency(
        &Memory {
            idempotency_keys: 5,
        },
        "m",
    )
    .await;
    batch_keys(
        &Memory {
            idempotency_keys: 5,
        },
        "m",
    )
    .await;
}

#[tokio::test]
async fn the_redis_engine_keeps_the_contract() {
    let Some(redis) = crate::redis::TestRedis::start_or_skip(false).await else {
        return;
    };
    let maker = Redis {
        url: redis.url(),
        idempotency_keys: 1000,
    };
    conformance(&maker, "r").await;
    retention(&maker, "r").await;
    // Its own database: the bound counts every key of the Redis.
    let small = Redis {
        url: format!("{}1", redis.url()),
        idempotency_keys: 5,
    };
    idempotency(&small, "r").await;
    let batches = Redis {
        url: format!("{}2", redis.url()),
        idempotency_keys: 5,
    };
    batch_keys(&batches, "r").await;
}
