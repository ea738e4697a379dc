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

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::NamedTempFile;

mod chain;
mod write;

pub use chain::chain;

use crate::increment::{IncrementManifest, IncrementRef};
use crate::manifest::{MANIFEST_MAX_BYTES, Manifest, SourceKind};
use crate::object::manifest_key;
use crate::pipeline::{CheckStored, Fingerprint, Identities, unseal};

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
            stored: manifest.sealed.stored_fingerprint(),
            plaintext: manifest.sealed.plaintext_fingerprint(),
        }
    }
}

impl From<&IncrementManifest> for Recorded {
    fn from(manifest: &IncrementManifest) -> Self {
        Recorded {
            stored: manifest.sealed.stored_fingerprint(),
            plaintext: manifest.sealed.plaintext_fingerprint(),
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
            plaintext.fingerprint.check_recorded(
                &recorded.plaintext,
                self.what,
                "the restored data",
            )?;
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
                let progress = write::progress_bar(self.progress, size);
                let plaintext = progress.wrap_read(plaintext);
                let decoded = write::write_out(plaintext, place, observe, what);
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
