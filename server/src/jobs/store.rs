//! The `jobs` table: enqueue (idempotent by unique key), claim with a lease,
//! fenced completion and failure, the admin list and retry, statistics.
//!
//! Every statement is one SQL text for both engines except the claim, where
//! PostgreSQL adds `FOR UPDATE SKIP LOCKED` so concurrent claimers on several
//! nodes pass over each other's rows instead of waiting for them; SQLite has
//! one writer, which already makes every claim run alone. Times are passed in
//! (`now`) rather than read from the database's clock, so the engines behave
//! alike and tests can claim "in the future".

use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Job, NewJob, Status, DEFAULT_MAX_ATTEMPTS};
use crate::error::{AppError, AppResult};
use crate::store::{Backend, Store};
use crate::util::{new_id, now_ms};

/// Longest error text kept on a job. Why 2000: enough for any message a
/// handler writes, and a runaway error (a whole response body) cannot bloat
/// the table or the admin list.
pub const MAX_ERROR_CHARS: usize = 2000;

/// Longest unique key. Why 256: keys are made of a prefix and ids; a bound
/// keeps the unique index small.
pub const MAX_UNIQUE_KEY_BYTES: usize = 256;

/// Enqueues a job; returns its id, or `None` when a job with the same unique
/// key already exists (then nothing changes).
pub async fn enqueue(store: &Store, job: &NewJob) -> AppResult<Option<String>> {
    let mut conn = store.write().acquire().await?;
    enqueue_in(&mut conn, job, now_ms()).await
}

/// [`enqueue`] inside the caller's transaction, so a job is created together
/// with the change that needs it, or not at all.
pub async fn enqueue_in(
    conn: &mut AnyConnection,
    job: &NewJob,
    now: i64,
) -> AppResult<Option<String>> {
    if job.kind.is_empty() {
        return Err(AppError::internal("a job needs a kind"));
    }
    if job
        .unique_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_UNIQUE_KEY_BYTES)
    {
        return Err(AppError::internal("job unique key is empty or too long"));
    }
    let max_attempts = job.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1);
    let id = new_id("j_");
    let row = sqlx::query(
        "INSERT INTO jobs (id, kind, unique_key, payload, run_at, status, attempts, max_attempts, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7, $7) \
         ON CONFLICT (unique_key) DO NOTHING RETURNING id",
    )
    .bind(&id)
    .bind(&job.kind)
    .bind(&job.unique_key)
    .bind(job.payload.to_string())
    .bind(job.run_at)
    .bind(max_attempts)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|_| id))
}

const CLAIMED: &str = "id, kind, unique_key, payload, run_at, attempts, max_attempts, last_error, \
                       leased_by, lease_until";

/// Claims up to `max` jobs for `node` until `now + lease`: queued jobs whose
/// `run_at` has come, and running jobs whose lease has expired (their worker
/// stopped without finishing). Each claim counts an attempt. Oldest first.
pub async fn claim(
    store: &Store,
    node: &str,
    max: usize,
    lease: Duration,
    now: i64,
) -> AppResult<Vec<Job>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let lock = match store.backend() {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    // The SET expressions read the row as it was: a running row being taken
    // over keeps a note of whose lease expired.
    let sql = format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, leased_by = $1, \
         lease_until = $2, updated_at = $3, \
         last_error = CASE WHEN status = 'running' THEN 'lease expired: worker ' || \
         COALESCE(leased_by, '?') || ' stopped without finishing' ELSE last_error END \
         WHERE id IN (SELECT id FROM jobs WHERE (status = 'queued' AND run_at <= $3) \
         OR (status = 'running' AND lease_until <= $3) ORDER BY run_at LIMIT $4 {lock}) \
         RETURNING {CLAIMED}"
    );
    let rows = sqlx::query(&sql)
        .bind(node)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(max as i64)
        .fetch_all(store.write())
        .await?;
    let mut jobs = rows
        .iter()
        .map(job_from_row)
        .collect::<AppResult<Vec<_>>>()?;
    // RETURNING gives no order; run the oldest first.
    jobs.sort_by_key(|j| j.run_at);
    Ok(jobs)
}

fn job_from_row(row: &AnyRow) -> AppResult<Job> {
    let payload: String = row.try_get("payload")?;
    Ok(Job {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        unique_key: row.try_get("unique_key")?,
        // A payload that is not JSON reaches the handler as null and fails
        // there, with the handler's error kept on the job.
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        run_at: row.try_get("run_at")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        last_error: row.try_get("last_error")?,
        leased_by: row
            .try_get::<Option<String>, _>("leased_by")?
            .unwrap_or_default(),
        lease_until: row
            .try_get::<Option<i64>, _>("lease_until")?
            .unwrap_or_default(),
    })
}

/// The fence of every mark: the row is still this worker's claim.
const FENCE: &str = "id = $1 AND status = 'running' AND leased_by = $2 AND attempts = $3";

/// Marks a claimed job done. `false`: the lease was lost (expired and taken
/// by another node, or retried) and nothing changed.
pub async fn complete(store: &Store, job: &Job, now: i64) -> AppResult<bool> {
    let done = sqlx::query(&format!(
        "UPDATE jobs SET status = 'done', lease_until = NULL, finished_at = $4, updated_at = $4 \
         WHERE {FENCE}"
    ))
    .bind(&job.id)
    .bind(&job.leased_by)
    .bind(job.attempts)
    .bind(now)
    .execute(store.write())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a failed attempt: queued again for `retry_at`, or dead when this
/// was the last attempt. Returns the new status, or `None` when the lease was
/// lost and nothing changed.
pub async fn fail(
    store: &Store,
    job: &Job,
    error: &str,
    retry_at: i64,
    now: i64,
) -> AppResult<Option<Status>> {
    let status = if job.attempts >= job.max_attempts {
        Status::Dead
    } else {
        Status::Queued
    };
    let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
    let changed = sqlx::query(&format!(
        "UPDATE jobs SET status = $4, run_at = $5, last_error = $6, lease_until = NULL, \
         finished_at = $7, updated_at = $8 WHERE {FENCE}"
    ))
    .bind(&job.id)
    .bind(&job.leased_by)
    .bind(job.attempts)
    .bind(status.as_str())
    .bind(if status == Status::Dead {
        job.run_at
    } else {
        retry_at
    })
    .bind(error)
    .bind((status == Status::Dead).then_some(now))
    .bind(now)
    .execute(store.write())
    .await?;
    Ok((changed.rows_affected() == 1).then_some(status))
}

/// When the next job becomes claimable: the earliest `run_at` of a queued
/// job or `lease_until` of a running one. Read from the read pool, so an idle
/// node looking for work never takes SQLite's single writer.
pub async fn next_due(store: &Store) -> AppResult<Option<i64>> {
    let row = sqlx::query(
        "SELECT (SELECT MIN(run_at) FROM jobs WHERE status = 'queued') AS queued, \
         (SELECT MIN(lease_until) FROM jobs WHERE status = 'running') AS leased",
    )
    .fetch_one(store.read())
    .await?;
    let queued: Option<i64> = row.try_get("queued")?;
    let leased: Option<i64> = row.try_get("leased")?;
    Ok(match (queued, leased) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// A job as admins see it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub unique_key: Option<String>,
    pub payload: serde_json::Value,
    pub run_at: i64,
    pub status: Status,
    pub attempts: i64,
    pub max_attempts: i64,
    pub lease_until: Option<i64>,
    pub leased_by: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

const RECORD: &str = "id, kind, unique_key, payload, run_at, status, attempts, max_attempts, \
                      lease_until, leased_by, last_error, created_at, updated_at, finished_at";

fn record_from_row(row: &AnyRow) -> AppResult<JobRecord> {
    let payload: String = row.try_get("payload")?;
    let status: String = row.try_get("status")?;
    Ok(JobRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        unique_key: row.try_get("unique_key")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        run_at: row.try_get("run_at")?,
        status: Status::parse(&status)
            .ok_or_else(|| AppError::internal(format!("bad job status {status}")))?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        lease_until: row.try_get("lease_until")?,
        leased_by: row.try_get("leased_by")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// One job by id.
pub async fn get(store: &Store, id: &str) -> AppResult<Option<JobRecord>> {
    let row = sqlx::query(&format!("SELECT {RECORD} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(record_from_row).transpose()
}

/// One job by unique key.
pub async fn get_by_key(store: &Store, key: &str) -> AppResult<Option<JobRecord>> {
    let row = sqlx::query(&format!("SELECT {RECORD} FROM jobs WHERE unique_key = $1"))
        .bind(key)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(record_from_row).transpose()
}

/// Jobs newest first (ids are time-ordered), optionally of one status, after
/// the `cursor` id of the previous page.
pub async fn list(
    store: &Store,
    status: Option<Status>,
    cursor: Option<&str>,
    limit: i64,
) -> AppResult<Vec<JobRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {RECORD} FROM jobs WHERE ($1 IS NULL OR status = $1) \
         AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(status.map(Status::as_str))
    .bind(cursor)
    .bind(limit)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(record_from_row).collect()
}

/// Puts a dead job back in the queue, due now, with `extra_attempts` more
/// attempts. `not_found` for an unknown id, `conflict` when it is not dead.
pub async fn retry(store: &Store, id: &str, extra_attempts: i64, now: i64) -> AppResult<JobRecord> {
    let row = sqlx::query(&format!(
        "UPDATE jobs SET status = 'queued', run_at = $2, max_attempts = attempts + $3, \
         lease_until = NULL, finished_at = NULL, updated_at = $2 \
         WHERE id = $1 AND status = 'dead' RETURNING {RECORD}"
    ))
    .bind(id)
    .bind(now)
    .bind(extra_attempts.max(1))
    .fetch_optional(store.write())
    .await?;
    match row {
        Some(row) => record_from_row(&row),
        None => match get(store, id).await? {
            None => Err(AppError::not_found("no such job")),
            Some(job) => Err(AppError::conflict(format!(
                "only dead jobs can be retried; this one is {}",
                job.status.as_str()
            ))),
        },
    }
}

/// Cluster-wide figures for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queued jobs whose `run_at` has passed.
    pub due: i64,
    /// The earliest `run_at` among them.
    pub oldest_due: Option<i64>,
    pub running: i64,
    pub dead: i64,
}

pub async fn stats(store: &Store, now: i64) -> AppResult<Stats> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND run_at <= $1) AS due, \
         (SELECT MIN(run_at) FROM jobs WHERE status = 'queued' AND run_at <= $1) AS oldest, \
         (SELECT COUNT(*) FROM jobs WHERE status = 'running') AS running, \
         (SELECT COUNT(*) FROM jobs WHERE status = 'dead') AS dead",
    )
    .bind(now)
    .fetch_one(store.read())
    .await?;
    Ok(Stats {
        due: row.try_get("due")?,
        oldest_due: row.try_get("oldest")?,
        running: row.try_get("running")?,
        dead: row.try_get("dead")?,
    })
}

/// Rows deleted by one purge statement. Why 1000: a purge never holds
/// SQLite's writer (or PostgreSQL's locks) long enough to delay sends.
const PURGE_BATCH: i64 = 1000;

/// Deletes done jobs that finished before `before`; returns how many. A
/// unique key is free again once its job is purged.
pub async fn purge_done(store: &Store, before: i64) -> AppResult<u64> {
    let deleted = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE status = 'done' \
         AND run_at < $1 AND finished_at < $1 LIMIT $2)",
    )
    .bind(before)
    .bind(PURGE_BATCH)
    .execute(store.write())
    .await?;
    Ok(deleted.rows_affected())
}
