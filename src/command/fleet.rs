//! `vcbackup fleet`: every virtual cluster under a destination, printed once
//! (an error when one is stale or failed), or served as gauges (`--listen`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono::Utc;

use crate::fleet::{self, Limits, Status};
use crate::listing::OutputFormat;
use crate::storage::Destination;

pub struct FleetConfig {
    pub destination: Destination,
    pub limits: Limits,
    pub output: OutputFormat,
    /// Also print the requests the listing took.
    pub verbose: bool,
    /// Serve the exporter here instead of printing once.
    pub listen: Option<SocketAddr>,
    pub refresh: Duration,
}

pub async fn run(config: FleetConfig) -> Result<()> {
    let FleetConfig {
        destination,
        limits,
        output,
        verbose,
        listen,
        refresh,
    } = config;
    if let Some(listen) = listen {
        return fleet::exporter::serve(destination, limits, listen, refresh).await;
    }
    let survey = fleet::survey(&destination, limits).await?;
    let now = Utc::now();
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&fleet::json(&survey.clusters, now))?
        ),
        OutputFormat::Table => print!("{}", fleet::table(&survey.clusters, now)),
    }
    if verbose {
        eprintln!(
            "requests: {} delimiter LIST for the cluster names, {} LIST (one per cluster), 0 GET",
            survey.delimiter_lists, survey.lists
        );
    }
    let attention: Vec<String> = survey
        .clusters
        .iter()
        .filter(|c| matches!(c.status, Status::Stale | Status::Failed))
        .map(|c| format!("{} ({}: {})", c.name, c.status.as_str(), c.reason))
        .collect();
    if !attention.is_empty() {
        bail!(
            "fleet {destination}: {} of {} virtual clusters stale or failed: {}",
            attention.len(),
            survey.clusters.len(),
            attention.join(", ")
        );
    }
    Ok(())
}
