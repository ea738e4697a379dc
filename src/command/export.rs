//! `vcbackup export`: vCluster's snapshot archive from one backup, to a file or S3.

use anyhow::Result;

use crate::export::{self, ExportOptions, Input};
use crate::pipeline::Identities;

pub struct ExportConfig {
    pub input: Input,
    pub identities: Option<Identities>,
    pub options: ExportOptions,
}

pub async fn run(config: ExportConfig) -> Result<()> {
    let shown = config.options.output.to_string();
    let exported = export::export(config.input, config.identities, config.options).await?;
    let release = if exported.release {
        "with its release entry"
    } else {
        "without a release entry"
    };
    eprintln!(
        "exported {} keys of {} to {shown} {release}; the archive is not encrypted",
        exported.keys, exported.backup
    );
    Ok(())
}
