//! The gauges `fleet --listen` serves: one series per virtual cluster, label
//! `vcluster`, rebuilt from each survey so that a cluster whose folder is gone
//! drops out rather than keeping its last value.

use anyhow::Result;
use chrono::{DateTime, Utc};
use prometheus::{Encoder, Gauge, GaugeVec, IntCounter, Opts, Registry, TextEncoder};

use crate::fleet::Cluster;

pub struct FleetMetrics {
    registry: Registry,
    last_success: GaugeVec,
    last_verify: GaugeVec,
    last_verify_success: GaugeVec,
    backups: GaugeVec,
    bytes: GaugeVec,
    refreshed: Gauge,
    refresh_failures: IntCounter,
}

impl FleetMetrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let vec = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["vcluster"]);
        let metrics = FleetMetrics {
            last_success: vec(
                "vcbackup_fleet_last_success_timestamp_seconds",
                "Since when the cluster's backups are known current: the newest backup's start, the last check that found the store unchanged since it, or the newest increment after it (0: no backup).",
            )?,
            last_verify: vec(
                "vcbackup_fleet_last_verify_timestamp_seconds",
                "When the last restore drill of any of the cluster's backups ran (0: never).",
            )?,
            last_verify_success: vec(
                "vcbackup_fleet_last_verify_success",
                "1 if the last restore drill passed, 0 if it failed; absent when none ran.",
            )?,
            backups: vec("vcbackup_fleet_backups", "Complete backups in storage.")?,
            bytes: vec(
                "vcbackup_fleet_bytes",
                "Bytes of every object under the cluster's folder.",
            )?,
            refreshed: Gauge::new(
                "vcbackup_fleet_last_refresh_timestamp_seconds",
                "When the destination was last listed successfully.",
            )?,
            refresh_failures: IntCounter::new(
                "vcbackup_fleet_refresh_failures_total",
                "Listings of the destination that failed (the gauges keep the last good survey).",
            )?,
            registry,
        };
        for collector in [
            &metrics.last_success,
            &metrics.last_verify,
            &metrics.last_verify_success,
            &metrics.backups,
            &metrics.bytes,
        ] {
            metrics.registry.register(Box::new(collector.clone()))?;
        }
        metrics
            .registry
            .register(Box::new(metrics.refreshed.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.refresh_failures.clone()))?;
        Ok(metrics)
    }

    /// A survey finished at `at`: the gauges now show exactly its clusters.
    pub fn record_survey(&self, clusters: &[Cluster], at: DateTime<Utc>) {
        for vec in [
            &self.last_success,
            &self.last_verify,
            &self.last_verify_success,
            &self.backups,
            &self.bytes,
        ] {
            vec.reset();
        }
        let seconds = |t: Option<DateTime<Utc>>| t.map_or(0.0, |t| t.timestamp() as f64);
        for c in clusters {
            let label = [c.name.as_str()];
            self.last_success
                .with_label_values(&label)
                .set(seconds(c.current_since));
            self.last_verify
                .with_label_values(&label)
                .set(seconds(c.last_verify.as_ref().map(|d| d.time)));
            if let Some(drill) = &c.last_verify {
                self.last_verify_success
                    .with_label_values(&label)
                    .set(f64::from(u8::from(drill.ok)));
            }
            self.backups.with_label_values(&label).set(c.backups as f64);
            self.bytes.with_label_values(&label).set(c.bytes as f64);
        }
        self.refreshed.set(at.timestamp() as f64);
    }

    pub fn record_refresh_failure(&self) {
        self.refresh_failures.inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<(String, Vec<u8>)> {
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        encoder.encode(&self.registry.gather(), &mut out)?;
        Ok((encoder.format_type().to_string(), out))
    }
}
