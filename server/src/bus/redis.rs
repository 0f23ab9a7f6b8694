//! The Redis bus: every node publishes to, and subscribes to, one channel
//! (`<prefix>:events`). Messages from a node's own id are ignored on receipt.
//!
//! Publishing never waits on Redis: [`RedisBus::publish`] puts the encoded
//! message on a bounded queue that one task drains, packing what is queued
//! (up to [`PUBLISH_BATCH`] messages) into one PUBLISH per round trip. The subscriber task reconnects with backoff
//! when Redis goes away; while it is away sends still commit and ack (the
//! database is the truth) and clients on other nodes catch up with `sync`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BusMessage, Handler};
use crate::metrics::Metrics;
use crate::util::now_ms;

/// Encoded messages waiting to be published. Why 16384: covers a few seconds
/// of peak fan-out while Redis reconnects; past it messages are dropped and
/// counted rather than letting memory grow without bound.
const PUBLISH_QUEUE: usize = 16384;
/// Messages packed into one round trip to Redis. Why 4096: a round trip
/// waits behind whatever Redis is running (dispatch scripts under load take
/// a millisecond or more), so what one carries bounds the publish rate; a
/// queue drained into assignments publishes tens of thousands of messages a
/// second. Packets stay under `MAX_PACKET` bytes each.
const PUBLISH_BATCH: usize = 4096;
/// Connecting to Redis or getting a reply gives up after this: a dead Redis
/// must cost a bounded wait, not a stuck publisher.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Resubscribe backoff grows from the first to the last value.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// One node's handle on the Redis bus.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    channel: String,
    node_id: String,
    tx: mpsc::Sender<Vec<u8>>,
    rx: Arc<std::sync::Mutex<Option<mpsc::Receiver<Vec<u8>>>>>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl RedisBus {
    /// Prepares the bus; nothing connects until [`RedisBus::start`].
    pub fn new(
        url: &str,
        prefix: &str,
        node_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBus, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        Ok(RedisBus {
            client,
            channel: format!("{prefix}:events"),
            node_id: node_id.to_string(),
            tx,
            rx: Arc::new(std::sync::Mutex::new(Some(rx))),
            connected: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    pub fn publish(&self, msg: BusMessage) {
        if self.tx.try_send(msg.encode()).is_err() {
            self.metrics.bus_publish_dropped.inc();
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn start(&self, handler: Handler, tracker: &TaskTracker, cancel: CancellationToken) {
        let rx = self
            .rx
            .lock()
            .expect("bus lock poisoned")
            .take()
            .expect("RedisBus::start is called once");
        tracker.spawn(self.clone().run_publisher(rx, cancel.clone()));
        tracker.spawn(self.clone().run_subscriber(handler, cancel));
    }

    async fn run_publisher(self, mut rx: mpsc::Receiver<Vec<u8>>, cancel: CancellationToken) {
        let mut conn: Option<ConnectionManager> = None;
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { break },
            }
            if conn.is_none() {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(REDIS_TIMEOUT)
                    .set_response_timeout(REDIS_TIMEOUT)
                    .set_number_of_retries(1);
                match self.client.get_connection_manager_with_config(config).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => tracing::warn!(error = %e, "redis bus: cannot connect to publish"),
                }
            }
            let Some(c) = conn.as_mut() else {
                self.metrics.bus_publish_dropped.inc_by(batch.len() as u64);
                batch.clear();
                continue;
            };
            let mut pipe = redis::pipe();
            for packet in super::pack(&batch) {
                pipe.cmd("PUBLISH").arg(&self.channel).arg(packet).ignore();
            }
            match pipe.query_async::<()>(c).await {
                Ok(()) => self.metrics.bus_published.inc_by(batch.len() as u64),
                Err(e) => {
                    tracing::warn!(error = %e, "redis bus: publish failed");
                    self.metrics.bus_publish_dropped.inc_by(batch.len() as u64);
                }
            }
            batch.clear();
        }
    }

    async fn run_subscriber(self, handler: Handler, cancel: CancellationToken) {
        let mut backoff = RECONNECT_MIN;
        loop {
            let session = async {
                let mut pubsub =
                    tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
                        .await
                        .map_err(|_| "timed out connecting".to_string())?
                        .map_err(|e| e.to_string())?;
                pubsub
                    .subscribe(&self.channel)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(channel = %self.channel, "redis bus: subscribed");
                self.connected.store(true, Ordering::Relaxed);
                self.metrics.bus_connected.set(1);
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    self.receive(msg.get_payload_bytes(), &handler);
                }
                Ok::<(), String>(())
            };
            let outcome = tokio::select! {
                _ = cancel.cancelled() => break,
                outcome = session => outcome,
            };
            let was_connected = self.connected.swap(false, Ordering::Relaxed);
            self.metrics.bus_connected.set(0);
            if was_connected {
                backoff = RECONNECT_MIN;
            }
            match outcome {
                Ok(()) => tracing::warn!("redis bus: subscription ended; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "redis bus: cannot subscribe; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
        self.connected.store(false, Ordering::Relaxed);
        self.metrics.bus_connected.set(0);
    }

    fn receive(&self, packet: &[u8], handler: &Handler) {
        let messages = match super::unpack(packet) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "redis bus: undecodable packet ignored");
                return;
            }
        };
        for payload in messages {
            // The channel echoes this node's own messages: skipped unread.
            if BusMessage::origin_of(payload) == Some(self.node_id.as_str()) {
                continue;
            }
            match BusMessage::decode(payload) {
                Ok(msg) => {
                    let lag = (now_ms() - msg.sent_at).max(0) as f64 / 1000.0;
                    self.metrics
                        .bus_lag_seconds
                        .with_label_values(&[&msg.origin])
                        .observe(lag);
                    handler(msg);
                }
                Err(e) => tracing::warn!(error = %e, "redis bus: undecodable message ignored"),
            }
        }
    }
}
