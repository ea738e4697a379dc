//! Reading a chain's increments back: each one fetched, checked against its
//! manifest at both ends (stored bytes, plaintext) while it streams, and
//! handed line by line to what applies it (kine rows into the restored
//! database, etcd events into the key/value view). A damaged increment fails
//! the restore by name before anything is replaced.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio_util::io::SyncIoBridge;

use super::{Chain, IncrementManifest, IncrementRef};
use crate::manifest::MANIFEST_MAX_BYTES;
use crate::pipeline::{CheckStored, Hashing, Identities, unseal};
use crate::storage::{self, Storage};

/// Reads the manifests of the chain's increments, checking each against its name.
pub async fn manifests(storage: &dyn Storage, chain: &Chain) -> Result<Vec<IncrementManifest>> {
    let mut manifests = Vec::with_capacity(chain.increments.len());
    for increment in &chain.increments {
        manifests.push(manifest(storage, increment).await?);
    }
    Ok(manifests)
}

pub async fn manifest(
    storage: &dyn Storage,
    increment: &IncrementRef,
) -> Result<IncrementManifest> {
    let key = crate::object::manifest_key(&increment.name);
    let data = storage::get_bytes(storage, &key, MANIFEST_MAX_BYTES).await?;
    let manifest = IncrementManifest::from_json(&data, &key)?;
    if manifest.name != increment.name
        || manifest.base != increment.base
        || manifest.first_revision != increment.first_revision
        || manifest.last_revision != increment.last_revision
    {
        bail!(
            "read increment manifest {key}: it describes {} (revisions {}..={}), not the object beside it",
            manifest.name,
            manifest.first_revision,
            manifest.last_revision
        );
    }
    Ok(manifest)
}

/// Streams each increment of `manifests`, in order, into `step` on a
/// blocking thread, with `state` carried from one to the next.
pub async fn each<S: Send + 'static>(
    storage: &dyn Storage,
    manifests: &[IncrementManifest],
    identities: Option<Arc<Identities>>,
    mut state: S,
    step: fn(&mut S, &mut dyn BufRead, &IncrementManifest) -> Result<()>,
) -> Result<S> {
    for manifest in manifests {
        let reader = SyncIoBridge::new(storage.get(&manifest.name).await?);
        let manifest = manifest.clone();
        let identities = identities.clone();
        state = tokio::task::spawn_blocking(move || -> Result<S> {
            read_checked(reader, &manifest, identities.as_deref(), |lines| {
                step(&mut state, lines, &manifest)
            })?;
            Ok(state)
        })
        .await
        .context("applying an increment panicked")??;
    }
    Ok(state)
}

/// Unseals one stored increment and hands its plaintext to `use_lines`, then
/// checks what was read against the manifest: stored size and SHA-256, and
/// the plaintext's.
pub fn read_checked<T>(
    reader: impl Read + Send,
    manifest: &IncrementManifest,
    identities: Option<&Identities>,
    use_lines: impl FnOnce(&mut dyn BufRead) -> Result<T>,
) -> Result<T> {
    let what = &manifest.name;
    let mut input = CheckStored::new(reader, manifest.sealed.stored_fingerprint(), what);
    let used = {
        let plaintext = unseal(&mut input, identities, what)?;
        let mut hashing = Hashing::new(plaintext);
        let used = {
            let mut lines = BufReader::with_capacity(256 * 1024, &mut hashing);
            let used = use_lines(&mut lines);
            // The end line was read; anything after it is not ours.
            let rest = io::copy(&mut lines, &mut io::sink());
            used.and_then(|used| {
                rest.with_context(|| {
                    format!("read {what}: the increment is truncated or corrupt")
                })?;
                Ok(used)
            })
        };
        let (plain, _) = hashing.finish();
        used.and_then(|used| {
            plain.check_recorded(
                &manifest.sealed.plaintext_fingerprint(),
                what,
                "the increment",
            )?;
            Ok(used)
        })
    };
    // A damaged or swapped object is named as such, rather than what decoding made of it.
    input.finish()?;
    used
}
