//! Arguments of the commands that check backups rather than take them:
//! `verify` (restore drills), and the sidecar's own check after a backup.

use std::path::PathBuf;

use clap::Args;

use super::{IdentityArgs, StorageArgs};

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
