//! Ctrl-C for long-running commands (`listen`, `load`).
//!
//! The handler is installed when [`Interrupt::new`] is called, not when
//! the future is first polled as with `tokio::signal::ctrl_c()`: a Ctrl-C
//! that arrives early must end the command cleanly, not kill it.

/// Resolves each time the user presses Ctrl-C (SIGINT).
pub struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            Self {
                signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the next Ctrl-C (forever if no handler could be installed).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.signal {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Interrupt {
    fn default() -> Self {
        Self::new()
    }
}
