//! `vcbackup export`'s arguments.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use std::path::PathBuf;

use super::{IdentityArgs, StorageArgs, parse_time};
use crate::catalog::Selector;

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
