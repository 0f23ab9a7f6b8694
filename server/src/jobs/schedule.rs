//! Recurring and one-shot schedules: cron expressions evaluated in an IANA
//! time zone, the `schedules` table, and the scheduler loop that turns each
//! occurrence into exactly one job.
//!
//! Every node runs the scheduler. For a schedule whose `next_run_at` is within
//! [`LOOKAHEAD`], one transaction moves `next_run_at` on — guarded by the value
//! it read, so of several nodes only one moves it — and enqueues the job
//! `schedule:<id>:<occurrence ms>`, due at the occurrence. The unique key
//! makes a second enqueue of an occurrence a no-op should the guard ever be
//! passed twice. Occurrences missed while every node was down are caught up
//! when they are at most `schedule_misfire_s` old; older ones are skipped
//! (counted and logged), so a long outage does not unleash a flood.
//!
//! Cron syntax is croner's: five fields (minute hour day-of-month month
//! day-of-week, day-of-week 0–7 with 0 and 7 Sunday) or six with seconds
//! first, plus ranges, steps, names, `L`, `W` and `#`. When clocks go back,
//! a repeated wall-clock time fires once; when they skip forward, a time in
//! the gap fires at the first instant after it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metrics::JobMetrics;
use super::{store, NewJob, Settings};
use crate::error::{AppError, AppResult};
use crate::store::Store;
use crate::util::{new_id, now_ms};

/// Occurrences are made jobs this long before they are due. Why 10 s: a job
/// exists (durably, claimable by any node) well before its time, so neither
/// the scheduler's tick nor a node restarting around that time delays it.
pub const LOOKAHEAD: Duration = Duration::from_secs(10);
/// How often each node's scheduler looks for due schedules. Why 1 s: with the
/// lookahead far longer, every occurrence is a job several ticks ahead.
const SCHEDULER_TICK: Duration = Duration::from_secs(1);
/// Schedules advanced per tick. Why 100: bounds one tick's writes; more due
/// schedules are taken on the next tick, a second later.
const DUE_BATCH: i64 = 100;
/// Occurrences one schedule enqueues per tick. Why 100: a per-second cron
/// catching up after a short outage is done in a few ticks, and one schedule
/// cannot hold the writer for long.
const MAX_OCCURRENCES_PER_PASS: usize = 100;
/// Longest cron expression accepted. Why 200: the longest sensible one (six
/// fields of lists and ranges) is far shorter; a bound keeps rows small.
pub const MAX_CRON_CHARS: usize = 200;

/// A time zone by IANA name (`Asia/Shanghai`, `UTC`).
pub fn parse_timezone(name: &str) -> AppResult<Tz> {
    name.trim().parse::<Tz>().map_err(|_| {
        AppError::bad_request(format!(
            "unknown time zone {name:?}; use an IANA name such as Asia/Shanghai or UTC"
        ))
    })
}

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Recurrence {
    cron: Cron,
    tz: Tz,
}

impl Recurrence {
    /// Parses five-field (minutes) or six-field (seconds first) cron syntax.
    pub fn parse(expr: &str, tz: Tz) -> AppResult<Recurrence> {
        let expr = expr.trim();
        if expr.is_empty() || expr.chars().count() > MAX_CRON_CHARS {
            return Err(AppError::bad_request(format!(
                "cron must be 1 to {MAX_CRON_CHARS} characters"
            )));
        }
        let cron = Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| AppError::bad_request(format!("invalid cron expression: {e}")))?;
        Ok(Recurrence { cron, tz })
    }

    /// The first occurrence strictly after `after_ms` (whole seconds, ms
    /// since the epoch), or `None` if there is none.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = after_ms.div_euclid(1000);
        let mut from = DateTime::<Utc>::from_timestamp(after, 0)?.with_timezone(&self.tz);
        // Why a few rounds: only a repeated wall-clock hour (clocks going
        // back) can make croner answer an instant before `from`; one more
        // round past the fold settles it.
        for _ in 0..3 {
            let found = self.cron.find_next_occurrence(&from, false).ok()?;
            if found.timestamp() > after {
                return Some(found.timestamp_millis());
            }
            // croner maps a repeated wall-clock time to its first instance;
            // inside the fold the second one is the occurrence.
            if let LocalResult::Ambiguous(_, later) =
                self.tz.from_local_datetime(&found.naive_local())
            {
                if later.timestamp() > after {
                    return Some(later.timestamp_millis());
                }
            }
            from += chrono::Duration::hours(1);
        }
        None
    }
}

/// A schedule as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub id: String,
    pub kind: String,
    pub target_id: Option<String>,
    pub cron: Option<String>,
    pub at: Option<i64>,
    pub timezone: String,
    pub payload: serde_json::Value,
    pub next_run_at: Option<i64>,
    pub enabled: bool,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub cancelled_at: Option<i64>,
    pub cancelled_by: Option<String>,
}

const COLUMNS: &str = "id, kind, target_id, cron, at, timezone, payload, next_run_at, enabled, \
                       created_by, created_at, updated_at, cancelled_at, cancelled_by";

fn schedule_from_row(row: &AnyRow) -> AppResult<Schedule> {
    let payload: String = row.try_get("payload")?;
    Ok(Schedule {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        target_id: row.try_get("target_id")?,
        cron: row.try_get("cron")?,
        at: row.try_get("at")?,
        timezone: row.try_get("timezone")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        next_run_at: row.try_get("next_run_at")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
        cancelled_by: row.try_get("cancelled_by")?,
    })
}

/// When a new schedule fires.
#[derive(Debug, Clone)]
pub enum When {
    /// Once, at this time (ms since the epoch).
    At(i64),
    /// On every occurrence of this cron expression in the schedule's zone.
    Cron(String),
}

/// A schedule to create.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// The job kind each occurrence becomes.
    pub kind: String,
    pub target_id: Option<String>,
    pub when: When,
    /// IANA name; cron fields are read in this zone.
    pub timezone: String,
    /// Copied into every occurrence's job, with `schedule` and `occurrence`
    /// added (so it should be a JSON object).
    pub payload: serde_json::Value,
    pub created_by: Option<String>,
}

/// Checks and stores a schedule; its first occurrence is the `at` time or
/// the cron's first occurrence after `now`.
pub async fn create(store: &Store, new: &NewSchedule, now: i64) -> AppResult<Schedule> {
    let tz = parse_timezone(&new.timezone)?;
    let (cron, at, next) = match &new.when {
        When::At(at) => (None, Some(*at), *at),
        When::Cron(expr) => {
            let next = Recurrence::parse(expr, tz)?
                .next_after(now)
                .ok_or_else(|| {
                    AppError::bad_request("this cron expression has no future occurrence")
                })?;
            (Some(expr.trim().to_string()), None, next)
        }
    };
    let s = Schedule {
        id: new_id("sc_"),
        kind: new.kind.clone(),
        target_id: new.target_id.clone(),
        cron,
        at,
        timezone: tz.name().to_string(),
        payload: new.payload.clone(),
        next_run_at: Some(next),
        enabled: true,
        created_by: new.created_by.clone(),
        created_at: now,
        updated_at: now,
        cancelled_at: None,
        cancelled_by: None,
    };
    sqlx::query(&format!(
        "INSERT INTO schedules ({COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $10, NULL, NULL)"
    ))
    .bind(&s.id)
    .bind(&s.kind)
    .bind(&s.target_id)
    .bind(&s.cron)
    .bind(s.at)
    .bind(&s.timezone)
    .bind(s.payload.to_string())
    .bind(s.next_run_at)
    .bind(&s.created_by)
    .bind(now)
    .execute(store.write())
    .await?;
    Ok(s)
}

pub async fn get(store: &Store, id: &str) -> AppResult<Option<Schedule>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM schedules WHERE id = $1"))
        .bind(id)
        .fetch_optional(store.read())
        .await?;
    row.as_ref().map(schedule_from_row).transpose()
}

/// The schedules of one kind that belong to `target` and are not cancelled,
/// oldest first.
pub async fn list_for_target(store: &Store, kind: &str, target: &str) -> AppResult<Vec<Schedule>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE target_id = $1 AND kind = $2 AND enabled = 1 \
         ORDER BY created_at, id"
    ))
    .bind(target)
    .bind(kind)
    .fetch_all(store.read())
    .await?;
    rows.iter().map(schedule_from_row).collect()
}

/// How many schedules of `kind` for `target` still have an occurrence ahead.
pub async fn count_pending(store: &Store, kind: &str, target: &str) -> AppResult<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM schedules WHERE target_id = $1 AND kind = $2 \
         AND enabled = 1 AND next_run_at IS NOT NULL",
    )
    .bind(target)
    .bind(kind)
    .fetch_one(store.read())
    .await?;
    Ok(row.try_get("n")?)
}

/// Cancels a schedule: no further occurrence becomes a job, and jobs already
/// made for coming occurrences do nothing when they run (their handlers check
/// [`Schedule::enabled`]). `false` when it was already cancelled.
pub async fn cancel(store: &Store, id: &str, by: &str, now: i64) -> AppResult<bool> {
    let changed = sqlx::query(
        "UPDATE schedules SET enabled = 0, next_run_at = NULL, cancelled_at = $2, \
         cancelled_by = $3, updated_at = $2 WHERE id = $1 AND enabled = 1",
    )
    .bind(id)
    .bind(now)
    .bind(by)
    .execute(store.write())
    .await?;
    Ok(changed.rows_affected() == 1)
}

/// What one scheduler pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advanced {
    /// Occurrences made jobs.
    pub enqueued: usize,
    /// Occurrences skipped as missed by more than the misfire bound.
    pub skipped: usize,
}

impl std::ops::AddAssign for Advanced {
    fn add_assign(&mut self, o: Advanced) {
        self.enqueued += o.enqueued;
        self.skipped += o.skipped;
    }
}

/// The job payload of one occurrence: the schedule's payload with
/// `schedule` and `occurrence` added.
fn occurrence_payload(payload: &serde_json::Value, id: &str, occurrence: i64) -> serde_json::Value {
    let mut map = match payload {
        serde_json::Value::Object(m) => m.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("payload".into(), other.clone());
            m
        }
    };
    map.insert("schedule".into(), id.into());
    map.insert("occurrence".into(), occurrence.into());
    serde_json::Value::Object(map)
}

/// Makes jobs of every occurrence of `s` due by `now + LOOKAHEAD` (at most
/// [`MAX_OCCURRENCES_PER_PASS`]), one transaction per occurrence. Stops
/// quietly when another node moved the schedule first or it was cancelled.
pub async fn advance(
    store: &Store,
    s: &Schedule,
    now: i64,
    misfire: Duration,
) -> AppResult<Advanced> {
    let mut out = Advanced::default();
    let Some(mut occurrence) = s.next_run_at.filter(|_| s.enabled) else {
        return Ok(out);
    };
    let recurrence = match &s.cron {
        None => None,
        Some(expr) => {
            match parse_timezone(&s.timezone).and_then(|tz| Recurrence::parse(expr, tz)) {
                Ok(r) => Some(r),
                Err(e) => {
                    // Stored rows were checked when created; this only
                    // happens if the zone database lost the zone. End the
                    // schedule rather than fail on every tick.
                    tracing::error!(schedule = %s.id, error = %e.public_message(), "schedule no longer parses; stopping it");
                    sqlx::query(
                        "UPDATE schedules SET next_run_at = NULL, updated_at = $2 WHERE id = $1",
                    )
                    .bind(&s.id)
                    .bind(now)
                    .execute(store.write())
                    .await?;
                    return Ok(out);
                }
            }
        }
    };
    let horizon = now + LOOKAHEAD.as_millis() as i64;
    let oldest = now - misfire.as_millis() as i64;
    for _ in 0..MAX_OCCURRENCES_PER_PASS {
        if occurrence > horizon {
            break;
        }
        let missed = occurrence < oldest;
        let next = recurrence
            .as_ref()
            .and_then(|r| r.next_after(if missed { oldest - 1 } else { occurrence }));
        let mut tx = store.write().begin().await?;
        // The guard: only the pass that read this next_run_at moves it.
        let moved = sqlx::query(
            "UPDATE schedules SET next_run_at = $3, updated_at = $4 \
             WHERE id = $1 AND enabled = 1 AND next_run_at = $2",
        )
        .bind(&s.id)
        .bind(occurrence)
        .bind(next)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            tx.rollback().await?;
            break;
        }
        if missed {
            tracing::warn!(schedule = %s.id, occurrence, next, "schedule occurrence missed by more than schedule_misfire_s; skipped");
            out.skipped += 1;
        } else {
            let job = NewJob::new(
                &s.kind,
                occurrence_payload(&s.payload, &s.id, occurrence),
                occurrence,
            )
            .unique(format!("schedule:{}:{occurrence}", s.id));
            if store::enqueue_in(&mut tx, &job, now).await?.is_some() {
                out.enqueued += 1;
            }
        }
        tx.commit().await?;
        match next {
            Some(n) => occurrence = n,
            None => break,
        }
    }
    Ok(out)
}

/// One scheduler pass over every schedule due by `now + LOOKAHEAD`.
pub async fn tick(store: &Store, now: i64, misfire: Duration) -> AppResult<Advanced> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE enabled = 1 AND next_run_at IS NOT NULL \
         AND next_run_at <= $1 ORDER BY next_run_at LIMIT $2"
    ))
    .bind(now + LOOKAHEAD.as_millis() as i64)
    .bind(DUE_BATCH)
    .fetch_all(store.read())
    .await?;
    let mut total = Advanced::default();
    for row in &rows {
        let s = schedule_from_row(row)?;
        total += advance(store, &s, now, misfire).await?;
    }
    Ok(total)
}

/// Runs [`tick`] every second until `cancel` fires; wakes the worker when it
/// made jobs.
pub async fn run_scheduler(
    store: Store,
    settings: Settings,
    metrics: Option<Arc<JobMetrics>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut every = crate::util::Every::new(SCHEDULER_TICK);
    while every.tick(&cancel).await {
        match tick(&store, now_ms(), settings.misfire).await {
            Ok(done) => {
                if done.enqueued > 0 {
                    wake.notify_one();
                }
                if let Some(m) = &metrics {
                    m.occurrences_skipped.inc_by(done.skipped as u64);
                }
            }
            Err(e) => e.log(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn rec(expr: &str, tz: &str) -> Recurrence {
        Recurrence::parse(expr, parse_timezone(tz).unwrap()).unwrap()
    }

    #[test]
    fn five_fields_are_minutes_in_the_schedules_zone() {
        // 09:00 in Shanghai is 01:00 UTC; Monday to Friday.
        let r = rec("0 9 * * 1-5", "Asia/Shanghai");
        // Friday 2026-01-02 02:00 UTC (10:00 local): next is Monday 01:00 UTC.
        assert_eq!(
            r.next_after(ms("2026-01-02T02:00:00Z")),
            Some(ms("2026-01-05T01:00:00Z"))
        );
        assert_eq!(
            r.next_after(ms("2026-01-05T00:59:59.900Z")),
            Some(ms("2026-01-05T01:00:00Z"))
        );
    }

    #[test]
    fn six_fields_have_seconds_and_next_is_strictly_after() {
        let r = rec("* * * * * *", "UTC");
        let t = ms("2026-03-01T00:00:00Z");
        assert_eq!(r.next_after(t), Some(t + 1000));
        assert_eq!(r.next_after(t + 500), Some(t + 1000));
        let r = rec("*/15 * * * * *", "UTC");
        assert_eq!(r.next_after(t + 1000), Some(t + 15_000));
    }

    #[test]
    fn a_repeated_hour_fires_once_and_never_goes_backwards() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens
        // at 05:30Z and again at 06:30Z.
        let r = rec("30 1 * * *", "America/New_York");
        assert_eq!(
            r.next_after(ms("2026-11-01T04:00:00Z")),
            Some(ms("2026-11-01T05:30:00Z"))
        );
        // From inside the second 01:xx hour the answer is still ahead.
        let inside = ms("2026-11-01T06:10:00Z");
        let next = r.next_after(inside).unwrap();
        assert!(next > inside);
        // Every-minute schedules keep moving forward through the fold.
        let r = rec("* * * * *", "America/New_York");
        let mut t = ms("2026-11-01T05:50:00Z");
        for _ in 0..180 {
            let n = r.next_after(t).unwrap();
            assert!(n > t && n - t <= 3_600_000 + 60_000, "{t} -> {n}");
            t = n;
        }
    }

    #[test]
    fn a_skipped_hour_fires_after_the_gap() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not
        // exist that day.
        let r = rec("30 2 * * *", "America/New_York");
        let next = r.next_after(ms("2026-03-08T05:00:00Z")).unwrap();
        assert!(next >= ms("2026-03-08T07:00:00Z") && next <= ms("2026-03-08T07:30:00Z"));
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        let utc = parse_timezone("UTC").unwrap();
        assert!(Recurrence::parse("not a cron", utc).is_err());
        assert!(Recurrence::parse("61 * * * *", utc).is_err());
        assert!(Recurrence::parse("", utc).is_err());
        assert!(Recurrence::parse(&"* ".repeat(150), utc).is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(parse_timezone("Asia/Shanghai").is_ok());
    }

    #[test]
    fn an_impossible_date_has_no_occurrence() {
        let r = rec("0 0 31 2 *", "UTC");
        let started = std::time::Instant::now();
        assert_eq!(r.next_after(ms("2026-01-01T00:00:00Z")), None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn occurrence_payloads_carry_the_schedule() {
        let p = occurrence_payload(&serde_json::json!({"a": 1}), "sc_1", 5);
        assert_eq!(
            p,
            serde_json::json!({"a": 1, "schedule": "sc_1", "occurrence": 5})
        );
    }
}
