//! Results to stdout, diagnostics to stderr. Colour follows the terminal
//! and `NO_COLOR` (anstream strips styles when they should not be shown).

use std::io::Write;

use anstyle::{AnsiColor, Style};

pub const ERROR: Style = AnsiColor::Red.on_default().bold();
pub const WARN: Style = AnsiColor::Yellow.on_default().bold();
pub const NOTE: Style = AnsiColor::Cyan.on_default();
pub const DIM: Style = Style::new().dimmed();
pub const BOLD: Style = Style::new().bold();

/// Wraps `text` in `style`.
pub fn paint(style: Style, text: impl std::fmt::Display) -> String {
    format!("{style}{text}{style:#}")
}

/// Writes one line to stdout; fails (e.g. broken pipe) rather than panic.
pub fn line(text: &str) -> std::io::Result<()> {
    let mut out = anstream::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A diagnostic on stderr.
pub fn note(text: &str) {
    let mut err = anstream::stderr().lock();
    let _ = writeln!(err, "{}", paint(NOTE, text));
}

pub fn warn(text: &str) {
    let mut err = anstream::stderr().lock();
    let _ = writeln!(err, "{} {text}", paint(WARN, "warning:"));
}

/// The one line `main` prints for a failed command.
pub fn error(e: &anyhow::Error) {
    let mut err = anstream::stderr().lock();
    let _ = writeln!(err, "{} {e:#}", paint(ERROR, "error:"));
}

/// Whether the error is stdout's reader having gone away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `1 recipient`, `2 recipients`: a count and its noun (plural with `s`).
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `a service`, `an admin`: the article English puts before `word`.
pub fn article(word: &str) -> String {
    let an = word
        .chars()
        .next()
        .is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {word}", if an { "an" } else { "a" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english() {
        assert_eq!(count(1, "recipient"), "1 recipient");
        assert_eq!(count(0, "recipient"), "0 recipients");
        assert_eq!(article("admin"), "an admin");
        assert_eq!(article("service or admin"), "a service or admin");
    }
}
