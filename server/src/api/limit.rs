//! `--publish-rate`: a token bucket per publisher (token `sub`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::protocol::UserId;

/// Publishers tracked at once; past this, idle full buckets are forgotten.
const MAX_PUBLISHERS: usize = 10_000;

/// Per-publisher token buckets: `rate` events per second, bursts of up to
/// `rate` events.
#[derive(Debug)]
pub struct PublishLimiter {
    rate: f64,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
}

impl PublishLimiter {
    /// `rate` events per second; 0 disables the limit.
    pub fn new(rate: u64) -> Self {
        Self {
            rate: rate as f64,
            buckets: Mutex::default(),
        }
    }

    /// Takes `events` from the publisher's bucket, or answers how many
    /// seconds to wait before they would fit.
    pub fn check(&self, publisher: &UserId, events: usize, now: Instant) -> Result<(), f64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let wanted = events as f64;
        let mut buckets = crate::sync::lock(&self.buckets);
        if buckets.len() >= MAX_PUBLISHERS && !buckets.contains_key(publisher) {
            let rate = self.rate;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = buckets.entry(publisher.clone()).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate)
            .min(self.rate.max(wanted));
        *at = now;
        if *tokens >= wanted {
            *tokens -= wanted;
            Ok(())
        } else {
            Err((wanted - *tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_refill_at_the_rate() {
        let limiter = PublishLimiter::new(10);
        let who = UserId::new("backend").unwrap();
        let t0 = Instant::now();
        assert!(limiter.check(&who, 10, t0).is_ok());
        let wait = limiter.check(&who, 1, t0).unwrap_err();
        assert!((wait - 0.1).abs() < 1e-9);
        assert!(
            limiter
                .check(&who, 5, t0 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .check(&UserId::new("other").unwrap(), 10, t0)
                .is_ok()
        );
        // A batch larger than the rate still fits once the bucket is full.
        assert!(
            limiter
                .check(&who, 25, t0 + Duration::from_secs(10))
                .is_ok()
        );
        assert!(PublishLimiter::new(0).check(&who, 1_000_000, t0).is_ok());
    }
}
