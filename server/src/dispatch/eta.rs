//! The waiting-time estimate a queued customer sees.
//!
//! A team frees a seat every `H / C` seconds on average, where `H` is the
//! median handling time of its recent conversations (assignment to close) and
//! `C` the capacity of its agents serving now; the customer at position `p`
//! waits about `p × H / C`. The median, not the mean: handling times are
//! long-tailed, and one conversation left open for an hour would otherwise
//! inflate every estimate. When nobody serves (`C = 0`) the estimate is the
//! 75th percentile of the team's recent waits (queued to assigned) times the
//! position: what most recent customers actually waited.
//!
//! Samples are the team's last [`SAMPLES`] conversations of the last 24 hours,
//! read from the database at most every [`REFRESH`] per team and node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::error::AppResult;
use crate::store::Store;

/// Conversations sampled per team.
const SAMPLES: i64 = 100;
/// How long a team's samples are reused. Why 10 s: estimates move slowly;
/// re-reading on every queue change would cost a query per change.
const REFRESH: Duration = Duration::from_secs(10);
/// Handling time assumed until a team has enough history (seconds).
const DEFAULT_HANDLE_S: f64 = 180.0;
/// Fewer samples than this and the defaults are used.
const MIN_SAMPLES: usize = 5;
/// Estimates are capped at a day.
const MAX_ETA_S: f64 = 86_400.0;

/// A team's recent handling and waiting times.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    median_handle_s: f64,
    p75_wait_s: f64,
}

impl Stats {
    /// Seconds the customer at `position` (1-based) should expect to wait
    /// while agents with `capacity` seats in all serve.
    pub fn eta_s(&self, position: usize, capacity: u32) -> u32 {
        estimate(*self, position, capacity)
    }
}

/// Per-team sample cache of one node.
#[derive(Default)]
pub struct Estimator {
    // Why a std Mutex: a map lookup and insert, never held across an await.
    cache: Mutex<HashMap<String, (Instant, Stats)>>,
}

fn percentile(mut v: Vec<f64>, q: f64) -> Option<f64> {
    if v.len() < MIN_SAMPLES {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v.get(i).copied()
}

/// The estimate for `position` given the team's stats and serving capacity.
fn estimate(stats: Stats, position: usize, capacity: u32) -> u32 {
    let p = position as f64;
    let s = if capacity > 0 {
        p * stats.median_handle_s / f64::from(capacity)
    } else {
        p * stats.p75_wait_s
    };
    s.clamp(0.0, MAX_ETA_S).ceil() as u32
}

impl Estimator {
    /// The team's stats, read again at most every [`REFRESH`].
    pub async fn stats(&self, store: &Store, team: &str, now: i64) -> AppResult<Stats> {
        if let Some((at, s)) = self.cache.lock().expect("eta lock").get(team) {
            if at.elapsed() < REFRESH {
                return Ok(*s);
            }
        }
        let since = now - 24 * 3600 * 1000;
        let rows = sqlx::query(
            "SELECT assigned_at - queued_at AS wait_ms, closed_at - assigned_at AS handle_ms \
             FROM conversations WHERE team_id = $1 AND kind = 'service' \
             AND assigned_at IS NOT NULL AND queued_at IS NOT NULL AND assigned_at > $2 \
             ORDER BY assigned_at DESC LIMIT $3",
        )
        .bind(team)
        .bind(since)
        .bind(SAMPLES)
        .fetch_all(store.read())
        .await?;
        let mut waits = Vec::new();
        let mut handles = Vec::new();
        for r in &rows {
            let wait: Option<i64> = r.try_get("wait_ms")?;
            let handle: Option<i64> = r.try_get("handle_ms")?;
            waits.extend(wait.map(|w| w.max(0) as f64 / 1000.0));
            handles.extend(handle.map(|h| h.max(0) as f64 / 1000.0));
        }
        let stats = Stats {
            median_handle_s: percentile(handles, 0.5).unwrap_or(DEFAULT_HANDLE_S),
            p75_wait_s: percentile(waits, 0.75).unwrap_or(DEFAULT_HANDLE_S),
        };
        self.cache
            .lock()
            .expect("eta lock")
            .insert(team.to_string(), (Instant::now(), stats));
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_scales_with_position_and_capacity() {
        let s = Stats {
            median_handle_s: 120.0,
            p75_wait_s: 30.0,
        };
        assert_eq!(estimate(s, 1, 4), 30);
        assert_eq!(estimate(s, 4, 4), 120);
        assert_eq!(estimate(s, 4, 2), 240);
        // Nobody serving: recent waits.
        assert_eq!(estimate(s, 2, 0), 60);
    }

    #[test]
    fn percentile_needs_enough_samples_and_ignores_outliers() {
        assert_eq!(percentile(vec![1.0, 2.0], 0.5), None);
        let v = vec![10.0, 11.0, 12.0, 13.0, 3600.0];
        assert_eq!(percentile(v, 0.5), Some(12.0));
    }
}
