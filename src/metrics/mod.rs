//! Every Prometheus metric the agent exports, in one place, with bounded
//! labels: results and stages are fixed sets (enums), never error text.
//! Callers record what happened (`record_success`, `record_failure`, …);
//! no caller names a metric or formats a label.

use anyhow::Result;
use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backup::Stage;
use crate::manifest::Manifest;

/// How a backup attempt ended: the `result` label of `vcbackup_backups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Failed at a stage, counted in `vcbackup_backup_failures_total` too.
    Failure,
    /// Cut off by the shutdown deadline: not the backup's fault, so neither a
    /// failure of any stage nor the last failure in /status.
    Aborted,
    /// No backup taken: the store had not changed since the newest (`--skip-unchanged`).
    Unchanged,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Failure,
        Outcome::Aborted,
        Outcome::Unchanged,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Aborted => "aborted",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// How a read-back of an uploaded backup ended: the `result` label of
/// `vcbackup_verifications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyResult {
    Ok,
    Failed,
}

impl VerifyResult {
    const ALL: [VerifyResult; 2] = [VerifyResult::Ok, VerifyResult::Failed];

    fn label(self) -> &'static str {
        match self {
            VerifyResult::Ok => "ok",
            VerifyResult::Failed => "failed",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    verifications: IntCounterVec,
    verify_duration: Gauge,
    backups: IntCounterVec,
    failures: IntCounterVec,
    last_success: Gauge,
    last_attempt: Gauge,
    next_run: Gauge,
    in_progress: IntGauge,
    duration: Histogram,
    last_size: GaugeVec,
    retention_deleted: IntCounter,
    snapshots_stored: IntGauge,
    skipped_runs: IntCounter,
    schedule_interval: Gauge,
    standby: IntGauge,
    /// `run --incremental-interval`.
    pub continuous: continuous::ContinuousMetrics,
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
        let verifications = IntCounterVec::new(
            Opts::new(
                "vcbackup_verifications_total",
                "Read-backs of uploaded backups (--verify-after-upload), by result.",
            ),
            &["result"],
        )?;
        for result in VerifyResult::ALL {
            verifications.with_label_values(&[result.label()]);
        }
        let verify_duration = Gauge::new(
            "vcbackup_last_verify_duration_seconds",
            "How long the last read-back of an uploaded backup took (--verify-after-upload).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("vcbackup_build_info", "The agent's version; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every label value exists from the start, so increase() sees the first failure.
        for outcome in Outcome::ALL {
            backups.with_label_values(&[outcome.label()]);
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
            Box::new(verifications.clone()),
            Box::new(verify_duration.clone()),
        ];
        #[cfg(target_os = "linux")]
        let collectors = {
            let mut collectors = collectors;
            collectors.push(Box::new(process::ProcessCollector::new()?));
            collectors
        };
        for collector in collectors {
            registry.register(collector)?;
        }
        let standby = IntGauge::new(
            "vcbackup_standby",
            "1 while this agent stands by because another replica's agent backs up (--ha).",
        )?;
        registry.register(Box::new(standby.clone()))?;
        let continuous = continuous::ContinuousMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            verifications,
            verify_duration,
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
            continuous,
        })
    }

    /// A backup attempt starts now.
    pub fn record_attempt(&self, started: DateTime<Utc>) {
        self.last_attempt.set(started.timestamp() as f64);
        self.in_progress.set(1);
    }

    /// A backup was stored, after `seconds`.
    pub fn record_success(&self, manifest: &Manifest, seconds: f64) {
        self.in_progress.set(0);
        self.backups
            .with_label_values(&[Outcome::Success.label()])
            .inc();
        self.last_success.set(manifest.finished.timestamp() as f64);
        self.duration.observe(seconds);
        self.last_size
            .with_label_values(&["source"])
            .set(manifest.sealed.size as f64);
        self.last_size
            .with_label_values(&["stored"])
            .set(manifest.sealed.stored_size as f64);
    }

    /// Something failed at `stage`. A retention failure follows a stored
    /// backup, so it is no failed backup.
    pub fn record_failure(&self, stage: Stage) {
        self.in_progress.set(0);
        if stage != Stage::Retention {
            self.backups
                .with_label_values(&[Outcome::Failure.label()])
                .inc();
        }
        self.failures.with_label_values(&[stage.as_str()]).inc();
    }

    /// A backup was cut off by the shutdown deadline (see [`Outcome::Aborted`]).
    pub fn record_aborted(&self) {
        self.in_progress.set(0);
        self.backups
            .with_label_values(&[Outcome::Aborted.label()])
            .inc();
    }

    /// An uploaded backup was read back and checked, in `seconds`.
    pub fn record_verify(&self, result: VerifyResult, seconds: f64) {
        self.verifications
            .with_label_values(&[result.label()])
            .inc();
        self.verify_duration.set(seconds);
    }

    /// The store was found unchanged at `checked` since the newest backup:
    /// that backup is current as of then, so freshness counts from `checked`.
    pub fn record_unchanged(&self, checked: DateTime<Utc>) {
        self.in_progress.set(0);
        self.backups
            .with_label_values(&[Outcome::Unchanged.label()])
            .inc();
        self.last_success.set(checked.timestamp() as f64);
    }

    /// The newest backup in storage finished at `finished`: read at start, and
    /// while another replica's agent takes the backups.
    pub fn record_newest_stored(&self, finished: DateTime<Utc>) {
        self.last_success.set(finished.timestamp() as f64);
    }

    pub fn record_stored_count(&self, count: usize) {
        self.snapshots_stored.set(count as i64);
    }

    pub fn record_retention_deleted(&self, count: usize) {
        self.retention_deleted.inc_by(count as u64);
    }

    pub fn record_next_run(&self, at: DateTime<Utc>) {
        self.next_run.set(at.timestamp() as f64);
    }

    pub fn record_skipped_runs(&self, count: u64) {
        self.skipped_runs.inc_by(count);
    }

    pub fn record_schedule_interval(&self, interval: chrono::TimeDelta) {
        self.schedule_interval
            .set(interval.num_milliseconds() as f64 / 1000.0);
    }

    pub fn record_standby(&self, standing_by: bool) {
        self.standby.set(i64::from(standing_by));
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<(String, Vec<u8>)> {
        self.continuous.refresh(Utc::now());
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        encoder.encode(&self.registry.gather(), &mut out)?;
        Ok((encoder.format_type().to_string(), out))
    }
}

pub mod continuous;
pub mod fleet;
#[cfg(target_os = "linux")]
mod process;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn sample(metrics: &Metrics, name: &str) -> f64 {
        let (_, body) = metrics.render().unwrap();
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// Fields of /proc/self/stat after the command name, numbered as in proc(5).
    fn proc_stat(field: usize) -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name
            .split(' ')
            .nth(field - 3)
            .unwrap()
            .parse()
            .unwrap()
    }

    fn clk_tck() -> u64 {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn cpu_ticks() -> u64 {
        proc_stat(14) + proc_stat(15)
    }

    #[test]
    fn process_cpu_seconds_match_proc_to_the_tick() {
        let metrics = Metrics::new().unwrap();
        let tck = clk_tck();
        let mut spin = 0u64;
        for _ in 0..1000 {
            // Burn CPU until /proc shows a fraction of a second, then scrape.
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(30) {
                spin = std::hint::black_box(spin.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let before = cpu_ticks();
            if before.is_multiple_of(tck) {
                continue;
            }
            let value = sample(&metrics, "process_cpu_seconds_total");
            let after = cpu_ticks();
            if before / tck != after / tck {
                continue; // crossed a whole second in between: try again
            }
            // Other test threads burn CPU too: /proc before and after bound the scrape.
            let (low, high) = (before as f64 / tck as f64, after as f64 / tck as f64);
            assert!(
                low <= value && value <= high,
                "process_cpu_seconds_total {value}, /proc says {low} to {high}"
            );
            assert_ne!(value.fract(), 0.0, "truncated to whole seconds");
            return;
        }
        panic!("never saw a fractional CPU time");
    }

    #[test]
    fn process_start_time_and_limits_match_proc() {
        let metrics = Metrics::new().unwrap();
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let boot: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let start = boot as f64 + proc_stat(22) as f64 / clk_tck() as f64;
        assert_eq!(sample(&metrics, "process_start_time_seconds"), start);

        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let max_open: f64 = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(sample(&metrics, "process_max_fds"), max_open);
        assert!(sample(&metrics, "process_open_fds") >= 3.0);
        assert!(sample(&metrics, "process_threads") >= 1.0);
        let resident = sample(&metrics, "process_resident_memory_bytes");
        assert!(resident > 1e6, "resident memory {resident}");
        assert!(sample(&metrics, "process_virtual_memory_bytes") > resident);
    }
}
