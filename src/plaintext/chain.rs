//! A chain's verified plaintext: the base, then its increments applied.

use std::sync::Arc;

use anyhow::{Context, Result};
use tempfile::NamedTempFile;
use tokio_util::io::SyncIoBridge;

use super::{Decode, Place, Recorded};
use crate::increment::{Chain, apply};
use crate::manifest::SourceKind;
use crate::pipeline::Identities;
use crate::storage::Storage;
use crate::store::etcd::Changes;
use crate::store::kine::KineApply;

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
