//! The load test's report, its human form, and `--fail-on` thresholds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::output::{BOLD, DIM, ERROR, NOTE, paint};

/// What the phases of a run measured, before any arithmetic: the input of
/// [`build`].
pub struct Measured {
    pub run_id: String,
    pub url: String,
    /// Per node of `--nodes` (one entry without it).
    pub nodes: Vec<NodeMeasured>,
    pub config: RunConfig,
    pub interrupted: bool,
    /// Connections opened, and why the others failed.
    pub opened: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub connect_ms: Percentiles,
    pub connect_seconds: f64,
    /// Events the server accepted, per org (index as in the run's orgs).
    pub published_per_org: Vec<u64>,
    pub publish_failures: BTreeMap<String, u64>,
    pub publish_seconds: f64,
    /// From the first publish to the end of the drain.
    pub delivery_seconds: f64,
    /// What each connection received.
    pub outcomes: Vec<super::ConnOutcome>,
    pub latency_ms: Percentiles,
    pub user_latency_ms: Percentiles,
    /// Deliveries replayed after a resume, in neither latency above.
    pub replayed_latency_ms: Percentiles,
    pub last_recipient_ms: Percentiles,
    pub server: Option<ServerSamples>,
}

/// What one node of `--nodes` measured.
pub struct NodeMeasured {
    pub url: String,
    pub opened: u64,
    /// Empty with one node (the run's own latency is the node's).
    pub latency_ms: Percentiles,
}

/// The user-channel events of `--user-rate`: each to one connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserEventReport {
    pub published: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub latency_ms: Percentiles,
}

/// What `--churn` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnReport {
    pub resumes: u64,
    pub resyncs: BTreeMap<String, u64>,
    /// Deliveries replayed after a resume (org and user channels: events
    /// published before the connection came back); their latency is
    /// mostly the time away, so `latency_ms`, the user events' and
    /// `last_recipient_ms` are of live deliveries only.
    pub replayed_latency_ms: Percentiles,
}

/// One node's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub url: String,
    pub connections: u64,
    pub latency_ms: Percentiles,
    /// Events its connections should have had and did not.
    pub lost: u64,
}

/// The server's RSS (KiB) and CPU seconds before connecting, with every
/// connection open, and at the end.
pub struct ServerSamples {
    pub pid: u32,
    pub rss_kib: [u64; 3],
    pub cpu_seconds: [f64; 3],
}

/// The report of a run: what was lost, duplicated or reordered per
/// connection against what its org published, rates, the server's cost,
/// and the thresholds. Pure: no clock, no I/O.
pub fn build(m: Measured, thresholds: &[Threshold]) -> Report {
    let publish_errors = m.publish_failures.values().sum();
    let mut events = EventReport {
        published: m.published_per_org.iter().sum(),
        publish_errors,
        publish_failures: m.publish_failures,
        ..EventReport::default()
    };
    let mut closed_early: BTreeMap<String, u64> = BTreeMap::new();
    let mut churn = ChurnReport {
        replayed_latency_ms: m.replayed_latency_ms,
        ..ChurnReport::default()
    };
    let mut user = UserEventReport {
        latency_ms: m.user_latency_ms,
        ..UserEventReport::default()
    };
    let mut nodes: Vec<NodeReport> = if m.nodes.len() > 1 {
        m.nodes
            .into_iter()
            .map(|n| NodeReport {
                url: n.url,
                connections: n.opened,
                latency_ms: n.latency_ms,
                lost: 0,
            })
            .collect()
    } else {
        Vec::new()
    };
    for outcome in &m.outcomes {
        let expected = m.published_per_org.get(outcome.org).copied().unwrap_or(0);
        churn.resumes += outcome.resumes;
        user.published += outcome.user_published;
        user.delivered += outcome.user_tally.unique.min(outcome.user_published);
        user.lost += outcome.user_tally.lost(outcome.user_published);
        user.duplicated += outcome.user_tally.duplicates;
        for (reason, n) in &outcome.resyncs {
            *churn.resyncs.entry(reason.clone()).or_default() += n;
        }
        if let Some(node) = nodes.get_mut(outcome.node) {
            node.lost += outcome.tally.lost(expected);
        }
        events.expected_deliveries += expected;
        events.delivered += outcome.tally.unique.min(expected);
        events.lost += outcome.tally.lost(expected);
        events.duplicated += outcome.tally.duplicates;
        events.out_of_order += outcome.tally.out_of_order;
        if let Some(why) = &outcome.closed_early {
            *closed_early.entry(why.clone()).or_default() += 1;
        }
    }
    let server = m
        .server
        .map(|s| server_report(&s, m.opened, events.delivered));
    let requested = m.config.connections;
    let mut report = Report {
        run_id: m.run_id,
        url: m.url,
        interrupted: m.interrupted,
        connections: ConnectionReport {
            requested,
            ok: m.opened,
            failed: requested.saturating_sub(m.opened),
            failures: m.connect_failures,
            closed_early,
            connect_ms: m.connect_ms,
            connects_per_s: per_second(m.opened as f64, m.connect_seconds),
        },
        latency_ms: m.latency_ms,
        last_recipient_ms: m.last_recipient_ms,
        nodes,
        churn: (m.config.churn > 0.0).then_some(churn),
        user_events: (m.config.user_rate > 0.0).then_some(user),
        throughput: Throughput {
            publish_rate: per_second(events.published as f64, m.publish_seconds),
            deliveries_per_s: per_second(events.delivered as f64, m.delivery_seconds),
            publish_seconds: m.publish_seconds,
        },
        config: m.config,
        events,
        server,
        thresholds: Vec::new(),
        passed: false,
    };
    report.thresholds = thresholds.iter().map(|t| t.check(&report)).collect();
    report.passed = report.clean();
    report
}

fn per_second(n: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { n / seconds } else { 0.0 }
}

/// What the server's /proc samples say: memory per connection, and the
/// CPU the publish phase (and the connects) cost.
fn server_report(s: &ServerSamples, opened: u64, delivered: u64) -> ServerReport {
    let [before, connected, end] = s.rss_kib;
    let cpu = s.cpu_seconds[2] - s.cpu_seconds[1];
    ServerReport {
        pid: s.pid,
        rss_kib_before: before,
        rss_kib_connected: connected,
        rss_kib_end: end,
        rss_per_connection_kib: if opened > 0 {
            (connected as f64 - before as f64) / opened as f64
        } else {
            0.0
        },
        cpu_seconds: cpu,
        deliveries_per_cpu_second: per_second(delivered as f64, cpu),
        connect_cpu_seconds: s.cpu_seconds[1] - s.cpu_seconds[0],
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub url: String,
    pub config: RunConfig,
    /// Whether the run was cut short (Ctrl-C).
    pub interrupted: bool,
    pub connections: ConnectionReport,
    pub events: EventReport,
    /// Delivery latency: from the publisher's clock at send to the
    /// receiving connection's clock at arrival (one machine, one clock);
    /// live deliveries only (a resume's replays are in `churn`).
    pub latency_ms: Percentiles,
    /// Per event, the latency of its last recipient: how long one event
    /// takes to reach every connection of its org.
    pub last_recipient_ms: Percentiles,
    /// Per node of `--nodes`; empty for one node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    /// With `--churn`: resumes, and the resyncs they were answered with
    /// (what a resync covers is not counted lost, by the SPEC's definition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    /// With `--user-rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_events: Option<UserEventReport>,
    pub throughput: Throughput,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerReport>,
    pub thresholds: Vec<ThresholdResult>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub connections: u64,
    pub orgs: u64,
    pub rate: f64,
    pub duration_s: f64,
    pub batch: u64,
    pub connect_rate: u64,
    pub source_ips: Vec<String>,
    pub churn: f64,
    pub user_rate: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionReport {
    pub requested: u64,
    pub ok: u64,
    pub failed: u64,
    /// Why connections failed to open, with counts.
    pub failures: BTreeMap<String, u64>,
    /// Connections that were open and closed before the end, by close.
    pub closed_early: BTreeMap<String, u64>,
    pub connect_ms: Percentiles,
    pub connects_per_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EventReport {
    pub published: u64,
    pub publish_errors: u64,
    /// Why publishes failed, with counts.
    pub publish_failures: BTreeMap<String, u64>,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    /// Events published per second over the publish phase.
    pub publish_rate: f64,
    /// Deliveries per second from the first publish to the last delivery.
    pub deliveries_per_s: f64,
    pub publish_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    pub rss_kib_before: u64,
    pub rss_kib_connected: u64,
    pub rss_kib_end: u64,
    /// (RSS with every connection open − RSS before) / connections.
    pub rss_per_connection_kib: f64,
    /// Server CPU seconds (user + system) from the first publish to the
    /// end of the drain.
    pub cpu_seconds: f64,
    pub deliveries_per_cpu_second: f64,
    pub connect_cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdResult {
    pub rule: String,
    pub value: f64,
    pub passed: bool,
}

/// One `--fail-on` rule, e.g. `p99<20ms` or `lost=0`.
#[derive(Debug, Clone)]
pub struct Threshold {
    rule: String,
    metric: Metric,
    op: Op,
    limit: f64,
}

#[derive(Debug, Clone, Copy)]
enum Metric {
    Latency(fn(&Percentiles) -> f64),
    Lost,
    Duplicated,
    OutOfOrder,
    Failed,
    PublishErrors,
    DeliveriesPerSecond,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// Parses `p99<20ms,lost=0`.
pub fn parse_thresholds(spec: &str) -> anyhow::Result<Vec<Threshold>> {
    spec.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(parse_threshold)
        .collect()
}

fn parse_threshold(rule: &str) -> anyhow::Result<Threshold> {
    let (pos, op, len) = ["<=", ">=", "<", ">", "="]
        .iter()
        .find_map(|op| rule.find(op).map(|pos| (pos, *op, op.len())))
        .with_context(|| format!("--fail-on rule '{rule}' needs <, <=, >, >= or ="))?;
    let name = rule[..pos].trim();
    let value = rule[pos + len..].trim();
    let op = match op {
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        _ => Op::Eq,
    };
    let metric = match name {
        "p50" => Metric::Latency(|p| p.p50),
        "p90" => Metric::Latency(|p| p.p90),
        "p99" => Metric::Latency(|p| p.p99),
        "p99.9" | "p999" => Metric::Latency(|p| p.p99_9),
        "max" => Metric::Latency(|p| p.max),
        "lost" => Metric::Lost,
        "duplicated" => Metric::Duplicated,
        "out_of_order" => Metric::OutOfOrder,
        "failed" => Metric::Failed,
        "publish_errors" => Metric::PublishErrors,
        "deliveries_per_s" => Metric::DeliveriesPerSecond,
        other => bail!(
            "--fail-on: unknown metric '{other}' (p50, p90, p99, p99.9, max, lost, duplicated, \
             out_of_order, failed, publish_errors, deliveries_per_s)"
        ),
    };
    let limit = if let Metric::Latency(_) = metric {
        let d = hrrt_protocol::positive_duration(value)
            .or_else(|e| {
                if value == "0" {
                    Ok(Duration::ZERO)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| anyhow::anyhow!("--fail-on '{rule}': {e}"))?;
        d.as_secs_f64() * 1000.0
    } else {
        value
            .parse::<f64>()
            .with_context(|| format!("--fail-on '{rule}': '{value}' is not a number"))?
    };
    Ok(Threshold {
        rule: rule.to_owned(),
        metric,
        op,
        limit,
    })
}

impl Threshold {
    pub fn check(&self, report: &Report) -> ThresholdResult {
        let value = match self.metric {
            Metric::Latency(pick) => pick(&report.latency_ms),
            Metric::Lost => report.events.lost as f64,
            Metric::Duplicated => report.events.duplicated as f64,
            Metric::OutOfOrder => report.events.out_of_order as f64,
            Metric::Failed => report.connections.failed as f64,
            Metric::PublishErrors => report.events.publish_errors as f64,
            Metric::DeliveriesPerSecond => report.throughput.deliveries_per_s,
        };
        let passed = match self.op {
            Op::Lt => value < self.limit,
            Op::Le => value <= self.limit,
            Op::Gt => value > self.limit,
            Op::Ge => value >= self.limit,
            Op::Eq => (value - self.limit).abs() < f64::EPSILON,
        };
        ThresholdResult {
            rule: self.rule.clone(),
            value,
            passed,
        }
    }
}

impl Report {
    /// Whether nothing went wrong: no failed connection, publish error,
    /// loss, duplicate or reordering, and every threshold held.
    pub fn clean(&self) -> bool {
        self.connections.failed == 0
            && self
                .user_events
                .as_ref()
                .is_none_or(|u| u.lost == 0 && u.duplicated == 0)
            && self.connections.closed_early.is_empty()
            && self.events.publish_errors == 0
            && self.events.lost == 0
            && self.events.duplicated == 0
            && self.events.out_of_order == 0
            && !self.interrupted
            && self.thresholds.iter().all(|t| t.passed)
    }

    /// The report as a person reads it.
    pub fn human(&self) -> String {
        let mut s = String::new();
        self.human_connections(&mut s);
        self.human_deliveries(&mut s);
        self.human_churn_and_nodes(&mut s);
        self.human_verdict(&mut s);
        s
    }

    /// The run's title and its connections.
    fn human_connections(&self, s: &mut String) {
        let c = &self.connections;
        let _ = writeln!(s, "{}", paint(BOLD, format!("hrrt load — {}", self.url)));
        let _ = writeln!(
            s,
            "connections  {} ok, {} failed of {}   connect p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({:.0}/s)",
            c.ok,
            bad(c.failed),
            c.requested,
            c.connect_ms.p50,
            c.connect_ms.p99,
            c.connect_ms.max,
            c.connects_per_s
        );
        for (why, n) in &c.failures {
            let _ = writeln!(s, "             {} × {why}", paint(ERROR, n));
        }
        for (why, n) in &c.closed_early {
            let _ = writeln!(s, "             {} closed early: {why}", paint(ERROR, n));
        }
    }

    /// What was published and what arrived, how fast.
    fn human_deliveries(&self, s: &mut String) {
        let e = &self.events;
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "events       {} published ({} errors) at {:.0}/s over {:.1} s",
            e.published,
            bad(e.publish_errors),
            self.throughput.publish_rate,
            self.throughput.publish_seconds
        );
        for (why, n) in &e.publish_failures {
            let _ = writeln!(s, "             {} × {why}", paint(ERROR, n));
        }
        let _ = writeln!(
            s,
            "deliveries   {} of {} expected   lost {}  duplicated {}  out of order {}",
            e.delivered,
            e.expected_deliveries,
            bad(e.lost),
            bad(e.duplicated),
            bad(e.out_of_order)
        );
        let _ = writeln!(
            s,
            "latency      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        );
        let r = &self.last_recipient_ms;
        let _ = writeln!(
            s,
            "last one     p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (per event: until its last live recipient had it)",
            r.p50, r.p99, r.max
        );
        if let Some(u) = &self.user_events {
            let _ = writeln!(
                s,
                "user events  {} of {} delivered   lost {}  duplicated {}   latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                u.delivered,
                u.published,
                bad(u.lost),
                bad(u.duplicated),
                u.latency_ms.p50,
                u.latency_ms.p99,
                u.latency_ms.max
            );
        }
    }

    /// Churn's resumes and replays, and each node's share.
    fn human_churn_and_nodes(&self, s: &mut String) {
        if let Some(churn) = &self.churn {
            let resyncs: Vec<String> = churn
                .resyncs
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            let _ = writeln!(
                s,
                "churn        {} resumes  resyncs: {}",
                churn.resumes,
                if resyncs.is_empty() {
                    "none".to_owned()
                } else {
                    resyncs.join(", ")
                }
            );
            let r = &churn.replayed_latency_ms;
            let _ = writeln!(
                s,
                "replayed     {} deliveries after a resume  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (mostly the time away; not in the latencies above)",
                r.count, r.p50, r.p99, r.max
            );
        }
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "node         {}  {} connections  p50 {:.2} ms  p99 {:.2} ms  lost {}",
                n.url,
                n.connections,
                n.latency_ms.p50,
                n.latency_ms.p99,
                bad(n.lost)
            );
        }
    }

    /// Throughput, the server's costs, the thresholds and the result.
    fn human_verdict(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "throughput   {:.0} deliveries/s",
            self.throughput.deliveries_per_s
        );
        if let Some(server) = &self.server {
            let _ = writeln!(
                s,
                "server       pid {}  RSS {:.2} KiB/connection ({} → {} KiB)  CPU {:.2} s  {:.0} deliveries per CPU-second",
                server.pid,
                server.rss_per_connection_kib,
                server.rss_kib_before,
                server.rss_kib_connected,
                server.cpu_seconds,
                server.deliveries_per_cpu_second
            );
        }
        for t in &self.thresholds {
            let verdict = if t.passed {
                paint(NOTE, "ok")
            } else {
                paint(ERROR, "FAILED")
            };
            let value = paint(DIM, format!("(value {:.3})", t.value));
            let _ = writeln!(s, "threshold    {} {verdict} {value}", t.rule);
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "{}",
                paint(ERROR, "interrupted: the figures cover the run so far")
            );
        }
        let _ = write!(
            s,
            "result       {}",
            if self.clean() {
                paint(NOTE, "PASS")
            } else {
                paint(ERROR, "FAIL")
            }
        );
    }
}

/// A count that should be 0: green when it is, red when not.
fn bad(n: u64) -> String {
    if n == 0 {
        paint(NOTE, n)
    } else {
        paint(ERROR, n)
    }
}

/// `--per-event`: `event,org,published_ms,unix_ms,accepted_ms,last_recipient_ms`
/// from each event's publish time and its 200's (Unix ns, 0 for none) and
/// its last recipient's wait (µs, 0 for none): when it was published (from
/// the first event, and as Unix time, to line it up with logs and
/// profiles), its publish round trip and its last recipient's wait; empty
/// where there was no answer or no recipient.
pub fn per_event_csv(sent_ns: &[u64], accepted_ns: &[u64], last_us: &[u64], orgs: usize) -> String {
    let start = sent_ns
        .iter()
        .copied()
        .filter(|&s| s > 0)
        .min()
        .unwrap_or(0);
    let mut csv = String::from("event,org,published_ms,unix_ms,accepted_ms,last_recipient_ms\n");
    for (n, ((&sent, &accepted), &last)) in sent_ns.iter().zip(accepted_ns).zip(last_us).enumerate()
    {
        if sent == 0 {
            continue;
        }
        let published = sent.saturating_sub(start) as f64 / 1e6;
        let _ = write!(
            csv,
            "{n},{},{published:.3},{:.3},",
            n % orgs.max(1),
            sent as f64 / 1e6
        );
        if accepted > 0 {
            let _ = write!(csv, "{:.3}", accepted.saturating_sub(sent) as f64 / 1e6);
        }
        csv.push(',');
        if last > 0 {
            let _ = write!(csv, "{:.3}", last as f64 / 1000.0);
        }
        csv.push('\n');
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_check() {
        let rules = parse_thresholds("p99<20ms, lost=0,deliveries_per_s>=10").unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].limit, 20.0);
        assert!(parse_thresholds("p99~3").is_err());
        assert!(parse_thresholds("speed<3").is_err());
        assert!(parse_thresholds("p99<fast").is_err());
        assert!(parse_thresholds("lost=none").is_err());
    }

    fn measured(outcomes: Vec<super::super::ConnOutcome>) -> Measured {
        Measured {
            run_id: "r".into(),
            url: "http://x/".into(),
            nodes: vec![
                NodeMeasured {
                    url: "http://a/".into(),
                    opened: 2,
                    latency_ms: Percentiles::default(),
                },
                NodeMeasured {
                    url: "http://b/".into(),
                    opened: 1,
                    latency_ms: Percentiles::default(),
                },
            ],
            config: RunConfig {
                connections: 3,
                orgs: 2,
                rate: 10.0,
                duration_s: 1.0,
                batch: 1,
                connect_rate: 100,
                source_ips: vec!["127.0.0.1".into()],
                churn: 0.0,
                user_rate: 0.0,
            },
            interrupted: false,
            opened: 3,
            connect_failures: BTreeMap::new(),
            connect_ms: Percentiles::default(),
            connect_seconds: 0.5,
            published_per_org: vec![4, 2],
            publish_failures: BTreeMap::new(),
            publish_seconds: 1.0,
            delivery_seconds: 2.0,
            outcomes,
            latency_ms: Percentiles {
                p99: 5.0,
                ..Percentiles::default()
            },
            user_latency_ms: Percentiles::default(),
            replayed_latency_ms: Percentiles::default(),
            last_recipient_ms: Percentiles::default(),
            server: Some(ServerSamples {
                pid: 1,
                rss_kib: [1000, 1300, 1400],
                cpu_seconds: [1.0, 1.5, 3.5],
            }),
        }
    }

    fn outcome(org: usize, seqs: &[u64], closed: Option<&str>) -> super::super::ConnOutcome {
        let mut tally = super::super::tally::Tally::new(0);
        for seq in seqs {
            tally.observe(*seq);
        }
        super::super::ConnOutcome {
            org,
            // Connections alternate between the two nodes, as --nodes does.
            node: seqs.len() % 2,
            index: 0,
            resumes: 0,
            resyncs: BTreeMap::new(),
            user_tally: super::super::tally::Tally::new(0),
            user_published: 0,
            tally,
            closed_early: closed.map(str::to_owned),
        }
    }

    #[test]
    fn loss_is_reported_per_node() {
        let m = measured(vec![
            outcome(0, &[1, 2, 3, 4], None),
            outcome(0, &[1, 2, 3], None),
            outcome(1, &[1, 2], None),
        ]);
        let report = build(m, &[]);
        assert_eq!(report.nodes.len(), 2);
        assert_eq!((report.nodes[0].lost, report.nodes[1].lost), (0, 1));
        assert_eq!(report.events.lost, 1);
        assert!(
            report
                .human()
                .contains("node         http://b/  1 connections"),
            "{}",
            report.human()
        );
    }

    #[test]
    fn a_clean_run_passes_and_its_figures_add_up() {
        let m = measured(vec![
            outcome(0, &[1, 2, 3, 4], None),
            outcome(0, &[1, 2, 3, 4], None),
            outcome(1, &[1, 2], None),
        ]);
        let report = build(m, &parse_thresholds("p99<10ms,lost=0").unwrap());
        assert_eq!(report.events.expected_deliveries, 10);
        assert_eq!(report.events.delivered, 10);
        assert_eq!(report.throughput.deliveries_per_s, 5.0);
        assert_eq!(report.connections.connects_per_s, 6.0);
        let server = report.server.as_ref().unwrap();
        assert_eq!(server.rss_per_connection_kib, 100.0);
        assert_eq!(
            (server.cpu_seconds, server.deliveries_per_cpu_second),
            (2.0, 5.0)
        );
        assert!(report.passed, "{report:?}");
    }

    #[test]
    fn loss_duplicates_and_early_closes_fail_the_run() {
        let m = measured(vec![
            outcome(0, &[1, 2, 2, 4], Some("1013 slow consumer")),
            outcome(0, &[1, 2, 3, 4], None),
            outcome(1, &[2, 1], None),
        ]);
        let report = build(m, &parse_thresholds("lost=0").unwrap());
        assert_eq!(report.events.lost, 1, "seq 3 on the first connection");
        assert_eq!(report.events.duplicated, 1);
        assert_eq!(report.events.out_of_order, 1);
        assert_eq!(report.connections.closed_early["1013 slow consumer"], 1);
        assert!(!report.thresholds[0].passed);
        assert!(!report.passed);
    }

    #[test]
    fn per_event_lines_time_each_event_from_the_first() {
        assert_eq!(
            per_event_csv(
                &[2_000_000, 5_500_000, 0],
                &[2_250_000, 0, 0],
                &[1_500, 0, 0],
                2
            ),
            "event,org,published_ms,unix_ms,accepted_ms,last_recipient_ms\n\
             0,0,0.000,2.000,0.250,1.500\n1,1,3.500,5.500,,\n"
        );
    }
}
