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

/// The standard `process_*` metrics, read from /proc at each scrape.
/// prometheus' own collector divides CPU ticks by CLK_TCK in integers (0.26 s
/// of CPU showed as 0) and truncates the start time to whole seconds.
#[cfg(target_os = "linux")]
mod process {
    use std::sync::Mutex;

    use anyhow::Result;
    use procfs::process::{LimitValue, Process};
    use prometheus::core::{Collector, Desc};
    use prometheus::proto::MetricFamily;
    use prometheus::{Counter, Gauge, IntGauge};

    pub struct ProcessCollector {
        descs: Vec<Desc>,
        cpu: Counter,
        open_fds: IntGauge,
        max_fds: IntGauge,
        virtual_memory: IntGauge,
        resident_memory: IntGauge,
        start_time: Gauge,
        threads: IntGauge,
        /// The CPU counter moves by the difference to /proc: two scrapes at once must not both add it.
        collecting: Mutex<()>,
    }

    impl ProcessCollector {
        pub fn new() -> Result<Self> {
            let cpu = Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?;
            let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
            let max_fds = IntGauge::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?;
            let virtual_memory = IntGauge::new(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?;
            let resident_memory = IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?;
            let start_time = Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )?;
            let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")?;
            // Fixed for the process's life: read once. Without /proc it stays 0, like the rest.
            if let (Ok(stat), Ok(boot)) = (
                Process::myself().and_then(|p| p.stat()),
                procfs::boot_time_secs(),
            ) {
                start_time.set(boot as f64 + ticks_to_seconds(stat.starttime));
            }
            let mut descs = Vec::new();
            for collector in [
                &cpu as &dyn Collector,
                &open_fds,
                &max_fds,
                &virtual_memory,
                &resident_memory,
                &start_time,
                &threads,
            ] {
                descs.extend(collector.desc().into_iter().cloned());
            }
            Ok(ProcessCollector {
                descs,
                cpu,
                open_fds,
                max_fds,
                virtual_memory,
                resident_memory,
                start_time,
                threads,
                collecting: Mutex::new(()),
            })
        }
    }

    fn ticks_to_seconds(ticks: u64) -> f64 {
        ticks as f64 / procfs::ticks_per_second() as f64
    }

    impl Collector for ProcessCollector {
        fn desc(&self) -> Vec<&Desc> {
            self.descs.iter().collect()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let _collecting = self.collecting.lock().unwrap_or_else(|e| e.into_inner());
            // A scrape never fails for a missing /proc file: that metric keeps its last value.
            if let Ok(me) = Process::myself() {
                if let Ok(stat) = me.stat() {
                    let cpu = ticks_to_seconds(stat.utime + stat.stime);
                    let delta = cpu - self.cpu.get();
                    if delta > 0.0 {
                        self.cpu.inc_by(delta);
                    }
                    self.virtual_memory
                        .set(i64::try_from(stat.vsize).unwrap_or(i64::MAX));
                    self.resident_memory.set(
                        i64::try_from(stat.rss.saturating_mul(procfs::page_size()))
                            .unwrap_or(i64::MAX),
                    );
                    self.threads.set(stat.num_threads);
                }
                if let Ok(count) = me.fd_count() {
                    self.open_fds.set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                if let Ok(limits) = me.limits() {
                    self.max_fds.set(match limits.max_open_files.soft_limit {
                        LimitValue::Value(max) => i64::try_from(max).unwrap_or(i64::MAX),
                        LimitValue::Unlimited => i64::MAX,
                    });
                }
            }
            let mut families = Vec::with_capacity(7);
            for collector in [
                &self.cpu as &dyn Collector,
                &self.open_fds,
                &self.max_fds,
                &self.virtual_memory,
                &self.resident_memory,
                &self.start_time,
                &self.threads,
            ] {
                families.extend(collector.collect());
            }
            families
        }
    }
}

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
