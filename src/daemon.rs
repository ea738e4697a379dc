//! `vcbackup run`: the sidecar. Takes backups on a schedule, applies
//! retention, and reports through metrics, health endpoints and logs.
//!
//! The loop asks the schedule for the next run from the wall clock each time,
//! so runs never drift and never overlap; a backup that overruns its slot makes
//! the loop skip (and count) the slots it missed.

mod continuous;
mod read_back;
mod unchanged;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::time::Instant;

use self::continuous::{Continuous, Next};
use self::unchanged::SkipUnchanged;
use crate::backup::{self, Stage};
use crate::pipeline::Sealing;
use crate::retention::{self, RetentionPolicy};
use crate::schedule::{self, Schedule};
use crate::shutdown::Shutdown;
use crate::state::State;
use crate::storage::{Destination, Storage};
use crate::store::{Source, SourceConfig};

/// The loop wakes at least this often, to notice clock jumps and show it is alive.
const WAKE: Duration = Duration::from_secs(15);

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
    pub listen: SocketAddr,
    pub shutdown_timeout: Duration,
    pub backup_on_shutdown: bool,
    /// The vCluster config and the PKI stored beside every backup.
    pub companions: backup::Companions,
    /// Read every uploaded backup back once (key-less checks).
    pub verify_after_upload: bool,
    /// `--skip-unchanged`, with `--max-unchanged-age`.
    pub skip_unchanged: Option<chrono::TimeDelta>,
    /// `--incremental-interval`: ship changes between full backups this often.
    pub incremental_interval: Option<Duration>,
}

pub async fn run(config: DaemonConfig) -> Result<()> {
    let listener = crate::http::bind(config.listen).await?;
    let state = Arc::new(State::new(
        &config.vcluster,
        config.destination.to_string(),
        config.schedule.to_string(),
        config.timezone.name(),
    )?);
    let storage: Arc<dyn Storage> = Arc::from(config.destination.open(&config.vcluster).await?);
    let shutdown = Shutdown::listen()?;
    let server = tokio::spawn(crate::http::serve(
        listener,
        Arc::clone(&state),
        shutdown.token.clone(),
    ));
    if let Some(interval) = config.schedule.interval_at(Utc::now(), config.timezone) {
        state.metrics.record_schedule_interval(interval);
    }
    state.set_ready();
    tracing::info!(
        vcluster = %config.vcluster,
        source = %config.source.spec,
        destination = %config.destination,
        schedule = %config.schedule,
        timezone = %config.timezone.name(),
        listen = %config.listen,
        "agent started"
    );

    let scheduler = Scheduler {
        config: &config,
        state: &state,
        storage: storage.as_ref(),
        shutdown: &shutdown,
        skip_unchanged: config.skip_unchanged.map(SkipUnchanged::new),
        continuous: config.incremental_interval.map(Continuous::new),
    };
    let result = scheduler.run().await;
    shutdown.token.cancel();
    let _ = server.await;
    tracing::info!("agent stopped");
    result
}

struct Scheduler<'a> {
    config: &'a DaemonConfig,
    state: &'a State,
    storage: &'a dyn Storage,
    shutdown: &'a Shutdown,
    /// `--skip-unchanged`: its own state; the scheduler only asks it.
    skip_unchanged: Option<SkipUnchanged>,
    /// `--incremental-interval`: the chain this agent extends.
    continuous: Option<Continuous>,
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
        if let Some(continuous) = &self.continuous {
            self.state
                .metrics
                .continuous
                .record_interval(continuous.interval);
            if !catch_up {
                // Increments continue only a chain this agent started.
                tracing::info!("continuous backups: taking a full backup now to start a chain");
                catch_up = true;
            }
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
            let fire_at = schedule::jittered(slot, config.jitter);
            self.state.next_run(fire_at);
            // Until then the agent only waits: what start-up or the backup left resident goes.
            crate::footprint::shed();
            if !self.wait_shipping_changes(fire_at).await {
                break;
            }
            // Continuous backups start with a base of their own, unchanged store or not.
            let forced = catch_up && self.continuous.is_some();
            catch_up = false;
            if let Outcome::Aborted = self.guarded_backup(forced).await {
                return Ok(());
            }
            self.count_skipped(slot);
        }
        if config.backup_on_shutdown {
            tracing::info!("taking a final backup before stopping (--backup-on-shutdown)");
            self.guarded_backup(false).await;
        } else if self.continuous.is_some() {
            // What changed since the last look goes out before the pod stops.
            let budget = self.shutdown.deadline(config.shutdown_timeout);
            if tokio::time::timeout_at(budget, self.ship_changes(true))
                .await
                .is_err()
            {
                tracing::warn!("shutdown timeout reached before the last increment was shipped");
            }
        }
        Ok(())
    }

    /// At start: whether the newest backup is older than one interval (the pod
    /// was down or asleep). Also seeds the metrics from storage, so a restart
    /// does not look like a missing backup to freshness alerts.
    async fn backups_are_stale(&self) -> bool {
        let catalog = match crate::catalog::read(self.storage).await {
            Ok(catalog) => catalog,
            Err(err) => {
                tracing::warn!("list backups at start: {err:#}");
                return true;
            }
        };
        let backups = &catalog.backups;
        self.state.stored(backups);
        self.remember_newest(backups.first());
        // An unchanged check recorded in storage keeps the newest backup current;
        // this agent's next check replaces that mark.
        let mark = backups
            .first()
            .and_then(|newest| unchanged::last_mark(&catalog.records, &newest.name));
        let confirmed = mark.map(|m| m.time);
        if let Some(at) = confirmed {
            self.state.confirmed_current(at);
        }
        if let Some(skip) = &self.skip_unchanged {
            skip.found_mark(mark.map(|m| m.key.clone()));
        }
        let now = Utc::now();
        let interval = self.config.schedule.interval_at(now, self.config.timezone);
        match (backups.first(), interval) {
            (None, _) => {
                tracing::info!("no backup in storage yet");
                true
            }
            (Some(newest), Some(interval))
                if now - confirmed.map_or(newest.started, |c| c.max(newest.started)) > interval =>
            {
                tracing::info!(newest = %newest.name, "newest backup is older than one schedule interval");
                true
            }
            _ => false,
        }
    }

    /// Sleeps until `when`, waking regularly; false if shutdown came first.
    async fn sleep_until(&self, when: DateTime<Utc>) -> bool {
        self.sleep_until_or(when, None).await
    }

    /// Sleeps until `when` or until `early` is notified; false if shutdown came first.
    async fn sleep_until_or(
        &self,
        when: DateTime<Utc>,
        early: Option<Arc<tokio::sync::Notify>>,
    ) -> bool {
        loop {
            self.state.beat();
            let left = (when - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return !self.shutdown.requested();
            }
            let notified = async {
                match &early {
                    Some(early) => early.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(left.min(WAKE)) => {}
                () = notified => return !self.shutdown.requested(),
                () = self.shutdown.token.cancelled() => return false,
            }
        }
    }

    /// Waits for the full backup at `slot`, shipping increments every
    /// interval meanwhile (`--incremental-interval`); false if shutdown came first.
    async fn wait_shipping_changes(&self, slot: DateTime<Utc>) -> bool {
        let Some(continuous) = &self.continuous else {
            return self.sleep_until(slot).await;
        };
        loop {
            let look = continuous::next_look(Utc::now(), continuous.interval);
            if slot <= look {
                return self.sleep_until(slot).await;
            }
            if !self.sleep_until_or(look, continuous.flush_signal()).await {
                return false;
            }
            if !self.ship_within_shutdown().await {
                return false;
            }
        }
    }

    /// One look at the store that a shutdown lets finish within the budget,
    /// then drops (storage removes what the upload had written; the changes
    /// are shipped by the next agent's base). False if shutdown came.
    async fn ship_within_shutdown(&self) -> bool {
        let shipping = self.ship_changes(false);
        tokio::pin!(shipping);
        loop {
            let requested = self.shutdown.requested();
            let deadline = self.shutdown.deadline(self.config.shutdown_timeout);
            tokio::select! {
                () = &mut shipping => return !self.shutdown.requested(),
                () = self.shutdown.token.cancelled(), if !requested => {}
                () = tokio::time::sleep_until(deadline), if requested => {
                    tracing::warn!("shutdown timeout reached while shipping changes; the increment was dropped, nothing partial kept");
                    return false;
                }
            }
        }
    }

    /// One look at the store (`--incremental-interval`), and the full backup
    /// it asks for when the chain cannot continue. `last` (at shutdown) only ships.
    async fn ship_changes(&self, last: bool) {
        let Some(continuous) = &self.continuous else {
            return;
        };
        if let Next::FullBackup = continuous.look(last, &self.agent()).await {
            self.guarded_backup(true).await;
        }
    }

    /// What continuous backups need of this agent.
    fn agent(&self) -> continuous::Agent<'_> {
        continuous::Agent {
            source: &self.config.source,
            sealing: &self.config.sealing,
            storage: self.storage,
            vcluster: &self.config.vcluster,
            state: self.state,
        }
    }

    /// One backup that a shutdown lets finish within the budget, then aborts.
    /// `forced`: the chain of increments needs a new base, whatever `--skip-unchanged` says.
    async fn guarded_backup(&self, forced: bool) -> Outcome {
        let attempt = self.attempt(forced);
        tokio::pin!(attempt);
        let mut beat = tokio::time::interval(WAKE);
        loop {
            let deadline = if self.shutdown.requested() {
                self.shutdown.deadline(self.config.shutdown_timeout)
            } else {
                Instant::now() + WAKE * 4
            };
            tokio::select! {
                () = &mut attempt => return Outcome::Finished,
                _ = beat.tick() => self.state.beat(),
                () = self.shutdown.token.cancelled(), if !self.shutdown.requested() => {
                    tracing::info!(timeout = ?self.config.shutdown_timeout, "a backup is running; letting it finish within the shutdown timeout");
                }
                () = tokio::time::sleep_until(deadline), if self.shutdown.requested() => {
                    // Dropping the attempt cancels the upload; storage removes what it had written.
                    tracing::warn!("shutdown timeout reached; backup aborted, nothing partial kept");
                    self.state.backup_aborted();
                    return Outcome::Aborted;
                }
            }
        }
    }

    async fn attempt(&self, forced: bool) {
        let started = Utc::now();
        let clock = Instant::now();
        let source = match self.open_source().await {
            Ok(Some(source)) => source,
            // Another replica's agent backs up this slot.
            Ok(None) => return,
            Err(err) => {
                self.state.backup_started(started);
                self.record_failure(Stage::Source, &err);
                return;
            }
        };
        self.state.backup_started(started);
        let source = match self.skip_unchanged.as_ref().filter(|_| !forced) {
            Some(skip) => match skip
                .unless_unchanged(source, self.storage, self.state)
                .await
            {
                Some(source) => source,
                None => return,
            },
            None => source,
        };
        let result = backup::take_backup(
            source,
            Arc::clone(&self.config.sealing),
            self.storage,
            &self.config.vcluster,
            &self.config.companions,
        )
        .await;
        match result {
            Ok(manifest) => {
                // A newer base is stored: the old chain ends here, whatever comes next
                // (a restore of `latest` starts from this base).
                if let Some(continuous) = &self.continuous {
                    continuous.end_chain();
                }
                if self.config.verify_after_upload
                    && let Err(err) =
                        read_back::read_back(self.storage, self.state, &manifest).await
                {
                    self.record_failure(Stage::Verify, &err);
                    return;
                }
                self.state
                    .backup_succeeded(&manifest, clock.elapsed().as_secs_f64());
                self.remember_newest(Some(&manifest));
                if let Some(continuous) = &self.continuous {
                    continuous.start_chain(&manifest, &self.agent()).await;
                }
                if let Err(err) = self.apply_retention().await {
                    self.record_failure(Stage::Retention, &err);
                }
            }
            Err(err) => self.record_failure(err.stage, &err.error),
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
        let standing_by = standby.is_some();
        self.state.standby(standby);
        if !standing_by {
            return Ok(Some(source));
        }
        // The active agent's backups are this cluster's too: keep the freshness
        // metric on them, so alerts on a standby agent fire only when no agent backs up.
        match crate::catalog::list_backups(self.storage).await {
            Ok(backups) => {
                self.state.stored(&backups);
                self.remember_newest(backups.first());
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
            .record_retention_deleted(plan.delete.len());
        self.state.stored(&plan.keep);
        let aborted = self
            .storage
            .abort_stale_uploads(schedule::ago(now, self.config.stale_upload_age))
            .await?;
        if aborted > 0 {
            tracing::info!(
                aborted,
                "aborted unfinished uploads older than --abort-uploads-after"
            );
        }
        Ok(())
    }

    fn remember_newest(&self, newest: Option<&crate::manifest::Manifest>) {
        if let Some(skip) = &self.skip_unchanged {
            skip.remember_newest(newest);
        }
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
        self.state.failed(stage, message);
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
            self.state.metrics.record_skipped_runs(skipped);
        }
    }
}
