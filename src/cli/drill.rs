//! Arguments of the commands that check backups rather than take them:
//! `verify` (restore drills), `fleet` (every virtual cluster under a
//! destination), and the sidecar's own checks after and before a backup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;

use super::read::IdentityArgs;
use super::target::StorageArgs;
use super::values::{parse_delta, parse_wait};
use crate::catalog::Selector;
use crate::command::fleet::FleetConfig;
use crate::command::verify::VerifyConfig;
use crate::fleet::Limits;
use crate::listing::OutputFormat;
use crate::storage::{Destination, Storage};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The backup to check: a name from `vcbackup list`, or `latest`.
    #[arg(value_name = "NAME|latest", default_value = "latest")]
    pub backup: String,

    /// Check every backup, not only the one named.
    #[arg(long, env = "VCBACKUP_VERIFY_ALL", conflicts_with = "backup")]
    pub all: bool,

    /// Check every virtual cluster with a folder under --destination (its newest backup, or
    /// every backup with --all); --name is not needed.
    #[arg(long, env = "VCBACKUP_VERIFY_ALL_VCLUSTERS", conflicts_with = "name")]
    pub all_vclusters: bool,

    /// Where the decrypted backup lies while SQLite's integrity check or the bbolt walk reads
    /// it (needs room for one database; removed after each drill). [default: $TMPDIR, else /tmp]
    #[arg(long, env = "VCBACKUP_SCRATCH_DIR", value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// The sidecar's check of each backup it uploads.
#[derive(Debug, Args)]
pub struct AfterUploadArgs {
    /// After each upload, read the backup back once and check its size, SHA-256 and format
    /// against the manifest (no key needed: the pod holds none). A failed check counts as a
    /// failed backup (stage `verify`). Costs one GET of the whole object.
    #[arg(long, env = "VCBACKUP_VERIFY_AFTER_UPLOAD")]
    pub verify_after_upload: bool,
}

/// The sidecar's check before each scheduled backup.
#[derive(Debug, Args)]
pub struct SkipArgs {
    /// Before each scheduled backup, read the store's semantic revision: its newest change
    /// outside Leases, Events, `compact_rev_key*` and `gap-*`, and how many keys lie outside
    /// them. When it equals the newest backup's, take no backup (that one is still current)
    /// and count `result="unchanged"`. Off by default: with it, a restore brings back Leases
    /// and Events as old as the newest backup.
    #[arg(long, env = "VCBACKUP_SKIP_UNCHANGED")]
    pub skip_unchanged: bool,

    /// With --skip-unchanged, take a real backup anyway once the newest is this old, so that
    /// retention and the whole pipeline keep being exercised. At most 100y.
    #[arg(long, env = "VCBACKUP_MAX_UNCHANGED_AGE", default_value = "24h", value_name = "DURATION", value_parser = parse_delta)]
    pub max_unchanged_age: chrono::TimeDelta,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The destination every virtual cluster backs up under: `s3://BUCKET/PREFIX` (same query
    /// options as for `list`) or `file:///DIR`.
    #[arg(long, env = "VCBACKUP_DESTINATION", value_name = "URL")]
    pub destination: String,

    /// A virtual cluster whose newest backup (or unchanged check) is older than this is `stale`
    /// (at most 100y).
    #[arg(long, env = "VCBACKUP_FLEET_MAX_AGE", default_value = "2h", value_name = "DURATION", value_parser = parse_delta)]
    pub max_age: chrono::TimeDelta,

    /// A virtual cluster without a full restore drill (a `verify` with the key) this recent
    /// is `unverified` (at most 100y).
    #[arg(long, env = "VCBACKUP_FLEET_MAX_VERIFY_AGE", default_value = "48h", value_name = "DURATION", value_parser = parse_delta)]
    pub max_verify_age: chrono::TimeDelta,

    /// Output format.
    #[arg(long, short, env = "VCBACKUP_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Also print how many requests the listing took (to standard error).
    #[arg(long, short, env = "VCBACKUP_FLEET_VERBOSE")]
    pub verbose: bool,

    /// Serve the fleet as Prometheus gauges on this address (IP:PORT) instead of printing it
    /// once, refreshing every --refresh.
    #[arg(long, env = "VCBACKUP_FLEET_LISTEN", value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,

    /// How often the exporter (--listen) lists the destination again (at most 366d).
    #[arg(long, env = "VCBACKUP_FLEET_REFRESH", default_value = "5m", value_name = "DURATION", value_parser = parse_wait)]
    pub refresh: Duration,
}

impl VerifyArgs {
    /// The key, the selector and every storage drilled, opened.
    pub async fn resolve(self) -> Result<VerifyConfig> {
        let identities = self.identity.load()?.map(Arc::new);
        let scratch = self.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
        let selector = Selector::new(Some(&self.backup), None)?;
        let clusters: Vec<(String, Box<dyn Storage>)> = if self.all_vclusters {
            let destination = Destination::parse(&self.storage.destination)?;
            let all = destination.open_all().await?;
            if all.is_empty() {
                bail!("verify: no virtual cluster has backups under {destination}");
            }
            all
        } else {
            let (target, storage) = self.storage.open().await?;
            vec![(target.vcluster, storage)]
        };
        Ok(VerifyConfig {
            clusters,
            selector,
            all: self.all,
            identities,
            scratch,
        })
    }
}

impl FleetArgs {
    pub fn resolve(self) -> Result<FleetConfig> {
        Ok(FleetConfig {
            destination: Destination::parse(&self.destination)?,
            limits: Limits {
                max_age: self.max_age,
                max_verify_age: self.max_verify_age,
            },
            output: self.output,
            verbose: self.verbose,
            listen: self.listen,
            refresh: self.refresh,
        })
    }
}
