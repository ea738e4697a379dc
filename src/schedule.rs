//! Backup schedules: 5-field cron expressions, `@daily`-style macros and
//! `@every DURATION`, evaluated against the wall clock of a time zone.
//!
//! The scheduler asks for the next run from the current wall clock every time
//! instead of sleeping fixed intervals, so a slow backup, a suspended pod or a
//! clock step never makes runs drift. tokio-cron-scheduler was rejected: it
//! needs a seconds field (not what vCluster users write) and runs an hour off
//! after a DST change.
//!
//! DST rule, one for every cron schedule: each wall-clock time the expression
//! matches gives exactly one run.
//! - A matching time inside a spring-forward gap (02:30 on a day that jumps
//!   from 02:00 to 03:00) runs once, at the first instant after the gap
//!   (03:00), as Vixie cron and croner do for fixed-time jobs.
//! - A matching time inside a repeated autumn hour runs once, at its first
//!   occurrence. This also holds for hourly and sub-hourly expressions, which
//!   therefore pause during the repeated hour; use `@every` when runs must be
//!   evenly spaced in real time.
//!
//! `@every D` runs at multiples of D since the Unix epoch, so a restart keeps
//! the same run times and the time zone does not matter.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use rand::Rng;

const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];

const FIELD_LIST: &str = "minute hour day-of-month month day-of-week";

const MACROS: &str =
    "@hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually or @every DURATION";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid schedule {input:?}: {reason}")]
    InvalidSchedule { input: String, reason: String },
    #[error("unknown time zone {input:?}: expected an IANA name such as Europe/Berlin or UTC")]
    UnknownTimeZone { input: String },
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration { input: String, reason: String },
    #[error("invalid duration {input:?}: too long (at most {})", limit.text)]
    DurationTooLong { input: String, limit: Limit },
}

/// The longest duration an option takes, and how the error spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: Duration,
    pub text: &'static str,
}

/// Waits, intervals and timeouts (`@every`, `--incremental-interval`,
/// `--jitter`, `--shutdown-timeout`, `--wait-for-certs`, `--refresh`): a year
/// and a day. Added to the clock (chrono's DateTime, tokio's Instant), so it
/// must stay far from where those overflow; no real setting comes near it.
pub const MAX_WAIT: Limit = Limit {
    max: Duration::from_secs(366 * 86_400),
    text: "366d",
};

/// Ages subtracted from the clock (`--abort-uploads-after`, `--max-age`,
/// `--max-verify-age`, `--max-unchanged-age`): a hundred years (humantime's
/// year is 365.25 days), so `now - age` stays inside chrono's range.
pub const MAX_AGE: Limit = Limit {
    max: Duration::from_secs(100 * 31_557_600),
    text: "100y",
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Cron { text: String, cron: Box<Cron> },
    Every { text: String, period: Duration },
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = text.trim();
        let invalid = |reason: String| ScheduleError::InvalidSchedule {
            input: text.to_owned(),
            reason,
        };
        if trimmed.is_empty() {
            return Err(invalid(format!(
                "empty; expected 5 fields ({FIELD_LIST}) or one of {MACROS}"
            )));
        }
        if trimmed.starts_with('@') {
            return parse_macro(trimmed).map_err(invalid);
        }
        let cron = parse_cron(trimmed).map_err(invalid)?;
        Ok(Schedule::Cron {
            text: trimmed.to_owned(),
            cron: Box::new(cron),
        })
    }

    /// Wall-clock time in `tz` decides cron matches; see the module docs for DST.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, .. } => next_cron(cron, after, tz),
            Schedule::Every { period, .. } => next_every(*period, after),
        }
    }

    /// Gap between the next run after `at` and the run after that.
    pub fn interval_at(&self, at: DateTime<Utc>, tz: Tz) -> Option<TimeDelta> {
        let first = self.next_after(at, tz)?;
        let second = self.next_after(first, tz)?;
        Some(second - first)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { text, .. } | Schedule::Every { text, .. } => f.write_str(text),
        }
    }
}

fn parse_macro(text: &str) -> Result<Schedule, String> {
    let (name, arg) = match text.split_once(char::is_whitespace) {
        Some((name, arg)) => (name, arg.trim()),
        None => (text, ""),
    };
    let name = name.to_ascii_lowercase();
    if name == "@every" {
        if arg.is_empty() {
            return Err("@every needs a duration such as 15m or 1h30m".to_owned());
        }
        let period = humantime::parse_duration(arg)
            .map_err(|e| format!("bad @every duration {arg:?}: {e}"))?;
        if period.is_zero() {
            return Err("the @every duration must be greater than zero".to_owned());
        }
        if period > MAX_WAIT.max {
            return Err(format!(
                "the @every duration must be at most {}",
                MAX_WAIT.text
            ));
        }
        return Ok(Schedule::Every {
            text: text.to_owned(),
            period,
        });
    }
    let pattern = match name.as_str() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        _ => return Err(format!("unknown macro {name:?}; expected {MACROS}")),
    };
    if !arg.is_empty() {
        return Err(format!("{name} takes no argument, found {arg:?}"));
    }
    let cron = parse_cron(pattern)?;
    Ok(Schedule::Cron {
        text: text.to_owned(),
        cron: Box::new(cron),
    })
}

fn cron_parser() -> CronParser {
    // Explicit settings rather than croner's defaults, which accept 6 and 7
    // fields (seconds, year) and "/10" style steps.
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .alternative_weekdays(false)
        .sloppy_ranges(false)
        .build()
}

fn parse_cron(text: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.len() {
        5 => {}
        n @ (6 | 7) => {
            return Err(format!(
                "expected 5 fields ({FIELD_LIST}), found {n}; seconds and year fields are not supported"
            ));
        }
        n => return Err(format!("expected 5 fields ({FIELD_LIST}), found {n}")),
    }
    let parser = cron_parser();
    let cron = parser.parse(text).map_err(|err| {
        // croner's messages do not say which field is wrong; find it by
        // parsing each field on its own.
        for (i, &(name, allowed)) in FIELDS.iter().enumerate() {
            let mut alone = ["*"; 5];
            alone[i] = fields[i];
            if let Err(field_err) = parser.parse(&alone.join(" ")) {
                return format!(
                    "bad {name} field {:?} (allowed {allowed}): {}",
                    fields[i],
                    describe(&field_err)
                );
            }
        }
        describe(&err)
    })?;
    // Rejecting at parse time beats a scheduler that silently never runs.
    let probe = DateTime::UNIX_EPOCH.naive_utc();
    if cron.find_next_occurrence(&probe, false).is_err() {
        return Err("never matches a real date".to_owned());
    }
    Ok(cron)
}

fn describe(err: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let detail = match err {
        // croner's text here shows the upper-cased pattern, not the input.
        E::IllegalCharacters(_) => "unexpected characters".to_owned(),
        E::InvalidPattern(m) | E::ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let detail = detail.trim_end_matches('.');
    let mut chars = detail.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unparsable".to_owned(),
    }
}

/// Upper bound on matching wall-clock times skipped because they map to
/// instants not after `after`; only a repeated hour produces those, at most
/// one per minute of it.
const MAX_SKIPPED: usize = 48 * 60;

fn next_cron(cron: &Cron, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    // The map from wall time to run instant never decreases and sends the
    // wall time of `after` to an instant <= `after`, so the first match after
    // that wall time whose instant is past `after` is the answer.
    let mut cursor = after.with_timezone(&tz).naive_local().with_nanosecond(0)?;
    for _ in 0..MAX_SKIPPED {
        let wall = cron.find_next_occurrence(&cursor, false).ok()?;
        let instant = run_instant(wall, tz)?;
        if instant > after {
            return Some(instant);
        }
        cursor = wall;
    }
    None
}

fn run_instant(wall: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.to_utc()),
        LocalResult::Ambiguous(earlier, _) => Some(earlier.to_utc()),
        LocalResult::None => first_instant_after_gap(wall, tz),
    }
}

fn exists(wall: NaiveDateTime, tz: Tz) -> bool {
    !matches!(tz.from_local_datetime(&wall), LocalResult::None)
}

fn first_instant_after_gap(in_gap: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    // Find a wall time past the gap (real gaps are at most a day), then
    // bisect to the first second that exists: the instant the clock jumped.
    let mut missing = in_gap;
    let mut present = None;
    for _ in 0..(26 * 60) {
        let probe = missing.checked_add_signed(TimeDelta::minutes(1))?;
        if exists(probe, tz) {
            present = Some(probe);
            break;
        }
        missing = probe;
    }
    let mut present = present?;
    while present - missing > TimeDelta::seconds(1) {
        let mid = missing + (present - missing) / 2;
        let mid = mid.with_nanosecond(0)?;
        if mid <= missing {
            break;
        }
        if exists(mid, tz) {
            present = mid;
        } else {
            missing = mid;
        }
    }
    match tz.from_local_datetime(&present) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.to_utc()),
        LocalResult::None => None,
    }
}

fn next_every(period: Duration, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let period = i128::try_from(period.as_nanos()).ok()?;
    let after_nanos =
        i128::from(after.timestamp()) * 1_000_000_000 + i128::from(after.timestamp_subsec_nanos());
    let next = (after_nanos.div_euclid(period) + 1).checked_mul(period)?;
    let secs = i64::try_from(next.div_euclid(1_000_000_000)).ok()?;
    let nanos = u32::try_from(next.rem_euclid(1_000_000_000)).ok()?;
    DateTime::from_timestamp(secs, nanos)
}

pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimeZone {
            input: name.to_owned(),
        })
}

fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    humantime::parse_duration(text.trim()).map_err(|e| ScheduleError::InvalidDuration {
        input: text.to_owned(),
        reason: e.to_string(),
    })
}

/// A humantime duration (`90s`, `1h30m`) no longer than `limit`.
pub fn parse_bounded(text: &str, limit: Limit) -> Result<Duration, ScheduleError> {
    let duration = parse_duration(text)?;
    if duration > limit.max {
        return Err(ScheduleError::DurationTooLong {
            input: text.to_owned(),
            limit,
        });
    }
    Ok(duration)
}

/// A wait, interval or timeout: at most [`MAX_WAIT`].
pub fn parse_wait(text: &str) -> Result<Duration, ScheduleError> {
    parse_bounded(text, MAX_WAIT)
}

/// Uniformly random in `[0, bound]`, so replicas sharing a schedule do not all
/// hit the store at the same second.
pub fn jitter(bound: Duration) -> Duration {
    if bound.is_zero() {
        return Duration::ZERO;
    }
    rand::rng().random_range(Duration::ZERO..=bound)
}

/// `age` before `now`; the earliest time should that reach further back (an
/// age the command line would refuse), before which nothing happened.
pub fn ago(now: DateTime<Utc>, age: TimeDelta) -> DateTime<Utc> {
    now.checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// An age to subtract from the wall clock (`--abort-uploads-after`), shown as
/// the operator wrote it.
#[derive(Debug, Clone)]
pub struct Age {
    pub delta: TimeDelta,
    text: String,
}

impl Age {
    pub fn new(delta: TimeDelta, text: &str) -> Age {
        Age {
            delta,
            text: text.trim().to_string(),
        }
    }
}

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `slot` delayed by a [`jitter`] up to `bound`; `slot` itself should the
/// delay reach past the end of time (a bound the command line would refuse).
pub fn jittered(slot: DateTime<Utc>, bound: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(jitter(bound))
        .ok()
        .and_then(|delay| slot.checked_add_signed(delay))
        .unwrap_or(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;
    use chrono_tz::UTC;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test timestamp {s}: {e}"))
            .to_utc()
    }

    fn sched(text: &str) -> Schedule {
        Schedule::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first `n` runs strictly after `from`.
    fn runs(text: &str, from: &str, tz: Tz, n: usize) -> Vec<String> {
        let s = sched(text);
        let mut at = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            at = s
                .next_after(at, tz)
                .unwrap_or_else(|| panic!("{text}: no run after {at}"));
            out.push(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        }
        out
    }

    #[test]
    fn next_runs_table() {
        let cases: &[(&str, &str, Tz, &[&str])] = &[
            (
                "0 */12 * * *",
                "2026-01-01T05:00:00Z",
                UTC,
                &[
                    "2026-01-01T12:00:00Z",
                    "2026-01-02T00:00:00Z",
                    "2026-01-02T12:00:00Z",
                ],
            ),
            // Strictly after: a run exactly at `after` is not returned again.
            (
                "0 */12 * * *",
                "2026-01-01T12:00:00Z",
                UTC,
                &["2026-01-02T00:00:00Z"],
            ),
            // 2026-11-20 is a Friday: the last weekday run, then Monday.
            (
                "20 7-17/2 * * 1-5",
                "2026-11-20T16:00:00Z",
                UTC,
                &[
                    "2026-11-20T17:20:00Z",
                    "2026-11-23T07:20:00Z",
                    "2026-11-23T09:20:00Z",
                ],
            ),
            // Both day fields restricted: the 13th (a Monday) OR any Friday.
            (
                "0 0 13 * 5",
                "2026-04-09T00:00:00Z",
                UTC,
                &[
                    "2026-04-10T00:00:00Z",
                    "2026-04-13T00:00:00Z",
                    "2026-04-17T00:00:00Z",
                    "2026-04-24T00:00:00Z",
                    "2026-05-01T00:00:00Z",
                ],
            ),
            // Only one day field restricted: that field alone decides.
            (
                "0 0 13 * *",
                "2026-04-09T00:00:00Z",
                UTC,
                &["2026-04-13T00:00:00Z", "2026-05-13T00:00:00Z"],
            ),
            (
                "0 0 * * FRI",
                "2026-04-11T00:00:00Z",
                UTC,
                &["2026-04-17T00:00:00Z", "2026-04-24T00:00:00Z"],
            ),
            (
                "@hourly",
                "2026-06-10T10:15:00Z",
                UTC,
                &["2026-06-10T11:00:00Z", "2026-06-10T12:00:00Z"],
            ),
            (
                "@daily",
                "2026-06-10T10:15:00Z",
                UTC,
                &["2026-06-11T00:00:00Z", "2026-06-12T00:00:00Z"],
            ),
            (
                "@midnight",
                "2026-06-10T10:15:00Z",
                UTC,
                &["2026-06-11T00:00:00Z"],
            ),
            // 2026-06-10 is a Wednesday.
            (
                "@weekly",
                "2026-06-10T10:15:00Z",
                UTC,
                &["2026-06-14T00:00:00Z", "2026-06-21T00:00:00Z"],
            ),
            (
                "@monthly",
                "2026-06-10T10:15:00Z",
                UTC,
                &["2026-07-01T00:00:00Z", "2026-08-01T00:00:00Z"],
            ),
            (
                "@yearly",
                "2026-06-10T10:15:00Z",
                UTC,
                &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"],
            ),
            // Midnight in Berlin (CEST, UTC+2) is 22:00Z the day before.
            (
                "@daily",
                "2026-06-10T10:15:00Z",
                Berlin,
                &["2026-06-10T22:00:00Z", "2026-06-11T22:00:00Z"],
            ),
            (
                "@every 15m",
                "2026-06-10T10:07:30Z",
                UTC,
                &["2026-06-10T10:15:00Z", "2026-06-10T10:30:00Z"],
            ),
            // Aligned to the epoch, not to the local clock.
            (
                "@every 15m",
                "2026-06-10T10:07:30Z",
                Berlin,
                &["2026-06-10T10:15:00Z"],
            ),
            (
                "@every 2s",
                "2026-06-10T10:00:00.500Z",
                UTC,
                &["2026-06-10T10:00:02Z", "2026-06-10T10:00:04Z"],
            ),
            // 2026-01-01T00:00Z is 327264 * 5400 s after the epoch.
            (
                "@every 1h30m",
                "2026-01-01T00:10:00Z",
                UTC,
                &["2026-01-01T01:30:00Z", "2026-01-01T03:00:00Z"],
            ),
            // 7h does not divide a day: alignment is to the epoch, so the run
            // times move from day to day. 2026-01-02T00:00Z = 70131 * 7h + 3h.
            (
                "@every 7h",
                "2026-01-02T00:00:00Z",
                UTC,
                &["2026-01-02T04:00:00Z", "2026-01-02T11:00:00Z"],
            ),
            // 09:00 Berlin: CET (UTC+1) in winter, CEST (UTC+2) in summer.
            (
                "0 9 * * *",
                "2026-01-15T00:00:00Z",
                Berlin,
                &["2026-01-15T08:00:00Z"],
            ),
            (
                "0 9 * * *",
                "2026-07-15T00:00:00Z",
                Berlin,
                &["2026-07-15T07:00:00Z"],
            ),
            // Berlin spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z):
            // 02:30 does not exist and runs once, at 03:00 CEST.
            (
                "30 2 * * *",
                "2026-03-28T00:00:00Z",
                Berlin,
                &[
                    "2026-03-28T01:30:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-30T00:30:00Z",
                ],
            ),
            // Berlin fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z):
            // 02:30 happens twice and runs once, at its first occurrence.
            (
                "30 2 * * *",
                "2026-10-24T00:00:00Z",
                Berlin,
                &[
                    "2026-10-24T00:30:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-26T01:30:00Z",
                ],
            ),
            // New York spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
            (
                "30 2 * * *",
                "2026-03-07T00:00:00Z",
                New_York,
                &[
                    "2026-03-07T07:30:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-09T06:30:00Z",
                ],
            ),
            // New York fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
            (
                "30 1 * * *",
                "2026-10-31T00:00:00Z",
                New_York,
                &[
                    "2026-10-31T05:30:00Z",
                    "2026-11-01T05:30:00Z",
                    "2026-11-02T06:30:00Z",
                ],
            ),
            // croner alone would run these twice (fold) or not at all (gap)
            // because more than one hour is listed; one run each here.
            (
                "30 1,13 * * *",
                "2026-11-01T04:00:00Z",
                New_York,
                &["2026-11-01T05:30:00Z", "2026-11-01T18:30:00Z"],
            ),
            (
                "30 2,14 * * *",
                "2026-03-08T05:00:00Z",
                New_York,
                &["2026-03-08T07:00:00Z", "2026-03-08T18:30:00Z"],
            ),
            // Hourly in the repeated hour: 01:00 runs once (EDT), the EST
            // repetition is skipped, then 02:00 EST.
            (
                "0 * * * *",
                "2026-11-01T04:30:00Z",
                New_York,
                &[
                    "2026-11-01T05:00:00Z",
                    "2026-11-01T07:00:00Z",
                    "2026-11-01T08:00:00Z",
                ],
            ),
            // Hourly across the gap: 02:00 does not exist; 03:00 EDT runs once.
            (
                "0 * * * *",
                "2026-03-08T05:30:00Z",
                New_York,
                &[
                    "2026-03-08T06:00:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-08T08:00:00Z",
                ],
            ),
        ];
        for (text, from, tz, want) in cases {
            let got = runs(text, from, *tz, want.len());
            assert_eq!(got, *want, "{text:?} in {tz} after {from}");
        }
    }

    #[test]
    fn after_inside_repeated_hour() {
        // 05:45Z is 01:45 EDT, before the repetition of 01:30 (06:30Z); the
        // daily run already happened at 05:30Z and must not repeat.
        let s = sched("30 1 * * *");
        let got = s.next_after(utc("2026-11-01T05:45:00Z"), New_York);
        assert_eq!(got, Some(utc("2026-11-02T06:30:00Z")));
        // 06:15Z is 01:15 EST: the wall clock reads before 01:30 again, but
        // today's run is over.
        let got = s.next_after(utc("2026-11-01T06:15:00Z"), New_York);
        assert_eq!(got, Some(utc("2026-11-02T06:30:00Z")));
    }

    fn runs_on_local_date(text: &str, tz: Tz, date: &str) -> usize {
        let s = sched(text);
        let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .unwrap_or_else(|e| panic!("bad test date {date}: {e}"));
        // Start well before the day in any zone.
        let mut at = day.and_time(chrono::NaiveTime::MIN).and_utc() - TimeDelta::days(2);
        let mut count = 0;
        while let Some(next) = s.next_after(at, tz) {
            let local = next.with_timezone(&tz).date_naive();
            if local > day {
                break;
            }
            if local == day {
                count += 1;
            }
            at = next;
        }
        count
    }

    #[test]
    fn dst_days_run_once() {
        assert_eq!(runs_on_local_date("30 2 * * *", New_York, "2026-03-08"), 1);
        assert_eq!(runs_on_local_date("30 1 * * *", New_York, "2026-11-01"), 1);
        assert_eq!(runs_on_local_date("30 2 * * *", Berlin, "2026-03-29"), 1);
        assert_eq!(runs_on_local_date("30 2 * * *", Berlin, "2026-10-25"), 1);
        // A 25-hour day with an hourly schedule: 24 distinct wall times.
        assert_eq!(runs_on_local_date("0 * * * *", New_York, "2026-11-01"), 24);
        // A 23-hour day: 02:00 collapses into 03:00.
        assert_eq!(runs_on_local_date("0 * * * *", New_York, "2026-03-08"), 23);
    }

    #[test]
    fn interval_at_table() {
        let cases: &[(&str, &str, Tz, TimeDelta)] = &[
            (
                "0 */12 * * *",
                "2026-01-01T05:00:00Z",
                UTC,
                TimeDelta::hours(12),
            ),
            (
                "@every 15m",
                "2026-06-10T10:07:30Z",
                UTC,
                TimeDelta::minutes(15),
            ),
            (
                "@daily",
                "2026-06-10T10:00:00Z",
                Berlin,
                TimeDelta::hours(24),
            ),
            // Friday 17:20 to Monday 07:20.
            (
                "20 7-17/2 * * 1-5",
                "2026-11-20T16:00:00Z",
                UTC,
                TimeDelta::hours(62),
            ),
            // 02:30 EST on 03-07 -> 03:00 EDT -> 02:30 EDT on 03-09.
            (
                "30 2 * * *",
                "2026-03-07T08:00:00Z",
                New_York,
                TimeDelta::minutes(23 * 60 + 30),
            ),
            (
                "@daily",
                "2026-10-31T12:00:00Z",
                New_York,
                TimeDelta::hours(25),
            ),
        ];
        for (text, at, tz, want) in cases {
            let got = sched(text).interval_at(utc(at), *tz);
            assert_eq!(got, Some(*want), "{text:?} in {tz} at {at}");
        }
    }

    #[test]
    fn display_gives_back_the_input() {
        for text in [
            "0 */12 * * *",
            "20 7-17/2 * * 1-5",
            "@daily",
            "@every 1h30m",
            "0 0 * * FRI",
        ] {
            assert_eq!(sched(text).to_string(), text);
        }
        assert_eq!(sched("  @hourly ").to_string(), "@hourly");
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "0 */12 * *",
                r#"invalid schedule "0 */12 * *": expected 5 fields (minute hour day-of-month month day-of-week), found 4"#,
            ),
            (
                "0 0 */12 * * *",
                r#"invalid schedule "0 0 */12 * * *": expected 5 fields (minute hour day-of-month month day-of-week), found 6; seconds and year fields are not supported"#,
            ),
            (
                "0 0 0 * * * 2026",
                r#"invalid schedule "0 0 0 * * * 2026": expected 5 fields (minute hour day-of-month month day-of-week), found 7; seconds and year fields are not supported"#,
            ),
            (
                "99 * * * *",
                r#"invalid schedule "99 * * * *": bad minute field "99" (allowed 0-59): number out of bounds"#,
            ),
            (
                "0 7-30 * * *",
                r#"invalid schedule "0 7-30 * * *": bad hour field "7-30" (allowed 0-23): range out of bounds"#,
            ),
            (
                "0 0 * * funday",
                r#"invalid schedule "0 0 * * funday": bad day-of-week field "funday" (allowed 0-7 or SUN-SAT): unexpected characters"#,
            ),
            (
                "0 0 30 2 *",
                r#"invalid schedule "0 0 30 2 *": never matches a real date"#,
            ),
            (
                "@fortnightly",
                r#"invalid schedule "@fortnightly": unknown macro "@fortnightly"; expected @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually or @every DURATION"#,
            ),
            (
                "@daily 5",
                r#"invalid schedule "@daily 5": @daily takes no argument, found "5""#,
            ),
            (
                "@every 0s",
                r#"invalid schedule "@every 0s": the @every duration must be greater than zero"#,
            ),
            (
                "@every",
                r#"invalid schedule "@every": @every needs a duration such as 15m or 1h30m"#,
            ),
            (
                "",
                r#"invalid schedule "": empty; expected 5 fields (minute hour day-of-month month day-of-week) or one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually or @every DURATION"#,
            ),
        ];
        for (input, want) in cases {
            match Schedule::parse(input) {
                Ok(s) => panic!("{input:?} parsed as {s:?}"),
                Err(e) => assert_eq!(e.to_string(), *want),
            }
        }
        // humantime's own wording may change; check our framing.
        let e = Schedule::parse("@every banana").map(|s| s.to_string());
        let msg = match e {
            Ok(s) => panic!("@every banana parsed as {s}"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.starts_with(r#"invalid schedule "@every banana": bad @every duration "banana": "#),
            "{msg}"
        );
    }

    #[test]
    fn error_messages_are_one_line() {
        for input in ["0 0 * * *\n* * * * *", "99\t* * * *", "@every\n5", "a\nb"] {
            let msg = match Schedule::parse(input) {
                Ok(s) => panic!("{input:?} parsed as {s:?}"),
                Err(e) => e.to_string(),
            };
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("Europe/Berlin"), Ok(Berlin));
        assert_eq!(parse_timezone("UTC"), Ok(UTC));
        assert_eq!(
            parse_timezone("Mars/Olympus").map_err(|e| e.to_string()),
            Err(r#"unknown time zone "Mars/Olympus": expected an IANA name such as Europe/Berlin or UTC"#.to_owned())
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        let msg = parse_duration("soon").map_err(|e| e.to_string());
        assert!(
            matches!(&msg, Err(m) if m.starts_with(r#"invalid duration "soon": "#)),
            "{msg:?}"
        );
    }

    #[test]
    fn durations_have_an_upper_bound() {
        let day = 86_400;
        assert_eq!(parse_wait("366d"), Ok(Duration::from_secs(366 * day)));
        assert_eq!(
            parse_wait("366d 1s").map_err(|e| e.to_string()),
            Err(r#"invalid duration "366d 1s": too long (at most 366d)"#.to_owned())
        );
        assert_eq!(
            parse_bounded("100y", MAX_AGE),
            Ok(Duration::from_secs(36_525 * day))
        );
        assert_eq!(
            parse_bounded("300000y", MAX_AGE).map_err(|e| e.to_string()),
            Err(r#"invalid duration "300000y": too long (at most 100y)"#.to_owned())
        );
        // What the limits are spelt as is what they are.
        for limit in [MAX_WAIT, MAX_AGE] {
            assert_eq!(parse_duration(limit.text), Ok(limit.max));
        }
        // The longest age reaches back to a time chrono has, from far ahead too.
        let age = TimeDelta::from_std(MAX_AGE.max).unwrap_or_else(|e| panic!("{e}"));
        let wait = TimeDelta::from_std(MAX_WAIT.max).unwrap_or_else(|e| panic!("{e}"));
        let in_a_century = Utc::now() + TimeDelta::days(36_525);
        assert!(in_a_century.checked_sub_signed(age).is_some());
        assert!(in_a_century.checked_add_signed(wait).is_some());
    }

    #[test]
    fn every_has_an_upper_bound() {
        assert!(Schedule::parse("@every 366d").is_ok());
        assert_eq!(
            Schedule::parse("@every 300000y").map_err(|e| e.to_string()),
            Err(
                r#"invalid schedule "@every 300000y": the @every duration must be at most 366d"#
                    .to_owned()
            )
        );
    }

    #[test]
    fn clock_arithmetic_past_the_end_of_time_never_panics() {
        let slot = utc("2026-01-01T00:00:00Z");
        assert_eq!(jittered(slot, Duration::ZERO), slot);
        let late = jittered(slot, Duration::from_secs(60));
        assert!(slot <= late && late <= slot + TimeDelta::seconds(60));
        let last = DateTime::<Utc>::MAX_UTC;
        assert_eq!(jittered(last, Duration::from_secs(3600)), last);
        let now = Utc::now();
        assert_eq!(ago(now, TimeDelta::hours(24)), now - TimeDelta::hours(24));
        assert_eq!(ago(now, TimeDelta::MAX), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        let bound = Duration::from_secs(60);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(bound)).collect();
        assert!(samples.iter().all(|d| *d <= bound));
        // 200 draws from a minute all being equal means no randomness.
        assert!(samples.iter().any(|d| *d != samples[0]));
    }

    proptest! {
        #[test]
        fn next_is_strictly_after_and_is_the_first(
            secs in 1_704_067_200i64..1_893_456_000i64, // 2024..2030
            which in 0usize..6,
            zone in 0usize..3,
        ) {
            let text = ["0 */12 * * *", "20 7-17/2 * * 1-5", "30 2 * * *", "30 1 * * *", "0 * * * *", "@every 45m"][which];
            let tz = [UTC, Berlin, New_York][zone];
            let s = sched(text);
            let after = DateTime::from_timestamp(secs, 0).unwrap_or_else(|| panic!("bad secs"));
            let Some(next) = s.next_after(after, tz) else {
                return Err(TestCaseError::fail(format!("{text}: no run after {after}")));
            };
            prop_assert!(next > after);
            // Any instant between `after` and `next` has the same next run:
            // nothing was skipped.
            let mid = after + (next - after) / 2;
            prop_assert_eq!(s.next_after(mid, tz), Some(next));
        }
    }
}
