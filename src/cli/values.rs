//! Every `value_parser` of the command line, in one place: a flag's text
//! turned into its typed value, or the message clap prints. The rules they
//! apply (limits, formats) stay with the domain they belong to.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::schedule::{self, Age, Schedule, ScheduleError};

/// `--schedule`: cron, a macro or `@every`.
pub fn parse_schedule(text: &str) -> Result<Schedule, ScheduleError> {
    Schedule::parse(text)
}

/// `--timezone`: an IANA name.
pub fn parse_timezone(text: &str) -> Result<Tz, ScheduleError> {
    schedule::parse_timezone(text)
}

/// A wait, interval or timeout: at most [`schedule::MAX_WAIT`].
pub fn parse_wait(text: &str) -> Result<Duration, ScheduleError> {
    schedule::parse_wait(text)
}

/// `--incremental-interval`: at least a second, so the agent never busy-polls,
/// and at most [`schedule::MAX_WAIT`].
pub fn parse_interval(text: &str) -> Result<Duration> {
    let interval = schedule::parse_wait(text)?;
    if interval < Duration::from_secs(1) {
        anyhow::bail!("{text:?} is shorter than 1s");
    }
    Ok(interval)
}

/// A duration as an age to subtract from the wall clock: at most
/// [`schedule::MAX_AGE`], so that `now - age` is always a time.
pub fn parse_delta(text: &str) -> Result<TimeDelta> {
    let age = schedule::parse_bounded(text, schedule::MAX_AGE)?;
    TimeDelta::from_std(age).with_context(|| format!("{text:?} is too long"))
}

/// An age that is also shown back as written (`--abort-uploads-after`).
pub fn parse_age(text: &str) -> Result<Age> {
    Ok(Age::new(parse_delta(text)?, text))
}

/// `--at`: RFC 3339.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("invalid time {text:?}: expected RFC 3339, e.g. 2026-11-20T08:00:00Z")
        })
}
