//! Times on the wire: UTC RFC 3339.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z). An `exp` or
/// `iat` past it is not a time (often milliseconds sent as seconds), and
/// would not format as one: a token carrying one is invalid.
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// A time as the wire wants it: UTC RFC 3339 with exactly six fractional
/// digits and `Z`, e.g. `2026-01-01T12:00:00.000000Z`. *compat*
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// A UNIX time in seconds as RFC 3339 (for `expires_at`). Times past year
/// 9999 are written as its last second: RFC 3339 has no later year, and
/// verified tokens never carry one.
pub fn unix_to_rfc3339(secs: u64) -> String {
    let secs = secs.min(MAX_TIMESTAMP);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_six_fraction_digits_and_z() {
        let t = timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500));
        assert_eq!(t, "1970-01-01T00:00:01.500000Z");
    }

    #[test]
    fn far_future_times_do_not_panic() {
        assert_eq!(unix_to_rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(unix_to_rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
