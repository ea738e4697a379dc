//! Every Prometheus metric the agent exports, in one place, with bounded
//! labels: results and stages are fixed sets, never error text.

use anyhow::Result;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backup::Stage;

pub struct Metrics {
    registry: Registry,
    pub backups: IntCounterVec,
    pub failures: IntCounterVec,
    pub last_success: Gauge,
    pub last_attempt: Gauge,
    pub next_run: Gauge,
    pub in_progress: IntGauge,
    pub duration: Histogram,
    pub last_size: GaugeVec,
    pub retention_deleted: IntCounter,
    pub snapshots_stored: IntGauge,
    pub skipped_runs: IntCounter,
    pub schedule_interval: Gauge,
    pub standby: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let backups = IntCounterVec::new(
            Opts::new("vcbackup_backups_total", "Backups attempted, by result."),
            &["result"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "vcbackup_backup_failures_total",
                "Failed backups, by the stage that failed.",
            ),
            &["stage"],
        )?;
        let last_success = Gauge::new(
            "vcbackup_last_success_timestamp_seconds",
            "Unix time the newest successful backup finished (read from storage at start; 0: none).",
        )?;
        let last_attempt = Gauge::new(
            "vcbackup_last_attempt_timestamp_seconds",
            "Unix time the last backup attempt started.",
        )?;
        let next_run = Gauge::new(
            "vcbackup_next_run_timestamp_seconds",
            "Unix time of the next scheduled backup.",
        )?;
        let in_progress = IntGauge::new("vcbackup_backup_in_progress", "1 while a backup runs.")?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "vcbackup_backup_duration_seconds",
                "Duration of successful backups.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
            ]),
        )?;
        let last_size = GaugeVec::new(
            Opts::new(
                "vcbackup_last_backup_size_bytes",
                "Size of the last successful backup: plaintext (source) and compressed, encrypted (stored).",
            ),
            &["stage"],
        )?;
        let retention_deleted = IntCounter::new(
            "vcbackup_retention_deleted_total",
            "Backups deleted by retention.",
        )?;
        let snapshots_stored = IntGauge::new(
            "vcbackup_snapshots_stored",
            "Backups of this virtual cluster in storage, after retention.",
        )?;
        let skipped_runs = IntCounter::new(
            "vcbackup_skipped_runs_total",
            "Scheduled runs skipped because the previous backup overran its slot.",
        )?;
        let schedule_interval = Gauge::new(
            "vcbackup_schedule_interval_seconds",
            "Seconds between two scheduled runs (for freshness alerts).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("vcbackup_build_info", "The agent's version; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every label value exists from the start, so increase() sees the first failure.
        for result in ["success", "failure"] {
            backups.with_label_values(&[result]);
        }
        for stage in Stage::ALL {
            failures.with_label_values(&[stage.as_str()]);
        }
        for stage in ["source", "stored"] {
            last_size.with_label_values(&[stage]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(backups.clone()),
            Box::new(failures.clone()),
            Box::new(last_success.clone()),
            Box::new(last_attempt.clone()),
            Box::new(next_run.clone()),
            Box::new(in_progress.clone()),
            Box::new(duration.clone()),
            Box::new(last_size.clone()),
            Box::new(retention_deleted.clone()),
            Box::new(snapshots_stored.clone()),
            Box::new(skipped_runs.clone()),
            Box::new(schedule_interval.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        let standby = IntGauge::new(
            "vcbackup_standby",
            "1 while this agent stands by because another replica's agent backs up (--ha).",
        )?;
        registry.register(Box::new(standby.clone()))?;
        Ok(Metrics {
            registry,
            backups,
            failures,
            last_success,
            last_attempt,
            next_run,
            in_progress,
            duration,
            last_size,
            retention_deleted,
            snapshots_stored,
            skipped_runs,
            schedule_interval,
            standby,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<(String, Vec<u8>)> {
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        encoder.encode(&self.registry.gather(), &mut out)?;
        Ok((encoder.format_type().to_string(), out))
    }
}
