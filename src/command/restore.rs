//! `vcbackup restore`: a backup (and its increments) from the destination into
//! place, with `--config-out` the vCluster config saved with it, and with
//! `--pki-out` its PKI.

use std::path::PathBuf;

use anyhow::Result;

use crate::catalog::{self, Selector};
use crate::pipeline::Identities;
use crate::restore::{self, RestoreOptions};
use crate::storage::Storage;
use crate::{pki, vconfig};

pub enum RestoreConfig {
    /// `--if-missing` and the target is there (an init container's every
    /// start but the first): nothing to do, and no storage is opened for it.
    Keep {
        to: PathBuf,
    },
    Write(WriteConfig),
}

pub struct WriteConfig {
    pub selector: Selector,
    pub identities: Option<Identities>,
    pub options: RestoreOptions,
    pub config_out: Option<PathBuf>,
    /// `--pki-out`: the directory the PKI goes to.
    pub pki_out: Option<PathBuf>,
    pub up_to_gap: bool,
    pub storage: Box<dyn Storage>,
}

pub async fn run(config: RestoreConfig) -> Result<()> {
    let WriteConfig {
        selector,
        identities,
        options,
        config_out,
        pki_out,
        up_to_gap,
        storage,
    } = match config {
        RestoreConfig::Keep { to } => {
            eprintln!("{} exists; nothing restored (--if-missing)", to.display());
            return Ok(());
        }
        RestoreConfig::Write(write) => write,
    };
    let storage = storage.as_ref();
    let catalog = catalog::read(storage).await?;
    let chain = catalog::select_chain(&catalog, &selector, &storage.location(), up_to_gap)?;
    let saved = match &config_out {
        Some(path) => {
            Some(vconfig::fetch_saved(storage, &chain.base, identities.as_ref(), path).await?)
        }
        None => None,
    };
    // Fetched first too: a backup without a PKI fails before anything is written.
    let pki = match &pki_out {
        Some(dir) => {
            let wanted = format!("--pki-out {}", dir.display());
            Some(pki::fetch_saved(storage, &chain.base, identities.as_ref(), &wanted).await?)
        }
        None => None,
    };
    let chain = restore::restore(storage, chain, identities, &options).await?;
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
    if let (Some(dir), Some(pki)) = (&pki_out, pki) {
        pki::write_dir(&pki, dir, options.force)?;
        eprintln!(
            "wrote the PKI of {} ({} files) to {}",
            chain.base.name,
            pki.files.len(),
            dir.display()
        );
    }
    Ok(())
}
