//! A connection's way out: its socket's write side, shared by the fan-out
//! and the session, and the bounded queue between them.
//!
//! An event reaches a socket one of two ways:
//!
//! - **Direct**: the connection is idle (nothing queued, the session has
//!   nothing to write). The fan-out writes the event's pre-encoded frame to
//!   the socket itself with one non-blocking `send`, from the thread that
//!   publishes: no queue, no task wake-up, no lock, no copy. This is the
//!   common case of a client that keeps up, and costs what the kernel's
//!   `send` costs (the floor probe of docs/benchmarks.md).
//! - **Queued**: anything else. The frame joins the queue and the session
//!   writes everything queued in one vectored write, so a connection that
//!   falls behind, or a burst, still leaves in few system calls.
//!
//! Who may write is one atomic byte, [`WRITING`] and [`PENDING`]:
//!
//! - the fan-out writes only when it moves the state from `0` to
//!   `WRITING`, so never while anything waits to go out before its frame;
//!   if the socket does not take the whole frame, the unwritten end goes to
//!   the front of the queue before the fan-out lets go, so nothing can slip
//!   in between;
//! - whoever queues sets `PENDING` (under the queue's lock) and wakes the
//!   session if it was clear; a fan-out that finds `PENDING` set when it
//!   lets go of `WRITING` wakes the session too;
//! - the session takes `WRITING | PENDING` whenever it has anything to
//!   write and keeps them until it has written everything, then clears
//!   both under the queue's lock, only if the queue is still empty.
//!
//! So the frames of a connection reach its socket in the order the fan-out
//! saw them, whichever way each one went, and a frame is never cut by
//! another. Nobody waits for the state: the fan-out queues instead, the
//! session is woken.
//!
//! A direct write costs one `send` per frame, and a queue that fills while
//! the session waits to run leaves in one `send` for several. So the fan-out
//! also queues an idle connection's event when that wait pays: within
//! [`BURST_GAP_US`] of its last direct write (a batch, or a burst: the rest
//! of it goes out together), and whenever the hub says the node is
//! saturated (`Hub::deliver`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::engine::Publication;

/// Someone writes to the socket: a fan-out for one frame, or the session.
const WRITING: u8 = 1;
/// The session has frames to write (queued, or its own): a direct write
/// now would overtake them.
const PENDING: u8 = 2;

/// An idle connection's event is queued rather than written if its last
/// direct write was less than this long ago (µs): a publish batch or a
/// burst for the same connection then leaves in one vectored write by the
/// session, not one `send` per event. A steady stream to a connection is
/// written directly up to 1,000 events a second.
pub const BURST_GAP_US: u64 = 1_000;

/// What became of an event offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Written to the socket by the fan-out.
    Written,
    /// Queued for the session (or begun by the fan-out and left for the
    /// session to finish).
    Queued,
    /// Not taken: the queue is over a bound (the connection is a slow
    /// consumer), or the connection is closing.
    Refused,
}

/// The most of a connection's frames not yet written, by count and bytes.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

/// What the fan-out queued and the session has not taken yet, and the
/// totals of everything not yet written (the taken but unwritten frames
/// too), which the bounds apply to.
#[derive(Default)]
struct Queue {
    /// The unwritten end of a frame a direct write began: it goes on the
    /// wire before anything else.
    rest: Option<Bytes>,
    items: VecDeque<Arc<Publication>>,
    frames: usize,
    bytes: usize,
    /// The keep-alive due (a pre-encoded JSON `ping` frame), if the
    /// session has not written it yet.
    ping: Option<Bytes>,
}

/// How the fan-out hands one event to one connection: the hub decides
/// (docs/architecture.md, the path of one event), the outbox follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Write it to the socket at once if the socket is idle; `now` is the
    /// hub's clock (µs), for the burst gap.
    Direct { now: u64 },
    /// Queue it for the session: the node is coalescing, direct writes are
    /// off (`--fanout-direct off`), or the event is past its direct cap.
    Queue,
}

/// The session's right to write to its socket: what `take`,
/// `position` and `set_position` ask for, and what `release` gives back.
/// The fan-out never holds one (its direct write takes the state byte
/// for one `send`), so the compiler keeps these to the session.
#[derive(Debug)]
#[must_use = "the write side is given back with Outbox::release"]
pub struct WriteSide(());

#[cfg(test)]
impl WriteSide {
    /// A write side for tests that take from a queue without a session.
    pub(crate) fn for_test() -> Self {
        Self(())
    }
}

/// Frames and bytes queued for a connection and not yet written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub frames: usize,
    pub bytes: usize,
}

/// The write side of one connection. The queue is a `VecDeque` under a
/// `std` mutex plus a `Notify`, not a tokio channel: an idle connection
/// then costs a few dozen bytes instead of a channel's first block
/// (~1.5 KiB), which matters at tens of thousands of sockets per node
/// (idle row of docs/benchmarks.md).
pub struct Outbox {
    /// `None` for a connection without a socket (unit tests): every frame
    /// is queued.
    socket: Option<Arc<TcpStream>>,
    state: AtomicU8,
    queue: Mutex<Queue>,
    limits: QueueLimits,
    /// Per channel the connection reads (`Interest::channels`, same
    /// order), the last seq written to the socket: a direct write never
    /// repeats what the resume replayed. Read and written only by whoever
    /// holds `WRITING` (and by the session's setup, before anyone can), so
    /// relaxed loads suffice: taking and releasing `WRITING` orders them.
    positions: Box<[AtomicU64]>,
    /// No direct write before this time (µs on the hub's clock): the last
    /// one's time plus [`BURST_GAP_US`]. Only for the holder of the write
    /// side.
    direct_after: AtomicU64,
    /// Wakes the session: frames were queued, a direct write ended while
    /// it waited, or it must close.
    wake: Notify,
    /// Whether `Queue::ping` holds a keep-alive: checked by the session
    /// before every write, without the lock.
    ping_due: AtomicBool,
    /// Whether [`Outbox::first_side`] is still to be taken.
    first_side: AtomicBool,
}

impl Outbox {
    /// The write side of a connection reading `channels` channels. Until
    /// the session first goes idle, everything is queued: the `connected`
    /// frame and any replay go first.
    pub fn new(socket: Option<Arc<TcpStream>>, channels: usize, limits: QueueLimits) -> Self {
        Self {
            socket,
            state: AtomicU8::new(PENDING),
            queue: Mutex::new(Queue::default()),
            limits: QueueLimits {
                frames: limits.frames.max(1),
                bytes: limits.bytes.max(1),
            },
            positions: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            direct_after: AtomicU64::new(0),
            wake: Notify::new(),
            ping_due: AtomicBool::new(false),
            first_side: AtomicBool::new(true),
        }
    }

    /// Hands `publication` to the connection: with [`Route::Direct`],
    /// written now if the socket is idle and takes it, else queued. `slot`
    /// is the publication's channel in the connection's channel list;
    /// without one (a watcher of every channel) the event is always queued,
    /// as is a resync marker, which the session must see.
    pub fn offer(
        &self,
        publication: &Arc<Publication>,
        slot: Option<usize>,
        route: Route,
    ) -> Offered {
        let (Some(socket), Some(position), Route::Direct { now }) = (
            &self.socket,
            slot.and_then(|s| self.positions.get(s)),
            route,
        ) else {
            return self.push(publication);
        };
        if publication.event_type.is_resync_marker() || !self.begin_direct_write() {
            return self.push(publication);
        }
        // Nothing waits to go out before this frame.
        let wire = &publication.wire;
        let offered = if publication.seq <= position.load(Ordering::Relaxed) {
            // Covered by the positions read at setup (an event the engine
            // delivers late): the session drops it.
            self.push(publication)
        } else if now < self.direct_after.load(Ordering::Relaxed) {
            self.push(publication)
        } else {
            match socket.try_write(wire) {
                Ok(n) if n == wire.len() => {
                    position.store(publication.seq, Ordering::Relaxed);
                    self.direct_after
                        .store(now.saturating_add(BURST_GAP_US), Ordering::Relaxed);
                    Offered::Written
                }
                Ok(n) => {
                    position.store(publication.seq, Ordering::Relaxed);
                    self.queue_rest(wire.slice(n..));
                    Offered::Queued
                }
                // Would block, or the socket failed: the session writes it
                // when the socket is ready, or meets the error itself.
                Err(_) => self.push(publication),
            }
        };
        self.end_direct_write();
        offered
    }

    /// A fan-out takes the write side for one direct write: only from
    /// idle, so never while anything waits to go out.
    fn begin_direct_write(&self) -> bool {
        self.state
            .compare_exchange(0, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// The fan-out lets go of the write side.
    fn end_direct_write(&self) {
        let before = self.state.fetch_and(!WRITING, Ordering::Release);
        if before & PENDING != 0 {
            // Queued meanwhile (by this call or another): the session may
            // have found the socket taken and is waiting for it.
            self.wake.notify_one();
        }
    }

    /// A direct write held open by a test, as if its `send` took long.
    #[cfg(test)]
    pub(crate) fn hold_direct_write(&self) -> bool {
        self.begin_direct_write()
    }

    #[cfg(test)]
    pub(crate) fn end_held_direct_write(&self) {
        self.end_direct_write();
    }

    /// Queues an event for the session. Over a bound, nothing is queued.
    pub fn push(&self, publication: &Arc<Publication>) -> Offered {
        let len = publication.wire.len();
        let mut queue = self.lock();
        if queue.frames >= self.limits.frames || queue.bytes.saturating_add(len) > self.limits.bytes
        {
            return Offered::Refused;
        }
        queue.frames += 1;
        queue.bytes += len;
        queue.items.push_back(publication.clone());
        // Under the lock, so the session's check for an empty queue before
        // it goes idle sees either the item or the flag.
        let before = self.state.fetch_or(PENDING, Ordering::Release);
        drop(queue);
        // With the flag already set the session is running, or was woken
        // by whoever set it, and takes everything queued before idling.
        if before & PENDING == 0 {
            self.wake.notify_one();
        }
        Offered::Queued
    }

    /// A direct write left `rest` unwritten. Called holding `WRITING`, so
    /// nothing was written after the frame's start.
    fn queue_rest(&self, rest: Bytes) {
        let mut queue = self.lock();
        queue.frames += 1;
        queue.bytes += rest.len();
        queue.rest = Some(rest);
        self.state.fetch_or(PENDING, Ordering::Release);
    }

    /// The write side a new connection's session starts with: until it
    /// first lets go, everything is queued (`connected` and the replay go
    /// first). Once per outbox.
    pub fn first_side(&self) -> Option<WriteSide> {
        self.first_side
            .swap(false, Ordering::AcqRel)
            .then_some(WriteSide(()))
    }

    /// The session takes the socket's write side. `None` while a direct
    /// write holds it; that writer wakes the session when it lets go.
    pub fn acquire(&self) -> Option<WriteSide> {
        (self.state.fetch_or(WRITING | PENDING, Ordering::Acquire) & WRITING == 0)
            .then_some(WriteSide(()))
    }

    /// The session wrote everything it had and hands the write side back,
    /// reporting `written` (frames, bytes) taken earlier; `Err`, keeping
    /// it, if something was queued meanwhile.
    pub fn release(&self, side: WriteSide, written: (usize, usize)) -> Result<(), WriteSide> {
        let mut queue = self.lock();
        queue.frames = queue.frames.saturating_sub(written.0);
        queue.bytes = queue.bytes.saturating_sub(written.1);
        if queue.rest.is_some() || !queue.items.is_empty() || queue.ping.is_some() {
            return Err(side);
        }
        self.state.store(0, Ordering::Release);
        Ok(())
    }

    /// Whether the session has been asked to write: frames were queued.
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) & PENDING != 0
    }

    /// Moves every queued frame into `into`, which must be empty (the
    /// session keeps it, so the two buffers trade places without
    /// allocating), and returns the rest of a frame a direct write began,
    /// which goes on the wire first. Taken frames count against the bounds
    /// until a later call reports them `written` (frames, bytes): one lock
    /// per batch for both.
    pub fn take(
        &self,
        _side: &WriteSide,
        into: &mut VecDeque<Arc<Publication>>,
        written: (usize, usize),
    ) -> Option<Bytes> {
        let mut queue = self.lock();
        queue.frames = queue.frames.saturating_sub(written.0);
        queue.bytes = queue.bytes.saturating_sub(written.1);
        std::mem::swap(&mut queue.items, into);
        queue.rest.take()
    }

    /// Asks the session to send the keep-alive `frame` (the JSON `ping`,
    /// then a WebSocket Ping) ahead of anything queued: a client that
    /// reads steadily but is behind on events still sees (and answers) it
    /// within the interval. A ping not yet written is replaced, not added.
    pub fn ping(&self, frame: Bytes) {
        self.lock().ping = Some(frame);
        self.ping_due.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether a keep-alive waits to be written.
    pub fn ping_pending(&self) -> bool {
        self.ping_due.load(Ordering::Acquire)
    }

    /// The keep-alive to write now, if one is due.
    pub fn take_ping(&self) -> Option<Bytes> {
        // A plain load first: this runs before every write, and a ping is
        // due once per interval.
        if !self.ping_due.load(Ordering::Acquire) || !self.ping_due.swap(false, Ordering::Acquire) {
            return None;
        }
        self.lock().ping.take()
    }

    /// What is not yet written.
    pub fn backlog(&self) -> Backlog {
        let queue = self.lock();
        Backlog {
            frames: queue.frames,
            bytes: queue.bytes,
        }
    }

    /// The last seq written on the channel at `slot` (see `positions`).
    pub fn position(&self, _side: &WriteSide, slot: usize) -> Option<u64> {
        self.positions.get(slot).map(|p| p.load(Ordering::Relaxed))
    }

    /// Records `seq` as written on the channel at `slot`.
    pub fn set_position(&self, _side: &WriteSide, slot: usize, seq: u64) {
        if let Some(position) = self.positions.get(slot) {
            position.store(seq, Ordering::Relaxed);
        }
    }

    /// The session takes the write side for good, to close: waits for a
    /// direct write in progress, which lets go within one `send` and wakes
    /// the one waiter. The session must hold no other wake-up future: the
    /// fan-out wakes one waiter, and a stale one would take it.
    pub async fn seal(&self) -> WriteSide {
        loop {
            let mut woken = std::pin::pin!(self.wake.notified());
            // Registered before the check, so a release between the two
            // is not missed.
            woken.as_mut().enable();
            if let Some(side) = self.acquire() {
                return side;
            }
            woken.await;
        }
    }

    /// Wakes the session.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when the session was woken.
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn publication(seq: u64, payload_len: usize) -> Arc<Publication> {
        let text = format!("\"{}\"", "x".repeat(payload_len));
        Publication::for_test("org:7", seq, &text)
    }

    /// A connected pair on loopback: the server side's send buffer and the
    /// client side's receive buffer as small as the kernel allows, so a
    /// client that does not read blocks the server within a few frames.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        let (client, accepted) = tokio::join!(client.connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (Arc::new(server), client.unwrap())
    }

    fn limits() -> QueueLimits {
        QueueLimits {
            frames: 1000,
            bytes: 64 << 20,
        }
    }

    #[tokio::test]
    async fn an_idle_socket_is_written_directly_and_a_busy_one_queues_in_order() {
        let (server, mut client) = pair().await;
        let out = Outbox::new(Some(server.clone()), 1, limits());
        // Until the session first goes idle, everything queues.
        assert_eq!(
            out.offer(&publication(1, 10), Some(0), Route::Direct { now: 0 }),
            Offered::Queued
        );
        let mut taken = VecDeque::new();
        let side = out.acquire().expect("the write side");
        assert_eq!(out.take(&side, &mut taken, (0, 0)), None);
        assert_eq!(taken.len(), 1);
        let first = taken.pop_front().unwrap();
        server.try_write(&first.wire).unwrap();
        out.set_position(&side, 0, 1);
        assert!(out.release(side, (1, first.wire.len())).is_ok());
        assert_eq!(out.backlog(), Backlog::default());

        // Idle: written by the fan-out, nothing queued.
        let second = publication(2, 10);
        assert_eq!(
            out.offer(&second, Some(0), Route::Direct { now: 0 }),
            Offered::Written
        );
        assert_eq!(out.backlog(), Backlog::default());
        // A duplicate of what was written is left to the session.
        assert_eq!(
            out.offer(&publication(2, 10), Some(0), Route::Direct { now: 0 }),
            Offered::Queued
        );
        let mut dup = VecDeque::new();
        let side = out.acquire().expect("the write side");
        out.take(&side, &mut dup, (0, 0));
        assert!(out.release(side, (1, dup[0].wire.len())).is_ok());

        // Big frames to a client that does not read: the first is begun
        // directly and its end queued; every later one queues behind it.
        let big: Vec<_> = (3..8).map(|seq| publication(seq, 40_000)).collect();
        let offered: Vec<_> = big
            .iter()
            .map(|p| out.offer(p, Some(0), Route::Direct { now: BURST_GAP_US }))
            .collect();
        assert!(offered.iter().all(|o| *o == Offered::Queued), "{offered:?}");
        assert!(out.is_pending());
        let Backlog { frames, bytes } = out.backlog();
        assert_eq!(frames, 5);
        assert!(bytes < big.iter().map(|p| p.wire.len()).sum::<usize>());

        // The session writes the rest first, then the queue; the client
        // reads every frame whole and in order.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let side = out.acquire().expect("the write side");
        let mut queued = VecDeque::new();
        let rest = out
            .take(&side, &mut queued, (0, 0))
            .expect("the rest of frame 3");
        let mut wire = vec![rest];
        wire.extend(queued.iter().map(|p| p.wire.clone()));
        for bytes in wire {
            let mut bytes: &[u8] = &bytes;
            while !bytes.is_empty() {
                server.writable().await.unwrap();
                match server.try_write(bytes) {
                    Ok(n) => bytes = &bytes[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        drop(out);
        drop(server);
        let all = reader.await.unwrap();
        let mut expected = Vec::new();
        for p in [first, second].iter().chain(&big) {
            expected.extend_from_slice(&p.wire);
        }
        assert!(
            all == expected,
            "the byte stream is every frame, whole, in order"
        );
    }

    #[tokio::test]
    async fn a_burst_for_one_connection_is_left_to_the_session() {
        let (server, _client) = pair().await;
        let out = Outbox::new(Some(server), 1, limits());
        let side = out.acquire().expect("the write side");
        assert!(out.release(side, (0, 0)).is_ok());
        let t = 5_000;
        assert_eq!(
            out.offer(&publication(1, 1), Some(0), Route::Direct { now: t }),
            Offered::Written
        );
        // The next within the gap waits for the session, and so does
        // everything after it until the session has written it.
        assert_eq!(
            out.offer(
                &publication(2, 1),
                Some(0),
                Route::Direct {
                    now: t + BURST_GAP_US - 1
                }
            ),
            Offered::Queued
        );
        assert_eq!(
            out.offer(
                &publication(3, 1),
                Some(0),
                Route::Direct {
                    now: t + 10 * BURST_GAP_US
                }
            ),
            Offered::Queued
        );
        let mut taken = VecDeque::new();
        let side = out.acquire().expect("the write side");
        out.take(&side, &mut taken, (0, 0));
        assert_eq!(taken.len(), 2);
        out.set_position(&side, 0, 3);
        assert!(
            out.release(side, (2, taken.iter().map(|p| p.wire.len()).sum()))
                .is_ok()
        );
        // Past the gap, and when the hub asks for no direct writes.
        assert_eq!(
            out.offer(
                &publication(4, 1),
                Some(0),
                Route::Direct {
                    now: t + 10 * BURST_GAP_US
                }
            ),
            Offered::Written
        );
        assert_eq!(
            out.offer(&publication(5, 1), Some(0), Route::Queue),
            Offered::Queued
        );
    }

    #[test]
    fn without_a_socket_or_a_slot_everything_queues_within_the_bounds() {
        let out = Outbox::new(
            None,
            1,
            QueueLimits {
                frames: 2,
                bytes: 1 << 20,
            },
        );
        let side = out.acquire().expect("the write side");
        assert!(out.release(side, (0, 0)).is_ok());
        assert_eq!(
            out.offer(&publication(1, 1), Some(0), Route::Direct { now: 0 }),
            Offered::Queued
        );
        assert_eq!(
            out.offer(&publication(2, 1), None, Route::Direct { now: 0 }),
            Offered::Queued
        );
        assert_eq!(
            out.offer(&publication(3, 1), None, Route::Direct { now: 0 }),
            Offered::Refused
        );
    }

    #[tokio::test]
    async fn the_session_finds_the_socket_taken_and_is_woken_when_it_is_free() {
        let (server, _client) = pair().await;
        let out = Arc::new(Outbox::new(Some(server), 1, limits()));
        let side = out.acquire().expect("the write side");
        assert!(out.release(side, (0, 0)).is_ok());
        // A direct write in progress: the session must not write.
        assert!(
            out.state
                .compare_exchange(0, WRITING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        );
        assert!(out.acquire().is_none());
        let woken = out.woken();
        out.state.fetch_and(!WRITING, Ordering::Release);
        out.wake.notify_one();
        woken.await;
        let side = out.acquire().expect("the write side");
        // While the session holds it, events queue.
        assert_eq!(
            out.offer(&publication(1, 1), Some(0), Route::Direct { now: 0 }),
            Offered::Queued
        );
        assert!(
            out.release(side, (0, 0)).is_err(),
            "queued meanwhile: the session keeps it"
        );
    }
}
