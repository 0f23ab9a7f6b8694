//! Jobs: the durable scheduler every timed action runs on — scheduled group
//! messages now; SLA clocks, reminders, follow-ups and webhook retries later.
//!
//! A job is a row of the `jobs` table with a kind, a JSON payload and the time
//! it is due (`run_at`). Any node may claim a due job: claiming sets a lease
//! (`leased_by`, `lease_until`) and counts an attempt, in one statement that
//! PostgreSQL runs with `FOR UPDATE SKIP LOCKED` (nodes never wait for each
//! other's rows) and SQLite serializes on its single writer. The handler
//! registered for the kind runs; then the job is marked done, or failed and
//! queued again with exponential backoff, or dead after `max_attempts` with
//! its error kept for admins. Both marks are fenced by the lease holder and
//! attempt number, so a worker that lost its lease cannot overwrite the work
//! of the node that took the job over. A job whose worker died is claimed
//! again once its lease has expired: a job is never lost, and it never runs
//! twice at the same time because a handler is stopped well before its lease
//! ends. It may still run twice one after the other (a worker can die after
//! the effect and before the mark), so handlers make their effects
//! idempotent — the group message uses `client_msg_id = "job:<job id>"`.
//! Enqueueing is idempotent by an optional unique key.
//!
//! Recurring work lives in the `schedules` table (cron expression + IANA time
//! zone, or a single time): the scheduler turns each occurrence into a job
//! keyed `schedule:<id>:<occurrence ms>` and moves the schedule on in the same
//! transaction, so each occurrence becomes exactly one job across nodes and
//! restarts.
//!
//! Layout:
//! - this file: [`Job`], [`NewJob`], [`Status`], the handler [`Registry`],
//!   [`Settings`], [`start`] and the server's registry of kinds.
//! - [`store`]: the `jobs` table: enqueue, claim with a lease, fenced
//!   completion and failure, the admin list and retry, statistics.
//! - [`worker`]: the claim–run–mark loop, backoff, the statistics loop.
//! - [`schedule`]: cron with a time zone, the `schedules` table, the scheduler.
//! - [`group_messages`]: scheduled and recurring messages into groups.
//! - [`metrics`]: the Prometheus figures of all of the above.
//! - [`api`]: the REST routes.

pub mod api;
pub mod group_messages;
pub mod metrics;
pub mod schedule;
pub mod store;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::state::AppState;

/// Attempts a job gets unless its enqueuer says otherwise. Why 10: with the
/// backoff of [`worker::backoff`] the last attempt comes about 17 minutes
/// after the first, which outlasts a restart or a short outage of whatever
/// the job talks to, while a job that cannot succeed reaches the admins'
/// dead-letter list the same day.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 10;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for `run_at` (new, or failed and waiting for its retry).
    Queued,
    /// Claimed by a node until `lease_until`.
    Running,
    Done,
    /// Failed `max_attempts` times; kept with its last error until an admin
    /// retries it.
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "done" => Status::Done,
            "dead" => Status::Dead,
            _ => return None,
        })
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: serde_json::Value,
    /// When it is due, ms since the epoch.
    pub run_at: i64,
    /// Enqueueing a second job with the same key does nothing.
    pub unique_key: Option<String>,
    /// `None`: [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: Option<i64>,
}

impl NewJob {
    pub fn new(kind: &str, payload: serde_json::Value, run_at: i64) -> NewJob {
        NewJob {
            kind: kind.to_string(),
            payload,
            run_at,
            unique_key: None,
            max_attempts: None,
        }
    }

    pub fn unique(mut self, key: impl Into<String>) -> NewJob {
        self.unique_key = Some(key.into());
        self
    }

    pub fn max_attempts(mut self, n: i64) -> NewJob {
        self.max_attempts = Some(n);
        self
    }
}

/// A job claimed by a worker: what its handler gets.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub unique_key: Option<String>,
    pub payload: serde_json::Value,
    pub run_at: i64,
    /// This attempt's number, from 1.
    pub attempts: i64,
    pub max_attempts: i64,
    /// The error of the previous attempt, if any.
    pub last_error: Option<String>,
    /// The node holding the lease; with `attempts` it fences the marks.
    pub leased_by: String,
    pub lease_until: i64,
}

/// What a handler returns: `Err` carries the error kept on the job.
pub type HandlerResult = Result<(), String>;
/// A running handler.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type Handler<C> = Arc<dyn Fn(C, Job) -> HandlerFuture + Send + Sync>;

/// Job kind → handler. `C` is what handlers get besides the job: the
/// server's [`AppState`], or anything a test needs.
pub struct Registry<C> {
    handlers: HashMap<String, Handler<C>>,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry {
            handlers: HashMap::new(),
        }
    }
}

impl<C> Registry<C> {
    pub fn new() -> Registry<C> {
        Registry::default()
    }

    /// Registers the handler of `kind`, replacing any earlier one.
    pub fn register<F, Fut>(&mut self, kind: &str, handler: F) -> &mut Self
    where
        F: Fn(C, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.insert(
            kind.to_string(),
            Arc::new(move |ctx, job| Box::pin(handler(ctx, job)) as HandlerFuture),
        );
        self
    }

    fn get(&self, kind: &str) -> Option<&Handler<C>> {
        self.handlers.get(kind)
    }
}

/// Every job kind the server runs. New timed features register theirs here.
pub fn server_registry() -> Registry<AppState> {
    let mut r = Registry::new();
    r.register(group_messages::KIND, group_messages::run);
    r.register(crate::tickets::sla::KIND, crate::tickets::sla::run);
    r.register(
        crate::tickets::AUTO_CLOSE_KIND,
        crate::tickets::run_auto_close,
    );
    r
}

/// How a node runs jobs; from `[limits]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs one node runs at the same time.
    pub concurrency: usize,
    /// How long a claim holds a job.
    pub lease: Duration,
    /// Longest wait between looks for due jobs.
    pub poll: Duration,
    /// Occurrences of a schedule missed by more than this are skipped.
    pub misfire: Duration,
    /// Done jobs are deleted after this.
    pub retention: Duration,
}

impl Settings {
    pub fn from_limits(l: &Limits) -> Settings {
        Settings {
            concurrency: l.job_concurrency,
            lease: Duration::from_secs(l.job_lease_s),
            poll: Duration::from_millis(l.job_poll_ms),
            misfire: Duration::from_secs(l.schedule_misfire_s),
            retention: Duration::from_secs(l.job_retention_s),
        }
    }

    /// How long a handler may run. Why half the lease: the other half covers
    /// writing the mark and clocks of nodes that disagree, so a handler has
    /// always stopped before another node can claim its job.
    pub fn handler_timeout(&self) -> Duration {
        self.lease / 2
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_limits(&Limits::default())
    }
}

/// Starts this node's worker, scheduler and statistics loops; they stop when
/// `cancel` fires, a running handler being let finish. Returns their
/// (closed) tracker: the server waits on it before it stops the bus, so a
/// message a last job sends still reaches the other nodes.
pub fn start(state: &AppState, cancel: CancellationToken) -> TaskTracker {
    let tracker = TaskTracker::new();
    let settings = Settings::from_limits(&state.config().limits);
    let metrics = Arc::new(metrics::JobMetrics::new(state.metrics()));
    // Why a Notify: the scheduler wakes the worker when it enqueued
    // something, so a job due before the next poll still runs on time.
    let wake = Arc::new(Notify::new());
    let worker = worker::Worker::new(
        state.store().clone(),
        state.node_id(),
        Arc::new(server_registry()),
        state.clone(),
        settings.clone(),
    )
    .with_metrics(metrics.clone())
    .with_wake(wake.clone());
    tracker.spawn(worker.run(cancel.clone()));
    tracker.spawn(schedule::run_scheduler(
        state.store().clone(),
        settings.clone(),
        Some(metrics.clone()),
        wake,
        cancel.clone(),
    ));
    tracker.spawn(worker::run_stats(
        state.store().clone(),
        metrics,
        settings.retention,
        cancel,
    ));
    tracker.close();
    tracker
}
