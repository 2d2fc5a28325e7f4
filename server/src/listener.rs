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
//! - a response the client does not take (a client that sends requests and
//!   never reads) is cut after `--write-timeout` without progress
//!   ([`WriteTimeout`]); while it waits, hyper reads no further request
//!   than its bounded buffer holds ([`MAX_BUF`]), so pipelined requests
//!   cannot pile up either.
//!
//! Accept errors never end or spin the loop: running out of file
//! descriptors pauses accepting for [`ACCEPT_PAUSE`] at a time and is
//! logged once per episode.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
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

/// The most bytes hyper buffers per connection, read or write: a request
/// head (a JWT or two in its headers) fits many times over, and a client
/// that pipelines requests without reading the answers gets no more read
/// ahead than this while the server waits to write.
pub const MAX_BUF: usize = 64 << 10;

/// What the accept loop serves and how it stops.
pub struct HttpServer {
    pub router: Router,
    /// The longest a request head may take (and an idle keep-alive
    /// connection may wait for the next one).
    pub header_timeout: Duration,
    /// The longest the client may take none of the server's bytes.
    pub write_timeout: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
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
        let tcp = WriteTimeout::new(tcp, self.write_timeout);
        let metrics = self.metrics.clone();
        let graceful = self.graceful.clone();
        let hard_stop = self.hard_stop.clone();
        self.connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_BUF)
                .keep_alive(true);
            let connection = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        if is_write_timeout(&e) {
                            metrics.write_timeout(crate::metrics::ConnectionKind::Http);
                            tracing::info!("http client took no bytes for --write-timeout; closed");
                        } else {
                            tracing::debug!(error = %e, "http connection ended with an error");
                        }
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

/// Whether hyper ended a connection because [`WriteTimeout`] cut it.
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::TimedOut;
        }
        source = error.source();
    }
    false
}

/// A socket whose writes fail (`TimedOut`) once the peer has taken none
/// of the bytes for `timeout`: the clock starts when a write finds the
/// socket full, and restarts with every byte it takes. Reads pass through.
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write waits for room; `None` otherwise, so an idle
    /// connection holds no timer.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Maps a write's poll: progress stops the clock, a wait starts it (or
    /// lets it run), and a wait past the timeout is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no bytes for --write-timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
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
