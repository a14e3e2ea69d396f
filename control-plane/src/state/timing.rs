//! When a schedule fires: its timing (a cron expression in a time zone, or a fixed
//! period from an anchor), bounded by an optional start, end and number of runs.
//!
//! Everything here is a pure function of the timing and the times passed in (Unix
//! milliseconds), so `apply` can compute the next tick on every replica and get the same
//! answer. Cron expressions are evaluated by `croner` in an IANA zone from `chrono-tz`'s
//! compiled-in database: replicas running the same build agree; a build with newer zone
//! rules can disagree about ticks near a rule change, which is why the next tick is
//! stored in the schedule once computed, not recomputed from history.
//!
//! Cron follows Vixie cron across daylight-saving changes (croner's behaviour): a time
//! that does not exist (02:30 on a spring-forward day in New York) fires at the first
//! time after the gap (03:00); a time that occurs twice (01:30 on a fall-back day) fires
//! once, at its first occurrence.
//!
//! Ticks of a `run_every` schedule are `anchor + k * every` (k ≥ 0): the anchor is
//! `start_at`, or the creation time when there is none, so the first run is at
//! `start_at` (or at once). A cron schedule's ticks are the expression's matches at or
//! after `start_at` (or after creation). No tick is later than `end_at`.

use std::str::FromStr;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use super::error::StateError;

/// Shortest period of a `run_every` schedule.
pub const MIN_EVERY_MS: u64 = 1_000;
/// Longest period of a `run_every` schedule (a year).
pub const MAX_EVERY_MS: u64 = 366 * 24 * 3600 * 1000;
pub const MAX_CRON_BYTES: usize = 256;
pub const MAX_TZ_BYTES: usize = 64;
pub const MAX_RUN_TIMES: u32 = 1_000_000;
/// Times are accepted up to this (the year 9999), so sums of them never overflow.
pub const MAX_TIME_MS: u64 = 253_402_300_799_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Timing {
    /// A 5-field (minute first) or 6-field (second first) cron expression, or a
    /// nickname such as `@hourly`, evaluated in the IANA zone `tz`.
    Cron { expr: String, tz: String },
    /// A fixed period.
    Every { every_ms: u64 },
}

/// A timing and its bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScheduleTiming {
    pub timing: Timing,
    /// No tick before this (0: from creation).
    pub start_at_ms: u64,
    /// No tick after this (0: none).
    pub end_at_ms: u64,
    /// Stop after this many runs (0: no limit).
    pub run_times: u32,
}

/// A timing checked and ready to compute ticks.
pub enum Clock {
    Cron { cron: Box<Cron>, tz: Tz },
    Every { every_ms: u64, anchor_ms: u64 },
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build()
}

impl ScheduleTiming {
    /// Checks the timing; `Err` names the field and the limit.
    pub fn validate(&self) -> Result<(), StateError> {
        match &self.timing {
            Timing::Cron { expr, tz } => {
                if expr.len() > MAX_CRON_BYTES {
                    return Err(StateError::invalid(
                        "cron",
                        format!("{} bytes is over the limit of {MAX_CRON_BYTES}", expr.len()),
                    ));
                }
                let fields = expr.split_whitespace().count();
                if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
                    return Err(StateError::invalid(
                        "cron",
                        format!("{fields} fields; a cron expression has 5 (minute first) or 6 (second first)"),
                    ));
                }
                parser().parse(expr).map_err(|e| StateError::invalid("cron", format!("{expr:?}: {e}")))?;
                parse_tz(tz)?;
            }
            Timing::Every { every_ms } => {
                if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(every_ms) {
                    return Err(StateError::invalid(
                        "run_every",
                        format!("{every_ms} ms is outside {MIN_EVERY_MS}..={MAX_EVERY_MS} ms"),
                    ));
                }
            }
        }
        for (field, v) in [("start_at", self.start_at_ms), ("end_at", self.end_at_ms)] {
            if v > MAX_TIME_MS {
                return Err(StateError::invalid(field, format!("{v} ms is after the year 9999")));
            }
        }
        if self.end_at_ms != 0 && self.end_at_ms < self.start_at_ms {
            return Err(StateError::invalid("end_at", "is before start_at"));
        }
        if self.run_times > MAX_RUN_TIMES {
            return Err(StateError::invalid(
                "run_times",
                format!("{} is over the limit of {MAX_RUN_TIMES}", self.run_times),
            ));
        }
        Ok(())
    }

    /// The clock of a schedule created at `created_ms`. Fails only for a timing that
    /// [`Self::validate`] refuses.
    pub fn clock(&self, created_ms: u64) -> Result<Clock, StateError> {
        Ok(match &self.timing {
            Timing::Cron { expr, tz } => Clock::Cron {
                cron: Box::new(parser().parse(expr).map_err(|e| StateError::invalid("cron", e.to_string()))?),
                tz: parse_tz(tz)?,
            },
            Timing::Every { every_ms } => Clock::Every {
                every_ms: *every_ms,
                anchor_ms: if self.start_at_ms == 0 { created_ms } else { self.start_at_ms },
            },
        })
    }

    /// The first tick at or after `from_ms` that the bounds allow (`fired`: runs so far).
    pub fn next_from(&self, clock: &Clock, from_ms: u64, fired: u64) -> Option<u64> {
        if self.run_times != 0 && fired >= u64::from(self.run_times) {
            return None;
        }
        let t = clock.first_at_or_after(from_ms.max(self.start_at_ms))?;
        (self.end_at_ms == 0 || t <= self.end_at_ms).then_some(t)
    }
}

pub fn parse_tz(tz: &str) -> Result<Tz, StateError> {
    if tz.len() > MAX_TZ_BYTES {
        return Err(StateError::invalid("timezone", format!("{} bytes is over the limit of {MAX_TZ_BYTES}", tz.len())));
    }
    Tz::from_str(tz).map_err(|_| StateError::invalid("timezone", format!("{tz:?} is not an IANA time zone name")))
}

impl Clock {
    /// The first tick at or after `ms`, if any is representable.
    pub fn first_at_or_after(&self, ms: u64) -> Option<u64> {
        match self {
            Clock::Every { every_ms, anchor_ms } => {
                if ms <= *anchor_ms {
                    return Some(*anchor_ms);
                }
                let k = (ms - anchor_ms).div_ceil(*every_ms);
                k.checked_mul(*every_ms).and_then(|d| d.checked_add(*anchor_ms)).filter(|t| *t <= MAX_TIME_MS)
            }
            Clock::Cron { cron, tz } => {
                // Ticks fall on whole seconds: the first at or after `ms` is the first
                // strictly after the whole second before it.
                let secs = i64::try_from(ms.div_ceil(1000)).ok()?;
                let start = tz.timestamp_opt(secs, 0).single()?;
                let t: DateTime<Tz> = cron.find_next_occurrence(&start, true).ok()?;
                u64::try_from(t.timestamp_millis()).ok().filter(|t| *t <= MAX_TIME_MS)
            }
        }
    }

    /// The first tick strictly after `ms`.
    pub fn first_after(&self, ms: u64) -> Option<u64> {
        self.first_at_or_after(ms.checked_add(1)?)
    }

    /// The last tick at or before `ms`, not before `from` (itself a tick), with how many
    /// ticks lie in `from..that one` (those that would be skipped). Counting stops at
    /// `max_steps` (the count saturates there, the answer does not change).
    pub fn latest_due(&self, from: u64, ms: u64, max_steps: u64) -> (u64, u64) {
        match self {
            Clock::Every { every_ms, .. } => {
                let k = ms.saturating_sub(from) / every_ms;
                (from + k * every_ms, k)
            }
            Clock::Cron { .. } => {
                let mut at = from;
                let mut skipped = 0;
                while let Some(next) = self.first_after(at).filter(|n| *n <= ms) {
                    at = next;
                    skipped += 1;
                    if skipped >= max_steps {
                        // Jump to the last tick without counting the rest.
                        if let Some(last) = self.last_at_or_before(ms).filter(|l| *l >= at) {
                            at = last;
                        }
                        break;
                    }
                }
                (at, skipped)
            }
        }
    }

    fn last_at_or_before(&self, ms: u64) -> Option<u64> {
        match self {
            Clock::Every { every_ms, anchor_ms } => {
                (ms >= *anchor_ms).then(|| anchor_ms + (ms - anchor_ms) / every_ms * every_ms)
            }
            Clock::Cron { cron, tz } => {
                let start = tz.timestamp_opt(i64::try_from(ms / 1000).ok()?, 0).single()?;
                let t: DateTime<Tz> = cron.find_previous_occurrence(&start, true).ok()?;
                u64::try_from(t.timestamp_millis()).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str, tz: &str) -> ScheduleTiming {
        ScheduleTiming {
            timing: Timing::Cron { expr: expr.into(), tz: tz.into() },
            start_at_ms: 0,
            end_at_ms: 0,
            run_times: 0,
        }
    }

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis() as u64
    }

    fn show(ms: u64, tz: &str) -> String {
        let tz = parse_tz(tz).expect("tz");
        tz.timestamp_millis_opt(ms as i64).single().expect("time").to_rfc3339()
    }

    fn ticks(t: &ScheduleTiming, created: u64, n: usize) -> Vec<u64> {
        let clock = t.clock(created).expect("clock");
        let mut out = Vec::new();
        let mut from = created;
        while out.len() < n {
            let Some(tick) = t.next_from(&clock, from, out.len() as u64) else { break };
            out.push(tick);
            from = tick + 1;
        }
        out
    }

    #[test]
    fn spring_forward_fires_after_the_gap() {
        // 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT; 02:30 never happens.
        let t = cron("30 2 * * *", "America/New_York");
        let got = ticks(&t, ms("2026-03-07T00:00:00-05:00"), 3);
        let shown: Vec<String> = got.iter().map(|t| show(*t, "America/New_York")).collect();
        assert_eq!(
            shown,
            ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
            "the missing 02:30 fires once, at 03:00 EDT"
        );
    }

    #[test]
    fn fall_back_fires_the_repeated_hour_once() {
        // 2026-11-01 in New York: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let t = cron("30 1 * * *", "America/New_York");
        let got = ticks(&t, ms("2026-10-31T12:00:00-04:00"), 3);
        let shown: Vec<String> = got.iter().map(|t| show(*t, "America/New_York")).collect();
        assert_eq!(
            shown,
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00", "2026-11-03T01:30:00-05:00"],
            "01:30 fires once on the fall-back day, at its first occurrence"
        );
        // An hourly schedule across the same change: every real hour once, none twice.
        let hourly = cron("0 * * * *", "America/New_York");
        let got = ticks(&hourly, ms("2026-11-01T00:30:00-04:00"), 4);
        let gaps: Vec<u64> = got.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g == 3_600_000 || *g == 7_200_000), "{gaps:?}");
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len());
    }

    #[test]
    fn cron_with_seconds_and_utc() {
        let t = cron("*/15 * * * * *", "UTC");
        let got = ticks(&t, ms("2026-01-01T00:00:01Z"), 3);
        assert_eq!(got, [ms("2026-01-01T00:00:15Z"), ms("2026-01-01T00:00:30Z"), ms("2026-01-01T00:00:45Z")]);
        // A tick exactly at creation counts.
        let got = ticks(&t, ms("2026-01-01T00:00:15Z"), 1);
        assert_eq!(got, [ms("2026-01-01T00:00:15Z")]);
    }

    #[test]
    fn run_every_from_creation_or_start_at() {
        let every = |start_at_ms, end_at_ms, run_times| ScheduleTiming {
            timing: Timing::Every { every_ms: 1_000 },
            start_at_ms,
            end_at_ms,
            run_times,
        };
        assert_eq!(ticks(&every(0, 0, 0), 10_500, 3), [10_500, 11_500, 12_500], "first run at creation");
        assert_eq!(ticks(&every(20_000, 0, 0), 10_500, 2), [20_000, 21_000], "first run at start_at");
        assert_eq!(ticks(&every(0, 0, 3), 0, 10), [0, 1_000, 2_000], "run_times 3 fires three times");
        assert_eq!(ticks(&every(0, 2_500, 0), 0, 10), [0, 1_000, 2_000], "no tick after end_at");
    }

    #[test]
    fn latest_due_counts_what_it_skips() {
        let t =
            ScheduleTiming { timing: Timing::Every { every_ms: 1_000 }, start_at_ms: 0, end_at_ms: 0, run_times: 0 };
        let c = t.clock(5_000).expect("clock");
        assert_eq!(c.latest_due(5_000, 5_000, 100), (5_000, 0));
        assert_eq!(c.latest_due(5_000, 8_700, 100), (8_000, 3));
        let c = cron("* * * * * *", "UTC").clock(0).expect("clock");
        let from = ms("2026-01-01T00:00:00Z");
        assert_eq!(c.latest_due(from, from + 10_400, 1_000), (from + 10_000, 10));
        assert_eq!(c.latest_due(from, from + 10_400, 4).0, from + 10_000, "the answer does not depend on the cap");
    }

    #[test]
    fn bad_timings_name_the_field() {
        let err = |t: ScheduleTiming| t.validate().expect_err("invalid").to_string();
        assert!(err(cron("* * * *", "UTC")).contains("invalid cron: 4 fields"));
        assert!(err(cron("0 0 * * * * 2030", "UTC")).contains("invalid cron: 7 fields"));
        assert!(err(cron("61 * * * *", "UTC")).contains("invalid cron"));
        assert!(err(cron("0 * * * *", "Mars/Olympus")).contains("invalid timezone"));
        let every = |every_ms| ScheduleTiming {
            timing: Timing::Every { every_ms },
            start_at_ms: 0,
            end_at_ms: 0,
            run_times: 0,
        };
        assert!(err(every(999)).contains("invalid run_every"));
        let mut t = every(1_000);
        t.start_at_ms = 10;
        t.end_at_ms = 5;
        assert!(err(t).contains("invalid end_at"));
        assert!(cron("@hourly", "Europe/Berlin").validate().is_ok());
        assert!(cron("0 9 * * MON-FRI", "Asia/Tokyo").validate().is_ok());
    }
}
