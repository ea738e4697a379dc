//! A backup's verified plaintext: the one way stored bytes become the database
//! they hold. `restore`, `decrypt`, `export` and `verify` all decode here.
//!
//! The stored bytes are checked against the manifest as they stream in
//! (`CheckStored`), age and zstd undo the sealing, and the plaintext is hashed
//! on its way to a private file; nothing uses the file before both
//! fingerprints match the manifest. [`chain`] then checks and applies a
//! chain's increments, and [`install`] puts a verified file in place. Which
//! store a backup holds is the manifest's to say: the file's first bytes are
//! read only for a downloaded file that came without its manifest.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::NamedTempFile;
use tokio_util::io::SyncIoBridge;

use crate::increment::{Chain, IncrementManifest, IncrementRef, apply};
use crate::manifest::{MANIFEST_MAX_BYTES, Manifest, SourceKind, manifest_key};
use crate::pipeline::{CheckStored, Fingerprint, Hashing, Identities, unseal};
use crate::storage::Storage;
use crate::store::etcd::Changes;
use crate::store::kine::KineApply;

/// What a manifest records of an object: what its bytes, stored and
/// decoded, must match.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub stored: Fingerprint,
    pub plaintext: Fingerprint,
}

impl From<&Manifest> for Recorded {
    fn from(manifest: &Manifest) -> Self {
        Recorded {
            stored: manifest.stored_fingerprint(),
            plaintext: manifest.plaintext_fingerprint(),
        }
    }
}

impl From<&IncrementManifest> for Recorded {
    fn from(manifest: &IncrementManifest) -> Self {
        Recorded {
            stored: manifest.stored_fingerprint(),
            plaintext: manifest.plaintext_fingerprint(),
        }
    }
}

/// Where the plaintext goes.
pub enum Place {
    /// A hidden temporary file beside this target, to [`install`] over it:
    /// written out as it comes and synced.
    Beside(PathBuf),
    /// A file in this private scratch directory: read right away and
    /// removed, so neither synced nor steered out to disk.
    Scratch(PathBuf),
    Stdout,
}

/// One decoding's request: what is decoded, against what, with which keys.
pub struct Decode<'a> {
    /// Names the object in messages.
    pub what: &'a str,
    /// `None` for a downloaded file without its manifest: then only age's
    /// authentication and zstd's checksum vouch for it.
    pub recorded: Option<&'a Recorded>,
    pub identities: Option<&'a Identities>,
    /// A progress bar on a terminal.
    pub progress: bool,
}

/// The decoded plaintext: its fingerprint, and the file unless it went to
/// standard output.
pub struct Plaintext {
    pub fingerprint: Fingerprint,
    pub file: Option<NamedTempFile>,
}

impl Plaintext {
    /// The file the plaintext was written to.
    pub fn into_file(self) -> Result<NamedTempFile> {
        self.file
            .ok_or_else(|| anyhow!("the plaintext went to standard output, not to a file"))
    }
}

/// Every verdict of one decoding on its own, as a drill records them.
pub struct Verdicts {
    /// The stored bytes against the manifest.
    pub stored: Result<()>,
    /// Decryption and decompression: the plaintext, not yet compared with the
    /// manifest (the drill reports that as a check of its own).
    pub decoded: Result<Plaintext>,
}

impl Decode<'_> {
    /// Decodes `sealed` and checks it: the one verdict commands need. A
    /// damaged or swapped object is named as such, rather than what decoding
    /// made of it; a wrong key fails before the object is read.
    pub fn verified(&self, sealed: impl Read + Send, place: Place) -> Result<Plaintext> {
        let (stored, decoded) = self.run(sealed, place, &mut |_| {}, false);
        if let Some(stored) = stored {
            stored?;
        }
        let plaintext = decoded?;
        if let Some(recorded) = self.recorded {
            check_plaintext(&plaintext.fingerprint, &recorded.plaintext, self.what)?;
        }
        Ok(plaintext)
    }

    /// Decodes `sealed` and gives each verdict on its own, the stored bytes
    /// read to their end even when decoding failed. `observe` sees the
    /// plaintext as it passes (an etcd snapshot's digest).
    pub fn every_verdict(
        &self,
        sealed: impl Read + Send,
        place: Place,
        observe: &mut dyn FnMut(&[u8]),
    ) -> Verdicts {
        let (stored, decoded) = self.run(sealed, place, observe, true);
        Verdicts {
            stored: stored
                .unwrap_or_else(|| Err(anyhow!("read {}: not read to its end", self.what))),
            decoded,
        }
    }

    /// The stored check wraps the input, the decoder reads through it, and
    /// the stored verdict comes after decoding, whatever decoding made of it.
    /// `drain` reads an object whose key failed to its end, to judge its
    /// bytes; otherwise the stored verdict is `None` then.
    fn run(
        &self,
        sealed: impl Read + Send,
        place: Place,
        observe: &mut dyn FnMut(&[u8]),
        drain: bool,
    ) -> (Option<Result<()>>, Result<Plaintext>) {
        let what = self.what;
        let mut input = match self.recorded {
            Some(recorded) => Stored::Checked(Box::new(CheckStored::new(
                sealed,
                recorded.stored.clone(),
                what,
            ))),
            None => Stored::Unchecked(sealed),
        };
        let decoded = match unseal(&mut input, self.identities, what) {
            Ok(plaintext) => {
                let size = self.recorded.map(|r| r.plaintext.size);
                let progress = progress_bar(self.progress, size);
                let plaintext = progress.wrap_read(plaintext);
                let decoded = write_out(plaintext, place, observe, what);
                progress.finish_and_clear();
                decoded
            }
            // A wrong key fails here, before reading the object: no need to drain it.
            Err(err) if !drain => return (None, Err(err)),
            Err(err) => Err(err),
        };
        let stored = match input {
            Stored::Checked(input) => input.finish(),
            Stored::Unchecked(_) => Ok(()),
        };
        (Some(stored), decoded)
    }
}

/// The input of a decoding, checked when a manifest records it.
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

/// `verify WHAT: the restored data … does not match its manifest`.
fn check_plaintext(actual: &Fingerprint, recorded: &Fingerprint, what: &str) -> Result<()> {
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

/// The manifest found beside a downloaded file.
pub enum Beside {
    Backup(Box<Manifest>),
    Increment(Box<IncrementManifest>),
}

impl Beside {
    pub fn recorded(&self) -> Recorded {
        match self {
            Beside::Backup(manifest) => manifest.as_ref().into(),
            Beside::Increment(manifest) => manifest.as_ref().into(),
        }
    }
}

/// The manifest beside a downloaded backup or increment, when there is one.
pub fn manifest_beside(path: &Path) -> Result<Option<Beside>> {
    let mut manifest_path = path.as_os_str().to_owned();
    manifest_path.push(manifest_key(""));
    let manifest_path = PathBuf::from(manifest_path);
    let shown = manifest_path.display().to_string();
    let file = match std::fs::File::open(&manifest_path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("read manifest {shown}")),
    };
    let mut data = Vec::new();
    file.take(MANIFEST_MAX_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("read manifest {shown}"))?;
    if data.len() as u64 > MANIFEST_MAX_BYTES {
        bail!("read manifest {shown}: too large to be a manifest");
    }
    let increment = path
        .file_name()
        .and_then(|n| IncrementRef::parse(&n.to_string_lossy()));
    Ok(Some(match increment {
        Some(_) => Beside::Increment(Box::new(IncrementManifest::from_json(&data, &shown)?)),
        None => Beside::Backup(Box::new(Manifest::from_json(&data, &shown)?)),
    }))
}

/// A chain's verified plaintext: the base decoded and checked into a place,
/// then each increment checked and applied. kine's rows go into the
/// database; etcd's events come back as changes to lay over the snapshot's
/// pairs, since a snapshot file cannot take them.
pub struct ChainPlaintext {
    pub file: NamedTempFile,
    pub changes: Option<Changes>,
}

/// Decodes `chain` from `storage`. Every increment's manifest is read first,
/// so a missing or foreign one fails before any download.
pub async fn chain(
    storage: &dyn Storage,
    chain: &Chain,
    identities: Option<Arc<Identities>>,
    place: Place,
    progress: bool,
) -> Result<ChainPlaintext> {
    let increments = apply::manifests(storage, chain).await?;
    let base = chain.base.clone();
    let reader = storage.get(&base.name).await?;
    let keys = identities.clone();
    let file = tokio::task::spawn_blocking(move || -> Result<NamedTempFile> {
        let recorded = Recorded::from(&base);
        let decode = Decode {
            what: &base.name,
            recorded: Some(&recorded),
            identities: keys.as_deref(),
            progress,
        };
        decode
            .verified(SyncIoBridge::new(reader), place)?
            .into_file()
    })
    .await
    .context("decoding the backup panicked")??;
    if increments.is_empty() {
        return Ok(ChainPlaintext {
            file,
            changes: None,
        });
    }
    let revision = chain.base.revision.unwrap_or(0);
    let what = chain.base.name.clone();
    let changes = match chain.base.kind {
        SourceKind::Sqlite => {
            let path = file.path().to_path_buf();
            let applier =
                tokio::task::spawn_blocking(move || KineApply::open(&path, revision, &what))
                    .await
                    .context("applying increments panicked")??;
            let applier = apply::each(
                storage,
                &increments,
                identities,
                applier,
                |kine, lines, m| kine.apply(lines, &m.name).map(drop),
            )
            .await?;
            let what = chain.base.name.clone();
            let reached = tokio::task::spawn_blocking(move || applier.finish(&what))
                .await
                .context("applying increments panicked")??;
            tracing::info!(
                revision = reached,
                increments = increments.len(),
                "increments applied"
            );
            None
        }
        SourceKind::Etcd => Some(
            apply::each(
                storage,
                &increments,
                identities,
                Changes::new(revision),
                |changes, lines, m| changes.apply(lines, &m.name),
            )
            .await?,
        ),
    };
    Ok(ChainPlaintext { file, changes })
}

/// Which store a downloaded file without its manifest holds, by its first
/// bytes: the one place a backup's kind is not the manifest's to say.
pub fn kind_without_manifest(path: &Path) -> Result<SourceKind> {
    crate::store::open::identify(path)
}

/// Renames the verified file into place. A stale `-wal`/`-shm` of the old
/// database would be replayed onto the new one, so they go first.
pub fn install(
    temp: NamedTempFile,
    target: &Path,
    force: bool,
    kind: Option<SourceKind>,
) -> Result<()> {
    if kind == Some(SourceKind::Sqlite) {
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

/// Writes the plaintext to `place`, hashing it.
fn write_out(
    plaintext: impl Read,
    place: Place,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
) -> Result<Plaintext> {
    let (dir, prefix, durable) = match &place {
        Place::Stdout => {
            let mut out = Hashing::new(io::stdout().lock());
            copy(plaintext, &mut out, observe, what)?;
            out.flush().context("write standard output")?;
            return Ok(Plaintext {
                fingerprint: out.finish().0,
                file: None,
            });
        }
        Place::Scratch(dir) => (dir.as_path(), ".vcbackup-plaintext-".to_string(), false),
        Place::Beside(target) => {
            let file_name = target
                .file_name()
                .with_context(|| format!("restore to {}: not a file path", target.display()))?;
            let dir = match target.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            (
                dir,
                format!(".{}.vcbackup-", file_name.to_string_lossy()),
                true,
            )
        }
    };
    // Owner-only (tempfile's default): the plaintext is the whole store.
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let fingerprint = decode_into(temp.as_file(), plaintext, observe, what, durable)
        .with_context(|| format!("write {}", temp.path().display()));
    Ok(Plaintext {
        fingerprint: fingerprint?,
        file: Some(temp),
    })
}

/// Two threads overlap the work: this one reads (the stored digest, age,
/// zstd), a writer hashes the plaintext and writes it out as it comes, so a
/// final sync finds little left to do.
fn decode_into(
    file: &std::fs::File,
    plaintext: impl Read,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
    durable: bool,
) -> Result<Fingerprint> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("vcbackup-restore-write".into())
            .spawn_scoped(scope, move || {
                write_buffers(file, full_rx, empty_tx, durable)
            })
            .context("start the writer thread")?;
        let read = read_buffers(plaintext, &full_tx, &empty_rx, observe, what);
        drop(full_tx);
        let written = writer.join();
        read?;
        Ok(written.map_err(|_| anyhow!("the writer thread panicked"))??)
    })
}

/// Buffers in flight between the two threads of a decoding: memory stays at
/// `BUFFERS + 2` times `BUFFER` whatever the size.
const BUFFER: usize = 1 << 20;
const BUFFERS: usize = 4;

/// Fills buffers from `plaintext` and hands them to the writer, reusing the
/// ones it hands back. Stops early, without error, when the writer has failed.
fn read_buffers(
    mut plaintext: impl Read,
    full: &mpsc::SyncSender<Vec<u8>>,
    empty: &mpsc::Receiver<Vec<u8>>,
    observe: &mut dyn FnMut(&[u8]),
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
        observe(&buf);
        if filled == 0 || full.send(buf).is_err() {
            return Ok(());
        }
    }
}

/// Hashes and writes what the reader sends, then (when `durable`) syncs;
/// the fingerprint of it all.
fn write_buffers(
    file: &std::fs::File,
    full: mpsc::Receiver<Vec<u8>>,
    empty: mpsc::Sender<Vec<u8>>,
    durable: bool,
) -> io::Result<Fingerprint> {
    // A restored database is read right away (integrity check, then kine): its pages stay.
    let mut write_back = crate::background::WriteBack::restoring();
    let mut out = Hashing::new(file);
    for buf in full {
        out.write_all(&buf)?;
        if durable {
            write_back.wrote(file, buf.len())?;
        }
        let _ = empty.send(buf);
    }
    let (fingerprint, file) = out.finish();
    if durable {
        file.sync_all()?;
        write_back.synced(file);
    }
    Ok(fingerprint)
}

fn copy(
    mut plaintext: impl Read,
    out: &mut impl Write,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match plaintext.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => bail!("read {what}: the backup is truncated or corrupt ({err})"),
        };
        observe(&buf[..n]);
        out.write_all(&buf[..n])
            .context("write the restored data")?;
        total += n as u64;
    }
}

fn progress_bar(show: bool, size: Option<u64>) -> indicatif::ProgressBar {
    if !show || !io::stderr().is_terminal() {
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
