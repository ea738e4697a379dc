//! Taking backups: `backup`, `run` and `prune`, and what they share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono_tz::Tz;
use clap::Args;

use super::drill::{AfterUploadArgs, SkipArgs};
use super::target::StorageArgs;
use super::values::{parse_age, parse_interval, parse_schedule, parse_timezone, parse_wait};
use crate::background::Priority;
use crate::backup::Companions;
use crate::command::backup::BackupConfig;
use crate::command::prune::PruneConfig;
use crate::daemon::DaemonConfig;
use crate::pipeline::{Compression, Recipients, Sealing};
use crate::retention::RetentionPolicy;
use crate::schedule::{Age, Schedule};
use crate::store::etcd::{EtcdOptions, EtcdTls};
use crate::store::{HaMode, SourceConfig, SourceSpec};

/// Where a backup comes from and how it is sealed.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backing store: `auto` (found under --data-dir: `state.db`, `server/db/state.db`, or
    /// embedded etcd), the path of kine's SQLite database, or an etcd endpoint
    /// `https://HOST:PORT` / `http://HOST:PORT` (deployed etcd: `https://<release>-etcd:2379`).
    #[arg(
        long,
        env = "VCBACKUP_SOURCE",
        value_name = "auto|PATH|URL",
        default_value = "auto"
    )]
    pub source: String,

    #[command(flatten)]
    pub source_options: SourceArgs,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub sealing: SealingArgs,

    #[command(flatten)]
    pub vcluster_config: VclusterConfigArgs,

    /// How a backup competes with the control plane for CPU and disk: `background` runs it in
    /// the idle CPU and I/O classes (full speed on an idle node, out of the way of kine's commits
    /// on a busy one); `normal` competes as any process does (faster on a busy node, felt there).
    #[arg(long, env = "VCBACKUP_PRIORITY", value_enum, default_value_t = Priority::Background)]
    pub priority: Priority,
}

/// The vCluster config saved with every backup, and the release it belongs to.
#[derive(Debug, Args)]
pub struct VclusterConfigArgs {
    /// vCluster's merged values, saved (encrypted like the backup) beside every backup so that
    /// `export` can build the release entry `vcluster create --restore` reads. Mount the pod
    /// volume `vcluster-config` at /var/lib/vcluster. A missing file only warns.
    #[arg(
        long,
        env = "VCBACKUP_VCLUSTER_CONFIG",
        value_name = "FILE",
        default_value = "/var/lib/vcluster/config.yaml"
    )]
    pub vcluster_config: PathBuf,

    /// The virtual cluster's host namespace, recorded with the config.
    /// [default: the pod's namespace, from its service account]
    #[arg(long, env = "VCBACKUP_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// The vCluster chart version, recorded with the config (the chart does not expose it in
    /// the pod, so the values file sets it).
    #[arg(long, env = "VCBACKUP_CHART_VERSION", value_name = "VERSION")]
    pub chart_version: Option<String>,

    /// The virtual cluster's PKI (its CAs, service-account keys and kubeconfigs, which vCluster
    /// keeps in the host Secret `<release>-certs`), saved (encrypted like the backup) beside
    /// every backup, so that a restore on a new host keeps the cluster's identity. A missing
    /// directory only warns. [default: <data-dir>/pki]
    #[arg(long, env = "VCBACKUP_PKI_DIR", value_name = "DIR")]
    pub pki_dir: Option<PathBuf>,
}

/// `vcbackup backup`: one backup, then the sweep of what killed agents left.
#[derive(Debug, Args)]
pub struct BackupNowArgs {
    #[command(flatten)]
    pub backup: BackupArgs,

    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// Where `--source auto` looks, and how to reach etcd.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The control plane's data volume: `--source auto` looks here, and the etcd client
    /// certificates default to the vCluster files under `<data-dir>/pki/`.
    #[arg(
        long,
        env = "VCBACKUP_DATA_DIR",
        value_name = "DIR",
        default_value = "/data"
    )]
    pub data_dir: PathBuf,

    /// CA certificate of etcd's server certificate. [default: <data-dir>/pki/etcd/ca.crt]
    #[arg(long, env = "VCBACKUP_ETCD_CACERT", value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,

    /// Client certificate for etcd. [default: <data-dir>/pki/apiserver-etcd-client.crt]
    #[arg(long, env = "VCBACKUP_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,

    /// Client private key for etcd. [default: <data-dir>/pki/apiserver-etcd-client.key]
    #[arg(long, env = "VCBACKUP_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,

    /// How long to wait for the etcd certificate files, which the vCluster syncer copies in
    /// when the pod starts (at most 366d).
    #[arg(
        long,
        env = "VCBACKUP_WAIT_FOR_CERTS",
        value_name = "DURATION",
        default_value = "120s",
        value_parser = parse_wait
    )]
    pub wait_for_certs: Duration,
}

#[derive(Debug, Args)]
pub struct SealingArgs {
    /// Encrypt to this public key: an age X25519 recipient (`age1…`) or an SSH public key
    /// (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable; in the environment, comma- or newline-separated.
    #[arg(long = "recipient", env = "VCBACKUP_RECIPIENTS", value_name = "KEY")]
    pub recipients: Vec<String>,

    /// A file of recipients, one per line (`#` starts a comment). Repeatable.
    #[arg(
        long = "recipients-file",
        env = "VCBACKUP_RECIPIENTS_FILE",
        value_name = "FILE"
    )]
    pub recipients_files: Vec<PathBuf>,

    /// Store backups unencrypted. Without this, a recipient is required.
    #[arg(long, env = "VCBACKUP_NO_ENCRYPTION")]
    pub no_encryption: bool,

    /// zstd compression level, 1 to 19. Levels above 6 are too slow for a sidecar.
    #[arg(long, env = "VCBACKUP_COMPRESSION_LEVEL", default_value_t = 3)]
    pub compression_level: i32,

    /// zstd worker threads.
    #[arg(long, env = "VCBACKUP_COMPRESSION_THREADS", default_value_t = 2)]
    pub compression_threads: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub backup: BackupArgs,

    /// When to back up: 5-field cron (`0 */12 * * *`), `@hourly`, `@daily`, `@weekly`, or
    /// `@every 15m` (at most `@every 366d`).
    #[arg(long, env = "VCBACKUP_SCHEDULE", default_value = "@hourly", value_parser = parse_schedule)]
    pub schedule: Schedule,

    /// The IANA time zone the schedule is read in (e.g. `Europe/Berlin`).
    #[arg(long, env = "VCBACKUP_TIMEZONE", default_value = "UTC", value_parser = parse_timezone)]
    pub timezone: Tz,

    /// Delay each run by a random amount up to this (e.g. `5m`), so many virtual clusters on
    /// one schedule do not hit storage at the same second. At most 366d.
    #[arg(long, env = "VCBACKUP_JITTER", default_value = "0s", value_name = "DURATION", value_parser = parse_wait)]
    pub jitter: Duration,

    /// Do not take a backup at start when the newest one is older than one schedule interval.
    #[arg(long, env = "VCBACKUP_NO_CATCH_UP")]
    pub no_catch_up: bool,

    #[command(flatten)]
    pub retention: RetentionArgs,

    #[command(flatten)]
    pub after_upload: AfterUploadArgs,

    #[command(flatten)]
    pub skip: SkipArgs,

    /// Continuous backups: between full backups, ship what changed in the store (kine rows,
    /// etcd events) this often (e.g. `30s`) as increments of the newest full backup, so a
    /// restore loses at most about one interval. An interval without changes ships nothing.
    /// 1s to 366d; off by default; see docs/continuous-backups.md.
    #[arg(long, env = "VCBACKUP_INCREMENTAL_INTERVAL", value_name = "DURATION", value_parser = parse_interval)]
    pub incremental_interval: Option<Duration>,

    /// Address (IP:PORT) for /metrics, /livez, /readyz and /status.
    #[arg(
        long,
        env = "VCBACKUP_LISTEN",
        default_value = "0.0.0.0:9464",
        value_name = "IP:PORT"
    )]
    pub listen: SocketAddr,

    /// After SIGTERM, how long a running backup may take to finish before it is aborted
    /// (the vCluster chart grants the pod 10s). At most 366d.
    #[arg(long, env = "VCBACKUP_SHUTDOWN_TIMEOUT", default_value = "8s", value_name = "DURATION", value_parser = parse_wait)]
    pub shutdown_timeout: Duration,

    /// Take a final backup on SIGTERM, within --shutdown-timeout (sleep mode scales the pod to zero).
    #[arg(long, env = "VCBACKUP_BACKUP_ON_SHUTDOWN")]
    pub backup_on_shutdown: bool,

    /// Which agents back up when the control plane has several replicas: `leader` only while
    /// the etcd member this agent reaches is the leader (the others stand by), `every-replica`,
    /// or `auto`: `leader` for the pod's own embedded etcd member (a loopback endpoint),
    /// `every-replica` otherwise.
    #[arg(long, env = "VCBACKUP_HA", value_enum, default_value_t = HaMode::Auto)]
    pub ha: HaMode,
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Delete backups older than this many days (vCluster's retention.period); 0: no age limit.
    /// The newest backup is never deleted.
    #[arg(long, env = "VCBACKUP_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// Keep at most this many backups (vCluster's retention.maxSnapshots); 0: no count limit.
    #[arg(long, env = "VCBACKUP_MAX_SNAPSHOTS", default_value_t = 30)]
    pub max_snapshots: u32,

    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// What a killed agent left behind, and when it counts as abandoned.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Abort unfinished S3 multipart uploads under this virtual cluster's prefix, and remove
    /// `.partial-*` files in a directory destination, that an agent killed mid-backup left and
    /// that started (S3) or were last written (directory) longer ago than this. Keep it longer
    /// than any backup takes: a running S3 upload that is older is aborted too. At most 100y.
    #[arg(long, env = "VCBACKUP_ABORT_UPLOADS_AFTER", default_value = "24h", value_name = "DURATION", value_parser = parse_age)]
    pub abort_uploads_after: Age,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Print the plan without deleting anything.
    #[arg(long, env = "VCBACKUP_DRY_RUN")]
    pub dry_run: bool,
}

impl SealingArgs {
    pub fn resolve(&self) -> Result<Arc<Sealing>> {
        let compression = Compression::new(self.compression_level, self.compression_threads)?;
        let recipients = Recipients::parse(&self.recipients, &self.recipients_files)?;
        let recipients = match (recipients.is_empty(), self.no_encryption) {
            (false, false) => Some(recipients),
            (true, true) => None,
            (true, false) => bail!(
                "no recipient: give --recipient age1… (or VCBACKUP_RECIPIENTS) with the public key backups are encrypted to, or --no-encryption to store them unencrypted"
            ),
            (false, true) => bail!("--no-encryption contradicts the recipients given; choose one"),
        };
        Ok(Arc::new(Sealing {
            compression,
            recipients,
        }))
    }
}

impl BackupArgs {
    pub fn source(&self) -> Result<SourceConfig> {
        let options = &self.source_options;
        Ok(SourceConfig {
            spec: SourceSpec::parse(&self.source)?,
            data_dir: options.data_dir.clone(),
            etcd: EtcdOptions {
                tls: EtcdTls {
                    cacert: options.etcd_cacert.clone(),
                    cert: options.etcd_cert.clone(),
                    key: options.etcd_key.clone(),
                },
                data_dir: options.data_dir.clone(),
                wait_for_certs: options.wait_for_certs,
            },
            // An operator's one-off backup is taken wherever it is asked for.
            ha: HaMode::EveryReplica,
        })
    }
}

impl BackupArgs {
    /// What is stored beside each backup: the config, and the PKI (by default
    /// where vCluster keeps it on the data volume).
    pub fn companions(&self, vcluster: &str) -> Companions {
        let args = &self.vcluster_config;
        let pki_dir = args
            .pki_dir
            .clone()
            .unwrap_or_else(|| self.source_options.data_dir.join("pki"));
        Companions {
            config: crate::vconfig::ConfigSource::new(
                args.vcluster_config.clone(),
                vcluster,
                args.namespace.clone(),
                args.chart_version.clone(),
            ),
            pki: crate::pki::PkiSource::new(pki_dir),
        }
    }
}

impl RetentionArgs {
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age_days: self.retention_days,
            max_count: self.max_snapshots,
        }
    }
}

impl BackupNowArgs {
    /// The source and sealing checked, the storage opened (in that order).
    pub async fn resolve(self) -> Result<BackupConfig> {
        let source = self.backup.source()?;
        let sealing = self.backup.sealing.resolve()?;
        let (target, storage) = self.backup.storage.open().await?;
        Ok(BackupConfig {
            source,
            sealing,
            storage,
            companions: self.backup.companions(&target.vcluster),
            vcluster: target.vcluster,
            stale_upload_age: self.sweep.abort_uploads_after,
        })
    }
}

impl PruneArgs {
    pub async fn resolve(self) -> Result<PruneConfig> {
        let policy = self.retention.policy();
        let (_, storage) = self.storage.open().await?;
        Ok(PruneConfig {
            storage,
            policy,
            stale_upload_age: self.retention.sweep.abort_uploads_after,
            dry_run: self.dry_run,
        })
    }
}

impl RunArgs {
    pub fn resolve(self) -> Result<DaemonConfig> {
        let target = self.backup.storage.resolve()?;
        let source = SourceConfig {
            ha: self.ha,
            ..self.backup.source()?
        };
        Ok(DaemonConfig {
            source,
            sealing: self.backup.sealing.resolve()?,
            destination: target.destination,
            schedule: self.schedule,
            timezone: self.timezone,
            jitter: self.jitter,
            catch_up: !self.no_catch_up,
            retention: self.retention.policy(),
            stale_upload_age: self.retention.sweep.abort_uploads_after.delta,
            listen: self.listen,
            shutdown_timeout: self.shutdown_timeout,
            backup_on_shutdown: self.backup_on_shutdown,
            verify_after_upload: self.after_upload.verify_after_upload,
            skip_unchanged: self
                .skip
                .skip_unchanged
                .then_some(self.skip.max_unchanged_age),
            incremental_interval: self.incremental_interval,
            companions: self.backup.companions(&target.vcluster),
            vcluster: target.vcluster,
        })
    }
}
