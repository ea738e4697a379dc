//! `verify` of a chain: the increments after a backup, each checked as a
//! restore would read it (stored size and SHA-256; with the key, the
//! plaintext's too, and every change well formed and inside its revisions),
//! and the chain itself: no revision missing between the base and the newest
//! increment.

use std::io::BufRead;
use std::sync::Arc;

use anyhow::{Result, bail};
use tokio_util::io::SyncIoBridge;

use super::Check;
use crate::increment::format::Reader;
use crate::increment::{Chain, IncrementManifest, apply};
use crate::manifest::SourceKind;
use crate::pipeline::{CheckStored, Identities};
use crate::storage::Storage;
use crate::store::etcd::EtcdEvent;
use crate::store::kine::KineRow;

/// What a chain check found: a line for people, and the check for the
/// drill's record (a failed chain fails the drill).
pub struct ChainReport {
    pub line: String,
    pub check: Check,
}

/// Checks every increment of `chain`; `None` when the backup has none.
pub async fn check(
    storage: &dyn Storage,
    chain: &Chain,
    identities: Option<Arc<Identities>>,
    encrypted: bool,
) -> Result<Option<ChainReport>> {
    if chain.increments.is_empty() && chain.left_out.is_empty() {
        return Ok(None);
    }
    let base = &chain.base.name;
    let full = identities.is_some() || !encrypted;
    let failure = match check_all(storage, chain, identities, full).await {
        Ok(()) => chain.gap(),
        Err(err) => Some(format!("{err:#}").replace('\n', " ")),
    };
    let mode = if full { "full" } else { "keyless" };
    let (line, check) = match failure {
        None => {
            let detail = format!(
                "{} increment(s) to revision {} ({mode})",
                chain.increments.len(),
                chain.revision().unwrap_or(0)
            );
            let line = format!("ok      chain of {base}: {detail}");
            (line, Check::pass("chain", detail))
        }
        Some(failure) => (
            format!("FAILED  chain of {base}: {failure}"),
            Check::fail("chain", failure),
        ),
    };
    Ok(Some(ChainReport { line, check }))
}

async fn check_all(
    storage: &dyn Storage,
    chain: &Chain,
    identities: Option<Arc<Identities>>,
    full: bool,
) -> Result<()> {
    let manifests = apply::manifests(storage, chain).await?;
    if full {
        // As a restore reads them: both digests, and every change.
        apply::each(
            storage,
            &manifests,
            identities,
            (),
            |(), lines, manifest| check_changes(lines, manifest),
        )
        .await?;
        return Ok(());
    }
    for manifest in manifests {
        let reader = SyncIoBridge::new(storage.get(&manifest.name).await?);
        // `finish` reads to the end and names a mismatch; a read error is its own.
        tokio::task::spawn_blocking(move || {
            CheckStored::new(reader, manifest.sealed.stored_fingerprint(), &manifest.name).finish()
        })
        .await??;
    }
    Ok(())
}

/// Every change parses and lies inside the increment's revisions, in order
/// (checked by the reader); the count matches the manifest.
fn check_changes(lines: &mut dyn BufRead, manifest: &IncrementManifest) -> Result<()> {
    let what = &manifest.name;
    let mut reader = Reader::open(lines, what)?;
    let header = reader.header.clone();
    if (header.first_revision, header.last_revision)
        != (manifest.first_revision, manifest.last_revision)
        || header.base != manifest.base
    {
        bail!("{what}: its header does not match its manifest");
    }
    // The reader checks each change's revision against the order and the range.
    match manifest.kind {
        SourceKind::Sqlite => while reader.next::<KineRow>()?.is_some() {},
        SourceKind::Etcd => while reader.next::<EtcdEvent>()?.is_some() {},
    }
    let count = reader.count();
    if count != manifest.count {
        bail!(
            "{what}: {count} changes, the manifest records {}",
            manifest.count
        );
    }
    Ok(())
}
