//! Counters shared by all the connections of a run: how connections ended
//! (close codes), which `error` codes came back, and latency histograms that
//! many tasks record into at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchboard_protocol::ErrorCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How a connection ended without the tool closing it, or what error codes
/// the server answered; filled by every connection of a run.
#[derive(Default)]
pub(crate) struct Stats {
    closes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    rate_limited: AtomicU64,
}

impl Stats {
    /// The server closed the connection with this frame (`None`: a close
    /// frame without a code).
    pub(crate) fn server_closed(&self, frame: Option<&CloseFrame>) {
        let key = match frame {
            Some(f) => u16::from(f.code).to_string(),
            None => "1005".to_string(),
        };
        self.count_close(key);
    }

    /// The connection ended without a close frame (reset, EOF, I/O error).
    pub(crate) fn dropped(&self) {
        self.count_close("abnormal (no close frame)".to_string());
    }

    fn count_close(&self, key: String) {
        *self
            .closes
            .lock()
            .expect("stats lock")
            .entry(key)
            .or_default() += 1;
    }

    /// The server answered an `error` with this code.
    pub(crate) fn error_reply(&self, code: ErrorCode) {
        if code == ErrorCode::RateLimited {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .errors
            .lock()
            .expect("stats lock")
            .entry(code.as_str().to_string())
            .or_default() += 1;
    }

    /// Close codes seen, by code, e.g. `{"4008": 3}`.
    pub(crate) fn closes(&self) -> BTreeMap<String, u64> {
        self.closes.lock().expect("stats lock").clone()
    }

    /// Error codes answered, by code.
    pub(crate) fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("stats lock").clone()
    }

    /// Advice for the operator drawn from what the server answered.
    pub(crate) fn hints(&self) -> Vec<String> {
        let mut hints = Vec::new();
        let limited = self.rate_limited.load(Ordering::Relaxed);
        let closes = self.closes();
        if limited > 0 || closes.contains_key("4029") {
            hints.push(format!(
                "the server rate-limited this run ({limited} rate_limited errors{}): start it \
                 with SWITCHBOARD_RATE_PER_SEC=1000000 SWITCHBOARD_RATE_BURST=1000000 for load runs",
                if closes.contains_key("4029") {
                    ", and closes with 4029"
                } else {
                    ""
                }
            ));
        }
        if closes.contains_key("4008") {
            hints.push(
                "connections were closed with 4008 (slow consumer): the tool did not read fast \
                 enough for the server's outbound queue (limits.outbound_queue); the measured \
                 rate is past what this machine sustains"
                    .to_string(),
            );
        }
        hints
    }
}

/// Histograms are kept in microseconds from 1 µs up to this. Why 10 min: no
/// run of the tool lasts longer, so no latency can be larger; values past it
/// are clamped (`saturating_record`).
const HIGHEST_US: u64 = 600 * 1_000_000;
/// Significant figures. Why 3: 0.1 % resolution is finer than any difference
/// worth reporting, at ~100 KiB per histogram (there are only a few shards).
const SIGFIG: u8 = 3;
/// Independent histograms a latency is recorded into. Why 16: the tokio
/// runtime has a worker per core (two here), so 16 shards picked by
/// connection index make lock contention negligible.
const SHARDS: usize = 16;

/// A new, empty histogram with the tool's bounds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// A latency histogram that many tasks record into concurrently.
pub(crate) struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

impl Latency {
    /// Records one latency; `shard` spreads recorders (any number works).
    pub(crate) fn record(&self, shard: usize, latency: Duration) {
        let us = (latency.as_micros() as u64).max(1);
        self.shards[shard % SHARDS]
            .lock()
            .expect("histogram lock")
            .saturating_record(us);
    }

    /// All shards added up.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            all.add(&*shard.lock().expect("histogram lock"))
                .expect("same bounds");
        }
        all
    }
}

/// Send instants of tagged messages, so that the receiving task (in this
/// same process, hence on the same clock) can compute latencies. Lock-free:
/// one slot per tag, nanoseconds since the run's epoch, 0 = not sent yet.
pub(crate) struct SendTimes {
    epoch: Instant,
    slots: Vec<AtomicU64>,
}

impl SendTimes {
    /// Room for tags `0..capacity`.
    pub(crate) fn new(epoch: Instant, capacity: usize) -> Self {
        SendTimes {
            epoch,
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Notes that `tag` is being sent now.
    pub(crate) fn mark(&self, tag: u64) -> Instant {
        let now = Instant::now();
        // +1 so that a send at the very epoch is still distinguishable from "unsent".
        let nanos = now.duration_since(self.epoch).as_nanos() as u64 + 1;
        if let Some(slot) = self.slots.get(tag as usize) {
            slot.store(nanos, Ordering::Release);
        }
        now
    }

    /// When `tag` was sent, if it was.
    pub(crate) fn sent_at(&self, tag: u64) -> Option<Instant> {
        let nanos = self.slots.get(tag as usize)?.load(Ordering::Acquire);
        (nanos > 0).then(|| self.epoch + Duration::from_nanos(nanos - 1))
    }
}

/// The latest of many instants, kept as nanoseconds since an epoch.
pub(crate) struct LatestInstant {
    epoch: Instant,
    nanos: AtomicU64,
}

impl LatestInstant {
    pub(crate) fn new(epoch: Instant) -> Self {
        LatestInstant {
            epoch,
            nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, at: Instant) {
        let n = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.nanos.fetch_max(n, Ordering::Relaxed);
    }

    /// The latest instant observed, or the epoch if none.
    pub(crate) fn get(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_remember_instants() {
        let epoch = Instant::now();
        let t = SendTimes::new(epoch, 4);
        assert!(t.sent_at(2).is_none());
        let at = t.mark(2);
        let back = t.sent_at(2).unwrap();
        assert!(back <= at && at.duration_since(back) < Duration::from_micros(1));
        // Out of range tags are ignored, not a panic.
        t.mark(99);
        assert!(t.sent_at(99).is_none());
    }

    #[test]
    fn latency_shards_merge() {
        let l = Latency::default();
        for i in 0..100u64 {
            l.record(i as usize, Duration::from_micros(i + 1));
        }
        let h = l.merged();
        assert_eq!(h.len(), 100);
        assert_eq!(h.max(), 100);
        assert_eq!(h.min(), 1);
    }

    #[test]
    fn rate_limits_produce_a_hint() {
        let s = Stats::default();
        assert!(s.hints().is_empty());
        s.error_reply(ErrorCode::RateLimited);
        assert!(s.hints()[0].contains("SWITCHBOARD_RATE_PER_SEC"));
        assert_eq!(s.errors()["rate_limited"], 1);
    }
}
