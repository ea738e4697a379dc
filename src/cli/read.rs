//! Reading backups back: `list`, `decrypt`, `restore` and `export`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;

use super::target::StorageArgs;
use super::values::parse_time;
use crate::catalog::Selector;
use crate::command::decrypt::DecryptConfig;
use crate::command::export::{CertsSecret, ExportConfig};
use crate::command::list::ListConfig;
use crate::command::restore::{RestoreConfig, WriteConfig};
use crate::export::{ExportOptions, Input, Output};
use crate::listing::OutputFormat;
use crate::pipeline::Identities;
use crate::restore::{self, DecryptOptions, RestoreOptions};
use crate::store::kine::IntegrityCheck;

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Output format.
    #[arg(long, short, env = "VCBACKUP_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
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
    /// The backup to restore: `latest` (the newest backup and the increments after it), a
    /// backup's name from `vcbackup list` (that backup alone), or an increment's name (its
    /// backup and the increments up to it).
    #[arg(value_name = "NAME|latest", default_value = "latest")]
    pub backup: String,

    /// Restore the state at this time (RFC 3339, e.g. 2026-11-20T08:00:00Z): the newest backup
    /// taken at or before it, plus its increments read up to it.
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

    /// Also write the virtual cluster's PKI saved with the backup into this directory, as
    /// vCluster lays out <data-dir>/pki (files 0600, directories 0700). An existing non-empty
    /// directory is replaced only with --force.
    #[arg(long, env = "VCBACKUP_RESTORE_PKI_OUT", value_name = "DIR")]
    pub pki_out: Option<PathBuf>,

    /// Move kine's revision forward by this much after restoring, so that clients that watched
    /// the old store never see revisions go backwards (as `vcluster restore` does). 0 keeps it.
    #[arg(long, env = "VCBACKUP_BUMP_REVISION", default_value_t = 1000)]
    pub bump_revision: u64,

    /// How a restored kine database is checked before it replaces anything: `quick` (SQLite's
    /// quick_check: every page and b-tree, records, NOT NULL; about 1 s per GiB) or `full`
    /// (integrity_check: also every index entry against its row, UNIQUE; about 5 times longer).
    #[arg(long, env = "VCBACKUP_RESTORE_INTEGRITY_CHECK", value_enum, default_value_t = IntegrityCheck::Quick)]
    pub integrity_check: IntegrityCheck,

    /// For an etcd backup followed by increments: restore the snapshot alone (a snapshot file
    /// cannot hold the increments; `vcbackup export --at` writes an archive with them).
    #[arg(long, env = "VCBACKUP_RESTORE_BASE_ONLY")]
    pub base_only: bool,

    /// Accept a chain of increments with a gap (an increment is missing): restore the state up
    /// to the gap, less than was asked for. Without it such a restore is refused.
    #[arg(long, env = "VCBACKUP_RESTORE_UP_TO_GAP")]
    pub up_to_gap: bool,

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

    /// Export the state at this time (RFC 3339): the newest backup taken at or before it, plus
    /// its increments read up to it. `latest` includes every increment after the newest backup.
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

    /// Also write the host Secret `<release>-certs` holding the PKI saved with the backup
    /// (`-` for standard output), exactly as vCluster reads it: `kubectl apply` it on the new
    /// host before `vcluster create --restore`, and the restored cluster keeps its CA,
    /// service-account keys and kubeconfigs. It holds private keys (base64, not encrypted).
    /// Without -o or --to, only the Secret is written.
    #[arg(long, env = "VCBACKUP_EXPORT_CERTS_SECRET", value_name = "FILE.yaml|-")]
    pub certs_secret: Option<PathBuf>,

    /// The host namespace the Secret goes to. [default: the one recorded with the backup's
    /// config, else none: `kubectl apply -n NAMESPACE`]
    #[arg(long, env = "VCBACKUP_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Accept a chain of increments with a gap (an increment is missing): export the state up
    /// to the gap, less than was asked for. Without it such an export is refused.
    #[arg(long, env = "VCBACKUP_EXPORT_UP_TO_GAP")]
    pub up_to_gap: bool,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

impl ListArgs {
    pub async fn resolve(self) -> Result<ListConfig> {
        let (_, storage) = self.storage.open().await?;
        Ok(ListConfig {
            storage,
            output: self.output,
        })
    }
}

impl DecryptArgs {
    pub fn resolve(self) -> Result<DecryptConfig> {
        let identities = self.identity.load()?;
        let dash = |p: Option<PathBuf>| p.filter(|p| p.as_os_str() != "-");
        Ok(DecryptConfig {
            identities,
            options: DecryptOptions {
                input: dash(self.input),
                output: dash(self.output),
                force: self.force,
            },
        })
    }
}

impl RestoreArgs {
    /// The backup asked for, the key, the target, --config-out, then the
    /// storage opened: in this order, so that --if-missing with the target in
    /// place needs no storage (an init container's every later start).
    pub async fn resolve(self) -> Result<RestoreConfig> {
        let selector = Selector::new(Some(&self.backup), self.at)?;
        let identities = self.identity.load()?;
        let options = RestoreOptions {
            to: self.to,
            force: self.force,
            if_missing: self.if_missing,
            bump_revision: self.bump_revision,
            integrity_check: self.integrity_check,
            base_only: self.base_only,
        };
        if !restore::may_write(&options)? {
            return Ok(RestoreConfig::Keep { to: options.to });
        }
        if let Some(path) = &self.config_out
            && path.exists()
            && !self.force
        {
            bail!(
                "write {}: the file exists; pass --force to replace it",
                path.display()
            );
        }
        if let Some(dir) = &self.pki_out {
            crate::pki::check_target(dir, self.force)?;
        }
        let (_, storage) = self.storage.open().await?;
        Ok(RestoreConfig::Write(WriteConfig {
            selector,
            identities,
            options,
            config_out: self.config_out,
            pki_out: self.pki_out,
            up_to_gap: self.up_to_gap,
            storage,
        }))
    }
}

impl ExportArgs {
    /// The output, the key, and the backup: a file, or one in storage, opened.
    pub async fn resolve(self) -> Result<ExportConfig> {
        let output = self.output()?;
        let certs_secret = self.certs_secret()?;
        let identities = self.identity.load()?;
        let input = match self.stored()? {
            Some((storage, selector)) => Input::Stored {
                storage: storage.open().await?.1,
                selector,
                up_to_gap: self.up_to_gap,
            },
            None => Input::File(self.input.clone().context("no --input")?),
        };
        Ok(ExportConfig {
            input,
            identities,
            options: output.map(|output| ExportOptions {
                output,
                force: self.force,
            }),
            certs_secret,
        })
    }

    /// Where the Secret goes (`None` path: standard output), checked before any work.
    fn certs_secret(&self) -> Result<Option<CertsSecret>> {
        let Some(path) = &self.certs_secret else {
            return Ok(None);
        };
        let to_stdout = path.as_os_str() == "-";
        if to_stdout && self.output.as_ref().is_some_and(|o| o.as_os_str() == "-") {
            bail!(
                "-o - and --certs-secret - cannot both be standard output; write one of them to a file"
            );
        }
        if !to_stdout && path.exists() && !self.force {
            bail!(
                "write {}: the file exists; pass --force to replace it",
                path.display()
            );
        }
        Ok(Some(CertsSecret {
            output: (!to_stdout).then(|| path.clone()),
            namespace: self.namespace.clone(),
            force: self.force,
        }))
    }

    /// Where the archive goes: exactly one of -o and --to, or neither when
    /// only the Secret is asked for.
    fn output(&self) -> Result<Option<Output>> {
        match (&self.output, &self.to) {
            (Some(_), Some(_)) => bail!("give either -o FILE or --to s3://…, not both"),
            (None, None) if self.certs_secret.is_some() => Ok(None),
            (None, None) => bail!(
                "no output: give -o FILE.tar.gz (or -o - for standard output) or --to s3://BUCKET/DIR/NAME.tar.gz"
            ),
            (Some(path), None) if path.as_os_str() == "-" => Ok(Some(Output::Stdout)),
            (Some(path), None) => Ok(Some(Output::File(path.clone()))),
            (None, Some(url)) => Ok(Some(Output::S3(url.clone()))),
        }
    }

    /// The backup to export, in storage (`None`: the file given by --input).
    fn stored(&self) -> Result<Option<(StorageArgs, Selector)>> {
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
        Ok(Some((storage, selector)))
    }
}

impl IdentityArgs {
    pub fn load(&self) -> Result<Option<Identities>> {
        self.identity.as_deref().map(Identities::load).transpose()
    }
}
