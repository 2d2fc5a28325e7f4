//! Durations as people write them on a command line or in a scenario.

use std::time::Duration;

/// The longest duration accepted: past it a timer's deadline
/// (`Instant::now() + d`) could overflow, and nothing here means to wait a
/// century. (humantime's year, 365.25 days.)
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Parses `500ms`, `10s`, `5m`, `1h` (and combinations such as `1m30s`);
/// zero is refused because every duration here is a period or a lifetime,
/// and so is anything past [`MAX_DURATION`] (100 years).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    if d > MAX_DURATION {
        return Err("must be at most 100 years".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(positive_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(positive_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(positive_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("10").is_err());
        assert!(positive_duration("soon").is_err());
        assert!(positive_duration("100y").is_ok());
        assert!(positive_duration("101y").is_err());
        assert!(positive_duration("99999999999999999999s").is_err());
        assert!(positive_duration("18446744073709551615s").is_err());
    }
}
