//! [`Outbox`]: one connection's bounded queue of serialized frames. Any
//! thread delivering an event pushes into it; the connection's session is
//! the one consumer and writes what it takes in batches.
//!
//! Why not a tokio `mpsc` channel: a channel allocates a block of 32 slots
//! (about 1.3 KiB with its shared state) the moment it is made, and most
//! connections of a chat server sit idle with nothing queued. This queue is
//! a `VecDeque` behind a mutex: empty, it owns no buffer; a burst grows it,
//! and once drained a large buffer is given back. The mutex is held only to
//! push or pop one frame (never across an `.await`); producers and the
//! consumer rarely meet on it, since a connection is one consumer and a
//! delivery pushes and leaves.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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

/// See the module documentation.
pub struct Outbox {
    capacity: usize,
    // Why a std Mutex: each critical section is a push or pop of one frame.
    state: Mutex<State>,
    /// Wakes the consumer after a push (a permit is kept if it is not
    /// waiting, so a push between its check and its wait is not missed).
    ready: Notify,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    closed: bool,
}

impl Outbox {
    /// A queue that holds at most `capacity` frames.
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            ready: Notify::new(),
        }
    }

    pub fn push(&self, frame: Utf8Bytes) -> Push {
        {
            let mut state = self.state.lock().expect("outbox lock poisoned");
            if state.closed {
                return Push::Closed;
            }
            if state.frames.len() >= self.capacity {
                return Push::Full;
            }
            state.frames.push_back(frame);
        }
        self.ready.notify_one();
        Push::Queued
    }

    /// The next queued frame, if any.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut state = self.state.lock().expect("outbox lock poisoned");
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > KEEP_CAPACITY {
            state.frames = VecDeque::new();
        }
        frame
    }

    /// Waits for a frame and takes it (the consumer only).
    pub async fn next(&self) -> Utf8Bytes {
        loop {
            if let Some(frame) = self.pop() {
                return frame;
            }
            self.ready.notified().await;
        }
    }

    /// Refuses further frames and drops the queued ones.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("outbox lock poisoned");
        state.closed = true;
        state.frames = VecDeque::new();
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
    use std::time::Duration;

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
        assert_eq!(q.pop(), Some(frame(0)));
        assert_eq!(q.push(frame(4)), Push::Queued);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, [frame(1), frame(2), frame(4)]);
        assert!(q.is_empty());
        q.push(frame(5));
        q.close();
        assert!(q.is_empty(), "closing drops what was queued");
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
            let f = tokio::time::timeout(Duration::from_secs(5), q.next())
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
