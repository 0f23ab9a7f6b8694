//! The worker: one loop per node that claims due jobs while it has free
//! slots, runs each job's handler in its own task under a timeout shorter
//! than the lease, and marks the job done or failed (fenced by its lease).
//!
//! An idle worker does not poll the writer: it reads when the next job
//! becomes claimable (read pool) and sleeps until then, at most
//! [`Settings::poll`], or until the scheduler wakes it. Several nodes (or
//! several workers on one database, as the tests run them) may run this loop
//! at once: the claim statement guarantees each job goes to one of them.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::JobMetrics;
use super::{store, Job, Registry, Settings, Status};
use crate::store::Store;
use crate::util::now_ms;

/// Delay before the first retry. Why 1 s: most transient failures (a
/// deadlock, a dropped connection, a node restarting) are over within a
/// second, so a retry this soon usually succeeds.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between two attempts. Why 10 minutes: doubling reaches it
/// at the tenth attempt; beyond it a job would wait longer after its
/// dependency recovered than people tolerate for a late message or reminder.
pub const BACKOFF_CAP: Duration = Duration::from_secs(600);

/// Pause after a claim that found nothing although a job looked due (another
/// node took it first). Why 25 ms: short against any job's timing, long
/// enough that two nodes racing for the last job do not spin on the database.
const CONTENDED_PAUSE: Duration = Duration::from_millis(25);

/// The delay before retrying after failed attempt number `attempt` (from 1):
/// [`BACKOFF_BASE`] doubled per attempt, capped at [`BACKOFF_CAP`], plus up to
/// a quarter more at random so jobs that failed together (an outage) do not
/// all retry in the same instant.
pub fn backoff(attempt: i64) -> Duration {
    let exp = attempt.clamp(1, 31) as u32 - 1;
    let base = BACKOFF_BASE
        .checked_mul(1u32 << exp.min(20))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP);
    let jitter_ms = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter_ms)
}

/// One node's job runner. `C` is the context handlers get.
pub struct Worker<C> {
    store: Store,
    node: String,
    registry: Arc<Registry<C>>,
    ctx: C,
    settings: Settings,
    metrics: Option<Arc<JobMetrics>>,
    wake: Arc<Notify>,
}

impl<C: Clone + Send + Sync + 'static> Worker<C> {
    pub fn new(
        store: Store,
        node: &str,
        registry: Arc<Registry<C>>,
        ctx: C,
        settings: Settings,
    ) -> Worker<C> {
        Worker {
            store,
            node: node.to_string(),
            registry,
            ctx,
            settings,
            metrics: None,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<JobMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Shares the notify that makes an idle worker look for due jobs at once.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Claims and runs jobs until `cancel` fires, then waits for the running
    /// handlers (each bounded by its timeout) and returns.
    pub async fn run(self, cancel: CancellationToken) {
        let worker = Arc::new(self);
        // Why a semaphore: it bounds the jobs running on this node to
        // `concurrency`, and a claim asks for exactly as many as are free, so
        // no job is ever claimed and left waiting under a ticking lease.
        let slots = Arc::new(Semaphore::new(worker.settings.concurrency.max(1)));
        let running = TaskTracker::new();
        // The last claim filled every free slot: more may be due, claim again
        // without looking first.
        let mut backlog = false;
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if !backlog {
                let wait = match store::next_due(&worker.store).await {
                    Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64),
                    Ok(None) => worker.settings.poll,
                    Err(e) => {
                        e.log();
                        worker.settings.poll
                    }
                };
                if !wait.is_zero() {
                    drop(first);
                    // Sleep until the next job is due, but at most a poll:
                    // other nodes and API calls enqueue without telling this
                    // node; the wake is this node's scheduler having enqueued.
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait.min(worker.settings.poll)) => {}
                        _ = worker.wake.notified() => {}
                    }
                    continue;
                }
            }
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let asked = permits.len();
            let claimed = store::claim(
                &worker.store,
                &worker.node,
                asked,
                worker.settings.lease,
                now_ms(),
            )
            .await;
            let pause = match &claimed {
                Ok(jobs) if jobs.is_empty() => Some(CONTENDED_PAUSE),
                Ok(_) => None,
                Err(e) => {
                    // The database is in trouble: try again after a poll
                    // interval rather than hammer it.
                    e.log();
                    Some(worker.settings.poll)
                }
            };
            if let Some(pause) = pause {
                backlog = false;
                drop(permits);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            let claimed = claimed.unwrap_or_default();
            backlog = claimed.len() == asked;
            // Unused permits go back when the zip drops them.
            for (job, permit) in claimed.into_iter().zip(permits) {
                let worker = worker.clone();
                running.spawn(async move {
                    worker.run_one(job).await;
                    drop(permit);
                });
            }
        }
        running.close();
        running.wait().await;
    }

    #[tracing::instrument(skip_all, fields(job = %job.id, kind = %job.kind, attempt = job.attempts))]
    async fn run_one(&self, job: Job) {
        let started = now_ms();
        if let Some(m) = &self.metrics {
            m.lag_seconds
                .observe((started - job.run_at).max(0) as f64 / 1000.0);
        }
        let result = if job.attempts > job.max_attempts {
            // Taken over from expired leases more often than it may run: a
            // job that kills its workers stops here instead of looping.
            Err(job
                .last_error
                .clone()
                .unwrap_or_else(|| "attempts exhausted".into()))
        } else {
            self.call(&job).await
        };
        let now = now_ms();
        match result {
            Ok(()) => match store::complete(&self.store, &job, now).await {
                Ok(true) => {
                    if let Some(m) = &self.metrics {
                        m.runs.with_label_values(&["done"]).inc();
                    }
                }
                Ok(false) => tracing::warn!("job finished after its lease was lost"),
                Err(e) => e.log(),
            },
            Err(error) => {
                let retry_at = now + backoff(job.attempts).as_millis() as i64;
                match store::fail(&self.store, &job, &error, retry_at, now).await {
                    Ok(Some(Status::Dead)) => {
                        tracing::warn!(%error, "job dead-lettered");
                        if let Some(m) = &self.metrics {
                            m.runs.with_label_values(&["dead"]).inc();
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::info!(%error, retry_in_ms = retry_at - now, "job failed; will retry");
                        if let Some(m) = &self.metrics {
                            m.runs.with_label_values(&["retry"]).inc();
                        }
                    }
                    Ok(None) => tracing::warn!(%error, "job failed after its lease was lost"),
                    Err(e) => e.log(),
                }
            }
        }
    }

    /// Runs the kind's handler in its own task, so a panic becomes an error
    /// and the timeout can stop it.
    async fn call(&self, job: &Job) -> Result<(), String> {
        let Some(handler) = self.registry.get(&job.kind) else {
            // Another node (a newer version) may know the kind: retry there.
            return Err(format!(
                "no handler for job kind {:?} on node {}",
                job.kind, self.node
            ));
        };
        let timeout = self.settings.handler_timeout();
        let mut task = tokio::spawn(handler(self.ctx.clone(), job.clone()));
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => Err("the handler panicked".into()),
            Ok(Err(_)) => Err("the handler was cancelled".into()),
            Err(_) => {
                task.abort();
                Err(format!("timed out after {} ms", timeout.as_millis()))
            }
        }
    }
}

/// How often the job figures are read. Why 5 s: a fraction of a typical
/// scrape interval, and the counting queries stay negligible.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// Done jobs are purged every this many statistics rounds. Why once a
/// minute: a retention counted in days needs no finer purge, and each round
/// deletes at most one bounded batch.
const PURGE_EVERY: u32 = 12;

/// Keeps the job gauges current and deletes done jobs past `retention`.
pub async fn run_stats(
    store: Store,
    metrics: Arc<JobMetrics>,
    retention: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(STATS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purge_in = PURGE_EVERY;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = now_ms();
        match store::stats(&store, now).await {
            Ok(s) => metrics.set_stats(&s, now),
            Err(e) => e.log(),
        }
        purge_in -= 1;
        if purge_in == 0 {
            purge_in = PURGE_EVERY;
            let before = now - retention.as_millis() as i64;
            match store::purge_done(&store, before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "purged done jobs"),
                Err(e) => e.log(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        for attempt in 1..=40 {
            let d = backoff(attempt);
            let exp = (attempt - 1).min(20) as u32;
            let floor = BACKOFF_BASE
                .checked_mul(1 << exp)
                .unwrap_or(BACKOFF_CAP)
                .min(BACKOFF_CAP);
            assert!(d >= floor, "attempt {attempt}: {d:?} < {floor:?}");
            assert!(d <= floor + floor / 4, "attempt {attempt}: {d:?} too long");
        }
        assert!(backoff(1) < Duration::from_millis(1251));
        assert!(backoff(3) >= Duration::from_secs(4));
        assert!(backoff(30) >= BACKOFF_CAP);
    }
}
