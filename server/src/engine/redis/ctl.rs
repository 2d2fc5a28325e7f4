//! The nodes' control channel (`hrrt:ctl`): revocations and disconnects
//! told to every node, and the revocations stored for nodes that were
//! not listening.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::connection::{call, now_ms, unavailable};
use super::keys::REVOKED;
use crate::engine::EngineError;
use crate::protocol::UserId;

/// What nodes tell each other on [`CTL_CHANNEL`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Ctl {
    /// Refuse `user`'s tokens issued at or before `at` until `until_ms`.
    Revoke {
        user: String,
        at: u64,
        until_ms: u64,
    },
    /// Close `user`'s connections; push the count to `reply`.
    Disconnect {
        user: String,
        reason: String,
        reply: String,
        origin: String,
    },
}

/// Loads every revocation Redis holds into this node's copy: at start,
/// and after a reconnect the ones told while it was not listening. Pages
/// through the whole hash (`HSCAN` until its cursor returns to 0), so
/// however many users are revoked, and whatever else Redis holds, every
/// one is enforced; a failure part-way is an error (the node is not
/// ready) rather than a partial copy.
pub(super) async fn load_revocations(shared: &Shared) -> Result<usize, EngineError> {
    let mut conn = shared.conn();
    let len: u64 = call(redis::cmd("HLEN").arg(REVOKED).query_async(&mut conn)).await?;
    // HSCAN visits at least COUNT buckets per call and a hash has at most
    // twice as many buckets as fields: this many calls always reach the end.
    let max_calls = len / (SCAN_COUNT / 2) + 10;
    let mut cursor: u64 = 0;
    let mut loaded = 0;
    for _ in 0..max_calls {
        let (next, pairs): (u64, Vec<(String, String)>) = call(
            redis::cmd("HSCAN")
                .arg(REVOKED)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn),
        )
        .await?;
        for (user, value) in pairs {
            let Some((at, until_ms)) = value.split_once('|') else {
                continue;
            };
            let (Ok(at), Ok(until_ms), Ok(user)) = (
                at.parse::<u64>(),
                until_ms.parse::<u64>(),
                UserId::new(&user),
            ) else {
                continue;
            };
            record_revocation(shared, &user, at, until_ms);
            loaded += 1;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(loaded);
        }
    }
    Err(unavailable(format!(
        "the revocations ({len}) were not all read in {max_calls} HSCAN calls"
    )))
}

/// Fields asked of each `HSCAN` call.
const SCAN_COUNT: u64 = 1000;

pub(super) fn record_revocation(shared: &Shared, user: &UserId, at: u64, until_ms: u64) {
    let left = Duration::from_millis(until_ms.saturating_sub(now_ms()));
    if !left.is_zero() {
        shared.revocations.revoke(user, at, left, Instant::now());
    }
}

/// A control message from a node (this one's own are ignored). Never
/// waits: the count a disconnect answers is written by its own task.
pub(super) fn on_ctl(shared: &Arc<Shared>, payload: &[u8]) {
    let Ok(ctl) = serde_json::from_slice::<Ctl>(payload) else {
        tracing::warn!("unreadable control message ignored");
        return;
    };
    match ctl {
        Ctl::Revoke { user, at, until_ms } => {
            if let Ok(user) = UserId::new(&user) {
                record_revocation(shared, &user, at, until_ms);
            }
        }
        Ctl::Disconnect {
            user,
            reason,
            reply,
            origin,
        } => {
            if origin == shared.node_id {
                return;
            }
            let closed =
                UserId::new(&user).map_or(0, |user| shared.deliver.close_user(&user, &reason));
            let mut conn = shared.conn();
            tokio::spawn(async move {
                let answered: Result<(), _> = call(
                    redis::pipe()
                        .cmd("RPUSH")
                        .arg(&reply)
                        .arg(closed)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(&reply)
                        .arg(10_000)
                        .ignore()
                        .query_async(&mut conn),
                )
                .await;
                if let Err(e) = answered {
                    tracing::warn!(error = %e, "disconnect count not answered");
                }
            });
        }
    }
}
