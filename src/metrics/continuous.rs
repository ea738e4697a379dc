//! The metrics of continuous backups (`run --incremental-interval`).

use std::sync::Mutex;

use anyhow::Result;
use chrono::{DateTime, Utc};
use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};

use crate::lock::lock;

/// Why a full backup was taken between slots: the `reason` label.
pub const FORCED_REASONS: [&str; 4] = ["compacted", "went_back", "watch_lost", "no_chain"];

pub struct ContinuousMetrics {
    interval: Gauge,
    rpo: Gauge,
    increments: IntCounterVec,
    increment_bytes: IntCounter,
    last_increment: Gauge,
    forced_full: IntCounterVec,
    last_forced_full: Gauge,
    /// When the agent last saw every change of the store shipped; `None`
    /// before the first chain starts.
    in_sync_at: Mutex<Option<DateTime<Utc>>>,
}

impl ContinuousMetrics {
    pub fn new(registry: &Registry) -> Result<Self> {
        let increments = IntCounterVec::new(
            Opts::new(
                "vcbackup_increments_total",
                "Increments between full backups (--incremental-interval), by result: shipped or failed.",
            ),
            &["result"],
        )?;
        for result in ["shipped", "failed"] {
            increments.with_label_values(&[result]);
        }
        let forced_full = IntCounterVec::new(
            Opts::new(
                "vcbackup_full_backups_forced_total",
                "Full backups taken between slots because increments could not continue, by reason.",
            ),
            &["reason"],
        )?;
        for reason in FORCED_REASONS {
            forced_full.with_label_values(&[reason]);
        }
        let metrics = ContinuousMetrics {
            interval: Gauge::new(
                "vcbackup_incremental_interval_seconds",
                "Seconds between two looks for changes to ship (0: continuous backups off).",
            )?,
            rpo: Gauge::new(
                "vcbackup_rpo_seconds",
                "Seconds since the agent last saw every change shipped: what a restore now could lose. About one interval at most while healthy; 0 with continuous backups off.",
            )?,
            increments,
            increment_bytes: IntCounter::new(
                "vcbackup_increment_bytes_total",
                "Bytes of increments stored (compressed, encrypted).",
            )?,
            last_increment: Gauge::new(
                "vcbackup_last_increment_timestamp_seconds",
                "Unix time the newest increment was read from the store (0: none yet).",
            )?,
            forced_full,
            last_forced_full: Gauge::new(
                "vcbackup_last_forced_full_backup_timestamp_seconds",
                "Unix time of the last full backup forced by compaction or a lost watch (0: none).",
            )?,
            in_sync_at: Mutex::new(None),
        };
        registry.register(Box::new(metrics.interval.clone()))?;
        registry.register(Box::new(metrics.rpo.clone()))?;
        registry.register(Box::new(metrics.increments.clone()))?;
        registry.register(Box::new(metrics.increment_bytes.clone()))?;
        registry.register(Box::new(metrics.last_increment.clone()))?;
        registry.register(Box::new(metrics.forced_full.clone()))?;
        registry.register(Box::new(metrics.last_forced_full.clone()))?;
        Ok(metrics)
    }

    pub fn record_interval(&self, interval: std::time::Duration) {
        self.interval.set(interval.as_secs_f64());
    }

    /// Every change up to a read at `at` is stored (a new chain's base, an
    /// increment, or a look that found nothing new).
    pub fn record_in_sync(&self, at: DateTime<Utc>) {
        let mut in_sync = lock(&self.in_sync_at);
        *in_sync = Some(in_sync.map_or(at, |was| was.max(at)));
    }

    pub fn record_shipped(&self, captured: DateTime<Utc>, stored_bytes: u64) {
        self.increments.with_label_values(&["shipped"]).inc();
        self.increment_bytes.inc_by(stored_bytes);
        self.last_increment
            .set(captured.timestamp_millis() as f64 / 1000.0);
        self.record_in_sync(captured);
    }

    pub fn record_failed(&self) {
        self.increments.with_label_values(&["failed"]).inc();
    }

    pub fn record_forced_full(&self, reason: &'static str, at: DateTime<Utc>) {
        self.forced_full.with_label_values(&[reason]).inc();
        self.last_forced_full.set(at.timestamp() as f64);
    }

    /// Sets the RPO gauge for a scrape at `now`.
    pub fn refresh(&self, now: DateTime<Utc>) {
        let in_sync = *lock(&self.in_sync_at);
        let rpo = in_sync.map_or(0.0, |at| {
            ((now - at).num_milliseconds().max(0)) as f64 / 1000.0
        });
        self.rpo.set(rpo);
    }

    pub fn rpo_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        let in_sync = *lock(&self.in_sync_at);
        in_sync.map(|at| ((now - at).num_milliseconds().max(0)) as f64 / 1000.0)
    }
}
