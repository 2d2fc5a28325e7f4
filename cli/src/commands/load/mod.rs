//! `hrrt load`: open N connections over K orgs, publish R events/s for D,
//! check every event reached every connection of its org exactly once and
//! in order, and report connect time, delivery latency, throughput, losses
//! and (with `--server-pid`) the server's memory and CPU cost.

mod report;
mod tally;
mod workers;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
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
use hrrt_protocol::Cursor;

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,
    /// Organisations the connections are spread over (round-robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub orgs: u64,
    /// Events published per second, in total over all orgs.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to publish, e.g. 30s.
    #[arg(long, default_value = "10s", value_parser = hrrt_protocol::positive_duration)]
    pub duration: Duration,
    /// Events per publish request (POST /api/events takes a batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch: u64,
    /// Connections opened per second at most.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_rate: u64,
    /// Local addresses to connect from, round-robin (each gives ~28k
    /// ports; 127.0.0.2 and up work on Linux without set-up).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub source_ips: Vec<IpAddr>,
    /// Extra bytes of padding in each event's payload.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=(1 << 20)))]
    pub payload_bytes: u64,
    /// User-channel traffic beside the org events: this many `share.created`
    /// events a second, each to the user of one random connection (its
    /// own channel), with its own latency line in the report.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub user_rate: f64,
    /// Churn: this many random connections a second drop during the
    /// publish phase and reconnect after a random pause of at most 1 s, to
    /// a random node of --nodes, resuming with `since` + `epoch`.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub churn: f64,
    /// Worker processes that hold the connections (each gets its own
    /// open-file limit; this process publishes and reports for all).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
    /// Internal: this process is worker I of --workers.
    #[arg(long, hide = true)]
    pub worker_index: Option<u64>,
    /// Internal: the run a worker belongs to.
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
    /// Test-only: resume this many seqs past what was received, as a
    /// broken client would; the report must show the loss.
    #[arg(long, default_value_t = 0, hide = true)]
    pub churn_skip: u64,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub publishers: u64,
    /// How long to wait for the last deliveries after publishing.
    #[arg(long, default_value = "5s", value_parser = hrrt_protocol::positive_duration)]
    pub drain: Duration,
    /// Spread the connections round-robin over these nodes (a cluster
    /// sharing one Redis) instead of --url; the report adds a line per node.
    #[arg(long, value_name = "URL,URL,…", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Publish through these nodes (round-robin per request) instead of
    /// --nodes (or --url), e.g. connections on some nodes, events entering
    /// through others.
    #[arg(long, value_name = "URL,URL,…", value_delimiter = ',')]
    pub publish_url: Vec<String>,
    /// The server's process id: report its RSS per connection and CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the full report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write one CSV line per event to this file: its number, org, when it
    /// was published (ms into the publish phase, and Unix ms), how long its
    /// publish request took to be answered and how long its last recipient
    /// waited, to see when the slow ones happened.
    #[arg(long, value_name = "FILE")]
    pub per_event: Option<PathBuf>,
    /// Exit 1 unless these hold, e.g. 'p99<20ms,lost=0'.
    #[arg(long, value_name = "RULES")]
    pub fail_on: Option<String>,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
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
        if args.worker_index.is_none() {
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
    if let Some(index) = args.worker_index {
        return workers::run_worker(&args, global, index).await;
    }
    let plan = Plan::new(&args, global)?;
    // A report file that cannot be written is found now, not after the run;
    // opened without truncating, so a run that then fails leaves the last
    // report as it was.
    for path in [&args.report, &args.per_event].into_iter().flatten() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
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
    let json = || serde_json::to_string_pretty(&report).context("encoding the report");
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
    Ok(if report.passed {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
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
            || args.worker_index.is_some()
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
        if self.args.worker_index.is_some() {
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
        if args.workers > 1 && args.worker_index.is_none() {
            return self.connect_workers().await;
        }
        // A worker opens its share: every index ≡ its own, mod --workers.
        let mine: Vec<u64> = match args.worker_index {
            Some(w) => (0..args.connections)
                .filter(|k| k % args.workers == w)
                .collect(),
            None => (0..args.connections).collect(),
        };
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
        // A worker opens its share at its share of --connect-rate.
        let rate = match args.worker_index {
            Some(_) => (args.connect_rate as f64 / args.workers as f64).max(1.0),
            None => args.connect_rate as f64,
        };
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
                let in_flight = Arc::new(Semaphore::new(
                    usize::try_from(args.publishers).unwrap_or(16),
                ));
                let mut requests = JoinSet::new();
                let mut sent = 0u64;
                let (mut user_sent, mut user_rng) = (0u64, Rng::new(0x05EE));
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_status = Instant::now();
                while sent < total {
                    tokio::select! {
                        biased;
                        () = self.interrupt.recv() => {
                            self.interrupted = true;
                            break;
                        }
                        _ = tick.tick() => {}
                    }
                    // User events, one per request, to random connections.
                    let user_due = (started.elapsed().as_secs_f64() * args.user_rate) as u64;
                    while user_sent < user_due && !self.shared.user_published.is_empty() {
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            break;
                        };
                        let k = user_rng.below(self.shared.user_published.len() as u64);
                        let api = &self.plan.apis
                            [usize::try_from(user_sent).unwrap_or(0) % self.plan.apis.len()];
                        requests.spawn(publish_user(
                            api.clone(),
                            token.clone(),
                            json!({
                                "type": USER_EVENT_TYPE,
                                "user_id": self.plan.user_of(k),
                                "payload": {"sent_ns": unix_nanos(), "load": self.plan.run_id},
                            }),
                            (k, self.shared.clone()),
                            failures.clone(),
                            permit,
                        ));
                        user_sent += 1;
                    }
                    let due = ((started.elapsed().as_secs_f64() * args.rate) as u64).min(total);
                    while sent < due {
                        let n = args.batch.min(total - sent);
                        // Wait for a full batch to be due, except for the last one.
                        if sent + n > due && sent + n < total {
                            break;
                        }
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            break;
                        };
                        let api = &self.plan.apis[usize::try_from(sent / args.batch).unwrap_or(0)
                            % self.plan.apis.len()];
                        let sent_ns = unix_nanos();
                        for i in sent..sent + n {
                            if let Some(slot) = usize::try_from(i)
                                .ok()
                                .and_then(|i| self.shared.sent_ns.get(i))
                            {
                                slot.store(sent_ns, Ordering::Relaxed);
                            }
                        }
                        requests.spawn(publish_batch(
                            api.clone(),
                            token.clone(),
                            batch_body(sent, n, &self.plan.orgs, args.payload_bytes, sent_ns),
                            (sent, n, self.shared.clone()),
                            per_org.clone(),
                            failures.clone(),
                            permit,
                        ));
                        sent += n;
                        bar.set_position(sent);
                    }
                    while requests.try_join_next().is_some() {}
                    if last_status.elapsed() >= Duration::from_millis(250) {
                        last_status = Instant::now();
                        bar.set_message(live_status(&self.shared, started));
                    }
                }
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

/// One user event; counts it for its connection once accepted.
async fn publish_user(
    api: Api,
    token: String,
    body: Value,
    (k, shared): (u64, Arc<Shared>),
    failures: Arc<Mutex<BTreeMap<String, u64>>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    match api.post("/api/events", &token, &body).await {
        Ok((200, _)) => {
            if let Some(n) = usize::try_from(k)
                .ok()
                .and_then(|k| shared.user_published.get(k))
            {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok((status, answer)) => {
            *lock(&failures)
                .entry(format!(
                    "user event: {}",
                    explain(status, &answer, "service", true)
                ))
                .or_default() += 1;
        }
        Err(e) => {
            *lock(&failures)
                .entry(format!("user event: {e:#}"))
                .or_default() += 1
        }
    }
}

/// One publish request of events `first .. first + n`; counts what was
/// accepted per org (and when, for `--per-event`), and why the rest failed.
async fn publish_batch(
    api: Api,
    token: String,
    body: Value,
    (first, n, shared): (u64, u64, Arc<Shared>),
    per_org: Arc<Vec<AtomicU64>>,
    failures: Arc<Mutex<BTreeMap<String, u64>>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    match api.post("/api/events", &token, &body).await {
        Ok((200, _)) => {
            let orgs = per_org.len() as u64;
            let now = unix_nanos();
            for i in first..first + n {
                per_org[usize::try_from(i % orgs).unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = usize::try_from(i)
                    .ok()
                    .and_then(|i| shared.accepted_ns.get(i))
                {
                    slot.store(now, Ordering::Relaxed);
                }
            }
        }
        Ok((status, answer)) => {
            *lock(&failures)
                .entry(explain(status, &answer, "service", true))
                .or_default() += n;
        }
        Err(e) => *lock(&failures).entry(format!("{e:#}")).or_default() += n,
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

/// The JSON body of one publish request: events `first .. first + n`,
/// round-robin over the orgs, each carrying its send time.
fn batch_body(first: u64, n: u64, orgs: &[String], pad: u64, sent_ns: u64) -> Value {
    let padding = "x".repeat(usize::try_from(pad).unwrap_or(0));
    let events: Vec<Value> = (first..first + n)
        .map(|i| {
            let org = &orgs[usize::try_from(i % orgs.len() as u64).unwrap_or(0)];
            json!({
                "type": EVENT_TYPE,
                "org_id": org,
                "payload": {"sent_ns": sent_ns, "n": i, "pad": padding},
            })
        })
        .collect();
    Value::Array(events)
}

struct ConnectionSpec {
    index: u64,
    user_channel: String,
    org: usize,
    node: usize,
    org_channel: String,
    source: IpAddr,
    token: String,
}

/// One connection: open it, report, then count what arrives until stopped.
async fn connection(
    spec: ConnectionSpec,
    targets: Arc<Vec<Target>>,
    churn_skip: u64,
    shared: Arc<Shared>,
    opened: mpsc::UnboundedSender<Opened>,
    mut stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<ConnOutcome> {
    let started = Instant::now();
    let target = &targets[spec.node % targets.len()];
    let first = open(&spec, target, Cursor::default()).await;
    drop(permit);
    let (connection, start, user_start, mut epoch) = match first {
        Ok(pair) => pair,
        // With several nodes, the failure names its node.
        Err(e) if targets.len() > 1 => {
            let _ = opened.send(Opened::Failed(format!("{}: {e}", target.http)));
            return None;
        }
        Err(e) => {
            let _ = opened.send(Opened::Failed(e));
            return None;
        }
    };
    let _ = opened.send(Opened::Ok {
        connect: started.elapsed(),
        org: spec.org,
        node: spec.node,
    });
    drop(opened);

    let mut tally = Tally::new(start);
    let mut user_tally = Tally::new(user_start);
    let shard = &shared.latency[usize::try_from(spec.index).unwrap_or(0) % SHARDS];
    let mut samples: Vec<u64> = Vec::with_capacity(64);
    // Samples reach the shared histogram every 64, or every 250 ms: a
    // connection that gets a few events a second must still show in the
    // live p99 (it read 0.00 all through a run of sparse connections).
    let mut flushed = Instant::now();
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
    let flush = |samples: &mut Vec<u64>, node: usize| {
        let mut h = lock(shard);
        let node_shard = &shared.node_latency[node % shared.node_latency.len().max(1)];
        let mut n = (shared.node_latency.len() > 1).then(|| lock(node_shard));
        for s in samples.drain(..) {
            let _ = h.record(s.max(1));
            if let Some(n) = n.as_mut() {
                let _ = n.record(s.max(1));
            }
        }
    };
    enum Step {
        Stop,
        Churn,
        Got(RawReceived),
    }
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
                flush(&mut samples, node);
                tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
                node = usize::try_from(rng.below(targets.len() as u64)).unwrap_or(0);
                resumed_ns = unix_nanos();
                let cursor = Cursor {
                    epoch: epoch.clone(),
                    positions: [
                        (spec.org_channel.clone(), tally.last() + skip),
                        (spec.user_channel.clone(), user_tally.last()),
                    ]
                    .into(),
                };
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
                    if let Some((seq, sent_ns)) = parse_user_event(&text) {
                        user_tally.observe(seq);
                        shared.received.fetch_add(1, Ordering::Relaxed);
                        let latency = unix_nanos().saturating_sub(sent_ns) / 1000;
                        let into = if sent_ns < resumed_ns {
                            &shared.replayed_latency
                        } else {
                            &shared.user_latency
                        };
                        let _ = lock(into).record(latency.max(1));
                        continue;
                    }
                    if let Ok(ServerFrame::Resync { payload, .. }) = ServerFrame::decode(&text)
                        && (payload.channel.as_str() == spec.org_channel
                            || payload.channel.as_str() == spec.user_channel)
                    {
                        let reason = serde_json::to_value(payload.reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        *resyncs.entry(reason).or_default() += 1;
                        // What the server could not replay is not lost.
                        let which = if payload.channel.as_str() == spec.org_channel {
                            &mut tally
                        } else {
                            &mut user_tally
                        };
                        which.cover(payload.requested + 1, payload.oldest.saturating_sub(1));
                    }
                    continue;
                };
                tally.observe(seq);
                let latency = unix_nanos().saturating_sub(sent_ns) / 1000;
                shared.received.fetch_add(1, Ordering::Relaxed);
                if sent_ns < resumed_ns {
                    let _ = lock(&shared.replayed_latency).record(latency.max(1));
                    continue;
                }
                samples.push(latency);
                if let Some(slot) = usize::try_from(n)
                    .ok()
                    .and_then(|n| shared.last_recipient.get(n))
                {
                    slot.fetch_max(latency.max(1), Ordering::Relaxed);
                }
                if samples.len() == samples.capacity()
                    || flushed.elapsed() >= Duration::from_millis(250)
                {
                    flush(&mut samples, node);
                    flushed = Instant::now();
                }
            }
            RawReceived::Closed(close) => break Some(close.to_string()),
            RawReceived::Lost(why) => break Some(format!("connection lost: {why}")),
        }
    };
    flush(&mut samples, node);
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

/// Connects from `spec.source` with small buffers (a load generator holds
/// tens of thousands of these), TLS for `wss://`; reads `connected`;
/// answers the org channel's start position.
async fn open(
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
struct LoadEvent {
    seq: u64,
    sent_ns: u64,
    /// The event's number in the run.
    n: u64,
}

/// Reads a load event frame without a full JSON parse: at hundreds of
/// thousands of frames a second the load generator must stay far cheaper
/// than the server it measures. Relies on field names, not their order.
fn parse_event(text: &str) -> Option<LoadEvent> {
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
fn churner(shared: Arc<Shared>, rate: f64) -> Option<tokio::task::JoinHandle<()>> {
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
fn parse_user_event(text: &str) -> Option<(u64, u64)> {
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

/// Raises the soft open-file limit as far as the hard limit allows.
fn raise_open_files(connections: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < connections + 64 => output::warn(&format!(
            "the open-file limit is {limit}: at most about {} connections can open",
            limit.saturating_sub(64)
        )),
        Ok(_) => {}
        Err(e) => output::warn(&format!("could not raise the open-file limit: {e}")),
    }
}

/// A reading of a process's memory and CPU time from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    rss_kib: u64,
    cpu_seconds: f64,
}

impl ProcSample {
    fn read(pid: u32) -> Self {
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        // utime and stime are fields 14 and 15, after the ")" that ends the
        // command name; Linux counts them in 100 Hz clock ticks.
        let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .unwrap_or(0.0);
        Self {
            rss_kib,
            cpu_seconds,
        }
    }
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
