//! The virtual cluster's identity saved with every backup. vCluster keeps its
//! PKI (the CAs, the service-account key pair, the kubeconfigs) in the host
//! Secret `<release>-certs` and downloads it to `<data-dir>/pki` at start;
//! without that Secret it makes a new CA and new service-account keys, and
//! every token and kubeconfig issued before stops working. So the agent reads
//! the files under the PKI directory and stores them beside each backup as
//! one tar, sealed like the backup (zstd, then age to the same recipients),
//! with its SHA-256 in the manifest. `restore --pki-out` writes them back,
//! `export --certs-secret` turns them into the Secret, `verify` checks them.
//!
//! Nothing of the PKI is ever written in plain text by the agent, logged, or
//! put in an error: messages name files, never their contents.

mod archive;
mod check;
mod secret;
mod write;
mod x509;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use zeroize::Zeroizing;

use crate::manifest::{Manifest, SavedPki};
use crate::object::{backup_of_pki, pki_name};
use crate::pipeline::{Fingerprint, Hashing, Identities, Sealing, unseal};
use crate::plaintext::{Beside, Recorded, manifest_beside};
use crate::storage::{self, ObjectNotFound, Storage};
use crate::store::Finding;

pub use check::{check, expiry};
pub use secret::secret_yaml;
pub use write::{check_target, write_dir};

/// A PKI is a few dozen small files; a Secret holds at most 1 MiB.
pub const PKI_MAX_BYTES: u64 = 4 << 20;
/// More files than any vCluster makes: a directory this full is not a PKI.
const PKI_MAX_FILES: usize = 512;
/// vCluster's PKI is two levels deep (`etcd/ca.crt`).
const PKI_MAX_DEPTH: usize = 4;

/// The files of a PKI by their path under the PKI directory (`/`-separated),
/// wiped from memory when dropped.
#[derive(Default)]
pub struct Pki {
    pub files: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

#[cfg(test)]
impl Pki {
    /// A PKI of these files, for tests.
    pub fn of(files: &[(&str, &[u8])]) -> Pki {
        let mut pki = Pki::default();
        for (path, data) in files {
            pki.files
                .insert(path.to_string(), Zeroizing::new(data.to_vec()));
        }
        pki
    }
}

impl fmt::Debug for Pki {
    /// The paths only: a PKI's contents are never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Pki {
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(|d| d.as_slice())
    }

    fn size(&self) -> u64 {
        self.files.values().map(|d| d.len() as u64).sum()
    }
}

/// Where the agent reads the PKI from.
pub struct PkiSource {
    dir: PathBuf,
    /// A missing PKI is said once per start, not at every backup.
    warned_missing: AtomicBool,
}

impl PkiSource {
    pub fn new(dir: PathBuf) -> Self {
        PkiSource {
            dir,
            warned_missing: AtomicBool::new(false),
        }
    }

    /// The PKI now, or `None` (with a warning) when there is none to read: a
    /// backup without the identity is still worth taking.
    pub fn read(&self) -> Option<Pki> {
        match read_dir(&self.dir) {
            Ok(pki) if !pki.files.is_empty() => Some(pki),
            Ok(_) => {
                self.warn_missing("is empty");
                None
            }
            Err(err)
                if err
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                self.warn_missing("does not exist");
                None
            }
            Err(err) => {
                tracing::warn!("backing up without the virtual cluster's PKI: {err:#}");
                None
            }
        }
    }

    fn warn_missing(&self, why: &str) {
        if !self.warned_missing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pki = %self.dir.display(),
                "the PKI directory {why}: backups are taken without the virtual cluster's identity, so a restore on a new host gets a new CA and earlier tokens and kubeconfigs stop working; the pod's data volume holds it at /data/pki (or set VCBACKUP_PKI_DIR)"
            );
        }
    }

    /// Reads the PKI and stores it beside backup `backup_name`; `None` (with a
    /// warning) when there is none or it could not be stored.
    pub async fn store_beside(
        &self,
        sealing: &Sealing,
        storage: &dyn Storage,
        backup_name: &str,
    ) -> Option<SavedPki> {
        let pki = self.read()?;
        match store(&pki, sealing, storage, backup_name).await {
            Ok(saved) => Some(saved),
            Err(err) => {
                tracing::warn!(backup = %backup_name, "backup kept without its PKI: {err:#}");
                None
            }
        }
    }
}

/// Every regular file under `dir`, by its path relative to it.
fn read_dir(dir: &Path) -> Result<Pki> {
    let mut pki = Pki::default();
    // The first read_dir's own error (NotFound) tells a missing PKI apart.
    let top = std::fs::read_dir(dir)?;
    walk(dir, top, "", 0, &mut pki)?;
    Ok(pki)
}

fn walk(
    root: &Path,
    entries: std::fs::ReadDir,
    prefix: &str,
    depth: usize,
    pki: &mut Pki,
) -> Result<()> {
    let shown = || root.join(prefix).display().to_string();
    for entry in entries {
        let entry = entry.with_context(|| format!("read the PKI directory {}", shown()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(pki = %shown(), "skipping a file whose name is not UTF-8");
            continue;
        };
        let path = format!("{prefix}{name}");
        let kind = entry
            .file_type()
            .with_context(|| format!("read {}", root.join(&path).display()))?;
        if kind.is_dir() && depth + 1 < PKI_MAX_DEPTH {
            let sub = std::fs::read_dir(entry.path())
                .with_context(|| format!("read {}", root.join(&path).display()))?;
            walk(root, sub, &format!("{path}/"), depth + 1, pki)?;
        } else if kind.is_file() {
            if pki.files.len() >= PKI_MAX_FILES {
                bail!(
                    "read the PKI directory {}: more than {PKI_MAX_FILES} files, not a vCluster PKI; is --pki-dir right?",
                    root.display()
                );
            }
            let data = read_limited(&root.join(&path), PKI_MAX_BYTES - pki.size())
                .with_context(|| {
                    format!(
                        "read the PKI directory {}: more than {PKI_MAX_BYTES} bytes, not a vCluster PKI",
                        root.display()
                    )
                })?;
            pki.files.insert(path, data);
        } else {
            tracing::warn!(file = %root.join(&path).display(), "skipping what is not a regular file in the PKI directory");
        }
    }
    Ok(())
}

fn read_limited(path: &Path, room: u64) -> Result<Zeroizing<Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut data = Zeroizing::new(Vec::new());
    file.take(room + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("read {}", path.display()))?;
    if data.len() as u64 > room {
        bail!("{} does not fit", path.display());
    }
    Ok(data)
}

/// Seals `pki` like the backup and stores it beside backup `backup_name`.
pub async fn store(
    pki: &Pki,
    sealing: &Sealing,
    storage: &dyn Storage,
    backup_name: &str,
) -> Result<SavedPki> {
    let name = pki_name(backup_name);
    let sealed = sealing.seal(Vec::new(), |out| archive::write(pki, out))?;
    storage::put_bytes(storage, &name, sealed.out)
        .await
        .with_context(|| format!("store {name} in {}", storage.location()))?;
    let expiry = expiry(pki);
    Ok(SavedPki {
        name,
        size: sealed.plaintext.size,
        sha256: sealed.plaintext.sha256,
        stored_size: sealed.stored.size,
        stored_sha256: sealed.stored.sha256,
        files: pki.files.len() as u64,
        ca_expires: expiry.ca.map(|(_, at)| at),
        leaf_expires: expiry.leaf.map(|(_, at)| at),
    })
}

/// The PKI of `manifest`'s backup, fetched, decrypted and checked against the
/// manifest. `wanted` says who asks (`--pki-out DIR`), for the message when
/// the backup has none.
pub async fn fetch_saved(
    storage: &dyn Storage,
    manifest: &Manifest,
    identities: Option<&Identities>,
    wanted: &str,
) -> Result<Pki> {
    let saved = saved_of(manifest, wanted)?;
    let sealed = storage::get_bytes(storage, &saved.name, PKI_MAX_BYTES).await?;
    open(&sealed, saved, identities, &saved.name)
}

/// The manifest's PKI, or the one-line error for a backup taken without one.
pub fn saved_of<'a>(manifest: &'a Manifest, wanted: &str) -> Result<&'a SavedPki> {
    manifest.pki.as_ref().with_context(|| {
        format!(
            "{wanted}: backup {} has no PKI (taken without the PKI directory, --pki-dir, or by an older vcbackup); nothing was written",
            manifest.name
        )
    })
}

/// The PKI of a downloaded backup, from the object beside it named in its manifest.
pub fn open_beside(
    backup: &Path,
    manifest: &Manifest,
    identities: Option<&Identities>,
    wanted: &str,
) -> Result<Pki> {
    let saved = saved_of(manifest, wanted)?;
    let dir = match backup.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let path = dir.join(&saved.name);
    let shown = path.display().to_string();
    let file = std::fs::File::open(&path).with_context(|| {
        format!("{wanted}: open {shown} (download the backup's PKI object beside it)")
    })?;
    let mut sealed = Vec::new();
    file.take(PKI_MAX_BYTES + 1)
        .read_to_end(&mut sealed)
        .with_context(|| format!("read {shown}"))?;
    open(&sealed, saved, identities, &shown)
}

/// What the manifest of the backup a downloaded PKI object belongs to
/// records of it, when that manifest lies beside it (for `decrypt`).
pub fn recorded_beside(path: &Path) -> Result<Option<Recorded>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(backup) = name.as_deref().and_then(backup_of_pki) else {
        return Ok(None);
    };
    let Some(Beside::Backup(manifest)) = manifest_beside(&path.with_file_name(&backup))? else {
        return Ok(None);
    };
    let saved = manifest.pki.with_context(|| {
        format!(
            "decrypt {}: the manifest of {backup} beside it records no PKI",
            path.display()
        )
    })?;
    Ok(Some(Recorded {
        stored: Fingerprint {
            size: saved.stored_size,
            sha256: saved.stored_sha256,
        },
        plaintext: Fingerprint {
            size: saved.size,
            sha256: saved.sha256,
        },
    }))
}

/// Decrypts a stored PKI and checks it against what its manifest records.
pub fn open(
    sealed: &[u8],
    saved: &SavedPki,
    identities: Option<&Identities>,
    what: &str,
) -> Result<Pki> {
    if sealed.len() as u64 > PKI_MAX_BYTES {
        bail!("read {what}: larger than {PKI_MAX_BYTES} bytes, not a saved PKI");
    }
    let mut tar = Zeroizing::new(Vec::new());
    unseal(sealed, identities, what)?
        .take(PKI_MAX_BYTES + 1)
        .read_to_end(&mut tar)
        .map_err(|err| anyhow!("read {what}: truncated or corrupt ({err})"))?;
    let mut hashing = Hashing::new(std::io::sink());
    hashing.write_all(&tar).context("hash the PKI")?;
    let (fingerprint, _) = hashing.finish();
    if fingerprint.sha256 != saved.sha256 || fingerprint.size != saved.size {
        bail!(
            "verify {what}: the PKI (SHA-256 {}, {} bytes) does not match its manifest (SHA-256 {}, {} bytes)",
            fingerprint.sha256,
            fingerprint.size,
            saved.sha256,
            saved.size
        );
    }
    archive::read(&tar).with_context(|| format!("read {what}"))
}

/// A drill's PKI checks: the stored bytes against the manifest (`pki-stored`)
/// and, with the key, the tar (`pki`) and the identity itself (see [`check`]).
/// Errors are for drills that could not run (storage unreachable).
pub async fn drill(
    storage: &dyn Storage,
    saved: &SavedPki,
    full: bool,
    identities: Option<&Identities>,
) -> Result<Vec<Finding>> {
    let sealed = match storage::get_bytes(storage, &saved.name, PKI_MAX_BYTES).await {
        Ok(sealed) => sealed,
        Err(err) if err.is::<ObjectNotFound>() => {
            return Ok(vec![Finding::fail(
                "pki-stored",
                format!("{} is missing", saved.name),
            )]);
        }
        Err(err) => return Err(err),
    };
    let mut hashing = Hashing::new(std::io::sink());
    hashing.write_all(&sealed).context("hash the saved PKI")?;
    let (stored, _) = hashing.finish();
    let mut findings = vec![if stored.size == saved.stored_size
        && stored.sha256 == saved.stored_sha256
    {
        Finding::pass(
            "pki-stored",
            format!("{}: {} bytes as in the manifest", saved.name, stored.size),
        )
    } else {
        Finding::fail(
            "pki-stored",
            format!(
                "{}: {} bytes, SHA-256 {}; the manifest records {} bytes, SHA-256 {}",
                saved.name, stored.size, stored.sha256, saved.stored_size, saved.stored_sha256
            ),
        )
    }];
    if full {
        match open(&sealed, saved, identities, &saved.name) {
            Ok(pki) => {
                findings.push(Finding::pass(
                    "pki",
                    format!("{} files, SHA-256 as in the manifest", pki.files.len()),
                ));
                findings.extend(check(&pki, chrono::Utc::now()));
            }
            Err(err) => findings.push(Finding::fail("pki", format!("{err:#}").replace('\n', " "))),
        }
    }
    Ok(findings)
}
