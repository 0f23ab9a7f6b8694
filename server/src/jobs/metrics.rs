//! Prometheus figures of the jobs: how many are due, running and dead
//! (cluster-wide, read from the table every few seconds by each node), how far
//! the oldest due job is behind its `run_at`, how late each claimed job
//! started, and how this node's attempts ended. Registered in the node's
//! [`Metrics`] registry, so `/metrics` shows them with the node label.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use super::store::Stats;
use crate::metrics::{register, Metrics};

/// The jobs' metrics of one node.
pub struct JobMetrics {
    pub due: IntGauge,
    pub running: IntGauge,
    pub dead: IntGauge,
    pub oldest_due_seconds: Gauge,
    pub lag_seconds: Histogram,
    pub runs: IntCounterVec,
    pub occurrences_skipped: IntCounter,
}

impl JobMetrics {
    /// Creates the metrics and registers them in `metrics`' registry.
    pub fn new(metrics: &Metrics) -> JobMetrics {
        let registry = metrics.registry();
        JobMetrics {
            due: register(registry, IntGauge::new(
                "switchboard_jobs_due",
                "Queued jobs whose run_at has passed (cluster-wide)"
            )),
            running: register(registry, IntGauge::new(
                "switchboard_jobs_running",
                "Jobs claimed under a lease (cluster-wide)"
            )),
            dead: register(registry, IntGauge::new(
                "switchboard_jobs_dead",
                "Dead-lettered jobs waiting for an admin (cluster-wide)"
            )),
            oldest_due_seconds: register(registry, Gauge::new(
                "switchboard_jobs_oldest_due_seconds",
                "How far the oldest due queued job is behind its run_at"
            )),
            // Buckets from 10 ms to 10 min: on time is well under a second;
            // minutes mean the workers are saturated or were down.
            lag_seconds: register(registry, Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_job_lag_seconds",
                    "Time from a job's run_at to its claim on this node"
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0
                ])
            )),
            runs: register(registry, IntCounterVec::new(
                Opts::new(
                    "switchboard_job_runs_total",
                    "Job attempts finished on this node, by outcome (done, retry, dead)"
                ),
                &["outcome"]
            )),
            occurrences_skipped: register(registry, IntCounter::new(
                "switchboard_schedule_occurrences_skipped_total",
                "Schedule occurrences skipped because they were missed by more than schedule_misfire_s"
            )),
        }
    }

    /// Sets the gauges from a statistics read at `now`.
    pub fn set_stats(&self, s: &Stats, now: i64) {
        self.due.set(s.due);
        self.running.set(s.running);
        self.dead.set(s.dead);
        self.oldest_due_seconds.set(
            s.oldest_due
                .map(|t| (now - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
        );
    }
}
