//! `hrrt load`: open N connections over K orgs, publish R events/s for D,
//! check every event reached every connection of its org exactly once and
//! in order, and report connect time, delivery latency, throughput, losses
//! and (with `--server-pid`) the server's memory and CPU cost.

mod args;
mod connection;
mod proc;
mod publish;
mod report;
mod tally;
mod workers;

use self::connection::*;
use self::proc::*;
use self::publish::*;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use hrrt_protocol::{Claims, Role, ServerFrame, mint};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::report::{Measured, Percentiles, RunConfig, ServerSamples, Threshold, parse_thresholds};
use self::tally::Tally;
use crate::args::ServerArgs;
use crate::client::{Api, ConnectOptions, Connection, RawReceived, Received, Target, explain};
use crate::exit::ExitStatus;
use crate::output;

pub use self::args::LoadArgs;

/// What this process is in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessRole {
    /// It runs the test: publishes, reports, and holds the connections
    /// itself or through `--workers`.
    Coordinator,
    /// Worker `index` of `--workers`: holds its share of the connections
    /// and reports to the coordinator on stdout.
    Worker { index: u64 },
}

impl LoadArgs {
    fn role(&self) -> ProcessRole {
        match self.worker_index {
            Some(index) => ProcessRole::Worker { index },
            None => ProcessRole::Coordinator,
        }
    }

    /// The connections this process opens, and at what rate a second: a
    /// worker every index ≡ its own mod --workers, at its share of
    /// --connect-rate.
    fn share(&self) -> (Vec<u64>, f64) {
        match self.role() {
            ProcessRole::Worker { index } => (
                (0..self.connections)
                    .filter(|k| k % self.workers == index)
                    .collect(),
                (self.connect_rate as f64 / self.workers as f64).max(1.0),
            ),
            ProcessRole::Coordinator => ((0..self.connections).collect(), self.connect_rate as f64),
        }
    }
}

/// The event type the load test publishes.
const EVENT_TYPE: &str = "load.tick";
/// The type of its user-channel events (a seed type that goes to users).
const USER_EVENT_TYPE: &str = "share.created";
/// Shards of the latency histogram, so connections rarely share a lock.
const SHARDS: usize = 16;
/// tungstenite's read buffer per load connection: it is zero-filled before
/// every read of the socket and held per connection once used, so a small
/// one keeps the load generator's own CPU down (docs/dev/benchmark-notes.md);
/// 4 KiB still takes a burst of ~15 events per read, and a larger frame
/// grows it as needed.
const LOAD_READ_BUFFER: usize = 4 * 1024;
/// How long one connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Handshakes in flight at once.
const CONNECTS_IN_FLIGHT: usize = 512;

/// What every connection task updates.
struct Shared {
    latency: Vec<Mutex<Histogram<u64>>>,
    /// The same samples, per node of `--nodes`.
    node_latency: Vec<Mutex<Histogram<u64>>>,
    /// Per connection, the churn driver's "drop now" (empty without
    /// `--churn`).
    churn: Vec<tokio::sync::Notify>,
    /// Per connection, user events its user was sent and the server
    /// accepted (empty without `--user-rate`).
    user_published: Vec<AtomicU64>,
    user_latency: Mutex<Histogram<u64>>,
    /// Deliveries replayed after a `--churn` resume (events published
    /// before the connection came back, org and user channels): their
    /// latency is mostly the time away, so they stay out of the others.
    replayed_latency: Mutex<Histogram<u64>>,
    /// With --workers: each worker's latency so far, for the live line.
    remote_latency: Mutex<Vec<Histogram<u64>>>,
    connect: Mutex<Histogram<u64>>,
    /// Event frames received, org and user channels, duplicates included
    /// (for progress and the drain).
    received: AtomicU64,
    /// Per event (by its number), the latency of its last recipient so far,
    /// in microseconds: how long a broadcast takes to reach everyone.
    last_recipient: Vec<AtomicU64>,
    /// Per event, when it was published (Unix ns; 0 until it is), and when
    /// its publish request was answered 200 (both empty without
    /// `--per-event`: at the 50,000,000-event cap they are 400 MB each).
    sent_ns: Vec<AtomicU64>,
    accepted_ns: Vec<AtomicU64>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How one connection ended.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ConnOutcome {
    /// The connection's number in the run.
    pub index: u64,
    pub org: usize,
    /// The index of its node in `--nodes`.
    pub node: usize,
    /// Its user channel's events (`--user-rate`), and how many its user
    /// was sent (filled in after the run).
    pub user_tally: Tally,
    pub user_published: u64,
    /// Reconnects under `--churn`, and the resyncs they were answered with.
    pub resumes: u64,
    pub resyncs: BTreeMap<String, u64>,
    pub tally: Tally,
    pub closed_early: Option<String>,
}

/// A connection's first report: open (with its start seq) or failed.
enum Opened {
    Ok {
        connect: Duration,
        org: usize,
        node: usize,
    },
    Failed(String),
}

/// What the flags ask for, checked, before anything is opened.
struct Plan {
    /// `--nodes`, or `--url` alone.
    targets: Vec<Target>,
    /// `--publish-url`, or `--url` alone.
    apis: Vec<Api>,
    secret: String,
    thresholds: Vec<Threshold>,
    run_id: String,
    orgs: Vec<String>,
    total_events: u64,
}

impl Plan {
    /// The user id of connection `i`: one user per connection, so a user
    /// event has exactly one recipient.
    fn user_of(&self, i: u64) -> String {
        format!("load-{}-u{i}", self.run_id)
    }

    fn new(args: &LoadArgs, global: &ServerArgs) -> anyhow::Result<Self> {
        if !(args.rate > 0.0 && args.rate.is_finite()) {
            bail!("--rate must be a positive number of events per second");
        }
        if args.orgs > args.connections {
            bail!(
                "--orgs ({}) is more than --connections ({})",
                args.orgs,
                args.connections
            );
        }
        if !(args.user_rate >= 0.0 && args.user_rate.is_finite()) {
            bail!("--user-rate must be a number of events per second, 0 or more");
        }
        if !(args.churn >= 0.0 && args.churn.is_finite()) {
            bail!("--churn must be a number of connections per second, 0 or more");
        }
        if args.source_ips.is_empty() {
            bail!("--source-ips needs at least one address");
        }
        let thresholds = match &args.fail_on {
            Some(spec) => parse_thresholds(spec)?,
            None => Vec::new(),
        };
        let Some(secret) = global.secret.clone() else {
            bail!("hrrt load mints a token per connection: pass --secret or set HRRT_JWT_SECRET");
        };
        let parse = |flag: &str, urls: &[String]| -> anyhow::Result<Vec<Target>> {
            urls.iter()
                .map(|url| Target::parse(url).with_context(|| format!("{flag}: '{url}'")))
                .collect()
        };
        let targets = if args.nodes.is_empty() {
            vec![Target::parse(&global.url)?]
        } else {
            parse("--nodes", &args.nodes)?
        };
        // Without --publish-url, events enter through the nodes the
        // connections are on (round-robin), or --url.
        let apis = if args.publish_url.is_empty() {
            targets
                .iter()
                .cloned()
                .map(Api::new)
                .collect::<anyhow::Result<_>>()?
        } else {
            parse("--publish-url", &args.publish_url)?
                .into_iter()
                .map(Api::new)
                .collect::<anyhow::Result<_>>()?
        };
        let run_id = args.run_id.clone().unwrap_or_else(|| crate::random_hex(3));
        if args.role() == ProcessRole::Coordinator {
            workers::check_open_files(args)?;
        }
        let orgs = (0..args.orgs)
            .map(|k| format!("load-{run_id}-{k}"))
            .collect();
        let total_events = (args.rate * args.duration.as_secs_f64()).round().max(1.0) as u64;
        if total_events > 50_000_000 {
            bail!("--rate × --duration is {total_events} events; at most 50,000,000 per run");
        }
        Ok(Self {
            targets,
            apis,
            secret,
            thresholds,
            run_id,
            orgs,
            total_events,
        })
    }
}

/// A run in progress: what the phases share.
struct Run<'a> {
    args: &'a LoadArgs,
    plan: Plan,
    shared: Arc<Shared>,
    progress: MultiProgress,
    interrupt: crate::interrupt::Interrupt,
    interrupted: bool,
}

/// After the connect phase.
struct Connected {
    opened: u64,
    failures: BTreeMap<String, u64>,
    per_org: Vec<u64>,
    per_node: Vec<u64>,
    seconds: f64,
    tasks: JoinSet<Option<ConnOutcome>>,
    stop: watch::Sender<bool>,
    /// With --workers: the processes that hold the connections.
    workers: Vec<workers::Worker>,
}

/// After the publish phase.
struct Published {
    per_org: Vec<u64>,
    failures: BTreeMap<String, u64>,
    started: Instant,
    seconds: f64,
}

pub async fn run(args: LoadArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    if let ProcessRole::Worker { index } = args.role() {
        return workers::run_worker(&args, global, index).await;
    }
    let plan = Plan::new(&args, global)?;
    check_report_files(&args)?;
    raise_open_files(args.connections.div_ceil(args.workers));
    let mut run = Run::new(&args, plan)?;
    let server_before = args.server_pid.map(ProcSample::read);
    let mut connected = run.connect().await?;
    let server_connected = args.server_pid.map(ProcSample::read);
    let published = run.publish().await;
    run.drain(&connected, &published).await;
    let delivery_seconds = published.started.elapsed().as_secs_f64();
    let server_end = args.server_pid.map(ProcSample::read);
    let mut outcomes = connected.stop(&run.shared).await;
    for outcome in &mut outcomes {
        outcome.user_published = usize::try_from(outcome.index)
            .ok()
            .and_then(|i| run.shared.user_published.get(i))
            .map_or(0, |n| n.load(Ordering::Relaxed));
    }

    let merged = |shards: &[Mutex<Histogram<u64>>]| -> anyhow::Result<Percentiles> {
        let mut h = histogram()?;
        for shard in shards {
            let _ = h.add(&*lock(shard));
        }
        Ok(Percentiles::from_micros(&h))
    };
    let mut last_recipient = histogram()?;
    for slot in &run.shared.last_recipient {
        let us = slot.load(Ordering::Relaxed);
        if us > 0 {
            let _ = last_recipient.record(us);
        }
    }
    let measured = Measured {
        run_id: run.plan.run_id.clone(),
        url: run.plan.targets[0].http.to_string(),
        nodes: run
            .plan
            .targets
            .iter()
            .zip(&run.shared.node_latency)
            .zip(&connected.per_node)
            .map(|((target, latency), opened)| report::NodeMeasured {
                url: target.http.to_string(),
                opened: *opened,
                latency_ms: Percentiles::from_micros(&lock(latency)),
            })
            .collect(),
        config: RunConfig {
            connections: args.connections,
            orgs: args.orgs,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            batch: args.batch,
            connect_rate: args.connect_rate,
            source_ips: args.source_ips.iter().map(ToString::to_string).collect(),
            churn: args.churn,
            user_rate: args.user_rate,
        },
        interrupted: run.interrupted,
        opened: connected.opened,
        connect_failures: connected.failures,
        connect_ms: Percentiles::from_micros(&lock(&run.shared.connect)),
        connect_seconds: connected.seconds,
        published_per_org: published.per_org,
        publish_failures: published.failures,
        publish_seconds: published.seconds,
        delivery_seconds,
        outcomes,
        latency_ms: merged(&run.shared.latency)?,
        user_latency_ms: Percentiles::from_micros(&lock(&run.shared.user_latency)),
        replayed_latency_ms: Percentiles::from_micros(&lock(&run.shared.replayed_latency)),
        last_recipient_ms: Percentiles::from_micros(&last_recipient),
        server: match (args.server_pid, server_before, server_connected, server_end) {
            (Some(pid), Some(before), Some(connected), Some(end)) => Some(ServerSamples {
                pid,
                rss_kib: [before.rss_kib, connected.rss_kib, end.rss_kib],
                cpu_seconds: [before.cpu_seconds, connected.cpu_seconds, end.cpu_seconds],
            }),
            _ => None,
        },
    };
    let report = report::build(measured, &run.plan.thresholds);
    write_reports(&args, &run, &report)?;
    Ok(if report.passed {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}

/// A report file that cannot be written is found before the run, not
/// after it; opened without truncating, so a run that then fails leaves
/// the last report as it was.
fn check_report_files(args: &LoadArgs) -> anyhow::Result<()> {
    for path in [&args.report, &args.per_event].into_iter().flatten() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The report on stdout (lines, or JSON with `--json`), and in the files
/// `--report` and `--per-event` name.
fn write_reports(args: &LoadArgs, run: &Run<'_>, report: &report::Report) -> anyhow::Result<()> {
    let json = || serde_json::to_string_pretty(report).context("encoding the report");
    if args.json {
        output::line(&json()?)?;
    } else {
        output::line(&report.human())?;
    }
    if let Some(path) = &args.report {
        std::fs::write(path, json()?).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.per_event {
        std::fs::write(
            path,
            report::per_event_csv(
                &loaded(&run.shared.sent_ns),
                &loaded(&run.shared.accepted_ns),
                &loaded(&run.shared.last_recipient),
                run.plan.orgs.len(),
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl<'a> Run<'a> {
    fn new(args: &'a LoadArgs, plan: Plan) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            latency: (0..SHARDS)
                .map(|_| histogram().map(Mutex::new))
                .collect::<Result<_, _>>()?,
            node_latency: (0..plan.targets.len())
                .map(|_| histogram().map(Mutex::new))
                .collect::<Result<_, _>>()?,
            user_published: if args.user_rate > 0.0 {
                (0..args.connections).map(|_| AtomicU64::new(0)).collect()
            } else {
                Vec::new()
            },
            user_latency: Mutex::new(histogram()?),
            replayed_latency: Mutex::new(histogram()?),
            remote_latency: Mutex::new(Vec::new()),
            churn: if args.churn > 0.0 {
                (0..args.connections)
                    .map(|_| tokio::sync::Notify::new())
                    .collect()
            } else {
                Vec::new()
            },
            connect: Mutex::new(histogram()?),
            received: AtomicU64::new(0),
            last_recipient: (0..plan.total_events).map(|_| AtomicU64::new(0)).collect(),
            sent_ns: per_event_slots(args, plan.total_events),
            accepted_ns: per_event_slots(args, plan.total_events),
        });
        let progress = if args.no_progress
            || args.role() != ProcessRole::Coordinator
            || !std::io::stderr().is_terminal()
        {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
        };
        Ok(Self {
            args,
            plan,
            shared,
            progress,
            interrupt: crate::interrupt::Interrupt::new(),
            interrupted: false,
        })
    }

    /// A line of progress: above the bars, or on stderr when they are hidden.
    fn say(&self, text: String) {
        if self.args.role() != ProcessRole::Coordinator {
            // A worker's stdout is its report to the parent; it says nothing.
        } else if self.progress.is_hidden() {
            output::note(&text);
        } else {
            let _ = self.progress.println(text);
        }
    }

    /// Opens every connection at `--connect-rate`; each then counts what
    /// arrives until stopped.
    async fn connect(&mut self) -> anyhow::Result<Connected> {
        let args = self.args;
        if args.workers > 1 && args.role() == ProcessRole::Coordinator {
            return self.connect_workers().await;
        }
        let (mine, rate) = args.share();
        let count = mine.len() as u64;
        self.say(format!(
            "connecting {} over {} to {} ({}/s)",
            output::count(args.connections, "connection"),
            output::count(args.orgs, "org"),
            self.plan
                .targets
                .iter()
                .map(|t| t.ws.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            args.connect_rate
        ));
        let bar = self.progress.add(bar(count, "connecting"));
        let (stop, stop_rx) = watch::channel(false);
        let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Opened>();
        let mut tasks = JoinSet::new();
        let permits = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
        let started = Instant::now();
        let spacing = Duration::from_secs_f64(1.0 / rate);
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        let mut opened = 0u64;
        let mut per_org = vec![0u64; self.plan.orgs.len()];
        let mut per_node = vec![0u64; self.plan.targets.len()];
        let targets = Arc::new(self.plan.targets.clone());
        let (mut reported, mut launched) = (0u64, 0u64);
        let mut next_start = Instant::now();
        while reported < count {
            tokio::select! {
                biased;
                () = self.interrupt.recv() => {
                    self.interrupted = true;
                    break;
                }
                Some(result) = opened_rx.recv() => {
                    reported += 1;
                    bar.inc(1);
                    match result {
                        Opened::Ok { connect, org, node } => {
                            opened += 1;
                            per_org[org] += 1;
                            per_node[node] += 1;
                            let _ = lock(&self.shared.connect).record(micros(connect));
                        }
                        Opened::Failed(why) => *failures.entry(why).or_default() += 1,
                    }
                }
                permit = permits.clone().acquire_owned(), if launched < count => {
                    let Ok(permit) = permit else { break };
                    tokio::time::sleep_until(next_start).await;
                    next_start += spacing;
                    let spec = self.spec(mine[usize::try_from(launched).unwrap_or(0)])?;
                    launched += 1;
                    tasks.spawn(connection(
                        spec,
                        targets.clone(),
                        args.churn_skip,
                        self.shared.clone(),
                        opened_tx.clone(),
                        stop_rx.clone(),
                        permit,
                    ));
                }
            }
        }
        drop(opened_tx);
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        self.say(format!(
            "connected {opened} of {count} in {seconds:.2} s ({} failed)",
            count - opened
        ));
        if opened == 0 && !self.interrupted {
            let why = failures.keys().next().cloned().unwrap_or_default();
            bail!("no connection could be opened: {why}");
        }
        Ok(Connected {
            opened,
            failures,
            per_org,
            per_node,
            seconds,
            tasks,
            workers: Vec::new(),
            stop,
        })
    }

    /// Connection `i`: its org (round-robin), source address and token.
    fn spec(&self, i: u64) -> anyhow::Result<ConnectionSpec> {
        let args = self.args;
        let org = usize::try_from(i % args.orgs).unwrap_or(0);
        let claims = Claims::new(
            &self.plan.user_of(i),
            Some(&self.plan.orgs[org]),
            Role::User,
            args.duration.as_secs() + 600,
        );
        let token = mint(&self.plan.secret, &claims).context("minting a token")?;
        let source = args.source_ips[usize::try_from(i).unwrap_or(0) % args.source_ips.len()];
        Ok(ConnectionSpec {
            index: i,
            user_channel: format!("user:{}", self.plan.user_of(i)),
            org,
            node: usize::try_from(i).unwrap_or(0) % self.plan.targets.len(),
            org_channel: format!("org:{}", self.plan.orgs[org]),
            source,
            token,
        })
    }

    /// Publishes `--rate` events a second for `--duration`, in batches,
    /// `--publishers` requests in flight at most.
    async fn publish(&mut self) -> Published {
        let args = self.args;
        let total = self.plan.total_events;
        let per_org: Arc<Vec<AtomicU64>> = Arc::new(
            (0..self.plan.orgs.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let bar = self.progress.add(bar(total, "publishing"));
        // --churn: R random connections a second are told to drop and
        // resume, for as long as events are published.
        // (With --workers, each worker runs its own.)
        let churner = if args.workers == 1 {
            churner(self.shared.clone(), args.churn)
        } else {
            None
        };
        let started = Instant::now();
        let service_token = mint(
            &self.plan.secret,
            &Claims::new(
                "hrrt-load",
                None,
                Role::Service,
                args.duration.as_secs() + 600,
            ),
        );
        match service_token {
            Err(e) => {
                *lock(&failures)
                    .entry(format!("minting a token: {e}"))
                    .or_default() += total;
            }
            Ok(_) if self.interrupted => {}
            Ok(token) => {
                self.say(format!(
                    "publishing {total} events at {}/s for {} in batches of {}",
                    args.rate,
                    humantime::format_duration(args.duration),
                    args.batch
                ));
                let mut publishing = Publishing {
                    token,
                    in_flight: Arc::new(Semaphore::new(
                        usize::try_from(args.publishers).unwrap_or(16),
                    )),
                    requests: JoinSet::new(),
                    failures: failures.clone(),
                    per_org: per_org.clone(),
                    started,
                    sent: 0,
                    user_sent: 0,
                    user_rng: Rng::new(0x05EE),
                };
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_status = Instant::now();
                while publishing.sent < total {
                    tokio::select! {
                        biased;
                        () = self.interrupt.recv() => {
                            self.interrupted = true;
                            break;
                        }
                        _ = tick.tick() => {}
                    }
                    publishing.user_events(self).await;
                    publishing.batches(self, &bar).await;
                    while publishing.requests.try_join_next().is_some() {}
                    if last_status.elapsed() >= Duration::from_millis(250) {
                        last_status = Instant::now();
                        bar.set_message(live_status(&self.shared, started));
                    }
                }
                let mut requests = publishing.requests;
                tokio::select! {
                    () = self.interrupt.recv() => self.interrupted = true,
                    _ = async { while requests.join_next().await.is_some() {} } => {}
                }
            }
        }
        bar.finish_and_clear();
        if let Some(churner) = churner {
            churner.abort();
        }
        let failures = lock(&failures).clone();
        Published {
            per_org: per_org.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
            failures,
            started,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Waits until every open connection could have every event, at most
    /// `--drain`.
    async fn drain(&mut self, connected: &Connected, published: &Published) {
        if self.interrupted {
            return;
        }
        // User events too: one replayed after a late resume may still be on
        // its way when the org events are all in, and stopping then would
        // count it lost.
        let expected: u64 = connected
            .per_org
            .iter()
            .zip(&published.per_org)
            .map(|(conns, events)| conns * events)
            .sum::<u64>()
            + self
                .shared
                .user_published
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum::<u64>();
        self.say(format!(
            "draining (up to {})",
            humantime::format_duration(self.args.drain)
        ));
        let deadline = Instant::now() + self.args.drain;
        while self.shared.received.load(Ordering::Relaxed) < expected {
            tokio::select! {
                () = self.interrupt.recv() => { self.interrupted = true; break; }
                () = tokio::time::sleep_until(deadline) => break,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
}

impl Connected {
    /// Stops every connection and collects what each saw.
    async fn stop(&mut self, shared: &Shared) -> Vec<ConnOutcome> {
        if !self.workers.is_empty() {
            return workers::stop_all(self, shared).await;
        }
        let _ = self.stop.send(true);
        let mut outcomes = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Some(outcome)) = joined {
                outcomes.push(outcome);
            }
        }
        outcomes
    }
}

fn per_event_slots(args: &LoadArgs, events: u64) -> Vec<AtomicU64> {
    if args.per_event.is_none() {
        return Vec::new();
    }
    (0..events).map(|_| AtomicU64::new(0)).collect()
}

fn loaded(slots: &[AtomicU64]) -> Vec<u64> {
    slots.iter().map(|s| s.load(Ordering::Relaxed)).collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn bar(len: u64, what: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_prefix(what)
}

fn live_status(shared: &Shared, started: Instant) -> String {
    let mut merged = match histogram() {
        Ok(h) => h,
        Err(_) => return String::new(),
    };
    for shard in &shared.latency {
        let _ = merged.add(&*lock(shard));
    }
    // The workers' running histograms (--workers).
    for h in lock(&shared.remote_latency).iter() {
        let _ = merged.add(h);
    }
    let received = shared.received.load(Ordering::Relaxed) as f64;
    format!(
        "{:.0} deliveries/s  p99 {:.2} ms",
        received / started.elapsed().as_secs_f64().max(0.001),
        merged.value_at_quantile(0.99) as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_load_frames_only() {
        let frame = r#"{"type":"load.tick","payload":{"sent_ns":123,"n":5,"pad":""},"timestamp":"t","channel":"org:x","seq":42}"#;
        assert_eq!(
            parse_event(frame),
            Some(LoadEvent {
                seq: 42,
                sent_ns: 123,
                n: 5
            })
        );
        assert_eq!(
            parse_event(r#"{"type":"ping","payload":{},"timestamp":"t"}"#),
            None
        );
    }

    #[test]
    fn batches_go_round_robin() {
        let orgs = vec!["a".to_owned(), "b".to_owned()];
        let body = batch_body(3, 2, &orgs, 4, 7);
        assert_eq!(body[0]["org_id"], "b");
        assert_eq!(body[1]["org_id"], "a");
        assert_eq!(body[1]["payload"]["pad"], "xxxx");
        assert_eq!(body[1]["payload"]["sent_ns"], 7);
    }
}
