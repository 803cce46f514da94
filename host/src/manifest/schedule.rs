//! Schedules as app.toml writes them (`schedule = "every 10m"` or a
//! five-field cron line, UTC): what they are and when their ticks come.
//! Running them is the node's part (`triggers::schedule`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use super::AppManifest;

/// How late a due tick may be claimed and still run. Past it, the tick
/// passed while no node served its app, and is dropped rather than run
/// late: a daily job does not run at noon because the nodes were down at
/// three.
pub const LATE_LIMIT: Duration = Duration::from_secs(5);

/// The shortest `every` interval: a node looks for due ticks every 100 ms,
/// so shorter ones would be late as often as not.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// When a function runs on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// At every multiple of this interval since the Unix epoch, so that
    /// every node computes the same ticks (`every 10m` ticks at :00, :10...).
    Every(Duration),
    /// A five-field cron line (minute hour day-of-month month day-of-week),
    /// in UTC.
    Cron(String),
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
            Schedule::Cron(line) => f.write_str(line),
        }
    }
}

fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

impl Schedule {
    /// Parses `every DURATION` (humantime's syntax: `10m`, `1h 30m`, `2days`)
    /// or a five-field cron line. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let schedule = match text.trim().strip_prefix("every ") {
            Some(interval) => {
                let interval = humantime::parse_duration(interval.trim())
                    .map_err(|e| format!("`{}` is not a duration: {e}", interval.trim()))?;
                if interval < MIN_INTERVAL {
                    return Err(format!(
                        "`{text}` is more often than once a second, the most a schedule runs"
                    ));
                }
                Schedule::Every(interval)
            }
            None => {
                cron_parser().parse(text).map_err(|e| {
                    let why = e.to_string();
                    format!(
                        "`{text}` is not a five-field cron line ({})",
                        why.trim_end_matches('.')
                    )
                })?;
                Schedule::Cron(text.trim().to_owned())
            }
        };
        if schedule.next_after(unix_ms_now()).is_none() {
            return Err(format!("`{text}` has no tick to come"));
        }
        Ok(schedule)
    }

    /// The first tick strictly after `ms` (Unix milliseconds), if any.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        match self {
            Schedule::Every(interval) => {
                let step = i64::try_from(interval.as_millis()).ok()?.max(1);
                ms.div_euclid(step).checked_add(1)?.checked_mul(step)
            }
            Schedule::Cron(line) => {
                let cron: Cron = cron_parser().parse(line).ok()?;
                let after = DateTime::<Utc>::from_timestamp_millis(ms)?;
                let next = cron.find_next_occurrence(&after, false).ok()?;
                Some(next.timestamp_millis())
            }
        }
    }

    /// When the next run comes, as far as anyone can tell now: the stored
    /// `next_tick`, unless it is past being run (see [`LATE_LIMIT`]), in
    /// which case the tick after `now`.
    pub fn upcoming(&self, next_tick: i64, now: i64) -> Option<i64> {
        if now - next_tick > LATE_LIMIT.as_millis() as i64 {
            self.next_after(now)
        } else {
            Some(next_tick)
        }
    }
}

/// Now, in Unix milliseconds.
fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl AppManifest {
    /// (function, schedule as written, first tick after `now`) of each
    /// scheduled function, for the registry (see `Tx::set_schedules`).
    pub fn first_ticks(&self, now: i64) -> Vec<(String, String, i64)> {
        self.functions
            .iter()
            .filter_map(|(function, spec)| {
                let schedule = spec.schedule.as_ref()?;
                Some((
                    function.clone(),
                    schedule.to_string(),
                    schedule.next_after(now)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_tick_on_their_multiples() {
        let every = Schedule::parse("every 10m").unwrap();
        assert_eq!(every, Schedule::Every(Duration::from_secs(600)));
        assert_eq!(every.next_after(0), Some(600_000));
        assert_eq!(every.next_after(599_999), Some(600_000));
        assert_eq!(every.next_after(600_000), Some(1_200_000));
        assert_eq!(every.to_string(), "every 10m");
    }

    #[test]
    fn cron_lines_tick_in_utc() {
        let daily = Schedule::parse("0 3 * * *").unwrap();
        // 2026-01-01T00:00:00Z
        let new_year = 1_767_225_600_000;
        assert_eq!(daily.next_after(new_year), Some(new_year + 3 * 3_600_000));
        let minutely = Schedule::parse("* * * * *").unwrap();
        assert_eq!(minutely.next_after(new_year + 1), Some(new_year + 60_000));
    }

    #[test]
    fn bad_schedules_say_why() {
        for bad in [
            "every",
            "every 10",
            "every 500ms",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "hourly",
            "0 0 30 2 *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_tick_past_being_run_is_not_shown_as_next() {
        let every = Schedule::Every(Duration::from_secs(60));
        assert_eq!(every.upcoming(60_000, 61_000), Some(60_000));
        assert_eq!(every.upcoming(60_000, 600_001), Some(660_000));
    }
}
