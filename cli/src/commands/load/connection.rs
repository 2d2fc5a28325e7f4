//! One load connection: open it (with retries and a deadline), then count
//! what arrives (each event once, in seq order) until told to stop;
//! `--churn` drops and resumes connections at random.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hrrt_protocol::Cursor;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::*;

pub(super) struct ConnectionSpec {
    pub(super) index: u64,
    pub(super) user_channel: String,
    pub(super) org: usize,
    pub(super) node: usize,
    pub(super) org_channel: String,
    pub(super) source: IpAddr,
    pub(super) token: String,
}

/// One connection: open it, report, then count what arrives until stopped.
pub(super) async fn connection(
    spec: ConnectionSpec,
    targets: Arc<Vec<Target>>,
    churn_skip: u64,
    shared: Arc<Shared>,
    opened: mpsc::UnboundedSender<Opened>,
    mut stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<ConnOutcome> {
    let (connection, start, user_start, mut epoch) =
        first_open(&spec, &targets, opened, permit).await?;

    let mut tally = Tally::new(start);
    let mut user_tally = Tally::new(user_start);
    let mut samples = Samples {
        buf: Vec::with_capacity(64),
        flushed: Instant::now(),
        shard: &shared.latency[usize::try_from(spec.index).unwrap_or(0) % SHARDS],
        shared: &shared,
    };
    let mut node = spec.node;
    let (mut resumes, mut resyncs) = (0u64, BTreeMap::<String, u64>::new());
    let mut rng = crate::commands::load::Rng::new(spec.index);
    // When the last resume began (Unix ns): an event published before it
    // reached this connection as a replay, not live.
    let mut resumed_ns = 0u64;
    let idle = tokio::sync::Notify::new();
    let skip = churn_skip;
    let churn = shared
        .churn
        .get(usize::try_from(spec.index).unwrap_or(usize::MAX))
        .unwrap_or(&idle);
    let mut current = Some(connection);
    let closed_early = loop {
        let Some(connection) = current.as_mut() else {
            break Some("no connection".to_owned());
        };
        let step = tokio::select! {
            biased;
            _ = stop.changed() => Step::Stop,
            () = churn.notified() => Step::Churn,
            received = connection.next_raw() => Step::Got(received),
        };
        let received = match step {
            Step::Stop => break None,
            Step::Got(received) => received,
            Step::Churn => {
                // Dropped as a closed laptop drops; back after a pause of
                // at most 1 s, on a random node, from what it holds.
                if let Some(old) = current.take() {
                    old.close().await;
                }
                samples.flush(node);
                tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
                node = usize::try_from(rng.below(targets.len() as u64)).unwrap_or(0);
                resumed_ns = unix_nanos();
                let cursor = resume_cursor(&spec, epoch.clone(), (&tally, &user_tally), skip);
                match open(&spec, &targets[node], cursor).await {
                    Ok((again, _, _, e)) => {
                        current = Some(again);
                        epoch = e;
                        resumes += 1;
                        continue;
                    }
                    Err(why) => break Some(format!("resume failed: {why}")),
                }
            }
        };
        match received {
            RawReceived::Text(text) => {
                let Some(LoadEvent { seq, sent_ns, n }) = parse_event(&text) else {
                    let tallies = (&mut tally, &mut user_tally);
                    other_frame(&text, &spec, &shared, tallies, &mut resyncs, resumed_ns);
                    continue;
                };
                tally.observe(seq);
                let live = sent_ns >= resumed_ns;
                samples.event(n, unix_nanos().saturating_sub(sent_ns) / 1000, live, node);
            }
            RawReceived::Closed(close) => break Some(close.to_string()),
            RawReceived::Lost(why) => break Some(format!("connection lost: {why}")),
        }
    };
    samples.flush(node);
    if let Some(connection) = current {
        connection.close().await;
    }
    Some(ConnOutcome {
        index: spec.index,
        org: spec.org,
        node: spec.node,
        resumes,
        resyncs,
        user_tally,
        user_published: 0,
        tally,
        closed_early,
    })
}

/// What woke a load connection.
enum Step {
    Stop,
    Churn,
    Got(RawReceived),
}

/// The first connect of a load connection, reported to the coordinator
/// (`opened`) either way; with several nodes a failure names its node.
async fn first_open(
    spec: &ConnectionSpec,
    targets: &[Target],
    opened: mpsc::UnboundedSender<Opened>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<(Connection, u64, u64, Option<String>)> {
    let started = Instant::now();
    let target = &targets[spec.node % targets.len()];
    let first = open(spec, target, Cursor::default()).await;
    drop(permit);
    match first {
        Ok(first) => {
            let _ = opened.send(Opened::Ok {
                connect: started.elapsed(),
                org: spec.org,
                node: spec.node,
            });
            Some(first)
        }
        Err(e) if targets.len() > 1 => {
            let _ = opened.send(Opened::Failed(format!("{}: {e}", target.http)));
            None
        }
        Err(e) => {
            let _ = opened.send(Opened::Failed(e));
            None
        }
    }
}

/// Live latencies on their way to the shared histograms: every 64, or
/// every 250 ms, so that a connection getting a few events a second still
/// shows in the live p99.
struct Samples<'a> {
    buf: Vec<u64>,
    flushed: Instant,
    shard: &'a Mutex<Histogram<u64>>,
    shared: &'a Shared,
}

impl Samples<'_> {
    /// Load event `n` arrived `latency` µs after it was sent: a replay
    /// after a resume (`live` false) has a histogram of its own; a live
    /// one counts in the latencies and its event's last recipient.
    fn event(&mut self, n: u64, latency: u64, live: bool, node: usize) {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        if !live {
            let _ = lock(&self.shared.replayed_latency).record(latency.max(1));
            return;
        }
        if let Some(slot) = usize::try_from(n)
            .ok()
            .and_then(|n| self.shared.last_recipient.get(n))
        {
            slot.fetch_max(latency.max(1), Ordering::Relaxed);
        }
        self.push(latency, node);
    }

    fn push(&mut self, latency: u64, node: usize) {
        self.buf.push(latency);
        if self.buf.len() == self.buf.capacity()
            || self.flushed.elapsed() >= Duration::from_millis(250)
        {
            self.flush(node);
            self.flushed = Instant::now();
        }
    }

    /// Into this connection's shard, and its node's with several nodes.
    fn flush(&mut self, node: usize) {
        let mut h = lock(self.shard);
        let nodes = &self.shared.node_latency;
        let mut n = (nodes.len() > 1).then(|| lock(&nodes[node % nodes.len().max(1)]));
        for s in self.buf.drain(..) {
            let _ = h.record(s.max(1));
            if let Some(n) = n.as_mut() {
                let _ = n.record(s.max(1));
            }
        }
    }
}

/// A text frame that is not a load event: a user event (counted, with its
/// latency), or a resync of one of this connection's channels (what the
/// server could not replay is not lost).
fn other_frame(
    text: &str,
    spec: &ConnectionSpec,
    shared: &Shared,
    (tally, user_tally): (&mut Tally, &mut Tally),
    resyncs: &mut BTreeMap<String, u64>,
    resumed_ns: u64,
) {
    if let Some((seq, sent_ns)) = parse_user_event(text) {
        user_tally.observe(seq);
        shared.received.fetch_add(1, Ordering::Relaxed);
        let latency = unix_nanos().saturating_sub(sent_ns) / 1000;
        let into = if sent_ns < resumed_ns {
            &shared.replayed_latency
        } else {
            &shared.user_latency
        };
        let _ = lock(into).record(latency.max(1));
        return;
    }
    if let Ok(ServerFrame::Resync { payload, .. }) = ServerFrame::decode(text)
        && (payload.channel.as_str() == spec.org_channel
            || payload.channel.as_str() == spec.user_channel)
    {
        *resyncs
            .entry(payload.reason.as_str().to_owned())
            .or_default() += 1;
        let which = if payload.channel.as_str() == spec.org_channel {
            tally
        } else {
            user_tally
        };
        which.cover(payload.requested + 1, payload.oldest.saturating_sub(1));
    }
}

/// Where a resume starts: what the connection holds (`skip` past it on
/// the org channel, for the tests' loss fault).
fn resume_cursor(
    spec: &ConnectionSpec,
    epoch: Option<String>,
    (tally, user_tally): (&Tally, &Tally),
    skip: u64,
) -> Cursor {
    Cursor {
        epoch,
        positions: [
            (spec.org_channel.clone(), tally.last() + skip),
            (spec.user_channel.clone(), user_tally.last()),
        ]
        .into(),
    }
}

/// Connects from `spec.source` with small buffers (a load generator holds
/// tens of thousands of these), TLS for `wss://`; reads `connected`;
/// answers the org channel's start position.
pub(super) async fn open(
    spec: &ConnectionSpec,
    target: &Target,
    cursor: Cursor,
) -> Result<(Connection, u64, u64, Option<String>), String> {
    let options = ConnectOptions {
        source: Some(spec.source),
        buffers: Some((LOAD_READ_BUFFER, 0)),
        timeout: CONNECT_TIMEOUT,
        cursor,
        ..ConnectOptions::default()
    };
    let mut connection = Connection::open(target, &spec.token, &options)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let next = tokio::time::timeout(CONNECT_TIMEOUT, connection.next())
        .await
        .map_err(|_| "no connected frame in time".to_owned())?;
    match next {
        Received::Frame {
            frame: ServerFrame::Connected { payload, .. },
            ..
        } => {
            let at = |channel: &str| payload.positions.get(channel).copied().unwrap_or(0);
            let (start, user_start) = (at(&spec.org_channel), at(&spec.user_channel));
            Ok((connection, start, user_start, Some(payload.epoch)))
        }
        Received::Frame { frame, .. } => Err(format!("first frame was {}", frame.kind())),
        Received::Garbled { error, .. } => Err(format!("bad first frame: {error}")),
        Received::Closed(close) => Err(close.to_string()),
        Received::Lost(why) => Err(format!("closed before connected: {why}")),
    }
}

/// What the load test reads from each event frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LoadEvent {
    pub(super) seq: u64,
    pub(super) sent_ns: u64,
    /// The event's number in the run.
    pub(super) n: u64,
}

/// Reads a load event frame without a full JSON parse: at hundreds of
/// thousands of frames a second the load generator must stay far cheaper
/// than the server it measures. Relies on field names, not their order.
pub(super) fn parse_event(text: &str) -> Option<LoadEvent> {
    if !text.contains(EVENT_TYPE) {
        return None;
    }
    let number_after = |key: &str, from_end: bool| -> Option<u64> {
        let at = if from_end {
            text.rfind(key)?
        } else {
            text.find(key)?
        };
        let digits: &str = &text[at + key.len()..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    };
    Some(LoadEvent {
        seq: number_after("\"seq\":", true)?,
        sent_ns: number_after("\"sent_ns\":", false)?,
        n: number_after("\"n\":", false)?,
    })
}

/// `--churn`: tells `rate` random connections a second to drop and resume
/// (a worker's driver picks from every index, so it reaches its own share:
/// `rate` over N workers in all).
pub(super) fn churner(shared: Arc<Shared>, rate: f64) -> Option<tokio::task::JoinHandle<()>> {
    if rate <= 0.0 || shared.churn.is_empty() {
        return None;
    }
    let every = Duration::from_secs_f64(1.0 / rate).max(Duration::from_micros(100));
    Some(tokio::spawn(async move {
        let mut rng = Rng::new(0xC0FFEE ^ u64::from(std::process::id()));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let i = rng.below(shared.churn.len() as u64);
            if let Some(drop_now) = usize::try_from(i).ok().and_then(|i| shared.churn.get(i)) {
                drop_now.notify_one();
            }
        }
    }))
}

/// A user event of this run: its seq and send time.
pub(super) fn parse_user_event(text: &str) -> Option<(u64, u64)> {
    if !text.contains(USER_EVENT_TYPE) {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    Some((v["seq"].as_u64()?, v["payload"]["sent_ns"].as_u64()?))
}

/// A small xorshift for churn's choices: spread, not quality.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
