//! `vcbackup export`: a backup as the archive `vcluster restore` and
//! `vcluster create --restore` read. gzip around tar: first the release entry
//! (`/vcluster/snapshot/release`, built from the config saved with the backup),
//! then every key of the store in key order, named by the key exactly, its
//! body the raw value. The archive is plaintext, because vCluster cannot read
//! age: it is an operator's offline action, never the sidecar's.
//!
//! The backup's verified plaintext (with its chain's increments) is decoded
//! into a private scratch directory (both stores need random access), read
//! through the key/value view, and removed afterwards.

mod archive;

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::{NamedTempFile, TempDir};

use crate::catalog::{self, Selector};
use crate::manifest::{Manifest, SourceKind};
use crate::pipeline::Identities;
use crate::plaintext::{self, Beside, Decode, Place, Recorded};
use crate::storage::{Destination, IncompleteBody, ObjectExists, Storage, body_channel};
use crate::store as stores;
use crate::store::etcd::Changes;
use crate::vconfig;

use archive::{release_json, write_archive};

const CHUNK_SIZE: usize = 1 << 20;
const CHUNK_DEPTH: usize = 8;

/// Where the backup comes from.
pub enum Input {
    Stored {
        storage: Box<dyn Storage>,
        selector: Selector,
        /// Accept a chain with a gap, up to the gap (`--up-to-gap`).
        up_to_gap: bool,
    },
    /// A downloaded backup file, with its manifest beside it when there is one.
    File(PathBuf),
}

/// Where the archive goes.
pub enum Output {
    File(PathBuf),
    Stdout,
    /// `s3://BUCKET/DIR/NAME.tar.gz?options`, as given.
    S3(String),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::File(path) => write!(f, "{}", path.display()),
            Output::Stdout => f.write_str("standard output"),
            Output::S3(url) => f.write_str(url),
        }
    }
}

pub struct ExportOptions {
    pub output: Output,
    pub force: bool,
}

/// What an export wrote.
pub struct Exported {
    pub backup: String,
    pub keys: u64,
    pub release: bool,
}

/// A backup's verified plaintext in the scratch directory, with what is
/// known about it.
struct Opened {
    plain: NamedTempFile,
    kind: SourceKind,
    /// etcd events of the chain's increments, to lay over the snapshot's pairs.
    changes: Option<Changes>,
    manifest: Option<Manifest>,
    config: Option<Vec<u8>>,
    what: String,
}

pub async fn export(
    input: Input,
    identities: Option<Identities>,
    options: ExportOptions,
) -> Result<Exported> {
    // Output problems first: no decrypting a large backup only to refuse its result.
    let target = match &options.output {
        Output::File(path) => {
            if path.exists() && !options.force {
                bail!(
                    "write {}: the file exists; pass --force to replace it",
                    path.display()
                );
            }
            Target::File(path.clone())
        }
        Output::Stdout => {
            if io::stdout().is_terminal() {
                bail!(
                    "refusing to write an archive to a terminal; pass -o FILE.tar.gz or redirect the output"
                );
            }
            Target::Stdout
        }
        Output::S3(url) => {
            let (storage, key) = open_s3_target(url).await?;
            Target::S3 { storage, key }
        }
    };
    let scratch_parent = match &target {
        Target::File(path) => parent_dir(path).to_path_buf(),
        _ => std::env::temp_dir(),
    };
    // A directory only we can enter: the plaintext is the whole store.
    let scratch = tempfile::Builder::new()
        .prefix(".vcbackup-export-")
        .tempdir_in(&scratch_parent)
        .with_context(|| format!("create a working directory in {}", scratch_parent.display()))?;
    let opened = match input {
        Input::Stored {
            storage,
            selector,
            up_to_gap,
        } => {
            open_stored(
                storage.as_ref(),
                &selector,
                up_to_gap,
                identities,
                scratch.path(),
            )
            .await?
        }
        Input::File(path) => {
            let dir = scratch.path().to_path_buf();
            tokio::task::spawn_blocking(move || open_file(&path, identities.as_ref(), &dir))
                .await
                .context("export panicked")??
        }
    };
    let release = match (&opened.manifest, &opened.config) {
        (Some(manifest), Some(yaml)) => Some(release_json(manifest, yaml)?),
        _ => {
            tracing::warn!(backup = %opened.what, "the backup has no saved vCluster config: the archive has no release entry, so `vcluster create --restore` needs the values file given by hand");
            None
        }
    };
    let what = opened.what.clone();
    let has_release = release.is_some();
    let keys = match target {
        Target::File(path) => {
            let force = options.force;
            tokio::task::spawn_blocking(move || -> Result<u64> {
                let dir = parent_dir(&path);
                let file_name = path
                    .file_name()
                    .with_context(|| format!("write {}: not a file path", path.display()))?;
                // Owner-only: the archive holds every secret of the virtual cluster.
                let temp = tempfile::Builder::new()
                    .prefix(&format!(".{}.vcbackup-", file_name.to_string_lossy()))
                    .tempfile_in(dir)
                    .with_context(|| format!("create a temporary file in {}", dir.display()))?;
                let out = io::BufWriter::with_capacity(1 << 20, temp.as_file());
                let keys = produce(opened, release, scratch, out)?;
                crate::durable::install(temp, &path, force, "the archive")?;
                Ok(keys)
            })
            .await
            .context("export panicked")??
        }
        Target::Stdout => tokio::task::spawn_blocking(move || -> Result<u64> {
            produce(opened, release, scratch, io::stdout().lock())
        })
        .await
        .context("export panicked")??,
        Target::S3 { storage, key } => {
            if options.force {
                storage.delete(&key).await?;
            }
            let (writer, body) = body_channel(CHUNK_SIZE, CHUNK_DEPTH);
            let producer = tokio::task::spawn_blocking(move || -> Result<u64> {
                let mut writer = writer;
                let keys = produce(opened, release, scratch, &mut writer)?;
                writer.finish().context("hand the archive to storage")?;
                Ok(keys)
            });
            let (produced, uploaded) = tokio::join!(producer, storage.put(&key, body));
            let produced = produced.context("export panicked").and_then(|r| r);
            match (produced, uploaded) {
                (Ok(keys), Ok(())) => keys,
                (_, Err(err)) if err.is::<ObjectExists>() => {
                    return Err(err.context(format!(
                        "store {key} in {}: pass --force to replace it",
                        storage.location()
                    )));
                }
                // When storage fails, the producer only sees a closed channel.
                (_, Err(err)) if !IncompleteBody::is_cause_of(&err) => {
                    return Err(err.context(format!("store {key} in {}", storage.location())));
                }
                (Err(err), _) => return Err(err),
                (Ok(_), Err(err)) => return Err(err),
            }
        }
    };
    Ok(Exported {
        backup: what,
        keys,
        release: has_release,
    })
}

enum Target {
    File(PathBuf),
    Stdout,
    S3 {
        storage: Box<dyn Storage>,
        key: String,
    },
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `s3://BUCKET/DIR/NAME.tar.gz?options` as a storage whose folder is `DIR`'s
/// last segment, and the object name.
async fn open_s3_target(text: &str) -> Result<(Box<dyn Storage>, String)> {
    let invalid = |why: &str| anyhow!("invalid --to {text:?}: {why}");
    let url = url::Url::parse(text).map_err(|err| invalid(&err.to_string()))?;
    if url.scheme() != "s3" {
        return Err(invalid("expected s3://BUCKET/DIR/NAME.tar.gz"));
    }
    let path = url.path().trim_start_matches('/');
    let (dir, key) = path
        .rsplit_once('/')
        .ok_or_else(|| invalid("put the archive in a folder: s3://BUCKET/DIR/NAME.tar.gz"))?;
    if !key.ends_with(".tar.gz") || key.starts_with('.') {
        return Err(invalid(
            "the object name must end in .tar.gz, as `vcluster snapshot list` shows only those",
        ));
    }
    let (prefix, folder) = dir.rsplit_once('/').unwrap_or(("", dir));
    if folder.is_empty() {
        return Err(invalid("empty folder name"));
    }
    let mut destination = format!("s3://{}/{prefix}", url.host_str().unwrap_or_default());
    if let Some(query) = url.query() {
        destination = format!("{destination}?{query}");
    }
    let destination = Destination::parse(&destination).with_context(|| format!("--to {text}"))?;
    let storage = destination.open(folder).await?;
    Ok((storage, key.to_string()))
}

async fn open_stored(
    storage: &dyn Storage,
    selector: &Selector,
    up_to_gap: bool,
    identities: Option<Identities>,
    scratch: &Path,
) -> Result<Opened> {
    let catalog = catalog::read(storage).await?;
    let chain = catalog::select_chain(&catalog, selector, &storage.location(), up_to_gap)?;
    if let Some(gap) = chain.gap() {
        tracing::warn!(
            "{gap}; exported up to revision {} (--up-to-gap)",
            chain.revision().unwrap_or(0)
        );
    }
    let manifest = chain.base.clone();
    let config = match &manifest.config {
        Some(saved) => {
            Some(vconfig::open_stored(storage, &manifest, saved, identities.as_ref()).await?)
        }
        None => None,
    };
    tracing::info!(export = %chain.describe(), "exporting");
    let decoded = plaintext::chain(
        storage,
        &chain,
        identities.map(Arc::new),
        Place::Scratch(scratch.to_path_buf()),
        false,
    )
    .await?;
    Ok(Opened {
        plain: decoded.file,
        kind: manifest.kind,
        changes: decoded.changes,
        what: chain.describe(),
        manifest: Some(manifest),
        config,
    })
}

fn open_file(path: &Path, identities: Option<&Identities>, scratch: &Path) -> Result<Opened> {
    let what = path.display().to_string();
    let manifest = match plaintext::manifest_beside(path)? {
        Some(Beside::Backup(manifest)) => Some(*manifest),
        Some(Beside::Increment(manifest)) => bail!(
            "export {what}: an increment (revisions {}..={}), not a backup; export the backup it follows, with --at for its changes",
            manifest.first_revision,
            manifest.last_revision
        ),
        None => None,
    };
    let config = match manifest
        .as_ref()
        .and_then(|m| m.config.as_ref().map(|c| (m, c)))
    {
        Some((manifest, saved)) => {
            let config_path = parent_dir(path).join(&saved.name);
            match std::fs::File::open(&config_path) {
                Ok(file) => {
                    let mut sealed = Vec::new();
                    file.take(vconfig::CONFIG_MAX_BYTES + 1)
                        .read_to_end(&mut sealed)
                        .with_context(|| format!("read {}", config_path.display()))?;
                    Some(vconfig::open_config(
                        &sealed,
                        manifest,
                        identities,
                        &config_path.display().to_string(),
                    )?)
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(config = %config_path.display(), "the backup's vCluster config was not downloaded beside it");
                    None
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("open {}", config_path.display()));
                }
            }
        }
        None => None,
    };
    if manifest.is_none() {
        tracing::info!(
            "no manifest beside {what}: relying on age authentication and the zstd checksum"
        );
    }
    let file = std::fs::File::open(path).with_context(|| format!("open backup {what}"))?;
    let recorded = manifest.as_ref().map(Recorded::from);
    let decode = Decode {
        what: &what,
        recorded: recorded.as_ref(),
        identities,
        progress: false,
    };
    let plain = decode
        .verified(file, Place::Scratch(scratch.to_path_buf()))?
        .into_file()?;
    let kind = match &manifest {
        Some(manifest) => manifest.kind,
        None => plaintext::kind_without_manifest(plain.path())
            .with_context(|| format!("read {what}"))?,
    };
    Ok(Opened {
        plain,
        kind,
        changes: None,
        manifest,
        config,
        what,
    })
}

/// Writes the archive of the verified plaintext to `out`; returns the
/// number of keys. `scratch` holds the plaintext and goes when this ends.
fn produce(
    opened: Opened,
    release: Option<Vec<u8>>,
    scratch: TempDir,
    out: impl Write,
) -> Result<u64> {
    let Opened {
        plain,
        kind,
        changes,
        manifest,
        what,
        ..
    } = opened;
    let pairs = stores::open::key_values(plain.path(), kind, scratch.path())
        .with_context(|| format!("read {what}"))?;
    // Without a manifest, an etcd snapshot's own digest is all that vouches for it.
    if kind == SourceKind::Etcd && manifest.is_none() {
        let file = std::fs::File::open(plain.path())
            .with_context(|| format!("open {}", plain.path().display()))?;
        stores::etcd::verify_snapshot_digest(io::BufReader::new(file))
            .with_context(|| format!("check {what}"))?;
    }
    let mtime = manifest
        .as_ref()
        .map_or(0, |m| m.started.timestamp().max(0) as u64);
    match changes {
        Some(changes) => write_archive(out, release.as_deref(), changes.overlay(pairs), mtime),
        None => write_archive(out, release.as_deref(), pairs, mtime),
    }
    .with_context(|| format!("export {what}"))
}
