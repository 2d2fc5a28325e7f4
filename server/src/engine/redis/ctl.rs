//! The nodes' control channel (`hrrt:ctl`): revocations and disconnects
//! told to every node, and the revocations stored for nodes that were
//! not listening.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::{call, now_ms};
use super::keys::PREFIX;
use super::{Shared, scan};
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

/// Loads every revocation Redis holds into this node's copy: after a
/// (re)connect, the ones told while it was not listening.
pub(super) async fn load_revocations(shared: &Shared) -> Result<(), EngineError> {
    let keys = scan(shared, &format!("{PREFIX}revoked:*")).await?;
    if keys.is_empty() {
        return Ok(());
    }
    let mut conn = shared.conn();
    let values: Vec<Option<String>> =
        call(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
    let prefix_len = format!("{PREFIX}revoked:").len();
    for (key, value) in keys.iter().zip(values) {
        let Some(value) = value else { continue };
        let Some((at, until_ms)) = value.split_once('|') else {
            continue;
        };
        let (Ok(at), Ok(until_ms)) = (at.parse::<u64>(), until_ms.parse::<u64>()) else {
            continue;
        };
        let Ok(user) = UserId::new(key.get(prefix_len..).unwrap_or_default()) else {
            continue;
        };
        record_revocation(shared, &user, at, until_ms);
    }
    Ok(())
}

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
