//! Revoked users: tokens issued at or before a moment are refused for a
//! while (`POST /api/disconnect` with `"revoke": true`).
//!
//! An engine keeps one [`Revocations`] as the node's copy: the memory
//! engine is its only source; a shared engine fills it from what every
//! node revokes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::UserId;

/// Per user, the moment up to which tokens are refused and until when
/// that holds. One entry (about 100 bytes) per revoked user, for the ttl.
#[derive(Debug, Default)]
pub struct Revocations {
    users: Mutex<HashMap<UserId, (u64, Instant)>>,
}

impl Revocations {
    /// Refuses `user`'s tokens issued at or before `at` until `ttl` from
    /// `now`. A later revocation moves both forward; an earlier one changes
    /// nothing it would weaken.
    pub fn revoke(&self, user: &UserId, at: u64, ttl: Duration, now: Instant) {
        let until = now
            .checked_add(ttl)
            .or_else(|| now.checked_add(crate::config::MAX_DURATION))
            .unwrap_or(now);
        let mut users = self.lock();
        let entry = users.entry(user.clone()).or_insert((at, until));
        entry.0 = entry.0.max(at);
        entry.1 = entry.1.max(until);
    }

    /// When `user`'s tokens were revoked, if that still holds at `now`.
    pub fn revoked_at(&self, user: &UserId, now: Instant) -> Option<u64> {
        let users = self.lock();
        let (at, until) = users.get(user)?;
        (now < *until).then_some(*at)
    }

    /// Forgets revocations past their ttl.
    pub fn sweep(&self, now: Instant) {
        self.lock().retain(|_, (_, until)| now < *until);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (u64, Instant)>> {
        crate::sync::lock(&self.users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_for_the_ttl_and_only_moves_forward() {
        let r = Revocations::default();
        let ann = UserId::new("ann").unwrap();
        let t0 = Instant::now();
        assert_eq!(r.revoked_at(&ann, t0), None);
        r.revoke(&ann, 100, Duration::from_secs(10), t0);
        assert_eq!(r.revoked_at(&ann, t0), Some(100));
        r.revoke(&ann, 50, Duration::from_secs(1), t0);
        assert_eq!(r.revoked_at(&ann, t0 + Duration::from_secs(5)), Some(100));
        assert_eq!(r.revoked_at(&ann, t0 + Duration::from_secs(10)), None);
        r.sweep(t0 + Duration::from_secs(11));
        assert!(r.is_empty());
        r.revoke(&ann, 1, Duration::MAX, t0);
        assert_eq!(r.revoked_at(&ann, t0), Some(1));
    }
}
