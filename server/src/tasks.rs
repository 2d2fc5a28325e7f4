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

use crate::app::AppState;
use crate::auth::unix_now;
use crate::protocol;

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

/// How often the load watcher samples how busy the runtime's workers were.
const LOAD_PERIOD: Duration = Duration::from_millis(100);

/// The fan-out queues every event (coalescing) once a worker was busy this
/// share of a [`LOAD_PERIOD`], and writes to idle sockets directly again
/// once the busiest is below [`LOAD_DIRECT`]. Between the two the mode
/// holds, so a node near the edge does not flip every sample. Measured in
/// docs/benchmarks.md: direct writes cost the kernel's `send` per frame
/// (~10 µs here), so on a saturated core they fall behind where queued
/// frames, several per `send`, keep up.
pub const LOAD_COALESCE: f64 = 0.9;
pub const LOAD_DIRECT: f64 = 0.6;

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
/// connections each: pinging a node's every connection in one tick made
/// each round a burst of pings out and pongs in that held events up by
/// ~2 s at 100,000 connections (docs/benchmarks.md, the cluster row).
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

/// Switches the hub's fan-out between direct writes and coalescing by how
/// busy the busiest runtime worker was over the last [`LOAD_PERIOD`]
/// (tokio's busy time: polling tasks, system calls included).
async fn load_watch(state: AppState) {
    let runtime = tokio::runtime::Handle::current().metrics();
    let sample = || {
        let busy: Vec<Duration> = (0..runtime.num_workers())
            .map(|w| runtime.worker_total_busy_duration(w))
            .collect();
        (Instant::now(), busy)
    };
    let mut last = sample();
    every(&state, LOAD_PERIOD, || {
        let now = sample();
        let share = busiest_share(&last, &now);
        state
            .hub
            .set_coalescing(coalesce(state.hub.is_coalescing(), share));
        last = now;
    })
    .await;
}

/// The largest share of the wall time between two samples that one worker
/// spent busy.
fn busiest_share(before: &(Instant, Vec<Duration>), after: &(Instant, Vec<Duration>)) -> f64 {
    let wall = after.0.saturating_duration_since(before.0).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    after
        .1
        .iter()
        .zip(&before.1)
        .map(|(a, b)| a.saturating_sub(*b).as_secs_f64() / wall)
        .fold(0.0, f64::max)
}

/// Whether the fan-out should coalesce, given whether it does now and the
/// busiest worker's share.
pub fn coalesce(coalescing: bool, busiest: f64) -> bool {
    if coalescing {
        busiest >= LOAD_DIRECT
    } else {
        busiest >= LOAD_COALESCE
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_starts_when_a_worker_is_saturated_and_ends_well_below() {
        assert!(!coalesce(false, 0.5));
        assert!(!coalesce(false, 0.89));
        assert!(coalesce(false, 0.95));
        assert!(coalesce(true, 0.7), "held between the two thresholds");
        assert!(!coalesce(true, 0.5));
        let t = Instant::now();
        let before = (t, vec![Duration::ZERO, Duration::from_millis(10)]);
        let after = (
            t + Duration::from_millis(100),
            vec![Duration::from_millis(20), Duration::from_millis(105)],
        );
        let share = busiest_share(&before, &after);
        assert!((share - 0.95).abs() < 1e-9, "{share}");
        assert_eq!(busiest_share(&before, &before), 0.0);
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
