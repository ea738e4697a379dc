//! Taking one backup: source → seal (zstd, age) → storage, then the manifest.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{SubsecRound, Utc};

use crate::manifest::{self, Manifest, SealedObject};
use crate::pipeline::{Fingerprint, Sealing};
use crate::storage::{self, IncompleteBody, Storage, body_channel};
use crate::store::Source;
use crate::vconfig::ConfigSource;

/// Chunks handed from the pipeline to storage; with `CHUNK_DEPTH` they bound
/// the memory a backup in flight holds between the two.
const CHUNK_SIZE: usize = 1 << 20;
const CHUNK_DEPTH: usize = 8;

/// Where a backup failed: a fixed set, used as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Source,
    Pipeline,
    Storage,
    Retention,
    /// The read-back after the upload (`--verify-after-upload`) found the stored backup bad.
    Verify,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Source,
        Stage::Pipeline,
        Stage::Storage,
        Stage::Retention,
        Stage::Verify,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Pipeline => "pipeline",
            Stage::Storage => "storage",
            Stage::Retention => "retention",
            Stage::Verify => "verify",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct BackupError {
    pub stage: Stage,
    pub error: anyhow::Error,
}

fn at(stage: Stage) -> impl FnOnce(anyhow::Error) -> BackupError {
    move |error| BackupError { stage, error }
}

/// What `seal_and_store` stored: the producer's result and both fingerprints.
pub struct StoredObject<T> {
    pub facts: T,
    pub plaintext: Fingerprint,
    pub stored: Fingerprint,
}

/// Streams what `produce` writes through zstd and age into object `name`,
/// on a thread of its own (at `--priority background` it and zstd's workers,
/// which inherit its class, yield to the control plane). Memory stays at a
/// few chunks whatever the size. On failure storage keeps nothing of it.
/// Errors of `produce` are the source's.
pub async fn seal_and_store<T: Send + 'static>(
    storage: &dyn Storage,
    sealing: &Arc<Sealing>,
    name: &str,
    thread: &str,
    produce: impl FnOnce(&mut dyn std::io::Write) -> Result<T> + Send + 'static,
) -> Result<StoredObject<T>, BackupError> {
    let (writer, body) = body_channel(CHUNK_SIZE, CHUNK_DEPTH);
    let seal = Arc::clone(sealing);
    let producer = crate::background::spawn(thread, move || {
        let mut source_failed = false;
        let sealed = seal.seal(writer, |out| {
            produce(out).inspect_err(|_| source_failed = true)
        });
        match sealed {
            Ok(sealed) => {
                let finished = sealed.out.finish().context("hand the data to storage");
                finished
                    .map(|()| StoredObject {
                        facts: sealed.facts,
                        plaintext: sealed.plaintext,
                        stored: sealed.stored,
                    })
                    .map_err(at(Stage::Storage))
            }
            Err(err) if source_failed => Err(at(Stage::Source)(err)),
            Err(err) => Err(at(Stage::Pipeline)(err)),
        }
    })
    .map_err(at(Stage::Pipeline))?;
    let upload = storage.put(name, body);
    let (produced, uploaded) = tokio::join!(producer, upload);
    let produced = produced
        .context("pipeline panicked")
        .map_err(at(Stage::Pipeline))
        .and_then(|r| r);
    // When storage fails, the pipeline only sees a closed channel: storage's error is the cause.
    match (produced, uploaded) {
        (Ok(done), Ok(())) => Ok(done),
        (_, Err(err)) if !IncompleteBody::is_cause_of(&err) => Err(BackupError {
            stage: Stage::Storage,
            error: err.context(format!("store {name} in {}", storage.location())),
        }),
        (Err(err), _) => Err(err),
        (Ok(_), Err(err)) => Err(at(Stage::Storage)(err)),
    }
}

/// Stores the manifest of `objects[0]`, written after the objects it
/// describes: once it is there, they count. If it cannot be stored, the
/// objects are removed (they are ours: written only if absent), so nothing a
/// reader could mistake for a backup is left.
pub async fn store_manifest(
    storage: &dyn Storage,
    key: &str,
    json: Result<Vec<u8>>,
    objects: &[&str],
) -> Result<(), BackupError> {
    let written = async { storage::put_bytes(storage, key, json?).await }.await;
    if let Err(err) = written {
        for object in objects {
            let _ = storage.delete(object).await;
        }
        return Err(BackupError {
            stage: Stage::Storage,
            error: err.context(format!(
                "store manifest of {} in {}",
                objects.first().copied().unwrap_or(key),
                storage.location()
            )),
        });
    }
    Ok(())
}

/// Takes one backup of `source` into `storage` and returns its manifest.
/// On failure nothing is left that a reader could mistake for a backup.
pub async fn take_backup(
    mut source: Box<dyn Source>,
    sealing: Arc<Sealing>,
    storage: &dyn Storage,
    vcluster: &str,
    vcluster_config: &ConfigSource,
) -> Result<Manifest, BackupError> {
    // Milliseconds, as in the object name, so `--at <created>` finds this backup.
    let started = Utc::now().trunc_subsecs(3);
    let clock = Instant::now();
    let kind = source.kind();
    let name = crate::object::backup_name(
        vcluster,
        started,
        rand::random(),
        kind,
        sealing.recipients.is_some(),
    );
    let described = source.describe();
    tracing::info!(backup = %name, source = %described, destination = %storage.location(), "backup started");

    let stored = seal_and_store(storage, &sealing, &name, "vcbackup-backup", move |out| {
        // Read before the snapshot: a change in between makes the recorded
        // value older than the backup, which costs a backup, never a change.
        let semantic = source.semantic_revision().unwrap_or_else(|err| {
            tracing::warn!(
                "no semantic revision recorded (--skip-unchanged will back up next time): {err:#}"
            );
            None
        });
        Ok((source.snapshot(out)?, semantic))
    })
    .await?;
    let ((facts, semantic_revision), plaintext, stored) =
        (stored.facts, stored.plaintext, stored.stored);

    // The config rides along, but a backup is worth keeping without it.
    let config = match vcluster_config.read() {
        Some(yaml) => match vcluster_config.store(&yaml, &sealing, storage, &name).await {
            Ok(saved) => Some(saved),
            Err(err) => {
                tracing::warn!(backup = %name, "backup kept without its vCluster config: {err:#}");
                None
            }
        },
        None => None,
    };
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        name: name.clone(),
        vcluster: vcluster.to_string(),
        kind,
        started,
        finished: Utc::now(),
        sealed: SealedObject::of(&sealing, &plaintext, &stored),
        revision: facts.revision,
        semantic_revision,
        etcd: facts.etcd,
        config,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Without its manifest the backup is not listed: its objects go too.
    let objects: Vec<&str> = std::iter::once(name.as_str())
        .chain(manifest.config.as_ref().map(|c| c.name.as_str()))
        .collect();
    store_manifest(
        storage,
        &manifest.manifest_key(),
        manifest.to_json(),
        &objects,
    )
    .await?;

    let seconds = clock.elapsed().as_secs_f64();
    tracing::info!(
        backup = %name,
        size = manifest.sealed.size,
        stored_size = manifest.sealed.stored_size,
        revision = manifest.revision,
        duration_seconds = format!("{seconds:.2}"),
        throughput_mib_per_second = format!("{:.1}", manifest.sealed.size as f64 / 1048576.0 / seconds.max(1e-6)),
        "backup complete"
    );
    Ok(manifest)
}
