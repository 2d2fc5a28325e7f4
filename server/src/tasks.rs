//! The node's background tasks — keep-alive, token expiry, the engine's
//! sweep, the load watcher, and the engine's own (the Redis subscriber) —
//! one each for the whole node, not one per connection.
//!
//! Each runs under [`supervise`]: a task that ends or panics while the
//! node is up is logged, counted (`hrrt_task_restarts_total`) and started
//! again after a backoff, and `/readyz` answers 503 until it is back. A
//! node whose keep-alive timer died would otherwise keep every connection
//! but never notice a dead one again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use crate::auth::unix_now;
use crate::protocol;
use crate::state::AppState;
use crate::sync::lock;

/// How long a dead task waits before its first restart, doubling up to
/// [`RESTART_MAX`] while it keeps dying within [`HEALTHY_RUN`].
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A task that ran this long before dying starts over at [`RESTART_FIRST`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How often the engine sweeps expired history, idempotency keys and
/// revocations: an event is dropped at most this long (plus the sweep's
/// own time) after it outlived `--history-ttl`.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// How often the load watcher samples how busy the node was: until the
/// first sample after the load rises, direct writes fall behind
/// (docs/architecture.md, the path of one event).
const LOAD_PERIOD: Duration = Duration::from_millis(50);

/// The fan-out queues every event (coalescing) once a runtime worker, or
/// the fan-out itself, was busy this share of a [`LOAD_PERIOD`], and its
/// deliveries, written directly, take at least [`LOAD_DIRECT`] of a core:
/// a direct write is one `send` per frame, so on a saturated core it falls
/// behind where queued frames, several per `send`, keep up. A core busy
/// with anything else is not helped by queueing the few events there are.
pub const LOAD_COALESCE: f64 = 0.9;

/// Coalescing ends once direct writes would fit again: the deliveries of
/// the last sample, at what a delivery cost the fan-out the last time it
/// wrote directly, would take less than this share of a core. Queued
/// frames that go out one at a time cost more than direct writes (a task
/// wake-up and a poll each), so a node that crossed [`LOAD_COALESCE`] in a
/// burst goes back at once, and a saturated one stays. Well below
/// [`LOAD_COALESCE`]: a direct write costs less when its reader is busy
/// (no wake-up to send), so near saturation the estimate runs low, and a
/// closer threshold flaps.
pub const LOAD_DIRECT: f64 = 0.6;

/// Samples in a row that must find direct writes fitting before coalescing
/// ends: one 50 ms sample sees the publishers' own jitter, and an exit on
/// it is undone by the next sample.
const DIRECT_SAMPLES: u32 = 4;

/// What a delivery costs the fan-out with direct writes until one was
/// measured: about one loopback `send` (the floor probe of
/// docs/benchmarks.md).
const DIRECT_COST_FIRST: Duration = Duration::from_micros(10);

/// Which supervised tasks run, for `/readyz`.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Tasks that died and wait for their restart.
    down: Mutex<Vec<&'static str>>,
    /// The running instance of each task.
    running: Mutex<HashMap<&'static str, AbortHandle>>,
}

impl Tasks {
    /// A task that is down, if any.
    pub fn first_down(&self) -> Option<&'static str> {
        lock(&self.down).first().copied()
    }

    /// Kills the running instance of `name`, as a crash would; the
    /// supervisor restarts it. For tests of supervision.
    #[doc(hidden)]
    pub fn kill(&self, name: &str) -> bool {
        lock(&self.running)
            .get(name)
            .map(AbortHandle::abort)
            .is_some()
    }

    fn set_down(&self, name: &'static str, down: bool) {
        let mut list = lock(&self.down);
        list.retain(|n| *n != name);
        if down {
            list.push(name);
        }
    }
}

/// Starts every background task of the node.
pub fn spawn_all(state: &AppState) {
    supervise(state, "keepalive", keepalive);
    supervise(state, "token-expiry", token_expiry);
    supervise(state, "sweep", sweep);
    supervise(state, "heartbeat", heartbeat);
    supervise(state, "load", load_watch);
    for (name, task) in state.engine.background_tasks() {
        supervise(state, name, move |_| task());
    }
}

/// Runs `task(state)` on the node's tracker until shutdown, restarting it
/// whenever it ends or panics before then.
pub fn supervise<F, Fut>(state: &AppState, name: &'static str, task: F)
where
    F: Fn(AppState) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let s = state.clone();
    state.tracker.spawn(async move {
        let mut backoff = RESTART_FIRST;
        loop {
            let started = Instant::now();
            let run = tokio::spawn(task(s.clone()));
            lock(&s.tasks.running).insert(name, run.abort_handle());
            s.tasks.set_down(name, false);
            let ended = tokio::select! {
                ended = run => ended,
                () = s.shutdown.cancelled() => {
                    if let Some(handle) = lock(&s.tasks.running).remove(name) {
                        handle.abort();
                    }
                    return;
                }
            };
            if s.shutdown.is_cancelled() {
                return;
            }
            s.tasks.set_down(name, true);
            s.metrics.task_restarted();
            match ended {
                Ok(()) => tracing::error!(task = name, "background task ended; restarting"),
                Err(e) if e.is_panic() => {
                    tracing::error!(task = name, "background task panicked; restarting");
                }
                Err(_) => tracing::error!(task = name, "background task was killed; restarting"),
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = RESTART_FIRST;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = s.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(RESTART_MAX);
        }
    });
}

/// Ticks every `period` (the first after one period) until shutdown.
async fn every(state: &AppState, period: Duration, mut tick: impl FnMut()) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = interval.tick() => tick(),
        }
    }
}

/// The JSON `ping` (serialised once per tick) and a WebSocket Ping to every
/// connection once per interval; two unanswered close it.
///
/// A round is spread over up to [`MAX_PING_SLICES`] ticks, one slice of the
/// connections each: pinging every connection in one tick makes each
/// round a burst of pings and pongs that holds events up (docs/
/// benchmarks.md, the cluster row).
async fn keepalive(state: AppState) {
    let slices = ping_slices(state.config.ping_interval);
    let mut slice = 0;
    every(&state, state.config.ping_interval / slices, || {
        state
            .hub
            .ping_slice(protocol::ping_frame(), u64::from(slice), u64::from(slices));
        slice = (slice + 1) % slices;
    })
    .await;
}

/// Switches the hub's fan-out between direct writes and coalescing
/// ([`LoadWatch`]), from how busy the node was over the last
/// [`LOAD_PERIOD`]: tokio's busy time per worker (polling tasks, system
/// calls included), and the fan-out's own time. tokio publishes a worker's
/// busy time only when it parks or every 61 polls, which a worker busy with
/// a few long fan-outs does not reach for half a second; the fan-out's time
/// is current after every event.
async fn load_watch(state: AppState) {
    let runtime = tokio::runtime::Handle::current().metrics();
    let sample = || {
        let (fanout, deliveries, direct) = state.hub.fanout_totals();
        LoadSample {
            at: Instant::now(),
            workers: (0..runtime.num_workers())
                .map(|w| runtime.worker_total_busy_duration(w))
                .collect(),
            fanout,
            deliveries,
            direct,
        }
    };
    let policy = FanoutPolicy::default();
    let mut watch = LoadWatch::new(policy);
    let mut last = sample();
    every(&state, policy.period, || {
        let now = sample();
        let hub = &state.hub;
        hub.set_coalescing(watch.step(hub.is_coalescing(), &last, &now));
        last = now;
    })
    .await;
}

/// Cumulative figures read by the load watcher.
#[derive(Debug, Clone)]
pub struct LoadSample {
    pub at: Instant,
    /// Each runtime worker's busy time.
    pub workers: Vec<Duration>,
    /// The fan-out's time, the recipients it handed events to, and those
    /// it wrote to directly.
    pub fanout: Duration,
    pub deliveries: u64,
    pub direct: u64,
}

/// When the fan-out stops writing directly and queues every event for
/// the sessions (coalescing), and when it goes back: the load watcher's
/// thresholds in one place. The defaults are the constants above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FanoutPolicy {
    /// How often the node's load is sampled ([`LOAD_PERIOD`]).
    pub period: Duration,
    /// The busiest share of a core that starts coalescing ([`LOAD_COALESCE`]).
    pub coalesce: f64,
    /// The share of a core direct writes would take, above which they do
    /// not fit ([`LOAD_DIRECT`]).
    pub direct: f64,
    /// Samples in a row that must fit before coalescing ends ([`DIRECT_SAMPLES`]).
    pub direct_samples: u32,
    /// A delivery's cost before one was measured ([`DIRECT_COST_FIRST`]).
    pub direct_cost_first: Duration,
}

impl Default for FanoutPolicy {
    fn default() -> Self {
        Self {
            period: LOAD_PERIOD,
            coalesce: LOAD_COALESCE,
            direct: LOAD_DIRECT,
            direct_samples: DIRECT_SAMPLES,
            direct_cost_first: DIRECT_COST_FIRST,
        }
    }
}

/// The fan-out's mode from one sample to the next.
#[derive(Debug)]
pub struct LoadWatch {
    policy: FanoutPolicy,
    /// What a delivery cost the fan-out, the last time it wrote directly.
    direct_cost: Duration,
    /// Samples in a row, while coalescing, in which direct writes would
    /// have fitted.
    fitting: u32,
}

impl Default for LoadWatch {
    fn default() -> Self {
        Self::new(FanoutPolicy::default())
    }
}

impl LoadWatch {
    pub fn new(policy: FanoutPolicy) -> Self {
        Self {
            policy,
            direct_cost: policy.direct_cost_first,
            fitting: 0,
        }
    }

    /// Whether the fan-out should coalesce after the interval from
    /// `before` to `after`, given whether it did through it.
    pub fn step(&mut self, coalescing: bool, before: &LoadSample, after: &LoadSample) -> bool {
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        if wall <= 0.0 {
            return coalescing;
        }
        let deliveries = after.deliveries.saturating_sub(before.deliveries);
        let fanout = after.fanout.saturating_sub(before.fanout);
        // What the deliveries would cost written directly, as a share of
        // a core.
        let direct_share = |cost: Duration| deliveries as f64 * cost.as_secs_f64() / wall;
        if coalescing {
            self.fitting = if direct_share(self.direct_cost) < self.policy.direct {
                self.fitting + 1
            } else {
                0
            };
            return self.fitting < self.policy.direct_samples;
        }
        self.fitting = 0;
        // A cost per delivery worth keeping: enough deliveries, nearly all
        // of them written directly (right after coalescing, sessions still
        // busy take most events into their queues, at a fraction of the
        // cost).
        let direct = after.direct.saturating_sub(before.direct);
        if deliveries >= 1000 && direct * 10 >= deliveries * 9 {
            self.direct_cost = fanout / u32::try_from(deliveries).unwrap_or(u32::MAX);
        }
        let busiest = after
            .workers
            .iter()
            .zip(&before.workers)
            .map(|(a, b)| a.saturating_sub(*b))
            .chain([fanout])
            .map(|busy| busy.as_secs_f64() / wall)
            .fold(0.0, f64::max);
        busiest >= self.policy.coalesce && direct_share(self.direct_cost) >= self.policy.direct
    }
}

/// At most this many ticks per ping round.
const MAX_PING_SLICES: u32 = 50;

/// Ticks per ping round: one per 100 ms of the interval, 1 to
/// [`MAX_PING_SLICES`], so a short test interval keeps one tick a round.
fn ping_slices(interval: Duration) -> u32 {
    u32::try_from(interval.as_millis() / 100)
        .unwrap_or(MAX_PING_SLICES)
        .clamp(1, MAX_PING_SLICES)
}

/// Closes connections whose token expired.
async fn token_expiry(state: AppState) {
    every(&state, state.config.token_check_interval, || {
        let closed = state.hub.close_expired(unix_now());
        if closed > 0 {
            tracing::info!(closed, "closed connections with expired tokens");
        }
    })
    .await;
}

/// Tells the cluster this node is alive (the first beat at once).
async fn heartbeat(state: AppState) {
    let mut interval = tokio::time::interval(crate::engine::HEARTBEAT);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = interval.tick() => state.engine.heartbeat(state.node_info()).await,
        }
    }
}

/// The engine's housekeeping.
async fn sweep(state: AppState) {
    every(&state, SWEEP_PERIOD, || state.engine.sweep()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        at: Instant,
        ms: u64,
        worker_ms: u64,
        fanout_ms: u64,
        (deliveries, direct): (u64, u64),
    ) -> LoadSample {
        LoadSample {
            at: at + Duration::from_millis(ms),
            workers: vec![Duration::from_millis(worker_ms)],
            fanout: Duration::from_millis(fanout_ms),
            deliveries,
            direct,
        }
    }

    #[test]
    fn coalescing_starts_on_a_saturated_core_and_ends_once_direct_writes_would_fit() {
        let t = Instant::now();
        let mut watch = LoadWatch::default();
        // Half busy, writing directly: 5,000 deliveries in 40 of 100 ms.
        let a = sample(t, 0, 0, 0, (0, 0));
        let b = sample(t, 100, 50, 40, (5_000, 5_000));
        assert!(!watch.step(false, &a, &b));
        assert_eq!(watch.direct_cost, Duration::from_micros(8));
        // The fan-out alone saturates the core (a worker's own figure lags).
        let c = sample(t, 200, 60, 136, (17_000, 17_000));
        assert!(watch.step(false, &b, &c));
        // Still 20,000 deliveries a sample: 160 ms of direct writes per 100.
        let d = sample(t, 300, 155, 146, (37_000, 17_000));
        assert!(watch.step(true, &c, &d));
        // Near the edge (8,000 deliveries: 64 %), the mode holds.
        let e = sample(t, 400, 250, 150, (45_000, 17_000));
        assert!(watch.step(true, &d, &e));
        // A burst is over: 5,000 deliveries would take 40 % of a core, and
        // after as many such samples as it takes, direct writes resume.
        let mut f = e.clone();
        for n in 1..=DIRECT_SAMPLES {
            let next = sample(
                t,
                400 + 100 * u64::from(n),
                250 + 95 * u64::from(n),
                150,
                (f.deliveries + 5_000, 17_000),
            );
            let coalescing = watch.step(true, &f, &next);
            assert_eq!(coalescing, n < DIRECT_SAMPLES, "sample {n}");
            f = next;
        }
        // Mostly queued (busy sessions): not a direct write's cost.
        let g = LoadSample {
            at: f.at + Duration::from_millis(100),
            workers: vec![f.workers[0] + Duration::from_millis(40)],
            fanout: f.fanout + Duration::from_millis(1),
            deliveries: f.deliveries + 5_000,
            direct: f.direct + 1_000,
        };
        assert!(!watch.step(false, &f, &g));
        assert_eq!(watch.direct_cost, Duration::from_micros(8));
        // A worker saturated by other work, with few deliveries: queueing
        // them would gain nothing.
        let h = LoadSample {
            at: g.at + Duration::from_millis(100),
            workers: vec![g.workers[0] + Duration::from_millis(95)],
            deliveries: g.deliveries + 100,
            ..g.clone()
        };
        assert!(!watch.step(false, &g, &h));
    }

    #[test]
    fn a_ping_round_has_one_tick_per_100ms_up_to_fifty() {
        assert_eq!(ping_slices(Duration::from_millis(50)), 1);
        assert_eq!(ping_slices(Duration::from_millis(250)), 2);
        assert_eq!(ping_slices(Duration::from_secs(1)), 10);
        assert_eq!(ping_slices(Duration::from_secs(25)), MAX_PING_SLICES);
        assert_eq!(ping_slices(Duration::MAX), MAX_PING_SLICES);
    }
}
