//! `hrrt load`: open N connections over K orgs, publish R events/s for D,
//! check every event reached every connection of its org exactly once and
//! in order, and report connect time, delivery latency, throughput, losses
//! and (with `--server-pid`) the server's memory and CPU cost.

mod report;
mod tally;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use hrrt_server::auth::{Claims, Role, mint};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use self::report::{
    ConnectionReport, EventReport, Percentiles, Report, RunConfig, ServerReport, Throughput,
    parse_thresholds,
};
use self::tally::Tally;
use crate::args::GlobalArgs;
use crate::client::{Api, Cursor, Target, explain, root_cause, ws_request};
use crate::output;

#[derive(Debug, Args)]
pub struct LoadArgs {
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
    #[arg(long, default_value = "10s", value_parser = hrrt_server::config::positive_duration)]
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
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub publishers: u64,
    /// How long to wait for the last deliveries after publishing.
    #[arg(long, default_value = "5s", value_parser = hrrt_server::config::positive_duration)]
    pub drain: Duration,
    /// Publish through this node instead of --url (with the Redis engine:
    /// connections on one node, events entering through another).
    #[arg(long, value_name = "URL")]
    pub publish_url: Option<String>,
    /// The server's process id: report its RSS per connection and CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit 1 unless these hold, e.g. 'p99<20ms,lost=0'.
    #[arg(long, value_name = "RULES")]
    pub fail_on: Option<String>,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// The event type the load test publishes.
const EVENT_TYPE: &str = "load.tick";
/// Shards of the latency histogram, so connections rarely share a lock.
const SHARDS: usize = 16;
/// How long one connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Handshakes in flight at once.
const CONNECTS_IN_FLIGHT: usize = 512;

/// What every connection task updates.
struct Shared {
    latency: Vec<Mutex<Histogram<u64>>>,
    connect: Mutex<Histogram<u64>>,
    /// Event frames received, duplicates included (for progress).
    received: AtomicU64,
    /// Per event (by its number), the latency of its last recipient so far,
    /// in microseconds: how long a broadcast takes to reach everyone.
    last_recipient: Vec<AtomicU64>,
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
struct ConnOutcome {
    org: usize,
    tally: Tally,
    closed_early: Option<String>,
}

/// A connection's first report: open (with its start seq) or failed.
enum Opened {
    Ok { connect: Duration, org: usize },
    Failed(String),
}

pub async fn run(args: LoadArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
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
    let target = Target::parse(&global.url)?;
    let api = Api::new(match &args.publish_url {
        Some(url) => Target::parse(url)?,
        None => target.clone(),
    })?;
    raise_open_files(args.connections);

    let run_id = hrrt_server::random_hex(3);
    let orgs: Vec<String> = (0..args.orgs)
        .map(|k| format!("load-{run_id}-{k}"))
        .collect();
    let total_events = (args.rate * args.duration.as_secs_f64()).round().max(1.0) as u64;
    if total_events > 50_000_000 {
        bail!("--rate × --duration is {total_events} events; at most 50,000,000 per run");
    }
    let shared = Arc::new(Shared {
        latency: (0..SHARDS)
            .map(|_| histogram().map(Mutex::new))
            .collect::<Result<_, _>>()?,
        connect: Mutex::new(histogram()?),
        received: AtomicU64::new(0),
        last_recipient: (0..total_events).map(|_| AtomicU64::new(0)).collect(),
    });
    let progress = if args.no_progress || !std::io::stderr().is_terminal() {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let quiet = progress.is_hidden();
    let say = |text: String| {
        if quiet {
            output::note(&text);
        } else {
            let _ = progress.println(text);
        }
    };
    let mut interrupt = crate::interrupt::Interrupt::new();
    let mut interrupted = false;

    let server_before = args.server_pid.map(ProcSample::read);

    // Connect.
    say(format!(
        "connecting {} connections over {} orgs to {} ({}/s)",
        args.connections, args.orgs, target.ws, args.connect_rate
    ));
    let connect_bar = progress.add(bar(args.connections, "connecting"));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Opened>();
    let mut tasks = JoinSet::new();
    let permits = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let connect_started = Instant::now();
    let spacing = Duration::from_secs_f64(1.0 / args.connect_rate as f64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut opened = 0u64;
    let mut conns_per_org = vec![0u64; orgs.len()];
    let mut reported = 0u64;
    let mut next_start = Instant::now();
    let mut launched = 0u64;
    while reported < args.connections {
        tokio::select! {
            biased;
            () = interrupt.recv() => {
                interrupted = true;
                break;
            }
            Some(result) = opened_rx.recv() => {
                reported += 1;
                connect_bar.inc(1);
                match result {
                    Opened::Ok { connect, org } => {
                        opened += 1;
                        conns_per_org[org] += 1;
                        let _ = lock(&shared.connect).record(micros(connect));
                    }
                    Opened::Failed(why) => *failures.entry(why).or_default() += 1,
                }
            }
            permit = permits.clone().acquire_owned(), if launched < args.connections => {
                let Ok(permit) = permit else { break };
                tokio::time::sleep_until(next_start).await;
                next_start += spacing;
                let i = launched;
                launched += 1;
                let org = usize::try_from(i % args.orgs).unwrap_or(0);
                let claims = Claims::new(
                    &format!("load-{run_id}-u{i}"),
                    Some(&orgs[org]),
                    Role::User,
                    args.duration.as_secs() + 600,
                );
                let token = mint(&secret, &claims).context("minting a token")?;
                let source = args.source_ips[usize::try_from(i).unwrap_or(0) % args.source_ips.len()];
                tasks.spawn(connection(
                    ConnectionSpec { index: i, org, org_channel: format!("org:{}", orgs[org]), source },
                    target.clone(),
                    token,
                    shared.clone(),
                    opened_tx.clone(),
                    stop_rx.clone(),
                    permit,
                ));
            }
        }
    }
    drop(opened_tx);
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    connect_bar.finish_and_clear();
    say(format!(
        "connected {opened} of {} in {connect_seconds:.2} s ({} failed)",
        args.connections,
        args.connections - opened
    ));
    if opened == 0 && !interrupted {
        let why = failures.keys().next().cloned().unwrap_or_default();
        bail!("no connection could be opened: {why}");
    }
    let server_connected = args.server_pid.map(ProcSample::read);

    // Publish.
    let published_per_org: Arc<Vec<AtomicU64>> =
        Arc::new((0..orgs.len()).map(|_| AtomicU64::new(0)).collect());
    let publish_failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let service_token = mint(
        &secret,
        &Claims::new(
            "hrrt-load",
            None,
            Role::Service,
            args.duration.as_secs() + 600,
        ),
    )?;
    let publish_bar = progress.add(bar(total_events, "publishing"));
    let mut publish_seconds = 0.0;
    let publish_started = Instant::now();
    if !interrupted {
        say(format!(
            "publishing {total_events} events at {}/s for {} in batches of {}",
            args.rate,
            humantime::format_duration(args.duration),
            args.batch
        ));
        let in_flight = Arc::new(Semaphore::new(
            usize::try_from(args.publishers).unwrap_or(16),
        ));
        let mut requests = JoinSet::new();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = Instant::now();
        while sent < total_events {
            tokio::select! {
                biased;
                () = interrupt.recv() => {
                    interrupted = true;
                    break;
                }
                _ = tick.tick() => {}
            }
            let due =
                ((publish_started.elapsed().as_secs_f64() * args.rate) as u64).min(total_events);
            while sent < due {
                let n = args.batch.min(total_events - sent);
                // Wait for a full batch to be due, except for the last one.
                if sent + n > due && sent + n < total_events {
                    break;
                }
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let body = batch_body(sent, n, &orgs, args.payload_bytes);
                let api = api.clone();
                let token = service_token.clone();
                let per_org = published_per_org.clone();
                let failures = publish_failures.clone();
                let org_count = orgs.len() as u64;
                let first = sent;
                requests.spawn(async move {
                    let _permit = permit;
                    match api.post("/api/events", &token, &body).await {
                        Ok((200, _)) => {
                            for n in first..first + n {
                                per_org[usize::try_from(n % org_count).unwrap_or(0)]
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok((status, answer)) => {
                            *lock(&failures)
                                .entry(explain(status, &answer, "service"))
                                .or_default() += n;
                        }
                        Err(e) => *lock(&failures).entry(format!("{e:#}")).or_default() += n,
                    }
                });
                sent += n;
                publish_bar.set_position(sent);
            }
            while requests.try_join_next().is_some() {}
            if last_status.elapsed() >= Duration::from_millis(250) {
                last_status = Instant::now();
                publish_bar.set_message(live_status(&shared, publish_started));
            }
        }
        tokio::select! {
            () = interrupt.recv() => interrupted = true,
            _ = async { while requests.join_next().await.is_some() {} } => {}
        }
        publish_seconds = publish_started.elapsed().as_secs_f64();
    }
    publish_bar.finish_and_clear();
    let published: u64 = published_per_org
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .sum();

    // Drain: wait until every open connection could have everything.
    let expected_estimate: u64 = conns_per_org
        .iter()
        .enumerate()
        .map(|(org, conns)| conns * published_per_org[org].load(Ordering::Relaxed))
        .sum();
    if !interrupted {
        say(format!(
            "draining (up to {})",
            humantime::format_duration(args.drain)
        ));
        let deadline = Instant::now() + args.drain;
        loop {
            if shared.received.load(Ordering::Relaxed) >= expected_estimate {
                break;
            }
            tokio::select! {
                () = interrupt.recv() => { interrupted = true; break; }
                () = tokio::time::sleep_until(deadline) => break,
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
    let delivery_seconds = publish_started.elapsed().as_secs_f64();
    let server_end = args.server_pid.map(ProcSample::read);

    // Stop every connection and collect what each saw.
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Some(outcome)) = joined {
            outcomes.push(outcome);
        }
    }

    let publish_failures = lock(&publish_failures).clone();
    let mut events = EventReport {
        published,
        publish_errors: publish_failures.values().sum(),
        publish_failures,
        ..EventReport::default()
    };
    let mut closed_early: BTreeMap<String, u64> = BTreeMap::new();
    for outcome in &outcomes {
        let expected = published_per_org[outcome.org].load(Ordering::Relaxed);
        events.expected_deliveries += expected;
        events.delivered += outcome.tally.unique.min(expected);
        events.lost += outcome.tally.lost(expected);
        events.duplicated += outcome.tally.duplicates;
        events.out_of_order += outcome.tally.out_of_order;
        if let Some(why) = &outcome.closed_early {
            *closed_early.entry(why.clone()).or_default() += 1;
        }
    }
    let mut latency = histogram()?;
    for shard in &shared.latency {
        let _ = latency.add(&*lock(shard));
    }
    let mut last_recipient = histogram()?;
    for slot in &shared.last_recipient {
        let us = slot.load(Ordering::Relaxed);
        if us > 0 {
            let _ = last_recipient.record(us);
        }
    }
    let server = match (args.server_pid, server_before, server_connected, server_end) {
        (Some(pid), Some(before), Some(connected), Some(end)) => {
            let cpu = end.cpu_seconds - connected.cpu_seconds;
            Some(ServerReport {
                pid,
                rss_kib_before: before.rss_kib,
                rss_kib_connected: connected.rss_kib,
                rss_kib_end: end.rss_kib,
                rss_per_connection_kib: if opened > 0 {
                    (connected.rss_kib as f64 - before.rss_kib as f64) / opened as f64
                } else {
                    0.0
                },
                cpu_seconds: cpu,
                deliveries_per_cpu_second: if cpu > 0.0 {
                    events.delivered as f64 / cpu
                } else {
                    0.0
                },
                connect_cpu_seconds: connected.cpu_seconds - before.cpu_seconds,
            })
        }
        _ => None,
    };
    let mut report = Report {
        run_id,
        url: target.http.to_string(),
        config: RunConfig {
            connections: args.connections,
            orgs: args.orgs,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            batch: args.batch,
            connect_rate: args.connect_rate,
            source_ips: args.source_ips.iter().map(ToString::to_string).collect(),
        },
        interrupted,
        connections: ConnectionReport {
            requested: args.connections,
            ok: opened,
            failed: args.connections - opened,
            failures,
            closed_early,
            connect_ms: Percentiles::from_micros(&lock(&shared.connect)),
            connects_per_s: if connect_seconds > 0.0 {
                opened as f64 / connect_seconds
            } else {
                0.0
            },
        },
        latency_ms: Percentiles::from_micros(&latency),
        last_recipient_ms: Percentiles::from_micros(&last_recipient),
        throughput: Throughput {
            publish_rate: if publish_seconds > 0.0 {
                published as f64 / publish_seconds
            } else {
                0.0
            },
            deliveries_per_s: if delivery_seconds > 0.0 {
                events.delivered as f64 / delivery_seconds
            } else {
                0.0
            },
            publish_seconds,
        },
        events,
        server,
        thresholds: Vec::new(),
        passed: false,
    };
    report.thresholds = thresholds.iter().map(|t| t.check(&report)).collect();
    report.passed = report.clean();

    output::line(&report.human())?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
    let received = shared.received.load(Ordering::Relaxed) as f64;
    format!(
        "{:.0} deliveries/s  p99 {:.2} ms",
        received / started.elapsed().as_secs_f64().max(0.001),
        merged.value_at_quantile(0.99) as f64 / 1000.0
    )
}

/// The JSON body of one publish request: events `first .. first + n`,
/// round-robin over the orgs, each carrying its send time.
fn batch_body(first: u64, n: u64, orgs: &[String], pad: u64) -> Value {
    let padding = "x".repeat(usize::try_from(pad).unwrap_or(0));
    let sent_ns = unix_nanos();
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
    org: usize,
    org_channel: String,
    source: IpAddr,
}

/// One connection: open it, report, then count what arrives until stopped.
async fn connection(
    spec: ConnectionSpec,
    target: Target,
    token: String,
    shared: Arc<Shared>,
    opened: mpsc::UnboundedSender<Opened>,
    mut stop: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<ConnOutcome> {
    let started = Instant::now();
    let open = tokio::time::timeout(CONNECT_TIMEOUT, open(&spec, &target, &token)).await;
    drop(permit);
    let (mut ws, start) = match open {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            let _ = opened.send(Opened::Failed(e));
            return None;
        }
        Err(_) => {
            let _ = opened.send(Opened::Failed("connect timed out".to_owned()));
            return None;
        }
    };
    let _ = opened.send(Opened::Ok {
        connect: started.elapsed(),
        org: spec.org,
    });
    drop(opened);

    let mut tally = Tally::new(start);
    let shard = &shared.latency[usize::try_from(spec.index).unwrap_or(0) % SHARDS];
    let mut samples: Vec<u64> = Vec::with_capacity(64);
    let flush = |samples: &mut Vec<u64>| {
        let mut h = lock(shard);
        for s in samples.drain(..) {
            let _ = h.record(s.max(1));
        }
    };
    let mut closed_early = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(LoadEvent { seq, sent_ns, n }) = parse_event(&text) {
                        tally.observe(seq);
                        let latency = unix_nanos().saturating_sub(sent_ns) / 1000;
                        samples.push(latency);
                        if let Some(slot) = usize::try_from(n).ok().and_then(|n| shared.last_recipient.get(n)) {
                            slot.fetch_max(latency.max(1), Ordering::Relaxed);
                        }
                        shared.received.fetch_add(1, Ordering::Relaxed);
                        if samples.len() == samples.capacity() {
                            flush(&mut samples);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    closed_early = Some(match frame {
                        Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                        None => "closed without a code".to_owned(),
                    });
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    closed_early = Some(format!("connection lost: {}", root_cause(&e)));
                    break;
                }
                None => {
                    closed_early = Some("connection lost".to_owned());
                    break;
                }
            },
        }
    }
    flush(&mut samples);
    // A clean goodbye, bounded: the server may be gone.
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    Some(ConnOutcome {
        org: spec.org,
        tally,
        closed_early,
    })
}

/// Connects from `spec.source`, handshakes, reads `connected`; answers the
/// org channel's start position.
async fn open(
    spec: &ConnectionSpec,
    target: &Target,
    token: &str,
) -> Result<(crate::client::Ws, u64), String> {
    let request =
        ws_request(target, token, &Cursor::default(), None).map_err(|e| format!("{e:#}"))?;
    let host = target.ws.host_str().unwrap_or("127.0.0.1");
    let port = target.ws.port_or_known_default().unwrap_or(80);
    let server: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .find(|a| a.is_ipv4() == spec.source.is_ipv4())
        .ok_or_else(|| format!("no address of {host} matches {}", spec.source))?;
    let socket = if spec.source.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(spec.source, 0))
        .map_err(|e| format!("bind {}: {e}", spec.source))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    // Small buffers: a load generator holds tens of thousands of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map_err(|e| format!("handshake: {}", root_cause(&e)))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value =
                    serde_json::from_str(&text).map_err(|e| format!("bad first frame: {e}"))?;
                if frame["type"] != "connected" {
                    return Err(format!("first frame was {}", frame["type"]));
                }
                let start = frame["payload"]["positions"][spec.org_channel.as_str()]
                    .as_u64()
                    .unwrap_or(0);
                return Ok((ws, start));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                    None => "closed".to_owned(),
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("handshake: {}", root_cause(&e))),
            None => return Err("closed before connected".to_owned()),
        }
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
        let body = batch_body(3, 2, &orgs, 4);
        assert_eq!(body[0]["org_id"], "b");
        assert_eq!(body[1]["org_id"], "a");
        assert_eq!(body[1]["payload"]["pad"], "xxxx");
    }
}
