//! Prometheus metrics of one node, served at `/metrics`. One registry per
//! server instance (held in the state, not a global) so that tests running
//! several nodes in one process see each node's own figures.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Registers a freshly defined metric and returns it. Definitions and names
/// are fixed in code, so failing either is a programming error.
pub fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let m = metric.expect("valid metric definition");
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

/// Every metric the server exports; all names start with `switchboard_`.
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounter,
    pub messages_stored: IntCounter,
    pub send_ack_seconds: Histogram,
    pub outbound_drops: IntCounter,
    pub slow_consumer_closes: IntCounter,
    pub rate_limited: IntCounter,
    pub bus_lag_seconds: HistogramVec,
    pub bus_published: IntCounter,
    pub bus_publish_dropped: IntCounter,
    pub bus_connected: IntGauge,
}

impl Metrics {
    pub fn new(node_id: &str) -> Metrics {
        let registry = Registry::new_custom(
            None,
            Some([("node".to_string(), node_id.to_string())].into()),
        )
        .expect("valid registry labels");
        // Latency buckets from 0.25 ms to 2.5 s: a send acks in about a
        // millisecond on an idle machine; anything past a second is an outage.
        let latency = vec![
            0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        Metrics {
            connections: register(
                &registry,
                IntGauge::new(
                    "switchboard_connections",
                    "Open authenticated WebSocket connections",
                ),
            ),
            frames_in: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "switchboard_frames_in_total",
                        "Client frames received, by type",
                    ),
                    &["type"],
                ),
            ),
            frames_out: register(
                &registry,
                IntCounter::new("switchboard_frames_out_total", "Frames written to clients"),
            ),
            messages_stored: register(
                &registry,
                IntCounter::new(
                    "switchboard_messages_stored_total",
                    "Messages committed to the store",
                ),
            ),
            send_ack_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "switchboard_send_ack_seconds",
                        "Time from receiving a send to queueing its ack",
                    )
                    .buckets(latency.clone()),
                ),
            ),
            outbound_drops: register(
                &registry,
                IntCounter::new(
                    "switchboard_outbound_drops_total",
                    "Frames dropped because a connection's outbound queue was full",
                ),
            ),
            slow_consumer_closes: register(
                &registry,
                IntCounter::new(
                    "switchboard_slow_consumer_closes_total",
                    "Connections closed with 4008",
                ),
            ),
            rate_limited: register(
                &registry,
                IntCounter::new(
                    "switchboard_rate_limited_total",
                    "Client frames rejected by the rate limit",
                ),
            ),
            bus_lag_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "switchboard_bus_lag_seconds",
                        "Time from publish on the origin node to receipt on this node",
                    )
                    .buckets(latency),
                    &["origin"],
                ),
            ),
            bus_published: register(
                &registry,
                IntCounter::new(
                    "switchboard_bus_published_total",
                    "Envelopes published to other nodes",
                ),
            ),
            bus_publish_dropped: register(
                &registry,
                IntCounter::new(
                    "switchboard_bus_publish_dropped_total",
                    "Envelopes not published because the bus was unreachable or backed up",
                ),
            ),
            bus_connected: register(
                &registry,
                IntGauge::new(
                    "switchboard_bus_connected",
                    "1 while this node is subscribed to the cluster bus",
                ),
            ),
            registry,
        }
    }

    /// The node's registry, for modules that register their own metrics
    /// (they then show up in [`Metrics::render`] with the node label).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
