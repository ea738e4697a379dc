//! Getting data back: `restore` from storage and `decrypt` of a downloaded
//! file. Both decode into a temporary file beside the target, verify it
//! against the manifest (and SQLite's integrity check), and only then rename
//! it into place: a failed restore never replaces anything.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use tempfile::NamedTempFile;
use tokio_util::io::SyncIoBridge;

use std::sync::Arc;

use crate::increment::{Chain, apply};
use crate::manifest::{MANIFEST_MAX_BYTES, Manifest, SourceKind, manifest_key, rfc3339};
use crate::pipeline::{CheckStored, Fingerprint, Hashing, Identities, unseal};
use crate::storage::Storage;
use crate::store::kine::{self, KineApply};

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

/// Restores `chain` into `options.to`: the base decoded beside it and
/// verified against its manifest, each increment verified and applied (kine),
/// then renamed into place. Returns the chain as restored.
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
    // Every manifest first: a missing or foreign one fails before any download.
    let increments = apply::manifests(storage, &chain).await?;
    let identities = identities.map(Arc::new);
    let reader = storage.get(&manifest.name).await?;
    tracing::info!(restore = %chain.describe(), target = %options.to.display(), "restoring");

    let target = options.to.clone();
    let keys = identities.clone();
    let base = manifest.clone();
    let temp = tokio::task::spawn_blocking(move || -> Result<NamedTempFile> {
        let what = base.name.clone();
        let mut input =
            CheckStored::new(SyncIoBridge::new(reader), base.stored_fingerprint(), &what);
        // A wrong key fails here, before reading the object: no need to drain it.
        let plaintext = unseal(&mut input, keys.as_deref(), &what)?;
        let decoded = decode_beside(&target, plaintext, &what, Some(base.size));
        // A damaged or swapped object is named as such, rather than what decoding made of it.
        input.finish()?;
        let (temp, fingerprint) = decoded?;
        verify_fingerprint(&fingerprint, &base.plaintext_fingerprint(), &what)?;
        Ok(temp)
    })
    .await
    .context("restore panicked")??;

    if !increments.is_empty() {
        let path = temp.path().to_path_buf();
        let what = manifest.name.clone();
        let revision = manifest.revision.unwrap_or(0);
        let applier = tokio::task::spawn_blocking(move || KineApply::open(&path, revision, &what))
            .await
            .context("restore panicked")??;
        let applier = apply::each(
            storage,
            &increments,
            identities,
            applier,
            |applier, lines, m| applier.apply(lines, &m.name).map(drop),
        )
        .await?;
        let what = manifest.name.clone();
        let reached = tokio::task::spawn_blocking(move || applier.finish(&what))
            .await
            .context("restore panicked")??;
        tracing::info!(
            revision = reached,
            increments = increments.len(),
            "increments applied"
        );
    }

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
        install(temp, &target, force)
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
    let manifest = match &options.input {
        Some(path) => read_manifest_beside(path)?,
        None => None,
    };
    if manifest.is_none() {
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
    // Without a manifest there is nothing to check the stored bytes against.
    let mut input = match &manifest {
        Some(manifest) => Stored::Checked(Box::new(CheckStored::new(
            input,
            manifest.stored.clone(),
            &what,
        ))),
        None => Stored::Unchecked(input),
    };
    let plaintext = unseal(&mut input, identities.as_ref(), &what)?;
    let decoded = match &options.output {
        Some(target) => {
            let size = manifest.as_ref().map(|m| m.plaintext.size);
            decode_beside(target, plaintext, &what, size).map(|(temp, f)| (Some(temp), f))
        }
        None => write_stdout(plaintext, &what).map(|f| (None, f)),
    };
    if let Stored::Checked(input) = input {
        input.finish()?;
    }
    let (temp, fingerprint) = decoded?;
    if let Some(manifest) = &manifest {
        verify_fingerprint(&fingerprint, &manifest.plaintext, &what)?;
    }
    match (temp, &options.output) {
        (Some(temp), Some(target)) => install(temp, target, options.force),
        _ => Ok(()),
    }
}

fn write_stdout(plaintext: impl Read, what: &str) -> Result<Fingerprint> {
    let mut out = Hashing::new(io::stdout().lock());
    copy(plaintext, &mut out, what)?;
    out.flush().context("write standard output")?;
    Ok(out.finish().0)
}

/// A decrypt input, checked when a manifest lies beside it.
enum Stored<R> {
    Checked(Box<CheckStored<R>>),
    Unchecked(R),
}

impl<R: Read> Read for Stored<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stored::Checked(input) => input.read(buf),
            Stored::Unchecked(input) => input.read(buf),
        }
    }
}

/// What a manifest records of the stored bytes and of the plaintext: a
/// backup's, or an increment's.
struct Recorded {
    stored: Fingerprint,
    plaintext: Fingerprint,
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

/// The manifest beside a downloaded backup or increment, when there is one.
fn read_manifest_beside(path: &Path) -> Result<Option<Recorded>> {
    if let Some(recorded) = pki_recorded(path)? {
        return Ok(Some(recorded));
    }
    let mut manifest_path = path.as_os_str().to_owned();
    manifest_path.push(manifest_key(""));
    let manifest_path = PathBuf::from(manifest_path);
    match std::fs::metadata(&manifest_path) {
        Ok(meta) if meta.len() > MANIFEST_MAX_BYTES => {
            bail!(
                "read manifest {}: too large to be a manifest",
                manifest_path.display()
            )
        }
        Ok(_) => {
            let data = std::fs::read(&manifest_path)
                .with_context(|| format!("read manifest {}", manifest_path.display()))?;
            let shown = manifest_path.display().to_string();
            let increment = path
                .file_name()
                .and_then(|n| crate::increment::IncrementRef::parse(&n.to_string_lossy()));
            let (stored, plaintext) = match increment {
                Some(_) => {
                    let m = crate::increment::IncrementManifest::from_json(&data, &shown)?;
                    (m.stored_fingerprint(), m.plaintext_fingerprint())
                }
                None => {
                    let m = Manifest::from_json(&data, &shown)?;
                    (m.stored_fingerprint(), m.plaintext_fingerprint())
                }
            };
            Ok(Some(Recorded { stored, plaintext }))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("read manifest {}", manifest_path.display())),
    }
}

/// A downloaded PKI object (`decrypt` gives its tar) is checked against what
/// its backup's manifest, when downloaded beside it, records of it.
fn pki_recorded(path: &Path) -> Result<Option<Recorded>> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let Some(backup) = name.as_deref().and_then(crate::manifest::backup_of_pki) else {
        return Ok(None);
    };
    let Some(manifest) = crate::export::read_manifest_beside(&path.with_file_name(&backup))? else {
        return Ok(None);
    };
    let pki = manifest.pki.with_context(|| {
        format!(
            "decrypt {}: the manifest of {backup} beside it records no PKI",
            path.display()
        )
    })?;
    Ok(Some(Recorded {
        stored: Fingerprint {
            size: pki.stored_size,
            sha256: pki.stored_sha256,
        },
        plaintext: Fingerprint {
            size: pki.size,
            sha256: pki.sha256,
        },
    }))
}

/// Decodes into a hidden temporary file in the target's directory (so the final
/// rename stays on one filesystem), synced, with the plaintext fingerprint.
/// Two threads overlap the work: this one reads (the stored digest, age,
/// zstd), a writer hashes the plaintext and writes it out as it comes, so the
/// final sync finds little left to do.
fn decode_beside(
    target: &Path,
    plaintext: Box<dyn Read + Send + '_>,
    what: &str,
    expected_size: Option<u64>,
) -> Result<(NamedTempFile, Fingerprint)> {
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = target
        .file_name()
        .with_context(|| format!("restore to {}: not a file path", target.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.vcbackup-", file_name.to_string_lossy()))
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let progress = progress_bar(expected_size);
    let file = temp.as_file();
    let written = std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("vcbackup-restore-write".into())
            .spawn_scoped(scope, move || write_buffers(file, full_rx, empty_tx))
            .context("start the writer thread")?;
        let read = read_buffers(progress.wrap_read(plaintext), &full_tx, &empty_rx, what);
        drop(full_tx);
        let written = writer.join();
        progress.finish_and_clear();
        read?;
        written
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
            .with_context(|| format!("write {}", temp.path().display()))
    })?;
    Ok((temp, written))
}

/// Buffers in flight between the two threads of a restore: memory stays at
/// `BUFFERS + 2` times `BUFFER` whatever the size.
const BUFFER: usize = 1 << 20;
const BUFFERS: usize = 4;

/// Fills buffers from `plaintext` and hands them to the writer, reusing the
/// ones it hands back. Stops early, without error, when the writer has failed.
fn read_buffers(
    mut plaintext: impl Read,
    full: &mpsc::SyncSender<Vec<u8>>,
    empty: &mpsc::Receiver<Vec<u8>>,
    what: &str,
) -> Result<()> {
    loop {
        let mut buf = empty.try_recv().unwrap_or_else(|_| vec![0u8; BUFFER]);
        buf.resize(BUFFER, 0);
        let mut filled = 0;
        while filled < BUFFER {
            match plaintext.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => bail!("read {what}: the backup is truncated or corrupt ({err})"),
            }
        }
        buf.truncate(filled);
        if filled == 0 || full.send(buf).is_err() {
            return Ok(());
        }
    }
}

/// Hashes and writes what the reader sends, then syncs; the fingerprint of it all.
fn write_buffers(
    file: &std::fs::File,
    full: mpsc::Receiver<Vec<u8>>,
    empty: mpsc::Sender<Vec<u8>>,
) -> io::Result<Fingerprint> {
    // The restored database is read right away (integrity check, then kine): its pages stay.
    let mut write_back = crate::background::WriteBack::restoring();
    let mut out = Hashing::new(file);
    for buf in full {
        out.write_all(&buf)?;
        write_back.wrote(file, buf.len())?;
        let _ = empty.send(buf);
    }
    let (fingerprint, file) = out.finish();
    file.sync_all()?;
    write_back.synced(file);
    Ok(fingerprint)
}

fn copy(mut plaintext: impl Read, out: &mut impl Write, what: &str) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match plaintext.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => bail!("read {what}: the backup is truncated or corrupt ({err})"),
        };
        out.write_all(&buf[..n])
            .context("write the restored data")?;
        total += n as u64;
    }
}

fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    if !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match size {
        Some(size) => indicatif::ProgressBar::new(size),
        None => indicatif::ProgressBar::no_length(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn verify_fingerprint(actual: &Fingerprint, recorded: &Fingerprint, what: &str) -> Result<()> {
    if actual.sha256 != recorded.sha256 || actual.size != recorded.size {
        bail!(
            "verify {what}: the restored data (SHA-256 {}, {} bytes) does not match its manifest (SHA-256 {}, {} bytes); nothing was replaced",
            actual.sha256,
            actual.size,
            recorded.sha256,
            recorded.size
        );
    }
    Ok(())
}

/// Renames the verified file into place. A stale `-wal`/`-shm` of the old
/// database would be replayed onto the new one, so they go first.
fn install(temp: NamedTempFile, target: &Path, force: bool) -> Result<()> {
    if kine::is_sqlite(temp.path()) {
        for suffix in ["-wal", "-shm"] {
            let mut stale = target.as_os_str().to_owned();
            stale.push(suffix);
            match std::fs::remove_file(&stale) {
                Ok(()) => {
                    tracing::info!(file = %Path::new(&stale).display(), "removed stale file of the replaced database")
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("remove {}", Path::new(&stale).display()));
                }
            }
        }
    }
    crate::durable::install(temp, target, force, "the restored file")
}
