//! Working-hours calendars: weekly windows in a named time zone, with
//! holidays. Teams use one to decide whether they serve now; SLA clocks will
//! count business time with the same type.
//!
//! JSON shape (stored in `teams.working_hours` and accepted by the REST API):
//! `{"timezone":"Asia/Shanghai","weekly":[{"days":[1,2,3,4,5],"start":"09:00",
//! "end":"18:00"}],"holidays":["2026-10-01"]}` — days 1 = Monday … 7 = Sunday,
//! times are local wall-clock `HH:MM` with `end` after `start` (`24:00` allowed),
//! holidays are local dates on which no window opens.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
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
}
