//! What the agent reports about itself: the metrics and `/status`. The
//! scheduler records what happens here; the HTTP endpoints only read it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;

use crate::backup::Stage;
use crate::lock::lock;
use crate::manifest::{Manifest, SourceKind};
use crate::metrics::Metrics;

/// `/livez` fails once the scheduler loop has been silent this long.
const STALLED_AFTER: Duration = Duration::from_secs(90);
const RECENT_BACKUPS: usize = 10;
const RECENT_FAILURES: usize = 10;

pub struct State {
    pub metrics: Metrics,
    ready: AtomicBool,
    heartbeat: Mutex<Instant>,
    status: Mutex<Status>,
}

/// `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub vcluster: String,
    pub destination: String,
    pub schedule: String,
    pub timezone: String,
    pub running: bool,
    /// Why another replica's agent takes the backups (`--ha`); `None` while this one does.
    pub standby: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_success: Option<Success>,
    /// The last check that found the store unchanged since the newest backup (`--skip-unchanged`).
    pub last_unchanged: Option<Unchanged>,
    pub last_failure: Option<Failure>,
    /// Newest first, at most `RECENT_FAILURES`: a flapping destination shows as a pattern.
    pub recent_failures: Vec<Failure>,
    pub recent_backups: Vec<RecentBackup>,
    /// Seconds since every change was last seen shipped (`--incremental-interval`); absent
    /// while continuous backups are off or before the first chain starts.
    pub rpo_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Success {
    pub time: DateTime<Utc>,
    pub backup: String,
    pub size: u64,
    pub stored_size: u64,
    pub duration_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unchanged {
    pub time: DateTime<Utc>,
    /// The backup that is still current.
    pub backup: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub time: DateTime<Utc>,
    pub stage: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentBackup {
    pub name: String,
    pub created: DateTime<Utc>,
    pub kind: SourceKind,
    pub size: u64,
    pub stored_size: u64,
}

impl State {
    /// The state of an agent that has not started yet.
    pub fn new(
        vcluster: &str,
        destination: String,
        schedule: String,
        timezone: &str,
    ) -> Result<Self> {
        Ok(State {
            metrics: Metrics::new()?,
            ready: AtomicBool::new(false),
            heartbeat: Mutex::new(Instant::now()),
            status: Mutex::new(Status {
                vcluster: vcluster.to_string(),
                destination,
                schedule,
                timezone: timezone.to_string(),
                running: false,
                standby: None,
                next_run: None,
                last_success: None,
                last_unchanged: None,
                last_failure: None,
                recent_failures: Vec::new(),
                recent_backups: Vec::new(),
                rpo_seconds: None,
            }),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// How long the scheduler loop has been silent, if too long.
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = *lock(&self.heartbeat);
        let silent = last.elapsed();
        (silent > STALLED_AFTER).then_some(silent)
    }

    /// The scheduler loop is alive.
    pub fn beat(&self) {
        *lock(&self.heartbeat) = Instant::now();
    }

    pub fn status(&self) -> Status {
        let mut status = lock(&self.status).clone();
        status.rpo_seconds = self.metrics.continuous.rpo_seconds(Utc::now());
        status
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut lock(&self.status));
    }

    pub fn next_run(&self, at: DateTime<Utc>) {
        self.metrics.record_next_run(at);
        self.update(|s| s.next_run = Some(at));
    }

    pub fn backup_started(&self, started: DateTime<Utc>) {
        self.metrics.record_attempt(started);
        self.update(|s| s.running = true);
    }

    pub fn backup_succeeded(&self, manifest: &Manifest, seconds: f64) {
        self.metrics.record_success(manifest, seconds);
        self.update(|s| {
            s.running = false;
            s.last_success = Some(Success {
                time: manifest.finished,
                backup: manifest.name.clone(),
                size: manifest.sealed.size,
                stored_size: manifest.sealed.stored_size,
                duration_seconds: seconds,
            });
        });
    }

    /// No backup taken at `checked`: the store had not changed since `backup`.
    pub fn backup_unchanged(&self, backup: &str, checked: DateTime<Utc>) {
        self.metrics.record_unchanged(checked);
        self.update(|s| {
            s.running = false;
            s.last_unchanged = Some(Unchanged {
                time: checked,
                backup: backup.to_string(),
            });
        });
    }

    /// The newest backup was last confirmed current at `at` (an unchanged
    /// check recorded in storage, read at start).
    pub fn confirmed_current(&self, at: DateTime<Utc>) {
        self.metrics.record_newest_stored(at);
    }

    /// Something failed at `stage`; `message` is the whole error, one line.
    pub fn failed(&self, stage: Stage, message: String) {
        self.metrics.record_failure(stage);
        let failure = Failure {
            time: Utc::now(),
            stage: stage.as_str(),
            message,
        };
        self.update(|s| {
            s.running = false;
            s.recent_failures.insert(0, failure.clone());
            s.recent_failures.truncate(RECENT_FAILURES);
            s.last_failure = Some(failure);
        });
    }

    /// The shutdown deadline cut a backup off; nothing partial was kept.
    pub fn backup_aborted(&self) {
        self.metrics.record_aborted();
        self.update(|s| s.running = false);
    }

    /// Whether another replica's agent takes the backups, and why.
    pub fn standby(&self, why: Option<String>) {
        self.metrics.record_standby(why.is_some());
        self.update(|s| s.standby = why);
    }

    /// The backups in storage, newest first (after retention, or as read at start).
    pub fn stored(&self, backups: &[Manifest]) {
        self.metrics.record_stored_count(backups.len());
        if let Some(newest) = backups.first() {
            self.metrics.record_newest_stored(newest.finished);
        }
        let recent = backups
            .iter()
            .take(RECENT_BACKUPS)
            .map(|m| RecentBackup {
                name: m.name.clone(),
                created: m.started,
                kind: m.kind,
                size: m.sealed.size,
                stored_size: m.sealed.stored_size,
            })
            .collect();
        self.update(|s| s.recent_backups = recent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(state: &State, line_start: &str) -> f64 {
        let (_, text) = state.metrics.render().unwrap();
        let text = String::from_utf8(text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    }

    fn state() -> State {
        State::new("demo", "file:///b".into(), "@hourly".into(), "UTC").unwrap()
    }

    #[test]
    fn a_backup_cut_off_by_shutdown_is_aborted_not_failed() {
        let state = state();
        state.backup_started(Utc::now());
        state.backup_aborted();
        assert_eq!(
            sample(&state, r#"vcbackup_backups_total{result="aborted"} "#),
            1.0
        );
        assert_eq!(
            sample(&state, r#"vcbackup_backups_total{result="failure"} "#),
            0.0
        );
        for stage in Stage::ALL {
            let line = format!(
                r#"vcbackup_backup_failures_total{{stage="{}"}} "#,
                stage.as_str()
            );
            assert_eq!(sample(&state, &line), 0.0, "{line}");
        }
        assert_eq!(sample(&state, "vcbackup_backup_in_progress "), 0.0);
        let status = state.status();
        assert!(!status.running && status.last_failure.is_none());
    }

    #[test]
    fn failures_count_by_stage_and_retention_is_no_failed_backup() {
        let state = state();
        state.backup_started(Utc::now());
        state.failed(Stage::Storage, "bucket gone".into());
        state.failed(Stage::Retention, "no s3:DeleteObject".into());
        assert_eq!(
            sample(&state, r#"vcbackup_backups_total{result="failure"} "#),
            1.0
        );
        assert_eq!(
            sample(
                &state,
                r#"vcbackup_backup_failures_total{stage="storage"} "#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &state,
                r#"vcbackup_backup_failures_total{stage="retention"} "#
            ),
            1.0
        );
        let status = state.status();
        assert_eq!(status.recent_failures.len(), 2);
        assert_eq!(status.last_failure.map(|f| f.stage), Some("retention"));
    }
}
