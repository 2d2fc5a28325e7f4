//! Counters behind `GET /metrics` (Prometheus/OpenMetrics text, through
//! `prometheus-client`) and `GET /api/stats` (JSON).
//!
//! Everything here is updated at most once per publish, per connection
//! event or per socket flush, never once per delivered frame.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabel {
    org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    code: String,
    /// `server` when the server sent the close, `client` otherwise.
    by: String,
}

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Server,
    Client,
}

/// Published and delivered counts of one event type.
#[derive(Debug, Default, Clone, Copy)]
pub struct TypeCounts {
    pub published: u64,
    pub delivered: u64,
}

/// The node's metrics registry and the counters the stats API reads.
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    connections_by_org: Family<OrgLabel, Gauge>,
    connections_opened: Counter,
    published: Family<TypeLabel, Counter>,
    delivered: Family<TypeLabel, Counter>,
    delivery_latency: Histogram,
    closes: Family<CloseLabel, Counter>,
    slow_consumer_closes: Counter,
    history_events: Gauge,
    /// For `/api/stats`, which needs to list what Prometheus families hide.
    by_type: Mutex<HashMap<String, TypeCounts>>,
    closes_by_code: Mutex<HashMap<u16, u64>>,
    slow_consumers: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hrrt");
        let connections = Gauge::default();
        let connections_by_org = Family::<OrgLabel, Gauge>::default();
        let connections_opened = Counter::default();
        let published = Family::<TypeLabel, Counter>::default();
        let delivered = Family::<TypeLabel, Counter>::default();
        // 50 µs to ~26 s: loopback deliveries through multi-second stalls.
        let delivery_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        let closes = Family::<CloseLabel, Counter>::default();
        let slow_consumer_closes = Counter::default();
        let history_events = Gauge::default();
        registry.register(
            "connections",
            "Live WebSocket connections",
            connections.clone(),
        );
        registry.register(
            "org_connections",
            "Live WebSocket connections per organisation",
            connections_by_org.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            connections_opened.clone(),
        );
        registry.register(
            "events_published",
            "Events published through this node",
            published.clone(),
        );
        registry.register(
            "events_delivered",
            "Event frames handed to connections of this node",
            delivered.clone(),
        );
        // Registered without a unit: the `# UNIT` line of OpenMetrics trips
        // up classic Prometheus-text parsers; the name carries the unit.
        registry.register(
            "delivery_latency_seconds",
            "Time from an event reaching this node to its frame being flushed to a socket",
            delivery_latency.clone(),
        );
        registry.register(
            "closes",
            "WebSocket connections closed, by close code and side",
            closes.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed with 1013 because their send queue was full",
            slow_consumer_closes.clone(),
        );
        registry.register(
            "history_events",
            "Events held in history by the engine",
            history_events.clone(),
        );
        Self {
            registry,
            connections,
            connections_by_org,
            connections_opened,
            published,
            delivered,
            delivery_latency,
            closes,
            slow_consumer_closes,
            history_events,
            by_type: Mutex::default(),
            closes_by_code: Mutex::default(),
            slow_consumers: AtomicU64::new(0),
        }
    }

    pub fn connection_opened(&self, org: &str) {
        self.connections.inc();
        self.connections_opened.inc();
        self.connections_by_org
            .get_or_create(&OrgLabel {
                org: org.to_owned(),
            })
            .inc();
    }

    pub fn connection_closed(&self, org: &str) {
        self.connections.dec();
        self.connections_by_org
            .get_or_create(&OrgLabel {
                org: org.to_owned(),
            })
            .dec();
    }

    pub fn published(&self, event_type: &str) {
        self.published
            .get_or_create(&TypeLabel {
                r#type: event_type.to_owned(),
            })
            .inc();
        lock(&self.by_type)
            .entry(event_type.to_owned())
            .or_default()
            .published += 1;
    }

    pub fn delivered(&self, event_type: &str, recipients: usize) {
        if recipients == 0 {
            return;
        }
        let n = recipients as u64;
        self.delivered
            .get_or_create(&TypeLabel {
                r#type: event_type.to_owned(),
            })
            .inc_by(n);
        lock(&self.by_type)
            .entry(event_type.to_owned())
            .or_default()
            .delivered += n;
    }

    /// One observation per flush: the age of the oldest frame flushed.
    pub fn delivery_latency(&self, latency: Duration) {
        self.delivery_latency.observe(latency.as_secs_f64());
    }

    pub fn closed(&self, code: u16, by: ClosedBy) {
        let by = match by {
            ClosedBy::Server => "server",
            ClosedBy::Client => "client",
        };
        self.closes
            .get_or_create(&CloseLabel {
                code: code.to_string(),
                by: by.to_owned(),
            })
            .inc();
        *lock(&self.closes_by_code).entry(code).or_default() += 1;
    }

    pub fn slow_consumer(&self) {
        self.slow_consumer_closes.inc();
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_history_events(&self, events: u64) {
        self.history_events
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    pub fn by_type(&self) -> HashMap<String, TypeCounts> {
        lock(&self.by_type).clone()
    }

    pub fn closes_by_code(&self) -> HashMap<u16, u64> {
        lock(&self.closes_by_code).clone()
    }

    pub fn slow_consumer_closes(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
