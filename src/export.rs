//! `vcbackup export`: a backup as the archive `vcluster restore` and
//! `vcluster create --restore` read. gzip around tar: first the release entry
//! (`/vcluster/snapshot/release`, built from the config saved with the backup),
//! then every key of the store in key order, named by the key exactly, its
//! body the raw value. The archive is plaintext, because vCluster cannot read
//! age: it is an operator's offline action, never the sidecar's.
//!
//! The backup is decrypted into a private scratch directory (both stores need
//! random access), read through the key/value view, and removed afterwards.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use tokio_util::io::SyncIoBridge;

use std::sync::Arc;

use crate::catalog::{self, Selector};
use crate::increment::{IncrementManifest, apply};
use crate::manifest::{MANIFEST_MAX_BYTES, Manifest, SourceKind, manifest_key};
use crate::pipeline::{Hashing, Identities, unseal};
use crate::storage::{Destination, IncompleteBody, ObjectExists, Storage, body_channel};
use crate::store::etcd::Changes;
use crate::store::kine::KineApply;
use crate::store::{self as stores, Pair};
use crate::vconfig;

/// gzip level: 6 (gzip's default) is about twice as slow as 1 on Kubernetes
/// objects for a few percent smaller archives.
const GZIP_LEVEL: u32 = 1;
const CHUNK_SIZE: usize = 1 << 20;
const CHUNK_DEPTH: usize = 8;

/// The entry `vcluster create --restore` reads its values and chart version from.
pub const RELEASE_ENTRY: &[u8] = b"/vcluster/snapshot/release";
/// vCluster's own bookkeeping keys: never exported as keys.
const SNAPSHOT_PREFIX: &[u8] = b"/vcluster/snapshot/";

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

/// A backup's plaintext on its way in, with what is known about it.
struct Opened {
    reader: Box<dyn Read + Send>,
    manifest: Option<Manifest>,
    config: Option<Vec<u8>>,
    what: String,
    /// The increments to apply after the base, and where they are.
    increments: Option<(Arc<dyn Storage>, Vec<IncrementManifest>)>,
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
    let opened = match input {
        Input::Stored {
            storage,
            selector,
            up_to_gap,
        } => {
            open_stored(
                Arc::from(storage),
                &selector,
                up_to_gap,
                identities.as_ref(),
            )
            .await?
        }
        // A manifest and a config: small reads.
        Input::File(path) => open_file(&path, identities.as_ref())?,
    };
    let release = match (&opened.manifest, &opened.config) {
        (Some(manifest), Some(yaml)) => Some(release_json(manifest, yaml)?),
        _ => {
            tracing::warn!(backup = %opened.what, "the backup has no saved vCluster config: the archive has no release entry, so `vcluster create --restore` needs the values file given by hand");
            None
        }
    };
    let scratch_parent = match &target {
        Target::File(path) => parent_dir(path).to_path_buf(),
        _ => std::env::temp_dir(),
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
                let keys = produce(opened, identities, release, &scratch_parent, out)?;
                crate::durable::install(temp, &path, force, "the archive")?;
                Ok(keys)
            })
            .await
            .context("export panicked")??
        }
        Target::Stdout => tokio::task::spawn_blocking(move || -> Result<u64> {
            produce(
                opened,
                identities,
                release,
                &scratch_parent,
                io::stdout().lock(),
            )
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
                let keys = produce(opened, identities, release, &scratch_parent, &mut writer)?;
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
    storage: Arc<dyn Storage>,
    selector: &Selector,
    up_to_gap: bool,
    identities: Option<&Identities>,
) -> Result<Opened> {
    let catalog = catalog::read(storage.as_ref()).await?;
    let chain = catalog::select_chain(&catalog, selector, &storage.location(), up_to_gap)?;
    if let Some(gap) = chain.gap() {
        tracing::warn!(
            "{gap}; exported up to revision {} (--up-to-gap)",
            chain.revision().unwrap_or(0)
        );
    }
    let increments = apply::manifests(storage.as_ref(), &chain).await?;
    let manifest = chain.base.clone();
    let config = match &manifest.config {
        Some(saved) => {
            Some(vconfig::open_stored(storage.as_ref(), &manifest, saved, identities).await?)
        }
        None => None,
    };
    let reader = storage.get(&manifest.name).await?;
    tracing::info!(export = %chain.describe(), "exporting");
    Ok(Opened {
        reader: Box::new(SyncIoBridge::new(reader)),
        what: chain.describe(),
        manifest: Some(manifest),
        config,
        increments: Some((storage, increments)),
    })
}

fn open_file(path: &Path, identities: Option<&Identities>) -> Result<Opened> {
    let what = path.display().to_string();
    let manifest = read_manifest_beside(path)?;
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
    Ok(Opened {
        reader: Box::new(file),
        manifest,
        config,
        what,
        increments: None,
    })
}

pub fn read_manifest_beside(path: &Path) -> Result<Option<Manifest>> {
    let mut manifest_path = path.as_os_str().to_owned();
    manifest_path.push(manifest_key(""));
    let manifest_path = PathBuf::from(manifest_path);
    let shown = manifest_path.display().to_string();
    match std::fs::File::open(&manifest_path) {
        Ok(file) => {
            let mut data = Vec::new();
            file.take(MANIFEST_MAX_BYTES + 1)
                .read_to_end(&mut data)
                .with_context(|| format!("read manifest {shown}"))?;
            if data.len() as u64 > MANIFEST_MAX_BYTES {
                bail!("read manifest {shown}: too large to be a manifest");
            }
            Manifest::from_json(&data, &shown).map(Some)
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("read manifest {shown}")),
    }
}

/// The release entry's JSON, as vCluster's Go struct encodes it: `values` is
/// bytes in Go, so base64 in JSON.
fn release_json(manifest: &Manifest, yaml: &[u8]) -> Result<Vec<u8>> {
    let release = manifest
        .config
        .as_ref()
        .map(|c| c.release.clone())
        .unwrap_or_default();
    let name = if release.name.is_empty() {
        manifest.vcluster.clone()
    } else {
        release.name
    };
    let chart_name = if release.chart_name.is_empty() {
        "vcluster".to_string()
    } else {
        release.chart_name
    };
    if release.chart_version.is_empty() {
        tracing::warn!(backup = %manifest.name, "the backup does not record the chart version: `vcluster create --restore` uses its default chart");
    }
    let json = serde_json::json!({
        "releaseName": name,
        "releaseNamespace": release.namespace,
        "chartName": chart_name,
        "chartVersion": release.chart_version,
        "values": base64::engine::general_purpose::STANDARD.encode(yaml),
    });
    serde_json::to_vec(&json).context("encode the release entry")
}

/// Decrypts the backup into a private scratch directory, checks it, and writes
/// the archive to `out`. Returns the number of keys.
fn produce(
    opened: Opened,
    identities: Option<Identities>,
    release: Option<Vec<u8>>,
    scratch_parent: &Path,
    out: impl Write,
) -> Result<u64> {
    let Opened {
        reader,
        manifest,
        what,
        increments,
        ..
    } = opened;
    // A directory only we can enter: the plaintext is the whole store.
    let scratch = tempfile::Builder::new()
        .prefix(".vcbackup-export-")
        .tempdir_in(scratch_parent)
        .with_context(|| format!("create a working directory in {}", scratch_parent.display()))?;
    let plain = scratch.path().join("backup");
    {
        let mut input = unseal(reader, identities.as_ref(), &what)?;
        let mut file = Hashing::new(io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&plain).with_context(|| format!("create {}", plain.display()))?,
        ));
        copy(&mut input, &mut file, &what)?;
        let (fingerprint, writer) = file.finish();
        writer
            .into_inner()
            .map_err(|err| err.into_error())
            .with_context(|| format!("write {}", plain.display()))?;
        if let Some(manifest) = &manifest
            && (fingerprint.sha256 != manifest.sha256 || fingerprint.size != manifest.size)
        {
            bail!(
                "verify {what}: the decrypted backup (SHA-256 {}, {} bytes) does not match its manifest (SHA-256 {}, {} bytes)",
                fingerprint.sha256,
                fingerprint.size,
                manifest.sha256,
                manifest.size
            );
        }
    }
    let base_revision = manifest.as_ref().and_then(|m| m.revision).unwrap_or(0);
    let changes = match increments {
        Some((storage, increments)) if !increments.is_empty() => apply_increments(
            storage.as_ref(),
            &increments,
            identities.as_ref(),
            &plain,
            base_revision,
            &what,
        )?,
        _ => None,
    };
    let pairs =
        stores::open::key_values(&plain, scratch.path()).with_context(|| format!("read {what}"))?;
    if pairs.kind() == SourceKind::Etcd && manifest.is_none() {
        let file =
            std::fs::File::open(&plain).with_context(|| format!("open {}", plain.display()))?;
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

/// Applies a chain's increments to the decrypted base at `plain`: kine rows go
/// into the database; etcd events come back as changes to lay over its pairs.
/// Runs on a blocking thread of the runtime (each increment is fetched with `block_on`).
fn apply_increments(
    storage: &dyn Storage,
    increments: &[IncrementManifest],
    identities: Option<&Identities>,
    plain: &Path,
    base_revision: i64,
    what: &str,
) -> Result<Option<Changes>> {
    let runtime = tokio::runtime::Handle::current();
    let fetch = |m: &IncrementManifest| -> Result<SyncIoBridge<crate::storage::ObjectReader>> {
        let reader = runtime.block_on(storage.get(&m.name))?;
        Ok(SyncIoBridge::new_with_handle(reader, runtime.clone()))
    };
    match stores::open::backup_kind(plain)? {
        SourceKind::Sqlite => {
            let mut kine = KineApply::open(plain, base_revision, what)?;
            for m in increments {
                apply::read_checked(fetch(m)?, m, identities, |lines| kine.apply(lines, &m.name))?;
            }
            kine.finish(what)?;
            Ok(None)
        }
        SourceKind::Etcd => {
            let mut changes = Changes::new(base_revision);
            for m in increments {
                apply::read_checked(fetch(m)?, m, identities, |lines| {
                    changes.apply(lines, &m.name)
                })?;
            }
            Ok(Some(changes))
        }
    }
}

fn copy(input: &mut impl Read, out: &mut impl Write, what: &str) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => bail!("read {what}: the backup is truncated or corrupt ({err})"),
        };
        out.write_all(&buf[..n])
            .context("write the decrypted backup")?;
        total += n as u64;
    }
}

/// gzip(tar): the release entry, then every pair but vCluster's own
/// `/vcluster/snapshot/` keys. Returns the number of keys written.
pub fn write_archive(
    out: impl Write,
    release: Option<&[u8]>,
    pairs: impl Iterator<Item = Result<Pair>>,
    mtime: u64,
) -> Result<u64> {
    let gzip = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(gzip);
    if let Some(release) = release {
        append(&mut tar, RELEASE_ENTRY, release, mtime)?;
    }
    let mut keys = 0;
    for pair in pairs {
        let pair = pair?;
        // A store restored by vCluster up to v0.36 holds the release entry as a
        // key; it must not come twice, or after the keys.
        if pair.key.starts_with(SNAPSHOT_PREFIX) {
            continue;
        }
        append(&mut tar, &pair.key, &pair.value, mtime)?;
        keys += 1;
    }
    let gzip = tar.into_inner().context("finish the archive")?;
    let mut out = gzip.finish().context("finish the archive")?;
    out.flush().context("write the archive")?;
    Ok(keys)
}

/// One regular file, mode 0666, named by `name` exactly. The tar crate's
/// `set_path` refuses absolute names, so the name goes into the header bytes;
/// a name over 100 bytes gets a GNU long-name entry first, as GNU tar writes it.
fn append<W: Write>(tar: &mut tar::Builder<W>, name: &[u8], data: &[u8], mtime: u64) -> Result<()> {
    if name.is_empty() || name.contains(&0) {
        bail!(
            "key {:?} cannot be a tar entry name (empty or holding a NUL byte)",
            String::from_utf8_lossy(name)
        );
    }
    const NAME_FIELD: usize = 100;
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.len() > NAME_FIELD {
        let mut long = header(b"././@LongLink", name.len() as u64 + 1, 0, 0o644)?;
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_cksum();
        tar.append(&long, name.chain(&[0u8][..]))
            .with_context(|| format!("write key {}", shown()))?;
    }
    let mut entry = header(
        &name[..name.len().min(NAME_FIELD)],
        data.len() as u64,
        mtime,
        0o666,
    )?;
    entry.set_entry_type(tar::EntryType::Regular);
    entry.set_cksum();
    tar.append(&entry, data)
        .with_context(|| format!("write key {}", shown()))
}

fn header(name: &[u8], size: u64, mtime: u64, mode: u32) -> Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    let gnu = header
        .as_gnu_mut()
        .context("a new GNU tar header is not in GNU format")?;
    gnu.name[..name.len()].copy_from_slice(name);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_exactly_long_ones_too() {
        let long = format!("/registry/{}", "x".repeat(300));
        let pairs = vec![
            Ok(Pair {
                key: b"/registry/a".to_vec(),
                value: b"one".to_vec(),
            }),
            Ok(Pair {
                key: b"/vcluster/snapshot/release".to_vec(),
                value: b"stale".to_vec(),
            }),
            Ok(Pair {
                key: long.clone().into_bytes(),
                value: vec![0, 1, 2],
            }),
        ];
        let mut archive = Vec::new();
        let keys = write_archive(&mut archive, Some(b"{}"), pairs.into_iter(), 7).unwrap();
        assert_eq!(keys, 2);
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        let entries: Vec<(Vec<u8>, Vec<u8>, u32)> = reader
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path_bytes().into_owned();
                let mode = e.header().mode().unwrap();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (name, body, mode)
            })
            .collect();
        assert_eq!(
            entries,
            [
                (RELEASE_ENTRY.to_vec(), b"{}".to_vec(), 0o666),
                (b"/registry/a".to_vec(), b"one".to_vec(), 0o666),
                (long.into_bytes(), vec![0, 1, 2], 0o666),
            ]
        );
    }

    #[test]
    fn a_key_with_a_nul_byte_is_refused() {
        let pairs = vec![Ok(Pair {
            key: b"/a\0b".to_vec(),
            value: Vec::new(),
        })];
        let err = write_archive(Vec::new(), None, pairs.into_iter(), 0).unwrap_err();
        assert!(format!("{err:#}").contains("NUL"), "{err:#}");
    }
}
