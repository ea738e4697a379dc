//! Command-line interface. Every option is also an environment variable
//! `VCBACKUP_<NAME>`, since a Helm sidecar is configured through `env:`.
//! Arguments are checked and turned into typed values (`resolve`: each
//! command's configuration, its storage opened) before anything runs; the
//! `value_parser`s are in `values`.

mod backup;
mod drill;
mod read;
mod target;
mod values;

pub use backup::*;
pub use drill::{FleetArgs, VerifyArgs};
pub use read::*;

use clap::{Parser, Subcommand, ValueEnum};
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
    /// Restore drill: read a backup back and check it as a restore would (with --identity:
    /// decrypted, the database checked), without restoring. Records the result beside it.
    Verify(VerifyArgs),
    /// Every virtual cluster under a destination: newest backup, age, size, last drill, status.
    Fleet(FleetArgs),
}
