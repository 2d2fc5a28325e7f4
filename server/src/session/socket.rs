//! A connection's socket after the upgrade: the TCP stream itself, shared
//! with the hub, and tungstenite for what the client sends.
//!
//! The write side is not tungstenite's. Events leave as pre-encoded
//! [`Frame`](crate::protocol::Frame)s, written by whoever holds the write
//! side (the hub's fan-out while the connection is idle, the session
//! otherwise; see `hub::Conn`), so no recipient frames the same payload
//! again. tungstenite still parses client frames and makes the control
//! frames (Pong answers, the close handshake); what it writes lands in
//! `control`, a buffer the session sends like any other frame.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error, Message};

use crate::hub::CloseReason;

/// A WebSocket Ping with no payload, as the server sends it.
pub(super) const PING: &[u8] = &[0x89, 0x00];

/// Reads through tungstenite past a readiness wake that found nothing (the
/// wake was spurious, or another reader took the bytes) at most this often
/// per poll.
const READ_RETRIES: usize = 4;

/// Server-side WebSocket over a shared TCP stream.
pub(crate) struct Socket {
    ctx: WebSocketContext,
    io: Io,
}

/// tungstenite's stream: reads from the socket without blocking, writes
/// into `control`.
struct Io {
    tcp: Arc<TcpStream>,
    /// Bytes that came with the upgrade request, read before the socket.
    early: Bytes,
    control: Vec<u8>,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early.split_to(n));
            return Ok(n);
        }
        self.tcp.try_read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.control.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket {
    /// Wraps an upgraded stream; `early` is what the client sent after its
    /// request before the upgrade finished.
    pub fn new(tcp: Arc<TcpStream>, early: Bytes, config: WebSocketConfig) -> Self {
        Self {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            io: Io {
                tcp,
                early,
                control: Vec::new(),
            },
        }
    }

    pub fn tcp(&self) -> &Arc<TcpStream> {
        &self.io.tcp
    }

    /// The next client message; `None` once the connection is closed.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        for _ in 0..READ_RETRIES {
            match self.ctx.read(&mut self.io) {
                Ok(message) => return Poll::Ready(Some(Ok(message))),
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.io.tcp.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Error::Io(e)))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => return Poll::Ready(None),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Bytes of control frames waiting to be sent.
    pub fn control_len(&self) -> usize {
        self.io.control.len()
    }

    /// Takes the control frames tungstenite made, to be written next.
    pub fn take_control(&mut self) -> Option<Bytes> {
        if self.io.control.is_empty() {
            return None;
        }
        let control = std::mem::take(&mut self.io.control);
        Some(Bytes::from(control))
    }

    /// Writes `bytes` to the socket, waiting while it is full. Only for the
    /// holder of the write side.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.io.tcp.writable().await?;
            match self.io.tcp.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves the control frames tungstenite has pending (a Pong answer,
    /// a close reply) into `control`.
    pub fn flush_control_frames(&mut self) {
        let _ = self.ctx.flush(&mut self.io);
    }

    /// Sends the control frames waiting (say, the answer to the peer's
    /// close).
    pub async fn flush_control(&mut self) -> io::Result<()> {
        let _ = self.ctx.flush(&mut self.io);
        match self.take_control() {
            Some(control) => self.write_all(&control).await,
            None => Ok(()),
        }
    }

    /// Sends a close frame and waits for the peer's answer, within `grace`,
    /// so the frame is not lost to a reset. Only for the holder of the
    /// write side, after any frame it had started is complete.
    pub async fn close(&mut self, reason: &CloseReason, grace: Duration) {
        let frame = CloseFrame {
            code: reason.code.into(),
            reason: reason.reason.as_ref().into(),
        };
        let _ = tokio::time::timeout(grace, async {
            if self.ctx.close(&mut self.io, Some(frame)).is_err()
                || self.flush_control().await.is_err()
            {
                return;
            }
            while let Some(Ok(message)) = std::future::poll_fn(|cx| self.poll_next(cx)).await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
            // The frames tungstenite makes while closing (none, usually).
            let _ = self.flush_control().await;
        })
        .await;
    }
}

/// Whether a read failed because the client's message was over the size
/// limits.
pub(super) fn is_too_big(e: &Error) -> bool {
    matches!(e, Error::Capacity(_))
}
