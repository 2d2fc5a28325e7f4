//! Exit codes, as uv and nextest have them and the README says:
//! 0 success; 1 the thing asked about failed (a timeout, `token inspect` of
//! an invalid token, an event the server refused, a failed check); 2 usage,
//! configuration or connection error — a token the server refuses for
//! `listen` or `publish` is configuration.

use std::process::ExitCode;

/// What a command ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: done as asked.
    Ok,
    /// 1: the thing asked about failed.
    Failed,
    /// 2: usage, configuration or connection error.
    Error,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Ok => ExitCode::SUCCESS,
            ExitStatus::Failed => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
        }
    }
}

/// An error that means "the thing asked about failed" (exit 1) rather
/// than "could not do it" (exit 2): `return Err(Failed::new("…").into())`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

impl Failed {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The status of a command's error: [`Failed`] anywhere in its chain is 1,
/// anything else 2.
pub fn status_of(e: &anyhow::Error) -> ExitStatus {
    if e.chain().any(|cause| cause.is::<Failed>()) {
        ExitStatus::Failed
    } else {
        ExitStatus::Error
    }
}
