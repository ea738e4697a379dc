//! `vcbackup restore`: a backup (and its increments) from the destination into
//! place, and with `--config-out` the vCluster config saved with it.

use std::path::PathBuf;

use anyhow::Result;

use crate::catalog::{self, Selector};
use crate::pipeline::Identities;
use crate::restore::{self, RestoreOptions};
use crate::storage::Destination;
use crate::vconfig;

pub struct RestoreConfig {
    pub selector: Selector,
    pub identities: Option<Identities>,
    pub options: RestoreOptions,
    pub config_out: Option<PathBuf>,
    pub up_to_gap: bool,
    /// Checked but not opened: with `--if-missing` and the target in place
    /// (an init container's every start) nothing reaches the storage.
    pub destination: Destination,
    pub vcluster: String,
}

pub async fn run(config: RestoreConfig) -> Result<()> {
    let RestoreConfig {
        selector,
        identities,
        options,
        config_out,
        up_to_gap,
        destination,
        vcluster,
    } = config;
    if !restore::may_write(&options)? {
        eprintln!(
            "{} exists; nothing restored (--if-missing)",
            options.to.display()
        );
        return Ok(());
    }
    if let Some(path) = &config_out
        && path.exists()
        && !options.force
    {
        anyhow::bail!(
            "write {}: the file exists; pass --force to replace it",
            path.display()
        );
    }
    let storage = destination.open(&vcluster).await?;
    let catalog = catalog::read(storage.as_ref()).await?;
    let chain = catalog::select_chain(&catalog, &selector, &storage.location(), up_to_gap)?;
    let saved = match &config_out {
        Some(path) => Some(
            vconfig::fetch_saved(storage.as_ref(), &chain.base, identities.as_ref(), path).await?,
        ),
        None => None,
    };
    let chain = restore::restore(storage.as_ref(), chain, identities, &options).await?;
    eprintln!("restored {} to {}", chain.describe(), options.to.display());
    if let Some(gap) = chain.gap() {
        eprintln!(
            "warning: {gap}; restored up to revision {} (--up-to-gap)",
            chain.revision().unwrap_or(0)
        );
    }
    if let (Some(path), Some(yaml)) = (&config_out, saved) {
        vconfig::write_config(path, &yaml, options.force)?;
        eprintln!(
            "wrote the vCluster config of {} to {}",
            chain.base.name,
            path.display()
        );
    }
    Ok(())
}
