//! `vcbackup export`: vCluster's snapshot archive from one backup, to a file
//! or S3, and with `--certs-secret` the host Secret holding its PKI.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::catalog;
use crate::export::{self, ExportOptions, Input};
use crate::manifest::Manifest;
use crate::pipeline::Identities;
use crate::pki;
use crate::plaintext::{self, Beside};

pub struct ExportConfig {
    pub input: Input,
    pub identities: Option<Identities>,
    /// The archive; `None` when only the Secret is asked for.
    pub options: Option<ExportOptions>,
    pub certs_secret: Option<CertsSecret>,
}

/// `--certs-secret`: where the `<release>-certs` Secret goes.
pub struct CertsSecret {
    /// `None`: standard output.
    pub output: Option<PathBuf>,
    /// `--namespace`.
    pub namespace: Option<String>,
    pub force: bool,
}

pub async fn run(config: ExportConfig) -> Result<()> {
    // Made first: a backup without a PKI fails before the archive is written.
    let secret = match &config.certs_secret {
        Some(wanted) => Some(secret(&config.input, config.identities.as_ref(), wanted).await?),
        None => None,
    };
    if let Some(options) = config.options {
        let shown = options.output.to_string();
        let exported = export::export(config.input, config.identities, options).await?;
        let release = if exported.release {
            "with its release entry"
        } else {
            "without a release entry"
        };
        eprintln!(
            "exported {} keys of {} to {shown} {release}; the archive is not encrypted",
            exported.keys, exported.backup
        );
    }
    if let (Some(wanted), Some((yaml, summary))) = (&config.certs_secret, secret) {
        let shown = match &wanted.output {
            Some(path) => {
                crate::vconfig::write_config(path, yaml.as_bytes(), wanted.force)?;
                path.display().to_string()
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(yaml.as_bytes())
                    .and_then(|()| out.flush())
                    .context("write the Secret to standard output")?;
                "standard output".to_string()
            }
        };
        eprintln!(
            "wrote {summary} to {shown}; it holds private keys: `kubectl apply -f` it on the host before `vcluster create --restore`, then delete the file"
        );
    }
    Ok(())
}

/// The Secret's YAML for the backup `input` names, and a line saying what it is.
async fn secret(
    input: &Input,
    identities: Option<&Identities>,
    wanted: &CertsSecret,
) -> Result<(Zeroizing<String>, String)> {
    if wanted.output.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "refusing to write the Secret, which holds private keys, to a terminal; pass --certs-secret FILE.yaml or pipe it to `kubectl apply -f -`"
        );
    }
    let flag = "--certs-secret";
    let (manifest, pki): (Manifest, pki::Pki) = match input {
        Input::Stored {
            storage,
            selector,
            up_to_gap,
        } => {
            let storage = storage.as_ref();
            let catalog = catalog::read(storage).await?;
            let chain = catalog::select_chain(&catalog, selector, &storage.location(), *up_to_gap)?;
            let pki = pki::fetch_saved(storage, &chain.base, identities, flag).await?;
            (chain.base, pki)
        }
        Input::File(path) => {
            let Some(Beside::Backup(manifest)) = plaintext::manifest_beside(path)? else {
                bail!(
                    "{flag}: no backup manifest beside {} to name its PKI; download {}.json with it",
                    path.display(),
                    path.display()
                );
            };
            let pki = pki::open_beside(path, &manifest, identities, flag)?;
            (*manifest, pki)
        }
    };
    let recorded = manifest.config.as_ref().map(|c| &c.release);
    let release = recorded
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| manifest.vcluster.clone());
    let namespace = wanted.namespace.clone().or_else(|| {
        recorded
            .map(|r| r.namespace.clone())
            .filter(|n| !n.is_empty())
    });
    let yaml = pki::secret_yaml(&pki, &release, namespace.as_deref(), &manifest.name)?;
    let summary = match &namespace {
        Some(ns) => format!(
            "the Secret {ns}/{release}-certs ({} files of {})",
            pki.files.len(),
            manifest.name
        ),
        None => format!(
            "the Secret {release}-certs ({} files of {}; no namespace: apply it with -n)",
            pki.files.len(),
            manifest.name
        ),
    };
    Ok((yaml, summary))
}
