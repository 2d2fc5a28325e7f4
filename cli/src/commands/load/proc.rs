//! What `hrrt load` reads of processes: the open-file limit, and a
//! server's memory and CPU time from /proc.

use crate::output;

/// Raises the soft open-file limit as far as the hard limit allows.
pub(super) fn raise_open_files(connections: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < connections + 64 => output::warn(&format!(
            "the open-file limit is {limit}: at most about {} connections can open",
            limit.saturating_sub(64)
        )),
        Ok(_) => {}
        Err(e) => output::warn(&format!("could not raise the open-file limit: {e}")),
    }
}

/// A reading of a process's memory and CPU time from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ProcSample {
    pub(super) rss_kib: u64,
    pub(super) cpu_seconds: f64,
}

impl ProcSample {
    pub(super) fn read(pid: u32) -> Self {
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        // utime and stime are fields 14 and 15, after the ")" that ends the
        // command name; Linux counts them in 100 Hz clock ticks.
        let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .unwrap_or(0.0);
        Self {
            rss_kib,
            cpu_seconds,
        }
    }
}
