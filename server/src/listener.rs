//! Accepting TCP connections and serving HTTP/1.1 on them, with the bounds
//! `axum::serve` does not give.
//!
//! `axum::serve` runs hyper without a timer, so a socket that sends half a
//! request head is kept for ever and graceful shutdown waits on it (a
//! slowloris). Here every connection is served by hyper's HTTP/1 builder
//! with [`TokioTimer`]:
//!
//! - the request head must arrive within `--handshake-timeout`, and so must
//!   the next one on an idle keep-alive connection (hyper starts the same
//!   timer whenever it waits for a head);
//! - on shutdown, every connection is asked to finish its request and
//!   close; after `--shutdown-grace` the ones left are dropped.
//!
//! Accept errors never end or spin the loop: running out of file
//! descriptors pauses accepting for [`ACCEPT_PAUSE`] at a time and is
//! logged once per episode.

use std::io;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long accepting pauses after an error that is not one connection's
/// (out of file descriptors, out of memory): long enough not to spin, short
/// enough that accepting resumes soon after sockets are freed.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The most bytes the kernel holds unsent per socket (`TCP_NOTSENT_LOWAT`).
/// Without it Linux grows a socket's send buffer up to `tcp_wmem`'s 4 MiB,
/// where frames escape `--send-queue-bytes` and a keep-alive Ping or an
/// `auth.refreshed`, written ahead of queued events, still waits behind
/// megabytes of them (a client reading at 1 MB/s: seconds). At 16 KiB the
/// backlog stays in the connection's queue, where it is bounded and
/// ordered; a connection that keeps up is not slowed (measured in
/// docs/benchmarks.md).
pub const NOTSENT_LOWAT: u32 = 16 << 10;

/// What the accept loop serves and how it stops.
pub struct HttpServer {
    pub router: Router,
    /// The longest a request head may take (and an idle keep-alive
    /// connection may wait for the next one).
    pub header_timeout: Duration,
    /// Cancelled to stop accepting and shut connections down gracefully.
    pub graceful: CancellationToken,
    /// Cancelled when the grace is over: every connection still open is
    /// dropped.
    pub hard_stop: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
}

impl HttpServer {
    /// Accepts until `graceful` is cancelled. Connection tasks go on (on
    /// `connections`) until they finish or `hard_stop` is cancelled.
    pub async fn accept_loop(&self, listener: TcpListener) {
        let mut paused = false;
        loop {
            let accepted = tokio::select! {
                () = self.graceful.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _peer)) => {
                    if paused {
                        paused = false;
                        tracing::info!("accepting connections again");
                    }
                    self.spawn_connection(tcp);
                }
                // One connection's trouble (reset before it was accepted).
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    if !paused {
                        paused = true;
                        if is_out_of_descriptors(&e) {
                            tracing::warn!(
                                error = %e,
                                "out of file descriptors: pausing accept until sockets close \
                                 (raise `ulimit -n` or lower --max-connections)"
                            );
                        } else {
                            tracing::warn!(error = %e, "accept failed; pausing accept");
                        }
                    }
                    tokio::select! {
                        () = self.graceful.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                    }
                }
            }
        }
    }

    fn spawn_connection(&self, tcp: TcpStream) {
        // Frames must leave at once: with Nagle's algorithm a small frame
        // can wait for the ACK of the previous one (tens of ms with
        // delayed ACKs).
        let _ = tcp.set_nodelay(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        let service = TowerToHyperService::new(self.router.clone());
        let header_timeout = self.header_timeout;
        let graceful = self.graceful.clone();
        let hard_stop = self.hard_stop.clone();
        self.connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let connection = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                    return;
                }
                () = graceful.cancelled() => connection.as_mut().graceful_shutdown(),
                () = hard_stop.cancelled() => return,
            }
            tokio::select! {
                _ = connection.as_mut() => {}
                () = hard_stop.cancelled() => {}
            }
        });
    }
}

/// Errors of one connection that failed before it was accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// `EMFILE` (this process) or `ENFILE` (the whole system).
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}
