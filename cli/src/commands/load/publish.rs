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
