//! `vcbackup verify`: which backups of which virtual clusters, one drill
//! each, a line per drill on standard output, and an error naming the first
//! failed check and its backup.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

use crate::catalog::{self, Selector};
use crate::pipeline::Identities;
use crate::records::Mode;
use crate::storage::Storage;
use crate::verify;

pub struct VerifyConfig {
    /// The virtual clusters drilled, each with its storage open.
    pub clusters: Vec<(String, Box<dyn Storage>)>,
    pub selector: Selector,
    /// Every backup (`--all`), not only the one selected.
    pub all: bool,
    pub identities: Option<Arc<Identities>>,
    pub scratch: PathBuf,
}

pub async fn run(config: VerifyConfig) -> Result<()> {
    let VerifyConfig {
        clusters,
        selector,
        all,
        identities,
        scratch,
    } = config;
    if identities.is_none() {
        eprintln!(
            "no --identity: encrypted backups get the key-less checks only (stored bytes, format)"
        );
    }
    let mut failures = Vec::new();
    for (vcluster, storage) in &clusters {
        let drills = Drills {
            storage: storage.as_ref(),
            identities: identities.clone(),
            scratch: &scratch,
        };
        if let Err(err) = drills.run(&selector, all, &mut failures).await {
            let line = format!("{vcluster}: {err:#}").replace('\n', " ");
            println!("FAILED  {line}");
            failures.push(line);
        }
    }
    match failures.split_first() {
        None => Ok(()),
        Some((first, [])) => bail!("verify {first}"),
        Some((first, rest)) => bail!("verify {first} (and {} more failed)", rest.len()),
    }
}

struct Drills<'a> {
    storage: &'a dyn Storage,
    identities: Option<Arc<Identities>>,
    scratch: &'a Path,
}

impl Drills<'_> {
    /// Drills the chosen backups of one virtual cluster; failed checks are
    /// added to `failures`, errors (nothing to check, storage down) returned.
    async fn run(&self, selector: &Selector, all: bool, failures: &mut Vec<String>) -> Result<()> {
        let catalog = catalog::read(self.storage).await?;
        let chosen = if all {
            catalog.backups.iter().collect()
        } else {
            vec![catalog::select(
                &catalog.backups,
                selector,
                &self.storage.location(),
            )?]
        };
        if chosen.is_empty() {
            bail!("no backups in {}", self.storage.location());
        }
        for manifest in chosen {
            // An unencrypted backup needs no key for the whole drill.
            let mode = if self.identities.is_some() || !manifest.sealed.is_encrypted() {
                Mode::Full
            } else {
                Mode::Keyless
            };
            let mut report = verify::drill(
                self.storage,
                manifest,
                mode,
                self.identities.clone(),
                self.scratch,
            )
            .await?;
            // The increments a restore would apply are part of what the record vouches for.
            let chain = crate::increment::Chain::assemble(manifest, &catalog.increments, None);
            let encrypted = manifest.sealed.is_encrypted();
            let chain =
                verify::chain::check(self.storage, &chain, self.identities.clone(), encrypted)
                    .await?;
            if let Some(chain) = &chain {
                report.add(chain.check.clone());
            }
            println!("{}", report.summary());
            if let Some(chain) = &chain {
                println!("{}", chain.line);
            }
            if let Some(check) = report.first_failure() {
                failures.push(format!(
                    "{}: check {} failed: {}",
                    manifest.name, check.name, check.detail
                ));
            }
            verify::store(self.storage, &report, &catalog.records).await?;
        }
        Ok(())
    }
}
