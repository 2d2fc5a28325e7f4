//! The publish side of `hrrt load`: one request per batch of events, and
//! the user events of `--user-rate`, each counted as accepted or failed.

use super::*;

/// One user event; counts it for its connection once accepted.
pub(super) async fn publish_user(
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
pub(super) async fn publish_batch(
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

/// The JSON body of one publish request: events `first .. first + n`,
/// round-robin over the orgs, each carrying its send time.
pub(super) fn batch_body(first: u64, n: u64, orgs: &[String], pad: u64, sent_ns: u64) -> Value {
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

/// The publish phase's requests in flight and where it stands.
pub(super) struct Publishing {
    pub(super) token: String,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) requests: JoinSet<()>,
    pub(super) failures: Arc<Mutex<BTreeMap<String, u64>>>,
    pub(super) per_org: Arc<Vec<AtomicU64>>,
    pub(super) started: Instant,
    /// Load events sent so far.
    pub(super) sent: u64,
    /// User events (`--user-rate`) sent so far, and who gets the next.
    pub(super) user_sent: u64,
    pub(super) user_rng: Rng,
}

impl Publishing {
    /// The user events due by now, one request each, to random connections.
    pub(super) async fn user_events(&mut self, run: &Run<'_>) {
        let due = (self.started.elapsed().as_secs_f64() * run.args.user_rate) as u64;
        while self.user_sent < due && !run.shared.user_published.is_empty() {
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                break;
            };
            let k = self.user_rng.below(run.shared.user_published.len() as u64);
            let api =
                &run.plan.apis[usize::try_from(self.user_sent).unwrap_or(0) % run.plan.apis.len()];
            self.requests.spawn(publish_user(
                api.clone(),
                self.token.clone(),
                json!({
                    "type": USER_EVENT_TYPE,
                    "user_id": run.plan.user_of(k),
                    "payload": {"sent_ns": unix_nanos(), "load": run.plan.run_id},
                }),
                (k, run.shared.clone()),
                self.failures.clone(),
                permit,
            ));
            self.user_sent += 1;
        }
    }

    /// The batches of load events due by now (a full batch each, but the
    /// last).
    pub(super) async fn batches(&mut self, run: &Run<'_>, bar: &ProgressBar) {
        let args = run.args;
        let total = run.plan.total_events;
        let due = ((self.started.elapsed().as_secs_f64() * args.rate) as u64).min(total);
        while self.sent < due {
            let (sent, n) = (self.sent, args.batch.min(total - self.sent));
            // Wait for a full batch to be due, except for the last one.
            if sent + n > due && sent + n < total {
                break;
            }
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                break;
            };
            let api = &run.plan.apis
                [usize::try_from(sent / args.batch).unwrap_or(0) % run.plan.apis.len()];
            let sent_ns = unix_nanos();
            for i in sent..sent + n {
                if let Some(slot) = usize::try_from(i)
                    .ok()
                    .and_then(|i| run.shared.sent_ns.get(i))
                {
                    slot.store(sent_ns, Ordering::Relaxed);
                }
            }
            self.requests.spawn(publish_batch(
                api.clone(),
                self.token.clone(),
                batch_body(sent, n, &run.plan.orgs, args.payload_bytes, sent_ns),
                (sent, n, run.shared.clone()),
                self.per_org.clone(),
                self.failures.clone(),
                permit,
            ));
            self.sent += n;
            bar.set_position(self.sent);
        }
    }
}
