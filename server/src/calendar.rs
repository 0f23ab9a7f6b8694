//! Working-hours calendars: weekly windows in a named time zone, with
//! holidays. Teams use one to decide whether they serve now; SLA clocks will
//! count business time with the same type.
//!
//! JSON shape (stored in `teams.working_hours` and accepted by the REST API):
//! `{"timezone":"Asia/Shanghai","weekly":[{"days":[1,2,3,4,5],"start":"09:00",
//! "end":"18:00"}],"holidays":["2026-10-01"]}` — days 1 = Monday … 7 = Sunday,
//! times are local wall-clock `HH:MM` with `end` after `start` (`24:00` allowed),
//! holidays are local dates on which no window opens.

use chrono::{DateTime, Datelike, Days, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};

/// One weekly opening window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// ISO weekdays, 1 = Monday … 7 = Sunday.
    pub days: Vec<u8>,
    pub start: String,
    pub end: String,
}

/// A working-hours calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calendar {
    pub timezone: String,
    pub weekly: Vec<Window>,
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// A checked calendar, ready for lookups.
#[derive(Debug, Clone)]
pub struct Hours {
    tz: Tz,
    /// Per ISO weekday (index 0 = Monday): open minute ranges `[start, end)`.
    days: [Vec<(u32, u32)>; 7],
    holidays: Vec<NaiveDate>,
}

/// `HH:MM` → minutes after midnight; `24:00` is allowed as an end.
fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl Calendar {
    /// Checks every field; the error names the bad one.
    pub fn compile(&self) -> AppResult<Hours> {
        let tz: Tz = self.timezone.parse().map_err(|_| {
            AppError::bad_request(format!(
                "working_hours.timezone: unknown time zone {:?} (use an IANA name such as Asia/Shanghai)",
                self.timezone
            ))
        })?;
        if self.weekly.len() > 50 || self.holidays.len() > 1000 {
            return Err(AppError::bad_request(
                "working_hours: at most 50 weekly windows and 1000 holidays",
            ));
        }
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for (i, w) in self.weekly.iter().enumerate() {
            let (Some(start), Some(end)) = (minutes(&w.start), minutes(&w.end)) else {
                return Err(AppError::bad_request(format!(
                    "working_hours.weekly[{i}]: start and end are HH:MM (00:00 to 24:00)"
                )));
            };
            if start >= end {
                return Err(AppError::bad_request(format!(
                    "working_hours.weekly[{i}]: end must be after start (split a window that crosses midnight in two)"
                )));
            }
            if w.days.is_empty() || w.days.iter().any(|d| !(1..=7).contains(d)) {
                return Err(AppError::bad_request(format!(
                    "working_hours.weekly[{i}].days: 1 (Monday) to 7 (Sunday), at least one"
                )));
            }
            for d in &w.days {
                days[usize::from(*d) - 1].push((start, end));
            }
        }
        let holidays = self
            .holidays
            .iter()
            .map(|h| {
                NaiveDate::parse_from_str(h, "%Y-%m-%d").map_err(|_| {
                    AppError::bad_request(format!(
                        "working_hours.holidays: {h:?} is not a YYYY-MM-DD date"
                    ))
                })
            })
            .collect::<AppResult<Vec<_>>>()?;
        Ok(Hours { tz, days, holidays })
    }
}

impl Hours {
    /// Whether the calendar is open at `at_ms` (ms since the epoch).
    pub fn is_open(&self, at_ms: i64) -> bool {
        let Some(utc) = DateTime::<Utc>::from_timestamp_millis(at_ms) else {
            return false;
        };
        let local = utc.with_timezone(&self.tz);
        if self.holidays.contains(&local.date_naive()) {
            return false;
        }
        let minute = local.hour() * 60 + local.minute();
        let weekday = local.weekday().number_from_monday() as usize - 1;
        self.days[weekday]
            .iter()
            .any(|(start, end)| (*start..*end).contains(&minute))
    }

    /// The open intervals `[start, end)` (ms since the epoch) of one local date.
    fn open_on(&self, date: NaiveDate) -> Vec<(i64, i64)> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        let weekday = date.weekday().number_from_monday() as usize - 1;
        let at = |minute: u32| -> i64 {
            let day = if minute >= 24 * 60 {
                date.checked_add_days(Days::new(1)).unwrap_or(date)
            } else {
                date
            };
            let minute = minute % (24 * 60);
            let naive = day
                .and_hms_opt(minute / 60, minute % 60, 0)
                .unwrap_or_default();
            // A wall-clock time skipped by a DST change counts from the
            // same instant read as UTC shifted by the zone's usual offset.
            match self.tz.from_local_datetime(&naive).earliest() {
                Some(t) => t.timestamp_millis(),
                None => (naive + chrono::Duration::hours(1))
                    .and_local_timezone(self.tz)
                    .earliest()
                    .map(|t| t.timestamp_millis())
                    .unwrap_or_else(|| naive.and_utc().timestamp_millis()),
            }
        };
        let mut spans: Vec<(i64, i64)> = self.days[weekday]
            .iter()
            .map(|(s, e)| (at(*s), at(*e)))
            .filter(|(s, e)| s < e)
            .collect();
        spans.sort_unstable();
        // Overlapping windows count once.
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    fn local_date(&self, at_ms: i64) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(at_ms)
            .unwrap_or_default()
            .with_timezone(&self.tz)
            .date_naive()
    }

    /// Open (business) milliseconds in `[from, to)`.
    pub fn business_ms(&self, from: i64, to: i64) -> i64 {
        if to <= from {
            return 0;
        }
        let mut total = 0;
        // A day earlier: an interval of the previous local date cannot
        // reach into `from`'s date (windows end by 24:00), but DST shifts
        // are cheaper to cover than to reason about.
        let mut date = self
            .local_date(from)
            .checked_sub_days(Days::new(1))
            .unwrap_or(self.local_date(from));
        let last = self.local_date(to);
        while date <= last {
            for (s, e) in self.open_on(date) {
                let (s, e) = (s.max(from), e.min(to));
                if s < e {
                    total += e - s;
                }
            }
            match date.checked_add_days(Days::new(1)) {
                Some(d) => date = d,
                None => break,
            }
        }
        total
    }

    /// The earliest instant by which `ms` business milliseconds have passed
    /// after `from`; `None` when the calendar never opens within
    /// [`MAX_SEARCH_DAYS`] (an empty calendar, or holidays all the way).
    pub fn add_business(&self, from: i64, ms: i64) -> Option<i64> {
        if ms <= 0 {
            return Some(from);
        }
        let mut left = ms;
        let mut date = self.local_date(from).checked_sub_days(Days::new(1))?;
        for _ in 0..MAX_SEARCH_DAYS {
            for (s, e) in self.open_on(date) {
                let s = s.max(from);
                if s >= e {
                    continue;
                }
                if e - s >= left {
                    return Some(s + left);
                }
                left -= e - s;
            }
            date = date.checked_add_days(Days::new(1))?;
        }
        None
    }
}

/// How far [`Hours::add_business`] looks ahead. Why 3 years: longer than any
/// service target, and a calendar that never opens is detected in
/// microseconds rather than looping.
pub const MAX_SEARCH_DAYS: usize = 3 * 366;

/// Business time in `[from, to)` under an optional calendar (none: 24/7).
pub fn business_ms(hours: Option<&Hours>, from: i64, to: i64) -> i64 {
    match hours {
        Some(h) => h.business_ms(from, to),
        None => (to - from).max(0),
    }
}

/// When `ms` of business time after `from` have passed (none: 24/7).
pub fn add_business(hours: Option<&Hours>, from: i64, ms: i64) -> Option<i64> {
    match hours {
        Some(h) => h.add_business(from, ms),
        None => Some(from + ms.max(0)),
    }
}

/// A stop-watch of business time that can be paused, as SLA clocks use it:
/// `used_ms` counted before `since`, and running from `since` when that is
/// set. Plain data, so it is stored in two columns and tested with a fixed
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BusinessClock {
    pub used_ms: i64,
    /// Running since this instant; `None` while paused.
    pub since: Option<i64>,
}

impl BusinessClock {
    /// Business time used by `now`.
    pub fn elapsed(&self, hours: Option<&Hours>, now: i64) -> i64 {
        self.used_ms + self.since.map_or(0, |s| business_ms(hours, s, now))
    }

    /// Stops the clock at `now`; pausing a paused clock changes nothing.
    pub fn pause(&mut self, hours: Option<&Hours>, now: i64) {
        if self.since.is_some() {
            self.used_ms = self.elapsed(hours, now);
            self.since = None;
        }
    }

    /// Starts the clock again at `now`; resuming a running clock changes nothing.
    pub fn resume(&mut self, now: i64) {
        if self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// When the clock reaches `target_ms` of business time, if it is running.
    pub fn due_at(&self, hours: Option<&Hours>, target_ms: i64) -> Option<i64> {
        let since = self.since?;
        add_business(hours, since, target_ms - self.used_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shanghai_weekdays() -> Hours {
        Calendar {
            timezone: "Asia/Shanghai".into(),
            weekly: vec![Window {
                days: vec![1, 2, 3, 4, 5],
                start: "09:00".into(),
                end: "18:00".into(),
            }],
            holidays: vec!["2026-10-01".into()],
        }
        .compile()
        .unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn open_inside_local_hours_only() {
        let h = shanghai_weekdays();
        // Monday 2026-11-23 09:30 in Shanghai is 01:30 UTC.
        assert!(h.is_open(ms("2026-11-23T01:30:00Z")));
        // 08:59 local.
        assert!(!h.is_open(ms("2026-11-23T00:59:00Z")));
        // 18:00 local: the window is half-open.
        assert!(!h.is_open(ms("2026-11-23T10:00:00Z")));
        // Saturday 2026-11-28 10:00 local.
        assert!(!h.is_open(ms("2026-11-28T02:00:00Z")));
        // Holiday (Thursday 2026-10-01) 10:00 local.
        assert!(!h.is_open(ms("2026-10-01T02:00:00Z")));
    }

    #[test]
    fn bad_calendars_name_the_field() {
        let mut c = Calendar {
            timezone: "Mars/Olympus".into(),
            weekly: vec![],
            holidays: vec![],
        };
        let e = c.compile().unwrap_err().public_message();
        assert!(e.contains("timezone"), "{e}");
        c.timezone = "UTC".into();
        c.weekly = vec![Window {
            days: vec![8],
            start: "09:00".into(),
            end: "18:00".into(),
        }];
        assert!(c.compile().unwrap_err().public_message().contains("days"));
        c.weekly[0].days = vec![1];
        c.weekly[0].end = "08:00".into();
        assert!(c.compile().unwrap_err().public_message().contains("after"));
        c.weekly[0].end = "24:00".into();
        assert!(c.compile().is_ok());
        c.holidays = vec!["1 Oct".into()];
        assert!(c
            .compile()
            .unwrap_err()
            .public_message()
            .contains("holidays"));
    }

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    #[test]
    fn business_time_skips_the_weekend() {
        let h = shanghai_weekdays();
        // Friday 2026-11-27 17:00 local to Monday 2026-11-30 10:00 local:
        // one hour on Friday, one on Monday.
        let fri = ms("2026-11-27T09:00:00Z");
        let mon = ms("2026-11-30T02:00:00Z");
        assert_eq!(h.business_ms(fri, mon), 2 * HOUR);
        // Two hours from Friday 17:00 end on Monday 10:00.
        assert_eq!(h.add_business(fri, 2 * HOUR), Some(mon));
        // Exactly one hour ends at Friday's closing, not Monday's opening.
        assert_eq!(h.add_business(fri, HOUR), Some(ms("2026-11-27T10:00:00Z")));
        // Starting on Saturday counts from Monday 09:00.
        let sat = ms("2026-11-28T04:00:00Z");
        assert_eq!(
            h.add_business(sat, 30 * MIN),
            Some(ms("2026-11-30T01:30:00Z"))
        );
        assert_eq!(h.business_ms(sat, ms("2026-11-30T01:00:00Z")), 0);
        // A whole working week is 45 hours.
        assert_eq!(
            h.business_ms(ms("2026-11-22T16:00:00Z"), ms("2026-11-29T16:00:00Z")),
            45 * HOUR
        );
    }

    #[test]
    fn business_time_skips_a_holiday() {
        let h = shanghai_weekdays();
        // Wednesday 2026-09-30 17:30 local + 1 h: half an hour on Wednesday,
        // Thursday is a holiday, half an hour on Friday 2026-10-02.
        let wed = ms("2026-09-30T09:30:00Z");
        let due = h.add_business(wed, HOUR).unwrap();
        assert_eq!(due, ms("2026-10-02T01:30:00Z"));
        assert_eq!(h.business_ms(wed, due), HOUR);
        // Inside the holiday nothing counts.
        assert_eq!(
            h.business_ms(ms("2026-09-30T16:00:00Z"), ms("2026-10-01T16:00:00Z")),
            0
        );
    }

    #[test]
    fn a_calendar_that_never_opens_has_no_due_time() {
        let h = Calendar {
            timezone: "UTC".into(),
            weekly: vec![],
            holidays: vec![],
        }
        .compile()
        .unwrap();
        assert_eq!(h.add_business(0, 1), None);
        assert_eq!(h.add_business(0, 0), Some(0));
        // No calendar: around the clock.
        assert_eq!(add_business(None, 1000, 500), Some(1500));
        assert_eq!(business_ms(None, 1000, 500), 0);
    }

    #[test]
    fn clock_pauses_and_resumes_with_a_fixed_clock() {
        let h = shanghai_weekdays();
        // Starts Monday 2026-11-23 09:00 local with 30 min already used.
        let start = ms("2026-11-23T01:00:00Z");
        let mut c = BusinessClock {
            used_ms: 30 * MIN,
            since: Some(start),
        };
        // Target 4 h: due at 12:30 local.
        assert_eq!(
            c.due_at(Some(&h), 4 * HOUR),
            Some(ms("2026-11-23T04:30:00Z"))
        );
        // Paused at 10:00 local (1 h 30 min used); paused clocks have no due time.
        c.pause(Some(&h), start + HOUR);
        assert_eq!(c.used_ms, 90 * MIN);
        assert_eq!(c.due_at(Some(&h), 4 * HOUR), None);
        assert_eq!(c.elapsed(Some(&h), start + 5 * HOUR), 90 * MIN);
        c.pause(Some(&h), start + 6 * HOUR);
        assert_eq!(c.used_ms, 90 * MIN, "pausing twice changes nothing");
        // Resumed Friday 17:00 local: 1 h on Friday, 1 h 30 min on Monday
        // 2026-11-30, due 10:30 local after the weekend.
        c.resume(ms("2026-11-27T09:00:00Z"));
        c.resume(ms("2026-11-27T09:30:00Z"));
        assert_eq!(c.since, Some(ms("2026-11-27T09:00:00Z")));
        assert_eq!(
            c.due_at(Some(&h), 4 * HOUR),
            Some(ms("2026-11-30T02:30:00Z"))
        );
        assert_eq!(c.elapsed(Some(&h), ms("2026-11-30T02:30:00Z")), 4 * HOUR);
        // Without a calendar the same clock counts wall time.
        let mut plain = BusinessClock::default();
        plain.resume(1_000);
        plain.pause(None, 4_000);
        plain.resume(10_000);
        assert_eq!(plain.elapsed(None, 11_000), 4_000);
        assert_eq!(plain.due_at(None, 5_000), Some(12_000));
    }
}
