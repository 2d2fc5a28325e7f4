//! Counters behind `GET /metrics` (Prometheus/OpenMetrics text, through
//! `prometheus-client`) and `GET /api/stats` (JSON).
//!
//! Everything here is updated at most once per publish, per connection
//! event or per socket flush, never once per delivered frame.
//!
//! Cardinality is bounded whatever publishers and clients do: event types
//! are labelled with the six seed types or `other` ([`LABELLED_TYPES`]), and
//! per-org connection gauges are written at scrape time for the
//! [`METRIC_ORGS`] orgs with the most connections only. `/api/stats` keeps
//! every org, and up to [`STATS_TYPES`] event types (then `other`).

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

use crate::sync::lock;

/// Orgs that get an `hrrt_org_connections` series: the busiest ones.
pub const METRIC_ORGS: usize = 100;

/// Distinct event types `/api/stats` counts one by one; later ones are
/// counted under `other`.
pub const STATS_TYPES: usize = 1000;

/// The event types that get a label of their own; every other type is
/// `other`. *compat*: the seed's six.
/// Counters per type: the seed types, then `other`.
const TYPES: usize = LABELLED_TYPES.len() + 1;

pub const LABELLED_TYPES: [&str; 6] = [
    "entity.created",
    "entity.updated",
    "entity.deleted",
    "chat.message",
    "share.created",
    "share.revoked",
];

/// Index into the per-type counter arrays: the seed types, then `other`.
fn type_index(event_type: &str) -> usize {
    LABELLED_TYPES
        .iter()
        .position(|t| *t == event_type)
        .unwrap_or(LABELLED_TYPES.len())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabel {
    org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// What kind of connection a write timeout closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    Http,
    WebSocket,
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
    /// Rewritten at every scrape ([`Metrics::set_org_connections`]).
    connections_by_org: Family<OrgLabel, Gauge>,
    connections_opened: Counter,
    /// Per type label, in [`type_index`] order.
    published: [Counter; LABELLED_TYPES.len() + 1],
    delivered: [Counter; LABELLED_TYPES.len() + 1],
    delivery_latency: Histogram,
    direct_writes: Counter,
    coalescing: Gauge,
    task_restarts: Counter,
    closes: Family<CloseLabel, Counter>,
    slow_consumer_closes: Counter,
    /// HTTP, then WebSocket.
    write_timeouts: [Counter; 2],
    history_events: Gauge,
    watchers: Gauge,
    /// For `/api/stats`, which needs to list what Prometheus families hide.
    by_type: Mutex<HashMap<String, TypeCounts>>,
    closes_by_code: Mutex<HashMap<u16, u64>>,
    slow_consumers: AtomicU64,
    /// Held by a scrape from rewriting the per-org gauges to encoding, so
    /// two scrapes never see each other's half-written set.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("hrrt");
        let connections = registered(
            &mut r,
            "connections",
            "Live WebSocket connections",
            Gauge::default(),
        );
        let connections_by_org = registered(
            &mut r,
            "org_connections",
            "Live WebSocket connections per organisation",
            Family::<OrgLabel, Gauge>::default(),
        );
        let connections_opened = registered(
            &mut r,
            "connections_opened",
            "WebSocket connections accepted",
            Counter::default(),
        );
        let (published, delivered) = type_counters(&mut r);
        let task_restarts = registered(
            &mut r,
            "task_restarts",
            "Background tasks that ended unexpectedly and were restarted",
            Counter::default(),
        );
        // Registered without a unit: the `# UNIT` line of OpenMetrics trips
        // up classic Prometheus-text parsers; the name carries the unit.
        // Buckets from 50 µs to ~26 s: loopback deliveries through
        // multi-second stalls.
        let delivery_latency = registered(
            &mut r,
            "delivery_latency_seconds",
            "Time from an event reaching this node to its frame being flushed to a socket",
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
        );
        let direct_writes = registered(
            &mut r,
            "direct_writes",
            "Event frames the fan-out wrote straight to an idle socket, without queueing \
             them for the connection's session",
            Counter::default(),
        );
        let coalescing = registered(
            &mut r,
            "fanout_coalescing",
            "1 while the node is saturated and queues every event for the sessions to write \
             several frames per send, 0 while it writes to idle sockets directly",
            Gauge::default(),
        );
        let closes = registered(
            &mut r,
            "closes",
            "WebSocket connections closed, by close code and side",
            Family::<CloseLabel, Counter>::default(),
        );
        let slow_consumer_closes = registered(
            &mut r,
            "slow_consumer_closes",
            "Connections closed with 1013 because their send queue was full",
            Counter::default(),
        );
        let history_events = registered(
            &mut r,
            "history_events",
            "Events held in history by the engine",
            Gauge::default(),
        );
        let watchers = registered(
            &mut r,
            "watchers",
            "Admin watch connections (orgs=, such as hrrt dash), counted apart from the orgs",
            Gauge::default(),
        );
        let write_timeouts = write_timeout_counters(&mut r);
        Self {
            registry: r,
            connections,
            connections_by_org,
            connections_opened,
            published,
            delivered,
            delivery_latency,
            direct_writes,
            coalescing,
            task_restarts,
            closes,
            slow_consumer_closes,
            write_timeouts,
            history_events,
            watchers,
            by_type: Mutex::default(),
            closes_by_code: Mutex::default(),
            slow_consumers: AtomicU64::new(0),
            scrape: Mutex::new(()),
        }
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
        self.connections_opened.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Admin watch connections now (written at scrape time).
    pub fn set_watchers(&self, n: usize) {
        self.watchers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A connection was closed by `--write-timeout`.
    pub fn write_timeout(&self, kind: ConnectionKind) {
        let i = match kind {
            ConnectionKind::Http => 0,
            ConnectionKind::WebSocket => 1,
        };
        self.write_timeouts[i].inc();
    }

    /// Replaces the per-org gauges with `by_org`'s [`METRIC_ORGS`] largest.
    pub fn set_org_connections(&self, by_org: &[(&str, usize)]) {
        let mut top: Vec<&(&str, usize)> = by_org.iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        self.connections_by_org.clear();
        for (org, n) in top.into_iter().take(METRIC_ORGS) {
            self.connections_by_org
                .get_or_create(&OrgLabel {
                    org: (*org).to_owned(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    pub fn published(&self, event_type: &str) {
        self.published[type_index(event_type)].inc();
        self.count_type(event_type, |c| c.published += 1);
    }

    pub fn delivered(&self, event_type: &str, recipients: usize) {
        if recipients == 0 {
            return;
        }
        let n = recipients as u64;
        self.delivered[type_index(event_type)].inc_by(n);
        self.count_type(event_type, |c| c.delivered += n);
    }

    /// Counts for `/api/stats` under the type's own name, or `other` once
    /// [`STATS_TYPES`] names are taken.
    fn count_type(&self, event_type: &str, f: impl FnOnce(&mut TypeCounts)) {
        let mut by_type = lock(&self.by_type);
        if let Some(counts) = by_type.get_mut(event_type) {
            return f(counts);
        }
        // The seed types always count under their own name.
        let name = if by_type.len() < STATS_TYPES || type_index(event_type) < LABELLED_TYPES.len() {
            event_type
        } else {
            "other"
        };
        f(by_type.entry(name.to_owned()).or_default());
    }

    /// A background task ended unexpectedly and is being restarted.
    pub fn task_restarted(&self) {
        self.task_restarts.inc();
    }

    /// One observation per flush: the age of the oldest frame flushed.
    pub fn delivery_latency(&self, latency: Duration) {
        self.delivery_latency.observe(latency.as_secs_f64());
    }

    pub fn set_coalescing(&self, on: bool) {
        self.coalescing.set(i64::from(on));
    }

    /// An event's `count` direct writes, the last made `latency` after the
    /// event arrived: counted, and one latency observation (they are one
    /// flush, as far as the histogram goes).
    pub fn direct_writes(&self, count: usize, latency: Duration) {
        self.direct_writes.inc_by(count as u64);
        self.delivery_latency(latency);
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

    /// The exposition of a scrape: the gauges that are read, not counted
    /// (history size, connections of the busiest orgs), then everything.
    pub fn scrape(
        &self,
        history_events: u64,
        by_org: &[(&str, usize)],
    ) -> Result<String, std::fmt::Error> {
        let _one_at_a_time = lock(&self.scrape);
        self.set_history_events(history_events);
        self.set_org_connections(by_org);
        self.encode()
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The published and delivered counters, one per seed type and `other`.
fn type_counters(r: &mut Registry) -> ([Counter; TYPES], [Counter; TYPES]) {
    let published_family = registered(
        r,
        "events_published",
        "Events published through this node, by type (seed types, else other)",
        Family::<TypeLabel, Counter>::default(),
    );
    let delivered_family = registered(
        r,
        "events_delivered",
        "Event frames handed to connections of this node, by type (seed types, else other)",
        Family::<TypeLabel, Counter>::default(),
    );
    // One counter per label, created up front: the hot path indexes
    // an array instead of hashing a label set.
    let label = |i: usize| TypeLabel {
        r#type: LABELLED_TYPES.get(i).copied().unwrap_or("other"),
    };
    let published: [Counter; TYPES] =
        std::array::from_fn(|i| published_family.get_or_create(&label(i)).clone());
    let delivered: [Counter; TYPES] =
        std::array::from_fn(|i| delivered_family.get_or_create(&label(i)).clone());
    (published, delivered)
}

/// The write-timeout counters: HTTP, then WebSocket.
fn write_timeout_counters(r: &mut Registry) -> [Counter; 2] {
    let write_timeouts_family = registered(
        r,
        "write_timeouts",
        "Connections closed because the client took none of the server's bytes for \
         --write-timeout, by kind (http, websocket)",
        Family::<KindLabel, Counter>::default(),
    );
    // One statement each: `get_or_create` answers a read guard, and a
    // second call while it is held would wait for it for ever.
    let http = write_timeouts_family
        .get_or_create(&KindLabel { kind: "http" })
        .clone();
    let websocket = write_timeouts_family
        .get_or_create(&KindLabel { kind: "websocket" })
        .clone();
    [http, websocket]
}

/// Registers `metric` under `name` and answers it (the registry holds a
/// handle to the same metric).
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cardinality_is_bounded() {
        let m = Metrics::new();
        for i in 0..(STATS_TYPES + 50) {
            m.published(&format!("custom.t{i}"));
        }
        m.published("entity.created");
        let text = m.encode().unwrap();
        let published: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("hrrt_events_published_total{"))
            .collect();
        assert_eq!(published.len(), 7, "{published:?}");
        assert!(text.contains(r#"hrrt_events_published_total{type="other"} 1050"#));
        let by_type = m.by_type();
        assert_eq!(by_type.len(), STATS_TYPES + 2);
        assert_eq!(by_type["entity.created"].published, 1);
        assert_eq!(by_type["other"].published, 50);

        let orgs: Vec<(String, usize)> = (0..300).map(|i| (format!("o{i}"), i)).collect();
        let orgs: Vec<(&str, usize)> = orgs.iter().map(|(o, n)| (o.as_str(), *n)).collect();
        m.set_org_connections(&orgs);
        let text = m.encode().unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("hrrt_org_connections{"))
            .count();
        assert_eq!(series, METRIC_ORGS);
        assert!(text.contains(r#"hrrt_org_connections{org="o299"} 299"#));
        assert!(!text.contains(r#"org="o199""#));
    }
}
