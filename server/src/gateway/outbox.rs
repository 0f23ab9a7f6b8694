//! [`Outbox`]: one connection's shared half. Any thread delivering an event
//! pushes a serialized frame into its bounded queue; any thread may ask the
//! connection to close (slow consumer, idle, shutdown); the session notes
//! when it last heard from the client. All of it wakes the connection's one
//! task through one waker, and the session is the one consumer.
//!
//! Why not a tokio `mpsc` channel and a `Notify` per concern: a channel
//! allocates a block of 32 slots (about 1.3 KiB with its shared state) the
//! moment it is made, every waiting future is memory the connection's task
//! keeps for its whole life, and most connections of a chat server sit idle
//! with nothing queued. This queue is a `VecDeque` behind a mutex: empty, it
//! owns no buffer; a burst grows it, and once drained a large buffer is given
//! back. The mutex is held only to push or pop one frame (never across an
//! `.await`); producers and the consumer rarely meet on it, since a
//! connection is one consumer and a delivery pushes and leaves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::Waker;

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use switchboard_protocol::close;

/// A drained queue keeps a buffer of at most this many frames. Why 32: a
/// connection in a busy conversation reuses it from burst to burst, while an
/// idle one that once received a burst of thousands does not keep room for
/// them.
const KEEP_CAPACITY: usize = 32;

/// What became of a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue holds its maximum: the consumer is too slow.
    Full,
    /// The connection is closing; nothing more is written.
    Closed,
}

/// Why a connection was asked to close from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseRequest {
    /// Its outbound queue overflowed (4008).
    SlowConsumer = 1,
    /// Nothing arrived from the client for three heartbeats (1000).
    Idle = 2,
    /// The server is shutting down (1012): queued frames are still written.
    Restarting = 3,
}

impl CloseRequest {
    fn from_u8(v: u8) -> Option<CloseRequest> {
        match v {
            1 => Some(CloseRequest::SlowConsumer),
            2 => Some(CloseRequest::Idle),
            3 => Some(CloseRequest::Restarting),
            _ => None,
        }
    }

    /// The close code and reason the client receives.
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            CloseRequest::SlowConsumer => (close::SLOW_CONSUMER, "slow consumer"),
            CloseRequest::Idle => (close::NORMAL, "idle timeout"),
            CloseRequest::Restarting => (close::RESTARTING, "server restarting"),
        }
    }
}

/// See the module documentation.
pub struct Outbox {
    capacity: usize,
    // Why a std Mutex: each critical section is a push or pop of one frame.
    state: Mutex<State>,
    /// The consumer's waker: woken by a push and by a close request. (It is
    /// registered before the consumer looks at the queue, so a push between
    /// its look and its sleep is not missed.)
    waker: AtomicWaker,
    /// A [`CloseRequest`] as its number, 0 while none; the first one wins.
    close_request: AtomicU8,
    /// When the client was last heard from, in the session clock's
    /// milliseconds (see `session::clock_ms`).
    last_heard_ms: AtomicU64,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    /// Payload bytes of `frames`.
    bytes: usize,
    closed: bool,
}

impl Outbox {
    /// A queue that holds at most `capacity` frames.
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            close_request: AtomicU8::new(0),
            last_heard_ms: AtomicU64::new(0),
        }
    }

    pub fn push(&self, frame: Utf8Bytes) -> Push {
        let was_empty = {
            let mut state = self.state.lock().expect("outbox lock poisoned");
            if state.closed {
                return Push::Closed;
            }
            if state.frames.len() >= self.capacity {
                return Push::Full;
            }
            state.bytes += frame.len();
            state.frames.push_back(frame);
            state.frames.len() == 1
        };
        // Only the first frame of a burst wakes the consumer: it takes frames
        // until the queue is empty before it waits again, so a queue that was
        // not empty has a wake-up on its way. (Waking for every frame was 7 %
        // of a large fan-out's CPU: an atomic swap on a line the consumer's
        // thread writes too.)
        if was_empty {
            self.waker.wake();
        }
        Push::Queued
    }

    /// How many frames are queued, and their payload bytes: the writer
    /// sizes its batch buffer once instead of growing it frame by frame.
    pub fn queued(&self) -> (usize, usize) {
        let state = self.state.lock().expect("outbox lock poisoned");
        (state.frames.len(), state.bytes)
    }

    /// The next queued frame, if any.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut state = self.state.lock().expect("outbox lock poisoned");
        let frame = state.frames.pop_front();
        if let Some(f) = &frame {
            state.bytes -= f.len();
        }
        if state.frames.is_empty() && state.frames.capacity() > KEEP_CAPACITY {
            state.frames = VecDeque::new();
        }
        frame
    }

    /// Makes the next push or close request wake `waker` (the consumer
    /// only; call it before looking at the queue).
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Asks the connection to close; the first request wins.
    pub fn request_close(&self, why: CloseRequest) {
        let _ =
            self.close_request
                .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// The close requested, if any.
    pub fn close_requested(&self) -> Option<CloseRequest> {
        CloseRequest::from_u8(self.close_request.load(Ordering::Acquire))
    }

    /// Notes that the client was heard from at `now_ms`.
    pub fn heard_at(&self, now_ms: u64) {
        self.last_heard_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_heard_ms(&self) -> u64 {
        self.last_heard_ms.load(Ordering::Relaxed)
    }

    /// Refuses further frames and drops the queued ones.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("outbox lock poisoned");
        state.closed = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .expect("outbox lock poisoned")
            .frames
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    /// Waits for a frame the way the session does: register, then look.
    async fn next(q: &Outbox) -> Utf8Bytes {
        std::future::poll_fn(|cx| {
            q.register(cx.waker());
            match q.pop() {
                Some(f) => Poll::Ready(f),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn frame(i: usize) -> Utf8Bytes {
        Utf8Bytes::from(format!("frame {i}"))
    }

    #[test]
    fn bounded_in_order_and_closed() {
        let q = Outbox::new(3);
        for i in 0..3 {
            assert_eq!(q.push(frame(i)), Push::Queued);
        }
        assert_eq!(q.push(frame(3)), Push::Full);
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.queued(),
            (3, 3 * "frame 0".len()),
            "a refused frame is not counted"
        );
        assert_eq!(q.pop(), Some(frame(0)));
        assert_eq!(q.push(frame(4)), Push::Queued);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, [frame(1), frame(2), frame(4)]);
        assert!(q.is_empty());
        assert_eq!(q.queued(), (0, 0));
        q.push(frame(5));
        q.close();
        assert!(q.is_empty(), "closing drops what was queued");
        assert_eq!(q.queued(), (0, 0));
        assert_eq!(q.push(frame(6)), Push::Closed);
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let q = Outbox::new(10_000);
        for i in 0..5_000 {
            q.push(frame(i));
        }
        while q.pop().is_some() {}
        let state = q.state.lock().unwrap();
        assert!(state.frames.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn the_consumer_wakes_for_pushes_from_other_tasks() {
        let q = Arc::new(Outbox::new(100_000));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let q = q.clone();
                tokio::spawn(async move {
                    for i in 0..1_000 {
                        assert_eq!(q.push(frame(p * 1_000 + i)), Push::Queued);
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 4_000 {
            let f = tokio::time::timeout(Duration::from_secs(5), next(&q))
                .await
                .expect("woken for every push");
            got.push(f);
        }
        for p in producers {
            p.await.unwrap();
        }
        // Each producer's frames arrive in its order.
        for p in 0..4 {
            let mine: Vec<_> = got
                .iter()
                .filter_map(|f| f.as_str().strip_prefix("frame ")?.parse::<usize>().ok())
                .filter(|n| n / 1_000 == p)
                .collect();
            assert_eq!(mine, (p * 1_000..(p + 1) * 1_000).collect::<Vec<_>>());
        }
    }
}

#[cfg(test)]
mod close_tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Poll;
    use std::time::Duration;

    #[tokio::test]
    async fn a_close_request_wakes_the_consumer_and_the_first_wins() {
        let q = Arc::new(Outbox::new(4));
        assert_eq!(q.close_requested(), None);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                std::future::poll_fn(|cx| {
                    q.register(cx.waker());
                    match q.close_requested() {
                        Some(why) => Poll::Ready(why),
                        None => Poll::Pending,
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.request_close(CloseRequest::Idle);
        q.request_close(CloseRequest::SlowConsumer);
        let why = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the request")
            .unwrap();
        assert_eq!(why, CloseRequest::Idle);
        assert_eq!(q.close_requested(), Some(CloseRequest::Idle));
        assert_eq!(
            CloseRequest::Idle.close_frame(),
            (close::NORMAL, "idle timeout")
        );
    }
}
