//! Command-line interface. Every option is also an environment variable
//! `VCBACKUP_<NAME>`, since a Helm sidecar is configured through `env:`.
//! Arguments are checked and turned into typed values (`resolve`) before
//! anything runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::background::Priority;
use crate::catalog::Selector;
use crate::daemon::DaemonConfig;
use crate::pipeline::{Compression, Identities, Recipients, Sealing};
use crate::retention::RetentionPolicy;
use crate::schedule::{self, Schedule};
use crate::source::kine::IntegrityCheck;
use crate::source::{EtcdOptions, EtcdTls, HaMode, SourceConfig, SourceSpec};
use crate::storage::{Destination, Storage};

#[derive(Debug, Parser)]
#[command(
    name = "vcbackup",
    version,
    about = "Consistent, encrypted backups of a vCluster control plane's backing store",
    long_about = "Consistent, encrypted backups of a vCluster control plane's backing store.\n\n\
        Copies kine's SQLite database (or an etcd snapshot) while the control plane runs, \
        compresses it with zstd, encrypts it with age to public keys only, and stores it in \
        S3 or a directory. The same binary lists, decrypts and restores backups."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "VCBACKUP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter, as in RUST_LOG (e.g. `info`, `vcbackup=debug`).
    #[arg(long, env = "VCBACKUP_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as the sidecar: back up on a schedule, apply retention, serve metrics and health.
    Run(RunArgs),
    /// Take one backup now and exit.
    Backup(BackupNowArgs),
    /// List the backups in the destination, newest first.
    List(ListArgs),
    /// Apply retention now: delete backups older than --retention-days or beyond --max-snapshots.
    Prune(PruneArgs),
    /// Decrypt and decompress one downloaded backup file (offline; no storage needed).
    Decrypt(DecryptArgs),
    /// Restore a backup from the destination to a file, verified before it replaces anything.
    Restore(RestoreArgs),
    /// Write a backup as vCluster's snapshot archive (.tar.gz) for `vcluster restore` and
    /// `vcluster create --restore`. The archive is NOT age-encrypted: vCluster cannot read age.
    Export(ExportArgs),
}

/// Where backups live.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Where backups go: `file:///DIR` or `s3://BUCKET/PREFIX`. Backups of one virtual cluster live
    /// under `<destination>/<name>/`. S3 options go in the query, e.g.
    /// `s3://b/p?region=eu-west-1&server-side-encryption=aws:kms&kms-key-id=alias/k`: `region`,
    /// `endpoint` and `force-path-style=true` (MinIO, Ceph), `server-side-encryption` (AES256 or
    /// aws:kms), `kms-key-id`, `profile`, `checksum=when-required` (servers that reject newer
    /// checksum headers), `part-size` (8MiB) and `concurrency` (2 parts at once). Credentials come
    /// from the AWS default chain (environment, profile, IRSA, EKS Pod Identity, instance metadata);
    /// the standard AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_S3 and AWS_MAX_ATTEMPTS also apply.
    #[arg(long, env = "VCBACKUP_DESTINATION", value_name = "URL")]
    pub destination: String,

    /// The virtual cluster's name, used in object names and as the folder under the destination.
    /// [default: $VCLUSTER_NAME, else this pod's name without its StatefulSet ordinal, e.g. `demo`
    /// in pod `demo-0`]
    #[arg(long, env = "VCBACKUP_NAME")]
    pub name: Option<String>,
}

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
    /// when the pod starts.
    #[arg(
        long,
        env = "VCBACKUP_WAIT_FOR_CERTS",
        value_name = "DURATION",
        default_value = "120s",
        value_parser = humantime::parse_duration
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
    /// `@every 15m`.
    #[arg(long, env = "VCBACKUP_SCHEDULE", default_value = "@hourly", value_parser = Schedule::parse)]
    pub schedule: Schedule,

    /// The IANA time zone the schedule is read in (e.g. `Europe/Berlin`).
    #[arg(long, env = "VCBACKUP_TIMEZONE", default_value = "UTC", value_parser = schedule::parse_timezone)]
    pub timezone: Tz,

    /// Delay each run by a random amount up to this (e.g. `5m`), so many virtual clusters on
    /// one schedule do not hit storage at the same second.
    #[arg(long, env = "VCBACKUP_JITTER", default_value = "0s", value_name = "DURATION", value_parser = schedule::parse_duration)]
    pub jitter: Duration,

    /// Do not take a backup at start when the newest one is older than one schedule interval.
    #[arg(long, env = "VCBACKUP_NO_CATCH_UP")]
    pub no_catch_up: bool,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// Address (IP:PORT) for /metrics, /livez, /readyz and /status.
    #[arg(
        long,
        env = "VCBACKUP_LISTEN",
        default_value = "0.0.0.0:9464",
        value_name = "IP:PORT"
    )]
    pub listen: SocketAddr,

    /// After SIGTERM, how long a running backup may take to finish before it is aborted
    /// (the vCluster chart grants the pod 10s).
    #[arg(long, env = "VCBACKUP_SHUTDOWN_TIMEOUT", default_value = "8s", value_name = "DURATION", value_parser = schedule::parse_duration)]
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
    /// than any backup takes: a running S3 upload that is older is aborted too.
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

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Output format.
    #[arg(long, short, env = "VCBACKUP_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The private key that opens the backup: an age identity file (`AGE-SECRET-KEY-1…`, from
    /// age-keygen) or an unencrypted OpenSSH private key. Not needed for unencrypted backups.
    #[arg(long, short, env = "VCBACKUP_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// The backup file, or `-` for standard input. [default: standard input]
    #[arg(value_name = "FILE|-")]
    pub input: Option<PathBuf>,

    /// Where the plaintext goes, or `-` for standard output. [default: standard output]
    #[arg(long, short, env = "VCBACKUP_DECRYPT_OUTPUT", value_name = "OUT|-")]
    pub output: Option<PathBuf>,

    /// Replace OUT if it exists.
    #[arg(long, env = "VCBACKUP_DECRYPT_FORCE")]
    pub force: bool,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup to restore: a name from `vcbackup list`, or `latest`.
    #[arg(value_name = "NAME|latest", default_value = "latest")]
    pub backup: String,

    /// Restore the newest backup taken at or before this time (RFC 3339, e.g. 2026-11-20T08:00:00Z).
    #[arg(long, env = "VCBACKUP_RESTORE_AT", value_name = "TIME", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,

    /// The file to write: kine's state.db (stop the control plane first), or for an etcd backup
    /// the snapshot file for `etcdutl snapshot restore`.
    #[arg(long, env = "VCBACKUP_RESTORE_TO", value_name = "PATH")]
    pub to: PathBuf,

    /// Replace the target if it exists.
    #[arg(long, env = "VCBACKUP_RESTORE_FORCE", conflicts_with = "if_missing")]
    pub force: bool,

    /// Do nothing, successfully, if the target exists (for an init container).
    #[arg(long, env = "VCBACKUP_RESTORE_IF_MISSING")]
    pub if_missing: bool,

    /// Also write the vCluster config saved with the backup (its Helm values) to this file.
    #[arg(long, env = "VCBACKUP_RESTORE_CONFIG_OUT", value_name = "FILE")]
    pub config_out: Option<PathBuf>,

    /// Move kine's revision forward by this much after restoring, so that clients that watched
    /// the old store never see revisions go backwards (as `vcluster restore` does). 0 keeps it.
    #[arg(long, env = "VCBACKUP_BUMP_REVISION", default_value_t = 1000)]
    pub bump_revision: u64,

    /// How a restored kine database is checked before it replaces anything: `quick` (SQLite's
    /// quick_check: every page and b-tree, records, NOT NULL; about 1 s per GiB) or `full`
    /// (integrity_check: also every index entry against its row, UNIQUE; about 5 times longer).
    #[arg(long, env = "VCBACKUP_RESTORE_INTEGRITY_CHECK", value_enum, default_value_t = IntegrityCheck::Quick)]
    pub integrity_check: IntegrityCheck,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The backup to export: a name from `vcbackup list`, or `latest`. Not with --input.
    #[arg(value_name = "NAME|latest")]
    pub backup: Option<String>,

    /// Export the newest backup taken at or before this time (RFC 3339).
    #[arg(long, env = "VCBACKUP_EXPORT_AT", value_name = "TIME", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,

    /// A downloaded backup file (`….zst.age`) instead of one in the destination; its manifest
    /// (`FILE.json`) and saved config are read from beside it when there.
    #[arg(long, env = "VCBACKUP_EXPORT_INPUT", value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Where the backups are (as for `list`); not needed with --input.
    #[arg(long, env = "VCBACKUP_DESTINATION", value_name = "URL")]
    pub destination: Option<String>,

    /// The virtual cluster's name, the folder under the destination. [default: as for `list`]
    #[arg(long, env = "VCBACKUP_NAME")]
    pub name: Option<String>,

    /// The archive to write (`NAME.tar.gz`), or `-` for standard output. The archive is NOT
    /// encrypted: it holds every secret of the virtual cluster in plain text.
    #[arg(long, short, env = "VCBACKUP_EXPORT_OUTPUT", value_name = "FILE|-")]
    pub output: Option<PathBuf>,

    /// Upload the archive to `s3://BUCKET/DIR/NAME.tar.gz` instead (same options in the query as
    /// --destination, e.g. `?region=eu-west-1&server-side-encryption=aws:kms`), for
    /// `vcluster create NAME --restore s3://BUCKET/DIR/NAME.tar.gz`. The object is NOT
    /// age-encrypted, since vCluster cannot read age: use server-side encryption and a bucket
    /// policy that keeps it private.
    #[arg(long, env = "VCBACKUP_EXPORT_TO", value_name = "URL")]
    pub to: Option<String>,

    /// Replace the output file or object if it exists.
    #[arg(long, env = "VCBACKUP_EXPORT_FORCE")]
    pub force: bool,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

impl ExportArgs {
    /// Where the archive goes: exactly one of -o and --to.
    pub fn output(&self) -> Result<crate::export::Output> {
        use crate::export::Output;
        match (&self.output, &self.to) {
            (Some(_), Some(_)) => bail!("give either -o FILE or --to s3://…, not both"),
            (None, None) => bail!(
                "no output: give -o FILE.tar.gz (or -o - for standard output) or --to s3://BUCKET/DIR/NAME.tar.gz"
            ),
            (Some(path), None) if path.as_os_str() == "-" => Ok(Output::Stdout),
            (Some(path), None) => Ok(Output::File(path.clone())),
            (None, Some(url)) => Ok(Output::S3(url.clone())),
        }
    }

    /// The backup to export, in storage (`None`: the file given by --input).
    pub fn stored(&self) -> Result<Option<(StorageArgs, Selector)>> {
        if let Some(input) = &self.input {
            if self.backup.is_some() || self.at.is_some() {
                bail!(
                    "--input {} is the backup to export; give no backup name or --at with it",
                    input.display()
                );
            }
            return Ok(None);
        }
        let destination = self.destination.clone().context(
            "no backup to export: give --destination URL (and a NAME or latest), or --input FILE",
        )?;
        let storage = StorageArgs {
            destination,
            name: self.name.clone(),
        };
        let selector = Selector::new(Some(self.backup.as_deref().unwrap_or("latest")), self.at)?;
        storage.resolve()?;
        Ok(Some((storage, selector)))
    }
}

/// Where backups of one virtual cluster live, checked.
pub struct Target {
    pub destination: Destination,
    pub vcluster: String,
}

impl StorageArgs {
    /// Checks the destination and name, then opens that virtual cluster's storage.
    pub async fn open(&self) -> Result<(Target, Box<dyn Storage>)> {
        let target = self.resolve()?;
        let storage = target.destination.open(&target.vcluster).await?;
        Ok((target, storage))
    }

    pub fn resolve(&self) -> Result<Target> {
        let destination = Destination::parse(&self.destination)?;
        let vcluster = match &self.name {
            Some(name) => name.clone(),
            None => default_vcluster_name()?,
        };
        check_vcluster_name(&vcluster)?;
        Ok(Target {
            destination,
            vcluster,
        })
    }
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

impl VclusterConfigArgs {
    pub fn source(&self, vcluster: &str) -> crate::vconfig::ConfigSource {
        crate::vconfig::ConfigSource::new(
            self.vcluster_config.clone(),
            vcluster,
            self.namespace.clone(),
            self.chart_version.clone(),
        )
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

/// A duration to subtract from the wall clock, shown as the operator wrote it.
#[derive(Debug, Clone)]
pub struct Age {
    pub delta: chrono::TimeDelta,
    text: String,
}

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_age(text: &str) -> Result<Age> {
    let age = schedule::parse_duration(text)?;
    let delta =
        chrono::TimeDelta::from_std(age).with_context(|| format!("{text:?} is too long"))?;
    Ok(Age {
        delta,
        text: text.trim().to_string(),
    })
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
            vcluster_config: self.backup.vcluster_config.source(&target.vcluster),
            vcluster: target.vcluster,
        })
    }
}

impl IdentityArgs {
    pub fn load(&self) -> Result<Option<Identities>> {
        self.identity.as_deref().map(Identities::load).transpose()
    }
}

impl RestoreArgs {
    pub fn selector(&self) -> Result<Selector> {
        Selector::new(Some(&self.backup), self.at)
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("invalid time {text:?}: expected RFC 3339, e.g. 2026-11-20T08:00:00Z")
        })
}

/// `VCLUSTER_NAME` (the release name, which the helm-values files set), else the
/// hostname: in a vCluster pod the StatefulSet pod `<release>-<ordinal>`.
fn default_vcluster_name() -> Result<String> {
    if let Some(name) = std::env::var("VCLUSTER_NAME")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
    {
        return Ok(name);
    }
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .context("no --name given and the hostname is unknown: set --name or VCBACKUP_NAME to the virtual cluster's name")?;
    Ok(match hostname.rsplit_once('-') {
        Some((release, ordinal))
            if !release.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) =>
        {
            release.to_string()
        }
        _ => hostname,
    })
}

fn check_vcluster_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if !valid {
        bail!(
            "invalid name {name:?}: expected the virtual cluster's name (lowercase letters, digits, '-' and '.')"
        );
    }
    Ok(())
}
