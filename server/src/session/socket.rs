//! One WebSocket's TCP stream, as the session uses it.
//!
//! Reading is tungstenite's: it parses the client's frames, unmasks them,
//! enforces the size limits and answers Pings and Close frames. Those
//! answers are not written by tungstenite: its stream's `write` only
//! collects them ([`Socket::take_control`]), and the session puts them on
//! the wire between whole frames, as it does every frame it writes. The
//! write side belongs to the connection's [`Outbox`](crate::outbox): the
//! fan-out writes events to the same stream directly while the session is
//! idle, so nothing else may write to it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::hub::CloseReason;

/// Frames handed to one vectored write at most (the kernel takes up to
/// `IOV_MAX`, 1,024).
const MAX_SLICES: usize = 64;

/// The stream tungstenite reads from: the TCP stream for reading, and a
/// buffer for the frames it writes (Pongs, the answer to a Close).
struct Inbound {
    tcp: Arc<TcpStream>,
    control: Vec<u8>,
}

impl Read for Inbound {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Clears the stream's read readiness on `WouldBlock`, so the next
        // `poll_read_ready` waits for new data.
        self.tcp.try_read(buf)
    }
}

impl Write for Inbound {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.control.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A WebSocket connection's stream after the handshake.
pub struct Socket {
    ws: WebSocket<Inbound>,
}

impl Socket {
    /// The server side of a connection whose client already sent `read`
    /// (bytes after its handshake that the HTTP server had read). Client
    /// frames and messages over `max_message` bytes are refused (1009).
    pub fn new(tcp: Arc<TcpStream>, read: Bytes, read_buffer: usize, max_message: usize) -> Self {
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            // Control answers go to `Inbound::control` at once.
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        let inbound = Inbound {
            tcp,
            control: Vec::new(),
        };
        Self {
            ws: WebSocket::from_partially_read(inbound, read.to_vec(), Role::Server, Some(config)),
        }
    }

    /// The TCP stream, shared with the connection's outbox.
    pub fn tcp(&self) -> &Arc<TcpStream> {
        &self.ws.get_ref().tcp
    }

    /// The next client message; `Ready(None)` once the connection is
    /// closed (the close handshake done, or the stream ended).
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        loop {
            match self.ws.read() {
                Ok(message) => return Poll::Ready(Some(Ok(message))),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Ready again only if data arrived since the read
                    // that would have blocked.
                    if let Err(e) = ready!(self.tcp().poll_read_ready(cx)) {
                        return Poll::Ready(Some(Err(tungstenite::Error::Io(e))));
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Poll::Ready(None);
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// Bytes of control frames waiting to be written.
    pub fn control_len(&self) -> usize {
        self.ws.get_ref().control.len()
    }

    /// The control frames tungstenite wrote since the last call, whole.
    pub fn take_control(&mut self) -> Option<Bytes> {
        let control = &mut self.ws.get_mut().control;
        (!control.is_empty()).then(|| Bytes::from(std::mem::take(control)))
    }

    /// Puts tungstenite's answer to the peer's Close frame among the
    /// control frames.
    pub fn answer_close(&mut self) {
        // Ends in `ConnectionClosed` once the answer is out: expected.
        let _ = self.ws.flush();
    }

    /// Queues the close frame (among the control frames); the peer's
    /// answer then ends [`Socket::poll_read`].
    pub fn start_close(&mut self, reason: &CloseReason) {
        let frame = CloseFrame {
            code: reason.code.into(),
            reason: reason.reason.as_ref().into(),
        };
        // An error means the connection is already closing or gone.
        let _ = self.ws.close(Some(frame));
    }

    /// Writes `out` front to back, as much as the stream takes, several
    /// frames per system call; `Ready(Ok(()))` once all of it is written.
    /// The caller must hold the connection's write side.
    pub fn poll_write(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        while !out.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (slice, frame) in slices.iter_mut().zip(out.iter()) {
                    *slice = IoSlice::new(frame);
                    n += 1;
                }
                self.tcp().try_write_vectored(&slices[..n])
            };
            match result {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => consume(out, written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp().poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `out`, then closes with `reason` and waits for the peer's
    /// answer. The caller bounds it in time.
    pub async fn close(&mut self, mut out: VecDeque<Bytes>, reason: &CloseReason) {
        self.start_close(reason);
        out.extend(self.take_control());
        if std::future::poll_fn(|cx| self.poll_write(cx, &mut out))
            .await
            .is_err()
        {
            return;
        }
        // Read until the peer answers (tungstenite then ends the stream);
        // what it sent meanwhile is dropped.
        while let Some(Ok(_)) = std::future::poll_fn(|cx| self.poll_read(cx)).await {}
    }
}

/// Drops the first `written` bytes of `out`.
fn consume(out: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let Some(front) = out.front_mut() else {
            return;
        };
        if written < front.len() {
            front.advance(written);
            return;
        }
        written -= front.len();
        out.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_drops_whole_frames_then_advances_into_the_next() {
        let mut out: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fgh"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        consume(&mut out, 4);
        assert_eq!(out, [&b"e"[..], b"fgh"]);
        consume(&mut out, 4);
        assert!(out.is_empty());
    }
}
