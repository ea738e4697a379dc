//! The standard `process_*` metrics, read from /proc at each scrape.
//! prometheus' own collector divides CPU ticks by CLK_TCK in integers (0.26 s
//! of CPU showed as 0) and truncates the start time to whole seconds.

use std::sync::Mutex;

use anyhow::Result;
use procfs::process::{LimitValue, Process};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

use crate::lock::lock;

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
        let _collecting = lock(&self.collecting);
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
                    i64::try_from(stat.rss.saturating_mul(procfs::page_size())).unwrap_or(i64::MAX),
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
