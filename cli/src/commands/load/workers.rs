//! `--workers N`: the connections live in N worker processes of this same
//! binary, each with its own open-file limit (20,000 here), while this
//! process publishes, drains and reports for all of them.
//!
//! A worker is `hrrt load` with the same flags plus `--worker-index I
//! --run-id R`: it opens the connections whose index ≡ I (mod N), and talks
//! to the parent in JSON lines: on stdout `{"connected":…}` once, then
//! `{"progress":…}` every 250 ms (deliveries so far and its latency
//! histogram, for the live line and the drain), then `{"done":…}` (every
//! connection's outcome and its histograms); on stdin one line, the
//! accepted events per org and per user, which tells it to stop.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use super::{ConnOutcome, Connected, LoadArgs, Run, Shared, histogram, lock};
use crate::args::ServerArgs;
use crate::exit::ExitStatus;

/// Open files a process needs beside its connections.
const SPARE_FILES: u64 = 64;

/// Refuses, before anything is opened, a run whose per-process share of
/// connections is over the process's open-file limit.
pub(super) fn check_open_files(args: &LoadArgs) -> anyhow::Result<()> {
    let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return Ok(());
    };
    let per_process = args.connections.div_ceil(args.workers);
    if per_process + SPARE_FILES > hard {
        let needed = args
            .connections
            .div_ceil(hard.saturating_sub(SPARE_FILES).max(1));
        bail!(
            "--connections {} needs {} open files per process with --workers {}, over this \
             machine's limit of {hard}: use --workers {needed} or more",
            args.connections,
            per_process + SPARE_FILES,
            args.workers
        );
    }
    Ok(())
}

/// A histogram as `[[value, count], …]`: what crosses the pipe.
fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn from_pairs(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram()
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()));
    for (v, n) in pairs {
        let _ = h.record_n((*v).max(1), *n);
    }
    h
}

/// A histogram as (value, count) pairs, for the pipe.
type Pairs = Vec<(u64, u64)>;

/// What a worker tells its parent, one JSON line each
/// (`{"connected": {…}}`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum WorkerMsg {
    /// Its share is open (or failed).
    Connected {
        opened: u64,
        failures: BTreeMap<String, u64>,
        per_org: Vec<u64>,
        per_node: Vec<u64>,
        seconds: f64,
        connect: Pairs,
    },
    /// Every 250 ms: what arrived so far.
    Progress { received: u64, latency: Pairs },
    /// After the stop: every connection's outcome and the histograms.
    Done {
        outcomes: Vec<ConnOutcome>,
        latency: Pairs,
        node_latency: Vec<Pairs>,
        user_latency: Pairs,
        replayed_latency: Pairs,
        last_recipient: Vec<(usize, u64)>,
    },
}

/// What the parent tells a worker: stop, with the user events published
/// to each of its connections (by connection index).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StopMsg {
    user_published: Vec<(usize, u64)>,
}

/// `Histogram::new(3)` cannot fail (3 significant figures is valid); this
/// only satisfies the types without a panic path.
fn unreachable_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 2, 0).unwrap_or_else(|_| unreachable_histogram())
}

fn emit(message: &WorkerMsg) -> anyhow::Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(message).context("encoding a report for the parent")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to the parent")?;
    out.flush().context("writing to the parent")
}

/// Runs as worker `index`: connects its share, reports, stops when told.
pub(super) async fn run_worker(
    args: &LoadArgs,
    global: &ServerArgs,
    index: u64,
) -> anyhow::Result<ExitStatus> {
    if index >= args.workers {
        bail!(
            "--worker-index {index} is not below --workers {}",
            args.workers
        );
    }
    let plan = super::Plan::new(args, global)?;
    super::raise_open_files(args.connections.div_ceil(args.workers));
    let mut run = Run::new(args, plan)?;
    let mut connected = run.connect().await?;
    emit(&WorkerMsg::Connected {
        opened: connected.opened,
        failures: connected.failures.clone(),
        per_org: connected.per_org.clone(),
        per_node: connected.per_node.clone(),
        seconds: connected.seconds,
        connect: pairs(&lock(&run.shared.connect)),
    })?;
    // Churn runs in the workers (they hold the connections), from now on.
    let churn = super::churner(run.shared.clone(), args.churn);
    // Progress until the parent says stop (or goes away).
    let shared = run.shared.clone();
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let mut h = match histogram() {
                Ok(h) => h,
                Err(_) => return,
            };
            for shard in &shared.latency {
                let _ = h.add(&*lock(shard));
            }
            let line = WorkerMsg::Progress {
                received: shared.received.load(Ordering::Relaxed),
                latency: pairs(&h),
            };
            if emit(&line).is_err() {
                return;
            }
        }
    });
    // One line (or the parent gone: EOF) on stdin; read off the runtime.
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    let stop: StopMsg = match line {
        Ok(Ok(line)) => serde_json::from_str(&line).unwrap_or_default(),
        _ => StopMsg::default(),
    };
    progress.abort();
    if let Some(churn) = churn {
        churn.abort();
    }
    let user: BTreeMap<u64, u64> = stop
        .user_published
        .into_iter()
        .map(|(k, n)| (k as u64, n))
        .collect();
    let mut outcomes = connected.stop(&run.shared).await;
    for outcome in &mut outcomes {
        outcome.user_published = user.get(&outcome.index).copied().unwrap_or(0);
    }
    emit(&done_message(outcomes, &run.shared))?;
    Ok(ExitStatus::Ok)
}

/// A worker's last report: every connection's outcome and its histograms.
fn done_message(outcomes: Vec<ConnOutcome>, shared: &Shared) -> WorkerMsg {
    let merged = |shards: &[std::sync::Mutex<Histogram<u64>>]| {
        let mut h = histogram().unwrap_or_else(|_| unreachable_histogram());
        for shard in shards {
            let _ = h.add(&*lock(shard));
        }
        pairs(&h)
    };
    let last_recipient: Vec<(usize, u64)> = shared
        .last_recipient
        .iter()
        .enumerate()
        .filter_map(|(n, slot)| {
            let us = slot.load(Ordering::Relaxed);
            (us > 0).then_some((n, us))
        })
        .collect();
    WorkerMsg::Done {
        outcomes,
        latency: merged(&shared.latency),
        node_latency: shared
            .node_latency
            .iter()
            .map(|h| pairs(&lock(h)))
            .collect(),
        user_latency: pairs(&lock(&shared.user_latency)),
        replayed_latency: pairs(&lock(&shared.replayed_latency)),
        last_recipient,
    }
}

/// One worker process, as the parent holds it.
pub(super) struct Worker {
    index: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its connections that opened (taken back if it dies).
    opened: u64,
    done: Option<oneshot::Receiver<WorkerMsg>>,
}

impl Run<'_> {
    /// Starts every worker: this program again, with the same arguments
    /// and its index.
    fn spawn_workers(&self, exe: &std::path::Path) -> anyhow::Result<Vec<(u64, Child)>> {
        (0..self.args.workers)
            .map(|index| {
                let child = Command::new(exe)
                    .args(std::env::args_os().skip(1))
                    .args([
                        "--worker-index",
                        &index.to_string(),
                        "--run-id",
                        &self.plan.run_id,
                    ])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting worker {index}"))?;
                Ok((index, child))
            })
            .collect()
    }

    /// Starts the workers and waits until each has opened its share.
    pub(super) async fn connect_workers(&mut self) -> anyhow::Result<Connected> {
        let args = self.args;
        let exe = std::env::current_exe().context("finding this program to start workers")?;
        self.say(format!(
            "starting {} workers for {} connections",
            args.workers, args.connections
        ));
        let started = tokio::time::Instant::now();
        let mut connected = Connected {
            opened: 0,
            failures: BTreeMap::new(),
            per_org: vec![0; self.plan.orgs.len()],
            per_node: vec![0; self.plan.targets.len()],
            seconds: 0.0,
            tasks: tokio::task::JoinSet::new(),
            stop: tokio::sync::watch::channel(false).0,
            workers: Vec::new(),
        };
        let mut connect = histogram()?;
        let mut remote = Vec::new();
        // All start at once, then each is waited for (a worker opens its
        // share at --connect-rate / N).
        let spawned = self.spawn_workers(&exe)?;
        // Generous: a server slower than --connect-rate stretches the phase;
        // a worker that is merely slow must not be taken for a dead one.
        let limit = Duration::from_secs_f64(
            args.connections as f64 / args.connect_rate as f64 * 4.0 + 120.0,
        );
        let deadline = tokio::time::Instant::now() + limit;
        for (index, mut child) in spawned {
            let stdin = child.stdin.take();
            let Some(stdout) = child.stdout.take() else {
                bail!("worker {index} has no stdout");
            };
            let mut lines = BufReader::new(stdout).lines();
            let first = tokio::time::timeout_at(deadline, lines.next_line()).await;
            let report = match first {
                Ok(Ok(Some(line))) => serde_json::from_str::<WorkerMsg>(&line).ok(),
                _ => None,
            };
            let Some(WorkerMsg::Connected {
                opened,
                failures,
                per_org,
                per_node,
                connect: connect_pairs,
                ..
            }) = report
            else {
                let status = child.try_wait().ok().flatten();
                *connected
                    .failures
                    .entry(format!("worker {index} did not start ({})", ended(status)))
                    .or_default() += args.connections.div_ceil(args.workers);
                continue;
            };
            connected.opened += opened;
            for (why, n) in failures {
                *connected.failures.entry(why).or_default() += n;
            }
            for (slot, n) in connected.per_org.iter_mut().zip(per_org) {
                *slot += n;
            }
            for (slot, n) in connected.per_node.iter_mut().zip(per_node) {
                *slot += n;
            }
            let _ = connect.add(from_pairs(&connect_pairs));
            // Its progress feeds the drain and the live line; its last
            // line is the outcome.
            let (done_tx, done_rx) = oneshot::channel();
            let shared = self.shared.clone();
            let slot = remote.len();
            remote.push(histogram()?);
            tokio::spawn(read_progress(lines, shared, slot, done_tx));
            connected.workers.push(Worker {
                index,
                child,
                stdin,
                opened,
                done: Some(done_rx),
            });
        }
        *lock(&self.shared.remote_latency) = remote;
        let _ = lock(&self.shared.connect).add(&connect);
        connected.seconds = started.elapsed().as_secs_f64();
        self.say(format!(
            "connected {} of {} through {} workers in {:.2} s",
            connected.opened, args.connections, args.workers, connected.seconds
        ));
        if connected.opened == 0 && !self.interrupted {
            let why = connected
                .failures
                .keys()
                .next()
                .cloned()
                .unwrap_or_default();
            bail!("no connection could be opened: {why}");
        }
        Ok(connected)
    }
}

async fn read_progress(
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    shared: Arc<Shared>,
    slot: usize,
    done: oneshot::Sender<WorkerMsg>,
) {
    let mut received = 0u64;
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<WorkerMsg>(&line) {
            Ok(WorkerMsg::Progress {
                received: now,
                latency,
            }) => {
                shared
                    .received
                    .fetch_add(now.saturating_sub(received), Ordering::Relaxed);
                received = now;
                if let Some(h) = lock(&shared.remote_latency).get_mut(slot) {
                    *h = from_pairs(&latency);
                }
            }
            Ok(d @ WorkerMsg::Done { .. }) => {
                let _ = done.send(d);
                return;
            }
            _ => {}
        }
    }
}

/// Tells every worker to stop, with what was published; merges their
/// outcomes and histograms into `shared`. A worker that died is named and
/// its connections counted as failed.
pub(super) async fn stop_all(connected: &mut Connected, shared: &Shared) -> Vec<ConnOutcome> {
    let per_user: Vec<(usize, u64)> = shared
        .user_published
        .iter()
        .enumerate()
        .filter_map(|(k, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then_some((k, n))
        })
        .collect();
    let stop = serde_json::to_string(&StopMsg {
        user_published: per_user,
    })
    .unwrap_or_default()
        + "\n";
    let mut outcomes = Vec::new();
    let mut lost_workers = Vec::new();
    for worker in &mut connected.workers {
        if let Some(stdin) = worker.stdin.as_mut() {
            let _ = stdin.write_all(stop.as_bytes()).await;
            let _ = stdin.flush().await;
        }
        let done = match worker.done.take() {
            Some(done) => tokio::time::timeout(Duration::from_secs(120), done).await,
            None => continue,
        };
        let Ok(Ok(WorkerMsg::Done {
            outcomes: mut these,
            latency,
            node_latency,
            user_latency,
            replayed_latency,
            last_recipient,
        })) = done
        else {
            let status = worker.child.try_wait().ok().flatten();
            lost_workers.push((worker.index, worker.opened, status));
            continue;
        };
        outcomes.append(&mut these);
        let _ = lock(&shared.latency[0]).add(from_pairs(&latency));
        let _ = lock(&shared.user_latency).add(from_pairs(&user_latency));
        let _ = lock(&shared.replayed_latency).add(from_pairs(&replayed_latency));
        for (h, p) in shared.node_latency.iter().zip(&node_latency) {
            let _ = lock(h).add(from_pairs(p));
        }
        for (n, us) in last_recipient {
            if let Some(slot) = shared.last_recipient.get(n) {
                slot.fetch_max(us, Ordering::Relaxed);
            }
        }
        let _ = worker.child.wait().await;
    }
    lock(&shared.remote_latency).clear();
    for (index, opened, status) in lost_workers {
        eprintln!(
            "hrrt load: worker {index} ended before reporting ({}); its {opened} connections count as failed",
            ended(status)
        );
        connected.opened = connected.opened.saturating_sub(opened);
        *connected
            .failures
            .entry(format!("worker {index} died"))
            .or_default() += opened;
    }
    outcomes
}

/// How a worker ended, for the line that names it: "exit status: 3",
/// "signal: 9 (SIGKILL)", or that it is still running but stopped talking.
fn ended(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(status) => status.to_string(),
        None => "still running, not answering".to_owned(),
    }
}
