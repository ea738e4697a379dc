//! Getting data back: `restore` from storage and `decrypt` of a downloaded
//! file. Both take the verified plaintext (`plaintext`) into a temporary file
//! beside the target, check it as its store needs (SQLite's integrity check,
//! the etcd snapshot's digest), and only then rename it into place: a failed
//! restore never replaces anything.

use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::increment::Chain;
use crate::manifest::{SourceKind, rfc3339};
use crate::pipeline::Identities;
use crate::plaintext::{self, Beside, Decode, Place};
use crate::storage::Storage;
use crate::store::kine;

/// How `restore` treats the target and kine's revision.
pub struct RestoreOptions {
    pub to: PathBuf,
    pub force: bool,
    pub if_missing: bool,
    /// How far to move kine's revision forward, so watchers never see it go back.
    pub bump_revision: u64,
    pub integrity_check: kine::IntegrityCheck,
    /// Restore an etcd snapshot without the increments that follow it.
    pub base_only: bool,
}

/// Whether the target may be written: `Ok(false)` when `--if-missing` keeps
/// what is there. Checked before anything is downloaded.
pub fn may_write(options: &RestoreOptions) -> Result<bool> {
    let target = &options.to;
    match occupant(target, "restore to")? {
        Occupant::Nothing => Ok(true),
        Occupant::File if options.if_missing => {
            tracing::info!(target = %target.display(), "restore target exists; nothing to do (--if-missing)");
            Ok(false)
        }
        Occupant::File if !options.force => bail!(
            "restore to {}: the file exists; pass --force to replace it, or --if-missing to keep it",
            target.display()
        ),
        // Not the database, so --if-missing does not keep it; only --force replaces the link.
        Occupant::DanglingLink(points_to) if !options.force => bail!(
            "restore to {}: a symlink to {}, which does not exist; pass --force to replace the link",
            target.display(),
            points_to.display()
        ),
        Occupant::File | Occupant::DanglingLink(_) => Ok(true),
    }
}

/// Restores `chain` into `options.to`: the chain's verified plaintext
/// decoded beside it (increments applied), checked as the store needs, then
/// renamed into place. Returns the chain as restored.
pub async fn restore(
    storage: &dyn Storage,
    mut chain: Chain,
    identities: Option<Identities>,
    options: &RestoreOptions,
) -> Result<Chain> {
    let manifest = chain.base.clone();
    if manifest.kind == SourceKind::Etcd && !chain.increments.is_empty() {
        if !options.base_only {
            bail!(
                "restore {}: {} increment(s) up to revision {} ({}) follow this etcd snapshot, and a snapshot file cannot hold them; `vcbackup export --at {}` writes vCluster's archive with them, or pass --base-only to restore the snapshot alone (revision {})",
                manifest.name,
                chain.increments.len(),
                chain.revision().unwrap_or(0),
                rfc3339(chain.captured()),
                rfc3339(chain.captured()),
                manifest.revision.unwrap_or(0)
            );
        }
        chain.increments.clear();
    }
    tracing::info!(restore = %chain.describe(), target = %options.to.display(), "restoring");
    let restored = plaintext::chain(
        storage,
        &chain,
        identities.map(Arc::new),
        Place::Beside(options.to.clone()),
        true,
    )
    .await?;
    let temp = restored.file;
    let target = options.to.clone();
    let force = options.force;
    let bump = options.bump_revision;
    let check = options.integrity_check;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let what = manifest.name.clone();
        match manifest.kind {
            SourceKind::Sqlite => kine::prepare_restored(
                temp.path(),
                check,
                bump,
                kine::live_revision(&target, force)?,
                &what,
            )?,
            SourceKind::Etcd => crate::store::etcd::check_restored_snapshot(temp.path(), &what)?,
        }
        plaintext::install(temp, &target, force, Some(manifest.kind))
    })
    .await
    .context("restore panicked")??;
    Ok(chain)
}

/// Where `decrypt` reads and writes, and whether it may replace its output.
pub struct DecryptOptions {
    /// `None` reads standard input.
    pub input: Option<PathBuf>,
    /// `None` writes standard output.
    pub output: Option<PathBuf>,
    pub force: bool,
}

/// Decrypts and decompresses one downloaded backup, checking it against the
/// manifest beside it when there is one.
pub fn decrypt(identities: Option<Identities>, options: &DecryptOptions) -> Result<()> {
    let what = match &options.input {
        Some(path) => path.display().to_string(),
        None => "standard input".to_string(),
    };
    let beside = match &options.input {
        Some(path) => plaintext::manifest_beside(path)?,
        None => None,
    };
    if beside.is_none() {
        tracing::info!(
            "no manifest beside {what}: relying on age authentication and the zstd checksum"
        );
    }
    if let Some(target) = &options.output {
        match occupant(target, "write")? {
            Occupant::Nothing => {}
            _ if options.force => {}
            Occupant::File => bail!(
                "write {}: the file exists; pass --force to replace it",
                target.display()
            ),
            Occupant::DanglingLink(points_to) => bail!(
                "write {}: a symlink to {}, which does not exist; pass --force to replace the link",
                target.display(),
                points_to.display()
            ),
        }
    } else if io::stdout().is_terminal() {
        bail!("refusing to write a database to a terminal; pass -o FILE or redirect the output");
    }
    let input: Box<dyn Read + Send> = match &options.input {
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("open backup {}", path.display()))?,
        ),
        None => Box::new(io::stdin()),
    };
    let recorded = beside.as_ref().map(Beside::recorded);
    let decode = Decode {
        what: &what,
        recorded: recorded.as_ref(),
        identities: identities.as_ref(),
        progress: true,
    };
    let place = match &options.output {
        Some(target) => Place::Beside(target.clone()),
        None => Place::Stdout,
    };
    let decoded = decode.verified(input, place)?;
    let (Some(temp), Some(target)) = (decoded.file, &options.output) else {
        return Ok(());
    };
    // An increment is not a database; a file without its manifest tells by its first bytes.
    let kind = match &beside {
        Some(Beside::Backup(manifest)) => Some(manifest.kind),
        Some(Beside::Increment(_)) => None,
        None => plaintext::kind_without_manifest(temp.path()).ok(),
    };
    plaintext::install(temp, target, options.force, kind)
}

/// What is at a target path now.
enum Occupant {
    Nothing,
    /// A file, directory or a symlink to one.
    File,
    /// A symlink to nothing: `Path::exists` follows links and calls this free,
    /// and the final no-clobber rename then failed after all the work.
    DanglingLink(PathBuf),
}

fn occupant(target: &Path, verb: &str) -> Result<Occupant> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_symlink() && !target.exists() => Ok(
            Occupant::DanglingLink(std::fs::read_link(target).unwrap_or_default()),
        ),
        Ok(_) => Ok(Occupant::File),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Occupant::Nothing),
        Err(err) => Err(err).with_context(|| format!("{verb} {}", target.display())),
    }
}
