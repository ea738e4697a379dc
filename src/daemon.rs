//! `vcbackup run`: the sidecar. Takes backups on a schedule, applies
//! retention, and reports through metrics, health endpoints and logs.
//!
//! The loop asks the schedule for the next run from the wall clock each time,
//! so runs never drift and never overlap; a backup that overruns its slot makes
//! the loop skip (and count) the slots it missed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backup::{self, Stage};
use crate::manifest::{Manifest, SourceKind};
use crate::metrics::Metrics;
use crate::pipeline::Sealing;
use crate::retention::{self, RetentionPolicy};
use crate::schedule::{self, Schedule};
use crate::source::{Source, SourceConfig};
use crate::storage::{Destination, Storage};
use crate::vconfig::ConfigSource;

/// The loop wakes at least this often, to notice clock jumps and show it is alive.
const WAKE: Duration = Duration::from_secs(15);
/// `/livez` fails once the loop has been silent this long.
const STALLED_AFTER: Duration = Duration::from_secs(90);
const RECENT_BACKUPS: usize = 10;
const RECENT_FAILURES: usize = 10;

/// Everything `run` needs, checked before anything starts.
pub struct DaemonConfig {
    pub source: SourceConfig,
    pub sealing: Arc<Sealing>,
    pub destination: Destination,
    pub vcluster: String,
    pub schedule: Schedule,
    pub timezone: Tz,
    pub jitter: Duration,
    pub catch_up: bool,
    pub retention: RetentionPolicy,
    /// Unfinished uploads older than this are aborted after each backup.
    pub stale_upload_age: chrono::TimeDelta,
    pub listen: String,
    pub shutdown_timeout: Duration,
    pub backup_on_shutdown: bool,
    pub vcluster_config: ConfigSource,
}

/// What the HTTP endpoints read and the scheduler writes.
pub struct State {
    pub metrics: Metrics,
    ready: AtomicBool,
    heartbeat: Mutex<Instant>,
    status: Mutex<Status>,
}

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
    pub last_failure: Option<Failure>,
    /// Newest first, at most `RECENT_FAILURES`: a flapping destination shows as a pattern.
    pub recent_failures: Vec<Failure>,
    pub recent_backups: Vec<RecentBackup>,
}

impl Status {
    fn add_failure(&mut self, failure: Failure) {
        self.recent_failures.insert(0, failure.clone());
        self.recent_failures.truncate(RECENT_FAILURES);
        self.last_failure = Some(failure);
    }
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
    fn new(status: Status) -> Result<Self> {
        Ok(State {
            metrics: Metrics::new()?,
            ready: AtomicBool::new(false),
            heartbeat: Mutex::new(Instant::now()),
            status: Mutex::new(status),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// How long the scheduler loop has been silent, if too long.
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
        let silent = last.elapsed();
        (silent > STALLED_AFTER).then_some(silent)
    }

    fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn set_stored(&self, backups: &[Manifest]) {
        self.metrics.snapshots_stored.set(backups.len() as i64);
        let recent = backups
            .iter()
            .take(RECENT_BACKUPS)
            .map(|m| RecentBackup {
                name: m.name.clone(),
                created: m.started,
                kind: m.kind,
                size: m.size,
                stored_size: m.stored_size,
            })
            .collect();
        self.update(|s| s.recent_backups = recent);
    }
}

pub async fn run(config: DaemonConfig) -> Result<()> {
    let listener = crate::http::bind(&config.listen).await?;
    let state = Arc::new(State::new(Status {
        vcluster: config.vcluster.clone(),
        destination: config.destination.to_string(),
        schedule: config.schedule.to_string(),
        timezone: config.timezone.name().to_string(),
        running: false,
        standby: None,
        next_run: None,
        last_success: None,
        last_failure: None,
        recent_failures: Vec::new(),
        recent_backups: Vec::new(),
    })?);
    let storage: Arc<dyn Storage> = Arc::from(config.destination.open(&config.vcluster).await?);
    let shutdown = Shutdown::listen()?;
    let server = tokio::spawn(crate::http::serve(
        listener,
        Arc::clone(&state),
        shutdown.token.clone(),
    ));
    if let Some(interval) = config.schedule.interval_at(Utc::now(), config.timezone) {
        state
            .metrics
            .schedule_interval
            .set(interval.num_milliseconds() as f64 / 1000.0);
    }
    state.ready.store(true, Ordering::SeqCst);
    let address: Option<SocketAddr> = config.listen.parse().ok();
    tracing::info!(
        vcluster = %config.vcluster,
        source = %config.source.spec,
        destination = %config.destination,
        schedule = %config.schedule,
        timezone = %config.timezone.name(),
        listen = ?address.map_or(config.listen.clone(), |a| a.to_string()),
        "agent started"
    );

    let scheduler = Scheduler {
        config: &config,
        state: &state,
        storage: storage.as_ref(),
        shutdown: &shutdown,
    };
    let result = scheduler.run().await;
    shutdown.token.cancel();
    let _ = server.await;
    tracing::info!("agent stopped");
    result
}

/// SIGTERM/SIGINT, and the deadline they start.
struct Shutdown {
    token: CancellationToken,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Shutdown {
    fn listen() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
        let token = CancellationToken::new();
        let deadline = Arc::new(Mutex::new(None));
        let (t, d) = (token.clone(), Arc::clone(&deadline));
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            *d.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            tracing::info!("{name}: stopping; no new backups will start");
            t.cancel();
        });
        Ok(Shutdown { token, deadline })
    }

    fn deadline(&self, budget: Duration) -> Instant {
        let signalled = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        signalled.unwrap_or_else(Instant::now) + budget
    }
}

struct Scheduler<'a> {
    config: &'a DaemonConfig,
    state: &'a State,
    storage: &'a dyn Storage,
    shutdown: &'a Shutdown,
}

enum Outcome {
    Finished,
    /// Stopped by the shutdown deadline; nothing partial was left.
    Aborted,
}

impl Scheduler<'_> {
    async fn run(&self) -> Result<()> {
        let config = self.config;
        let mut catch_up = self.backups_are_stale().await && config.catch_up;
        if catch_up {
            tracing::info!("catching up: taking a backup now (--no-catch-up turns this off)");
        }
        loop {
            let now = Utc::now();
            let slot = if catch_up {
                now
            } else {
                match config.schedule.next_after(now, config.timezone) {
                    Some(slot) => slot,
                    None => bail!("schedule {} has no future run", config.schedule),
                }
            };
            let fire_at = slot + schedule::jitter(config.jitter);
            self.state.metrics.next_run.set(fire_at.timestamp() as f64);
            self.state.update(|s| s.next_run = Some(fire_at));
            if !self.sleep_until(fire_at).await {
                break;
            }
            catch_up = false;
            if let Outcome::Aborted = self.guarded_backup().await {
                return Ok(());
            }
            self.count_skipped(slot);
        }
        if config.backup_on_shutdown {
            tracing::info!("taking a final backup before stopping (--backup-on-shutdown)");
            self.guarded_backup().await;
        }
        Ok(())
    }

    /// At start: whether the newest backup is older than one interval (the pod
    /// was down or asleep). Also seeds the metrics from storage, so a restart
    /// does not look like a missing backup to freshness alerts.
    async fn backups_are_stale(&self) -> bool {
        let backups = match crate::catalog::list_backups(self.storage).await {
            Ok(backups) => backups,
            Err(err) => {
                tracing::warn!("list backups at start: {err:#}");
                return true;
            }
        };
        self.state.set_stored(&backups);
        if let Some(newest) = backups.first() {
            self.state
                .metrics
                .last_success
                .set(newest.finished.timestamp() as f64);
        }
        let now = Utc::now();
        let interval = self.config.schedule.interval_at(now, self.config.timezone);
        match (backups.first(), interval) {
            (None, _) => {
                tracing::info!("no backup in storage yet");
                true
            }
            (Some(newest), Some(interval)) if now - newest.started > interval => {
                tracing::info!(newest = %newest.name, "newest backup is older than one schedule interval");
                true
            }
            _ => false,
        }
    }

    /// Sleeps until `when`, waking regularly; false if shutdown came first.
    async fn sleep_until(&self, when: DateTime<Utc>) -> bool {
        loop {
            self.state.beat();
            let left = (when - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return !self.shutdown.token.is_cancelled();
            }
            tokio::select! {
                () = tokio::time::sleep(left.min(WAKE)) => {}
                () = self.shutdown.token.cancelled() => return false,
            }
        }
    }

    /// One backup that a shutdown lets finish within the budget, then aborts.
    async fn guarded_backup(&self) -> Outcome {
        let attempt = self.attempt();
        tokio::pin!(attempt);
        let mut beat = tokio::time::interval(WAKE);
        loop {
            let deadline = if self.shutdown.token.is_cancelled() {
                self.shutdown.deadline(self.config.shutdown_timeout)
            } else {
                Instant::now() + WAKE * 4
            };
            tokio::select! {
                () = &mut attempt => return Outcome::Finished,
                _ = beat.tick() => self.state.beat(),
                () = self.shutdown.token.cancelled(), if !self.shutdown.token.is_cancelled() => {
                    tracing::info!(timeout = ?self.config.shutdown_timeout, "a backup is running; letting it finish within the shutdown timeout");
                }
                () = tokio::time::sleep_until(deadline), if self.shutdown.token.is_cancelled() => {
                    // Dropping the attempt cancels the upload; storage removes what it had written.
                    tracing::warn!("shutdown timeout reached; backup aborted, nothing partial kept");
                    self.state.metrics.in_progress.set(0);
                    self.state.metrics.backups.with_label_values(&["failure"]).inc();
                    self.state.metrics.failures.with_label_values(&[Stage::Storage.as_str()]).inc();
                    self.state.update(|s| s.running = false);
                    return Outcome::Aborted;
                }
            }
        }
    }

    async fn attempt(&self) {
        let metrics = &self.state.metrics;
        let started = Utc::now();
        let clock = Instant::now();
        let source = match self.open_source().await {
            Ok(Some(source)) => source,
            // Another replica's agent backs up this slot.
            Ok(None) => return,
            Err(err) => {
                metrics.last_attempt.set(started.timestamp() as f64);
                metrics.backups.with_label_values(&["failure"]).inc();
                self.record_failure(Stage::Source, &err);
                return;
            }
        };
        metrics.last_attempt.set(started.timestamp() as f64);
        metrics.in_progress.set(1);
        self.state.update(|s| s.running = true);
        let result = backup::take_backup(
            source,
            Arc::clone(&self.config.sealing),
            self.storage,
            &self.config.vcluster,
            &self.config.vcluster_config,
        )
        .await;
        metrics.in_progress.set(0);
        self.state.update(|s| s.running = false);
        match result {
            Ok(manifest) => {
                let seconds = clock.elapsed().as_secs_f64();
                metrics.backups.with_label_values(&["success"]).inc();
                metrics
                    .last_success
                    .set(manifest.finished.timestamp() as f64);
                metrics.duration.observe(seconds);
                metrics
                    .last_size
                    .with_label_values(&["source"])
                    .set(manifest.size as f64);
                metrics
                    .last_size
                    .with_label_values(&["stored"])
                    .set(manifest.stored_size as f64);
                self.state.update(|s| {
                    s.last_success = Some(Success {
                        time: manifest.finished,
                        backup: manifest.name.clone(),
                        size: manifest.size,
                        stored_size: manifest.stored_size,
                        duration_seconds: seconds,
                    })
                });
                if let Err(err) = self.apply_retention().await {
                    self.record_failure(Stage::Retention, &err);
                }
            }
            Err(err) => {
                metrics.backups.with_label_values(&["failure"]).inc();
                self.record_failure(err.stage, &err.error);
            }
        }
    }

    /// Opens the source, or returns `None` when this agent stands by for
    /// another replica's (`--ha`).
    async fn open_source(&self) -> Result<Option<Box<dyn Source>>> {
        let spec = self.config.source.clone();
        let (source, standby) = tokio::task::spawn_blocking(move || {
            let mut source = spec.open()?;
            let standby = source.standby()?;
            anyhow::Ok((source, standby))
        })
        .await??;
        let was = self.state.status().standby;
        match (&standby, &was) {
            (Some(why), None) => tracing::info!("standing by: {why}"),
            (None, Some(_)) => tracing::info!("this agent takes the backups now (--ha)"),
            _ => {}
        }
        self.state.metrics.standby.set(i64::from(standby.is_some()));
        let standing_by = standby.is_some();
        self.state.update(|s| s.standby = standby);
        if !standing_by {
            return Ok(Some(source));
        }
        // The active agent's backups are this cluster's too: keep the freshness
        // metric on them, so alerts on a standby agent fire only when no agent backs up.
        match crate::catalog::list_backups(self.storage).await {
            Ok(backups) => {
                if let Some(newest) = backups.first() {
                    self.state
                        .metrics
                        .last_success
                        .set(newest.finished.timestamp() as f64);
                }
                self.state.set_stored(&backups);
            }
            Err(err) => tracing::warn!("standing by; listing the other agent's backups: {err:#}"),
        }
        Ok(None)
    }

    async fn apply_retention(&self) -> Result<()> {
        let now = Utc::now();
        let plan = retention::prune(self.storage, &self.config.retention, now, false).await?;
        self.state
            .metrics
            .retention_deleted
            .inc_by(plan.delete.len() as u64);
        self.state.set_stored(&plan.keep);
        let aborted = self
            .storage
            .abort_stale_uploads(now - self.config.stale_upload_age)
            .await?;
        if aborted > 0 {
            tracing::info!(
                aborted,
                "aborted unfinished uploads older than --abort-uploads-after"
            );
        }
        Ok(())
    }

    fn record_failure(&self, stage: Stage, err: &anyhow::Error) {
        let message = format!("{err:#}");
        match stage {
            // The backup itself is stored and counted; only the clean-up after it failed.
            Stage::Retention => tracing::error!(
                stage = stage.as_str(),
                "retention failed (the backup itself succeeded): {message}"
            ),
            _ => tracing::error!(stage = stage.as_str(), "backup failed: {message}"),
        }
        self.state
            .metrics
            .failures
            .with_label_values(&[stage.as_str()])
            .inc();
        self.state.update(|s| {
            s.add_failure(Failure {
                time: Utc::now(),
                stage: stage.as_str(),
                message,
            })
        });
    }

    /// Counts the slots that passed while the backup for `slot` ran.
    fn count_skipped(&self, slot: DateTime<Utc>) {
        let now = Utc::now();
        let mut skipped = 0u64;
        let mut next = slot;
        while let Some(after) = self.config.schedule.next_after(next, self.config.timezone) {
            if after > now || skipped >= 10_000 {
                break;
            }
            skipped += 1;
            next = after;
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "the backup overran its schedule slot; skipped the missed runs"
            );
            self.state.metrics.skipped_runs.inc_by(skipped);
        }
    }
}
